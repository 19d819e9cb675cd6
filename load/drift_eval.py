"""Evaluation harness for app.drift: real text, real encoder, resampled streams.

    python -m load.drift_eval                      # real corpora (embeds once, cached), full run
    python -m load.drift_eval --quick              # small (< 1 min once embeddings are cached)
    python -m load.drift_eval --synthetic --quick  # no corpus, no model (CI smoke test)
    python -m load.drift_eval --calibrate          # re-run the threshold calibration on Reuters
    python -m load.drift_eval --calibrate --candidates 1   # ... only the default detector row
    python -m load.drift_eval --warmup 2000 --only encoder  # another warm-up (thresholds stay)
    python -m load.drift_eval --out results.json   # also write the results as JSON

Scenarios (every stream starts with the monitor's warm-up, then ``--lead`` drift-free events, then
the change at a known index; a run *detects* if a FIRED alert comes within ``--horizon`` events of
the change, and its delay is alert index - change index):

* ``drift-free``: Reuters R8 in its natural topic mix, several seeds (false alarms per 100k);
  ``drift-free-fortunes``: the same on the fortunes pool (does the calibration transfer?);
* ``topic:A->B``: the topic mix switches abruptly;
* ``gradual:A->B``: the share of B ramps linearly from 0 to 1 over ``--ramp`` events;
* ``encoder:fp32->int8``: the same texts, embedded by the other encoder variant;
* ``tokenizer:trunc16``: texts cut to their first 16 words (a wrongly truncating tokenizer);
* ``domain:reuters->fortunes``: another kind of text altogether;
* ``boilerplate:P%``: web boilerplate prepended to a share P of the documents.

Costs: µs per vector is the wall time of ``DriftMonitor.observe`` over the live (post-warm-up)
events, fed in batches of ``--batch``, divided by the number of events.
"""
from __future__ import annotations

import os

# One BLAS thread: the per-batch matrix products are small, and a multi-threaded OpenBLAS spinning
# against the encoder's threads on a 2-core machine makes them ~15x slower (measured; DRIFT.md).
# The worker must do the same (OPENBLAS_NUM_THREADS=1 before numpy is imported).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import platform
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from app.drift import DetectorSpec, DriftConfig, DriftMonitor
from app.drift.alert import AlertKind

try:  # `python -m load.drift_eval` or `python load/drift_eval.py`
    from load import drift_data
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from load import drift_data

CORPORATE = ("earn", "acq")
MACRO = ("crude", "trade", "money-fx", "interest", "ship", "grain")


@dataclass(frozen=True)
class Source:
    """Where events come from: a pool, a variant, a topic subset, and (for boilerplate) a mix."""

    pool: str = "reuters"
    variant: str = "int8"
    topics: tuple[str, ...] | None = None
    alt_variant: str | None = None  # with probability alt_share, the row is taken from alt_variant
    alt_share: float = 0.0
    burst: float = 0.0  # > 0: documents come in same-topic runs of geometric length (this mean)


@dataclass(frozen=True)
class Scenario:
    name: str
    before: Source
    after: Source | None  # None: drift-free
    ramp: int = 0  # 0: abrupt


def scenarios(pools: dict, ramp: int) -> list[Scenario]:
    out = [Scenario("drift-free", Source(), None)]
    if "fortunes" in pools:
        out.append(Scenario("drift-free-fortunes", Source("fortunes"), None))
    # not i.i.d.: same-topic bursts (mean 20 docs); reported, not part of the calibrated target
    out.append(Scenario("bursty-free:topic-runs-20", Source(burst=20.0), None))
    out += [
        Scenario("topic:mix->acq", Source(), Source(topics=("acq",))),
        Scenario("topic:earn->acq", Source(topics=("earn",)), Source(topics=("acq",))),
        Scenario("topic:corporate->macro", Source(topics=CORPORATE), Source(topics=MACRO)),
        Scenario("gradual:corporate->macro", Source(topics=CORPORATE), Source(topics=MACRO), ramp=ramp),
    ]
    rv = pools["reuters"].variants
    if "fp32" in rv and "int8" in rv:
        out.append(Scenario("encoder:fp32->int8", Source(variant="fp32"), Source(variant="int8")))
        out.append(Scenario("encoder:int8->fp32", Source(variant="int8"), Source(variant="fp32")))
    if "trunc16" in rv:
        out.append(Scenario("tokenizer:trunc16", Source(), Source(variant="trunc16")))
    if "fortunes" in pools:
        out.append(Scenario("domain:reuters->fortunes", Source(), Source(pool="fortunes")))
    if "boiler" in rv:
        out.append(Scenario("boilerplate:100%", Source(), Source(variant="boiler")))
        out.append(Scenario("boilerplate:30%", Source(), Source(alt_variant="boiler", alt_share=0.3)))
    return out


