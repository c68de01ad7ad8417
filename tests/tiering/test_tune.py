"""Learning from outcomes and calibrating to traffic: `tiering train --outcomes`, `calibrate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tierline.cli import main
from tierline.config import TieringConfig
from tierline.tiering.calibration import Calibration, fit_thresholds
from tierline.tiering.model import load_default, load_model
from tierline.tiering.outcomes import Outcome
from tierline.tiering.pipeline import calibration_from_config
from tierline.tiering.train import OUTCOME_SOURCE, LabelledPrompt, sample_weights
from tierline.tiering.tune import outcome_labels

from .conftest import DATA


def test_fit_thresholds_by_hand() -> None:
    """Ten jobs at shares .5/.3/.2: the two highest P(3) go to tier 3 (threshold halfway
    between .80 and .30), then the three highest P(2)+P(3) of the rest to tier 2."""
    post = np.array(
        [
            [0.05, 0.05, 0.90],
            [0.10, 0.10, 0.80],
            [0.20, 0.50, 0.30],  # P(>=2) .80
            [0.30, 0.50, 0.20],  # .70
            [0.40, 0.50, 0.10],  # .60
            [0.50, 0.40, 0.10],  # .50
            [0.60, 0.30, 0.10],
            [0.70, 0.20, 0.10],
            [0.80, 0.10, 0.10],
            [0.90, 0.05, 0.05],
        ]
    )
    e2, e3 = fit_thresholds(post, (0.5, 0.3, 0.2))
    assert e3 == pytest.approx(0.55)
    assert e2 == pytest.approx(0.55)  # halfway between .60 (in) and .50 (out)
    # Two more jobs (12 in all) already put in tier 3 by rules: 2 = round(.2 * 12) is met, so
    # no classifier job goes to tier 3; 6 = round(.5 * 12) stay in tier 1, so the 4 highest
    # P(>=2) (.95 .90 .80 .70) go to tier 2: halfway to the next (.60).
    e2, e3 = fit_thresholds(post, (0.5, 0.3, 0.2), fixed=(0, 0, 2))
    assert e3 == pytest.approx(0.95)  # above every P(3)
    assert e2 == pytest.approx(0.65)


def test_outcome_labels_by_lost_quality() -> None:
    """The weak route's loss over the score range picks the tier (1-10 grades: range 9)."""
    rows = [Outcome("a", 9, 10), Outcome("b", 8, 10), Outcome("c", 5, 9), Outcome("d", 1, 10)]
    labels = outcome_labels(rows, "mine.jsonl")
    assert [r.tier for r in labels] == [1, 2, 3, 3]  # losses 1/9, 2/9, 4/9, 9/9
    assert labels[0].source == f"{OUTCOME_SOURCE}mine.jsonl"
    assert [r.tier for r in outcome_labels([Outcome("x", 1, 0), Outcome("y", 0, 1)])] == [1, 3]


def test_outcomes_carry_their_share_of_the_weight() -> None:
    """Next to a big corpus, a few outcome rows still carry the configured share."""
    corpus = [LabelledPrompt(str(i), 1 + i % 3, "a/b:f") for i in range(300)]
    mine = [LabelledPrompt(str(i), 1 + i % 3, f"{OUTCOME_SOURCE}x") for i in range(30)]
    w = sample_weights(corpus + mine, 0.5, outcome_share=0.4)
    assert w[300:].sum() / w.sum() == pytest.approx(0.4)
    assert w.sum() == pytest.approx(330)


def test_fitted_calibration_round_trips_and_config_still_wins(tmp_path: Path) -> None:
    """`calibrate` stores thresholds in the model file; explicit config values override them."""
    cal = Calibration(prior=(0.5, 0.3, 0.2), escalate_2=0.61, escalate_3=0.37)
    load_default().with_calibration(cal).save(tmp_path / "m.npz")
    loaded = load_model(tmp_path / "m.npz")
    assert loaded.calibration == cal
    assert calibration_from_config(TieringConfig(), loaded.calibration) == cal
    over = calibration_from_config(TieringConfig(escalate_3=0.2), loaded.calibration)
    assert (over.escalate_2, over.escalate_3) == (0.61, 0.2)
    assert load_default().calibration is None


def _jobs(tmp_path: Path) -> Path:
    prompts = [
        json.loads(x)["prompt"] for x in (DATA / "realistic-eval.jsonl").read_text().splitlines()
    ]
    path = tmp_path / "jobs.jsonl"
    path.write_text(
        "".join(json.dumps({"id": str(i), "prompt": p}) + "\n" for i, p in enumerate(prompts))
    )
    return path


