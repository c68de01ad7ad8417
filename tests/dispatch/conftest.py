"""Fixtures for dispatch tests: fake servers on 127.0.0.1 (always stopped) and config helpers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.anthropic_shapes import check_sent
from tests.fakes import FakeAnthropic, FakeOpenAI
from tests.fakes.spec import OpenAISpec
from tierline.config import Config, config_from_mapping

KEY = "sk-test-0123456789abcdef"
ANT_KEY = "sk-ant-test-0123456789abcdef"


def make_config(
    backends: dict[str, dict[str, Any]], routes: dict[str, Any] | None = None
) -> Config:
    """A config with these backends; every tier routes to all of them in order by default."""
    chain = list(backends)
    return config_from_mapping(
        {"backends": backends, "routes": routes or {"1": chain, "2": chain, "3": chain}},
        origin="test",
    )


@pytest.fixture
def openai_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TEST_OPENAI_API_KEY", KEY)
    return "TEST_OPENAI_API_KEY"


@pytest.fixture
def anthropic_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TEST_ANTHROPIC_API_KEY", ANT_KEY)
    return "TEST_ANTHROPIC_API_KEY"


@pytest.fixture
def oai(spec: OpenAISpec) -> Iterator[FakeOpenAI]:
    """FakeOpenAI; afterwards every JSON request tierline sent it must match the OpenAPI spec
    (a POST the spec checker has no schema for fails too, rather than going unchecked)."""
    with FakeOpenAI(api_key=KEY) as srv:
        yield srv
        for request in srv.requests:
            checked = spec.check_request(request)
            assert checked or request.body is None, request  # no body: an upload or a cancel


@pytest.fixture
def ant() -> Iterator[FakeAnthropic]:
    """FakeAnthropic; afterwards every request body tierline sent it must match the anthropic
    SDK's params types (Anthropic publishes no OpenAPI spec: the SDK's types are the shapes)."""
    with FakeAnthropic(api_key=ANT_KEY) as srv:
        yield srv
        check_sent(srv)
