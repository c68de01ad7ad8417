"""The run's shared state on the cluster: one small actor that owns the budget and remembers
which jobs are answered.

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

**Answered jobs**: an actor marks each job's resume key here just before it hands the result
to Ray. When an actor dies, Ray Data retries its block on a restarted actor, which asks here and
skips what was already answered: no job is paid twice beyond the in-flight window. The driver
remains the judge of "exactly one result per job" (it keeps the first result of each key and
sends again any job left without one, tierline/ray/engine.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from ..ledger.budget import Budget, Hold

__all__ = ["REFUSE", "LeasedBudget", "RunState"]

REFUSE = -1  # grant(): the job cannot fit even with nothing in flight anywhere
POLL_S = 0.05  # how often an actor that holds nothing asks again for a lease


class RunState:
    """The coordinator actor's class (made a Ray actor by the engine: `ray.remote(RunState)`).

    Its methods are synchronous: Ray runs one call at a time, so grant and give-back need no
    lock."""

    def __init__(self, cap_micros: int | None) -> None:
        self.cap_micros = cap_micros
        self.leased = 0  # micro-dollars granted and not handed back (spent ones included)
        self.spent: dict[str, int] = {}  # each actor's spend, as last reported
        self.answered_keys: set[int] = set()
        self.handles: list[Any] = []

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

    # --- answered jobs -----------------------------------------------------------------------

    def answered(self, keys: list[str]) -> list[bool]:
        return [int(k, 16) in self.answered_keys for k in keys]

    def mark(self, keys: list[str]) -> None:
        self.answered_keys.update(int(k, 16) for k in keys)

    def forget(self, keys: list[str]) -> None:
        """Jobs marked answered whose result never reached the driver: they may run again."""
        self.answered_keys.difference_update(int(k, 16) for k in keys)

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
