"""The ``shift`` scan: a sequential two-sample statistic for a small mean shift in an unknown direction.

Each vector is reduced to a *unit tail row* ``u`` (whitened in the reference's low-variance subspace,
then scaled to unit norm; :mod:`app.drift.signals`). For each window length ``W`` and each event
``t`` the scan computes a U-statistic over the pairs of the last ``W`` rows, centred on the running
mean ``m`` of every *older* row (the warm-up's held-out rows, then the live rows that have left the
longest window)::

    U_W(t) = sum_{t-W < i < j <= t, key_i != key_j} (u_i - m) . (u_j - m)

Without drift, with ``m`` the mean of ``N`` rows independent of the window, ``P = W (W - 1) / 2``:

* ``E U_W = P (tr(C) / N - D)``, ``Var U_W = P (tau2 + t2 (2 (W - 1) / N + 2 P / N^2))``,
  where ``C`` is the covariance of the rows, ``tau2 = E[((u_i - mu).(u_j - mu))^2]`` over pairs of
  *distinct* rows, ``D = E[|u - mu|^2 1(key_i == key_j)]`` the collision term and
  ``t2 = tr(C^2) ~ tau2 + D tr(C)`` the same over *independent* rows (same-document pairs
  included: the running mean's error meets them even though ``U_W`` leaves them out; on a
  collection without duplicates ``t2 = tau2``);
* ``T_W = (U_W - E U_W) / sqrt(Var U_W)`` has mean 0 and variance 1 for every collection, and is
  close to a standardised chi-square whose degrees of freedom match its skewness
  (``tr(C^2)^3 / tr(C^3)^2``; :func:`scan_dof`);
* after a shift ``delta`` of the mean it grows like ``n |delta|^2 / sqrt(2 tau2)`` from the first
  shifted row (n <= W): no window to fill first.

**Duplicates.** A document that occurs twice in a window (the same text sent again, or a small
collection resampled) adds ``|u - m|^2 ~ 1`` to ``U_W``, against a typical pair term of
``sqrt(tau2) ~ 0.07``: a compound-Poisson tail that no moment-matched law describes (on a 1000-document
Reuters pool the threshold rule alarmed 6 times in 400k drift-free events, 5x its budget). Pairs of
rows with the same 64-bit *sketch* (signs of 64 fixed random projections of the whitened tail row:
identical texts, and near-identical vectors such as a GPU's re-computation, share it; two distinct
documents practically never do) are therefore left out of ``U_W``, and the null mean carries the
collision term ``D`` instead.

**Moments estimated on the collection itself, and refined online.** ``m``, ``tr(C)``, ``tau2``,
``tr(C^3)`` and ``D`` start from the warm-up's held-out rows; every live row that leaves the longest
window then adds to them (its products with rows at fixed lags inside the window for ``tau2`` and
``tr(C^3)``; its pairs within ``max(W)`` for ``D``). The held-out estimates of a 2000-event warm-up
are noisy enough to move ``T_162``'s tail by a factor of several; the refined ones converge as the
stream goes on. Estimates are refreshed every ``block`` events of *event index* (not per batch), so
the values do not depend on how the stream is batched.

**Right after a warm-up on a narrow collection** (stop 25). Two terms of the null were missing
where a collection has few documents, and both matter most while the warm-up's estimates stand:

* the running mean's error ``b`` meets the window through ``b.(u_i + u_j)`` and ``|b|^2``, whose
  variances hold ``tr(C^2)`` over independent rows, same-document pairs included (``t2`` above):
  with ``tau2`` in their place, ``T_162`` had an sd of 1.42 over the first 418 events after the
  warm-up on a 332-document topic of the tuning part (1.30 on 300 synthetic documents);
* ``P D`` is most of the null mean of a long window there (``P_162 D ~ 39`` against an sd of
  ``U_162`` of ~5), and ``D`` from a warm-up's ~380 duplicate pairs is ~5 % off, a bias of ~0.4 sd
  in every window for as long as it stands: its variance (``ScanNull.collision_var``) is added to
  each window's null variance as ``P_W^2 collision_var``, and fades as pairs come in.

With both, that topic's ``T_W`` have sds of 1.00-1.05 from the first event after the warm-up on,
and the up-crossings of a level 1 sd below the threshold over its first 500 events fell from 26
to 0.7 per 100k (300 warm-ups; 1.5-2.2 in events 2000-6000 of the same streams). On a collection
without repeated documents (``D = 0``) nothing changes.
"""
from __future__ import annotations

import numpy as np

from .lrv import window_factors
from .nulls import scan_threshold

__all__ = ["SHIFT_WINDOWS", "SHIFT_BUDGET_PER_EVENT", "SKETCH_BITS", "ScanNull", "ScanNullSet", "ShiftScan",
           "ScanSet", "scan_dof", "unit_rows", "pack_keys"]

