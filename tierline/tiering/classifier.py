"""The classifier stage: the shipped (or a user's) model, calibrated, with readable evidence."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .calibration import Calibration, decide, shift_prior
from .features import DENSE_NAMES, HASH_BITS, FeatureBatch, featurize
from .model import TierModel, load_default, load_model, softmax
from .vote import TierVote

__all__ = ["TierClassifier"]

# Readable names for the dense features that most often decide a job.
_DENSE_LABELS: dict[str, str] = {
    "log_chars": "length",
    "log_tokens": "length",
    "frac_symbols": "symbol-heavy",
    "frac_digits": "numbers",
    "count['$']": "math notation",
    "count['\\\\']": "LaTeX",
    "count['{']": "braces",
    "count['}']": "braces",
    "count['=']": "equations",
    "count['^']": "exponents",
    "count['?']": "question",
    "count['`']": "code block",
    "count[';']": "code syntax",
    "count['#']": "headings/comments",
    "starts_with_question_word": "question form",
    "ends_with_question": "question form",
}


def _label(name: str) -> str:
    if name.startswith("lex["):
        return name[4:-1] + " words"
    return _DENSE_LABELS.get(name, name)


class TierClassifier:
    """Scores jobs with the linear model and turns the scores into votes."""

    def __init__(self, model: TierModel, calibration: Calibration) -> None:
        self.model = model
        self.calibration = calibration
        # Weights relative to their mean over tiers: how much a feature favours each tier.
        # Computed once here, not per batch (the hashed table is 3 MB).
        self._rel_hash = model.w_hash - model.w_hash.mean(axis=1, keepdims=True)
        self._rel_dense = model.w_dense - model.w_dense.mean(axis=1, keepdims=True)

    @classmethod
    def load(cls, path: str | Path | None, calibration: Calibration) -> TierClassifier:
        """The model at ``path``, or the one shipped with tierline."""
        return cls(load_model(path) if path else load_default(), calibration)

    def score(self, texts: Sequence[str]) -> list[TierVote]:
        """One vote per text: the calibrated tier, its posterior and the strongest evidence."""
        if not texts:
            return []
        tiers, whys, post = self._decide(texts)
        return [
            TierVote(tier, why, probs[tier - 1], "classifier", (probs[0], probs[1], probs[2]))
            for tier, why, probs in zip(tiers.tolist(), whys, post.tolist(), strict=True)
        ]

    def decisions(
        self, texts: Sequence[str], digits: int | None = None
    ) -> tuple[list[int], list[str], list[float]]:
        """What `score` says, as plain lists (tier, why, confidence): no object per text, for
        `tierline classify`, which only writes them out; each confidence as `round(c, digits)`
        gives it when ``digits`` is given."""
        if not texts:
            return [], [], []
        tiers, whys, post = self._decide(texts)
        chosen_post = post[np.arange(len(tiers)), tiers - 1]
        confidence = chosen_post.tolist() if digits is None else _rounded(chosen_post, digits)
        chosen: list[int] = tiers.tolist()
        return chosen, whys, confidence

    def _decide(
        self, texts: Sequence[str]
    ) -> tuple[npt.NDArray[np.int64], list[str], npt.NDArray[np.float64]]:
        batch = featurize(texts)
        post = self._posterior(batch)
        tiers = decide(post, self.calibration)
        p1, p2, p3 = _two_decimals(post).T.tolist()
        whys = [
            f"classifier p=({a},{b},{c}): {ev}"
            for a, b, c, ev in zip(p1, p2, p3, self._evidence(batch, tiers), strict=True)
        ]
        return tiers, whys, post

    def posterior(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        """Class probabilities under the configured prior, one (p1, p2, p3) row per text."""
        return self._posterior(featurize(texts)) if texts else np.zeros((0, 3))

    def _posterior(self, batch: FeatureBatch) -> npt.NDArray[np.float64]:
        probs = softmax(self.model.logits(batch))
        return shift_prior(probs, self.model.train_prior, self.calibration.prior)

    def _evidence(self, batch: FeatureBatch, tiers: npt.NDArray[np.int64]) -> list[str]:
        """Per document: the dense features and the word that pushed hardest toward its tier."""
        dense = self._top_dense(batch, tiers)
        words = self._top_words(batch, tiers)
        return [
            (f"{d}, {w}" if d else w) if w else (d or "no strong feature")
            for d, w in zip(dense, words, strict=True)
        ]

    def _top_dense(self, batch: FeatureBatch, tiers: npt.NDArray[np.int64]) -> list[str]:
        """Up to two (differently named) dense features favouring each document's tier, joined.

        Only features the prompt has more of than usual count as evidence: "no LaTeX" may well
        push toward tier 1, but it reads badly as a reason.
        """
        z = (batch.dense - self.model.dense_mean) / self.model.dense_std
        contrib = np.where(z > 0, z * self._rel_dense[:, tiers - 1].T, 0.0)
        top = np.argsort(-contrib, axis=1)[:, :2]
        strong = np.take_along_axis(contrib, top, axis=1) > 0.5
        # The text of every (first, second, which are strong) is looked up, not built per job.
        which = strong[:, 0] + 2 * strong[:, 1]
        picked: list[str] = _DENSE_TEXT[top[:, 0], top[:, 1], which].tolist()
        return picked

    def _top_words(self, batch: FeatureBatch, tiers: npt.NDArray[np.int64]) -> list[str]:
        """The word whose weight favours each document's tier most, quoted ('' if none does)."""
        buckets, starts = batch.parts[0]
        if len(buckets) == 0:
            return [""] * batch.size
        doc = batch.word_doc
        # np.take, not fancy indexing: the same values, a third of the time.
        contrib = np.take(self._rel_hash.ravel(), buckets * 3 + np.take(tiers - 1, doc))
        # A reader learns nothing from "'a'" or "'the'": only longer, non-function words count.
        short = (batch.word_last - batch.word_first) < 2
        np.copyto(contrib, -np.inf, where=short | np.take(_STOP_MASK, buckets))
        best = np.maximum.reduceat(np.append(contrib, -np.inf), np.minimum(starts, len(buckets)))
        winners = np.flatnonzero((contrib >= np.take(best, doc)) & (contrib >= 0.05))
        if len(winners) == 0:
            return [""] * batch.size
        # Each document's first winner. `doc` ascends, so a run's start is where it changes
        # (np.unique would sort again and import numpy.ma: 6 ms of every start-up).
        won = doc[winners]
        first = np.flatnonzero(np.append(True, won[1:] != won[:-1]))
        docs = won[first]
        tok = winners[first]
        raw = batch.window.tobytes()  # one copy, then cheap bytes slices
        spans = zip(batch.word_first[tok].tolist(), batch.word_last[tok].tolist(), strict=True)
        words = [raw[a : b + 1] for a, b in spans]
        joined = b"\0".join(words)  # a word has no NUL (features.py: NUL is blank)
        if joined.isascii():
            # An ASCII word is letters, digits and '_': its repr is itself, quoted. Quote them
            # all at once and scatter them to their documents, with no step per document.
            quoted = ("'" + joined.decode().replace("\0", "'\0'") + "'").split("\0")
        else:
            quoted = [repr(word.decode("utf-8", "replace")) for word in words]
        texts = np.full(batch.size, "", dtype=object)
        texts[docs] = quoted
        out: list[str] = texts.tolist()
        return out


