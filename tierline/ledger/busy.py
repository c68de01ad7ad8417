"""Measured busy time of a self-hosted backend, shared fairly among concurrent calls.

A backend priced by ``gpu_hour_usd`` costs its hourly price for every second this run keeps it
busy, i.e. has at least one request in flight on it. While n requests are in flight, each second
is split evenly between them (processor sharing), so the shares of all calls add up exactly to
the backend's busy wall time:

* the in-process llama.cpp model serves one request at a time (calls are serialised behind a
  lock), so a call's share is its own compute time, without the time it queued for the lock;
* a server with concurrency (vLLM, llama-server slots) batches requests: 8 requests in flight
  for 2 s cost 2 busy seconds in all, 0.25 s each, not 16 s.

The meter counts this run's requests only: a server shared with other clients, or idle between
runs, is not charged here. The clock starts when tierline sends a request and stops when the
answer (or error) arrives, so network time to a remote server counts as busy time.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

__all__ = ["BusyMeter", "BusySpan"]

T = TypeVar("T")


class BusyMeter:
    """Busy time of one backend. Used from one event loop (no locking needed)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._in_flight = 0
        self._last = clock()
        # Virtual time: the integral of 1/n over busy periods. A call's share of the busy time
        # is the virtual time elapsed while it was in flight; O(1) however many are in flight.
        self._virtual = 0.0
        self.busy_s = 0.0

    def _advance(self) -> float:
        now = self._clock()
        if self._in_flight:
            self._virtual += (now - self._last) / self._in_flight
            self.busy_s += now - self._last
        self._last = now
        return self._virtual

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Time inside is not busy time: tierline's own blocking work on the event loop (a
        backend's SDK imported on its first use) leaves answers unread, it does not keep the
        server busy, so the calls in flight are not billed for it."""
        self._advance()
        try:
            yield
        finally:
            self._last = self._clock()

    def span(self) -> BusySpan:
        """A span accumulating one call's share across its attempts."""
        return BusySpan(self)

    def _start(self) -> float:
        mark = self._advance()
        self._in_flight += 1
        return mark

    def _stop(self, mark: float) -> float:
        share = self._advance() - mark
        self._in_flight -= 1
        return share


class BusySpan:
    """One call's share of its backend's busy time (`seconds`), summed over attempts."""

    def __init__(self, meter: BusyMeter) -> None:
        self.meter = meter
        self.seconds = 0.0

    async def measure(self, awaitable: Awaitable[T]) -> T:
        """Await `awaitable` (one attempt), adding its share of busy time, success or not."""
        mark = self.meter._start()
        try:
            return await awaitable
        finally:
            self.seconds += self.meter._stop(mark)
