"""The reference a stream is compared with, learned from a warm-up window, and its persistence.

A reference belongs to one key, ``(model fingerprint, collection)``: vectors of another model are
another space, and collections hold different content. It is learned from the first ``warmup``
vectors of the stream:

* the first ``fit_fraction`` of them fit the :class:`~app.drift.signals.SignalBasis`;
* the rest are turned into signals with that basis, and give each signal's reference mean and
  standard deviation (out-of-sample, so a drift-free stream standardises to mean 0, std 1). The
  ``shift`` scan is normalised analytically instead: the held-out rows give the moments of its
  pairwise inner products (:class:`~app.drift.scan.ScanNull`) and the starting history
  of its running mean, and its reference mean / sd are 0 / 1.

State lives in one ``.npz`` file per key under the caller's ``state_dir`` (arrays plus one JSON
document), written atomically (temporary file + ``os.replace``).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .scan import ScanSet
from .signals import SHIFT_POWER, SHIFT_WINDOWS, ShiftScan, SignalBasis, fit_basis

__all__ = ["MonitorKey", "Reference", "StateVersionError", "learn_reference", "state_path", "write_state",
           "read_state", "read_meta", "savez_with_meta", "load_with_meta"]

# 2: the `shift` scan (windows + null moments in the basis); a version-1 file cannot be resumed
# 3: per-collection nulls (rank-score references, the scan's running mean); issue 16
STATE_VERSION = 3


class StateVersionError(ValueError):
    """The state file was written by another (incompatible) version of this package."""


class MonitorKey(NamedTuple):
    """What a reference is learned for: a model fingerprint and a collection name."""

    fingerprint: str
    collection: str

    @property
    def kafka_key(self) -> bytes:
        """The alerts topic's message key: ``<fingerprint>/<collection>``."""
        return f"{self.fingerprint}/{self.collection}".encode()

    def slug(self) -> str:
        """A file-name-safe, collision-resistant name for this key."""
        digest = hashlib.sha256(f"{self.fingerprint}\0{self.collection}".encode()).hexdigest()[:16]
        readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.collection)[:40] or "collection"
        return f"{readable}-{digest}"


@dataclass(frozen=True, eq=False)
class Reference:
    """A fitted basis plus the reference mean/std of each of its signals.

    >>> rng = np.random.default_rng(3)
    >>> v = rng.normal(size=(1000, 16)).astype(np.float32) + 2
    >>> v /= np.linalg.norm(v, axis=1, keepdims=True)
    >>> ref, z = learn_reference(v, n_axes=1, n_whiten=4, n_clusters=2, windows=(16,))
    >>> ref.names, z.shape
    (('centroid', 'axis1', 'mahal', 'nearest', 'shift'), (500, 5))
    >>> bool(np.allclose(np.nanmean(z[:, :4], axis=0), 0) and np.allclose(np.nanstd(z[:, :4], axis=0, ddof=1), 1))
    True
    """

    basis: SignalBasis
    signal_mean: np.ndarray
    signal_std: np.ndarray
    n_fit: int
    n_std: int

    @property
    def names(self) -> tuple[str, ...]:
        return self.basis.names

    def new_window(self, **kw) -> ShiftScan | ScanSet:
        """Fresh state for the ``shift`` signal (one per stream)."""
        return self.basis.new_window(**kw)

    def raw(self, vectors: np.ndarray, norms: np.ndarray | None = None, window: ShiftScan | None = None) -> np.ndarray:
        return self.basis.transform(vectors, norms, window)

    def standardise(self, raw: np.ndarray) -> np.ndarray:
        return (raw - self.signal_mean) / self.signal_std

    def signals(self, vectors: np.ndarray, norms: np.ndarray | None = None,
                window: ShiftScan | None = None) -> np.ndarray:
        """Standardised signals (n, n_signals); NaN where a signal is missing.

        Pass the same ``window`` for consecutive batches of one stream (see :class:`ShiftScan`).
        """
        return self.standardise(self.raw(vectors, norms, window))

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = self.basis.to_arrays()
        arrays["ref_signal_mean"] = self.signal_mean
        arrays["ref_signal_std"] = self.signal_std
        arrays["ref_counts"] = np.array([self.n_fit, self.n_std], dtype=np.int64)
        return arrays

    @classmethod
    def from_arrays(cls, arrays) -> "Reference":
        counts = np.asarray(arrays["ref_counts"])
        return cls(
            basis=SignalBasis.from_arrays(arrays),
            signal_mean=np.asarray(arrays["ref_signal_mean"], dtype=np.float64),
            signal_std=np.asarray(arrays["ref_signal_std"], dtype=np.float64),
            n_fit=int(counts[0]),
            n_std=int(counts[1]),
        )


