"""Checks of the per-collection thresholds (issue 16): nothing here is fitted to a corpus.

The monitor derives every threshold from the watched collection's own warm-up
(:mod:`app.drift.nulls`): PageHinkley runs on rank scores against the collection's held-out sample,
whose null law is the same for every collection, and the ``shift`` scan is normalised by the
collection's own moments, with a threshold from a chi-square tail. This module holds the two tools
that check those claims:

* :func:`ph_table` - the PageHinkley threshold table of :data:`app.drift.nulls.PH_TABLE`, simulated
  with **uniform numbers only** (the law of rank scores does not depend on the data): for each size
  ``n`` of the reference sample, the least strict threshold on a grid whose false-alarm rate per
  event is <= the per-signal target, with an exact one-sided 95 % Poisson upper bound.
  ``python -m app.drift.calibration --ph-table``.
* :func:`null_rates` - the raw detector alarms (per signal) and FIRED alerts of real
  :class:`~app.drift.monitor.DriftMonitor` instances on drift-free streams resampled from a pool of
  vectors, each stream with its own warm-up: how far the per-collection thresholds hold on that
  pool. ``python -m app.drift.calibration --npz FILE`` (or the harness, ``load/drift_eval.py``).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .alert import AlertKind
from .monitor import DriftConfig, DriftMonitor
from .nulls import PH_TARGET_PER_EVENT, simulate_ph_null

__all__ = ["poisson_upper", "ph_table", "null_rates", "PH_TABLE_NS", "PH_TABLE_GRID"]

#: reference-sample sizes and threshold grid of the published table (DRIFT.md section 4)
PH_TABLE_NS = (125, 250, 500, 1000, 2000, 4000, 8000)
PH_TABLE_GRID = tuple(np.round(np.arange(5.5, 8.01, 0.25), 2).tolist())


def poisson_upper(k: int, conf: float = 0.95) -> float:
    """Exact one-sided upper confidence bound on a Poisson mean after observing ``k`` events.

    >>> round(poisson_upper(0), 3)
    2.996
    """
    from scipy.stats import chi2

    return float(chi2.ppf(conf, 2 * (k + 1)) / 2)


def ph_table(ns=PH_TABLE_NS, grid=PH_TABLE_GRID, *, streams: int = 500, events: int = 200_000,
             target: float = PH_TARGET_PER_EVENT, seed: int = 0, log=print) -> dict:
    """Simulate PageHinkley's null on rank scores for each reference size ``n``; pick thresholds.

    For each ``n``: the rate per event at each grid value (:func:`~app.drift.nulls.simulate_ph_null`,
    ``streams`` x ``events`` uniforms), and the least strict value whose rate is <= ``target``
    (``chosen``) and whose 95 % upper bound is <= ``target`` (``chosen_ub``, the stricter rule).
    """
    rows = []
    for n in ns:
        t0 = time.perf_counter()
        r = simulate_ph_null(int(n), grid, streams=streams, events=events, seed=seed)
        per = []
        for th, k, rate, exposure in zip(r["thresholds"], r["alarms"], r["per_event"], r["exposure"]):
            per.append({"threshold": th, "alarms": int(k), "per_event": rate,
                        "upper95": poisson_upper(int(k)) / exposure})
        ok = [p["threshold"] for p in per if p["per_event"] <= target]
        ok_ub = [p["threshold"] for p in per if p["upper95"] <= target]
        row = {"n": int(n), "grid": per, "chosen": min(ok) if ok else None,
               "chosen_ub": min(ok_ub) if ok_ub else None, "seconds": time.perf_counter() - t0}
        rows.append(row)
        log(f"  n={n}: " + ", ".join(f"{p['threshold']:g}: {p['alarms']}" for p in per)
            + f" alarms / {streams * events:.3g} events -> {row['chosen']} (by the 95% bound: {row['chosen_ub']}); "
            f"{row['seconds']:.0f}s")
    return {"target_per_event": target, "streams": streams, "events": events, "seed": seed, "rows": rows}


def null_rates(vectors: np.ndarray, norms: np.ndarray | None = None, *, config: DriftConfig | None = None,
               streams: int = 4, events: int = 100_000, seed: int = 0, batch: int = 4096,
               variants: dict[str, np.ndarray] | None = None) -> dict:
    """Raw alarms (per signal) and FIRED alerts of real monitors on drift-free resampled streams.

    Each of ``streams`` streams draws ``config.warmup + events`` rows of ``vectors`` with replacement
    (i.i.d.: drift-free by construction), and a fresh :class:`DriftMonitor` learns its own reference
    and thresholds from the first ``warmup`` of them (``variants``: the monitors' known-variant
    offsets, :mod:`app.drift.variants`). Returns counts, rates per 100k live events, and exact 95 %
    Poisson upper bounds.
    """
    c = config or DriftConfig()
    v = np.asarray(vectors, dtype=np.float32)
    nrm = None if norms is None else np.asarray(norms, dtype=np.float64)
    rng = np.random.default_rng(seed)
    by_signal: dict[str, int] = {}
    raw, fired, live, thresholds, fired_at = 0, 0, 0, [], []
    with tempfile.TemporaryDirectory(prefix="drift-null-") as tmp:
        for s in range(streams):
            mon = DriftMonitor(("null", f"s{s}"), tmp, config=c, clock=lambda: 0.0, variants=variants)
            total = c.warmup + events
            at = []
            for a in range(0, total, batch):
                idx = rng.integers(len(v), size=min(batch, total - a))
                for al in mon.observe(v[idx], norms=None if nrm is None else nrm[idx]):
                    if al.kind is AlertKind.FIRED:
                        at.append(al.event_index)
            st = mon.status()
            fired += len(at)
            fired_at += [i - st["warmup"] for i in at]
            raw += st["detector_alarms"]
            for k, x in st["alarms_by_signal"].items():
                by_signal[k] = by_signal.get(k, 0) + x
            live += st["events_observed"] - st["warmup"]  # (a warm-up may be extended)
            thresholds.append(st["thresholds"])
            mon.path.unlink(missing_ok=True)
    per = lambda k: k / max(live, 1) * 1e5  # noqa: E731
    return {"streams": streams, "live_events": live, "raw_alarms": raw, "raw_per_100k": per(raw),
            "raw_upper95_per_100k": per(poisson_upper(raw)), "fired": fired, "fired_per_100k": per(fired),
            "fired_upper95_per_100k": per(poisson_upper(fired)), "alarms_by_signal": by_signal,
            "thresholds": thresholds, "fired_at": fired_at}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ph-table", action="store_true", help="simulate the PageHinkley table (uniforms only)")
    ap.add_argument("--ns", default=",".join(map(str, PH_TABLE_NS)), help="reference sizes for --ph-table")
    ap.add_argument("--streams", type=int, default=None, help="streams (--ph-table: 500 per n; --npz: 4)")
    ap.add_argument("--events", type=int, default=None, help="events per stream (200k / 100k)")
    ap.add_argument("--npz", default=None, help="npz with 'vectors' (n,d) and optionally 'norms' (n,)")
    ap.add_argument("--warmup", type=int, default=None, help="DriftConfig.warmup for --npz")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.ph_table:
        res = ph_table([int(x) for x in args.ns.split(",")], streams=args.streams or 500,
                       events=args.events or 200_000, seed=args.seed)
    elif args.npz:
        with np.load(args.npz) as d:
            vectors = d["vectors"]
            norms = d["norms"] if "norms" in d.files else None
        cfg = DriftConfig() if args.warmup is None else replace(DriftConfig(), warmup=args.warmup)
        res = null_rates(vectors, norms, config=cfg, streams=args.streams or 4, events=args.events or 100_000,
                         seed=args.seed)
    else:
        ap.error("give --ph-table or --npz FILE")
    res["seconds"] = time.perf_counter() - t0
    text = json.dumps(res, indent=2, default=float)
    print(text if args.npz else json.dumps({k: v for k, v in res.items() if k != "rows"}, default=float))
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
