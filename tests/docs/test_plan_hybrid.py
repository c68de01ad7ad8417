"""`tierline plan` on the example workload with the hybrid config: without a throughput hint the
self-hosted backends (priced by gpu_hour_usd) are unknown before any run, and priced from the
ledger after one run against the fakes, so the total and the savings are known; with the
config's hints they are priced from the hints until the ledger has measured them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES
from tests.docs.conftest import FakeStack, subset
from tierline.cli import main

WORKLOAD = str(EXAMPLES / "workload.jsonl")


def test_hybrid_plan_is_priced_after_one_run(
    fakes: FakeStack, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    hinted = fakes.config("hybrid.toml")
    text = hinted.read_text(encoding="utf-8")
    assert text.count("\nthroughput = ") == 2
    bare = tmp_path / "no-hints.toml"
    bare.write_text(
        "\n".join(line for line in text.splitlines() if not line.startswith("throughput = ")),
        encoding="utf-8",
    )
    config = str(bare)
    ledger = str(tmp_path / "l.db")
    assert main(["plan", WORKLOAD, "-c", str(hinted), "--ledger", ledger, "--json"]) == 0
    hints = json.loads(capsysbinary.readouterr().out)
    assert hints["totals"]["cost_micros"] is not None
    assert {r["throughput"]["basis"] for r in hints["rows"] if r["throughput"]} == {"config"}
    assert main(["plan", WORKLOAD, "-c", config, "--ledger", ledger, "--json"]) == 0
    before = json.loads(capsysbinary.readouterr().out)
    unknown = {r["backend"] for r in before["rows"] if r["cost_micros"] is None}
    assert unknown == {"llama_server", "vllm"}  # gpu_hour_usd, nothing measured yet
    assert before["totals"]["cost_micros"] is None

    jobs = subset(EXAMPLES / "workload.jsonl", tmp_path / "jobs.jsonl", count=60)
    out = str(tmp_path / "out.jsonl")
    assert main(["run", str(jobs), "-c", config, "--ledger", ledger, "-o", out, "-q"]) == 0

    assert main(["plan", WORKLOAD, "-c", config, "--ledger", ledger, "--json"]) == 0
    after = json.loads(capsysbinary.readouterr().out)
    for row in after["rows"]:
        assert row["cost_micros"] is not None, row["basis"]
        if row["backend"] in ("llama_server", "vllm"):
            assert row["basis"].count("ledger: ") == 1 and row["busy_s"] > 0
            assert row["throughput"]["calls"] >= 5
    assert main(["plan", WORKLOAD, "-c", str(hinted), "--ledger", ledger, "--json"]) == 0
    measured = json.loads(capsysbinary.readouterr().out)  # measurements win over the hints
    assert {r["throughput"]["basis"] for r in measured["rows"] if r["throughput"]} == {"ledger"}
    # and when it would finish: every backend heading a route has measured calls now
    assert before["duration"]["seconds"] is None and after["duration"]["seconds"] > 0
    totals = after["totals"]
    assert totals["cost_micros"] > 0 and totals["savings_micros"] > 0
    assert totals["cost_micros"] + totals["savings_micros"] == totals["baseline_micros"]
