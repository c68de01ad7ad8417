"""The real llama-cpp-python with the embedded SmolLM2 model: the default path users meet."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import jsonschema
import pytest
import pytest_asyncio

from tierline.cli import main
from tierline.config import LlamaCppBackendConfig
from tierline.dispatch.base import Request
from tierline.dispatch.llamacpp import LlamaCppBackend, json_grammar
from tierline.errors import BackendError
from tierline.jobs import Message

from .conftest import write_jsonl

pytestmark = pytest.mark.llama

SCHEMA = {
    "type": "object",
    # maxLength bounds each string in the grammar, so even a rambling model closes the JSON.
    "properties": {
        "city": {"type": "string", "maxLength": 30},
        "country": {"type": "string", "maxLength": 30},
    },
    "required": ["city", "country"],
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend(smollm2: Path) -> AsyncIterator[LlamaCppBackend]:
    b = LlamaCppBackend(
        "local", LlamaCppBackendConfig(kind="llamacpp", n_ctx=1024, parallel=4, workers=1)
    )
    yield b
    await b.aclose()


def ask(text: str, **kwargs: object) -> Request:
    return Request(
        messages=(Message("user", text),), max_tokens=kwargs.pop("max_tokens", 16), **kwargs
    )  # type: ignore[arg-type]


@pytest.mark.asyncio(loop_scope="module")
async def test_completion_with_usage(backend: LlamaCppBackend) -> None:
    """A plain request returns text, a finish reason and real token counts."""
    c = await backend.complete(ask("What is the capital of France?", system="Answer briefly."))
    assert c.text.strip() and c.finish_reason in ("stop", "length")
    assert c.usage.input_tokens > 5 and 0 < c.usage.output_tokens <= 16
    assert c.model == "SmolLM2-135M-Instruct.Q4_1-as-Q8_0"  # requantized: it says so


@pytest.mark.asyncio(loop_scope="module")
async def test_max_tokens_truncates(backend: LlamaCppBackend) -> None:
    """max_tokens is honoured and reported as finish_reason 'length'."""
    c = await backend.complete(ask("Write a long story about a dragon.", max_tokens=4))
    assert c.usage.output_tokens == 4 and c.finish_reason == "length"


@pytest.mark.asyncio(loop_scope="module")
async def test_json_schema_is_enforced_by_grammar(backend: LlamaCppBackend) -> None:
    """An OpenAI json_schema response_format is translated to a grammar: the output validates."""
    rf = {"type": "json_schema", "json_schema": {"name": "place", "schema": SCHEMA}}
    c = await backend.complete(
        ask("Where is the Eiffel Tower? Reply in JSON.", max_tokens=60, response_format=rf)
    )
    jsonschema.validate(json.loads(c.text), SCHEMA)


def test_json_grammar_forbids_raw_control_characters(smollm2: Path) -> None:
    """Both response_format spellings get a grammar, and its strings are JSON strings."""
    rf = {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}}
    grammar = json_grammar(rf)
    assert grammar is not None and '"\\"city\\""' in grammar
    char_rule = next(line for line in grammar.splitlines() if line.startswith("char ::="))
    assert "\\x00-\\x1F" in char_rule
    assert json_grammar({"type": "json_object", "schema": SCHEMA}) == grammar
    assert "root" in (json_grammar({"type": "json_object"}) or "")
    assert json_grammar(None) is None and json_grammar({"type": "text"}) is None


@pytest.mark.asyncio(loop_scope="module")
async def test_concurrent_calls_are_batched(backend: LlamaCppBackend) -> None:
    """Concurrent callers share one worker, decoded together: each gets its own answer."""
    answers = await asyncio.gather(
        *(backend.complete(ask(f"Say the number {i}.", max_tokens=8)) for i in range(4))
    )
    assert len(answers) == 4 and all(a.usage.output_tokens > 0 for a in answers)


@pytest.mark.asyncio(loop_scope="module")
async def test_prompt_longer_than_context_is_a_job_error(backend: LlamaCppBackend) -> None:
    """A prompt over the context window fails that request with a clear, non-retryable error."""
    with pytest.raises(BackendError, match="context") as info:
        await backend.complete(ask("word " * 3000))
    assert not info.value.retryable


def test_run_on_embedded_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`tierline run` with no config: every job ok on the local model, results, ledger, summary."""
    jobs = write_jsonl(
        tmp_path / "jobs.jsonl",
        [
            '{"id": "q", "prompt": "What is 2+2?", "max_tokens": 8}',
            json.dumps(
                {
                    "id": "x",
                    "prompt": "Extract the city: I live in Paris.",
                    "max_tokens": 80,
                    "response_format": {"type": "json_object", "schema": SCHEMA},
                }
            ),
            '{"id": "bad", "prompt": ""}',
            '{"custom_id": "b", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o", "max_tokens": 6, "messages": [{"role": "user", "content": "Hi"}]}}',
        ],
    )
    out = tmp_path / "out.jsonl"
    code = main(["run", str(jobs), "-o", str(out), "--ledger", str(tmp_path / "l.db")])
    err = capsys.readouterr().err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    by_id = {r["id"]: r for r in lines}
    assert code == 1 and len(lines) == 4  # the empty prompt is an invalid line
    assert [by_id[i]["status"] for i in ("q", "x", "bad", "b")] == ["ok", "ok", "invalid", "ok"]
    assert by_id["q"]["backend"] == "local" and by_id["q"]["usage"]["output_tokens"] <= 8
    assert "embedded default" in by_id["q"]["route"][-1]["note"]
    jsonschema.validate(json.loads(by_id["x"]["output"]), SCHEMA)
    rows = (
        sqlite3.connect(tmp_path / "l.db")
        .execute("SELECT job_id, status, cost_nanos FROM calls ORDER BY job_id")
        .fetchall()
    )
    assert rows == [("b", "ok", 0), ("q", "ok", 0), ("x", "ok", 0)]
    assert "embedded default" in err and "4 job(s)" in err and "1 invalid" in err
