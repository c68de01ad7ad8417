"""`tierline plan`: estimates per tier and backend, and exit 3 over --max-cost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tierline.cli import main
from tierline.jobs import jobs_from_lines
from tierline.ledger.estimate import estimate_text_tokens, input_token_bound
from tierline.run.plan import make_plan
from tierline.tiering.pipeline import Tierer

from ..conftest import write_jsonl
from .conftest import make_config

CONFIG = make_config(
    {
        "local": {"kind": "llamacpp"},
        "api": {
            "kind": "openai",
            "model": "m",
            "price": {"input_per_mtok": 1, "output_per_mtok": 10},
        },
    },
    routes={"1": ["local"], "2": ["api"], "3": ["api"]},
    baseline={"model": "base", "provider": None},
    pricing={"models": {"base": {"input_per_mtok": 2, "output_per_mtok": 20}}},
)
LINES = [
    '{"id": "a", "prompt": "one two three", "tier": 1, "max_tokens": 10}',
    '{"id": "b", "prompt": "one two three", "tier": 3, "max_tokens": 100, "task": "classify"}',
    '{"id": "c", "prompt": "one two three", "tier": 3, "max_tokens": 100}',
    "{broken",
]
TOML = """
[backends.local]
kind = "llamacpp"
[backends.api]
kind = "openai"
model = "m"
price = { input_per_mtok = 1, output_per_mtok = 10 }
[routes]
1 = ["local"]
2 = ["api"]
3 = ["api"]
"""


def test_word_piece_estimate() -> None:
    """Words, long-word extras, digits and punctuation each count: 'Hello, world 42!' = 6."""
    assert estimate_text_tokens("Hello, world 42!") == 6
    assert estimate_text_tokens("internationalization") == 1 + 19 // 7


def test_plan_rows_and_numbers() -> None:
    """Per tier and backend: jobs, estimated tokens (prompt 3 words + 7 template = 10 on an API, + 26 on the local model), output as
    a task share of max_tokens (classify 60%, other 80%), cost, batch cost and baseline."""
    plan = make_plan(
        jobs_from_lines(LINES), config=CONFIG, tierer=Tierer.from_config(CONFIG.tiering)
    )
    rows = {(r.tier, r.backend): r.as_dict() for r in plan.rows}
    local, api = rows[(1, "local")], rows[(3, "api")]
    assert (local["jobs"], local["input_tokens"], local["output_tokens"], local["cost_micros"]) == (
        1,
        29,
        8,
        0,
    )
    assert (api["jobs"], api["input_tokens"], api["output_tokens"]) == (2, 20, 140)
    # 20 in * $1 + 140 out * $10 per Mtok = 1,420 micro-$; batch half; baseline double
    assert (api["cost_micros"], api["batch_cost_micros"], api["baseline_micros"]) == (
        1_420,
        710,
        2_840,
    )
    assert api["savings_micros"] == 1_420
    assert plan.invalid == 1


def test_plan_exits_3_over_max_cost(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """--max-cost under the estimate exits 3, above it exits 0; --json reports over_budget."""
    jobs = write_jsonl(tmp_path / "jobs.jsonl", LINES)
    (tmp_path / "tierline.toml").write_text(TOML)
    assert main(["plan", str(jobs), "--json", "--max-cost", "0.001"]) == 3
    report = json.loads(capsysbinary.readouterr().out)
    assert report["over_budget"] is True and report["totals"]["cost_micros"] == 1_420
    assert main(["plan", str(jobs), "--json", "--max-cost", "1"]) == 0


def test_input_bound_is_at_least_the_bytes() -> None:
    """The budget's prompt bound covers every UTF-8 byte plus a template allowance."""
    [job] = list(jobs_from_lines(['{"id": "x", "prompt": "日本語のテキスト"}']))
    assert input_token_bound(job) >= len("日本語のテキスト".encode()) + 32  # type: ignore[arg-type]


def test_plan_table_is_tsv_in_a_pipe(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a terminal: the plan is a TSV table (header, one line per tier/backend, `all`)
    whose cells are the --json figures; the basis lines follow it."""
    jobs = write_jsonl(tmp_path / "jobs.jsonl", LINES)
    (tmp_path / "tierline.toml").write_text(TOML)
    monkeypatch.chdir(tmp_path)
    assert main(["plan", str(jobs)]) == 0
    lines = capsysbinary.readouterr().out.decode().splitlines()
    head = lines[0].split("\t")
    assert head[:4] == ["tier", "backend", "model", "jobs"] and head[-1] == "saved"
    rows = [line.split("\t") for line in lines[1:] if "\t" in line]
    assert all(len(row) == len(head) for row in rows)
    [total] = [row for row in rows if row[0] == "all"]
    assert main(["plan", str(jobs), "--json"]) == 0
    totals = json.loads(capsysbinary.readouterr().out)["totals"]
    assert total[6] == "$0.0014" == f"${totals['cost_micros'] / 1e6:,.4f}"  # 1,420 micro-$
    assert total[-1] == f"${totals['savings_micros'] / 1e6:,.4f}"
