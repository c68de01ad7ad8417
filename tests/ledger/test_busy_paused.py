"""Time the event loop spends on tierline's own blocking work (creating a backend imports its
SDK) is not billed as busy time to the calls in flight."""

from __future__ import annotations

import asyncio

from tierline.ledger.busy import BusyMeter


def test_paused_time_is_not_busy_time() -> None:
    """A call in flight for 1 s, then 5 s inside `paused()`, then 1 s more: 2 busy seconds."""
    now = [0.0]
    meter = BusyMeter(clock=lambda: now[0])
    span = meter.span()

    async def call() -> None:
        now[0] += 1.0
        with meter.paused():
            now[0] += 5.0
        now[0] += 1.0

    asyncio.run(span.measure(call()))
    assert span.seconds == 2.0 and meter.busy_s == 2.0
