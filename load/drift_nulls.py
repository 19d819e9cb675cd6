"""Raw alarms of real monitors on drift-free streams of narrow and broad collections of one part.

    python -m load.drift_nulls --part tune                      # 10 x 100k events per collection
    python -m load.drift_nulls --part tune --config shift_budget=1.25e-6
    python -m load.drift_nulls --part fresh                     # report only: never tune on it
    python -m load.drift_nulls --part tune --streams 100 --events 3000   # right after the warm-ups
    python -m load.drift_nulls --part fresh4 --only network-services      # one collection

For each collection (one topic of a pool, a fixed 1000-document subset, the whole pool), ``--streams``
drift-free streams are resampled i.i.d. from it; each stream's monitor learns its own reference and
thresholds from its own warm-up (app.drift.calibration.null_rates). Printed: raw detector alarms per
signal, FIRED alerts with their positions after the warm-up, and the range of the `shift`
thresholds the collections got. Many short streams (``--streams 100 --events 3000``) look at the
events right after a warm-up, where its estimates are least settled; few long ones at the rest.
This is the check the scan's budget was chosen on (DRIFT.md section 4; tuning part only).
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from app.drift import DriftConfig
from app.drift.calibration import null_rates
from load import drift_data, drift_eval
from load.drift_eval import known_variants, parse_config

COLLECTIONS = {
    "tune": [("fortunes", "definitions"), ("fortunes", "people"), ("reuters", "acq"), ("reuters", "earn"),
             ("reuters", 1000), ("fortunes", 1000), ("reuters", None), ("fortunes", None)],
    "holdout": [("20ng", "rec.motorcycles"), ("20ng", "sci.med"), ("reuters", "acq"), ("fortunes", "people"),
                ("20ng", 1000), ("foldoc", 1000), ("devil", None), ("20ng", None), ("foldoc", None)],
    # chosen by size and kind before running (2026-12-07): the largest section of the packages, of the
    # man pages and of their next ones, one author of the tweets, one speaker of Friends, 1000-document
    # pools, the man pages whole (1100 documents) and the two largest pools whole
    "fresh": [("debpkg", "libs"), ("debpkg", "doc"), ("manpages", "3"), ("tweets", "realDonaldTrump"),
              ("friends", "Ross"), ("debpkg", 1000), ("tweets", 1000), ("friends", 1000), ("manpages", None),
              ("debpkg", None), ("friends", None)],
    # by size, from the label counts only (before any stream ran): the two largest topics of each,
    # a small one (the how-tos, 1039 paragraphs), 1000-document pools, both pools whole
    "fresh2": [("wordnet", "adj.all"), ("wordnet", "noun.artifact"), ("pydocs", "library"), ("pydocs", "whatsnew"),
               ("pydocs", "howto"), ("wordnet", 1000), ("pydocs", 1000), ("wordnet", None), ("pydocs", None)],
    # the same way (label counts of the whole corpora, before any stream ran or anything was
    # embedded): the two largest topics of each (Psalms, Genesis; the perl*delta pages, perlapi), a
    # small one (perlfunc, 776 of 16 031 paragraphs), 1000-document pools, both pools whole
    "fresh3": [("kjv", "Psalms"), ("kjv", "Genesis"), ("perldoc", "perldelta"), ("perldoc", "perlapi"),
               ("perldoc", "perlfunc"), ("kjv", 1000), ("perldoc", 1000), ("kjv", None), ("perldoc", None)],
    # the same way (label counts of the pools - PostgreSQL's capped at 8000 of 13 845 paragraphs -
    # before any stream ran or anything was embedded): the two largest topics of each (sql, app;
    # network-services, advanced-administration), a small one (plpgsql, 180 of 8000 paragraphs),
    # 1000-document pools, both pools whole
    "fresh4": [("pgdocs", "sql"), ("pgdocs", "app"), ("dhandbook", "network-services"),
               ("dhandbook", "advanced-administration"), ("pgdocs", "plpgsql"), ("pgdocs", 1000), ("dhandbook", 1000),
               ("pgdocs", None), ("dhandbook", None)],
    # the same way (label counts of the pools - the kernel's documentation capped at 8000 of 54 093
    # paragraphs, R's manuals whole, 3510 - before any stream ran or anything was embedded): the two
    # largest topics of each (driver-api, admin-guide; R-exts, R-intro), a small one (the largest book
    # of 150-400 paragraphs: core-api, 329 of 8000), 1000-document pools, both pools whole
    "fresh5": [("linuxdoc", "driver-api"), ("linuxdoc", "admin-guide"), ("rman", "R-exts"), ("rman", "R-intro"),
               ("linuxdoc", "core-api"), ("linuxdoc", 1000), ("rman", 1000), ("linuxdoc", None), ("rman", None)],
}


def _rows(pool, what):
    if isinstance(what, int):
        return drift_eval._rows(pool, drift_eval.Source(pool.name, subset=what))
    return pool.topic_index(None if what is None else [what])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=tuple(COLLECTIONS), default="tune")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--streams", type=int, default=10)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--config", default=None, help="other DriftConfig fields, e.g. shift_budget=1.25e-6")
    ap.add_argument("--no-variants", action="store_true", help="monitors without the known-variant signals")
    ap.add_argument("--only", default=None, help="collections whose label contains this (e.g. network-services)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    pools = drift_data.real_pools(part=args.part, variants=("int8",))
    cfg = DriftConfig() if args.warmup is None else replace(DriftConfig(), warmup=args.warmup)
    cfg = parse_config(args.config, cfg)
    offsets = known_variants().get("int8")
    print(f"part {args.part}; warm-up {cfg.warmup}; shift budget {cfg.shift_budget}; {args.streams} x {args.events} "
          f"events per collection; variant signals {sorted(offsets or {}) if not args.no_variants else 'off'}")
    out, raw, fired, events = [], 0, 0, 0
    for name, what in COLLECTIONS[args.part]:
        if name not in pools:
            continue
        label = f"{name}:{'pool' + str(what) if isinstance(what, int) else what or 'all'}"
        if args.only and args.only not in label:
            continue
        pool = pools[name]
        idx = _rows(pool, what)
        v, n = pool.variants["int8"]
        t = time.perf_counter()
        r = null_rates(v[idx], n[idx], config=cfg, streams=args.streams, events=args.events, seed=args.seed,
                       variants=None if args.no_variants else offsets)
        thr = [x.get("shift") for x in r["thresholds"]]
        print(f"{label:24s} docs {len(idx):5d} raw {r['raw_alarms']:3d} ({r['raw_per_100k']:.2f}/100k) fired "
              f"{r['fired']:3d} ({r['fired_per_100k']:.2f}/100k) {r['alarms_by_signal']} shift thr "
              f"{np.min(thr):.2f}-{np.max(thr):.2f} {time.perf_counter() - t:.0f}s; FIRED at (events after the "
              f"warm-up) {sorted(r['fired_at'])}", flush=True)
        out.append({"collection": label, "docs": int(len(idx)), **{k: r[k] for k in r if k != "thresholds"},
                    "shift_thresholds": [float(np.min(thr)), float(np.max(thr))]})
        raw, fired, events = raw + r["raw_alarms"], fired + r["fired"], events + r["live_events"]
    print(f"all: raw {raw} ({raw / events * 1e5:.2f}/100k), fired {fired} ({fired / events * 1e5:.2f}/100k) in "
          f"{events} events; {time.perf_counter() - t0:.0f}s")
    if args.out:
        args.out.write_text(json.dumps({"command": "python -m load.drift_nulls " + " ".join(argv or sys.argv[1:]),
                                        "results": out}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
