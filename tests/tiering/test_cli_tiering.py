"""`tierline tiering train|eval` end to end through the CLI's main()."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tierline.cli import main

from .conftest import DATA, HANDWRITTEN


def test_eval_json_shape(capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints the documented keys with consistent numbers."""
    assert main(["tiering", "eval", str(DATA / "realistic-eval.jsonl"), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert set(m) == {
        "n",
        "accuracy",
        "macro_f1",
        "per_tier",
        "confusion",
        "tier3_to_tier1",
        "predicted_mix",
    }
    assert set(m["per_tier"]) == {"1", "2", "3"}
    assert set(m["per_tier"]["3"]) == {"precision", "recall", "f1", "support"}
    matrix = m["confusion"]["matrix"]
    assert sum(map(sum, matrix)) == m["n"] == sum(s["support"] for s in m["per_tier"].values())
    assert m["tier3_to_tier1"] == pytest.approx(matrix[2][0] / sum(matrix[2]), abs=1e-4)


def test_eval_table(capsys: pytest.CaptureFixture[str]) -> None:
    """Without --json, a readable table with the headline numbers."""
    assert main(["tiering", "eval", str(DATA / "realistic-eval.jsonl"), "--bias", "cost"]) == 0
    out = capsys.readouterr().out
    assert "macro-F1" in out and "tier 3 sent to tier 1" in out and "confusion" in out


def test_train_then_eval_with_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A model trained by the CLI is used by eval --model (it fits its own training data)."""
    model = tmp_path / "m.npz"
    assert main(["tiering", "train", str(HANDWRITTEN), "-o", str(model), "--max-iter", "40"]) == 0
    assert model.stat().st_size > 0
    capsys.readouterr()
    assert main(["tiering", "eval", str(HANDWRITTEN), "--model", str(model), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] > 0.85


def test_bad_data_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed labelled file exits 2 and names the line."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    assert main(["tiering", "eval", str(bad)]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err


def test_bad_bias_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown --bias exits 2."""
    assert main(["tiering", "eval", str(DATA / "realistic-eval.jsonl"), "--bias", "cheap"]) == 2


ARENA = DATA / "arena-bench-v1-mixtral-vs-gpt4.jsonl"


def test_eval_outcomes_json(capsys: pytest.CaptureFixture[str]) -> None:
    """--outcomes adds router metrics per decision, with the random-router reference."""
    assert main(["tiering", "eval", "--outcomes", str(ARENA), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert set(m) == {"router"}
    assert set(m["router"]) == {"tier 1 vs >=2", "tier <=2 vs 3"}
    r = m["router"]["tier 1 vs >=2"]
    assert r["n"] == 293 and len(r["curve"]) == 11
    assert r["random"] == {"apgr": 0.5, "cpt50": 0.5, "cpt80": 0.8}
    assert 0.0 < r["apgr"] < r["oracle_apgr"] <= 1.5
    shares = [p["strong_share"] for p in r["curve"]]
    assert shares == sorted(shares) and shares[0] == 0.0 and shares[-1] == 1.0


def test_eval_outcomes_and_labels_table(capsys: pytest.CaptureFixture[str]) -> None:
    """Labelled files and outcomes together print both tables."""
    args = ["tiering", "eval", str(DATA / "realistic-eval.jsonl"), "--outcomes", str(ARENA)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "macro-F1" in out and "APGR" in out and "CPT(80%)" in out and "random router" in out


def test_eval_labels_do_not_change_predictions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same prompts labelled all tier 1 and all tier 3 get the same predicted mix: a label
    that leaked into the pipeline (as a `tier` override) would make the two mixes differ."""
    prompts = [json.loads(x)["prompt"] for x in ARENA.read_text().splitlines()[:40]]
    mixes = []
    for tier in (1, 3):
        path = tmp_path / f"t{tier}.jsonl"
        path.write_text("".join(json.dumps({"prompt": p, "tier": tier}) + "\n" for p in prompts))
        assert main(["tiering", "eval", str(path), "--json"]) == 0
        mixes.append(json.loads(capsys.readouterr().out)["predicted_mix"])
    assert mixes[0] == mixes[1]


def test_eval_needs_something(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No labelled file and no outcomes is a usage error; a bad outcome line names its line."""
    assert main(["tiering", "eval"]) == 2
    bad = tmp_path / "o.jsonl"
    bad.write_text('{"prompt": "x", "weak_score": 1}\n')
    assert main(["tiering", "eval", "--outcomes", str(bad)]) == 2
    assert "o.jsonl:1" in capsys.readouterr().err
