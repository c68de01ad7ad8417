"""Answer checks: each failure mode is caught, and good answers pass."""

from __future__ import annotations

import orjson
import pytest

from tierline.dispatch.anthropic import parse_message
from tierline.dispatch.checks import DEFAULT_CHECKS, run_checks
from tierline.jobs import Job, jobs_from_lines
from tierline.testing import completion

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def job(**fields: object) -> Job:
    [j] = jobs_from_lines([orjson.dumps({"id": "j", "prompt": "x", **fields})])
    assert isinstance(j, Job)
    return j


@pytest.mark.parametrize(
    ("fields", "text", "finish", "failed"),
    [
        ({}, "A fine answer.", "stop", None),
        ({}, "   \n", "stop", "empty"),
        ({}, "I'm sorry, but I can't help with that.", "stop", "refusal"),
        ({}, "Sure. Some people say I'm sorry, but that is fine.", "stop", None),
        ({}, "Here is the answer", "refusal", "refusal"),
        ({}, "The answer is cut", "length", "truncated"),
        ({"response_format": {"type": "json_object"}}, '{"n": 1}', "stop", None),
        ({"response_format": {"type": "json_object"}}, '{"n": 1', "stop", "json"),
        (
            {"response_format": {"type": "json_object", "schema": SCHEMA}},
            '{"n": "one"}',
            "stop",
            "json",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "n", "schema": SCHEMA},
                }
            },
            '{"n": 3}',
            "stop",
            None,
        ),
        ({"expect": ["positive", "negative"]}, " Negative.", "stop", None),
        ({"expect": ["positive", "negative"]}, "It is mixed", "stop", "expect"),
        ({"expect": r"^\d{4}-\d{2}-\d{2}$"}, "2024-09-17", "stop", None),
        ({"expect": r"^\d{4}-\d{2}-\d{2}$"}, "September 17", "stop", "expect"),
    ],
)
def test_checks(fields: dict[str, object], text: str, finish: str, failed: str | None) -> None:
    """The first failing default check is reported by name; passing answers give None."""
    failure = run_checks(job(**fields), completion(text, finish_reason=finish), DEFAULT_CHECKS)
    assert (failure.check if failure else None) == failed


def test_schema_failure_says_where() -> None:
    """A schema mismatch names the path and the reason."""
    failure = run_checks(
        job(response_format={"type": "json_object", "schema": SCHEMA}),
        completion('{"n": "x"}'),
        ["json"],
    )
    assert failure is not None and "at n" in failure.detail and "integer" in failure.detail


def test_anthropic_refusal_stop_reason_fails_the_refusal_check() -> None:
    """Anthropic's `stop_reason: "refusal"` reaches the check as a refusal, whatever the text."""
    body = {
        "content": [{"type": "text", "text": "Here is"}],
        "stop_reason": "refusal",
        "usage": {"input_tokens": 5, "output_tokens": 2},
        "model": "claude-x",
    }
    failure = run_checks(job(), parse_message(body, "claude-x"), DEFAULT_CHECKS)
    assert failure is not None and failure.check == "refusal"
