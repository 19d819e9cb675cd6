"""Reduce embedding vectors to a few scalar signals that univariate drift detectors can watch.

River's detectors take one float at a time, so each 384-d vector is summarised by a handful of
scalars, all computed with one matrix product per batch:

``centroid``
    cosine distance to the reference mean direction (moves when the topic mix moves);
``axis1`` .. ``axisN``
    whitened projections on the top principal axes of the reference (which way the mix moves);
``mahal``
    mean squared whitened coordinate over the top ``n_whiten`` principal axes (a Mahalanobis
    distance in that subspace: grows when vectors leave the reference's shape, e.g. after an
    encoder or tokenizer change, even when the topics stay the same);
``nearest``
    cosine distance to the nearest of ``n_clusters`` spherical k-means centroids (novel content);
``shift``
    a sequential two-sample statistic for a *small mean shift in an unknown direction*, scanned
    over a few window lengths. Each vector is whitened in the reference's low-variance subspace
    (principal axes ``n_whiten + 1 .. d``, eigenvalues shrunk by ``shrink`` x their mean, axis
    ``i`` divided by ``lambda_i ** (power / 2)``) and reduced to its direction (spatial sign,
    ``u = z / |z|``); for each window length ``W`` the normalised U-statistic

        T_W(t) = sum_{t-W < i < j <= t} (u_i . u_j - c) / sqrt(W (W - 1) / 2 * tau2)

    is ~N(0, 1) without drift and grows like ``n |delta|^2 / sqrt(2 k)`` from the first shifted
    event on (``c`` is the null mean of ``u_i . u_j`` and ``tau2`` its null variance, both
    estimated on the held-out part of the warm-up). ``shift`` is ``max_W T_W(t)``; it is watched
    by a threshold rule (see :mod:`app.drift.detectors`), not by a CUSUM. This is the signal that
    sees an encoder swap (fp32 -> int8 moves every vector by a systematic offset that is small in
    cosine terms but large relative to the low-variance directions); it needs state, kept in a
    :class:`ShiftScan`;
``lognorm``
    log of the pre-normalisation norm, when the encoder passes it (length / tokenizer changes).

The basis is fitted on part of the warm-up window (see :mod:`app.drift.reference`); the signals'
reference mean and standard deviation are measured on the other part, so the standardised signals
are honest out-of-sample values.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SHIFT_POWER", "SHIFT_WINDOWS", "SignalBasis", "ShiftScan", "fit_basis", "spherical_kmeans",
           "shift_null_moments"]

#: window lengths the ``shift`` scan uses, and the power of its tail weighting (DRIFT.md section 2)
SHIFT_WINDOWS: tuple[int, ...] = (32, 48, 72, 108, 162)
SHIFT_POWER = 1.5


def _as_matrix(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2:
        raise ValueError(f"vectors must be a 2-d array (n, d), got shape {v.shape}")
    return v


def spherical_kmeans(vectors: np.ndarray, k: int, *, iters: int = 20, seed: int = 0) -> np.ndarray:
    """Unit-norm centroids of ``k`` clusters (k-means++ seeding, cosine assignment).

    >>> rng = np.random.default_rng(0)
    >>> x = np.vstack([rng.normal([5, 0], 0.1, (50, 2)), rng.normal([0, 5], 0.1, (50, 2))])
    >>> x /= np.linalg.norm(x, axis=1, keepdims=True)
    >>> c = spherical_kmeans(x, 2, seed=0)
    >>> sorted(np.round(np.abs(c[:, 0])).tolist())
    [0.0, 1.0]
    """
    x = _as_matrix(vectors).astype(np.float64)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n = len(x)
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(n)]]
    dist = 1.0 - x @ centres[0]
    for _ in range(1, k):
        p = np.clip(dist, 0, None) ** 2
        total = p.sum()
        idx = rng.choice(n, p=p / total) if total > 0 else rng.integers(n)
        centres.append(x[idx])
        dist = np.minimum(dist, 1.0 - x @ x[idx])
    c = np.array(centres)
    for _ in range(iters):
        assign = np.argmax(x @ c.T, axis=1)
        new = np.zeros_like(c)
        np.add.at(new, assign, x)
        norms = np.linalg.norm(new, axis=1)
        empty = norms < 1e-12
        new[~empty] /= norms[~empty, None]
        new[empty] = c[empty]
        if np.allclose(new, c):
            break
        c = new
    return c.astype(np.float32)


def _unit_rows(tail: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm (spatial sign); all-zero rows stay zero."""
    nrm = np.linalg.norm(tail, axis=1, keepdims=True)
    return np.divide(tail, nrm, out=np.zeros_like(tail), where=nrm > 0)


