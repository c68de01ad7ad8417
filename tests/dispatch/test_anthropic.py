"""The `anthropic` backend: the anthropic SDK talking to FakeAnthropic on 127.0.0.1."""

from __future__ import annotations

import pytest

from tests.fakes import FakeAnthropic
from tierline.dispatch.anthropic import parse_message

from .conftest import ANT_KEY, make_config
from .helpers import ask, request


def claude(srv: FakeAnthropic, env: str, **extra: object) -> dict[str, object]:
    return {
        "kind": "anthropic",
        "model": "claude-sonnet-4-5",
        "base_url": srv.base_url,
        "api_key_env": env,
        **extra,
    }


async def test_cache_tokens_are_added_back_to_input(anthropic_key: str) -> None:
    """Anthropic's input_tokens excludes cache reads and writes; tierline's includes them."""
    with FakeAnthropic(api_key=ANT_KEY, cache_read_tokens=50, cache_creation_tokens=20) as srv:
        srv.enqueue_reply(prompt_tokens=100, completion_tokens=10)
        outcome = await ask(make_config({"c": claude(srv, anthropic_key)}))
        sent = [r for r in srv.requests if r.path == "/v1/messages"]
    assert outcome.final and outcome.final.completion
    usage = outcome.final.completion.usage
    assert (usage.input_tokens, usage.cached_tokens, usage.cache_write_tokens) == (100, 50, 20)
    assert usage.output_tokens == 10
    assert sent[0].headers.get("x-api-key") == ANT_KEY or ANT_KEY in sent[0].headers.get(
        "authorization", ""
    )


def test_parse_message_maps_stop_reasons_and_usage() -> None:
    """max_tokens becomes 'length'; usage adds cache reads and writes to input."""
    data = {
        "id": "msg_1",
        "model": "claude-x",
        "content": [
            {"type": "text", "text": "a"},
            {"type": "tool_use", "id": "t"},
            {"type": "text", "text": "b"},
        ],
        "stop_reason": "max_tokens",
        "usage": {
            "input_tokens": 3,
            "output_tokens": 7,
            "cache_read_input_tokens": 10,
            "cache_creation_input_tokens": 5,
        },
    }
    completion = parse_message(data, "fallback")
    assert (completion.text, completion.finish_reason) == ("ab", "length")
    assert completion.usage.input_tokens == 18 and completion.usage.cached_tokens == 10


async def test_request_shape(ant: FakeAnthropic, anthropic_key: str) -> None:
    """System prompt apart, stop_sequences, temperature clamped, JSON via output_config."""
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    req = request(
        system="Be brief.",
        stop=("END",),
        temperature=1.5,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    )
    outcome = await ask(make_config({"c": claude(ant, anthropic_key)}), req)
    body = next(r.body for r in ant.requests if r.path == "/v1/messages")
    assert outcome.ok
    assert body["system"] == "Be brief." and body["stop_sequences"] == ["END"]
    assert body["temperature"] == 1.0
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert all(m["role"] in ("user", "assistant") for m in body["messages"])


@pytest.mark.parametrize(
    ("status", "attempts", "ok"), [(529, 2, True), (500, 2, True), (400, 1, False)]
)
async def test_overloaded_is_retried(
    ant: FakeAnthropic, anthropic_key: str, status: int, attempts: int, ok: bool
) -> None:
    """529 overloaded and 500 are retried; a 400 is not."""
    ant.enqueue_fault(status, headers={"retry-after": "0.05"})
    outcome = await ask(make_config({"c": claude(ant, anthropic_key, max_attempts=3)}))
    assert outcome.hops[0].attempts == attempts and outcome.ok is ok


async def test_missing_key_names_the_variable(
    ant: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No key: unavailable, and the message says which variable to set."""
    monkeypatch.delenv("MISSING_ANTHROPIC_API_KEY", raising=False)
    outcome = await ask(make_config({"c": claude(ant, "MISSING_ANTHROPIC_API_KEY")}))
    assert outcome.hops[0].status == "unavailable"
    assert "MISSING_ANTHROPIC_API_KEY" in (outcome.hops[0].error or "")


async def test_check_reports_known_and_unknown_models(anthropic_key: str) -> None:
    """backends check: GET /v1/models/{model}; 200 = usable, 404 = model not found."""
    from tierline.config import AnthropicBackendConfig
    from tierline.dispatch.anthropic import AnthropicBackend

    with FakeAnthropic(api_key=ANT_KEY, models=["claude-sonnet-4-5"]) as srv:
        results = []
        for model in ("claude-sonnet-4-5", "claude-nope"):
            config = AnthropicBackendConfig(
                kind="anthropic", model=model, base_url=srv.base_url, api_key_env=anthropic_key
            )
            async with AnthropicBackend("c", config) as backend:
                results.append((await backend.check())[0])
    assert results[0].usable and results[0].model_present
    assert not results[1].usable and results[1].model_present is False
