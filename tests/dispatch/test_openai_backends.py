"""`openai` and `openai-compatible` backends: the openai SDK talking to the fakes on 127.0.0.1."""

from __future__ import annotations

import pytest

from tests.fakes import FakeLlamaCppPython, FakeLlamaServer, FakeOpenAI, FakeVLLM
from tests.fakes.spec import OpenAISpec

from .conftest import KEY, make_config
from .helpers import Sleeps, ask, request

SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string"}, "score": {"type": "integer"}},
    "required": ["label", "score"],
}


def openai_backend(srv: FakeOpenAI, env: str, **extra: object) -> dict[str, object]:
    return {
        "kind": "openai",
        "model": "gpt-4o-mini",
        "base_url": srv.base_url,
        "api_key_env": env,
        **extra,
    }


@pytest.mark.parametrize(
    "response_format",
    [
        None,
        {"type": "json_object"},
        {"type": "json_object", "schema": SCHEMA},
        {"type": "json_schema", "json_schema": {"name": "grade", "schema": SCHEMA}},
        {"type": "json_schema", "json_schema": {"schema": SCHEMA}},
    ],
)
async def test_openai_requests_match_the_spec(
    oai: FakeOpenAI, openai_key: str, spec: OpenAISpec, response_format: dict[str, object] | None
) -> None:
    """Every request tierline sends to OpenAI is a valid CreateChatCompletionRequest."""
    config = make_config({"o": openai_backend(oai, openai_key)})
    req = request(
        system="Be brief.", stop=("\n\n",), temperature=0.3, response_format=response_format
    )
    outcome = await ask(config, req)
    assert outcome.ok, outcome.final
    bodies = [r for r in oai.requests if r.path == "/v1/chat/completions"]
    assert len(bodies) == 1
    spec.validate(bodies[0].body, "CreateChatCompletionRequest")
    body = bodies[0].body
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["max_completion_tokens"] == 32 and "max_tokens" not in body
    if (
        response_format
        and response_format.get("type") == "json_object"
        and "schema" in response_format
    ):
        assert (
            body["response_format"]["type"] == "json_schema"
        )  # the spec has no json_object+schema


async def test_json_schema_answer_is_parsed_json(oai: FakeOpenAI, openai_key: str) -> None:
    """A json_schema job gets the schema-shaped JSON text the server produced."""
    import json

    config = make_config({"o": openai_backend(oai, openai_key)})
    fmt = {"type": "json_schema", "json_schema": {"name": "g", "schema": SCHEMA}}
    outcome = await ask(config, request(response_format=fmt))
    assert outcome.final and outcome.final.completion
    assert set(json.loads(outcome.final.completion.text)) == {"label", "score"}


async def test_openai_usage_subsets_are_normalised(openai_key: str) -> None:
    """Cached tokens are part of input, reasoning tokens part of output."""
    with FakeOpenAI(api_key=KEY) as srv:
        srv.enqueue_reply(
            prompt_tokens=100, completion_tokens=40, cached_tokens=64, reasoning_tokens=30
        )
        outcome = await ask(
            make_config({"o": openai_backend(srv, openai_key)}), request(max_tokens=64)
        )
    assert outcome.final and outcome.final.completion
    usage = outcome.final.completion.usage
    assert (usage.input_tokens, usage.cached_tokens) == (100, 64)
    assert (usage.output_tokens, usage.reasoning_tokens) == (40, 30)


