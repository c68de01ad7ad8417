"""Train the tier classifier: weighted, L2-regularised multinomial logistic regression.

Deterministic by construction: full-batch L-BFGS from zero weights, no sampling, no shuffling, so
the same data gives the same bytes of weights on the same numpy.

Two choices carry most of the generalisation to prompt sources never seen in training:

* **source-balanced weights.** Each class gets a third of the total weight, and inside a class
  each source gets weight proportional to the square root of its size. Without this the model
  learns "looks like the biggest source of tier k" (T0 templates for tier 1, GSM8K for tier 2).
* **two regularisation strengths.** The hashed n-grams (a quarter of a million weights that can
  memorise a template) are shrunk hard; the few dozen dense shape features are shrunk lightly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson

from .features import HASH_BITS, FeatureBatch, featurize
from .model import TierModel, softmax

__all__ = [
    "OUTCOME_SOURCE",
    "LabelledPrompt",
    "TrainConfig",
    "last_label_wins",
    "read_labelled",
    "source_group",
    "train",
]

_FEATURE_BATCH = 2048

# The `source` prefix of rows made from outcomes (`tune.outcome_labels`): they are weighted as
# one block against the source-labelled corpus (`TrainConfig.outcome_share`).
OUTCOME_SOURCE = "outcomes:"


@dataclass(frozen=True, slots=True)
class LabelledPrompt:
    """One line of a training or evaluation file."""

    prompt: str
    tier: int
    source: str = ""
    category: str = ""


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Knobs of `train`; the defaults are the ones the shipped model was trained with."""

    l2_hash: float = 3e-4
    l2_dense: float = 1e-5
    source_power: float = 0.5  # 1.0 weights rows equally, 0.0 weights sources equally
    max_iter: int = 100
    # The share of the total weight carried by outcome rows when they are trained on top of a
    # source-labelled corpus: a few hundred outcomes of the user's own work must not drown.
    outcome_share: float = 0.5