def shift_null_moments(units: np.ndarray) -> tuple[float, float]:
    """``(c, tau2)``: mean and variance of ``u_i . u_j`` (i != j) on drift-free unit rows.

    ``c`` is the U-statistic estimate of ``|E u|^2``; ``tau2`` the mean squared inner product of
    centred rows of the two halves of ``units`` (independent rows, so ~``tr(Cov(u)^2)``).

    >>> rng = np.random.default_rng(0)
    >>> u = _unit_rows(rng.normal(size=(2000, 100)))
    >>> c, tau2 = shift_null_moments(u)
    >>> abs(c) < 1e-3, round(tau2 * 100, 1)   # isotropic: tr(Cov^2) = 1 / dim
    (True, 1.0)
    """
    u = np.asarray(units, dtype=np.float64)
    n = len(u)
    if n < 4:
        raise ValueError("need at least 4 rows to estimate the shift statistic's null moments")
    s = u.sum(axis=0)
    c = float((s @ s - np.einsum("ij,ij->", u, u)) / (n * (n - 1)))
    h = n // 2
    a = u[:h] - u[:h].mean(axis=0)
    b = u[h : 2 * h] - u[h : 2 * h].mean(axis=0)
    tau2 = float(np.mean((a @ b.T) ** 2))
    return c, max(tau2, 1e-12)


class ShiftScan:
    """State of the ``shift`` signal between batches: the last ``max(windows)`` unit tail rows.

    ``update(units)`` returns ``max_W T_W(t)`` for each new row (see the module docstring), over the
    windows that are already full (NaN until ``min(windows)`` rows have been seen).
    """

    def __init__(self, windows, dim: int, c: float = 0.0, tau2: float = 1.0):
        self.windows = tuple(int(w) for w in windows)
        self.c = float(c)
        self.tau2 = float(tau2)
        self.rows = np.empty((0, dim), dtype=np.float64)

    @property
    def window(self) -> int:
        return max(self.windows) if self.windows else 0

    def reset(self) -> None:
        self.rows = self.rows[:0]

    def update(self, units: np.ndarray) -> np.ndarray:
        hist = len(self.rows)
        z = np.concatenate([self.rows, units]) if hist else units
        n = len(units)
        out = np.full(n, np.nan)
        cs = np.zeros((len(z) + 1, z.shape[1]))
        np.cumsum(z, axis=0, out=cs[1:])
        sq = np.concatenate([[0.0], np.cumsum(np.einsum("ij,ij->i", z, z))])
        end = np.arange(hist + 1, hist + n + 1)  # prefix index just after each new row
        for w in self.windows:
            ok = end >= w
            if not ok.any():
                continue
            e = end[ok]
            s = cs[e] - cs[e - w]
            pairs = w * (w - 1) / 2
            u = (np.einsum("ij,ij->i", s, s) - (sq[e] - sq[e - w])) / 2 - pairs * self.c
            t = u / np.sqrt(pairs * self.tau2)
            cur = out[ok]
            out[ok] = np.where(np.isnan(cur) | (t > cur), t, cur)
        self.rows = z[-self.window :].copy() if self.window else z[:0].copy()
        return out



