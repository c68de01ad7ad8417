"""The run's shared state on the cluster: one small actor that owns the budget and carries
the driver's stop request to the actors.

**Budget** (`--max-cost`): money must never pass the cap, whatever the number of actors, so it
is not split up front (a split strands headroom in idle actors and would skip jobs a local run
sends). Each actor keeps tierline's ordinary `Budget` (reserve the worst case, settle the real
cost) against a *lease*: micro-dollars granted by this actor, in chunks, so most reservations
cost no round trip. The leases granted never add up to more than the cap, and an actor never
reserves past its lease, so spend stays under the cap across actors
(tests/ray/test_cli.py::test_budget_holds_across_actors).
An actor that cannot get enough waits for its own in-flight jobs to settle, or hands back what
it holds and asks again; a job is refused (`skipped_budget`) only when it would not fit even
with nothing in flight anywhere, as in a local run.

**Stop** (SIGINT/SIGTERM on the driver): the driver sets the flag here; each actor reads it
when a block starts and every `STOP_POLL_S` while it works, and then starts no new call: its
calls in flight finish, and its blocks end early with what they answered, which the driver
keeps taking for the grace period (tierline/ray/engine.py). Answered jobs are not remembered
here: each actor's fragment holds them, durably, which a retried block and a rerun read
(tierline/ray/fragments.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from ..ledger.budget import Budget, Hold

__all__ = ["REFUSE", "STOP_POLL_S", "LeasedBudget", "RunState"]

REFUSE = -1  # grant(): the job cannot fit even with nothing in flight anywhere
POLL_S = 0.05  # how often an actor that holds nothing asks again for a lease
STOP_POLL_S = 0.1  # how often an actor reads the stop flag


class RunState:
    """The coordinator actor's class (made a Ray actor by the engine: `ray.remote(RunState)`).

    Its methods are synchronous: Ray runs one call at a time, so grant and give-back need no
    lock."""

    def __init__(self, cap_micros: int | None) -> None:
        self.cap_micros = cap_micros
        self.leased = 0  # micro-dollars granted and not handed back (spent ones included)
        self.spent: dict[str, int] = {}  # each actor's spend, as last reported
        self.handles: list[Any] = []
        self.stopped = False

    # --- budget ------------------------------------------------------------------------------

    def grant(self, actor: str, *, need: int, want: int, worst: int, spent: int) -> int:
        """Lease at least `need` (up to `want`) micro-dollars to `actor`; 0 when not now;
        REFUSE when a job of worst case `worst` cannot fit even with nothing in flight."""
        assert self.cap_micros is not None
        self.spent[actor] = spent
        free = self.cap_micros - self.leased
        if free >= need:
            granted = min(free, max(need, want))
            self.leased += granted
            return granted
        if sum(self.spent.values()) + worst > self.cap_micros:
            return REFUSE
        return 0

    def give_back(self, actor: str, micros: int, spent: int) -> None:
        self.spent[actor] = spent
        self.leased -= micros

    # --- stop --------------------------------------------------------------------------------

    def stop(self) -> None:
        self.stopped = True

    def stopping(self) -> bool:
        return self.stopped

    # --- actors ------------------------------------------------------------------------------

    def register(self, handle: Any) -> None:
        self.handles.append(handle)

    def actors(self) -> list[Any]:
        return list(self.handles)


class LeasedBudget(Budget):
    """An actor's `Budget` whose cap is the lease it holds from `RunState`; it asks for more
    when a reservation does not fit (see the module docstring)."""

    def __init__(self, state: Any, actor: str, *, cap_micros: int, chunk_micros: int) -> None:
        super().__init__(cap_micros)  # the run's cap, for messages; this actor spends its lease
        self.lease_micros = 0
        self.state = state
        self.actor = actor
        self.chunk_micros = max(1, chunk_micros)

    @property
    def free_micros(self) -> int:
        return self.lease_micros - self.spent_micros - self.reserved_micros

    async def reserve(self, micros: int) -> Hold | None:
        while micros > self.free_micros:
            need = micros - self.free_micros
            granted: int = await self.state.grant.remote(
                self.actor,
                need=need,
                want=max(need, self.chunk_micros),
                worst=micros,
                spent=self.spent_micros,
            )
            if granted == REFUSE:
                self.refused += 1
                return None
            if granted > 0:
                self.lease_micros += granted
                continue
            await self._wait()
        self.reserved_micros += micros
        return Hold(micros)

    async def _wait(self) -> None:
        """Wait for one of our own jobs to settle; holding none, hand back what we have (another
        actor may need it to fit a job) and ask again a little later."""
        if self.reserved_micros:
            if self._settled is None:
                self._settled = asyncio.Event()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._settled.wait(), POLL_S)
            return
        self.give_back()
        await asyncio.sleep(POLL_S)

    def give_back(self) -> None:
        """Hand the unreserved part of the lease back (fire and forget: Ray runs one caller's
        calls to an actor in order, so a later grant sees it)."""
        free = self.free_micros
        if free > 0:
            self.lease_micros -= free
        self.state.give_back.remote(self.actor, max(free, 0), self.spent_micros)
