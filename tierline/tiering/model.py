"""The shipped tier classifier: a multinomial logistic regression over `features.featurize`.

Weights live in a plain ``.npz`` (never pickle: loading a model file must not run code). The
hashed weights are stored as float16, which costs nothing measurable in accuracy and keeps the
file around a megabyte and a half.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .calibration import Calibration
from .features import DENSE_NAMES, HASH_BITS, FeatureBatch, featurize

__all__ = ["FORMAT_VERSION", "TierModel", "load_default", "load_model"]

FORMAT_VERSION = 1
TIERS = (1, 2, 3)
DEFAULT_MODEL = "tier-model.npz"


@dataclass(frozen=True, slots=True)
class TierModel:
    """Weights of the classifier and the class prior it was trained under."""

    w_hash: npt.NDArray[np.float32]  # (2**HASH_BITS, 3)
    w_dense: npt.NDArray[np.float32]  # (n_dense, 3)
    bias: npt.NDArray[np.float32]  # (3,)
    dense_mean: npt.NDArray[np.float32]
    dense_std: npt.NDArray[np.float32]
    train_prior: npt.NDArray[np.float64]  # effective class prior of the weighted training set
    # Thresholds fitted to the user's traffic by `tierline tiering calibrate`; None: use the
    # config's bias preset. Explicit prior/escalate_* in config still override them.
    calibration: Calibration | None = None

    def with_calibration(self, calibration: Calibration) -> TierModel:
        """The same weights carrying ``calibration``."""
        return replace(self, calibration=calibration)

    def logits(self, batch: FeatureBatch) -> npt.NDArray[np.float64]:
        """Raw class scores, one row per document."""
        hashed = np.zeros((batch.size, 3), dtype=np.float32)
        for buckets, starts in batch.parts:
            hashed += _segment_sums(self.w_hash, buckets, starts)
        hashed *= batch.scale[:, None]
        dense = (batch.dense - self.dense_mean) / self.dense_std
        out: npt.NDArray[np.float64] = (hashed + dense @ self.w_dense + self.bias).astype(
            np.float64
        )
        return out

    def predict_proba(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        """Class probabilities under the training prior, one row of (p1, p2, p3) per prompt."""
        if not texts:
            return np.zeros((0, 3))
        return softmax(self.logits(featurize(texts)))

    def save(self, path: Path) -> None:
        """Write the weights as a compressed ``.npz`` of plain arrays (no pickled objects)."""
        buf = io.BytesIO()
        arrays: dict[str, npt.NDArray[np.generic]] = {
            "format_version": np.array(FORMAT_VERSION),
            "hash_bits": np.array(HASH_BITS),
            "dense_names": np.array(DENSE_NAMES),
            "w_hash": self.w_hash.astype(np.float16),
            "w_dense": self.w_dense,
            "bias": self.bias,
            "dense_mean": self.dense_mean,
            "dense_std": self.dense_std,
            "train_prior": self.train_prior,
            **_calibration_arrays(self.calibration),
        }
        np.savez_compressed(buf, allow_pickle=False, **arrays)
        path.write_bytes(buf.getvalue())


def _calibration_arrays(cal: Calibration | None) -> dict[str, npt.NDArray[np.float64]]:
    if cal is None:
        return {}
    return {
        "calibration_prior": np.array(cal.prior, dtype=np.float64),
        "calibration_escalate": np.array([cal.escalate_2, cal.escalate_3], dtype=np.float64),
    }


def _segment_sums(
    w: npt.NDArray[np.float32], buckets: npt.NDArray[np.int64], starts: npt.NDArray[np.int64]
) -> npt.NDArray[np.float32]:
    """Sum the weight rows of each document's buckets (one gather, one segmented add)."""
    gathered = np.empty((len(buckets) + 1, w.shape[1]), dtype=np.float32)
    np.take(w, buckets, axis=0, out=gathered[:-1])
    gathered[-1] = 0.0  # lets a trailing empty document index one past the end
    sums = np.add.reduceat(gathered, starts, axis=0)
    # reduceat returns the row *at* the index for an empty segment; empty means zero.
    empty = np.diff(np.append(starts, len(buckets))) == 0
    sums[empty] = 0.0
    return sums


def softmax(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Row-wise softmax, stable for large scores."""
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: npt.NDArray[np.float64] = e / e.sum(axis=1, keepdims=True)
    return out


def load_model(path: Path | str) -> TierModel:
    """Load weights written by `TierModel.save`; refuse files from another feature layout."""
    with np.load(path, allow_pickle=False) as f:
        return _from_arrays(dict(f.items()), str(path))


def load_default() -> TierModel:
    """The classifier shipped inside the package."""
    ref = resources.files(__package__).joinpath("data").joinpath(DEFAULT_MODEL)
    with ref.open("rb") as fh, np.load(io.BytesIO(fh.read()), allow_pickle=False) as f:
        return _from_arrays(dict(f.items()), DEFAULT_MODEL)


def _from_arrays(a: dict[str, npt.NDArray[np.generic]], name: str) -> TierModel:
    version = int(a["format_version"])
    if version != FORMAT_VERSION or int(a["hash_bits"]) != HASH_BITS:
        raise ValueError(
            f"{name}: model format {version} with {int(a['hash_bits'])} hash bits; this tierline "
            f"reads format {FORMAT_VERSION} with {HASH_BITS} bits. Retrain it with "
            "'tierline tiering train'."
        )
    if tuple(str(x) for x in a["dense_names"]) != DENSE_NAMES:
        raise ValueError(f"{name}: dense features differ from this tierline's; retrain the model.")
    return TierModel(
        w_hash=a["w_hash"].astype(np.float32),
        w_dense=a["w_dense"].astype(np.float32),
        bias=a["bias"].astype(np.float32),
        dense_mean=a["dense_mean"].astype(np.float32),
        dense_std=a["dense_std"].astype(np.float32),
        train_prior=a["train_prior"].astype(np.float64),
        calibration=_read_calibration(a),
    )


def _read_calibration(a: dict[str, npt.NDArray[np.generic]]) -> Calibration | None:
    """The calibration `tiering calibrate` stored, if any (older files have none)."""
    if "calibration_prior" not in a:
        return None
    p1, p2, p3 = (float(x) for x in a["calibration_prior"])
    e2, e3 = (float(x) for x in a["calibration_escalate"])
    return Calibration(prior=(p1, p2, p3), escalate_2=e2, escalate_3=e3)
