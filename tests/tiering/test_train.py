"""Training is deterministic and learns; saved models round-trip and refuse foreign layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tierline.tiering.model import load_model
from tierline.tiering.train import (
    LabelledPrompt,
    TrainConfig,
    last_label_wins,
    read_labelled,
    sample_weights,
    train,
)

FAST = TrainConfig(max_iter=40)


def test_training_is_deterministic(small_rows: list[LabelledPrompt]) -> None:
    """The same rows give bit-identical weights."""
    a = train(small_rows, FAST)
    b = train(small_rows, FAST)
    assert np.array_equal(a.w_hash, b.w_hash)
    assert np.array_equal(a.w_dense, b.w_dense)
    assert np.array_equal(a.bias, b.bias)


def test_training_fits_its_data(small_rows: list[LabelledPrompt]) -> None:
    """A model fits the slice it was trained on (most rows right, every tier predicted)."""
    model = train(small_rows, FAST)
    pred = model.predict_proba([r.prompt for r in small_rows]).argmax(axis=1) + 1
    truth = np.array([r.tier for r in small_rows])
    assert (pred == truth).mean() > 0.9
    assert set(pred.tolist()) == {1, 2, 3}


def test_save_load_round_trip(small_rows: list[LabelledPrompt], tmp_path: Path) -> None:
    """A saved model predicts what the in-memory one did (float16 hashed weights aside)."""
    model = train(small_rows, FAST)
    model.save(tmp_path / "m.npz")
    loaded = load_model(tmp_path / "m.npz")
    texts = [r.prompt for r in small_rows[:20]]
    assert np.allclose(model.predict_proba(texts), loaded.predict_proba(texts), atol=1e-2)


def test_load_refuses_other_layout(small_rows: list[LabelledPrompt], tmp_path: Path) -> None:
    """A model file from another feature layout is refused with a retrain hint."""
    path = tmp_path / "m.npz"
    train(small_rows, FAST).save(path)
    with np.load(path) as f:
        arrays = dict(f.items())
    arrays["hash_bits"] = np.array(12)
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="tiering train"):
        load_model(path)


def test_sample_weights_balance_tiers() -> None:
    """Each tier gets a third of the weight, whatever its row count."""
    rows = [LabelledPrompt("a", 1, "x/a:f")] * 90 + [LabelledPrompt("b", 2, "x/b:f")] * 9
    rows += [LabelledPrompt("c", 3, "x/c:f")]
    w = sample_weights(rows, 0.5)
    per_tier = [w[[r.tier == t for r in rows]].sum() for t in (1, 2, 3)]
    assert np.allclose(per_tier, [len(rows) / 3] * 3)


def test_read_labelled_names_bad_line(tmp_path: Path) -> None:
    """A bad line is reported with its file and line number."""
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "x", "tier": 1}\n{"prompt": "y", "tier": 7}\n')
    with pytest.raises(ValueError, match=r"d.jsonl:2: tier must be"):
        read_labelled(path)


def test_a_later_file_relabels_a_prompt(small_rows: list[LabelledPrompt]) -> None:
    """A prompt given twice keeps the last label (the public rows relabel corpus rows), once."""
    prompt = small_rows[0].prompt
    relabelled = LabelledPrompt(prompt, 3 if small_rows[0].tier != 3 else 1, "later:file")
    rows = last_label_wins([*small_rows, relabelled])
    assert len(rows) == len(small_rows)
    assert rows[0] == relabelled
    model = train([*small_rows, relabelled], FAST)
    assert int(model.predict_proba([prompt]).argmax()) + 1 == relabelled.tier
