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
    ``u = z / |z|``); for each window length the normalised U-statistic of the last ``W`` rows
    against the running mean of the older ones is ~0 mean, unit variance without drift and grows
    linearly from the first shifted event on (:mod:`app.drift.scan`). With ``head`` axes the scan has
    a second block, the whitened top principal axes (spatial signs too), where a switch to a large
    part of the topic mix moves the mean (:class:`~app.drift.scan.ScanSet`: each block its own null
    and half the budget; ``shift`` is the larger excess). It is watched by a threshold
    rule (see :mod:`app.drift.detectors`), not by a CUSUM. This is the signal that sees an encoder
    swap (fp32 -> int8 moves every vector by a systematic offset that is small in cosine terms but
    large relative to the low-variance directions); it needs state, kept in a
    :class:`~app.drift.scan.ShiftScan`;
``variant_<name>``
    one per *known variant* of the encoder that the monitor is given a direction for (e.g.
    ``variant_fp32`` for a collection embedded with the int8 model): the projection of the vector on
    ``(C + shrink mean(eig C) I)^-1 d``, ``C`` the covariance of the fit rows and ``d`` the mean
    difference between that variant's vectors and this encoder's on a fixed text set shipped with
    the model (:mod:`app.drift.variants`). The most powerful linear test for a mean shift along
    ``d``: an encoder swapped for that variant under the same fingerprint moves it by a fraction of
    an sd per event, where ``shift`` (any direction) sees a few hundredths (DRIFT.md section 2);
``lognorm``
    log of the pre-normalisation norm, when the encoder passes it (length / tokenizer changes).

The basis is fitted on part of the warm-up window (see :mod:`app.drift.reference`); the signals'
reference mean and standard deviation are measured on the other part, so the standardised signals
are honest out-of-sample values.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .scan import (SHIFT_BUDGET_PER_EVENT, SHIFT_WINDOWS, SKETCH_BITS, ScanNull, ScanNullSet, ScanSet, ShiftScan,
                   pack_keys, unit_rows)

__all__ = ["SHIFT_POWER", "SHIFT_WINDOWS", "SignalBasis", "ShiftScan", "ScanNull", "fit_basis", "spherical_kmeans",
           "variant_tests"]

#: power of the ``shift`` scan's tail weighting (DRIFT.md section 2)
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


#: rows per matrix product in :func:`project`
PROJECT_ROWS = 8


