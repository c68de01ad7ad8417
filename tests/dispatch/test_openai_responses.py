"""The `openai-responses` kind end to end: the openai SDK's client posting to FakeOpenAI's
`/v1/responses` on 127.0.0.1; every body sent must be a valid `CreateResponse` and every answer
the fake gives a valid `Response` (OpenAI's OpenAPI spec, trimmed copy in tests/fakes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fakes import FakeOpenAI
from tests.fakes.spec import OpenAISpec
from tierline.cli import main
from tierline.dispatch.probe import check_backends

from .conftest import KEY, make_config
from .helpers import ask, request

SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string"}},
    "required": ["label"],
}


def responses(srv: FakeOpenAI, env: str, **extra: object) -> dict[str, object]:
    return {
        "kind": "openai-responses",
        "model": "gpt-4.1",
        "base_url": srv.base_url,
        "api_key_env": env,
        **extra,
    }


@pytest.mark.parametrize(
    "response_format", [None, {"type": "json_object"}, {"type": "json_object", "schema": SCHEMA}]
)
async def test_requests_and_answers_match_the_spec(
    oai: FakeOpenAI, openai_key: str, spec: OpenAISpec, response_format: dict[str, object] | None
) -> None:
    oai.enqueue_reply(prompt_tokens=40, completion_tokens=9)
    config = make_config({"r": responses(oai, openai_key)})
    outcome = await ask(config, request(system="Be brief.", response_format=response_format))
    assert outcome.ok, outcome.final
    [sent] = [r for r in oai.requests if r.path == "/v1/responses"]
    spec.validate(sent.body, "CreateResponse")
    assert sent.body["instructions"] == "Be brief." and sent.body["max_output_tokens"] == 32
    assert outcome.final and outcome.final.completion
    completion = outcome.final.completion
    assert (completion.usage.input_tokens, completion.usage.output_tokens) == (40, 9)
    assert completion.request_id and completion.request_id.startswith("resp_")
    if response_format and "schema" in response_format:
        assert set(json.loads(completion.text)) == {"label"}


async def test_the_fake_answers_a_valid_response(oai: FakeOpenAI, spec: OpenAISpec) -> None:
    """The fake's answer shape is the spec's (what the codec's recorded-body tests assume)."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key=KEY, base_url=oai.base_url, max_retries=0)
    async with client:
        raw = await client.responses.with_raw_response.create(
            model="gpt-4.1", input="hi", max_output_tokens=16
        )
        spec.validate(json.loads(raw.text), "Response")
        parsed = raw.parse()  # and the SDK's own model reads it
    assert parsed.output_text and parsed.usage and parsed.usage.output_tokens <= 16


async def test_a_job_with_stop_is_refused_before_sending(oai: FakeOpenAI, openai_key: str) -> None:
    outcome = await ask(make_config({"r": responses(oai, openai_key)}), request(stop=("END",)))
    assert outcome.final and outcome.final.status == "error"
    assert "no stop sequences" in (outcome.final.error or "")
    assert not [r for r in oai.requests if r.path == "/v1/responses"]


async def test_backends_check_lists_the_model(oai: FakeOpenAI, openai_key: str) -> None:
    config = make_config({"r": responses(oai, openai_key)})
    [row] = await check_backends(config)
    assert (row.kind, row.model, row.usable, row.model_present) == (
        "openai-responses",
        "gpt-4.1",
        True,
        True,
    )


def test_run_prices_and_records_the_kind(
    oai: FakeOpenAI, openai_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole `tierline run`: each job answered and priced from genai-prices' OpenAI table
    (the kind's pricing key; an unknown price would be None)."""
    monkeypatch.setenv("TIERLINE_HOME", str(tmp_path / "home"))
    config = tmp_path / "tierline.toml"
    config.write_text(
        "[backends.r]\n"
        'kind = "openai-responses"\nmodel = "gpt-4.1"\n'
        f'base_url = "{oai.base_url}"\napi_key_env = "{openai_key}"\n'
        '[routes]\n1 = "r"\n2 = "r"\n3 = "r"\n',
        encoding="utf-8",
    )
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"id": "a", "prompt": "Say hi"}\n{"id": "b", "prompt": "Say bye"}\n')
    out = tmp_path / "out.jsonl"
    assert main(["run", str(jobs), "-o", str(out), "-c", str(config), "-q"]) == 0
    results = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert {r["status"] for r in results.values()} == {"ok"}
    assert all(r["cost_usd"] > 0 for r in results.values())
    assert len([r for r in oai.requests if r.path == "/v1/responses"]) == 2
