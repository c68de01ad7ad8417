"""How well single prompt signals route, beside the model: APGR of each dense feature.

    python benchmarks/tiering_signals.py OUTCOMES.jsonl [...] [--model my-model.npz] [--top 8]

For each outcomes file (`{"prompt", "weak_score", "strong_score"}`), every dense feature of
`tiering.features` (length, counts, lexicons) is used alone as a router score ("more of it:
send to the strong model") and scored with the same sweep as `tierline tiering eval
--outcomes`; so are the model's own scores (P(2)+P(3) and P(3)). Prints the best and worst
features per file: what a feature that "predicts weak-model failure" would have to beat.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from tierline.tiering.features import DENSE_NAMES, featurize
from tierline.tiering.model import load_default, load_model
from tierline.tiering.outcomes import read_outcomes, router_metrics


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("outcomes", type=Path, nargs="+")
    ap.add_argument("--model", type=Path)
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args(argv)
    model = load_model(args.model) if args.model else load_default()
    for path in args.outcomes:
        rows = read_outcomes(path)
        prompts = [o.prompt for o in rows]
        weak = np.array([o.weak_score for o in rows])
        strong = np.array([o.strong_score for o in rows])
        probs = model.predict_proba(prompts)
        dense = featurize(prompts).dense.astype(np.float64)
        signals = {"model P(2)+P(3)": probs[:, 1] + probs[:, 2], "model P(3)": probs[:, 2]}
        signals.update({name: dense[:, j] for j, name in enumerate(DENSE_NAMES)})
        ranked = sorted(
            ((router_metrics(v, weak, strong).apgr, k) for k, v in signals.items()), reverse=True
        )
        print(f"{path.name} ({len(rows)} prompts)")
        print("  model: " + ", ".join(f"{k} {a:.3f}" for a, k in ranked if k.startswith("model")))
        best = [f"{k} {a:.3f}" for a, k in ranked if not k.startswith("model")]
        print("  best features: " + ", ".join(best[: args.top]))
        print("  worst features: " + ", ".join(best[-3:]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
