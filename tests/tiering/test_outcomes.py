"""Router metrics (RouteLLM's APGR / CPT) against values worked out by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from tierline.tiering.outcomes import read_outcomes, router_metrics

# Four prompts: the weak route fails the last two, the strong route gets all four.
WEAK = [1.0, 1.0, 0.0, 0.0]
STRONG = [1.0, 1.0, 1.0, 1.0]


def test_good_router_by_hand() -> None:
    """Scores rising with the gain: quantile edges 0.1, 0.175, 0.25, 0.325, 0.4.

    Strong shares 1, .75, .5, .25 and 0 (the last edge routes none); PGR 1, 1, 1, .5, 0.
    Trapezoids over [0, .25, .5, .75, 1]: .0625 + .1875 + .25 + .25 = .75.
    CPT(50%) = .25 (reached at that point); CPT(80%) = .25 + (.8 - .5) / .5 * .25 = .40.
    """
    m = router_metrics([0.1, 0.2, 0.3, 0.4], WEAK, STRONG, num_results=4)
    assert [round(t, 4) for t, _, _ in m.curve] == [0.4, 0.325, 0.25, 0.175, 0.1]
    assert [s for _, s, _ in m.curve] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [q for _, _, q in m.curve] == [0.5, 0.75, 1.0, 1.0, 1.0]
    assert m.weak_quality == 0.5 and m.strong_quality == 1.0
    assert m.apgr == pytest.approx(0.75)
    assert m.cpt50 == pytest.approx(0.25)
    assert m.cpt80 == pytest.approx(0.40)
    # The oracle escalates the two failing prompts first: the same curve here.
    assert m.oracle_apgr == pytest.approx(0.75)


def test_backwards_router_is_worse_than_random() -> None:
    """Scores falling with the gain: PGR 0, 0, 0, .5, 1 at shares 0 .. 1.

    APGR = (0 + .5) / 2 * .25 + (.5 + 1) / 2 * .25 = .25; CPT(50%) = .75;
    CPT(80%) = .75 + (.8 - .5) / .5 * .25 = .90.
    """
    m = router_metrics([0.4, 0.3, 0.2, 0.1], WEAK, STRONG, num_results=4)
    assert m.apgr == pytest.approx(0.25)
    assert m.cpt50 == pytest.approx(0.75)
    assert m.cpt80 == pytest.approx(0.90)


def test_routellm_sweep_with_ten_results_and_ties() -> None:
    """Ten quantile bins as in the published evaluation; tied scores move together.

    Scores are 0 for the six prompts the weak route gets right and 1 for the four it fails:
    every edge but the last is 0 or 1, so the curve has shares 1, .4 and 0 only.
    PGR at .4 is 1: APGR = .4 * .5 + .6 * 1 = .8; CPT(50%) = .2; CPT(80%) = .32.
    """
    weak = [1.0] * 6 + [0.0] * 4
    strong = [1.0] * 10
    m = router_metrics([0.0] * 6 + [1.0] * 4, weak, strong)
    assert len(m.curve) == 11
    assert {s for _, s, _ in m.curve} == {0.0, 0.4, 1.0}
    assert m.apgr == pytest.approx(0.8)
    assert m.cpt50 == pytest.approx(0.2)
    assert m.cpt80 == pytest.approx(0.32)


def test_scale_does_not_matter() -> None:
    """1-10 judge grades give the same ratios as the same grades mapped to [0, 1]."""
    scores = [0.9, 0.1, 0.5, 0.7, 0.3]
    weak, strong = [2.0, 9.0, 5.0, 3.0, 8.0], [9.0, 9.0, 7.0, 10.0, 8.0]
    a = router_metrics(scores, weak, strong)
    b = router_metrics(scores, [(x - 1) / 9 for x in weak], [(x - 1) / 9 for x in strong])
    assert a.apgr == pytest.approx(b.apgr)
    assert a.cpt80 == pytest.approx(b.cpt80)


def test_operating_point_and_no_gap() -> None:
    """The configured decision is reported on the same axes; equal routes leave no gap."""
    m = router_metrics([0.1, 0.2, 0.3, 0.4], WEAK, STRONG, escalated=[False, False, True, True])
    assert m.operating_share == 0.5 and m.operating_pgr == pytest.approx(1.0)
    same = router_metrics([0.1, 0.2], [1.0, 0.0], [1.0, 0.0])
    assert same.apgr is None and same.cpt50 is None and same.oracle_apgr is None
    assert same.as_dict()["random"] == {"apgr": 0.5, "cpt50": 0.5, "cpt80": 0.8}


def test_read_outcomes_names_bad_line(tmp_path: Path) -> None:
    """A line without a score, or with a non-number, is refused with its line number."""
    path = tmp_path / "o.jsonl"
    path.write_text(
        '{"prompt": "a", "weak_score": 1, "strong_score": 2}\n\n{"prompt": "b", "weak_score": 1}\n'
    )
    with pytest.raises(ValueError, match=r"o.jsonl:3: not an outcome line"):
        read_outcomes(path)
    path.write_text('{"prompt": "a", "weak_score": "NaN", "strong_score": 2}\n')
    with pytest.raises(ValueError, match=r"o.jsonl:1: scores must be finite"):
        read_outcomes(path)
