"""Small helpers shared by the dispatch tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from tierline.config import Config
from tierline.dispatch.base import Request
from tierline.dispatch.router import Outcome, Router
from tierline.jobs import Message


def request(text: str = "Summarize: the cat sat on the mat.", **fields: Any) -> Request:
    fields.setdefault("max_tokens", 32)
    return Request(messages=(Message("user", text),), **fields)


class Sleeps(list[float]):
    """A router's `sleep` that records each wait (retry backoff, rate-limit pause) and then
    really waits: tests assert on which waits happened, not on how long a call took."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)
        await asyncio.sleep(seconds)


async def ask(
    config: Config, req: Request | None = None, *, tier: int = 1, sleeps: Sleeps | None = None
) -> Outcome:
    """Send one request along a tier's route with a fresh router (closed afterwards)."""
    router = Router(config, sleep=sleeps if sleeps is not None else asyncio.sleep)
    try:
        return await router.dispatch(tier, lambda _max_tokens: req or request())
    finally:
        await router.aclose()


@contextlib.asynccontextmanager
async def routed(config: Config, sleeps: Sleeps | None = None) -> AsyncIterator[Router]:
    """A router that is always closed, even when the test fails (no leaked HTTP sessions)."""
    router = Router(config, sleep=sleeps if sleeps is not None else asyncio.sleep)
    try:
        yield router
    finally:
        await router.aclose()
