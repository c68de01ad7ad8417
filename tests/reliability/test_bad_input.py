"""The bad input corpus through `tierline run` end to end: every bad line gets a clear error
result naming its file and line, and every good line still completes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tierline.cli import main

from .conftest import Calls, read_results

BIG = 50 * 1024 * 1024  # over the 32 MiB line cap

# (line bytes, expected id, expected status, error type, words in the message)
CORPUS: list[tuple[bytes, str | None, str, str | None, str]] = [
    (
        b'\xef\xbb\xbf{"id": "bom", "prompt": "After a byte order mark", "tier": 1}\r',
        "bom",
        "ok",
        None,
        "",
    ),
    (b'{"id": "crlf", "prompt": "CRLF line", "tier": 2}\r', "crlf", "ok", None, ""),
    (b"{not json", None, "invalid", "invalid_json", "invalid JSON"),
    (b'{"id": "utf", "prompt": "\xff\xfe bad"}', None, "invalid", "invalid_json", "invalid UTF-8"),
    (
        b'{"id": "big", "prompt": "' + b"a" * BIG + b'"}',
        None,
        "invalid",
        "line_too_long",
        "longer than",
    ),
    (b"", None, "", None, ""),  # blank lines are not jobs
    (b"   \t", None, "", None, ""),
    (b'{"id": "noprompt"}', "noprompt", "invalid", "invalid_job", "missing 'prompt'"),
    (
        b'{"id": "types", "prompt": "x", "max_tokens": "ten"}',
        "types",
        "invalid",
        "invalid_job",
        "'max_tokens' must be a positive integer, got string",
    ),
    (
        b'{"id": "tier", "prompt": "x", "tier": 7}',
        "tier",
        "invalid",
        "invalid_job",
        "'tier' must be 1, 2 or 3",
    ),
    (
        b'{"id": "crlf", "prompt": "duplicate"}',
        "crlf",
        "invalid",
        "duplicate_id",
        "duplicate id 'crlf'",
    ),
    # issue 13: hostile schemas, a regex that can never match, Batch body keys, a huge id
    (
        b'{"id": "selfref", "prompt": "x", "response_format": {"type": "json_object", "schema": '
        b'{"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}}}}',
        "selfref",
        "invalid",
        "invalid_job",
        "cycle of references",
    ),
    (
        b'{"id": "remote", "prompt": "x", "response_format": {"type": "json_object", "schema": '
        b'{"properties": {"a": {"$ref": "http://127.0.0.1:9/s.json"}}}}}',
        "remote",
        "invalid",
        "invalid_job",
        "points outside the job's schema",
    ),
    (b'{"id": "regex", "prompt": "x", "expect": "(["}', "regex", "invalid", "invalid_job", "not a valid regex"),
    (
        b'{"custom_id": "n50", "url": "/v1/chat/completions", "body": {"n": 50, "messages": '
        b'[{"role": "user", "content": "x"}]}}',
        "n50",
        "invalid",
        "invalid_job",
        "'body.n' is not supported",
    ),
    (b'{"id": 12345678901234567890123, "prompt": "A big id", "tier": 1}', "12345678901234567890123", "ok", None, ""),
    (b'{"id": "last", "prompt": "The last good job", "tier": 3}', "last", "ok", None, ""),
]


def test_every_bad_line_is_an_error_result_and_the_rest_completes(
    tmp_path: Path, calls: Calls, three_tiers: Path
) -> None:
    """One result per non-blank line, each bad one saying where and why; exit 1."""
    jobs = tmp_path / "bad.jsonl"
    jobs.write_bytes(b"\n".join(line for line, *_ in CORPUS) + b"\n")
    out = tmp_path / "out.jsonl"
    assert main(["run", str(jobs), "-o", str(out), "-c", str(three_tiers), "-q"]) == 1
    by_line = {r["line"]: r for r in read_results(out)}
    expected = {n: case for n, case in enumerate(CORPUS, 1) if case[0].strip()}
    assert sorted(by_line) == sorted(expected)
    for number, (_, job_id, status, kind, words) in expected.items():
        result = by_line[number]
        assert (result["status"], result["id"] if job_id else job_id) == (status, job_id), number
        if kind:
            assert result["error"]["type"] == kind and words in result["error"]["message"]
            assert f"bad.jsonl:{number}:" in result["error"]["message"]
    assert sorted(calls.job_ids) == ["12345678901234567890123", "bom", "crlf", "last"]  # type: ignore[type-var]


@pytest.mark.llama
def test_prompt_longer_than_the_context_with_the_real_model(
    tmp_path: Path, smollm2: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the embedded model, a prompt over its context is that job's error; others finish."""
    jobs = tmp_path / "ctx.jsonl"
    long_prompt = "Summarize: " + "the quick brown fox jumps over the lazy dog " * 400
    jobs.write_text(
        json.dumps({"id": "short", "prompt": "Say hi.", "max_tokens": 2})
        + "\n"
        + json.dumps({"id": "long", "prompt": long_prompt, "max_tokens": 2})
        + "\n",
        encoding="utf-8",
    )
    out = tmp_path / "out.jsonl"
    assert main(["run", str(jobs), "-o", str(out), "-q"]) == 1
    results = {r["id"]: r for r in read_results(out)}
    assert results["short"]["status"] == "ok"
    assert results["long"]["status"] == "error"
    assert "context" in results["long"]["error"]["message"]
