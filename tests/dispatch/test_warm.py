"""Router.warm: the HTTP backends heading a route are created (their SDKs imported) before the
first request, so no import blocks the event loop while calls are in flight and billed."""

from __future__ import annotations

import asyncio

import pytest

from .conftest import make_config
from .helpers import routed


def test_warm_creates_route_heads_but_not_the_local_model_or_a_broken_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Heads over HTTP are created; the in-process model (heading tier 2) is not loaded; a
    head whose key is missing is skipped now (its jobs fail later, as before); fallbacks wait."""
    monkeypatch.setenv("WARM_KEY", "sk-warm-0001")
    config = make_config(
        {
            "gpu": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1", "model": "m"},
            "local": {"kind": "llamacpp"},
            "api": {"kind": "openai", "model": "gpt-4o-mini", "api_key_env": "WARM_KEY"},
            "nokey": {"kind": "anthropic", "model": "claude-sonnet-4-5", "api_key_env": "NO_SUCH"},
        },
        routes={"1": ["gpu", "api"], "2": ["local"], "3": ["nokey"]},
    )

    async def warm() -> set[str]:
        async with routed(config) as router:
            router.warm()
            return set(router._backends)

    assert asyncio.run(warm()) == {"gpu"}