def _draw(pools, src: Source, rng, n: int):
    pool = pools[src.pool]
    rows = pool.topic_index(src.topics)
    idx = rows[rng.integers(len(rows), size=n)]
    if src.burst > 0:  # same marginal topic mix, but in runs: stationary, not independent
        lengths = rng.geometric(1 / src.burst, size=n)
        starts = np.repeat(np.arange(n), lengths)[:n]  # run k takes its topic from idx[k]
        by_topic = {t: pool.topic_index([t]) for t in np.unique(pool.labels[rows])}
        topics = pool.labels[idx[starts]]
        for t, members in by_topic.items():
            sel = topics == t
            idx[sel] = members[rng.integers(len(members), size=int(sel.sum()))]
    v, nrm = pool.variants[src.variant]
    vec, nr = v[idx], nrm[idx]
    if src.alt_variant is not None and src.alt_share > 0:
        alt = rng.random(n) < src.alt_share
        av, an = pool.variants[src.alt_variant]
        vec[alt], nr[alt] = av[idx[alt]], an[idx[alt]]
    ids = [pool.doc_ids[i] for i in idx]
    return vec, nr, ids


def build_stream(pools, sc: Scenario, rng, *, n_before: int, n_after: int):
    """Vectors, norms and doc ids of one run; the change is at index ``n_before``."""
    v0, n0, i0 = _draw(pools, sc.before, rng, n_before)
    if sc.after is None or n_after == 0:
        return v0, n0, i0
    if sc.ramp <= 0:
        v1, n1, i1 = _draw(pools, sc.after, rng, n_after)
    else:
        v1, n1, i1 = _draw(pools, sc.before, rng, n_after)
        va, na, ia = _draw(pools, sc.after, rng, n_after)
        share = np.clip(np.arange(1, n_after + 1) / sc.ramp, 0, 1)
        take = rng.random(n_after) < share
        v1[take], n1[take] = va[take], na[take]
        i1 = [b if t else a for a, b, t in zip(i1, ia, take)]
    return np.vstack([v0, v1]), np.concatenate([n0, n1]), i0 + i1


def run_stream(vectors, norms, ids, *, config: DriftConfig, batch: int, state_dir: Path, fingerprint: str,
               n_partitions: int = 4) -> dict:
    """Feed one stream to a fresh monitor; return its alerts and the live-phase cost."""
    mon = DriftMonitor((fingerprint, "eval"), state_dir, config=config, clock=time.time)
    n = len(vectors)
    parts = np.arange(n) % n_partitions
    offs = np.arange(n) // n_partitions
    alerts = []
    live_time, live_cpu, live_events = 0.0, 0.0, 0
    for s in range(0, n, batch):
        e = min(s + batch, n)
        warm = mon.warming_up
        t, c = time.perf_counter(), time.thread_time()
        alerts += mon.observe(vectors[s:e], norms=norms[s:e], doc_ids=ids[s:e], partitions=parts[s:e],
                              offsets=offs[s:e])
        dt, dc = time.perf_counter() - t, time.thread_time() - c
        if not warm:
            live_time += dt
            live_cpu += dc
            live_events += e - s
    status = mon.status()
    mon.path.unlink(missing_ok=True)
    return {"alerts": alerts, "live_time": live_time, "live_cpu": live_cpu, "live_events": live_events,
            "alarms": status["detector_alarms"]}


