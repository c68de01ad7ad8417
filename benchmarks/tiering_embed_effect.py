"""Would a SmolLM2-embedding stage for unsure jobs tier better? Measured, not built.

    nice python benchmarks/tiering_embed_effect.py TIER-TRAIN.jsonl tierline/tiering/data/*-train.jsonl
        [--per-group 8] [--max-tokens 96] [--below 0.55]

Embeds (mean-pooled SmolLM2-135M-Instruct hidden states through llama-cpp-python, one thread)
a source-balanced sample of the training files (the first ``--per-group`` rows of each (tier,
repository) pair, by a hash of the prompt) and the hand-written realistic set, each prompt cut
to ``--max-tokens`` tokens. A class-balanced L2 logistic regression on the standardised
embeddings is fitted on the sample and scores the realistic set. Prints macro-F1 and the
tier-3 -> tier-1 share (``balanced`` preset) of the shipped classifier, of the embedding model
alone, of the mean of both, and of each used only as a stage for the jobs whose classifier
confidence is under ``--below``: the question a stage for the unsure share has to answer.
About 1-3 s of CPU per prompt on a loaded 2-core machine (tiering_embed_cost.py).
"""

from __future__ import annotations

import argparse
import sys
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tierline.tiering.calibration import BIAS_PRESETS, decide, shift_prior
from tierline.tiering.evaluate import metrics
from tierline.tiering.model import load_default
from tierline.tiering.train import LabelledPrompt, read_labelled, source_group

REALISTIC = Path(__file__).resolve().parents[1] / "tests/tiering/data/realistic-eval.jsonl"


def _sample(rows: list[LabelledPrompt], per_group: int) -> list[LabelledPrompt]:
    groups: dict[tuple[int, str], list[LabelledPrompt]] = defaultdict(list)
    for r in rows:
        groups[(r.tier, source_group(r.source))].append(r)
    out: list[LabelledPrompt] = []
    for _, g in sorted(groups.items()):
        out += sorted(g, key=lambda r: zlib.crc32(r.prompt.encode()))[:per_group]
    return out


def embedding_model():  # type: ignore[no-untyped-def]
    """The embedded SmolLM2 as a mean-pooled embedder on one thread (tiering_embed_cost.py too)."""
    import llama_cpp

    from tierline.dispatch.llamacpp import default_model_path

    return llama_cpp.Llama(
        model_path=str(default_model_path()),
        embedding=True,
        n_ctx=512,
        n_threads=1,
        verbose=False,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
    )


def _embedder(max_tokens: int):  # type: ignore[no-untyped-def]
    model = embedding_model()

    def embed(texts: list[str]) -> npt.NDArray[np.float64]:
        cut = [
            model.detokenize(model.tokenize(t.encode("utf-8", "replace"))[:max_tokens]).decode(
                "utf-8", "replace"
            )
            for t in texts
        ]
        out = [v for i in range(0, len(cut), 16) for v in model.embed(cut[i : i + 16])]
        return np.array(out, dtype=np.float64)

    return embed


def _fit(x: npt.NDArray[np.float64], y: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """Class-balanced multinomial logistic regression, L2 0.1, plain gradient descent."""
    w = np.zeros((x.shape[1], 3))
    weight = np.array([len(y) / (3 * max((y == t).sum(), 1)) for t in range(3)])[y]
    for _ in range(800):
        p = _softmax(x @ w)
        grad = x.T @ ((p - np.eye(3)[y]) * weight[:, None]) / len(y)
        grad[:-1] += 0.1 * w[:-1]
        w -= 0.05 * grad
    return w


def _softmax(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    out: npt.NDArray[np.float64] = e / e.sum(axis=1, keepdims=True)
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path, nargs="+")
    ap.add_argument("--per-group", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--below", type=float, default=0.55)
    args = ap.parse_args(argv)
    sample = _sample([r for p in args.data for r in read_labelled(p)], args.per_group)
    test = read_labelled(REALISTIC)
    embed = _embedder(args.max_tokens)
    train_x, test_x = embed([r.prompt for r in sample]), embed([r.prompt for r in test])
    mu, sd = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6

    def design(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return np.c_[(x - mu) / sd, np.ones(len(x))]

    w = _fit(design(train_x), np.array([r.tier - 1 for r in sample]))
    cal = BIAS_PRESETS["balanced"]
    model = load_default()
    classifier = shift_prior(
        model.predict_proba([r.prompt for r in test]), model.train_prior, cal.prior
    )
    embedded = _softmax(design(test_x) @ w)
    tiers = decide(classifier, cal)
    unsure = classifier[np.arange(len(test)), tiers - 1] < args.below
    truth = [r.tier for r in test]
    print(
        f"{len(sample)} training prompts embedded, {len(test)} realistic prompts, "
        f"{int(unsure.sum())} unsure (confidence < {args.below})"
    )
    for name, probs in (
        ("classifier", classifier),
        ("embedding model", embedded),
        ("mean of both", (classifier + embedded) / 2),
    ):
        alone = metrics(truth, decide(probs, cal).tolist())
        staged = metrics(truth, decide(np.where(unsure[:, None], probs, classifier), cal).tolist())
        print(
            f"{name:>16}: all jobs macro-F1 {alone.macro_f1:.3f}, tier3->tier1 "
            f"{alone.tier3_to_tier1:.1%} | as the stage for the unsure: macro-F1 "
            f"{staged.macro_f1:.3f}, tier3->tier1 {staged.tier3_to_tier1:.1%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