def project(v: np.ndarray, proj: np.ndarray) -> np.ndarray:
    """``v @ proj`` (float64 result), the same bits for a row whatever batch it comes in.

    A BLAS matrix product picks its kernels by the number of rows, so a row's products differ in
    the last bits between a batch of 1, 37 or 1000 rows - and with them, in rare cases, an alert.
    The rows are therefore multiplied in blocks of exactly ``PROJECT_ROWS`` (zero-padded), which on
    OpenBLAS gives every row the same bits at any position of any batch (tested in
    tests/drift/test_signals.py), at about the cost of one product.
    """
    n = len(v)
    m = -(-n // PROJECT_ROWS) * PROJECT_ROWS
    if m != n:
        pad = np.zeros((m, v.shape[1]), dtype=np.float32)
        pad[:n] = v
        v = pad
    out = np.matmul(v.reshape(-1, PROJECT_ROWS, v.shape[1]), proj).reshape(m, -1)
    return out[:n].astype(np.float64)


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
    sketch
        ``SKETCH_BITS`` fixed random directions of the whitened tail (d, 64): the signs of a row's
        projections are its duplicate key (:mod:`app.drift.scan`).
    scan_null
        The scan's starting null moments and running-mean history (:class:`~app.drift.scan.ScanNull`),
        set from the warm-up's held-out rows by :func:`~app.drift.reference.learn_reference`.
    n_axes
        How many leading whitened axes are emitted as ``axis1..axisN``.
    use_norm
        Whether the ``lognorm`` signal is part of the basis.
    variants
        Test directions of the ``variant_<name>`` signals (d, m), in the order of ``variant_names``.
    head
        Whitening projection of the top principal axes (d, h) for the ``shift`` scan's second block
        (axis ``i`` divided by ``sqrt(lambda_i + shrink mean(lambda))``); (d, 0): the scan watches
        the tail only.

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
    sketch: np.ndarray
    scan_null: ScanNull | None = None
    #: centre of the ``tail`` rows when it was fitted apart from the rest (:func:`fit_tail`; a
    #: monitor's second fit of the scan on more events); None: ``mean``
    tail_mean: np.ndarray | None = None
    variants: np.ndarray | None = None
    variant_names: tuple[str, ...] = ()
    head: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.variants is None:
            object.__setattr__(self, "variants", np.zeros((self.centroid.shape[0], 0), dtype=np.float32))
        if self.head is None:
            object.__setattr__(self, "head", np.zeros((self.centroid.shape[0], 0), dtype=np.float32))
        if self.variants.shape[1] != len(self.variant_names):
            raise ValueError(f"{self.variants.shape[1]} variant directions for {len(self.variant_names)} names")
        # One matrix holds every direction we project on:
        # [centroid | axes | clusters^T | tail | sketch | head | variants].
        proj = np.hstack([self.centroid[:, None], self.axes, self.clusters.T, self.tail, self.sketch, self.head,
                          self.variants])
        proj = proj.astype(np.float32)
        mean = self.mean.astype(np.float64)
        tmean = mean if self.tail_mean is None else self.tail_mean.astype(np.float64)
        object.__setattr__(self, "_proj", np.ascontiguousarray(proj))
        object.__setattr__(self, "_offset", mean @ self.axes.astype(np.float64))
        object.__setattr__(self, "_tail_offset", tmean @ self.tail.astype(np.float64))
        object.__setattr__(self, "_sketch_offset", tmean @ self.sketch.astype(np.float64))
        object.__setattr__(self, "_variant_offset", mean @ self.variants.astype(np.float64))
        object.__setattr__(self, "_head_offset", mean @ self.head.astype(np.float64))

    @property
    def window(self) -> int:
        """Longest ``shift`` window (0: no ``shift`` signal)."""
        return max(self.windows) if self.windows else 0

    @property
    def scan_dims(self) -> tuple[int, ...]:
        """Blocks of the scan's unit rows: ``(tail,)`` or ``(tail, head)``."""
        h = self.head.shape[1]
        return (self.tail.shape[1], h) if h else (self.tail.shape[1],)

    def new_window(self, budget: float = SHIFT_BUDGET_PER_EVENT, online: bool = True,
                   null: ScanNull | ScanNullSet | None = None) -> ShiftScan | ScanSet:
        """Fresh ``shift`` state for one stream (``budget``: its per-event exceedance budget;
        ``null``: instead of ``scan_null``)."""
        null = self.scan_null if null is None else null
        dims = self.scan_dims
        if len(dims) == 1:
            return ShiftScan(self.windows, dims[0], null, budget=budget, online=online)
        return ScanSet(self.windows, dims, null, budget=budget, online=online)

    def null_from_sample(self, units: np.ndarray, keys: np.ndarray) -> ScanNull | ScanNullSet:
        """The scan's null from drift-free unit rows (:meth:`tail_units`)."""
        dims = self.scan_dims
        return ScanNull.from_sample(units, keys) if len(dims) == 1 else ScanNullSet.from_sample(units, keys, dims)

    def null_from_array(self, a: np.ndarray) -> ScanNull | ScanNullSet:
        """The scan's null saved with ``to_array``."""
        dims = self.scan_dims
        return ScanNull.from_array(a) if len(dims) == 1 else ScanNullSet.from_array(a, dims)

    def tail_units(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The scan's unit rows of ``vectors`` (n, sum(scan_dims)): the spatial signs of the whitened
        tail, then of the whitened head when there is one; and their duplicate keys (n,)."""
        return self._tail_and_keys(project(_as_matrix(vectors), self._proj))

    def _tail_and_keys(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q, k, t = self.axes.shape[1], self.clusters.shape[0], self.tail.shape[1]
        s, h = self.sketch.shape[1], self.head.shape[1]
        a = 1 + q + k
        tail = p[:, a : a + t] - self._tail_offset
        bad = ~np.isfinite(tail).all(axis=1)
        # rows that are not finite must not poison the window (they become zero rows)
        tail[bad] = 0.0
        if s:
            keys = pack_keys(p[:, a + t : a + t + s] - self._sketch_offset > 0)
        else:
            keys = np.arange(len(p), dtype=np.uint64) | np.uint64(1 << 63)
        units = unit_rows(tail)
        if h:
            head = p[:, a + t + s : a + t + s + h] - self._head_offset
            head[~np.isfinite(head).all(axis=1)] = 0.0
            units = np.hstack([units, unit_rows(head)])
        return units, keys

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def names(self) -> tuple[str, ...]:
        names = ["centroid", *(f"axis{i + 1}" for i in range(self.n_axes)), "mahal", "nearest"]
        if self.window > 0:
            names.append("shift")
        names.extend(f"variant_{n}" for n in self.variant_names)
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
        p = project(v, self._proj)
        q = self.axes.shape[1]
        z = (p[:, 1 : 1 + q] - self._offset) / self.scales
        out = np.empty((len(v), len(self.names)), dtype=np.float64)
        out[:, 0] = 1.0 - p[:, 0]
        out[:, 1 : 1 + self.n_axes] = z[:, : self.n_axes]
        out[:, 1 + self.n_axes] = np.einsum("ij,ij->i", z, z) / q
        k = self.clusters.shape[0]
        out[:, 2 + self.n_axes] = 1.0 - p[:, 1 + q : 1 + q + k].max(axis=1)
        if self.window > 0:
            units, keys = self._tail_and_keys(p)
            out[:, 3 + self.n_axes] = (window or self.new_window()).update(units, keys)
        m = self.variants.shape[1]
        if m:
            j = 3 + self.n_axes + (self.window > 0)
            out[:, j : j + m] = p[:, p.shape[1] - m :] - self._variant_offset
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
            prefix + "sketch": self.sketch,
            prefix + "scan_null": (np.empty(0) if self.scan_null is None else self.scan_null.to_array()),
            **({} if self.tail_mean is None else {prefix + "tail_mean": self.tail_mean}),
            **({} if not self.variant_names else {prefix + "variants": self.variants,
                                                  prefix + "variant_names": np.array(self.variant_names)}),
            **({} if not self.head.shape[1] else {prefix + "head": self.head}),
        }

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "basis_") -> "SignalBasis":
        meta = np.asarray(arrays[prefix + "meta"])
        null = np.asarray(arrays[prefix + "scan_null"])
        basis = cls(
            mean=np.asarray(arrays[prefix + "mean"], dtype=np.float32),
            centroid=np.asarray(arrays[prefix + "centroid"], dtype=np.float32),
            axes=np.asarray(arrays[prefix + "axes"], dtype=np.float32),
            scales=np.asarray(arrays[prefix + "scales"], dtype=np.float64),
            clusters=np.asarray(arrays[prefix + "clusters"], dtype=np.float32),
            tail=np.asarray(arrays[prefix + "tail"], dtype=np.float32),
            windows=tuple(int(w) for w in np.asarray(arrays[prefix + "windows"]).tolist()),
            n_axes=int(meta[0]),
            use_norm=bool(meta[1]),
            sketch=np.asarray(arrays[prefix + "sketch"], dtype=np.float32),
            scan_null=None,
            tail_mean=(np.asarray(arrays[prefix + "tail_mean"], dtype=np.float32) if prefix + "tail_mean" in arrays
                       else None),
            variants=(np.asarray(arrays[prefix + "variants"], dtype=np.float32) if prefix + "variants" in arrays
                      else None),
            variant_names=(tuple(str(x) for x in np.asarray(arrays[prefix + "variant_names"]).tolist())
                           if prefix + "variant_names" in arrays else ()),
            head=(np.asarray(arrays[prefix + "head"], dtype=np.float32) if prefix + "head" in arrays else None),
        )
        return replace(basis, scan_null=basis.null_from_array(null)) if len(null) else basis


def _tail_projection(vt: np.ndarray, var: np.ndarray, q: int, d: int, *, shrink: float, power: float,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The `shift` scan's projection (d, d - q) and duplicate sketch (d, SKETCH_BITS) from the
    principal axes ``vt`` and variances ``var`` of the fit rows: the axes after the first ``q``
    (padded with the null space when there are fewer rows than dimensions), whitened with
    eigenvalues shrunk toward their mean, to the power ``power / 2``."""
    if vt.shape[0] < d:  # fewer samples than dimensions: complete the basis
        qmat, _ = np.linalg.qr(np.hstack([vt.T, np.random.default_rng(seed).normal(size=(d, d - vt.shape[0]))]))
        rest = qmat[:, vt.shape[0]:]
        vt_full = np.vstack([vt, rest.T])
        var = np.concatenate([var, np.zeros(d - len(var))])
    else:
        vt_full = vt
    lam0 = shrink * (var.sum() / d)
    tail = vt_full[q:d].T / (var[q:d] + lam0) ** (power / 2)
    sketch = tail @ np.random.default_rng([seed, 1]).normal(size=(tail.shape[1], SKETCH_BITS))
    return tail, sketch


def _fix_signs(vt: np.ndarray) -> np.ndarray:
    """Deterministic sign of each axis (row): its largest-magnitude loading is positive."""
    signs = np.sign(vt[np.arange(len(vt)), np.argmax(np.abs(vt), axis=1)])
    return vt * np.where(signs == 0, 1.0, signs)[:, None]


def _svd(v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, principal axes (signs fixed) and variances of the rows ``v``."""
    x = v.astype(np.float64)
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, _fix_signs(vt), s**2 / max(len(x) - 1, 1)


def fit_tail(basis: "SignalBasis", vectors: np.ndarray, *, n_whiten: int = 32, shrink: float = 0.01,
             power: float = SHIFT_POWER, seed: int = 0) -> "SignalBasis":
    """``basis`` with the `shift` scan's projection fitted again on ``vectors`` (every other signal
    as it was; the scan's null is left unset - learn it from held-out rows). A monitor does this
    once more events have been seen than its warm-up held (``DriftConfig.shift_refit``): the
    whitening of the low-variance axes is the part of the basis that gains most from more rows.

    >>> rng = np.random.default_rng(2)
    >>> v = rng.normal(size=(600, 16)).astype(np.float32) + 3
    >>> v /= np.linalg.norm(v, axis=1, keepdims=True)
    >>> b = fit_basis(v[:200], n_whiten=4, n_clusters=3, windows=(8,))
    >>> b2 = fit_tail(b, v, n_whiten=4)
    >>> b2.tail.shape == b.tail.shape and not np.allclose(b2.tail, b.tail), np.array_equal(b2.axes, b.axes)
    (True, True)
    """
    v = _as_matrix(vectors)
    n, d = v.shape
    if not basis.windows or n < 2:
        raise ValueError("need a basis with `shift` windows and at least 2 vectors")
    q = max(1, min(n_whiten, d, n - 1))
    # principal axes from the eigendecomposition of the covariance: ~3x cheaper than the SVD of
    # the rows for the 3000 x 384 of a monitor's second fit (done between two batches)
    x = v.astype(np.float64)
    mean = x.mean(axis=0)
    xc = x - mean
    lam, vecs = np.linalg.eigh(xc.T @ xc / max(n - 1, 1))
    order = np.argsort(lam)[::-1]
    var, vt = np.maximum(lam[order], 0.0), _fix_signs(vecs[:, order].T)
    tail, sketch = _tail_projection(vt, var, q, d, shrink=shrink, power=power, seed=seed)
    return replace(basis, tail=tail.astype(np.float32), sketch=sketch.astype(np.float32), scan_null=None,
                   tail_mean=mean.astype(np.float32))


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
    directions: dict[str, np.ndarray] | None = None,
    n_head: int = 0,
) -> SignalBasis:
    """Fit a :class:`SignalBasis` on reference vectors (n, d); ``norms`` enables ``lognorm``.

    ``n_head``: the ``shift`` scan also watches the whitened top ``n_head`` principal axes, as a
    second block (:class:`~app.drift.scan.ScanSet`; 0: the tail only).

    ``directions``: ``{name: d}``, the mean offset of a known variant of the encoder (d,), one
    ``variant_<name>`` signal each (:func:`variant_tests`).

    ``windows=()`` disables the ``shift`` signal. ``power`` = 1 is plain whitening of the tail;
    1.5 weights its lowest-variance axes more (see DRIFT.md section 2). The ``shift`` null
    (``scan_null``) is left unset: learn it from held-out data, as
    :func:`~app.drift.reference.learn_reference` does.
    """
    windows = tuple(int(w) for w in windows if int(w) >= 2)
    v = _as_matrix(vectors)
    n, d = v.shape
    if n < 2:
        raise ValueError("need at least 2 reference vectors")
    q = max(1, min(n_whiten, d, n - 1))
    mean, vt, var = _svd(v)  # principal axes of the centred data
    centroid = mean / max(np.linalg.norm(mean), 1e-12)
    axes = vt[:q].T
    scales = np.maximum(np.sqrt(var[:q]), 1e-6)
    head = None
    if windows and q < d:
        tail, sketch = _tail_projection(vt, var, q, d, shrink=shrink, power=power, seed=seed)
        h = min(int(n_head), len(var))
        if h > 0:
            lam0 = shrink * (var.sum() / d)
            head = (vt[:h].T / np.sqrt(var[:h] + lam0)).astype(np.float32)
    else:
        windows = ()
        tail = np.zeros((d, 0))
        sketch = np.zeros((d, 0))
    clusters = spherical_kmeans(v, n_clusters, seed=seed)
    # a Fisher direction needs a covariance of full rank: with fewer fit rows than dimensions (a
    # warm-up under 4/3 d, e.g. a test's 200 events) the offset's share outside their span would be
    # divided by the shrinkage alone, and the signal would be in-sample noise - no variant signals
    names = tuple(sorted(directions or {})) if n > d else ()
    variants = variant_tests(vt, var, [directions[k] for k in names], shrink=shrink) if names else None
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
        sketch=sketch.astype(np.float32),
        variants=variants,
        variant_names=names,
        head=head,
    )


def variant_tests(vt: np.ndarray, var: np.ndarray, offsets: list[np.ndarray], *, shrink: float) -> np.ndarray:
    """Test directions ``w = (C + shrink mean(eig C) I)^-1 d`` (d, m) for the mean ``offsets`` ``d``,
    from the principal axes ``vt`` and variances ``var`` of the fit rows, each scaled to unit
    variance on them (``w' C w = 1``). ``C^-1 d`` is the most powerful linear test of a mean shift
    ``d`` (Fisher's discriminant); the shrinkage is the ``shift`` scan's (the smallest eigenvalues
    of a 384-dimensional covariance from ~1500 rows are underestimated). ``vt`` holds all ``d``
    axes (:func:`fit_basis` adds these signals only with more fit rows than dimensions).

    >>> rng = np.random.default_rng(4)
    >>> x = rng.normal(size=(2000, 3)) * [3.0, 1.0, 0.1]
    >>> mean, vt, var = _svd(x)
    >>> w = variant_tests(vt, var, [np.array([1.0, 1.0, 1.0])], shrink=0.0)[:, 0]
    >>> np.round(w / np.abs(w).max(), 2).astype(np.float64)   # mostly the low-variance axis
    array([0.  , 0.01, 1.  ])
    """
    d = vt.shape[1]
    lam0 = shrink * (var.sum() / d)
    out = np.empty((d, len(offsets)), dtype=np.float64)
    for j, off in enumerate(offsets):
        off = np.asarray(off, dtype=np.float64).reshape(-1)
        if off.shape != (d,) or not np.isfinite(off).all():
            raise ValueError(f"a variant offset must be a finite vector of dimension {d}, got shape {off.shape}")
        w = vt.T @ ((vt @ off) / (var + lam0))
        sd = np.sqrt(float(np.sum((vt @ w) ** 2 * var)))
        out[:, j] = w / sd if sd > 0 else w
    return out.astype(np.float32)