@dataclass(frozen=True, eq=False)
class SignalBasis:
    """Fitted parameters that turn vectors into scalar signals.

    Attributes
    ----------
    mean
        Reference mean vector (d,), used to centre before whitening.
    centroid
        Unit mean direction (d,).
    axes
        Top principal axes of the reference (d, q), columns sorted by variance.
    scales
        Standard deviation of the reference along each axis (q,).
    clusters
        Spherical k-means centroids (k, d).
    tail
        Whitening projection of the low-variance subspace (d, k): axes divided by their
        shrunk variances to the power ``power / 2`` (used by ``shift``).
    windows
        Window lengths scanned by the ``shift`` signal (empty disables it).
    shift_c, shift_tau2
        Null mean and variance of the inner product of two unit tail rows (see
        :func:`shift_null_moments`); set from held-out data by :func:`~app.drift.reference.learn_reference`.
    n_axes
        How many leading whitened axes are emitted as ``axis1..axisN``.
    use_norm
        Whether the ``lognorm`` signal is part of the basis.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> v = rng.normal(size=(500, 16)).astype(np.float32) + 3
    >>> v /= np.linalg.norm(v, axis=1, keepdims=True)
    >>> basis = fit_basis(v, n_axes=2, n_whiten=4, n_clusters=3, windows=(8,))
    >>> basis.names
    ('centroid', 'axis1', 'axis2', 'mahal', 'nearest', 'shift')
    >>> basis.transform(v[:10]).shape
    (10, 6)
    """

    mean: np.ndarray
    centroid: np.ndarray
    axes: np.ndarray
    scales: np.ndarray
    clusters: np.ndarray
    tail: np.ndarray
    windows: tuple[int, ...]
    n_axes: int
    use_norm: bool
    shift_c: float = 0.0
    shift_tau2: float = 1.0

    def __post_init__(self) -> None:
        # One matrix holds every direction we project on: [centroid | axes | clusters^T | tail].
        proj = np.hstack([self.centroid[:, None], self.axes, self.clusters.T, self.tail]).astype(np.float32)
        mean = self.mean.astype(np.float64)
        object.__setattr__(self, "_proj", np.ascontiguousarray(proj))
        object.__setattr__(self, "_offset", mean @ self.axes.astype(np.float64))
        object.__setattr__(self, "_tail_offset", mean @ self.tail.astype(np.float64))

    @property
    def window(self) -> int:
        """Longest ``shift`` window (0: no ``shift`` signal)."""
        return max(self.windows) if self.windows else 0

    def new_window(self) -> ShiftScan:
        """Fresh ``shift`` state for one stream."""
        return ShiftScan(self.windows, self.tail.shape[1], self.shift_c, self.shift_tau2)

    def tail_units(self, vectors: np.ndarray) -> np.ndarray:
        """Unit (spatial-sign) whitened tail rows of ``vectors`` (n, k), as ``shift`` uses them."""
        v = _as_matrix(vectors)
        tail = (v @ self.tail).astype(np.float64) - self._tail_offset
        tail[~np.isfinite(tail).all(axis=1)] = 0.0
        return _unit_rows(tail)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def names(self) -> tuple[str, ...]:
        names = ["centroid", *(f"axis{i + 1}" for i in range(self.n_axes)), "mahal", "nearest"]
        if self.window > 0:
            names.append("shift")
        if self.use_norm:
            names.append("lognorm")
        return tuple(names)

    def transform(self, vectors: np.ndarray, norms: np.ndarray | None = None,
                  window: ShiftScan | None = None) -> np.ndarray:
        """Signals for a batch: float64 array (n, len(names)).

        ``lognorm`` is NaN for every row when ``norms`` is None (the detectors then skip it).
        ``window`` carries the ``shift`` state between consecutive batches of one stream; without
        it, ``shift`` is computed within this batch only (NaN for its first ``min(windows) - 1`` rows).
        """
        v = _as_matrix(vectors)
        if v.shape[1] != self.dim:
            raise ValueError(f"vectors have dimension {v.shape[1]}, the reference has {self.dim}")
        p = (v @ self._proj).astype(np.float64)
        q = self.axes.shape[1]
        z = (p[:, 1 : 1 + q] - self._offset) / self.scales
        out = np.empty((len(v), len(self.names)), dtype=np.float64)
        out[:, 0] = 1.0 - p[:, 0]
        out[:, 1 : 1 + self.n_axes] = z[:, : self.n_axes]
        out[:, 1 + self.n_axes] = np.einsum("ij,ij->i", z, z) / q
        k = self.clusters.shape[0]
        out[:, 2 + self.n_axes] = 1.0 - p[:, 1 + q : 1 + q + k].max(axis=1)
        if self.window > 0:
            tail = p[:, 1 + q + k :] - self._tail_offset
            # rows that are not finite must not poison the window (they become zero rows)
            tail[~np.isfinite(tail).all(axis=1)] = 0.0
            out[:, 3 + self.n_axes] = (window or self.new_window()).update(_unit_rows(tail))
        if self.use_norm:
            if norms is None:
                out[:, -1] = np.nan
            else:
                nrm = np.asarray(norms, dtype=np.float64).reshape(-1)
                if nrm.shape[0] != len(v):
                    raise ValueError(f"norms has {nrm.shape[0]} values for {len(v)} vectors")
                with np.errstate(divide="ignore", invalid="ignore"):
                    out[:, -1] = np.where(nrm > 0, np.log(nrm), np.nan)
        return out

    def to_arrays(self, prefix: str = "basis_") -> dict[str, np.ndarray]:
        return {
            prefix + "mean": self.mean,
            prefix + "centroid": self.centroid,
            prefix + "axes": self.axes,
            prefix + "scales": self.scales,
            prefix + "clusters": self.clusters,
            prefix + "tail": self.tail,
            prefix + "meta": np.array([self.n_axes, int(self.use_norm), self.window], dtype=np.int64),
            prefix + "windows": np.array(self.windows, dtype=np.int64),
            prefix + "shift_moments": np.array([self.shift_c, self.shift_tau2], dtype=np.float64),
        }

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "basis_") -> "SignalBasis":
        meta = np.asarray(arrays[prefix + "meta"])
        return cls(
            mean=np.asarray(arrays[prefix + "mean"], dtype=np.float32),
            centroid=np.asarray(arrays[prefix + "centroid"], dtype=np.float32),
            axes=np.asarray(arrays[prefix + "axes"], dtype=np.float32),
            scales=np.asarray(arrays[prefix + "scales"], dtype=np.float64),
            clusters=np.asarray(arrays[prefix + "clusters"], dtype=np.float32),
            tail=np.asarray(arrays[prefix + "tail"], dtype=np.float32),
            windows=tuple(int(w) for w in np.asarray(arrays[prefix + "windows"]).tolist()),
            n_axes=int(meta[0]),
            use_norm=bool(meta[1]),
            shift_c=float(np.asarray(arrays[prefix + "shift_moments"])[0]),
            shift_tau2=float(np.asarray(arrays[prefix + "shift_moments"])[1]),
        )


