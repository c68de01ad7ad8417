"""Fixtures for provider-batch tests: both stateful fakes on 127.0.0.1 (always stopped), keys in
the environment, a config that sends every tier to a batch-mode backend, and fast polling."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.anthropic_shapes import check_sent
from tests.fakes import FakeAnthropic, FakeOpenAI
from tests.fakes.spec import OpenAISpec
from tierline.cli import main
from tierline.dispatch.batch import engine

KEY = "sk-test-batch-key-0001"


@pytest.fixture(autouse=True)
def keys_and_fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)

    async def no_sleep(_seconds: float) -> None:
        return None

    # The fakes move only when told (or on each retrieve with auto_advance): never sleep.
    monkeypatch.setattr(engine, "DEFAULT_POLL", engine.PollPolicy(sleep=no_sleep))


@pytest.fixture
def oai(spec: OpenAISpec) -> Iterator[FakeOpenAI]:
    """FakeOpenAI; afterwards every JSON body tierline sent it must match the OpenAPI spec."""
    with FakeOpenAI(api_key=KEY) as srv:
        yield srv
        for request in srv.requests:
            checked = spec.check_request(request)
            assert checked or request.body is None, request  # no body: an upload or a cancel


@pytest.fixture
def ant() -> Iterator[FakeAnthropic]:
    """FakeAnthropic; afterwards what tierline sent it must match the anthropic SDK's types."""
    with FakeAnthropic(api_key=KEY) as srv:
        yield srv
        check_sent(srv)


def write_config(
    path: Path,
    *,
    openai_url: str = "http://127.0.0.1:9/v1",
    anthropic_url: str = "http://127.0.0.1:9",
    to: str = "gpt",
    price: bool = False,
) -> Path:
    """Every tier on backend `to` ("gpt" or "claude"), both in batch mode."""
    text = f"""
[backends.gpt]
kind = "openai"
model = "gpt-4o-mini"
base_url = "{openai_url}"
mode = "batch"
max_attempts = 1

[backends.claude]
kind = "anthropic"
model = "claude-sonnet-4-5"
base_url = "{anthropic_url}"
mode = "batch"
max_attempts = 1

[tiering]
classifier = false

[routes]
1 = ["{to}"]
2 = ["{to}"]
3 = ["{to}"]
"""
    if price:
        text += """
[pricing.models."gpt-4o-mini"]
input_per_mtok = 1.0
output_per_mtok = 4.0
"""
    path.write_text(text, encoding="utf-8")
    return path


def write_jobs(path: Path, ids: list[str]) -> Path:
    path.write_text(
        "".join(
            json.dumps({"id": i, "prompt": f"question about {i}", "tier": 1}) + "\n" for i in ids
        ),
        encoding="utf-8",
    )
    return path


def read_results(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def batch_ids(results: list[dict[str, Any]]) -> list[str]:
    """The provider batch ids named by the results' last route hop, in first-seen order."""
    return list(dict.fromkeys(r["route"][-1]["batch_id"] for r in results))


def tl(*args: str | Path) -> int:
    return main([str(a) for a in args])
