"""One max-tokens rule (`Config.max_tokens_for`): the request a server receives, the budget's
hold for that job and the plan's forecast all use the same limit, whichever of the job, its
backend or `[defaults]` sets it, synchronously and through a provider batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fakes import FakeOpenAI
from tierline.config import Config, config_from_mapping
from tierline.dispatch.batch.divert import BatchOptions, open_diverter
from tierline.jobs import Job, Result, jobs_from_lines
from tierline.ledger.budget import Budget, Hold
from tierline.ledger.store import Ledger
from tierline.run import run_jobs
from tierline.run.plan import make_plan
from tierline.tiering.pipeline import Tierer

# job id -> (its line, the limit it must get): its own max_tokens; its backend's ("own"
# sets 7); the default ("plain" sets none, [defaults] says 9).
CASES = {
    "job-own": ({"tier": 1, "max_tokens": 5}, 5),
    "backend": ({"tier": 1}, 7),
    "default": ({"tier": 2}, 9),
}
# One dollar per output token and nothing per input token: a hold of N dollars is N tokens.
PRICE = {"input_per_mtok": 0, "output_per_mtok": 1_000_000}
TOKEN = 1_000_000  # micro-dollars


class RecordingBudget(Budget):
    """A real budget that also keeps every hold it grants."""

    def __init__(self, cap_micros: int) -> None:
        super().__init__(cap_micros)
        self.holds: list[int] = []

    async def reserve(self, micros: int) -> Hold | None:
        hold = await super().reserve(micros)
        if hold is not None:
            self.holds.append(hold.micros)
        return hold


def make(oai: FakeOpenAI, key_env: str, mode: str) -> Config:
    common = {"kind": "openai", "model": "gpt-4o-mini", "base_url": oai.base_url}
    common |= {"api_key_env": key_env, "mode": mode, "price": PRICE, "max_attempts": 1}
    return config_from_mapping(
        {
            "backends": {"own": {**common, "max_tokens": 7}, "plain": common},
            "routes": {"1": "own", "2": "plain", "3": "plain"},
            "defaults": {"max_tokens": 9},
            "tiering": {"classifier": False},
            "dedup": {"enabled": False},
        },
        origin="test",
    )


def lines() -> list[str]:
    return [json.dumps({"id": i, "prompt": f"say {i}", **line}) for i, (line, _) in CASES.items()]


def sent_limits(oai: FakeOpenAI, mode: str) -> dict[str, int]:
    """What the fake server received, by job id."""
    if mode == "sync":
        bodies = [r.body for r in oai.requests if r.path == "/v1/chat/completions"]
        return {b["messages"][-1]["content"][4:]: b["max_completion_tokens"] for b in bodies}
    uploaded = [data for obj, data in oai.files.values() if obj["purpose"] == "batch"]
    batched = [json.loads(line) for data in uploaded for line in data.splitlines()]
    return {line["custom_id"]: line["body"]["max_completion_tokens"] for line in batched}


@pytest.mark.parametrize("mode", ["sync", "batch"])
async def test_the_request_the_hold_and_the_plan_use_one_limit(
    oai: FakeOpenAI, openai_key: str, tmp_path: Path, mode: str
) -> None:
    config = make(oai, openai_key, mode)
    expected = {i: limit for i, (_, limit) in CASES.items()}
    budget = RecordingBudget(10**12)
    results: list[Result] = []
    with Ledger(tmp_path / "l.db") as ledger:
        run_id = ledger.start_run(
            command="run", config_origin="test", inputs=["-"], baseline_model="m"
        )
        divert = open_diverter(
            BatchOptions(output=str(tmp_path / "out.jsonl")),
            config=config,
            ledger=ledger,
            run_id=run_id,
            inputs=["-"],
        )
        assert (divert is not None) == (mode == "batch")
        await run_jobs(
            jobs_from_lines(lines()),
            config=config,
            sink=results.append,
            ledger=ledger,
            run_id=run_id,
            budget=budget,
            divert=divert,
        )
    want = "ok" if mode == "sync" else "pending"
    assert sorted(r.status for r in results) == [want] * len(CASES), results

    assert sent_limits(oai, mode) == expected
    assert sorted(budget.holds) == sorted(n * TOKEN for n in expected.values())
    for job in jobs_from_lines(lines()):
        assert isinstance(job, Job)
        [row] = make_plan([job], config=config, tierer=Tierer.from_config(config.tiering)).rows
        limit = expected[job.id]
        assert (row.max_output_tokens, row.worst_micros) == (limit, limit * TOKEN)