_LABELS = [_label(name) for name in DENSE_NAMES]
_HUNDREDTHS = np.array([f"{k / 100:.2f}" for k in range(101)], dtype=object)


def _two_decimals(p: npt.NDArray[np.float64]) -> npt.NDArray[np.object_]:
    """`f"{x:.2f}"` of each probability, looked up instead of formatted one by one.

    Rounding x * 100 gives the same hundredth as formatting x (correctly rounded, ties to
    even) unless x * 100 is within float error of a tie; those few are formatted.
    """
    scaled = p * 100
    k = np.rint(scaled).astype(np.int64)
    out = _HUNDREDTHS[np.clip(k, 0, 100)]
    near_tie = (np.abs(np.abs(scaled - k) - 0.5) < 1e-6) | (k < 0) | (k > 100) | ~np.isfinite(p)
    for i, j in zip(*np.nonzero(near_tie), strict=True):
        out[i, j] = f"{p[i, j]:.2f}"
    return out


def _rounded(values: npt.NDArray[np.float64], digits: int) -> list[float]:
    """`round(x, digits)` of each value, at once instead of a `round` call each (a tenth of
    the cost). round() gives the float nearest to k / 10**digits, k the integer nearest to
    x * 10**digits; a float division is exactly that nearest float, and rounding the
    computed product finds the same k unless it lies within float error of a tie: those few
    (and any non-finite value) are rounded by round() itself."""
    scale = 10.0**digits
    scaled = values * scale
    k = np.rint(scaled)
    out = k / scale
    with np.errstate(invalid="ignore"):  # inf - inf: a non-finite value, rounded below
        unsure = (np.abs(np.abs(scaled - k) - 0.5) < 1e-6) | ~np.isfinite(scaled)
    for i in np.flatnonzero(unsure).tolist():
        out[i] = round(float(values[i]), digits)
    rounded: list[float] = out.tolist()
    return rounded


def _dense_texts() -> npt.NDArray[np.object_]:
    """[first, second, which are strong (bit 0: first, bit 1: second)] -> the evidence text:
    the strong features' labels, each once, joined."""
    n = len(_LABELS)
    table = np.empty((n, n, 4), dtype=object)
    for j1, first in enumerate(_LABELS):
        for j2, second in enumerate(_LABELS):
            pair = first if first == second else f"{first}, {second}"
            table[j1, j2] = ("", first, second, pair)
    return table


def _stop_mask() -> npt.NDArray[np.bool_]:
    """True at the buckets of words too common to be evidence."""
    mask = np.zeros(1 << HASH_BITS, dtype=bool)
    words = (
        "the and for with this that from are was were you your have has had not but all can "
        "its into than then them they what which who how when where why does did our out about"
    )
    mask[featurize([words]).parts[0][0]] = True
    return mask


_DENSE_TEXT = _dense_texts()
_STOP_MASK = _stop_mask()