def read_labelled(path: Path) -> list[LabelledPrompt]:
    """Read ``{"prompt", "tier", "source"?, "category"?}`` lines; name the line of any bad one."""
    rows = []
    with path.open("rb") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                d = orjson.loads(line)
                tier = int(d["tier"])
                prompt = str(d["prompt"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{path}:{n}: not a labelled prompt ({e})") from e
            if tier not in (1, 2, 3):
                raise ValueError(f"{path}:{n}: tier must be 1, 2 or 3, not {tier}")
            rows.append(
                LabelledPrompt(prompt, tier, str(d.get("source", "")), str(d.get("category", "")))
            )
    return rows


def source_group(source: str) -> str:
    """The repository a ``source`` field names (``owner/name:path (label)`` -> ``owner/name``)."""
    return source.split(":", 1)[0].split(" (", 1)[0].strip() or "unknown"


def sample_weights(
    rows: Sequence[LabelledPrompt], power: float, outcome_share: float = 0.5
) -> npt.NDArray[np.float64]:
    """Per-row weights: classes equal in total, sources inside a class by size**power.

    Outcome rows and corpus rows, when both are present, are balanced separately and then
    scaled so that the outcome rows carry ``outcome_share`` of the total.
    """
    is_outcome = np.array([r.source.startswith(OUTCOME_SOURCE) for r in rows], dtype=bool)
    if is_outcome.all() or not is_outcome.any():
        return _balanced(rows, power)
    w = np.zeros(len(rows))
    for mask, share in ((is_outcome, outcome_share), (~is_outcome, 1 - outcome_share)):
        part = _balanced([r for r, m in zip(rows, mask, strict=True) if m], power)
        w[mask] = part / part.sum() * share * len(rows)
    return w


def _balanced(rows: Sequence[LabelledPrompt], power: float) -> npt.NDArray[np.float64]:
    keys = [(r.tier, source_group(r.source)) for r in rows]
    sizes: dict[tuple[int, str], int] = {}
    for k in keys:
        sizes[k] = sizes.get(k, 0) + 1
    group_mass = {k: n**power for k, n in sizes.items()}
    tier_mass: dict[int, float] = {}
    for (tier, _), m in group_mass.items():
        tier_mass[tier] = tier_mass.get(tier, 0.0) + m
    w = np.array([group_mass[k] / sizes[k] / tier_mass[k[0]] for k in keys])
    out: npt.NDArray[np.float64] = w * (len(rows) / w.sum())
    return out


@dataclass(frozen=True, slots=True)
class Design:
    """A training set as a sparse (doc, bucket, value) list plus dense rows."""

    rows: npt.NDArray[np.int64]
    cols: npt.NDArray[np.int64]
    vals: npt.NDArray[np.float64]
    dense: npt.NDArray[np.float64]
    n: int

    def subset(self, keep: npt.NDArray[np.bool_]) -> Design:
        """The design restricted to the documents where ``keep`` is true."""
        new_index = np.cumsum(keep) - 1
        nz = keep[self.rows]
        return Design(
            new_index[self.rows[nz]],
            self.cols[nz],
            self.vals[nz],
            self.dense[keep],
            int(keep.sum()),
        )


def design(texts: Sequence[str]) -> Design:
    """Featurize in batches and merge duplicate (doc, bucket) pairs into counts."""
    keys, dense, scale_parts = [], [], []
    for start in range(0, len(texts), _FEATURE_BATCH):
        fb: FeatureBatch = featurize(texts[start : start + _FEATURE_BATCH])
        buckets, doc = fb.doc_ids()
        keys.append((doc + start) * (1 << HASH_BITS) + buckets)
        dense.append(fb.dense)
        scale_parts.append(fb.scale)
    scale = np.concatenate(scale_parts).astype(np.float64)
    uniq, counts = np.unique(np.concatenate(keys), return_counts=True)
    rows = uniq >> HASH_BITS
    cols = uniq & ((1 << HASH_BITS) - 1)
    d = np.vstack(dense).astype(np.float64)
    return Design(rows, cols, counts * scale[rows], d, len(texts))


def train(rows: Sequence[LabelledPrompt], config: TrainConfig | None = None) -> TierModel:
    """Fit a model on labelled prompts (deterministic); a repeated prompt keeps its last label."""
    rows = last_label_wins(rows)
    return fit(design([r.prompt for r in rows]), rows, config)


def last_label_wins(rows: Sequence[LabelledPrompt]) -> list[LabelledPrompt]:
    """One row per prompt text: the last one, at the place of the first.

    A later file can relabel rows of an earlier one (the public rows give the corpus's
    GSM8K problems of at most two steps tier 1), and a prompt with two labels would only
    teach the model to hedge.
    """
    last = {r.prompt: r for r in rows}
    seen: set[str] = set()
    out = []
    for r in rows:
        if r.prompt not in seen:
            seen.add(r.prompt)
            out.append(last[r.prompt])
    return out


def fit(X: Design, rows: Sequence[LabelledPrompt], config: TrainConfig | None = None) -> TierModel:
    """Fit a model on a precomputed design matrix whose documents are ``rows``."""
    cfg = config or TrainConfig()
    if {r.tier for r in rows} != {1, 2, 3}:
        raise ValueError("training data needs examples of all three tiers")
    y = np.array([r.tier - 1 for r in rows])
    w = sample_weights(rows, cfg.source_power, cfg.outcome_share)
    mean, std = X.dense.mean(axis=0), X.dense.std(axis=0) + 1e-6
    # Train on the buckets that occur only, then scatter back into the full table.
    used, cols = np.unique(X.cols, return_inverse=True)
    Xc = Design(X.rows, cols, X.vals, (X.dense - mean) / std, X.n)
    n_hash, n_dense = len(used), X.dense.shape[1]
    loss = _objective(Xc, y, w, cfg, n_hash, n_dense)
    theta = _lbfgs(loss, np.zeros((n_hash + n_dense + 1) * 3), cfg.max_iter)
    wh, wd, b = _unpack(theta, n_hash, n_dense)
    full = np.zeros((1 << HASH_BITS, 3), dtype=np.float32)
    full[used] = wh
    prior = np.bincount(y, weights=w, minlength=3)
    return TierModel(
        w_hash=full,
        w_dense=wd.astype(np.float32),
        bias=b.astype(np.float32),
        dense_mean=mean.astype(np.float32),
        dense_std=std.astype(np.float32),
        train_prior=prior / prior.sum(),
    )


def _unpack(
    theta: npt.NDArray[np.float64], n_hash: int, n_dense: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    m = theta.reshape(-1, 3)
    return m[:n_hash], m[n_hash : n_hash + n_dense], m[n_hash + n_dense]


Objective = Callable[[npt.NDArray[np.float64]], tuple[float, npt.NDArray[np.float64]]]


def _objective(
    X: Design,
    y: npt.NDArray[np.int64],
    w: npt.NDArray[np.float64],
    cfg: TrainConfig,
    n_hash: int,
    n_dense: int,
) -> Objective:
    """Weighted mean cross-entropy plus L2, and its gradient.

    The sparse products are segmented sums over two orderings of the same non-zeros: by
    document (rows arrive sorted) for the scores, and by bucket for the gradient.
    """
    onehot = np.eye(3)[y]
    wsum = w.sum()
    row_starts = np.flatnonzero(np.r_[True, X.rows[1:] != X.rows[:-1]])
    by_col = np.argsort(X.cols, kind="stable")
    rows_c, vals_c = X.rows[by_col], X.vals[by_col][:, None]
    col_starts = np.flatnonzero(np.r_[True, np.diff(X.cols[by_col]) != 0])
    docs_with_tokens = X.rows[row_starts]
    vals_r = X.vals[:, None]

    def f(theta: npt.NDArray[np.float64]) -> tuple[float, npt.NDArray[np.float64]]:
        wh, wd, b = _unpack(theta, n_hash, n_dense)
        z = X.dense @ wd + b
        z[docs_with_tokens] += np.add.reduceat(vals_r * wh[X.cols], row_starts, axis=0)
        p = softmax(z)
        nll = -(w * np.log(p[np.arange(X.n), y] + 1e-12)).sum() / wsum
        g = (p - onehot) * (w / wsum)[:, None]
        gh = np.add.reduceat(vals_c * g[rows_c], col_starts, axis=0) + cfg.l2_hash * wh
        gd = X.dense.T @ g + cfg.l2_dense * wd
        reg = 0.5 * (cfg.l2_hash * (wh**2).sum() + cfg.l2_dense * (wd**2).sum())
        grad = np.concatenate([gh, gd, g.sum(axis=0)[None, :]]).ravel()
        return float(nll + reg), grad

    return f


def _lbfgs(
    f: Objective, x: npt.NDArray[np.float64], max_iter: int, memory: int = 10
) -> npt.NDArray[np.float64]:
    """Minimise a smooth convex function with L-BFGS and a backtracking (Armijo) line search."""
    fx, g = f(x)
    s_hist: list[npt.NDArray[np.float64]] = []
    y_hist: list[npt.NDArray[np.float64]] = []
    for _ in range(max_iter):
        d = -_two_loop(g, s_hist, y_hist)
        step, slope = 1.0, float(g @ d)
        if slope >= 0:  # not a descent direction: restart from steepest descent
            s_hist.clear()
            y_hist.clear()
            d, slope = -g, float(-(g @ g))
        while True:
            x_new = x + step * d
            f_new, g_new = f(x_new)
            if f_new <= fx + 1e-4 * step * slope or step < 1e-10:
                break
            step *= 0.5
        s, yv = x_new - x, g_new - g
        if float(s @ yv) > 1e-12:
            s_hist.append(s)
            y_hist.append(yv)
            if len(s_hist) > memory:
                s_hist.pop(0)
                y_hist.pop(0)
        converged = abs(fx - f_new) < 1e-9 * max(1.0, abs(fx))
        x, fx, g = x_new, f_new, g_new
        if converged:
            break
    return x


def _two_loop(
    g: npt.NDArray[np.float64],
    s_hist: Iterable[npt.NDArray[np.float64]],
    y_hist: Iterable[npt.NDArray[np.float64]],
) -> npt.NDArray[np.float64]:
    """The L-BFGS approximation of H^-1 g."""
    s_list, y_list = list(s_hist), list(y_hist)
    q: npt.NDArray[np.float64] = g.copy()
    alphas = []
    for s, yv in zip(reversed(s_list), reversed(y_list), strict=True):
        a = float(s @ q) / float(yv @ s)
        alphas.append(a)
        q -= a * yv
    if s_list:
        q *= float(s_list[-1] @ y_list[-1]) / float(y_list[-1] @ y_list[-1])
    for s, yv, a in zip(s_list, y_list, reversed(alphas), strict=True):
        b = float(yv @ q) / float(yv @ s)
        q += (a - b) * s
    return q