async def test_missing_key_is_unavailable_and_falls_back(
    oai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No key in the environment: the backend cannot serve, the next one in the chain answers."""
    monkeypatch.delenv("NOPE_API_KEY", raising=False)
    config = make_config(
        {
            "first": openai_backend(oai, "NOPE_API_KEY"),
            "second": {
                "kind": "openai-compatible",
                "model": "gpt-4o-mini",
                "base_url": oai.base_url,
                "api_key_env": "SECOND_API_KEY",
            },
        }
    )
    monkeypatch.setenv("SECOND_API_KEY", KEY)
    outcome = await ask(config)
    assert [h.status for h in outcome.hops] == ["unavailable", "ok"]
    assert "NOPE_API_KEY" in (outcome.hops[0].error or "")
    assert outcome.hops[0].attempts == 0


async def test_wrong_key_is_not_retried_and_never_echoed(
    oai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 401 fails at once (no retry can help) and the message never contains the key."""
    secret = "sk-wrong-abcdefghijklmnop"
    monkeypatch.setenv("BAD_API_KEY", secret)
    outcome = await ask(make_config({"o": openai_backend(oai, "BAD_API_KEY")}))
    hop = outcome.hops[0]
    assert (hop.status, hop.attempts) == ("error", 1)
    assert "401" in (hop.error or "") and secret not in (hop.error or "")


@pytest.mark.parametrize(
    ("fault", "attempts"),
    [
        ({"status": 429, "headers": {"retry-after-ms": "50"}}, 2),
        ({"status": 429, "headers": {"retry-after": "0.05"}}, 2),
        ({"status": 500}, 2),
        ({"status": 503}, 2),
        ({"kind": "reset"}, 2),
        ({"kind": "malformed"}, 2),
        ({"status": 400}, 1),
        ({"status": 404}, 1),
    ],
)
async def test_faults_are_retried_or_not(
    oai: FakeOpenAI, openai_key: str, fault: dict[str, object], attempts: int
) -> None:
    """Retryable faults are retried once and then succeed; 4xx that cannot succeed are not."""
    oai.enqueue_fault(**fault)  # type: ignore[arg-type]
    outcome = await ask(make_config({"o": openai_backend(oai, openai_key, max_attempts=3)}))
    hop = outcome.hops[0]
    assert hop.attempts == attempts
    assert hop.status == ("ok" if attempts == 2 else "error")


async def test_retry_after_is_honoured(oai: FakeOpenAI, openai_key: str) -> None:
    """A 429 with retry-after-ms waits about that long before the retry."""
    oai.enqueue_fault(429, headers={"retry-after-ms": "400"})
    sleeps = Sleeps()
    outcome = await ask(make_config({"o": openai_backend(oai, openai_key)}), sleeps=sleeps)
    assert outcome.ok and outcome.hops[0].attempts == 2
    assert sleeps[0] == 0.4  # the server's delay, not the 0.375-0.5 s jittered backoff


async def test_slow_reply_times_out(oai: FakeOpenAI, openai_key: str) -> None:
    """A reply slower than timeout_s is a timeout; after max_attempts the backend hands over."""
    oai.enqueue_fault(kind="slow", delay=2.0, times=2)
    config = make_config({"o": openai_backend(oai, openai_key, timeout_s=0.3, max_attempts=2)})
    sleeps = Sleeps()
    outcome = await ask(config, sleeps=sleeps)
    hop = outcome.hops[0]
    # Each 2 s reply was given up on (the fake would have answered): two attempts, one backoff.
    # (How many requests reached the fake is not asserted: on a loaded machine an attempt can
    # time out while still connecting.)
    assert hop.status == "unavailable" and "timed out" in (hop.error or "")
    assert hop.attempts == 2, hop
    assert len(sleeps) == 1, sleeps


async def test_refused_connection_hands_over(oai: FakeOpenAI, openai_key: str) -> None:
    """A dead endpoint cannot serve: the job goes to the next backend, the route says so."""
    dead = FakeOpenAI().start()
    dead.stop()
    config = make_config(
        {
            "dead": {
                **openai_backend(oai, openai_key),
                "base_url": dead.base_url,
                "max_attempts": 2,
            },
            "live": openai_backend(oai, openai_key),
        }
    )
    outcome = await ask(config)
    assert [h.status for h in outcome.hops] == ["unavailable", "ok"]
    assert "connect" in (outcome.hops[0].error or "")


async def test_llama_cpp_python_gets_json_object_with_schema() -> None:
    """llama_cpp.server rejects json_schema with a 500: the adapter sends json_object + schema."""
    import json

    with FakeLlamaCppPython() as srv:
        config = make_config(
            {
                "l": {
                    "kind": "openai-compatible",
                    "flavor": "llama-cpp-python",
                    "model": "smol",
                    "base_url": srv.base_url,
                }
            }
        )
        fmt = {"type": "json_schema", "json_schema": {"name": "g", "schema": SCHEMA}}
        outcome = await ask(config, request(response_format=fmt))
        sent = [r.body for r in srv.requests if r.path == "/v1/chat/completions"]
    assert outcome.ok and outcome.hops[0].attempts == 1
    assert sent[0]["response_format"] == {"type": "json_object", "schema": SCHEMA}
    assert outcome.final and outcome.final.completion
    assert set(json.loads(outcome.final.completion.text)) == {"label", "score"}


@pytest.mark.parametrize("fake", [FakeVLLM, FakeLlamaServer])
async def test_vllm_and_llama_server_get_json_schema(fake: type[FakeVLLM]) -> None:
    """vLLM and llama-server take OpenAI's json_schema; json_object+schema is translated to it."""
    with fake(model="m") as srv:
        config = make_config(
            {
                "s": {
                    "kind": "openai-compatible",
                    "flavor": "vllm" if fake is FakeVLLM else "llama-server",
                    "model": "m",
                    "base_url": srv.base_url,
                    "extra_body": {"top_k": 5},
                }
            }
        )
        outcome = await ask(
            config, request(response_format={"type": "json_object", "schema": SCHEMA})
        )
        sent = [r.body for r in srv.requests if r.path == "/v1/chat/completions"]
    assert outcome.ok
    assert sent[0]["response_format"]["json_schema"]["schema"] == SCHEMA
    assert sent[0]["top_k"] == 5 and sent[0]["max_tokens"] == 32


async def test_rate_limit_headers_pause_the_backend(openai_key: str) -> None:
    """x-ratelimit-remaining-requests: 0 holds the next request until the Go-duration reset."""
    with FakeOpenAI(api_key=KEY, rpm=1, rate_window=0.5) as srv:
        config = make_config({"o": openai_backend(srv, openai_key, max_attempts=1)})
        from tierline.dispatch.router import Router

        sleeps = Sleeps()
        router = Router(config, sleep=sleeps)
        try:
            first = await router.dispatch(1, lambda _m: request())
            assert first.final and first.final.completion
            pause = first.final.completion.pause_s
            assert pause > 0 and sleeps == []
            second = await router.dispatch(1, lambda _m: request("again"))
        finally:
            await router.aclose()
    assert second.ok, second.final  # without the pause the fake would have answered 429
    assert len(sleeps) == 1 and 0 < sleeps[0] <= pause  # held once, for what was left of it