def evaluate(pools, config: DriftConfig, *, runs: int, free_runs: int, free_events: int, lead: int, horizon: int,
             ramp: int, batch: int, seed: int, tail: int = 3000, only: list[str] | None = None,
             log=print) -> list[dict]:
    fp = pools["reuters"].fingerprint
    results = []
    with tempfile.TemporaryDirectory(prefix="drift-eval-") as tmp:
        for sc in scenarios(pools, ramp):
            if only and not any(sc.name.startswith(o) for o in only):
                continue
            t0 = time.perf_counter()
            rng = np.random.default_rng([seed, zlib.crc32(sc.name.encode())])
            # (bursty streams are run once: they are a caveat to report, not a calibrated target)
            free = sc.after is None
            bursty = sc.before.burst > 0
            nr = (1 if bursty else free_runs) if free else runs
            delays, missed, fa_before, fired, cleared, alarms = [], 0, 0, 0, 0, 0
            post_alerts, episodes_cleared = 0, 0
            severities, first_signals = {}, {}
            live_time, live_cpu, live_events, events_before = 0.0, 0.0, 0, 0
            for r in range(nr):
                if free:
                    n_before, n_after = config.warmup + free_events, 0
                else:
                    n_before, n_after = config.warmup + lead, horizon + sc.ramp + tail
                v, nrm, ids = build_stream(pools, sc, rng, n_before=n_before, n_after=n_after)
                out = run_stream(v, nrm, ids, config=config, batch=batch, state_dir=Path(tmp), fingerprint=fp)
                live_time += out["live_time"]
                live_cpu += out["live_cpu"]
                live_events += out["live_events"]
                alarms += out["alarms"]
                events_before += n_before - config.warmup
                firsts = [a for a in out["alerts"] if a.kind is AlertKind.FIRED and a.sequence == 0]
                fired += sum(a.kind is AlertKind.FIRED for a in out["alerts"])
                cleared += sum(a.kind is AlertKind.CLEARED for a in out["alerts"])
                fa_before += sum(a.event_index < n_before for a in firsts)
                if free:
                    continue
                hits = [a for a in out["alerts"] if a.kind is AlertKind.FIRED and a.event_index >= n_before]
                post = [a for a in out["alerts"] if a.event_index >= n_before]
                post_alerts += len(post)
                if hits and any(a.kind is AlertKind.CLEARED and a.episode_id == hits[0].episode_id for a in post):
                    episodes_cleared += 1
                if hits and hits[0].event_index - n_before <= horizon + sc.ramp:
                    delays.append(hits[0].event_index - n_before)
                    severities[hits[0].severity.value] = severities.get(hits[0].severity.value, 0) + 1
                    key = "+".join(hits[0].signals)
                    first_signals[key] = first_signals.get(key, 0) + 1
                else:
                    missed += 1
            row = {
                "scenario": sc.name,
                "runs": nr,
                "events": live_events,
                "median_delay": float(np.median(delays)) if delays else None,
                "p90_delay": float(np.percentile(delays, 90)) if delays else None,
                "max_delay": int(max(delays)) if delays else None,
                "detected": len(delays),
                "missed": missed if not free else None,
                "false_episodes": fa_before,
                "false_per_100k": fa_before / max(events_before, 1) * 1e5,
                "fired_alerts": fired,
                "cleared_alerts": cleared,
                "raw_alarms": alarms,
                "alerts_after_change_per_run": None if free else post_alerts / max(nr, 1),
                "episodes_cleared": None if free else episodes_cleared,
                "us_per_vector": live_time / max(live_events, 1) * 1e6,  # wall clock
                "cpu_us_per_vector": live_cpu / max(live_events, 1) * 1e6,  # this thread's CPU time
                "first_alert_severity": severities,
                "first_alert_signals": dict(sorted(first_signals.items(), key=lambda kv: -kv[1])[:4]),
                "seconds": time.perf_counter() - t0,
            }
            if free:
                row["raw_alarms_per_100k"] = alarms / max(events_before, 1) * 1e5
            results.append(row)
            log(format_row(row))
    return results


HEADER = (f"{'scenario':28} {'runs':>5} {'events':>9} {'med.delay':>9} {'p90':>6} {'missed':>6} "
          f"{'FA/100k':>8} {'us/vec':>7} {'cpu us':>6} {'alerts/run':>10} {'cleared':>7}  first signals")


def format_row(r: dict) -> str:
    fmt = lambda x, f="{:.0f}": "-" if x is None else f.format(x)  # noqa: E731
    return (f"{r['scenario']:28} {r['runs']:>5} {r['events']:>9} {fmt(r['median_delay']):>9} "
            f"{fmt(r['p90_delay']):>6} {fmt(r['missed'], '{}'):>6} {r['false_per_100k']:>8.2f} "
            f"{r['us_per_vector']:>7.1f} {r['cpu_us_per_vector']:>6.1f} {fmt(r['alerts_after_change_per_run'], '{:.1f}'):>10} "
            f"{fmt(r['episodes_cleared'], '{}'):>7}  {', '.join(f'{k}:{v}' for k, v in r['first_alert_signals'].items())}")


