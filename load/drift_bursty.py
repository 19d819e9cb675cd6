"""Why bursty drift-free streams still raise false alarms: two measurements (DRIFT.md section 8).

    python -m load.drift_bursty --part tune            # Reuters + fortunes of the tuning part
    python -m load.drift_bursty --part holdout         # a diagnostic of the held-out miss; tunes nothing
    python -m load.drift_bursty --synthetic --events 20000   # no corpus (the test)

A *bursty* stream (``load.drift_eval``'s ``bursty:P`` scenario: documents in same-topic runs of
geometric length, mean 20; two runs in a row may share their topic) has the topic mix of its pool,
but not independently in time. For each pool this prints:

1. **Single-topic stretches** (labels only, ``--streams`` streams of ``--events`` events): how many
   maximal stretches of one topic of at least L events occur per 100k events, and the longest. A
   stretch of L events of topic T is, event by event, what the first L events after a switch to T
   look like; a detector that stays quiet on it cannot report a real switch to T within L events.
2. **The ``shift`` scan on one bursty stream and one i.i.d. stream of the same pool** (the control):
   the monitor's own scan (warm-up reference, moments and long-run-variance factors exactly as
   :class:`~app.drift.DriftMonitor` builds them), fed the live events in batches of 64 with no
   settling. Per window: mean, sd and skewness of the standardised ``T_W`` (0, 1 and small under
   its null) and its up-crossings of the threshold per 100k events - with the scan's null, and with
   two *oracle* nulls that know the live stream's dependence, which no warm-up can:

   * ``gauss``: ``U_W`` as the quadratic form of a Gaussian window sum whose covariance
     ``Omega_W`` is measured on the live stream itself (non-overlapping window sums): mean
     ``W (tr Omega_W - tr C) / 2``, variance ``W^2 tr(Omega_W^2) / 2``, Pearson's three-moment
     chi-square (dof ``tr(Omega_W^2)^3 / tr(Omega_W^3)^2``) for the tail;
   * ``moments``: ``U_W`` standardised by its own empirical mean and sd over the whole live stream,
     the tail a chi-square with its empirical skewness (dof ``8 / skew^2``).

   Each at the scan's own per-window budget. If even the oracles leave many up-crossings, no
   moment-matched null (so no estimate from a warm-up) can bring the scan to its budget on such a
   stream: the statistic's tail is that of windows holding a long single-topic stretch.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from app.drift import DriftConfig, DriftMonitor
from app.drift.detectors import upcrossings
from app.drift.nulls import scan_threshold
from load import drift_data
from load.drift_eval import Source, draw_index

STRETCHES = (50, 100, 150, 200, 300)
BATCH = 64


def stretch_counts(labels: np.ndarray, lengths=STRETCHES) -> dict:
    """Maximal runs of equal labels: how many are at least each of ``lengths`` long, and the longest.

    >>> stretch_counts(np.array(list("aaabbbbbcaa")), (2, 4))
    {'at_least': {2: 3, 4: 1}, 'longest': 5, 'stretches': 4}
    """
    change = np.flatnonzero(labels[1:] != labels[:-1]) + 1
    runs = np.diff(np.concatenate([[0], change, [len(labels)]]))
    return {"at_least": {int(n): int((runs >= n).sum()) for n in lengths}, "longest": int(runs.max()),
            "stretches": int(len(runs))}


def up_crossings(excess: np.ndarray) -> int:
    """Events where ``excess`` becomes > 0: the monitor's threshold rule (one alarm per up-crossing), NaN below.

    >>> up_crossings(np.array([-1, 1, 2, -1, 0.5, np.nan, 3]))
    3
    """
    return len(upcrossings(np.nan_to_num(excess, nan=-np.inf), 0.0)[0])


def _skew(x: np.ndarray) -> float:
    sd = x.std()
    return float(((x - x.mean()) ** 3).mean() / sd**3) if sd > 0 else 0.0


def unbiased_traces(s: np.ndarray, n: int) -> tuple[float, float, float]:
    """``tr(Omega)``, ``tr(Omega^2)``, ``tr(Omega^3)`` from ``s = X'X / n`` of ``n`` rows ~ N(0, Omega).

    The plain traces of ``s`` are biased upward by the Wishart's own spread (``E tr(s^2) =
    tr(Omega^2) (1 + 1/n) + tr(Omega)^2 / n``, and a like formula for the cube), which would make
    an i.i.d. stream look dependent when ``n`` is a few hundred windows; these invert the expectations.

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(200, 100)) * np.sqrt(np.linspace(0.5, 1.5, 100))
    >>> t1, t2, t3 = unbiased_traces(x.T @ x / 200, 200)
    >>> lam = np.linspace(0.5, 1.5, 100)
    >>> [round(v / float(np.sum(lam**k)), 1) for k, v in ((1, t1), (2, t2), (3, t3))]
    [1.0, 1.0, 1.0]
    >>> s = x.T @ x / 200; round(float(np.trace(s @ s)) / float(np.sum(lam**2)), 1)   # the plain trace: 1.4 x
    1.4
    """
    s2 = s @ s
    t1 = float(np.trace(s))
    a2, a3 = float(np.trace(s2)), float(np.sum(s2 * s))
    t2 = (a2 - t1 * t1 / n) / (1 + 1 / n - 2 / n**2)
    t3 = (a3 - 3 * (1 / n + 1 / n**2) * t2 * t1 - t1**3 / n**2) / (1 + 3 / n + 4 / n**2)
    return t1, max(t2, 1e-300), max(t3, 1e-300)


def scan_trace(vectors, norms, config: DriftConfig, state_dir: Path) -> tuple:
    """The monitor's scan after its warm-up on the first ``config.warmup`` events, fed the rest.

    Returns ``(scan, T, U, units)``: T and U (windows x live events) are the standardised and raw
    window statistics, ``units`` the live unit tail rows.
    """
    mon = DriftMonitor(("bursty", "diagnostic"), state_dir, config=config)
    w = config.warmup
    mon.observe(vectors[:w], norms=norms[:w])
    scan = mon._scan
    if scan is None or mon.warming_up:
        raise RuntimeError("the monitor did not finish its warm-up")
    units, keys = mon.reference.basis.tail_units(vectors[w:])
    if hasattr(scan, "parts"):  # a ScanSet (tail and head blocks): this diagnoses the tail block
        scan, units = scan.parts[0], units[:, : scan.dims[0]]
    scan.record = []
    for s in range(0, len(units), BATCH):
        scan.update(units[s : s + BATCH], keys[s : s + BATCH])
    t = np.hstack([r[0] for r in scan.record])
    u = np.hstack([r[0] * r[2][:, None] + r[1][:, None] for r in scan.record])
    scan.record = None
    mon.path.unlink(missing_ok=True)
    return scan, t, u, units


def scan_report(scan, t: np.ndarray, u: np.ndarray, units: np.ndarray) -> dict:
    """Moments of T_W, and up-crossings per 100k with the scan's null and with the two oracles."""
    n = t.shape[1]
    per100k = 1e5 / n
    budget = scan.budget / len(scan.windows)
    x = units - units.mean(axis=0)
    cov = x.T @ x / len(x)
    tr_c = float(np.trace(cov))
    tr_c2 = float(np.sum(cov * cov))
    gauss = np.full_like(t, -np.inf)
    moments = np.full_like(t, -np.inf)
    windows = []
    for r, w in enumerate(scan.windows):
        ok = np.isfinite(t[r])
        tw, uw = t[r][ok], u[r][ok]
        nw = len(x) // w
        sums = x[: nw * w].reshape(nw, w, -1).sum(axis=1) / math.sqrt(w)
        tr1, tr2, tr3 = unbiased_traces(sums.T @ sums / nw, nw)
        dof_g = tr2**3 / tr3**2
        g = (u[r] - w * (tr1 - tr_c) / 2) / (w * math.sqrt(tr2 / 2))
        gauss[r] = g - scan_threshold(dof_g, budget)
        sk = _skew(uw)
        dof_m = 8.0 / sk**2 if sk > 0 else 1e6
        thr_m = scan_threshold(dof_m, budget)
        moments[r] = (u[r] - uw.mean()) / uw.std() - thr_m
        windows.append({
            "window": w, "T_mean": round(float(tw.mean()), 2), "T_sd": round(float(tw.std()), 2),
            "T_skew": round(_skew(tw), 2), "spread_vs_iid": round(tr2 / tr_c2, 2),
            "dof_scan": round(scan.dof, 1), "dof_gauss": round(dof_g, 1), "dof_moments": round(dof_m, 1),
            # the level T_W must pass under the `moments` oracle, against the scan's own threshold
            "T_level_moments": round(float(tw.mean() + thr_m * tw.std()), 1), "T_level_scan": round(scan.thr, 2),
        })
    return {
        "events": n, "lrv_windows": [round(float(f), 3) for f in scan.lrv], "windows": windows,
        "up_per_100k": {
            "scan": round(up_crossings(np.nanmax(t, axis=0) - scan.thr) * per100k, 1),
            "oracle_gauss": round(up_crossings(gauss.max(axis=0)) * per100k, 1),
            "oracle_moments": round(up_crossings(moments.max(axis=0)) * per100k, 1),
        },
        "scan_budget_per_100k": scan.budget * 1e5,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("tune", "holdout"), default="tune")
    ap.add_argument("--synthetic", action="store_true", help="synthetic pools instead of real corpora")
    ap.add_argument("--pools", default=None, help="comma-separated pools (default: every pool of the part)")
    ap.add_argument("--events", type=int, default=100_000, help="live events per stream")
    ap.add_argument("--streams", type=int, default=5, help="streams for the stretch counts")
    ap.add_argument("--burst", type=float, default=20.0, help="mean run length of the bursty streams")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.synthetic:
        pools = drift_data.synthetic_pools(n_docs=3000, seed=args.seed)
    else:
        try:
            pools = drift_data.real_pools(part=args.part, variants=("int8",))
        except drift_data.DataMissing as exc:
            print(f"error: {exc}\n(use --synthetic to run without corpora)", file=sys.stderr)
            return 2
    names = args.pools.split(",") if args.pools else list(pools)
    # the scan after a standard warm-up: one found serially dependent is not extended here
    config = DriftConfig(dependent_warmup=0)
    print(f"part {'synthetic' if args.synthetic else args.part}; warm-up {config.warmup}; "
          f"{args.events} live events per stream; burst mean {args.burst:g}")
    out = {"part": "synthetic" if args.synthetic else args.part, "events": args.events, "burst": args.burst,
           "pools": {}}
    with tempfile.TemporaryDirectory(prefix="drift-bursty-") as tmp:
        for name in names:
            pool = pools[name]
            rng = np.random.default_rng([args.seed, len(name)])
            counts = [stretch_counts(pool.labels[draw_index(pool, Source(name, burst=args.burst), rng, args.events)])
                      for _ in range(args.streams)]
            scale = 1e5 / args.events
            stretches = {L: round(float(np.mean([c["at_least"][L] for c in counts])) * scale, 1) for L in STRETCHES}
            longest = [c["longest"] for c in counts]
            topics = len(np.unique(pool.labels))
            print(f"\n{name}: {topics} topics; single-topic stretches of >= L events per 100k (bursty, "
                  f"{args.streams} streams): " + ", ".join(f"{L}: {v:g}" for L, v in stretches.items())
                  + f"; longest {longest}")
            res = {"topics": topics, "stretches_per_100k": stretches, "longest": longest}
            for kind, burst in (("bursty", args.burst), ("iid", 0.0)):
                idx = draw_index(pool, Source(name, burst=burst), rng, config.warmup + args.events)
                v, nrm = pool.variants["int8"]
                scan, t, u, units = scan_trace(v[idx], nrm[idx], config, Path(tmp))
                rep = scan_report(scan, t, u, units)
                res[kind] = rep
                up = rep["up_per_100k"]
                print(f"  {kind:6} scan: lrv factors {rep['lrv_windows']}; up-crossings per 100k: scan {up['scan']:g}, "
                      f"oracle gauss {up['oracle_gauss']:g}, oracle moments {up['oracle_moments']:g} "
                      f"(budget {rep['scan_budget_per_100k']:g})")
                for wrow in rep["windows"]:
                    print("    W={window:<4} T mean {T_mean:5.2f} sd {T_sd:5.2f} skew {T_skew:5.2f}; tr(Omega^2)/tr(C^2) "
                          "{spread_vs_iid:5.2f}; dof scan {dof_scan:6.1f} gauss {dof_gauss:6.1f} moments "
                          "{dof_moments:6.1f}; T must pass {T_level_scan} (scan) / {T_level_moments} (moments)"
                          .format(**wrow))
            out["pools"][name] = res
    print(f"\ntotal {time.perf_counter() - t0:.1f}s")
    if args.out:
        out["command"] = "python -m load.drift_bursty " + " ".join(argv if argv is not None else sys.argv[1:])
        args.out.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