def learn_reference(
    vectors: np.ndarray,
    norms: np.ndarray | None = None,
    *,
    fit_fraction: float = 0.5,
    n_axes: int = 2,
    n_whiten: int = 32,
    n_clusters: int = 8,
    windows: tuple[int, ...] = SHIFT_WINDOWS,
    shrink: float = 0.01,
    power: float = SHIFT_POWER,
    seed: int = 0,
    directions: dict[str, np.ndarray] | None = None,
    n_head: int = 0,
) -> tuple[Reference, np.ndarray]:
    """Learn a :class:`Reference` from warm-up vectors.

    Returns the reference and the standardised signals of the held-out part of the warm-up
    (used to prime the detectors so they start in a known in-control state); their ``shift``
    column is NaN (the held-out rows are the scan's null and starting history, not a window of it).
    """
    v = np.asarray(vectors, dtype=np.float32)
    n = len(v)
    n_fit = int(round(n * fit_fraction))
    if n_fit < 2 or n - n_fit < 2:
        raise ValueError(f"warm-up of {n} vectors is too small to split with fit_fraction={fit_fraction}")
    nrm = None if norms is None else np.asarray(norms, dtype=np.float64).reshape(-1)
    basis = fit_basis(
        v[:n_fit],
        None if nrm is None else nrm[:n_fit],
        n_axes=n_axes,
        n_whiten=n_whiten,
        n_clusters=n_clusters,
        windows=windows,
        shrink=shrink,
        power=power,
        seed=seed,
        directions=directions,
        n_head=n_head,
    )
    if basis.window > 0:
        units, keys = basis.tail_units(v[n_fit:])
        basis = replace(basis, scan_null=basis.null_from_sample(units, keys))
    raw = basis.transform(v[n_fit:], None if nrm is None else nrm[n_fit:])
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(raw, axis=0)
        std = np.nanstd(raw, axis=0, ddof=1)
    std = np.where(np.isfinite(std) & (std > 1e-12), std, 1e-12)
    if "shift" in basis.names:  # normalised analytically (see the module docstring)
        j = basis.names.index("shift")
        mean[j], std[j] = 0.0, 1.0
        # the held-out rows are the live scan's starting null and history: they have no `shift`
        # value of their own
        raw[:, j] = np.nan
    ref = Reference(basis=basis, signal_mean=mean, signal_std=std, n_fit=n_fit, n_std=n - n_fit)
    return ref, ref.standardise(raw)


def state_path(state_dir: Path, key: MonitorKey) -> Path:
    return Path(state_dir) / f"drift-{key.slug()}.npz"


def write_state(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write arrays + a JSON document to ``path`` atomically."""
    savez_with_meta(path, arrays, {"version": STATE_VERSION, **meta})


def savez_with_meta(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any], mode: int | None = None) -> None:
    """``arrays`` + the JSON document ``meta`` (array ``meta_json``) in one ``.npz``, atomically
    (:func:`savez_atomic`; its directory is created). Read back with :func:`load_with_meta`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta_json = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    savez_atomic(path, {**arrays, "meta_json": meta_json}, mode=mode)


def load_with_meta(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """``(arrays, meta)`` of a file written by :func:`savez_with_meta`; None if there is no file."""
    path = Path(path)
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files if k != "meta_json"}, _meta(data)


def savez_atomic(path: Path, payload: dict[str, np.ndarray], mode: int | None = None) -> None:
    """``np.savez(path, **payload)`` through a temporary file + fsync + ``os.replace``."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **payload)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _meta(data) -> dict[str, Any]:
    return json.loads(np.asarray(data["meta_json"]).tobytes().decode())


def read_meta(path: Path) -> tuple[dict[str, Any], list[str]]:
    """The JSON document of a state file and the names of its arrays, without loading them (any
    state version; raises OSError / ValueError / KeyError on a file that is not one)."""
    with np.load(Path(path), allow_pickle=False) as data:
        return _meta(data), [k for k in data.files if k != "meta_json"]


def read_state(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """Arrays and JSON document written by :func:`write_state`, or None if there is no file."""
    got = load_with_meta(path)
    if got is None:
        return None
    arrays, meta = got
    if meta.get("version") != STATE_VERSION:
        raise StateVersionError(f"{path}: unsupported drift state version {meta.get('version')}")
    return arrays, meta
