"""Long-run-variance (serial dependence) factors of the detector inputs, from the warm-up's own order.

Every null of the monitor (:mod:`app.drift.nulls`, :mod:`app.drift.scan`) assumes that a drift-free
stream is exchangeable - i.i.d. in order. A stream fed in *bursts* (same-topic runs of documents) is
stationary but serially dependent: a window mean of its signals varies ``f`` times more than the
i.i.d. nulls allow, with the long-run-variance factor

    f = 1 + 2 sum_{k >= 1} rho_k          (rho_k: lag-k autocorrelation)

and the detectors fire on every long run. The warm-up is seen in stream order, so its own serial
dependence gives ``f`` per collection, as it gives the other calibrated quantities:

* **rank scores (PageHinkley)**: ``f`` of each signal's score sequence (the warm-up's fit part
  scored against the held-out sample, and the held-out sample's own scores; each part centred on
  its own mean), by the autoregressive spectral estimate at frequency 0 (:func:`ar_lrv_factor`:
  Yule-Walker / Levinson-Durbin, order by AIC up to ``10 log10 n`` - R's ``ar()`` default - and
  ``f = sigma_p^2 / (1 - sum phi)^2 / gamma_0``). For i.i.d. data AIC picks order 0 and ``f = 1``
  almost always. PageHinkley's false-alarm rate goes like ``exp(-2 delta h / sigma^2)`` with
  ``sigma^2`` the long-run variance of its input (Brownian approximation), so its threshold ``h`` is
  multiplied by ``f`` and ``delta`` kept: the same rate as the i.i.d. case for which ``h`` was
  tabulated, and the same smallest detectable shift (``delta``), found later. (Multiplying both ``h``
  and ``delta`` by ``sqrt(f)`` keeps the rate too, but no shift below ``delta sqrt(f)`` is ever
  found: a bursty collection then never reported a lasting switch to one topic - DRIFT.md
  section 3.) The detector bank divides the scores by ``sqrt(f)``, multiplies the threshold by
  ``sqrt(f)`` and divides ``delta`` by it, which is the same (``DetectorBank(scales=...)``).
* **the ``shift`` scan**: the centred unit rows' *trace* autocorrelation
  ``rho_k = E[(u_i - m).(u_{i+k} - m)] / tr C`` (pairs of distinct documents), summed with the
  window's own triangular weights (:func:`window_factors`): for a window of ``W`` rows
  ``E |sum (u_i - m)|^2 = W tr C f_W`` with ``f_W = 1 + 2 sum_{k<W} (1 - k/W) rho_k`` exactly, so no
  bandwidth is chosen. The scan's null mean gains ``tr C W (f_W - 1) / 2`` and its sd is multiplied
  by ``f_W`` (exact for a Gaussian stream whose dependence is the same in every direction).

Both factors are floored at 1: a negative estimate is noise on an i.i.d. stream, and nothing is made
*more* sensitive than before.

>>> rng = np.random.default_rng(0)
>>> round(ar_lrv_factor([rng.normal(size=2000)]), 2)            # i.i.d.: 1
1.0
>>> e = rng.normal(size=20000)
>>> x = np.empty_like(e); x[0] = e[0]
>>> for t in range(1, len(e)): x[t] = 0.8 * x[t - 1] + e[t]
>>> 7.0 < ar_lrv_factor([x[:2000]]) < 13.0                        # AR(1) 0.8: f = 1.8 / 0.2 = 9
True
"""
from __future__ import annotations

import math

import numpy as np
from scipy.special import chdtrc

__all__ = ["ar_lrv_factor", "ljung_box", "window_factors", "MIN_LRV_SAMPLE"]

#: fewer values than this give no estimate (factor 1)
MIN_LRV_SAMPLE = 50


def _autocov(segments, max_lag: int) -> tuple[np.ndarray, int]:
    """Pooled autocovariances at lags 0..max_lag of segments each centred on its own mean (NaN dropped)."""
    num = np.zeros(max_lag + 1)
    total = 0
    for x in segments:
        x = np.asarray(x, dtype=np.float64)
        x = x[np.isfinite(x)]
        n = len(x)
        if n < 2:
            continue
        x = x - x.mean()
        for k in range(min(max_lag, n - 1) + 1):
            num[k] += float(x[: n - k] @ x[k:])
        total += n
    return num / max(total, 1), total