def summarise(results: list[dict]) -> dict:
    free = [r for r in results if r["scenario"].startswith("drift-free")]  # i.i.d. streams only
    ev = sum(r["events"] for r in free)
    fa = sum(r["false_episodes"] for r in free)
    t = sum(r["us_per_vector"] * r["events"] for r in free)
    tc = sum(r["cpu_us_per_vector"] * r["events"] for r in free)

    def med(prefix):
        rows = [r for r in results if r["scenario"].startswith(prefix) and r["median_delay"] is not None]
        return max((r["median_delay"] for r in rows), default=None)

    return {
        "drift_free_events": ev,
        "drift_free_false_episodes": fa,
        "false_per_100k": fa / max(ev, 1) * 1e5,
        "us_per_vector": t / max(ev, 1),
        "cpu_us_per_vector": tc / max(ev, 1),
        "worst_topic_median_delay": med("topic:"),
        "worst_encoder_median_delay": med("encoder:"),
        "targets": {"topic_median_delay": 150, "encoder_median_delay": 50, "false_per_100k": 1.0, "us_per_vector": 50},
    }


# ------------------------------------------------------------------------------------ calibration
def run_calibration(pools, args, log=print) -> dict:
    from app.drift.calibration import calibrate, drift_free_streams

    pool = pools["reuters"]
    v, n = pool.variants["int8"]
    base = DriftConfig() if args.warmup is None else replace(DriftConfig(), warmup=args.warmup)
    out = {"pool": f"{pool.name} ({len(pool)} docs, {pool.fingerprint})", "results": []}
    # The signal streams do not depend on the detector, so every candidate shares them.
    log(f"building {args.cal_streams} x {args.cal_events} drift-free events (+ as many for verification)")
    streams = drift_free_streams(v, n, n_streams=args.cal_streams, events_per_stream=args.cal_events, config=base,
                                 seed=args.seed)
    verify = drift_free_streams(v, n, n_streams=args.cal_streams, events_per_stream=args.cal_events, config=base,
                                seed=args.seed + 10_000)
    shift_threshold = None
    for kind, block, params in CALIBRATION_CANDIDATES[: args.candidates]:
        log(f"calibrating {kind} block={block} {params}")
        res = calibrate(v, n, kind=kind, base_params=params, block=block, streams=streams, verify=verify,
                        target_per_100k=args.target, config=base, shift_threshold=shift_threshold, log=log)
        shift_threshold = res.shift_threshold  # one `shift` rule for every candidate
        out["results"].append(res.to_dict())
    return out


CALIBRATION_CANDIDATES = [
    ("page_hinkley", 4, {"min_instances": 30, "alpha": 1.0, "delta": 0.25}),
    ("page_hinkley", 4, {"min_instances": 30, "alpha": 1.0, "delta": 0.1}),
    ("page_hinkley", 4, {"min_instances": 30, "alpha": 1.0, "delta": 0.5}),
    ("page_hinkley", 1, {"min_instances": 30, "alpha": 1.0, "delta": 0.25}),
    ("page_hinkley", 8, {"min_instances": 30, "alpha": 1.0, "delta": 0.25}),
    ("page_hinkley", 4, {"min_instances": 30, "alpha": 1 - 1e-4, "delta": 0.25}),  # River's default alpha
    ("adwin", 4, {"clock": 4}),
    ("adwin", 1, {"clock": 32}),
]


