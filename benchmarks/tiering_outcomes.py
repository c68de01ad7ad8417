"""Does training on outcomes raise a kind of work's APGR? Cross-validated on an outcomes file.

    nice python benchmarks/tiering_outcomes.py OUTCOMES.jsonl [--corpus TIER-TRAIN.jsonl]
        [--folds 5] [--max-iter 100] [--outcome-share 0.5]

The outcomes' prompts are split into ``--folds`` folds by a hash of the prompt (deterministic).
For each fold, a model is trained on the other folds' outcomes (`tune.outcome_labels`), alone
and, with ``--corpus``, on top of the source-labelled corpus, exactly as
`tierline tiering train --outcomes` does; it scores the held-out fold. The pooled out-of-fold
scores then go through the same router sweep as `tierline tiering eval --outcomes`, beside
the shipped model's scores on the same prompts. Every prompt is scored by a model that never
saw it. Prints one line per router.
"""

from __future__ import annotations

import argparse
import os
import sys
import zlib
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402 - after the thread limits

from tierline.tiering.model import load_default, load_model  # noqa: E402
from tierline.tiering.outcomes import read_outcomes, router_metrics  # noqa: E402
from tierline.tiering.train import TrainConfig, design, fit, read_labelled  # noqa: E402
from tierline.tiering.tune import outcome_labels  # noqa: E402


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("outcomes", type=Path)
    ap.add_argument("--corpus", type=Path, nargs="*", default=[])
    ap.add_argument("--base", type=Path, help="the model to compare with (default: shipped)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--max-iter", type=int, default=100)
    ap.add_argument("--outcome-share", type=float, default=0.5)
    args = ap.parse_args(argv)

    outcomes = read_outcomes(args.outcomes)
    labelled = outcome_labels(outcomes, args.outcomes.name)
    corpus = [r for path in args.corpus for r in read_labelled(path)]
    fold = np.array([zlib.crc32(o.prompt.encode()) % args.folds for o in outcomes])
    weak = np.array([o.weak_score for o in outcomes])
    strong = np.array([o.strong_score for o in outcomes])
    prompts = [o.prompt for o in outcomes]
    cfg = TrainConfig(max_iter=args.max_iter, outcome_share=args.outcome_share)

    base = load_model(args.base) if args.base else load_default()
    routers = {"base model": base.predict_proba(prompts)}
    variants = (
        {"outcomes only": []} if not corpus else {"outcomes only": [], "corpus + outcomes": corpus}
    )
    X_all = design([r.prompt for r in corpus] + prompts)
    n_corpus = len(corpus)
    for name, extra in variants.items():
        probs = np.zeros((len(outcomes), 3))
        for k in range(args.folds):
            train_out = fold != k
            keep = np.concatenate([np.full(n_corpus, bool(extra)), train_out])
            rows = (list(extra) if extra else []) + [
                r for r, t in zip(labelled, train_out, strict=True) if t
            ]
            model = fit(X_all.subset(keep), rows, cfg)
            probs[fold == k] = model.predict_proba(
                [p for p, f in zip(prompts, fold, strict=True) if f == k]
            )
        routers[name] = probs
    print(f"{args.outcomes.name}: {len(outcomes)} outcomes, {args.folds} folds")
    for name, p in routers.items():
        for label, score in (("1 vs >=2", p[:, 1] + p[:, 2]), ("<=2 vs 3", p[:, 2])):
            m = router_metrics(score, weak, strong)
            print(
                f"{name:>18}  {label}: APGR {m.apgr:.3f}  CPT(50%) {m.cpt50:.1%}  "
                f"CPT(80%) {m.cpt80:.1%}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
