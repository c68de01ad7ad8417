"""Leave-one-source-out evaluation of the tier classifier: the honest internal number.

    nice python benchmarks/tiering_loso.py TIER-TRAIN.jsonl tierline/tiering/data/*.jsonl
        [--outcomes OUT.jsonl ...] [--outcome-share 0.2] [--max-iter 100]

For each source repository of the labelled files, a model is trained (as `tierline tiering
train` trains the shipped one) on every other repository, plus the outcomes if given, and
predicts the held-out repository. The pooled out-of-source predictions are scored under each
calibration preset: macro-F1, accuracy, tier-3 -> tier-1 rate, per-tier recall and mix, then
the accuracy per held-out repository. Outcome rows are always trained on, never scored.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402 - after the thread limits

from tierline.tiering.calibration import BIAS_PRESETS, decide, shift_prior  # noqa: E402
from tierline.tiering.evaluate import metrics  # noqa: E402
from tierline.tiering.outcomes import read_outcomes  # noqa: E402
from tierline.tiering.train import (  # noqa: E402
    OUTCOME_SOURCE,
    TrainConfig,
    design,
    fit,
    last_label_wins,
    read_labelled,
    source_group,
)
from tierline.tiering.tune import outcome_labels  # noqa: E402


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path, nargs="+")
    ap.add_argument("--outcomes", type=Path, nargs="*", default=[])
    ap.add_argument("--outcome-share", type=float, default=0.5)
    ap.add_argument("--max-iter", type=int, default=100)
    args = ap.parse_args(argv)
    # As `tiering train` reads them: a prompt in two files keeps the last file's label.
    rows = last_label_wins([r for path in args.data for r in read_labelled(path)])
    extra = [r for path in args.outcomes for r in outcome_labels(read_outcomes(path), path.name)]
    everything = rows + extra
    X = design([r.prompt for r in everything])
    cfg = TrainConfig(max_iter=args.max_iter, outcome_share=args.outcome_share)
    groups = [source_group(r.source) for r in rows] + [OUTCOME_SOURCE] * len(extra)
    probs = np.zeros((len(rows), 3))
    prior = np.zeros(3)
    for g in sorted(set(groups[: len(rows)])):
        held = np.array([x == g for x in groups])
        model = fit(
            X.subset(~held), [r for r, h in zip(everything, held, strict=True) if not h], cfg
        )
        idx = np.flatnonzero(held)
        probs[idx] = model.predict_proba([rows[i].prompt for i in idx])
        prior = model.train_prior
        print(f"  held out {g}: {len(idx)} rows", file=sys.stderr, flush=True)
    true = [r.tier for r in rows]
    print(
        f"LOSO over {len(set(groups[: len(rows)]))} repositories, {len(rows)} rows"
        + (f", plus {len(extra)} outcome rows always in training" if extra else "")
    )
    for bias, cal in BIAS_PRESETS.items():
        pred = decide(shift_prior(probs, prior, cal.prior), cal)
        m = metrics(true, pred.tolist())
        print(
            f"{bias:>8}: macro-F1 {m.macro_f1:.3f}  accuracy {m.accuracy:.3f}  "
            f"tier3->tier1 {m.tier3_to_tier1:.1%}  recall {m.recall[0]:.2f}/{m.recall[1]:.2f}/"
            f"{m.recall[2]:.2f}  mix {'/'.join(f'{x:.0%}' for x in m.predicted_mix)}"
        )
    cal = BIAS_PRESETS["balanced"]
    pred = decide(shift_prior(probs, prior, cal.prior), cal)
    for g in sorted(set(groups[: len(rows)])):
        idx = [i for i, x in enumerate(groups[: len(rows)]) if x == g]
        acc = float(np.mean([pred[i] == true[i] for i in idx]))
        print(f"  {g:<32} {len(idx):5d} rows  accuracy (balanced) {acc:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
