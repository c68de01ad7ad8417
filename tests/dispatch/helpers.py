"""Small helpers shared by the dispatch tests."""

from __future__ import annotations

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


async def ask(config: Config, req: Request | None = None, *, tier: int = 1) -> Outcome:
    """Send one request along a tier's route with a fresh router (closed afterwards)."""
    router = Router(config)
    try:
        return await router.dispatch(tier, lambda _max_tokens: req or request())
    finally:
        await router.aclose()


@contextlib.asynccontextmanager
async def routed(config: Config) -> AsyncIterator[Router]:
    """A router that is always closed, even when the test fails (no leaked HTTP sessions)."""
    router = Router(config)
    try:
        yield router
    finally:
        await router.aclose()
