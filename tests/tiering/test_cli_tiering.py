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
