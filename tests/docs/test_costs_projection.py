"""docs/costs.md's 100M tokens/day table is what the documented command prints today."""

from __future__ import annotations

import json

import pytest

from tests.conftest import EXAMPLES, REPO
from tierline.cli import main


def test_projection_table_matches_the_command(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    """Every cost, saving and token count of the documented projection is in docs/costs.md
    (no ledger here: the hybrid config's throughput hints price the self-hosted tiers)."""
    args = ["plan", str(EXAMPLES / "workload.jsonl"), "-c", str(EXAMPLES / "configs/hybrid.toml")]
    assert main([*args, "--daily-tokens", "100M", "--json"]) == 0
    p = json.loads(capsysbinary.readouterr().out)["projection"]
    docs = (REPO / "docs" / "costs.md").read_text(encoding="utf-8")

    def usd(micros: int) -> str:
        return f"${micros / 1e6:,.2f}"

    expected = [
        usd(p[key])
        for key in (
            "baseline_micros_per_day",
            "baseline_batch_micros_per_day",
            "tiered_micros_per_day",
            "tiered_dedicated_micros_per_day",
            "tiered_batch_micros_per_day",
        )
    ]
    expected.append(f"{usd(p['tiered_savings_micros_per_day'])} ({p['tiered_savings_share']:.0%})")
    expected.append(
        f"{usd(p['tiered_batch_savings_micros_per_day'])} ({p['tiered_batch_savings_share']:.0%})"
    )
    for m in p["mix"]:
        expected.append(
            f"| {m['input_tokens_per_day']:,} | {m['output_tokens_per_day']:,} "
            f"| {usd(m['cost_micros_per_day'])} |"
        )
    expected.append(f"llama_server {p['gpu_hours_per_day']['llama_server']:.1f}")
    missing = [text for text in expected if text not in docs]
    assert not missing, f"docs/costs.md is stale; rerun the documented command: {missing}"
