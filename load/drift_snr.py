"""What bounds the `shift` scan's delay for an encoder swap: its per-event signal-to-noise ratio.

    python -m load.drift_snr --part tune                 # Reuters and fortunes of the tuning part
    python -m load.drift_snr --part fresh2 --fits 1500,3000

After a shift ``delta`` of the mean of the scan's unit tail rows (DRIFT.md section 2), its statistic
grows by ``s = |delta|^2 / sqrt(2 tau2)`` per shifted event in the window that matches the change,
against a null of mean 0 and sd 1; it alarms near ``n s = thr`` with ``thr`` ~ 5.6-6.5 (the
collection's threshold). So the median delay is about ``thr / s`` whatever the detector's other
choices, and a target of 100 events needs ``s`` >= ~0.06.

For each pool of the part with an ``fp32`` variant, and each fit size (1500: the warm-up's fit;
3000: the second fit's), three random splits: the scan's projection is fitted on ``fit`` int8 rows
(:func:`app.drift.signals.fit_basis`, the monitor's defaults), and on the other rows ``s`` is the
squared distance of the mean unit tail row of their fp32 vectors from that of their int8 vectors
over ``sqrt(2 tau2)`` of the int8 rows (distinct rows' products). The same texts on both sides, so
``delta`` is the encoder's offset alone. Also printed: ``s`` when the fit holds every row (an
in-sample ceiling for better estimates of the tail) and the median ``thr / s`` at 3000.

Diagnosis only: nothing here is used by the monitor.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from app.drift.scan import unit_rows
from app.drift.signals import fit_basis
from load import drift_data, drift_split


def swap_snr(units_a: np.ndarray, units_b: np.ndarray) -> float:
    """``|mean(b) - mean(a)|^2 / sqrt(2 tau2)``, ``tau2`` the mean squared product of distinct
    centred rows of ``a`` (its first half against its second)."""
    m = units_a.mean(axis=0)
    d = units_b.mean(axis=0) - m
    c = units_a - m
    h = len(c) // 2
    tau2 = float(((c[:h] @ c[h : 2 * h].T) ** 2).mean())
    return float(d @ d / np.sqrt(2.0 * tau2))


def pool_snr(v8: np.ndarray, v32: np.ndarray, fits=(1500, 3000), splits: int = 3, seed: int = 0) -> dict:
    out: dict = {}
    for nfit in fits:
        vals = []
        for rep in range(splits):
            perm = np.random.default_rng([seed, rep]).permutation(len(v8))
            fit, test = perm[:nfit], perm[nfit:]
            if len(test) < 500:
                break
            b = fit_basis(v8[fit])
            vals.append(swap_snr(b.tail_units(v8[test])[0], b.tail_units(v32[test])[0]))
        if vals:
            out[str(nfit)] = float(np.mean(vals))
    b = fit_basis(v8)
    out["in-sample"] = swap_snr(b.tail_units(v8)[0], b.tail_units(v32)[0])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=drift_split.PARTS, default="tune")
    ap.add_argument("--fits", default="1500,3000", help="fit sizes (rows), comma-separated")
    ap.add_argument("--threshold", type=float, default=6.0, help="the scan's level for the delay estimate")
    ap.add_argument("--cache", type=Path, default=drift_data.DEFAULT_CACHE)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    fits = tuple(int(x) for x in args.fits.split(","))
    try:
        pools = drift_data.real_pools(args.cache, part=args.part, variants=("int8", "fp32"))
    except drift_data.DataMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = []
    print(f"part {args.part}: per-event SNR of the int8 <-> fp32 swap in the `shift` scan (mean of 3 splits)")
    print(f"{'pool':10s} {'docs':>5s} " + " ".join(f"{'fit ' + str(f):>9s}" for f in fits)
          + f" {'in-sample':>9s} {'thr/s':>6s}")
    for name, pool in pools.items():
        if "fp32" not in pool.variants:
            continue
        r = pool_snr(pool.variants["int8"][0], pool.variants["fp32"][0], fits)
        last = r.get(str(fits[-1]))
        est = args.threshold / last if last else float("nan")
        print(f"{name:10s} {len(pool):5d} " + " ".join(f"{r.get(str(f), float('nan')):9.4f}" for f in fits)
              + f" {r['in-sample']:9.4f} {est:6.0f}", flush=True)
        rows.append({"pool": name, "docs": len(pool), "snr": r, "thr_over_s": est})
    if args.json:
        args.json.write_text(json.dumps({"part": args.part, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