# ------------------------------------------------------------------------------------ CLI
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=drift_data.DEFAULT_CACHE, help="corpora + embedding cache")
    ap.add_argument("--synthetic", action="store_true", help="synthetic pools instead of real corpora")
    ap.add_argument("--quick", action="store_true", help="small run for CI (< 1 min with cached embeddings)")
    ap.add_argument("--runs", type=int, default=None, help="runs per change scenario (default 30; quick 4)")
    ap.add_argument("--free-runs", type=int, default=None, help="drift-free seeds (default 5; quick 1)")
    ap.add_argument("--free-events", type=int, default=None, help="events per drift-free run (default 100k; quick 20k)")
    ap.add_argument("--lead", type=int, default=3000, help="drift-free events between warm-up and change")
    ap.add_argument("--horizon", type=int, default=3000, help="events after the change counted as detection")
    ap.add_argument("--ramp", type=int, default=2000, help="length of the gradual ramp")
    ap.add_argument("--tail", type=int, default=3000,
                    help="events after the horizon, to see whether the episode clears (new regime kept)")
    ap.add_argument("--batch", type=int, default=64, help="vectors per observe() call")
    ap.add_argument("--max-docs", type=int, default=None, help="cap the Reuters pool (faster first embedding)")
    ap.add_argument("--only", default=None, help="comma-separated scenario name prefixes")
    ap.add_argument("--detector", default=None,
                    help="override the detector, e.g. 'adwin:delta=0.002,clock=8' or 'page_hinkley:threshold=6'")
    ap.add_argument("--block", type=int, default=None, help="override DriftConfig.block")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="write results JSON here")
    ap.add_argument("--calibrate", action="store_true", help="run the threshold calibration instead")
    ap.add_argument("--cal-streams", type=int, default=8)
    ap.add_argument("--cal-events", type=int, default=250_000)
    ap.add_argument("--target", type=float, default=1.0, help="calibration target, false alarms per 100k")
    ap.add_argument("--candidates", type=int, default=None,
                    help="calibrate only the first N detector candidates (default: all)")
    ap.add_argument("--warmup", type=int, default=None, help="override DriftConfig.warmup")
    return ap.parse_args(argv)


def parse_detector(text: str) -> DetectorSpec:
    kind, _, rest = text.partition(":")
    params = {}
    for kv in filter(None, rest.split(",")):
        k, _, val = kv.partition("=")
        params[k.strip()] = int(val) if val.strip().lstrip("-").isdigit() else float(val)
    return DetectorSpec(kind.strip(), params)


def main(argv=None) -> int:
    args = parse_args(argv)
    q = args.quick
    runs = args.runs if args.runs is not None else (4 if q else 30)
    free_runs = args.free_runs if args.free_runs is not None else (1 if q else 5)
    free_events = args.free_events if args.free_events is not None else (20_000 if q else 100_000)
    t0 = time.perf_counter()
    if args.synthetic:
        pools = drift_data.synthetic_pools(n_docs=3000 if q else 6000, seed=args.seed)
    else:
        try:
            pools = drift_data.real_pools(args.cache, max_docs=args.max_docs)
        except drift_data.DataMissing as exc:
            print(f"error: {exc}\n(use --synthetic to run without corpora)", file=sys.stderr)
            return 2
    print("pools: " + ", ".join(f"{k}={len(p)} docs {sorted(p.variants)}" for k, p in pools.items())
          + f"; fingerprint {pools['reuters'].fingerprint}; load {time.perf_counter() - t0:.1f}s")
    if args.calibrate:
        if q:
            args.cal_streams, args.cal_events = 2, 50_000
        out = run_calibration(pools, args)
        if args.out:
            args.out.write_text(json.dumps(out, indent=2, default=float))
        return 0
    config = DriftConfig()
    if args.warmup:
        config = replace(config, warmup=args.warmup)
    if args.detector:
        config = replace(config, detectors=(parse_detector(args.detector),))
    if args.block:
        config = replace(config, block=args.block)
    print(f"config: block={config.block} detectors={[s.to_dict() for s in config.detectors]} warmup={config.warmup}")
    print(HEADER)
    results = evaluate(pools, config, runs=runs, free_runs=free_runs, free_events=free_events, lead=args.lead,
                       horizon=args.horizon, ramp=args.ramp, batch=args.batch, seed=args.seed, tail=args.tail,
                       only=args.only.split(",") if args.only else None)
    summary = summarise(results)
    print(f"summary: {json.dumps(summary)}")
    print(f"total {time.perf_counter() - t0:.1f}s")
    if args.out:
        doc = {
            "command": "python -m load.drift_eval " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                        "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS")},
            "pools": {k: {"docs": len(p), "variants": sorted(p.variants), "fingerprint": p.fingerprint}
                      for k, p in pools.items()},
            "config": config.to_dict(),
            "results": results,
            "summary": summary,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
