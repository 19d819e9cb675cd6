"""Calibrate detector thresholds to a target false-alarm rate on drift-free streams.

Method
------
1. From drift-free vectors (a pool of real embeddings), build ``n_streams`` independent streams by
   resampling rows with replacement. Each stream learns its own reference from a resampled warm-up
   window exactly as :class:`~app.drift.monitor.DriftMonitor` does (same split, same signals), primes
   the detectors on the held-out half, then runs ``events_per_stream`` drift-free events.
2. For each value of the detector's sensitivity parameter on a grid (PageHinkley ``threshold``,
   ADWIN ``delta``, KSWIN ``alpha``), count the *raw* detector alarms over all signals (any signal
   firing counts: family-wise) and divide by the number of events. Raw alarms over-count what the
   monitor would emit (alarms within ``coincidence`` events make one verdict, repeats within an
   episode are rate-limited), so the rate of alerts is at most this.
3. The ``shift`` scan is watched by a threshold rule (not a River detector); its threshold is
   chosen first, as the least strict value on ``shift_grid`` whose up-crossing rate is <=
   ``shift_share`` x the allowance ``target_per_100k / safety``.
4. Bisect the detector's grid for the least strict value whose observed rate, *all* signals
   together (the ``shift`` rule at its chosen threshold included), is <= the allowance (the rate
   falls monotonically, up to noise, as the value gets stricter), then *verify* both on fresh
   streams from another seed, reporting the observed rate and a one-sided 95 % Poisson upper bound.

:func:`injected_shift_delays` measures the price: the detection delay when a shift of ``mu``
reference standard deviations is added to one signal of a drift-free stream.

Run it on the harness's pools with ``python -m load.drift_eval --calibrate`` (real corpora) or on
an ``.npz`` of vectors (+ norms) with ``python -m app.drift.calibration --npz FILE``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .detectors import DetectorBank, DetectorSpec, upcrossings
from .monitor import DEFAULT_DETECTORS, ONE_SIDED, DriftConfig
from .reference import learn_reference

__all__ = [
    "StreamSet",
    "drift_free_streams",
    "count_alarms",
    "count_upcrossings",
    "injected_shift_delays",
    "calibrate",
    "CalibrationResult",
    "poisson_upper",
]

# Which parameter makes each detector stricter, and in which direction.
SENSITIVITY = {
    "page_hinkley": ("threshold", +1),  # larger threshold -> fewer alarms
    "adwin": ("delta", -1),  # smaller delta -> fewer alarms
    "kswin": ("alpha", -1),
}


@dataclass
class StreamSet:
    """Standardised drift-free signal streams: per stream a priming part and a live part."""

    names: tuple[str, ...]
    prime: list[np.ndarray]
    live: list[np.ndarray]

    @property
    def n_events(self) -> int:
        return int(sum(len(z) for z in self.live))


def drift_free_streams(vectors: np.ndarray, norms: np.ndarray | None = None, *, n_streams: int = 8,
                       events_per_stream: int = 250_000, config: DriftConfig | None = None,
                       seed: int = 0) -> StreamSet:
    """Resample ``vectors`` into ``n_streams`` drift-free streams, as a monitor would see them."""
    c = config or DriftConfig()
    v = np.asarray(vectors, dtype=np.float32)
    nrm = None if norms is None else np.asarray(norms, dtype=np.float64)
    rng = np.random.default_rng(seed)
    prime, live, names = [], [], ()
    for _ in range(n_streams):
        w = rng.integers(len(v), size=c.warmup)
        ref, zh = learn_reference(v[w], None if nrm is None else nrm[w], **c.reference_kwargs())
        names = ref.names
        window = ref.new_window()
        z = np.empty((events_per_stream, len(names)))
        for s in range(0, events_per_stream, 8192):
            idx = rng.integers(len(v), size=min(8192, events_per_stream - s))
            z[s : s + len(idx)] = ref.signals(v[idx], None if nrm is None else nrm[idx], window)
        prime.append(zh)
        live.append(z)
    return StreamSet(names, prime, live)


def _bank(streams: StreamSet, spec: DetectorSpec, block: int, prime: np.ndarray,
          thresholds: dict[str, float] | None = None) -> DetectorBank:
    if thresholds is None:  # the monitor's default rule for `shift`
        thresholds = DriftConfig().thresholds
    bank = DetectorBank(streams.names, [spec], block=block, one_sided=ONE_SIDED, thresholds=thresholds)
    bank.update(prime, 0)
    bank.reset_blocks()
    return bank


def count_alarms(streams: StreamSet, spec: DetectorSpec, block: int,
                 thresholds: dict[str, float] | None = None) -> tuple[int, dict[str, int]]:
    """Total raw alarms (all signals) and alarms per signal over every live stream.

    ``thresholds``: signals watched by a threshold rule instead of ``spec`` (e.g. ``{"shift": 6.0}``;
    None: the monitor's default, ``DriftConfig().thresholds``).
    """
    per = {n: 0 for n in streams.names}
    for prime, z in zip(streams.prime, streams.live):
        for a in _bank(streams, spec, block, prime, thresholds).update(z, 0):
            per[a.signal] += 1
    return sum(per.values()), per


def count_upcrossings(streams: StreamSet, signal: str, threshold: float) -> int:
    """Alarms of the threshold rule on ``signal`` over every live stream (primed on its prime part)."""
    col = streams.names.index(signal)
    total = 0
    for prime, z in zip(streams.prime, streams.live):
        p = prime[:, col][~np.isnan(prime[:, col])]
        armed = not (len(p) and p[-1] > threshold)
        x = z[:, col]
        total += len(upcrossings(x[~np.isnan(x)], threshold, armed)[0])
    return total


def injected_shift_delays(streams: StreamSet, spec: DetectorSpec, block: int, *, signal: str,
                          shifts=(0.25, 0.5, 1.0, 2.0), lead: int = 5000, horizon: int = 3000,
                          max_runs: int = 40, thresholds: dict[str, float] | None = None) -> dict[float, dict]:
    """Delay (events) to the first alarm after ``shift`` (in reference sd) is added to ``signal``.

    Runs are segments of the live streams: ``lead`` drift-free events, then ``horizon`` shifted
    ones. A run with no alarm in the horizon is a miss; a run with an alarm in the lead is dropped
    (a false alarm, counted separately).
    """
    col = streams.names.index(signal)
    seg = lead + horizon
    segments = []
    for prime, z in zip(streams.prime, streams.live):
        for s in range(0, len(z) - seg + 1, seg):
            segments.append((prime, z[s : s + seg]))
    segments = segments[:max_runs]
    out = {}
    for mu in shifts:
        delays, missed, dropped = [], 0, 0
        for prime, z in segments:
            zz = z.copy()
            zz[lead:, col] += mu
            alarms = _bank(streams, spec, block, prime, thresholds).update(zz, 0)
            if any(a.index < lead for a in alarms):
                dropped += 1
                continue
            after = [a.index - lead for a in alarms if a.index >= lead]
            if after:
                delays.append(after[0])
            else:
                missed += 1
        out[float(mu)] = {
            "median_delay": float(np.median(delays)) if delays else None,
            "p90_delay": float(np.percentile(delays, 90)) if delays else None,
            "missed": missed,
            "runs": len(delays) + missed,
            "dropped_false_alarm": dropped,
        }
    return out


def poisson_upper(k: int, conf: float = 0.95) -> float:
    """Exact one-sided upper confidence bound on a Poisson mean after observing ``k`` events."""
    from scipy.stats import chi2

    return float(chi2.ppf(conf, 2 * (k + 1)) / 2)


@dataclass
class CalibrationResult:
    kind: str
    param: str
    value: float
    params: dict
    block: int
    target_per_100k: float
    safety: float
    grid: list[dict] = field(default_factory=list)
    verify: dict = field(default_factory=dict)
    shift_threshold: float | None = None
    shift_grid: list[dict] = field(default_factory=list)
    delays: dict = field(default_factory=dict)
    events: int = 0
    seconds: float = 0.0

    @property
    def spec(self) -> DetectorSpec:
        return DetectorSpec(self.kind, dict(self.params))

    @property
    def thresholds(self) -> dict[str, float]:
        return {} if self.shift_threshold is None else {"shift": self.shift_threshold}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["delays"] = {str(k): v for k, v in self.delays.items()}
        return d


def calibrate(vectors: np.ndarray, norms: np.ndarray | None = None, *, kind: str = "page_hinkley",
              base_params: dict | None = None, grid=None, block: int | None = None,
              target_per_100k: float = 1.0, safety: float = 2.0, n_streams: int = 8,
              events_per_stream: int = 250_000, config: DriftConfig | None = None, seed: int = 0,
              verify_streams: int | None = None, delay_signal: str | None = "centroid",
              streams: StreamSet | None = None, verify: StreamSet | None = None,
              shift_grid=None, shift_share: float = 0.5, shift_threshold: float | None = None,
              log=print) -> CalibrationResult:
    """Find the least strict detector parameter with <= ``target_per_100k / safety`` raw alarms.

    If the streams have a ``shift`` signal, its threshold rule is calibrated first (least strict
    value of ``shift_grid`` with <= ``shift_share`` x the allowance; or ``shift_threshold`` as
    given), and the detector's parameter is then chosen with the ``shift`` rule's alarms counted.
    ``streams``/``verify`` may be passed pre-built (see :func:`drift_free_streams`) to share them
    between several calibrations. Returns a :class:`CalibrationResult` (grid, verification, delays).
    """
    t0 = time.perf_counter()
    c = config or DriftConfig()
    block = c.block if block is None else block
    param, direction = SENSITIVITY[kind]
    base = dict(base_params or {})
    if grid is None:
        # PageHinkley's threshold scales with the variance of its input, i.e. with 1 / block
        grid = {"page_hinkley": np.arange(3.0, 14.01, 0.5) * 4 / block,
                "adwin": [0.1, 0.03, 0.01, 2e-3, 5e-4, 1e-4, 2e-5, 5e-6, 1e-6],
                "kswin": [1e-3, 1e-4, 1e-5, 1e-6, 1e-7]}[kind]
    grid = sorted((float(g) for g in grid), key=lambda g: direction * g)  # least strict first
    if streams is None:
        streams = drift_free_streams(vectors, norms, n_streams=n_streams, events_per_stream=events_per_stream,
                                     config=c, seed=seed)
    allowed = target_per_100k / safety
    if allowed * streams.n_events / 1e5 < 5:
        log(f"  WARNING: {streams.n_events} events allow only {allowed * streams.n_events / 1e5:.1f} alarms at "
            f"{allowed:g} per 100k: too few to resolve the rate; use more streams/events")
    thresholds: dict[str, float] = {}
    shift_rows: list[dict] = []
    if "shift" in streams.names:
        if shift_threshold is None:
            sgrid = sorted(float(h) for h in (shift_grid if shift_grid is not None else np.arange(4.0, 9.01, 0.25)))
            for h in sgrid:  # cheap (vectorised): evaluate the whole grid
                k = count_upcrossings(streams, "shift", h)
                shift_rows.append({"threshold": h, "alarms": k, "per_100k": k / streams.n_events * 1e5})
            ok = [r for r in shift_rows if r["per_100k"] <= allowed * shift_share]
            shift_threshold = (ok[0] if ok else shift_rows[-1])["threshold"]
            chosen_row = next(r for r in shift_rows if r["threshold"] == shift_threshold)
            log(f"  shift threshold rule: {shift_threshold:g} -> {chosen_row['alarms']} alarms / {streams.n_events} "
                f"events = {chosen_row['per_100k']:.2f} per 100k (share {shift_share:g} of {allowed:.2f})"
                + ("" if ok else " WARNING: no grid value meets its share"))
        thresholds = {"shift": float(shift_threshold)}
    evaluated: dict[float, dict] = {}

    def evaluate(g: float) -> dict:
        if g not in evaluated:
            total, per = count_alarms(streams, DetectorSpec(kind, {**base, param: g}), block, thresholds)
            rate = total / streams.n_events * 1e5
            evaluated[g] = {param: g, "alarms": total, "events": streams.n_events, "per_100k": rate,
                            "per_signal": per}
            log(f"  {kind} {param}={g:g} block={block}: {total} alarms / {streams.n_events} events = "
                f"{rate:.2f} per 100k")
        return evaluated[g]

    # The alarm rate falls monotonically (up to noise) as the parameter gets stricter: bisect the
    # grid for the least strict value that meets the allowance.
    lo, hi = 0, len(grid) - 1
    if evaluate(grid[hi])["per_100k"] > allowed:
        log(f"  WARNING: no grid value meets {allowed:.2f} per 100k; using the strictest, {grid[hi]}")
        lo = hi
    while lo < hi:
        mid = (lo + hi) // 2
        if evaluate(grid[mid])["per_100k"] <= allowed:
            hi = mid
        else:
            lo = mid + 1
    chosen = evaluate(grid[lo])
    rows = sorted(evaluated.values(), key=lambda r: direction * r[param])
    params = {**base, param: chosen[param]}
    spec = DetectorSpec(kind, params)
    if verify is None:
        verify = drift_free_streams(vectors, norms, n_streams=verify_streams or n_streams,
                                    events_per_stream=events_per_stream, config=c, seed=seed + 10_000)
    vt, vper = count_alarms(verify, spec, block, thresholds)
    vrate = vt / verify.n_events * 1e5
    ver = {"alarms": vt, "events": verify.n_events, "per_100k": vrate,
           "per_100k_upper95": poisson_upper(vt) / verify.n_events * 1e5, "per_signal": vper}
    log(f"  chosen {param}={chosen[param]:g}; verification on fresh streams: {vt} alarms / {verify.n_events} "
        f"events = {vrate:.2f} per 100k (95% upper bound {ver['per_100k_upper95']:.2f})")
    delays = {}
    if delay_signal and delay_signal in streams.names:
        delays = injected_shift_delays(verify, spec, block, signal=delay_signal, thresholds=thresholds)
        for mu, d in delays.items():
            log(f"  injected +{mu:g} sd on {delay_signal}: median delay {d['median_delay']} events, "
                f"p90 {d['p90_delay']}, missed {d['missed']}/{d['runs']}")
    return CalibrationResult(kind=kind, param=param, value=chosen[param], params=params, block=block,
                             target_per_100k=target_per_100k, safety=safety, grid=rows, verify=ver,
                             shift_threshold=thresholds.get("shift"), shift_grid=shift_rows, delays=delays, events=streams.n_events + verify.n_events,
                             seconds=time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Calibrate drift detector thresholds on drift-free vectors.")
    ap.add_argument("--npz", required=True, help="npz with 'vectors' (n,d) and optionally 'norms' (n,)")
    ap.add_argument("--kind", default="page_hinkley", choices=sorted(SENSITIVITY))
    ap.add_argument("--block", type=int, default=None)
    ap.add_argument("--delta", type=float, default=None, help="PageHinkley delta (allowance)")
    ap.add_argument("--target", type=float, default=1.0, help="false alarms per 100k events")
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--events", type=int, default=250_000, help="events per stream")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    with np.load(args.npz) as d:
        vectors = d["vectors"]
        norms = d["norms"] if "norms" in d.files else None
    base = {}
    if args.kind == "page_hinkley":
        base = {**DEFAULT_DETECTORS[0].params, **({} if args.delta is None else {"delta": args.delta})}
        base.pop("threshold", None)
    res = calibrate(vectors, norms, kind=args.kind, base_params=base, block=args.block, target_per_100k=args.target,
                    n_streams=args.streams, events_per_stream=args.events, seed=args.seed)
    print(json.dumps(res.to_dict(), indent=2, default=float))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(res.to_dict(), fh, indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
