"""`run --max-cost`: spend never passes the cap, however many calls are in flight.

Before a job is sent, its worst case is reserved: the upper bound on its prompt tokens (see
`tierline.ledger.estimate.input_token_bound`) plus its `max_tokens`, at the dearest price of any
backend its route may use. When the job completes, the reservation is settled: the actual cost
(from reported usage) is spent and the rest released. A job is admitted only while
``spent + reserved + worst case <= cap``, so spent stays under the cap at all times.

When a job does not fit now but would once in-flight jobs settle (they usually cost far less
than their worst case), it waits for them; it is skipped (``skipped_budget``) only when it
cannot fit even with nothing in flight. A route with a model of unknown price cannot be bounded,
so under a budget its jobs are skipped and never sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from ..config import Config
from ..jobs import Job
from .estimate import input_token_bound
from .pricing import GpuHourTariff, Pricer

__all__ = ["Budget", "Hold", "Refusal", "worst_case_micros"]


@dataclass(frozen=True, slots=True)
class Hold:
    """A reservation of `micros` against the budget, to be settled exactly once."""

    micros: int


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a job was not sent."""

    reason: str


class Budget:
    """A spending cap in micro-dollars, shared by the tasks of one event loop.

    Check-and-reserve runs without an await in between, so concurrent tasks cannot both take
    the last headroom; `settle` is synchronous so it can run in a `finally` of a cancelled task.
    """

    def __init__(self, cap_micros: int) -> None:
        if cap_micros < 0:
            raise ValueError("a budget cannot be negative")
        self.cap_micros = cap_micros
        self.spent_micros = 0
        self.reserved_micros = 0
        self.refused = 0
        self._settled: asyncio.Event | None = None  # set (and replaced) at each settlement

    async def reserve(self, micros: int) -> Hold | None:
        """Reserve `micros`, waiting for in-flight settlements if that can help; else None."""
        while self.spent_micros + self.reserved_micros + micros > self.cap_micros:
            if self.spent_micros + micros > self.cap_micros:
                self.refused += 1
                return None  # would not fit even with nothing in flight
            if self._settled is None:
                self._settled = asyncio.Event()
            await self._settled.wait()
        self.reserved_micros += micros
        return Hold(micros)

    def settle(self, hold: Hold, spent_micros: int | None) -> None:
        """Spend the actual cost (None: unknown, so the whole reservation); release the rest."""
        self.reserved_micros -= hold.micros
        self.spent_micros += hold.micros if spent_micros is None else spent_micros
        settled, self._settled = self._settled, None
        if settled is not None:
            settled.set()


def worst_case_micros(
    config: Config, pricer: Pricer, job: Job, chain: Sequence[str]
) -> int | Refusal:
    """The most `job` can cost along its route, or why it cannot be bounded.

    Each hop may generate what `Config.max_tokens_for` allows it, the limit its request carries.
    Only one hop of a route is billed by tokens (a hop that falls through never answered), so
    token-priced backends count once at the dearest; busy-time-priced ones may all be billed.
    """
    prompt = input_token_bound(job)
    by_tokens, by_time = 0, 0
    for name in chain:
        worst = pricer.worst_case_micros(name, prompt, config.max_tokens_for(name, job))
        if worst is None:
            return Refusal(
                f"backend {name!r} has no known price, so under --max-cost this job's cost "
                f"cannot be bounded and it was not sent; price it in the config "
                f"([pricing.models] or backends.{name}.price / gpu_hour_usd)"
            )
        if isinstance(pricer.tariff(name), GpuHourTariff):
            by_time += worst
        else:
            by_tokens = max(by_tokens, worst)
    return by_tokens + by_time
