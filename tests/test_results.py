"""One typed result path: every outcome has its constructor, and all serialise the same keys."""

from __future__ import annotations

import re
from pathlib import Path

import orjson

from tierline.jobs import InvalidLine, Job, Message, Result, RouteHop, Usage
from tierline.tiering.vote import TierVote

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "reference.md"
VOTE = TierVote(2, "rule r: keyword 'prove'", 0.91234, "rule")
JOB = Job(
    id="j1",
    line=3,
    source="jobs.jsonl",
    messages=(Message("user", "Prove it."),),
    metadata={"team": "a"},
    key="0" * 32,
)


def documented_keys() -> tuple[set[str], set[str]]:
    """(keys of every result line, keys only on some) from docs/reference.md "Result lines"."""
    section = REFERENCE.read_text(encoding="utf-8").split("## Result lines\n", 1)[1]
    section = section.split("| field | type | meaning |", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| ([^|]+) \|", section, flags=re.MULTILINE)
    always = {name for name, kind in rows if "(only" not in kind}
    sometimes = {name for name, kind in rows if "(only" in kind}
    return always, sometimes


def every_outcome() -> dict[str, Result]:
    hop = RouteHop("small", "m", "ok", attempts=1, latency_s=0.25, tier=2)
    answered = Result.answered(
        JOB,
        VOTE,
        error=None,
        route=[hop],
        backend="small",
        model="m",
        output="yes",
        usage=Usage(10, 2),
        cost_usd=0.001,
        latency_s=0.25,
        attempts=1,
    )
    failed = Result.answered(
        JOB,
        VOTE,
        error={"type": "backend_error", "message": "boom"},
        route=[hop],
    )
    return {
        "ok": answered,
        "error": failed,
        "invalid": Result.invalid(InvalidLine(4, "jobs.jsonl", "missing 'prompt'", key="1" * 32)),
        "skipped_budget": Result.skipped(JOB, VOTE, "--max-cost $1: spent"),
        "pending": Result.pending(JOB, VOTE, "openai", "gpt-4o-mini"),
        "copied": answered.copied(JOB),
        "cached": Result.from_cache(answered.to_dict(), JOB),
    }


def test_every_outcome_writes_the_documented_keys() -> None:
    """Each outcome's line has exactly the keys docs/reference.md lists for every line (plus
    the documented only-when-set ones where they apply): a field added in one place and not the
    others, or not documented, fails here."""
    always, sometimes = documented_keys()
    for kind, result in every_outcome().items():
        keys = set(result.to_dict())
        assert keys - sometimes == always, kind
    outcomes = every_outcome()
    assert outcomes["copied"].to_dict()["dedup_of"] == "j1"
    assert outcomes["cached"].to_dict()["cached"] is True


def test_outcomes_carry_the_job_and_its_vote() -> None:
    """Constructors take id, place, key and metadata from the job and the tier from the vote."""
    for kind, result in every_outcome().items():
        if kind == "invalid":
            assert (result.status, result.key, result.tier) == ("invalid", "1" * 32, None)
            continue
        assert (result.id, result.line, result.source, result.key) == (
            "j1",
            3,
            "jobs.jsonl",
            "0" * 32,
        ), kind
        assert (result.tier, result.confidence, result.metadata) == (2, 0.912, {"team": "a"})
    assert every_outcome()["pending"].to_dict()["route"] == [
        {
            "backend": "openai",
            "model": "gpt-4o-mini",
            "status": "pending",
            "attempts": 0,
            "latency_s": 0.0,
            "batch_id": None,
        }
    ]


def test_a_line_reads_back_as_the_same_result() -> None:
    """`from_record` inverts `to_dict` for every outcome (the batch path stores lines in the
    ledger and reads them back), through the one JSON codec."""
    for kind, result in every_outcome().items():
        line = orjson.loads(orjson.dumps(result.to_dict()))
        assert Result.from_record(line).to_dict() == result.to_dict(), kind