def fit_basis(
    vectors: np.ndarray,
    norms: np.ndarray | None = None,
    *,
    n_axes: int = 2,
    n_whiten: int = 32,
    n_clusters: int = 8,
    windows: tuple[int, ...] = SHIFT_WINDOWS,
    shrink: float = 0.01,
    power: float = SHIFT_POWER,
    seed: int = 0,
) -> SignalBasis:
    """Fit a :class:`SignalBasis` on reference vectors (n, d); ``norms`` enables ``lognorm``.

    ``windows=()`` disables the ``shift`` signal. ``power`` = 1 is plain whitening of the tail;
    1.5 weights its lowest-variance axes more (see DRIFT.md section 2). The ``shift`` null moments
    are left at (0, 1): set them from held-out data (:func:`shift_null_moments`), as
    :func:`~app.drift.reference.learn_reference` does.
    """
    windows = tuple(int(w) for w in windows if int(w) >= 2)
    v = _as_matrix(vectors)
    n, d = v.shape
    if n < 2:
        raise ValueError("need at least 2 reference vectors")
    x = v.astype(np.float64)
    mean = x.mean(axis=0)
    centroid = mean / max(np.linalg.norm(mean), 1e-12)
    q = max(1, min(n_whiten, d, n - 1))
    # Principal axes from the SVD of the centred data.
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    # Deterministic sign: the largest-magnitude loading of each axis is positive.
    signs = np.sign(vt[np.arange(len(vt)), np.argmax(np.abs(vt), axis=1)])
    vt = vt * np.where(signs == 0, 1.0, signs)[:, None]
    axes = vt[:q].T
    var = s**2 / max(n - 1, 1)
    scales = np.maximum(np.sqrt(var[:q]), 1e-6)
    # Low-variance subspace for `shift`: the remaining principal axes (padded with the null space
    # when n < d), whitened with eigenvalues shrunk toward their mean.
    if windows and q < d:
        if vt.shape[0] < d:  # fewer samples than dimensions: complete the basis
            qmat, _ = np.linalg.qr(np.hstack([vt.T, np.random.default_rng(seed).normal(size=(d, d - vt.shape[0]))]))
            rest = qmat[:, vt.shape[0]:]
            vt_full = np.vstack([vt, rest.T])
            var = np.concatenate([var, np.zeros(d - len(var))])
        else:
            vt_full = vt
        lam0 = shrink * (var.sum() / d)
        tail = vt_full[q:d].T / (var[q:d] + lam0) ** (power / 2)
    else:
        windows = ()
        tail = np.zeros((d, 0))
    clusters = spherical_kmeans(v, n_clusters, seed=seed)
    return SignalBasis(
        mean=mean.astype(np.float32),
        centroid=centroid.astype(np.float32),
        axes=axes.astype(np.float32),
        scales=scales.astype(np.float64),
        clusters=clusters,
        tail=tail.astype(np.float32),
        windows=windows,
        n_axes=min(n_axes, q),
        use_norm=norms is not None,
    )