_ROUTES = '[backends.x]\nkind = "llamacpp"\n[routes]\n1 = ["x"]\n2 = ["x"]\n3 = ["x"]\n'


def _classified_mix(
    jobs: Path, config: Path | None, capsys: pytest.CaptureFixture[str]
) -> list[int]:
    capsys.readouterr()
    assert main(["classify", str(jobs), *(["--config", str(config)] if config else [])]) == 0
    tiers = [json.loads(x)["tier"] for x in capsys.readouterr().out.splitlines()]
    return [tiers.count(t) for t in (1, 2, 3)]


def test_calibrate_then_classify_splits_at_the_shares(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`classify` with the calibrated model splits the same traffic at the asked shares."""
    jobs = _jobs(tmp_path)
    n = len(jobs.read_text().splitlines())
    model = tmp_path / "cal.npz"
    args = ["tiering", "calibrate", str(jobs), "--share", "0.6,0.3,0.1", "-o", str(model)]
    assert main(args) == 0
    assert "wrote" in capsys.readouterr().err
    config = tmp_path / "calibrated.toml"  # not ./tierline.toml, which would be the default
    config.write_text(f'{_ROUTES}[tiering]\nmodel = "{model.as_posix()}"\n')
    mix = _classified_mix(jobs, config, capsys)
    assert mix == [round(0.6 * n), n - round(0.6 * n) - round(0.1 * n), round(0.1 * n)]
    assert _classified_mix(jobs, None, capsys) != mix  # the shipped thresholds differ


def test_calibrate_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Bad shares and bad job lines exit 2 before anything is written."""
    jobs = _jobs(tmp_path)
    out = tmp_path / "m.npz"
    assert main(["tiering", "calibrate", str(jobs), "--share", "0.7,0.2", "-o", str(out)]) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "x"}\nnot json\n')
    assert main(["tiering", "calibrate", str(bad), "-o", str(out)]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err
    assert not out.exists()


def test_train_on_outcomes_learns_what_the_weak_route_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Outcomes where the weak route fails questions about the blue folder and half-fails the green one: a
    model trained on them escalates those first; the shipped model cannot know. The oracle's
    APGR is .75 here: the blue and green questions hold 3/4 and 1/4 of the gap."""
    rows = []
    for i in range(40):
        rows.append(
            {"prompt": f"Question {i} about the blue folder", "weak_score": 1, "strong_score": 10}
        )
        rows.append(
            {
                "prompt": f"Question {i} about the red folder",
                "weak_score": 10,
                "strong_score": 10,
            }
        )
        rows.append(
            {
                "prompt": f"Question {i} about the green folder",
                "weak_score": 7,
                "strong_score": 10,
            }
        )
    outcomes = tmp_path / "outcomes.jsonl"
    outcomes.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = tmp_path / "m.npz"
    args = ["tiering", "train", "--outcomes", str(outcomes), "-o", str(model), "--max-iter", "40"]
    assert main(args) == 0
    got = {}
    for name, extra in (("trained", ["--model", str(model)]), ("shipped", [])):
        capsys.readouterr()
        assert main(["tiering", "eval", "--outcomes", str(outcomes), "--json", *extra]) == 0
        got[name] = json.loads(capsys.readouterr().out)["router"]
    trained, shipped = got["trained"], got["shipped"]
    # P(3) puts the blue questions first: 3/4 of the gap with 1/3 of the calls, so 50% of it
    # at 1/3 * .5 / .75 = 2/9 of the calls, whatever the order of the other two kinds.
    assert trained["tier <=2 vs 3"]["oracle_apgr"] == pytest.approx(0.75)
    assert trained["tier <=2 vs 3"]["cpt50"] == pytest.approx(2 / 9, abs=0.01)
    assert trained["tier <=2 vs 3"]["apgr"] >= 0.66 > 0.6 > shipped["tier <=2 vs 3"]["apgr"]
    # P(2) + P(3) puts both failing kinds before the red one: 80% of the gap by 2/3 of calls.
    assert trained["tier 1 vs >=2"]["cpt80"] <= 2 / 3 + 0.01


def test_train_needs_data(capsys: pytest.CaptureFixture[str]) -> None:
    """Neither labelled files nor outcomes: a usage error."""
    assert main(["tiering", "train", "-o", "x.npz"]) == 2