def _sample_autocov(segments, max_lag: int | None) -> tuple[np.ndarray, int] | None:
    """Pooled autocovariances at lags ``0..L`` and the number of values, ``L = max_lag`` (default
    ``10 log10 n``) capped at ``n / 4``; None for fewer than :data:`MIN_LRV_SAMPLE` values or a
    constant sequence."""
    n = sum(int(np.isfinite(np.asarray(s, dtype=np.float64)).sum()) for s in segments)
    if n < MIN_LRV_SAMPLE:
        return None
    lag = int(10 * math.log10(n)) if max_lag is None else int(max_lag)
    g, n = _autocov(segments, max(min(lag, n // 4), 0))
    return (g, n) if g[0] > 0 else None


def ljung_box(segments, max_lag: int | None = None) -> tuple[float, float]:
    """Ljung-Box test of serial independence: ``(Q, p)`` over lags ``1..max_lag`` (default ``10 log10 n``).

    ``Q = n (n + 2) sum_k rho_k^2 / (n - k)`` from the pooled autocorrelations of the segments (each
    centred on its own mean), ``p`` its chi-square upper tail with ``max_lag`` degrees of freedom.
    ``(0, 1)`` for fewer than :data:`MIN_LRV_SAMPLE` values or a constant sequence.

    >>> rng = np.random.default_rng(0)
    >>> q, p = ljung_box([rng.normal(size=2000)]); p > 0.01
    True
    >>> x = np.repeat(rng.normal(size=100), 20)              # runs of 20 equal values
    >>> q, p = ljung_box([x]); p < 1e-12
    True
    """
    est = _sample_autocov(segments, max_lag)
    if est is None or len(est[0]) < 2:
        return 0.0, 1.0
    g, n = est
    m = len(g) - 1
    k = np.arange(1, m + 1)
    q = float(n * (n + 2) * np.sum((g[1:] / g[0]) ** 2 / (n - k)))
    return q, float(chdtrc(m, q))


def ar_lrv_factor(segments, max_order: int | None = None) -> float:
    """Long-run-variance factor ``f >= 1`` of a stationary sequence given as one or more segments.

    Autoregressive spectral estimate at frequency 0: the AR(p) model fitted by Yule-Walker
    (Levinson-Durbin on the pooled autocovariances), ``p`` minimising AIC ``n log sigma_p^2 + 2 p``
    over ``0..max_order`` (default ``10 log10 n``), ``f = sigma_p^2 / ((1 - sum phi)^2 gamma_0)``.
    Capped at ``n`` (the whole sample one effective observation); 1 for fewer than
    :data:`MIN_LRV_SAMPLE` values or a constant sequence.
    """
    est = _sample_autocov(segments, max_order)
    if est is None:
        return 1.0
    g, n = est
    pmax = len(g) - 1
    best_aic, best_v, best_sum = n * math.log(g[0]), g[0], 0.0
    phi = np.zeros(0)
    v = g[0]
    for p in range(1, pmax + 1):
        k = (g[p] - float(phi @ g[p - 1 : 0 : -1])) / v
        if not abs(k) < 1.0:
            break
        phi = np.concatenate([phi - k * phi[::-1], [k]])
        v = v * (1.0 - k * k)
        aic = n * math.log(v) + 2 * p
        if aic < best_aic:
            best_aic, best_v, best_sum = aic, v, float(phi.sum())
    denom = (1.0 - best_sum) ** 2
    f = best_v / (denom * g[0]) if denom > 0 else float(n)
    return float(min(max(f, 1.0), n))


def window_factors(segments, windows) -> np.ndarray:
    """``f_W = 1 + 2 sum_{k<W} (1 - k/W) rho_k`` (floored at 1) for each window length ``W``.

    ``segments``: ``(units, keys)`` pairs of unit rows in stream order (each centred on its own
    mean) and their duplicate keys; ``rho_k`` is the trace autocorrelation over pairs of rows
    ``k`` apart with distinct keys (the scan leaves equal keys out; see :mod:`app.drift.scan`).

    >>> rng = np.random.default_rng(1)
    >>> u = rng.normal(size=(2000, 40)); u /= np.linalg.norm(u, axis=1, keepdims=True)
    >>> bool(np.all(window_factors([(u, np.arange(2000, dtype=np.uint64))], (32, 162)) < 1.1))
    True
    """
    windows = [int(w) for w in windows]
    if not windows:
        return np.ones(0)
    wmax = max(windows)
    num = np.zeros(wmax)
    cnt = np.zeros(wmax)
    tr_num, tr_n = 0.0, 0
    for units, keys in segments:
        x = np.asarray(units, dtype=np.float64)
        k = np.asarray(keys, dtype=np.uint64)
        n = len(x)
        if n < 2:
            continue
        x = x - x.mean(axis=0)
        tr_num += float(np.einsum("ij,ij->", x, x))
        tr_n += n
        for lag in range(1, min(wmax, n)):
            ok = k[: n - lag] != k[lag:]
            num[lag] += float(np.einsum("ij,ij->i", x[: n - lag], x[lag:])[ok].sum())
            cnt[lag] += float(ok.sum())
    if tr_n < MIN_LRV_SAMPLE or not tr_num > 0:
        return np.ones(len(windows))
    trace = tr_num / tr_n
    rho = np.divide(num, cnt * trace, out=np.zeros(wmax), where=cnt > 0)
    out = []
    for w in windows:
        lags = np.arange(1, w)
        out.append(max(1.0 + 2.0 * float(np.sum((1.0 - lags / w) * rho[1:w])), 1.0))
    return np.array(out)