#: window lengths of the scan (DRIFT.md section 2)
SHIFT_WINDOWS: tuple[int, ...] = (32, 48, 72, 108, 162)
#: nominal per-event exceedance budget of the whole scan (all windows together). The scan's share of
#: the monitor's design allowance is 0.125 raw alarms per 100k events (app.drift.nulls); its realised
#: up-crossing rate was up to 4x its nominal budget on narrow collections of the tuning part (Reuters
#: "acq": 5 up-crossings in 1M drift-free events at a nominal 0.125 per 100k; DRIFT.md section 4),
#: so the nominal budget is 0.05 per 100k.
SHIFT_BUDGET_PER_EVENT = 0.05e-5
#: bits of the duplicate sketch
SKETCH_BITS = 64
#: events between two refreshes of the online moment estimates
MOMENT_BLOCK = 256
#: rows of a sample used for its pairwise moment estimates (ScanNull.from_sample)
MAX_PAIR_ROWS = 2000
#: the scan's buffer is compacted (and its prefix sums rebased) every this many rows: a multiple of
#: MOMENT_BLOCK, at fixed event indices, so that the arithmetic does not depend on the batching
COMPACT_EVERY = 1024


def unit_rows(tail: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm (spatial sign); all-zero rows stay zero."""
    nrm = np.linalg.norm(tail, axis=1, keepdims=True)
    return np.divide(tail, nrm, out=np.zeros_like(tail), where=nrm > 0)


def pack_keys(signs: np.ndarray) -> np.ndarray:
    """One uint64 per row from a (n, 64) boolean array.

    >>> pack_keys(np.eye(64, dtype=bool)[:2]).tolist() == [1 << 7, 1 << 6]
    True
    """
    b = np.packbits(np.ascontiguousarray(signs, dtype=bool), axis=1)
    return np.ascontiguousarray(b).view(np.uint64).reshape(-1)


def scan_dof(trace: float, tau2: float, tau3: float | None) -> float:
    """Degrees of freedom of the chi-square that stands in for the scan's null law.

    ``nu = tr(C)^2 / tau2`` matches two moments; with ``tau3 = tr(C^3)``, ``d = tau2^3 / tau3^2``
    matches the skewness too (Pearson's three-moment approximation of a quadratic form; ``d <= nu``,
    a heavier tail). An unusable ``tau3`` falls back to ``nu``; ``d`` is kept in [4, nu].

    >>> round(scan_dof(1.0, 0.01, None)), round(scan_dof(1.0, 0.01, 2e-4))
    (100, 25)
    """
    nu = max(trace**2 / tau2, 1.0)
    if tau3 is None or not np.isfinite(tau3) or tau3 <= 0:
        return nu
    return float(min(max(tau2**3 / tau3**2, 4.0), nu))


def _dup_pairs(keys: np.ndarray, lo: int, maxlag: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (i < j, j - i < maxlag) of equal keys among ``keys`` (positions offset by ``lo``)."""
    order = np.argsort(keys, kind="stable")
    ks = keys[order]
    eq = ks[1:] == ks[:-1]
    if not eq.any():
        return np.empty(0, np.int64), np.empty(0, np.int64)
    ii, jj = [], []
    k = 1
    while k < len(order):
        same = ks[k:] == ks[:-k]
        if not same.any():
            break
        a, b = order[:-k][same], order[k:][same]  # stable sort: a < b
        near = b - a < maxlag
        ii.append(a[near])
        jj.append(b[near])
        k += 1
    i = np.concatenate(ii) + lo
    j = np.concatenate(jj) + lo
    return i, j


class ScanNull:
    """Null moments of the scan's pair products, as sums and counts (so that they can be merged).

    ``hist_sum`` / ``hist_n`` / ``hist_sq``: sum, number and sum of squared norms of the rows of the
    running mean; ``h2``: squared products of distinct pairs (``tau2``); ``h3``: products around
    triangles (``tr(C^3)``); ``dup`` / ``pairs``: collision term over pairs examined. Each as
    ``(sum, count)``. ``dup_var``: the estimated variance of ``dup``'s sum (the duplicate pairs
    are a count, and a small one: :meth:`collision_var`).
    """

    #: first value of a saved null that carries ``dup_var`` (older arrays start with ``hist_n >= 0``)
    ARRAY_V2 = -2.0

    def __init__(self, dim: int):
        self.hist_sum = np.zeros(dim)
        self.hist_n = 0.0
        self.hist_sq = 0.0
        self.h2 = [0.0, 0.0]
        self.h3 = [0.0, 0.0]
        self.dup = [0.0, 0.0]
        self.dup_var = 0.0

    @property
    def dim(self) -> int:
        return len(self.hist_sum)

    @classmethod
    def from_sample(cls, units: np.ndarray, keys: np.ndarray) -> "ScanNull":
        """Estimates from drift-free unit rows (the warm-up's held-out part).

        ``tau2``: mean squared product of centred rows of the two halves (distinct keys only);
        ``tr(C^3)``: mean of ``(a.b)(b.c)(c.a)`` over the three thirds (three distinct keys);
        ``D``: collisions among all
        pairs. Each counts as many observations as there are rows (``tau2``, ``tr(C^3)``) or pairs
        (``D``), the units in which the online updates are counted. The variance of the collision
        sum is that of the number ``K`` of equal-key pairs among the ``n`` rows, a U-statistic:
        ``Var K = M q (1 - q) + 2 M (n - 2) (s3 - q^2)`` with ``M`` pairs, ``q`` the chance that two
        rows share a key and ``s3`` that three do (zero for a collection whose documents are equally
        likely: then ``K`` is as good as Poisson), both estimated from the sample's pair and triple
        counts; times the duplicate pairs' mean squared ``g``.

        >>> rng = np.random.default_rng(0)
        >>> u = unit_rows(rng.normal(size=(3000, 50)))
        >>> null = ScanNull.from_sample(u, np.arange(3000, dtype=np.uint64))
        >>> round(null.trace, 2), round(null.tau2 * 50, 1), round(null.tau3 * 50**2, 1), null.collision
        (1.0, 1.0, 1.0, 0.0)
        """
        u = np.asarray(units, dtype=np.float64)
        keys = np.asarray(keys, dtype=np.uint64)
        n = len(u)
        if n < 6:
            raise ValueError("need at least 6 rows to estimate the shift statistic's null moments")
        self = cls(u.shape[1])
        self.hist_sum = u.sum(axis=0)
        self.hist_n = float(n)
        self.hist_sq = float(np.einsum("ij,ij->", u, u))
        mean = self.hist_sum / n
        # the pairwise estimates use at most MAX_PAIR_ROWS rows (their cost grows as n^2; a long
        # warm-up gains little there, and the online refinement takes over anyway)
        u, keys = u[:MAX_PAIR_ROWS], keys[:MAX_PAIR_ROWS]
        npair = len(u)
        h = npair // 2
        a, b = u[:h] - u[:h].mean(axis=0), u[h : 2 * h] - u[h : 2 * h].mean(axis=0)
        prod = (a @ b.T) ** 2
        distinct = keys[:h, None] != keys[None, h : 2 * h]
        tau2 = float(prod[distinct].mean()) if distinct.any() else 1e-12
        self.h2 = [tau2 * n, float(n)]
        k = npair // 3
        x, y, z = (w - w.mean(axis=0) for w in (u[:k], u[k : 2 * k], u[2 * k : 3 * k]))
        kx, ky, kz = keys[:k], keys[k : 2 * k], keys[2 * k : 3 * k]
        mxy, myz, mzx = ((a[:, None] != b[None, :]).astype(float) for a, b in ((kx, ky), (ky, kz), (kz, kx)))
        # sum over triangles (i, j, l) = trace(A B C): matrix products, not an n^3 loop
        triples = float(np.sum((mxy @ myz) * mzx.T))  # triangles of three distinct documents
        tau3 = float(np.sum((((x @ y.T) * mxy) @ ((y @ z.T) * myz)) * ((z @ x.T) * mzx).T)) / max(triples, 1.0)
        self.h3 = [tau3 * n, float(n)]
        g = np.einsum("ij,ij->i", u - mean, u - mean)
        i, j = _dup_pairs(keys, 0, npair)
        self.dup = [float(g[j].sum()), npair * (npair - 1) / 2]
        if len(j):
            c = np.unique(keys, return_counts=True)[1].astype(np.float64)
            m = npair * (npair - 1) / 2
            q = len(j) / m
            s3 = float(np.sum(c * (c - 1) * (c - 2))) / (npair * (npair - 1) * max(npair - 2, 1))
            var_k = m * q * (1 - q) + 2 * m * (npair - 2) * max(s3 - q * q, 0.0)
            self.dup_var = float(np.mean(g[j] ** 2) * var_k)
        return self

    @property
    def mean(self) -> np.ndarray:
        return self.hist_sum / max(self.hist_n, 1.0)

    @property
    def trace(self) -> float:
        n = self.hist_n
        if n < 2:
            return 1.0
        return max((self.hist_sq - n * float(self.mean @ self.mean)) / (n - 1), 1e-12)

    @property
    def tau2(self) -> float:
        return max(self.h2[0] / self.h2[1], 1e-12) if self.h2[1] > 0 else 1.0

    @property
    def tau3(self) -> float | None:
        return self.h3[0] / self.h3[1] if self.h3[1] > 0 else None

    @property
    def collision(self) -> float:
        return self.dup[0] / self.dup[1] if self.dup[1] > 0 else 0.0

    @property
    def collision_var(self) -> float:
        """Variance of the collision term's estimate ``D``: ``dup_var / pairs^2``.

        ``D`` is the null mean's correction for the duplicate pairs a window leaves out; on a
        narrow collection (a few hundred documents) it is the largest part of ``E U_W`` (~9 sds of
        ``U_162`` on 332 documents) and, estimated from a warm-up's few hundred duplicate pairs,
        ~5 % off - a bias of the whole scan until enough pairs have been seen.
        """
        return self.dup_var / self.dup[1] ** 2 if self.dup[1] > 0 else 0.0

    def plus(self, other: "ScanNull") -> "ScanNull":
        """A copy with ``other``'s pair moments (``h2``, ``h3``, ``dup``) added; the history is this one's."""
        out = self.copy()
        for a, b in ((out.h2, other.h2), (out.h3, other.h3), (out.dup, other.dup)):
            a[0] += b[0]
            a[1] += b[1]
        out.dup_var += other.dup_var
        return out

    def copy(self) -> "ScanNull":
        c = ScanNull(self.dim)
        c.hist_sum = self.hist_sum.copy()
        c.hist_n, c.hist_sq = self.hist_n, self.hist_sq
        c.h2, c.h3, c.dup = list(self.h2), list(self.h3), list(self.dup)
        c.dup_var = self.dup_var
        return c

    def to_array(self) -> np.ndarray:
        return np.concatenate([[self.ARRAY_V2, self.dup_var, self.hist_n, self.hist_sq, *self.h2, *self.h3,
                                *self.dup], self.hist_sum])

    @classmethod
    def from_array(cls, a: np.ndarray, dim: int | None = None) -> "ScanNull":
        """The null saved with :meth:`to_array` (``dim``: when ``a`` may hold more than this null).

        A null saved before ``dup_var`` existed (its first value is ``hist_n``, not the marker)
        gets the variance of a Poisson count of its duplicate pairs, times 4 for their
        overdispersion: a conservative stand-in, replaced by the estimate as the stream goes on.
        """
        a = np.asarray(a, dtype=np.float64)
        head = cls._header(a)
        v2 = head == 10
        self = cls(len(a) - head if dim is None else int(dim))
        b = a[2:] if v2 else a
        self.hist_n, self.hist_sq = float(b[0]), float(b[1])
        self.h2, self.h3, self.dup = [float(b[2]), float(b[3])], [float(b[4]), float(b[5])], [float(b[6]), float(b[7])]
        self.hist_sum = b[8 : 8 + self.dim].copy()
        if len(self.hist_sum) != self.dim:
            raise ValueError(f"a scan null of {len(a)} values for a block of dimension {self.dim}")
        self.dup_var = float(a[1]) if v2 else 4.0 * max(self.dup[0], 0.0)  # (the pairs' g ~ 1: unit rows)
        return self

    @classmethod
    def _header(cls, a: np.ndarray) -> int:
        """Values before ``hist_sum`` in the null saved at the start of ``a``: 10 with ``dup_var``, 8 before."""
        return 10 if len(a) and a[0] == cls.ARRAY_V2 else 8

    @classmethod
    def array_size_at(cls, a: np.ndarray, dim: int) -> int:
        """Values of the null of dimension ``dim`` saved at the start of ``a``."""
        return cls._header(a) + int(dim)


class ShiftScan:
    """State of the ``shift`` signal of one stream; ``update(units, keys)`` gives one value per row.

    ``null`` holds the starting moments and running-mean history (the warm-up's held-out rows);
    ``budget`` is the per-event exceedance budget of the whole scan (split over the windows);
    ``online=False`` keeps the starting moments (no refinement; for comparisons).

    The running mean ``m``, its count ``N`` and the moments are refreshed every ``block`` rows (by
    the index of the row leaving the longest window, so at the same events whatever the batching):
    between two refreshes ``m`` is the mean of the history as of the last refresh - older than every
    window, hence still independent of it. Internally the rows live in a buffer with their prefix
    sums, so that a window sum is a difference of two prefix rows, and everything the scan needs per
    row and window is a few dot products.
    """

    def __init__(self, windows, dim: int, null: ScanNull | None = None, *, budget: float = SHIFT_BUDGET_PER_EVENT,
                 online: bool = True, block: int = MOMENT_BLOCK, compact_every: int = COMPACT_EVERY):
        self.windows = tuple(sorted(int(w) for w in windows))
        self.wmax = max(self.windows) if self.windows else 0
        self.dim = int(dim)
        self.budget = float(budget)
        self.online = bool(online)
        self.block = int(block)
        self.null = null.copy() if null is not None else ScanNull(dim)
        w = max(self.wmax, 3)
        self.lags = (w // 3, 2 * w // 3)  # a triangle (t, t + a, t + b) for the online moments
        # buffer positions kept before the first new row: the longest window, and the rows a refresh
        # learns from (up to `block` rows that left the windows, with partners up to wmax ahead)
        self._k0 = 2 * w + self.block
        self.compact_every = max(int(compact_every) // self.block, 1) * self.block
        self._cap = self._k0 + self.compact_every
        self.count = 0  # rows seen by this scan (since construction / restart)
        self.hist_origin = 0  # this scan's rows before this global index are not in the history term
        self.live = ScanNull(dim)  # online accumulators (moments only)
        self.last_units = np.empty((0, dim))
        self.last_keys = np.empty(0, np.uint64)
        #: long-run-variance factor f_W of each window (serial dependence of a bursty stream,
        #: measured on the warm-up: app.drift.lrv.window_factors); 1 = exchangeable rows
        self.lrv = np.ones(len(self.windows))
        #: a list to append ``(t, mean, sd)`` to for every chunk (``t``: windows x rows standardised
        #: statistics; ``mean``/``sd``: the null mean and sd of each window's ``U_W`` they used), or None.
        #: For diagnostics (load/drift_bursty.py); not saved
        self.record: list | None = None
        self._warr = np.array(self.windows, dtype=np.int64)
        self._pairs = self._warr * (self._warr - 1) / 2.0
        self._alloc()
        self._refresh(0)
        self.threshold = self.thr  # the level the monitor's threshold rule watches

    # -------------------------------------------------------------- buffers
    def _alloc(self) -> None:
        cap, d = self._cap, self.dim
        self._rows = np.zeros((cap, d))
        self._P = np.zeros((cap + 1, d))  # _P[r]: sum of the rows before buffer position r (rebased)
        self._SQ = np.zeros(cap + 1)
        self._PP = np.zeros(cap + 1)  # |_P[r]|^2
        self._Pm = np.zeros(cap + 1)  # _P[r] . m
        self._Rm = np.zeros(cap)  # row . m
        self._keys = np.zeros(cap, np.uint64)
        self._g = np.zeros(cap)  # |row - m|^2 at insertion
        self._fill = self._k0  # virtual zero rows before the first real one
        self._first = self._k0  # buffer position of the first real row
        self._P_origin = np.zeros(d)  # _P at the history origin (may lie before the buffer)
        self._SQ_origin = 0.0

    def _pos(self, g: int) -> int:
        """Buffer position of global row ``g`` (valid for the rows kept in the buffer)."""
        return self._fill - (self.count - g)

    def _compact(self) -> None:
        shift = self._fill - self._k0
        if shift <= 0:
            return
        k = self._k0
        for a in (self._rows, self._keys, self._g, self._Rm):
            a[:k] = a[shift : self._fill]
        base, sqb = self._P[shift].copy(), float(self._SQ[shift])
        self._P[: k + 1] = self._P[shift : self._fill + 1] - base  # rebase: window sums stay small numbers
        self._SQ[: k + 1] = self._SQ[shift : self._fill + 1] - sqb
        self._P_origin = self._P_origin - base
        self._SQ_origin -= sqb
        self._PP[: k + 1] = np.einsum("ij,ij->i", self._P[: k + 1], self._P[: k + 1])
        self._Pm[: k + 1] = np.einsum("ij,j->i", self._P[: k + 1], self.m)
        self._fill = k
        self._first = max(self._first - shift, 0)

    # -------------------------------------------------------------- moments
    def _hist_upto(self, g: int) -> tuple[np.ndarray, float, float]:
        """Sum, count and squared-norm sum of the running-mean history of rows < global ``g``
        (the null's rows plus this scan's rows in [hist_origin, g))."""
        if g <= self.hist_origin:
            return self.null.hist_sum, self.null.hist_n, self.null.hist_sq
        p = self._pos(g)
        return (self.null.hist_sum + self._P[p] - self._P_origin, self.null.hist_n + (g - self.hist_origin),
                self.null.hist_sq + self._SQ[p] - self._SQ_origin)

    def _refresh(self, upto: int) -> None:
        """New running mean (history of rows < global ``upto``), moments and threshold."""
        mo = self.null.plus(self.live)
        mo.hist_sum, mo.hist_n, mo.hist_sq = self._hist_upto(upto)
        self.N = max(mo.hist_n, 1.0)
        self.m = mo.mean
        self.mm = float(self.m @ self.m)
        self.trace, self.tau2, self.tau3, self.collision = mo.trace, mo.tau2, mo.tau3, mo.collision
        self.collision_var = mo.collision_var
        self.dof = scan_dof(self.trace, self.tau2, self.tau3)
        self.thr = scan_threshold(self.dof, self.budget / max(len(self.windows), 1))
        self._normalisers()
        f = self._fill
        self._Rm[:f] = np.einsum("ij,j->i", self._rows[:f], self.m)
        self._Pm[: f + 1] = np.einsum("ij,j->i", self._P[: f + 1], self.m)

    def _learn(self, e0: int, e1: int) -> None:
        """Add the rows of global index [e0, e1) (leaving the longest window) to the online moments.

        Per row: its collision term (pairs with the next ``wmax - 1`` rows), the squared products of
        the triangle (t, t + a, t + b) of centred rows for ``tau2``, and the triangle's product for
        ``tr(C^3)`` (pairs of equal keys left out). Called once per refresh for the ``block`` rows
        that left the windows since the last one (always the same rows: the sums do not depend on
        the batching).
        """
        p0, p1 = self._pos(e0), self._pos(e1)
        k = p1 - p0
        rows, keys, rm, mm = self._rows, self._keys, self._Rm, self.mm
        kx = keys[p0:p1]
        w = self.wmax
        idx = np.arange(p0, p1)[:, None] + np.arange(1, w)[None, :]
        same = keys[idx] == kx[:, None]
        a, b = self.lags

        def cdot(i0, j0):  # (r_i - m).(r_j - m) for i in [i0, i0 + k), j = i + (j0 - i0)
            return (np.einsum("ij,ij->i", rows[i0 : i0 + k], rows[j0 : j0 + k]) - rm[i0 : i0 + k]
                    - rm[j0 : j0 + k] + mm)

        xa, xb, ab = cdot(p0, p0 + a), cdot(p0, p0 + b), cdot(p0 + a, p0 + b)
        oka = keys[p0 + a : p1 + a] != kx
        okb = keys[p0 + b : p1 + b] != kx
        okab = keys[p0 + a : p1 + a] != keys[p0 + b : p1 + b]
        cnt = oka.astype(float) + okb + okab
        tot = np.where(oka, xa * xa, 0.0) + np.where(okb, xb * xb, 0.0) + np.where(okab, ab * ab, 0.0)
        have = cnt > 0
        tri = oka & okb & okab  # three distinct documents
        lv = self.live
        dup = same.sum(axis=1) * self._g[p0:p1]
        lv.dup[0] += float(dup.sum())
        lv.dup[1] += float(k * (w - 1))
        # the rows' duplicate sums are nearly independent (pairs only within wmax): their spread
        # about the block's mean estimates the variance of their sum
        lv.dup_var += float(((dup - dup.mean()) ** 2).sum()) * k / max(k - 1, 1)
        lv.h2[0] += float(np.where(have, tot / np.maximum(cnt, 1), 0.0).sum())
        lv.h2[1] += float(have.sum())
        lv.h3[0] += float(np.where(tri, xa * ab * xb, 0.0).sum())
        lv.h3[1] += float(tri.sum())

    # -------------------------------------------------------------- state
    def _normalisers(self) -> None:
        """Null mean and sd of each window's ``U_W`` from the current moments and ``lrv``."""
        inv = 1.0 / self.N
        self._mean0 = self._pairs * (self.trace * inv - self.collision)
        # the running mean's error b = m - mu enters through b.(sum of the window) and |b|^2, whose
        # variances hold tr(C^2) over *independent* rows - same-document pairs included, which U_W
        # leaves out and tau2 does not count: tr(C^2) = tau2 + E[|u - mu|^4 1(same)] ~ tau2 + D tr(C)
        # (3.3 tau2 on a 332-document topic, whose T_162 had an sd of 1.42 right after its warm-up
        # with tau2 alone)
        full = self.tau2 + self.collision * self.trace
        self._sd = np.sqrt(self._pairs * (self.tau2 + full * (2 * (self._warr - 1) * inv + 2 * self._pairs * inv**2)))
        # serial dependence (bursty streams): pairs k apart add tr(C) rho_k each, i.e.
        # tr(C) W (f_W - 1) / 2 in all, and the spread of the window sum grows by f_W (app.drift.lrv);
        # with every f_W = 1 the same bits as without
        self._mean0 = self._mean0 + self.trace * self._warr * (self.lrv - 1.0) / 2.0
        self._sd = self._sd * self.lrv
        # the null mean's own error: P D is estimated (collision_var), and on a narrow collection
        # a warm-up's estimate is off by a good part of an sd of U_W - for every window and for as
        # long as that estimate stands; its variance widens the null until enough pairs were seen
        self._sd = np.sqrt(self._sd**2 + self._pairs**2 * self.collision_var)

    def set_lrv(self, factors) -> None:
        """Set the windows' long-run-variance factors (None: 1; floored at 1) and renormalise."""
        f = np.ones(len(self.windows)) if factors is None else np.asarray(factors, dtype=np.float64).reshape(-1)
        if len(f) != len(self.windows):
            raise ValueError(f"{len(f)} factors for {len(self.windows)} windows")
        self.lrv = np.maximum(np.where(np.isfinite(f), f, 1.0), 1.0)
        self._normalisers()

    def window_factors(self, segments) -> np.ndarray:
        """Long-run-variance factors of the windows from ``(units, keys)`` segments (app.drift.lrv)."""
        return window_factors(segments, self.windows)

    def merged_null(self) -> ScanNull:
        """The null with this scan's history and online moments folded in (for saving / restarting)."""
        out = self.null.plus(self.live)
        s, n, sq = self._hist_upto(max(self.count - self.wmax, self.hist_origin))
        out.hist_sum, out.hist_n, out.hist_sq = s.copy(), n, sq
        return out

    def recentre(self, units: np.ndarray, keys: np.ndarray, history: int) -> None:
        """Make ``units`` (the rows of a settled new regime) the null: moments from all of them, the
        running mean from their first ``history`` rows (the others are still inside the windows)."""
        u = np.asarray(units, dtype=np.float64)
        null = ScanNull.from_sample(u, np.asarray(keys, dtype=np.uint64))
        h = u[:history]
        null.hist_sum, null.hist_n = h.sum(axis=0), float(len(h))
        null.hist_sq = float(np.einsum("ij,ij->", h, h))
        self.null = null
        self.live = ScanNull(self.dim)
        self.hist_origin = max(self.count - self.wmax, 0)
        if self.count > self.wmax:
            p = self._pos(self.hist_origin)
            self._P_origin, self._SQ_origin = self._P[p].copy(), float(self._SQ[p])
        else:
            self._P_origin, self._SQ_origin = np.zeros(self.dim), 0.0
        self._refresh(self.hist_origin)
        self.threshold = self.thr

    # -------------------------------------------------------------- the scan
    def update(self, units: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
        units = np.asarray(units, dtype=np.float64)
        n = len(units)
        keys = (np.arange(self.count, self.count + n, dtype=np.uint64) | np.uint64(1 << 63)
                if keys is None else np.asarray(keys, dtype=np.uint64))
        self.last_units, self.last_keys = units, keys
        out = np.full(n, np.nan)
        if not self.windows or n == 0:
            self.count += n
            return out
        pos = 0
        while pos < n:
            # chunks end at the compactions (every `compact_every` rows) and refreshes (when the
            # index of the row pushed out of the longest window reaches a multiple of `block`): both
            # happen at the same events whatever the batching
            if self.count and self.count % self.compact_every == 0 and self._fill > self._k0:
                self._compact()
            end = min(n, pos + self.compact_every - self.count % self.compact_every)
            leave = self.count - self.wmax
            end = min(end, pos + (max(leave, 0) // self.block + 1) * self.block - leave)
            out[pos:end] = self._chunk(units[pos:end], keys[pos:end])
            pos = end
        return out

    def _dup_sums(self, pi, pj, w: int, t0: int, t1: int) -> np.ndarray | None:
        """Per row t in [t0, t1): the sum of g_j over the duplicate pairs (i, j) inside its window of
        w rows (i > t - w, j <= t). ``pi``/``pj`` are sorted by (j, i); each row gets its pairs' terms
        added in that order, so the bits do not depend on the batching."""
        lo = np.maximum(pj, t0)
        hi = np.minimum(pi + w - 1, t1 - 1)
        ok = (pj - pi < w) & (hi >= lo)
        if not ok.any():
            return None
        lo, hi, g = lo[ok], hi[ok], self._g[pj[ok]]
        ud = np.zeros(t1 - t0)
        ln = hi - lo + 1
        starts = np.repeat(lo - np.concatenate([[0], np.cumsum(ln)[:-1]]), ln)
        rows = starts + np.arange(int(ln.sum()))
        np.add.at(ud, rows - t0, np.repeat(g, ln))
        return ud

    def _chunk(self, u: np.ndarray, k: np.ndarray) -> np.ndarray:
        n = len(u)
        f0, c0 = self._fill, self.count
        f1 = f0 + n
        P = self._P
        self._rows[f0:f1] = u
        self._keys[f0:f1] = k
        # prefix sums in stream order (P[f0] + u1, then + u2, ...): the same bits whatever the batching
        P[f0 + 1 : f1 + 1] = np.cumsum(np.vstack([P[f0 : f0 + 1], u]), axis=0)[1:]
        sqn = np.einsum("ij,ij->i", u, u)
        self._SQ[f0 + 1 : f1 + 1] = np.cumsum(np.concatenate([self._SQ[f0 : f0 + 1], sqn]))[1:]
        self._PP[f0 + 1 : f1 + 1] = np.einsum("ij,ij->i", P[f0 + 1 : f1 + 1], P[f0 + 1 : f1 + 1])
        rm = np.einsum("ij,j->i", u, self.m)
        self._Rm[f0:f1] = rm
        self._Pm[f0 + 1 : f1 + 1] = np.einsum("ij,j->i", P[f0 + 1 : f1 + 1], self.m)
        self._g[f0:f1] = sqn - 2 * rm + self.mm
        self._fill = f1
        self.count = c0 + n
        # duplicate pairs inside the windows that end at the new rows
        lo = max(f0 - self.wmax + 1, self._first)
        pi, pj = _dup_pairs(self._keys[lo:f1], lo, self.wmax)
        if len(pi):
            order = np.lexsort((pi, pj))
            pi, pj = pi[order], pj[order]
        # every window at once: (windows, rows) arrays; a row whose window is not yet full gets -inf
        W = self._warr
        e = np.arange(f0 + 1, f1 + 1)  # prefix position just after each new row
        eb = e[None, :] - W[:, None]
        cross = np.empty((len(W), n))
        for r, w in enumerate(self.windows):  # contiguous views: no copy of (windows x rows x dim)
            np.einsum("ij,ij->i", P[f0 + 1 : f1 + 1], P[f0 + 1 - w : f1 + 1 - w], out=cross[r])
        s2 = self._PP[f0 + 1 : f1 + 1][None, :] - 2 * cross + self._PP[eb]
        q = self._SQ[f0 + 1 : f1 + 1][None, :] - self._SQ[eb]
        sm = self._Pm[f0 + 1 : f1 + 1][None, :] - self._Pm[eb]
        ustat = (s2 - q) / 2 - (W - 1)[:, None] * sm + self._pairs[:, None] * self.mm
        if len(pi):
            live = pi + W.max() - 1 >= f0  # pairs still inside some window of a new row
            if live.any():
                pi, pj = pi[live], pj[live]
                if len(pi) <= 24:  # the usual case: a few pairs; one slice per pair and window
                    # (summed from 0 in (j, i) order, then subtracted: the same bits as _dup_sums)
                    ud = np.zeros_like(ustat)
                    for i, j, g in zip(pi.tolist(), pj.tolist(), self._g[pj].tolist()):
                        a = max(j, f0) - f0
                        for r, w in enumerate(self.windows):
                            if j - i < w and i + w - f0 > a:
                                ud[r, a : i + w - f0] += g
                    ustat -= ud
                else:
                    for r, w in enumerate(self.windows):
                        ud = self._dup_sums(pi, pj, w, f0, f1)
                        if ud is not None:
                            ustat[r] -= ud
        t = (ustat - self._mean0[:, None]) / self._sd[:, None]
        t[np.arange(c0 + 1, c0 + n + 1)[None, :] < W[:, None]] = -np.inf
        if self.record is not None:
            self.record.append((t.copy(), self._mean0.copy(), self._sd.copy()))
        best = t.max(axis=0)
        out = np.where(np.isfinite(best), best - self.thr + self.threshold, np.nan)
        e1 = self.count - self.wmax
        if e1 > self.hist_origin and e1 % self.block == 0:
            if self.online:
                self._learn(max(e1 - self.block, self.hist_origin), e1)
            self._refresh(e1)
        return out


# ------------------------------------------------------------------ scans over several blocks
def _blocks(units: np.ndarray, dims) -> list[np.ndarray]:
    """The column blocks of ``units`` (n, sum(dims))."""
    edges = np.cumsum([0, *dims])
    if units.shape[1] != edges[-1]:
        raise ValueError(f"rows of dimension {units.shape[1]} for blocks {tuple(dims)}")
    return [units[:, a:b] for a, b in zip(edges[:-1], edges[1:])]


class ScanNullSet:
    """The nulls of a :class:`ScanSet`: one :class:`ScanNull` per block of the unit rows."""

    def __init__(self, parts):
        self.parts = list(parts)

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(p.dim for p in self.parts)

    @classmethod
    def from_sample(cls, units: np.ndarray, keys: np.ndarray, dims) -> "ScanNullSet":
        return cls(ScanNull.from_sample(b, keys) for b in _blocks(np.asarray(units, dtype=np.float64), dims))

    def to_array(self) -> np.ndarray:
        return np.concatenate([p.to_array() for p in self.parts])

    @classmethod
    def from_array(cls, a: np.ndarray, dims) -> "ScanNullSet":
        a = np.asarray(a, dtype=np.float64)
        parts, at = [], 0
        for d in dims:
            size = ScanNull.array_size_at(a[at:], d)
            if at + size > len(a):
                raise ValueError(f"a scan null of {len(a)} values for blocks {tuple(dims)}")
            parts.append(ScanNull.from_array(a[at : at + size], d))
            at += size
        if at != len(a):
            raise ValueError(f"a scan null of {len(a)} values for blocks {tuple(dims)}")
        return cls(parts)


class ScanSet:
    """The ``shift`` signal as the maximum of one :class:`ShiftScan` per block of the unit rows.

    The blocks are the tail (the low-variance axes, where an encoder change shows) and the head
    (the top principal axes, where the topics live; :mod:`app.drift.signals`): each block has its
    own null, moments and running mean, and an equal share of the scan's budget, so its own
    threshold. The value is ``max_b (T_b - thr_b) + threshold``, like a single scan's: above
    ``threshold`` when some window of some block passed its own threshold. The duplicate keys are
    the tail's (they stand for the document). It has the part of :class:`ShiftScan`'s interface
    that the monitor uses; a diagnostic of one block reads ``parts``.
    """

    def __init__(self, windows, dims, null: ScanNullSet | None = None, *, budget: float = SHIFT_BUDGET_PER_EVENT,
                 online: bool = True, **kw):
        self.dims = tuple(int(d) for d in dims)
        nulls = null.parts if null is not None else [None] * len(self.dims)
        if len(nulls) != len(self.dims):
            raise ValueError(f"{len(nulls)} nulls for {len(self.dims)} blocks")
        share = float(budget) / len(self.dims)
        self.parts = [ShiftScan(windows, d, n, budget=share, online=online, **kw) for d, n in zip(self.dims, nulls)]
        self.budget = float(budget)
        self.windows, self.wmax = self.parts[0].windows, self.parts[0].wmax
        self.threshold = self.parts[0].threshold
        self.last_units = np.empty((0, self.dim))
        self.last_keys = np.empty(0, np.uint64)

    @property
    def dim(self) -> int:
        return sum(self.dims)

    @property
    def count(self) -> int:
        return self.parts[0].count

    @property
    def lrv(self) -> np.ndarray:
        return self.parts[0].lrv

    def update(self, units: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
        units = np.asarray(units, dtype=np.float64)
        vals = [p.update(b, keys) - p.threshold for p, b in zip(self.parts, _blocks(units, self.dims))]
        self.last_units, self.last_keys = units, self.parts[0].last_keys
        with np.errstate(invalid="ignore"):
            return np.fmax.reduce(vals, axis=0) + self.threshold

    def window_factors(self, segments) -> np.ndarray:
        """Long-run-variance factors of the windows: the largest over the blocks (app.drift.lrv)."""
        per = [window_factors([(_blocks(np.asarray(u, dtype=np.float64), self.dims)[i], k) for u, k in segments],
                              self.windows) for i in range(len(self.dims))]
        return np.max(per, axis=0)

    def set_lrv(self, factors) -> None:
        for p in self.parts:
            p.set_lrv(factors)

    def merged_null(self) -> ScanNullSet:
        return ScanNullSet(p.merged_null() for p in self.parts)

    def recentre(self, units: np.ndarray, keys: np.ndarray, history: int) -> None:
        for p, b in zip(self.parts, _blocks(np.asarray(units, dtype=np.float64), self.dims)):
            p.recentre(b, keys, history)
        self.threshold = self.parts[0].threshold
