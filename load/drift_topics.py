"""How much a switch from a collection's natural mix to one of its own topics moves its vectors.

    python -m load.drift_topics --part tune               # Reuters and fortunes of the tuning part
    python -m load.drift_topics --part fresh3 --top 3

A switch ``mix -> T`` to a topic that is a large share of the mix (Python's ``library``, 59 %;
Perl's ``perldelta``, 28 %) can be a small change of the distribution: if ``T`` reads like the
rest, nothing in the vectors tells its documents apart. This measures the evidence such a switch
brings per event, for the ``T`` of each pool with the largest shares, two ways:

* **the best linear view**: the Fisher direction ``w = (C + 0.01 mean(eig C) I)^-1 (mean_T - mean)``
  fitted on half of the rows (``C`` the mix's covariance), and on the other half the shift of
  ``w . v`` in sds of the mix, ``z``. No detector that watches projections (the PageHinkley
  signals, the ``variant_`` test, a scan of the head axes) sees more than that direction does; a
  test that knew it in advance would still need about ``2 ln(1/alpha) / z^2`` events (``alpha``
  1e-6: ~28 / z^2);
* **cluster histograms**: spherical k-means (k = 8 .. 64) of 1500 mix rows, and the chi-square
  divergence ``sum (q - p)^2 / p`` of ``T``'s cluster shares ``q`` (its other rows) from the mix's
  ``p`` (1000 held-out rows): a histogram test of "these events come from a part of the mix" grows by
  ``chi2 / sqrt(2 (k - 1))`` per event in units of its null sd (printed as ``g``; compare the
  ``shift`` scan's ``s``, :mod:`load.drift_snr`: a delay near ``thr / g`` with ``thr`` ~ 6-9);
* **a scan of the head axes** (the ``shift`` scan's head block since stop 24, DRIFT.md section 2):
  the ``shift`` scan's statistic on the top ``q`` principal axes of 1500 mix rows instead of the
  tail (whitened with the same shrinkage, spatial sign), ``s = |delta|^2 / sqrt(2 tau2)`` per event as in
  :func:`load.drift_snr.swap_snr` (``h16`` .. ``h64``; ``q`` = 384: every axis).

Three random splits each; diagnosis only: nothing here is used by the monitor.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from app.drift.signals import fit_basis, spherical_kmeans
from load import drift_data, drift_split
from load.drift_snr import swap_snr

KS = (8, 16, 32, 64)
HEADS = (16, 32, 64, 384)


def fisher_shift(mix: np.ndarray, topic: np.ndarray, *, shrink: float = 0.01) -> float:
    """Out-of-sample shift of the Fisher projection, in sds of the mix: fitted on the first half
    of each of ``mix`` and ``topic`` (rows in random order), measured on the second halves.

    >>> rng = np.random.default_rng(0)
    >>> mix = rng.normal(size=(4000, 8)); topic = rng.normal(size=(2000, 8)) + np.r_[0.5, np.zeros(7)]
    >>> round(fisher_shift(mix, topic), 1)
    0.5
    """
    a, b = len(mix) // 2, len(topic) // 2
    mu = mix[:a].mean(axis=0)
    c = np.cov(mix[:a], rowvar=False)
    c += shrink * np.trace(c) / len(c) * np.eye(len(c))
    w = np.linalg.solve(c, topic[:b].mean(axis=0) - mu)
    pm, pt = mix[a:] @ w, topic[b:] @ w
    return float((pt.mean() - pm.mean()) / pm.std())


def histogram_growth(fit: np.ndarray, held: np.ndarray, topic: np.ndarray, k: int, seed: int = 0) -> float:
    """``chi2 / sqrt(2 (k - 1))`` of ``topic``'s cluster shares against ``held``'s, with clusters
    from ``fit`` (a histogram test's growth per event in null sds)."""
    c = spherical_kmeans(fit, k, seed=seed).astype(np.float64)
    p = np.bincount(np.argmax(held @ c.T, axis=1), minlength=k) + 0.5
    q = np.bincount(np.argmax(topic @ c.T, axis=1), minlength=k) / len(topic)
    p /= p.sum()
    return float(((q - p) ** 2 / p).sum() / np.sqrt(2 * (k - 1)))


def head_growth(fit: np.ndarray, held: np.ndarray, topic: np.ndarray, q: int) -> float:
    """``s`` of the ``shift`` scan's head block with ``q`` axes (:func:`app.drift.signals.fit_basis`
    with ``n_head=q``, fitted on ``fit``: the whitened top principal axes, spatial signs),
    ``topic``'s rows against ``held``'s."""
    basis = fit_basis(fit, n_whiten=min(32, fit.shape[1] - 1), n_head=q, n_clusters=1)
    t = basis.scan_dims[0]
    return swap_snr(basis.tail_units(held)[0][:, t:], basis.tail_units(topic)[0][:, t:])


def pool_rows(pool, *, top: int = 3, splits: int = 3, seed: int = 0) -> list[dict]:
    v = pool.variants["int8"][0].astype(np.float64)
    labels, counts = np.unique(pool.labels, return_counts=True)
    order = sorted(range(len(labels)), key=lambda i: (-counts[i], labels[i]))[:top]
    rows = []
    for i in order:
        t = labels[i]
        in_t = np.nonzero(pool.labels == t)[0]
        z, g, h = [], {k: [] for k in KS}, {q: [] for q in HEADS}
        for rep in range(splits):
            rng = np.random.default_rng([seed, rep])
            perm = rng.permutation(len(v))
            fit, held = perm[:1500], perm[1500:2500]
            rest = np.setdiff1d(in_t, perm[:2500])
            z.append(fisher_shift(v[rng.permutation(len(v))], v[rng.permutation(in_t)]))
            for k in KS:
                g[k].append(histogram_growth(v[fit], v[held], v[rest], k, seed=rep))
            for q in HEADS:
                h[q].append(head_growth(v[fit], v[held], v[rest], q))
        zm = float(np.mean(z))
        rows.append({"pool": pool.name, "topic": str(t), "share": float(counts[i] / len(v)), "z": zm,
                     "oracle_events": 28.0 / zm**2 if zm > 0 else float("inf"),
                     **{f"g{k}": float(np.mean(g[k])) for k in KS},
                     **{f"h{q}": float(np.mean(h[q])) for q in HEADS}})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=drift_split.PARTS, default="tune")
    ap.add_argument("--top", type=int, default=3, help="topics per pool, largest shares first")
    ap.add_argument("--cache", type=Path, default=drift_data.DEFAULT_CACHE)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    pools = drift_data.real_pools(args.cache, part=args.part, variants=("int8",))
    out = []
    print(f"{'pool':<10} {'topic':<22} {'share':>5} {'z':>6} {'~events':>8} "
          + " ".join(f"{'g' + str(k):>6}" for k in KS) + " " + " ".join(f"{'h' + str(q):>6}" for q in HEADS))
    for pool in pools.values():
        if len(np.unique(pool.labels)) < 2 or len(pool) < 3000:
            continue
        for r in pool_rows(pool, top=args.top):
            out.append(r)
            print(f"{r['pool']:<10} {r['topic'][:22]:<22} {r['share']:>5.2f} {r['z']:>6.2f} {r['oracle_events']:>8.0f} "
                  + " ".join(f"{r[f'g{k}']:>6.3f}" for k in KS) + " "
                  + " ".join(f"{r[f'h{q}']:>6.3f}" for q in HEADS), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
