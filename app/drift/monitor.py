"""The drift monitor: vectors in, :class:`~app.drift.alert.DriftAlert` objects out.

One :class:`DriftMonitor` watches one key (model fingerprint + collection). Lifecycle:

1. **warm-up** - the first ``config.warmup`` vectors are buffered; no alerts. Then a
   :class:`~app.drift.reference.Reference` is learned (its basis on the first ``fit_fraction``,
   its null on the rest, the *held-out* part), the detectors are primed on the held-out part, and
   the state is saved.
2. **live** - every batch is reduced to standardised signals. The detectors do not see them as they
   are: each PageHinkley signal is turned into rank scores against the held-out sample of *this*
   collection (:class:`~app.drift.nulls.RankScores`), which makes its false-alarm rate the same for
   every collection, and the ``shift`` scan is normalised by this collection's own moments and
   running mean, refined online, and has this collection's threshold (:class:`~app.drift.scan.ShiftScan`).
   Nothing is calibrated on a corpus (DRIFT.md section 3). Live events are processed in
   micro-batches of at least ``min_batch`` (smaller batches are held back, at most
   ``max_batch_wait_ms`` of event time; the alerts do not depend on it). Detector alarms become
   alerts:

   * a *verdict* needs ``k_required`` distinct (signal, detector) alarms within ``coincidence``
     events (default 1: any calibrated detector);
   * the first verdict opens an *episode* and emits FIRED (sequence 0);
   * during an episode a verdict fires again when it is news: the severity escalates; a signal
     that was not part of the episode alarms ``coincidence`` events or more after the last FIRED;
     or the detectors had *settled* on the level after the last FIRED (below) and alarm again - a
     move away from that level. A false episode therefore never hides a real change. Repeats are
     rate-limited by ``cooldown_events`` events **and** ``cooldown_s`` seconds of *event time*
     (defaults 0: the settling period is the limit); a change inside a cooldown is not dropped but
     reported when the cooldown ends;
   * CLEARED closes the episode when no verdict has happened for ``clear_after`` events **and**
     ``clear_after_s`` seconds of event time.

   **Settling**: the ``rescale_window`` events after a verdict become the detectors' new null: new
   rank-score samples, fresh PageHinkley detectors primed on them, a re-centred ``shift`` scan. A
   lasting shift thus fires, the stream is "stable again" at its new level, and the episode clears
   (the CLEARED alert's stats show that level against the reference). :meth:`DriftMonitor.rebaseline`
   learns a new reference instead.

   **Second fit of the scan**: at ``shift_refit`` events since the warm-up started (4000), the
   ``shift`` scan's projection is fitted again on all of them and its null learnt from their last
   quarter; every other signal and detector goes on as it was (skipped for a collection fed in
   bursts, a warm-up that long, or an open episode).

   **Time** is event time only: the running maximum of the ``event_times_ms`` passed with the
   vectors (Kafka record timestamps in the worker). The wall clock is used for nothing but the
   alerts' ``fired_at``, so live traffic, a replay and a backfill of the same stream produce the
   same alerts.
3. **persistence** - state (reference, null samples, scan history, counters, episode, the last
   ``prime_window`` standardised signals) is written to ``state_dir`` after warm-up, every
   ``save_every`` events and on :meth:`close`; a new monitor for the same key resumes from it
   without a new warm-up, and re-primes its detectors on the saved signals, so it does not fire on
   restart.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import math
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .alert import AlertKind, DriftAlert, PartitionRange, Severity, SignalStats, Trigger
from .detectors import Alarm, DetectorBank, DetectorSpec
from .lrv import ar_lrv_factor, ljung_box
from .nulls import RankScores, ph_threshold
from .reference import (MonitorKey, Reference, StateVersionError, learn_reference, read_state, state_path,
                        write_state)
from .scan import SHIFT_BUDGET_PER_EVENT, ScanSet, ShiftScan
from .states import newer_request, relearn_path
from .signals import SHIFT_POWER, SHIFT_WINDOWS, fit_tail

log = logging.getLogger(__name__)

__all__ = ["DriftConfig", "DriftMonitor", "DEFAULT_DETECTORS", "DEFAULT_BLOCK", "ONE_SIDED"]

_NS = uuid.UUID("0b6f3f0e-6f64-5c7c-9a55-6d1f2e4a7c31")

# --- defaults -----------------------------------------------------------------------------------
# PageHinkley (River) on block means of 4 rank scores; its threshold comes from nulls.PH_TABLE for
# the size of the null sample (a "threshold" given here overrides it). alpha=1: River's default
# fading factor (1 - 1e-4) turns the CUSUM into a leaky process whose swings exceed any useful
# threshold on long streams (DRIFT.md).
DEFAULT_BLOCK = 4
DEFAULT_DETECTORS: tuple[DetectorSpec, ...] = (
    DetectorSpec("page_hinkley", {"min_instances": 30, "delta": 0.25, "alpha": 1.0}),
)
# Signals where only an increase means drift (PageHinkley runs with mode="up" on them; `shift` is
# one-sided by construction and watched by its threshold rule).
ONE_SIDED = frozenset({"shift"})


@dataclass(frozen=True)
class DriftConfig:
    """Knobs of :class:`DriftMonitor`. Thresholds are derived per collection (``None`` = derived)."""

    warmup: int = 2000
    fit_fraction: float = 0.75
    n_axes: int = 2
    n_whiten: int = 32
    n_clusters: int = 8
    shift_windows: tuple[int, ...] = SHIFT_WINDOWS
    shift_shrink: float = 0.01
    shift_power: float = SHIFT_POWER
    #: fixed threshold of the `shift` rule; None: from the collection's own null (ShiftScan)
    shift_threshold: float | None = None
    #: per-event exceedance budget of the `shift` scan (all windows together)
    shift_budget: float = SHIFT_BUDGET_PER_EVENT
    #: the `shift` scan also watches the whitened top this-many principal axes, as a second block
    #: with half the budget (app.drift.scan.ScanSet): a mean shift among the topics' own axes - a
    #: switch to a topic that is a large part of the mix - that no single watched axis shows
    #: (DRIFT.md section 2). 16 was chosen on the tuning part (load.drift_topics: the head scan's
    #: per-event growth with 16 axes against 32 and 64). 0: the tail only, as before.
    shift_head: int = 16
    seed: int = 0
    block: int = DEFAULT_BLOCK
    detectors: tuple[DetectorSpec, ...] = DEFAULT_DETECTORS
    #: rank scores against the collection's null sample (False: raw standardised signals, as before)
    rank_scores: bool = True
    #: correct the nulls for the warm-up's serial dependence (long-run-variance factors,
    #: app.drift.lrv; False: every factor 1, the exchangeable nulls as before)
    lrv_correction: bool = True
    #: level of the warm-up's test of serial independence (Ljung-Box on each PageHinkley signal's
    #: rank scores, Bonferroni over the signals). When it rejects, the collection is fed in bursts:
    #: every PageHinkley signal gets the largest long-run-variance factor of any, and the `shift`
    #: scan, whose null cannot be learnt from a warm-up then (DRIFT.md section 3), is not watched.
    #: 0: never (per-signal factors, the scan always watched). Needs lrv_correction.
    serial_alpha: float = 1e-3
    #: a collection whose warm-up fails that test is watched only after at least this many
    #: events: a shorter warm-up is extended to it and everything is learnt again from all of it.
    #: The long-run-variance factor of a bursty collection rests on the number of runs its warm-up
    #: holds (~50 in 1000 events of runs of mean 20): too few, and an under-estimated factor
    #: enters PageHinkley's false-alarm rate exponentially. 4000 was chosen on the tuning part
    #: (DRIFT.md section 3: extended to 2000, one stream of ten kept an under-estimated factor and
    #: 2 false alarms in 100k events). 0: never extended.
    dependent_warmup: int = 4000
    #: the `shift` scan's whitening is fitted once more when this many events (warm-up included)
    #: have been seen since the warm-up started: on the first ``fit_fraction`` of them, its null
    #: learnt from the rest; every other signal and detector goes on as it was. The low-variance
    #: axes the scan whitens are estimated poorly from 1500 rows (DRIFT.md section 2: an encoder
    #: swap's per-event signal-to-noise on 20 Newsgroups is 0.053 with the warm-up's fit, 0.062
    #: with one on 3500 rows; its median delay 102 / 107 -> 89 / 102 events). Not done for a
    #: collection fed in bursts (its scan is not watched), when the warm-up was at least this long,
    #: or while an episode is open (then the scan keeps the warm-up's fit). 0: never.
    shift_refit: int = 4000
    k_required: int = 1
    coincidence: int = 500
    critical_signals: int = 2
    critical_shift: float = 1.0
    cooldown_events: int = 0
    cooldown_s: float = 0.0
    clear_after: int = 2000
    clear_after_s: float = 0.0
    rescale_window: int = 500
    stats_window: int = 200
    prime_window: int = 1000
    max_examples: int = 5
    save_every: int = 10_000
    #: live events are processed in micro-batches of at least this many (smaller batches are held
    #: back, at most ``max_batch_wait_ms`` of event time): the per-call cost is amortised
    min_batch: int = 16
    max_batch_wait_ms: int = 1000

    def __post_init__(self) -> None:
        if self.warmup < 20:
            raise ValueError("warmup must be >= 20")
        if self.k_required < 1 or self.block < 1 or self.clear_after < 1:
            raise ValueError("k_required, block and clear_after must be >= 1")
        if self.cooldown_events < 0 or self.cooldown_s < 0 or self.clear_after_s < 0:
            raise ValueError("cooldown_events, cooldown_s and clear_after_s must be >= 0")
        if not 0.0 <= self.serial_alpha < 1.0:
            raise ValueError("serial_alpha must be in [0, 1)")
        if self.dependent_warmup < 0:
            raise ValueError("dependent_warmup must be >= 0")
        object.__setattr__(self, "detectors", tuple(self.detectors))
        object.__setattr__(self, "shift_windows", tuple(int(w) for w in self.shift_windows))

    def reference_kwargs(self) -> dict:
        """Arguments of :func:`~app.drift.reference.learn_reference` taken from this config."""
        return {"fit_fraction": self.fit_fraction, "n_axes": self.n_axes, "n_whiten": self.n_whiten,
                "n_clusters": self.n_clusters, "windows": self.shift_windows, "shrink": self.shift_shrink,
                "power": self.shift_power, "seed": self.seed, "n_head": self.shift_head}

    def detector_specs(self, n_null: int) -> list[DetectorSpec]:
        """The detectors for a null sample of ``n_null`` values (PageHinkley's threshold filled in)."""
        out = []
        for spec in self.detectors:
            if spec.kind == "page_hinkley" and "threshold" not in spec.params:
                spec = DetectorSpec(spec.kind, {**spec.params, "threshold": ph_threshold(n_null)})
            out.append(spec)
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["detectors"] = [s.to_dict() for s in self.detectors]
        return d


@dataclass
class _Episode:
    episode_id: str
    start: int
    severity: Severity
    detector: str
    signals: set[str] = field(default_factory=set)
    triggers: list[Trigger] = field(default_factory=list)
    seq: int = 0
    last_verdict: int = 0
    last_verdict_time: int | None = None
    last_alert_index: int = 0
    last_alert_time: int | None = None
    settled: bool = False  # the detectors re-learned their null after the last FIRED
    pending: dict | None = None  # a change found during a cooldown, reported when it ends

    def to_json(self) -> dict:
        d = asdict(self)
        d["severity"] = self.severity.value
        d["signals"] = sorted(self.signals)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "_Episode":
        d = dict(d)
        d["severity"] = Severity(d["severity"])
        d["signals"] = set(d["signals"])
        d["triggers"] = [Trigger(**t) for t in d["triggers"]]
        return cls(**d)


def _nanmean(a: np.ndarray) -> np.ndarray:
    """Column means ignoring NaN; NaN for an all-NaN or empty column (no warning)."""
    cnt = (~np.isnan(a)).sum(axis=0)
    tot = np.nansum(a, axis=0)
    return np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)


def _nanstd(a: np.ndarray) -> np.ndarray:
    m = _nanmean(a)
    cnt = (~np.isnan(a)).sum(axis=0)
    ss = np.nansum((a - m) ** 2, axis=0)
    return np.where(cnt > 0, np.sqrt(ss / np.maximum(cnt, 1)), np.nan)


class DriftMonitor:
    """Streaming embedding-drift monitor for one (model fingerprint, collection).

    Parameters
    ----------
    key
        ``MonitorKey(fingerprint, collection)`` or a ``(fingerprint, collection)`` tuple.
    state_dir
        Directory for the persisted reference/state (one ``.npz`` per key).
    config
        :class:`DriftConfig`; thresholds are derived from each collection's warm-up (DRIFT.md).
    clock
        Wall clock in seconds (injectable for tests); used only for the alerts' ``fired_at``.
    variants
        ``{name: offset}``: the mean offset (d,) of each known variant of this encoder
        (:func:`app.drift.variants.variant_offsets`); each gets a ``variant_<name>`` signal from the
        next warm-up on. A reference restored from the state file keeps the signals it was fitted with.

    Examples
    --------
    Unit vectors around 4 topics; at event 6000 two topics are replaced by a new one.

    >>> import tempfile
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> topics = rng.normal(size=(6, 64))
    >>> def sample(n, which):
    ...     v = topics[rng.choice(which, n)] + rng.normal(scale=2.0, size=(n, 64))
    ...     return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    >>> stream = np.vstack([sample(6000, [0, 1, 2, 3]), sample(6000, [0, 1, 4])])
    >>> monitor = DriftMonitor(("fp-1", "docs"), tempfile.mkdtemp(), clock=lambda: 0.0)
    >>> alerts = []
    >>> for s in range(0, len(stream), 256):
    ...     alerts += monitor.observe(stream[s : s + 256])
    >>> [(a.kind.value, a.event_index, a.severity.value, a.signals) for a in alerts]  # doctest: +NORMALIZE_WHITESPACE
    [('FIRED', 6023, 'WARNING', ['nearest']),
     ('FIRED', 6025, 'CRITICAL', ['nearest', 'shift']),
     ('CLEARED', 8255, 'CRITICAL', ['centroid', 'axis2', 'mahal', 'nearest', 'shift'])]

    The first alert opens the episode with one signal, a WARNING; two events later a second signal
    agrees and it is escalated to CRITICAL (with two at once, the first alert would have been
    CRITICAL); the detectors then settle on the new mix, which is stable, and the episode clears
    2000 events after the last detector alarm. Alerts are Avro-encodable and keyed by ``fingerprint/collection``:

    >>> from app.drift import decode_alert, encode_alert
    >>> decode_alert(encode_alert(alerts[0])) == alerts[0], alerts[0].kafka_key
    (True, b'fp-1/docs')
    >>> monitor.close()
    """

    def __init__(
        self,
        key: MonitorKey | tuple[str, str],
        state_dir: Path | str,
        *,
        config: DriftConfig | None = None,
        clock: Callable[[], float] = time.time,
        variants: dict[str, np.ndarray] | None = None,
    ):
        self.key = MonitorKey(*key)
        self.state_dir = Path(state_dir)
        self.config = config or DriftConfig()
        self.clock = clock
        self.variants = {str(k): np.asarray(v, dtype=np.float64) for k, v in (variants or {}).items()}
        self.path = state_path(self.state_dir, self.key)
        self._reset_all()
        self._load()

    # ------------------------------------------------------------------ state
    def _reset_all(self) -> None:
        self.n_seen = 0
        self.reference: Reference | None = None
        self.reference_id = ""
        self.bank: DetectorBank | None = None
        self.ranks: RankScores | None = None
        self._scan: ShiftScan | ScanSet | None = None
        #: long-run-variance factors from the warm-up: per signal (rank scores are divided by
        #: sqrt(f)) and per `shift` window (app.drift.lrv); ones = exchangeable
        self.lrv_signals: np.ndarray | None = None
        self.lrv_windows: np.ndarray | None = None
        #: the warm-up's test of serial independence: smallest Ljung-Box p-value over the
        #: PageHinkley signals (None: not tested), and whether it rejected (a bursty collection)
        self.serial_p: float | None = None
        self.serially_dependent = False
        self._warm_vecs: list[np.ndarray] = []
        self._warm_norms: list[np.ndarray] = []
        self._warm_count = 0
        self._warm_norms_ok = True
        #: events the current warm-up takes: config.warmup, or config.dependent_warmup once a
        #: shorter warm-up was found serially dependent (extended)
        self._warm_target = self.config.warmup
        #: the `shift` scan's second fit (config.shift_refit): the event index it happens at while
        #: pending, the vectors since the warm-up started (finite rows), and what became of it
        self._refit_at: int | None = None
        self._refit_vecs: list[np.ndarray] = []
        self.shift_refit: str | None = None  # None, "pending", "done", "skipped"
        self._rz = np.empty((0, 0))
        self._rids: list[str | None] = []
        self._rpart = np.empty(0, dtype=np.int64)
        self._roff = np.empty(0, dtype=np.int64)
        self._rstart = 0
        self._recent_alarms: deque[Alarm] = deque()
        self._collect_from: int | None = None  # first event of a pending settling window
        self._collect_units: list[tuple[np.ndarray, np.ndarray]] = []
        self._batch: tuple[int, np.ndarray | None] = (0, None)
        self._seg_start = 0
        self.watermark: int | None = None  # event time: max of the event times seen (ms)
        self._queue: list = []  # live events held back by the micro-batching (min_batch)
        self._queued = 0
        self.episode: _Episode | None = None
        self.n_alarms = 0
        self.alarms_by_signal: dict[str, int] = {}
        self.n_alerts = 0
        self.n_episodes = 0
        self.n_invalid = 0
        self.n_state_discarded = 0
        self.n_settled = 0
        self._last_save = 0
        #: when (wall clock) this reference's warm-up started: a relearn request made before it is
        #: already satisfied (app.drift.states)
        self.started_at = self.clock()
        self._request_seen: tuple | None = None  # (mtime_ns, size) of the last request file read

    @property
    def warming_up(self) -> bool:
        return self.reference is None

    @property
    def signal_names(self) -> tuple[str, ...]:
        return self.reference.names if self.reference is not None else ()

    @property
    def thresholds(self) -> dict[str, float]:
        """The thresholds in force: ``{"page_hinkley": h, "shift": t}`` (empty during warm-up)."""
        if self.bank is None:
            return {}
        out = {s.kind: float(s.params["threshold"]) for s in self.bank.specs if "threshold" in s.params}
        out.update({k: v for k, v in self.bank.thresholds.items() if math.isfinite(v)})  # not `shift` when unwatched
        return out

    def status(self) -> dict:
        """Counters for metrics/health endpoints."""
        return {
            "key": f"{self.key.fingerprint}/{self.key.collection}",
            "events_observed": self.n_seen,
            "warming_up": self.warming_up,
            "warmup_progress": self._warm_count if self.warming_up else self._warm_target,
            # events the warm-up takes (more than config.warmup when it was extended for a
            # serially dependent collection)
            "warmup": self._warm_target,
            "signals": list(self.signal_names),
            "thresholds": self.thresholds,
            "episode_active": self.episode is not None,
            "detector_alarms": self.n_alarms,
            "alarms_by_signal": dict(self.alarms_by_signal),
            "alerts": self.n_alerts,
            "episodes": self.n_episodes,
            "settled": self.n_settled,
            "invalid_vectors": self.n_invalid,
            "state_discarded": self.n_state_discarded,
            "event_time_ms": self.watermark,
            "queued": self._queued,
            # the warm-up's serial-independence test (None: not done); dependent: the collection
            # is fed in bursts, the `shift` scan is not watched
            "serial_dependence": (None if self.serial_p is None else
                                  {"p_value": self.serial_p, "dependent": self.serially_dependent}),
            # the `shift` scan's second fit on more events (config.shift_refit)
            "shift_refit": (None if self.shift_refit is None else
                            {"state": self.shift_refit, "at": self._refit_at}),
        }

    # ------------------------------------------------------------------ public API
    def observe(
        self,
        vectors: np.ndarray,
        *,
        norms: np.ndarray | None = None,
        doc_ids: Sequence[str | None] | None = None,
        partitions: Sequence[int] | np.ndarray | None = None,
        offsets: Sequence[int] | np.ndarray | None = None,
        event_times_ms: Sequence[int] | np.ndarray | None = None,
    ) -> list[DriftAlert]:
        """Feed a batch of vectors (n, d) in stream order; returns the alerts it caused (often none).

        ``norms`` are the pre-normalisation norms (n,); ``doc_ids`` / ``partitions`` / ``offsets``
        per-vector metadata used only to describe alerts; ``event_times_ms`` the events' times (the
        monitor's only clock: cooldowns, clearing and the alerts' ``event_time``). Rows with
        non-finite values are counted (``status()["invalid_vectors"]``) and skipped by the detectors.
        """
        v = np.asarray(vectors, dtype=np.float32)
        if v.ndim != 2:
            raise ValueError(f"vectors must be (n, d), got shape {v.shape}")
        n = len(v)
        meta = {
            "norms": None if norms is None else np.asarray(norms, dtype=np.float64).reshape(-1),
            "doc_ids": None if doc_ids is None else list(doc_ids),
            "partitions": None if partitions is None else np.asarray(partitions, dtype=np.int64).reshape(-1),
            "offsets": None if offsets is None else np.asarray(offsets, dtype=np.int64).reshape(-1),
            "times": None if event_times_ms is None else np.asarray(event_times_ms, dtype=np.int64).reshape(-1),
        }
        for name, arr in meta.items():
            if arr is not None and len(arr) != n:
                raise ValueError(f"{name} has {len(arr)} entries for {n} vectors")
        if n == 0:
            return []
        # event time of each event: the running maximum of the times seen (None before any)
        times = meta.pop("times")
        if times is not None:
            wm = np.maximum.accumulate(times if self.watermark is None else np.maximum(times, self.watermark))
        else:
            wm = None
        alerts: list[DriftAlert] = []
        if self.reference is None:
            while self.reference is None and len(v):
                # (twice at most: a warm-up extended for a serially dependent collection goes on)
                take = min(self._warm_target - self._warm_count, len(v))
                self._warm_add(v[:take], None if meta["norms"] is None else meta["norms"][:take])
                self.n_seen += take
                if wm is not None:
                    self.watermark = int(wm[take - 1])
                if self._warm_count >= self._warm_target:
                    self._finish_warmup()
                v = v[take:]
                meta = {k: None if a is None else a[take:] for k, a in meta.items()}
                wm = None if wm is None else wm[take:]
            if not len(v):
                return alerts
        n_live = len(v)
        if not self._queue and n_live >= self.config.min_batch:
            alerts += self._observe_live(v, wm=wm, **meta)
            return alerts
        if wm is None:
            wm = np.full(n_live, -1 if self.watermark is None else self.watermark, dtype=np.int64)
        else:
            self.watermark = int(wm[-1])
        self._queue.append((v, meta, wm))
        self._queued += n_live
        first, last = int(self._queue[0][2][0]), int(wm[-1])
        if self._queued >= self.config.min_batch or (first >= 0 and last - first >= self.config.max_batch_wait_ms):
            alerts += self.flush()
        return alerts

    def flush(self) -> list[DriftAlert]:
        """Process the events held back by the micro-batching (see ``DriftConfig.min_batch``) now."""
        if not self._queue:
            return []
        v, meta, wm = self._queued_batch()
        self._queue, self._queued = [], 0
        return self._observe_live(v, wm=wm if (wm >= 0).any() else None, **meta)

    def _queued_batch(self):
        """The queued events as one batch: vectors, metadata (missing parts filled), event times."""
        if len(self._queue) == 1:
            return self._queue[0]
        vs, metas, wms = zip(*self._queue)
        lens = [len(x) for x in vs]

        def cat(name, fill, dtype):
            if all(m[name] is None for m in metas):
                return None
            return np.concatenate([np.full(k, fill, dtype=dtype) if m[name] is None else m[name]
                                   for m, k in zip(metas, lens)])

        ids = None
        if any(m["doc_ids"] is not None for m in metas):
            ids = [x for m, k in zip(metas, lens) for x in (m["doc_ids"] if m["doc_ids"] is not None else [None] * k)]
        meta = {"norms": cat("norms", np.nan, np.float64), "doc_ids": ids,
                "partitions": cat("partitions", -1, np.int64), "offsets": cat("offsets", -1, np.int64)}
        return np.vstack(vs), meta, np.concatenate(wms)

    def save(self) -> Path:
        """Write the state file now (atomic); returns its path."""
        arrays: dict[str, np.ndarray] = {}
        meta = {
            "fingerprint": self.key.fingerprint,
            "collection": self.key.collection,
            "n_seen": self.n_seen,
            "reference_id": self.reference_id,
            "watermark": self.watermark,
            "counters": {
                "alarms": self.n_alarms,
                "alarms_by_signal": self.alarms_by_signal,
                "alerts": self.n_alerts,
                "episodes": self.n_episodes,
                "invalid": self.n_invalid,
                "settled": self.n_settled,
            },
            "episode": None if self.episode is None else self.episode.to_json(),
            "config": self.config.to_dict(),
            "warm_target": self._warm_target,
            "started_at": self.started_at,
            "saved_at": self.clock(),
        }
        if self.reference is not None:
            arrays.update(self.reference.to_arrays())
            arrays["recent_z"] = self._rz[-self.config.prime_window :]
            meta["recent_start"] = self.n_seen - len(arrays["recent_z"])
            if self.ranks is not None:
                arrays.update(self.ranks.to_arrays("ranks_"))
            if self.lrv_signals is not None:
                arrays["lrv_signals"] = self.lrv_signals
            if self.lrv_windows is not None:
                arrays["lrv_windows"] = self.lrv_windows
            if self.serial_p is not None:
                meta["serial_p"] = self.serial_p
                meta["serially_dependent"] = self.serially_dependent
            if self._scan is not None:
                # the scan's null with its live history and moments folded in; its windows restart
                arrays["scan_null"] = self._scan.merged_null().to_array()
                meta["scan_threshold"] = self._scan.threshold
            meta["shift_refit"] = self.shift_refit
            if self._refit_at is not None:  # the vectors of the scan's coming second fit
                meta["refit_at"] = self._refit_at
                arrays["refit_vectors"] = np.vstack(self._refit_vecs)
            meta["thresholds"] = self.thresholds
            if self._queue:  # events held back by the micro-batching: processed after a restart
                qv, qm, qwm = self._queued_batch()
                arrays["queue_vectors"], arrays["queue_wm"] = qv, qwm
                for name in ("norms", "partitions", "offsets"):
                    if qm[name] is not None:
                        arrays["queue_" + name] = qm[name]
                meta["queue_doc_ids"] = qm["doc_ids"]
        else:
            meta["warm_count"] = self._warm_count
            meta["warm_norms_ok"] = self._warm_norms_ok
            if self.serial_p is not None:  # the test of a warm-up that was extended
                meta["serial_p"] = self.serial_p
                meta["serially_dependent"] = self.serially_dependent
            if self._warm_vecs:
                arrays["warm_vectors"] = np.vstack(self._warm_vecs)
                if self._warm_norms_ok and self._warm_norms:
                    arrays["warm_norms"] = np.concatenate(self._warm_norms)
        write_state(self.path, arrays, meta)
        self._last_save = self.n_seen
        return self.path

    def close(self) -> None:
        """Save the state (call on shutdown/partition revocation)."""
        self.save()

    def rebaseline(self, note: str = "reference re-learned (rebaseline)") -> list[DriftAlert]:
        """Forget the reference and learn a new one from the next ``warmup`` vectors.

        Events held back by the micro-batching are processed first (their alerts are returned too).
        Closes an open episode with a CLEARED alert (returned; ``note`` is its message's reason).
        The event counter keeps running.
        """
        alerts = self.flush()
        if self.episode is not None:
            last = self.n_seen - 1
            alerts.append(self._make_alert(AlertKind.CLEARED, last, [], self.episode.severity, self.watermark,
                                           note=note))
            self.episode = None
        n_seen, wm, seen = self.n_seen, self.watermark, self._request_seen
        counters = (self.n_alarms, self.alarms_by_signal, self.n_alerts, self.n_episodes, self.n_invalid,
                    self.n_settled)
        self._reset_all()
        self.n_seen, self.watermark, self._request_seen = n_seen, wm, seen
        (self.n_alarms, self.alarms_by_signal, self.n_alerts, self.n_episodes, self.n_invalid,
         self.n_settled) = counters
        self.save()
        return alerts

    def relearn_if_requested(self) -> list[DriftAlert]:
        """Learn a new reference if one was requested for this key (``embedstream drift relearn``,
        :func:`app.drift.states.request_relearn`) after this reference's warm-up started:
        :meth:`rebaseline`. Returns its alerts (a CLEARED alert if an episode was open). One
        ``stat`` when there is no request or the same request file was read before."""
        try:
            st = relearn_path(self.state_dir, self.key).stat()
        except FileNotFoundError:
            return []
        if self._request_seen == (st.st_mtime_ns, st.st_size):
            return []
        req = newer_request(self.state_dir, self.key, self.started_at)
        self._request_seen = (st.st_mtime_ns, st.st_size)
        if req is None:
            return []
        reason = req["reason"].strip()
        alerts = self.rebaseline(note="reference re-learned on request (embedstream drift relearn"
                                      + (f": {reason})" if reason else ")"))
        log.warning("drift monitor %s/%s: new reference requested%s; a warm-up of %d events starts at event %d",
                    self.key.fingerprint, self.key.collection, f" ({reason})" if reason else "",
                    self._warm_target, self.n_seen)
        return alerts

    def __enter__(self) -> "DriftMonitor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ warm-up
    def _warm_add(self, v: np.ndarray, norms: np.ndarray | None) -> None:
        ok = np.isfinite(v).all(axis=1)
        if norms is not None:
            ok &= np.isfinite(norms) & (norms > 0)
        self.n_invalid += int((~ok).sum())
        if norms is None:
            self._warm_norms_ok = False
        self._warm_vecs.append(v[ok].copy())
        if norms is not None:
            self._warm_norms.append(norms[ok].copy())
        self._warm_count += len(v)

    def _finish_warmup(self) -> None:
        c = self.config
        vecs = np.vstack(self._warm_vecs)
        norms = np.concatenate(self._warm_norms) if self._warm_norms_ok and self._warm_norms else None
        ref, z_hold = learn_reference(vecs, norms, directions=self.variants or None, **c.reference_kwargs())
        self._warm_vecs, self._warm_norms = [], []
        # content hash: the same warm-up gives the same reference id, hence the same alert ids
        h = hashlib.sha256()
        for arr in ref.to_arrays().values():
            h.update(np.ascontiguousarray(arr).tobytes())
        self.reference_id = h.hexdigest()[:32]
        start = self.n_seen - len(z_hold)
        self._install_reference(ref, z_hold, recent_start=start)
        if c.lrv_correction:
            self._learn_lrv(vecs, norms, z_hold, start)
            if self.serially_dependent and self._warm_count < c.dependent_warmup:
                self._extend_warmup(vecs, norms)
                return
        self._set_null(z_hold, start)
        if (c.shift_refit > self._warm_count and self._scan is not None and self._scan.windows
                and not self.serially_dependent):
            self._refit_at = self.n_seen + (c.shift_refit - self._warm_count)
            self._refit_vecs = [vecs]
            self.shift_refit = "pending"
        self.save()

    def _refit_scan(self) -> None:
        """The `shift` scan's whitening fitted again on every vector since the warm-up started
        (``config.shift_refit``): its first ``fit_fraction`` fit the projection, the rest are the
        new scan's null and starting history; the scan restarts empty on the next event (as after
        a restart) and watches the same level. Skipped while an episode is open or settling."""
        c = self.config
        vecs = np.vstack(self._refit_vecs)
        self._refit_vecs, self._refit_at = [], None
        if self.episode is not None or self._collect_from is not None:
            self.shift_refit = "skipped"
            log.info("drift monitor %s/%s: the `shift` scan keeps its warm-up fit (an episode is open)",
                     self.key.fingerprint, self.key.collection)
            return
        n_fit = int(round(len(vecs) * c.fit_fraction))
        basis = fit_tail(self.reference.basis, vecs[:n_fit], n_whiten=c.n_whiten, shrink=c.shift_shrink,
                         power=c.shift_power, seed=c.seed)
        units, keys = basis.tail_units(vecs[n_fit:])
        basis = replace(basis, scan_null=basis.null_from_sample(units, keys))
        self.reference = replace(self.reference, basis=basis)
        level = self._scan.threshold
        self._scan = basis.new_window(budget=c.shift_budget)
        self._scan.threshold = level  # the bank's `shift` threshold stays what it was
        if self.lrv_windows is not None:  # the stream's serial dependence, measured on the warm-up
            self._scan.set_lrv(self.lrv_windows)
        self.shift_refit = "done"
        log.info("drift monitor %s/%s: the `shift` scan was fitted again on %d events (event %d)",
                 self.key.fingerprint, self.key.collection, len(vecs), self.n_seen)

    def _extend_warmup(self, vecs: np.ndarray, norms: np.ndarray | None) -> None:
        """The warm-up was found serially dependent and is shorter than ``config.dependent_warmup``:
        forget what was learnt from it, keep its vectors, and go on warming up to that length (then
        everything - basis, nulls, factors and the test itself - is learnt again from all of them)."""
        p, target = self.serial_p, self.config.dependent_warmup
        log.warning("drift monitor %s/%s: a warm-up of %d events is too short for a collection fed in bursts "
                    "(serially dependent, Ljung-Box p = %.2g); extended to %d events (DRIFT.md section 3)",
                    self.key.fingerprint, self.key.collection, self._warm_count, p, target)
        self.reference, self.reference_id, self._scan = None, "", None
        self.bank, self.ranks, self.lrv_signals, self.lrv_windows = None, None, None, None
        self._rz, self._rids = np.empty((0, 0)), []
        self._warm_vecs = [vecs]
        self._warm_norms = [norms] if norms is not None else []
        self._warm_target = target
        self.save()

    def _learn_lrv(self, vecs: np.ndarray, norms: np.ndarray | None, z_hold: np.ndarray, start: int) -> None:
        """Long-run-variance factors from the warm-up, in stream order (app.drift.lrv).

        Rank-score signals: the fit part's signals scored against the held-out sample, and the
        held-out sample's own scores - two segments, each centred on its own mean (the fit part's
        signals are in-sample: their level may differ, their serial dependence does not). ``shift``:
        the trace autocorrelation of the unit tail rows of both parts.

        The same scores are tested for serial independence (Ljung-Box, ``config.serial_alpha``
        Bonferroni-split over the signals). A collection that fails it is fed in bursts: the
        factors of its signals, estimated from the same ~100 runs, scatter by a factor of two and
        more, and all come from the one burst process, so each signal gets the largest of them; its
        `shift` scan is not watched (its statistic on such a stream is heavy-tailed beyond any
        moment-matched null: ``load/drift_bursty.py``).
        """
        ref = self.reference
        n_fit = len(vecs) - len(z_hold)
        f_sig = np.ones(len(ref.names))
        cols = self._ph_columns()
        if self.config.rank_scores and cols and n_fit > 0:
            ranks = RankScores(z_hold, cols, seed=self.config.seed)
            z_fit = ref.signals(vecs[:n_fit], None if norms is None else norms[:n_fit])
            s_fit = ranks.scores(z_fit, start - n_fit)
            s_hold = ranks.own(z_hold, start)
            p_min = 1.0
            for j in cols:
                # a `variant_` signal is a Fisher direction through the fit rows' smallest
                # eigenvalues: on those rows its values are in-sample and shrunk toward their mean
                # (not comparable), so only the held-out segment speaks for its dependence
                segs = ([s_hold[:, j]] if ref.names[j].startswith("variant_")
                        else [s_fit[:, j], s_hold[:, j]])
                f_sig[j] = ar_lrv_factor(segs)
                p_min = min(p_min, ljung_box(segs)[1])
            self.serial_p = p_min
            alpha = self.config.serial_alpha
            self.serially_dependent = alpha > 0 and p_min < alpha / len(cols)
            if self.serially_dependent:
                f_sig[cols] = f_sig[cols].max()
                log.warning("drift monitor %s/%s: the warm-up is serially dependent (Ljung-Box p = %.2g): "
                            "a collection fed in bursts; every PageHinkley signal gets the long-run-variance "
                            "factor %.1f and the `shift` scan is not watched (DRIFT.md section 3)",
                            self.key.fingerprint, self.key.collection, p_min, float(f_sig[cols].max()))
        self.lrv_signals = f_sig
        if self._scan is not None and self._scan.windows and not self.serially_dependent:
            segs = [ref.basis.tail_units(vecs[:n_fit]), ref.basis.tail_units(vecs[n_fit:])]
            self.lrv_windows = self._scan.window_factors(segs)
            self._scan.set_lrv(self.lrv_windows)

    def _ph_columns(self) -> list[int]:
        return [j for j, s in enumerate(self.signal_names) if s not in ONE_SIDED]

    def _install_reference(self, ref: Reference, recent_z: np.ndarray, recent_start: int) -> None:
        self.reference = ref
        self._scan = ref.new_window(budget=self.config.shift_budget)  # `shift` restarts empty (NaN for min(shift_windows) - 1 events)
        self._rz = np.asarray(recent_z, dtype=np.float64)
        self._rids = [None] * len(recent_z)
        self._rpart = np.full(len(recent_z), -1, dtype=np.int64)
        self._roff = np.full(len(recent_z), -1, dtype=np.int64)
        self._rstart = recent_start

    def _set_null(self, rows: np.ndarray, start: int) -> None:
        """Make ``rows`` (standardised signals) the detectors' null, and prime fresh detectors on them.

        With rank scores the priming values are the sample's own scores (each value against the
        others: the law of a live score), so the detectors start in the state the threshold table
        assumes (:func:`~app.drift.nulls.simulate_ph_null`).
        """
        c = self.config
        self.ranks = RankScores(rows, self._ph_columns(), seed=c.seed) if c.rank_scores else None
        self._new_bank(self.ranks.n if self.ranks is not None else len(rows))
        prime = self.ranks.own(rows, start) if self.ranks is not None else rows
        if len(prime):
            self.bank.update(prime, start=start)  # alarms while priming are discarded
        self.bank.reset_blocks()

    def _new_bank(self, n_null: int) -> None:
        c = self.config
        thr = {}
        if self._scan is not None and self._scan.windows:
            thr["shift"] = (math.inf if self.serially_dependent else
                            c.shift_threshold if c.shift_threshold is not None else self._scan.threshold)
        # long-run-variance factors: the bank divides those signals by sqrt(f) and widens their
        # PageHinkley threshold to match (app.drift.lrv)
        f = self.lrv_signals
        scales = {} if f is None else {s: math.sqrt(f[j]) for j, s in enumerate(self.signal_names) if f[j] > 1.0}
        self.bank = DetectorBank(self.signal_names, c.detector_specs(n_null), block=c.block,
                                 one_sided=ONE_SIDED, thresholds=thr, scales=scales)

    def _detector_input(self, z: np.ndarray, start: int) -> np.ndarray:
        return self.ranks.scores(z, start) if self.ranks is not None else z

    # ------------------------------------------------------------------ live
    def _observe_live(self, v, *, wm, norms, doc_ids, partitions, offsets) -> list[DriftAlert]:
        assert self.reference is not None and self.bank is not None
        c = self.config
        n = len(v)
        start = self.n_seen
        self._batch = (start, wm)
        # metadata of the whole batch; signals are appended segment by segment (same indexing)
        self._rids.extend(doc_ids if doc_ids is not None else [None] * n)
        self._rpart = np.concatenate([self._rpart, partitions if partitions is not None else np.full(n, -1)])
        self._roff = np.concatenate([self._roff, offsets if offsets is not None else np.full(n, -1)])
        alerts: list[DriftAlert] = []
        pos = 0
        while pos < n:
            # Segments end where a settling window ends (the null changes there) and are at most
            # `rescale_window` long, so a window opened inside a segment never ends inside it:
            # the signals of every event are computed with the null in force at that event,
            # whatever the batching.
            lim = min(n, pos + max(c.rescale_window, 1))
            if self._collect_from is not None:
                lim = min(lim, self._collect_end() - start + 1)
            if self._refit_at is not None and self._refit_at > start + pos:
                lim = min(lim, self._refit_at - start)  # the scan is fitted again after that event
            seg = slice(pos, lim)
            z = self.reference.signals(v[seg], None if norms is None else norms[seg], self._scan)
            bad = ~np.isfinite(v[seg]).all(axis=1)
            if bad.any():
                z[bad] = np.nan
                self.n_invalid += int(bad.sum())
            self._seg_start = start + pos
            if self._collect_from is not None and self._scan is not None:
                self._collect_units.append((self._scan.last_units, self._scan.last_keys))
            self._rz = np.concatenate([self._rz, z]) if len(self._rz) else z
            self.n_seen = start + lim
            alarms = self.bank.update(self._detector_input(z, start + pos), start + pos)
            for index, group in itertools.groupby(alarms, key=lambda a: a.index):
                group = list(group)
                self.n_alarms += len(group)
                for a in group:
                    self.alarms_by_signal[a.signal] = self.alarms_by_signal.get(a.signal, 0) + 1
                alerts += self._due(index - 1)
                alerts += self._on_alarms(group)
            # everything due up to the end of the segment happens before the null changes there
            alerts += self._due(start + lim - 1)
            if self._collect_from is not None and self._collect_end() == start + lim - 1:
                self._settle()
            if self._refit_at is not None:
                self._refit_vecs.append(v[seg][~bad])
                if self.n_seen >= self._refit_at:
                    self._refit_scan()
            pos = lim
        alerts += self._due(self.n_seen - 1)
        if wm is not None:
            self.watermark = int(wm[-1])

        keep = max(c.stats_window, c.prime_window, c.rescale_window)
        if len(self._rz) > keep:
            drop = len(self._rz) - keep
            self._rz = self._rz[drop:]
            del self._rids[:drop]
            self._rpart = self._rpart[drop:]
            self._roff = self._roff[drop:]
            self._rstart += drop
        if self.n_seen - self._last_save >= c.save_every:
            self.save()
        return alerts

    def _time_at(self, index: int) -> int | None:
        """Event time (ms) at event ``index`` of the current batch (earlier: the last known)."""
        start, wm = self._batch
        if wm is None:
            return self.watermark
        j = index - start
        t = self.watermark if j < 0 else int(wm[min(j, len(wm) - 1)])
        return None if t is None or t < 0 else t

    def _first_index(self, lo: int, hi: int, t_ms: float) -> int | None:
        """First event index in [lo, hi] of the current batch whose event time is >= ``t_ms``."""
        start, wm = self._batch
        if wm is None or hi < lo:
            return None
        a = max(lo - start, 0)
        b = hi - start + 1
        if a >= b:
            return None
        j = int(np.searchsorted(wm[a:b], t_ms, side="left"))
        return start + a + j if j < b - a else None

    def _when(self, since_index: int, since_time: int | None, events: int, seconds: float, upto: int) -> int | None:
        """First index <= ``upto`` at which ``events`` events and ``seconds`` of event time have passed.

        Evaluated at the end of every batch and before every alarm, so an index of an earlier batch
        was already looked at: if the time condition had held there, it would have been acted on.
        """
        at = since_index + events
        if at > upto:
            return None
        if seconds <= 0 or since_time is None:
            return at
        return self._first_index(at, upto, since_time + seconds * 1000)

    def _due(self, upto: int) -> list[DriftAlert]:
        """Alerts whose time has come by event ``upto``: a deferred FIRED, then CLEARED."""
        ep = self.episode
        if ep is None:
            return []
        c = self.config
        out = []
        if ep.pending is not None:
            at = self._when(ep.last_alert_index, ep.last_alert_time, c.cooldown_events, c.cooldown_s, upto)
            if at is not None:
                p, ep.pending = ep.pending, None
                out += self._fire(at, p["signals"], Severity(p["severity"]),
                                  [Trigger(**t) for t in p["triggers"]], p["detector"],
                                  note=f"change at event {p['index']}, reported after the cooldown")
        if ep.pending is None:
            at = self._when(ep.last_verdict, ep.last_verdict_time, c.clear_after, c.clear_after_s, upto)
            if at is not None:
                alert = self._make_alert(AlertKind.CLEARED, at, sorted(ep.signals, key=self._order), ep.severity,
                                         self._time_at(at))
                self.episode = None
                out.append(alert)
        return out

    def _collect_end(self) -> int:
        return self._collect_from + self.config.rescale_window - 1

    def _settle(self) -> None:
        """Make the ``rescale_window`` events after a verdict the detectors' new null.

        New rank-score samples and fresh detectors primed on them, and a re-centred ``shift`` scan
        (its running mean, moments and threshold from these events). Without this, a lasting change
        to another regime keeps the reference-calibrated detectors firing and the episode never
        clears. Reported statistics stay relative to the reference.
        """
        c = self.config
        lo = self._collect_from - self._rstart
        rows = self._rz[lo : lo + c.rescale_window]
        if self._scan is not None and self._collect_units:
            units = np.concatenate([u for u, _ in self._collect_units])[: c.rescale_window]
            keys = np.concatenate([k for _, k in self._collect_units])[: c.rescale_window]
            # rows still inside the scan's windows enter its history when they leave them
            older = max(len(units) - min(self._scan.wmax, self._scan.count), 0)
            if len(units) >= 8 and older >= 1:
                self._scan.recentre(units, keys, history=older)
        self._set_null(rows, self._collect_from)
        self._collect_from = None
        self._collect_units = []
        self.n_settled += 1
        if self.episode is not None:
            self.episode.settled = True

    def _on_alarms(self, group: list[Alarm]) -> list[DriftAlert]:
        """Handle the detector alarms raised at one event index."""
        c = self.config
        a = group[0]
        recent = self._recent_alarms
        recent.extend(group)
        while recent and recent[0].index <= a.index - c.coincidence:
            recent.popleft()
        if len({(x.signal, x.detector) for x in recent}) < c.k_required:
            return []
        i = a.index
        signals = sorted({x.signal for x in recent}, key=self._order)
        shifts = self._window_shift(i, signals)
        max_shift = float(np.nanmax(np.abs(shifts), initial=0.0)) if shifts.size else 0.0
        critical = len(signals) >= c.critical_signals or max_shift >= c.critical_shift
        severity = Severity.CRITICAL if critical else Severity.WARNING
        triggers = [Trigger(x.signal, x.detector, x.index) for x in recent]
        if self._collect_from is None and c.rescale_window > 0:
            self._collect_from = i + 1
            j = i + 1 - self._seg_start
            self._collect_units = ([(self._scan.last_units[j:], self._scan.last_keys[j:])]
                                   if self._scan is not None else [])
        ep = self.episode
        if ep is None:
            ep = self.episode = _Episode(
                episode_id=str(uuid.uuid5(_NS, f"{self._id_base()}\0{i}")),
                start=i, severity=severity, detector=a.detector,
            )
            self.n_episodes += 1
            self._verdict(ep, i, signals, triggers)
            return self._fire(i, signals, severity, triggers, a.detector, first=True)
        escalate = severity.rank > ep.severity.rank
        added = sorted(set(signals) - ep.signals, key=self._order)
        new_signal = bool(added) and i - ep.last_alert_index >= c.coincidence
        settled = ep.settled
        self._verdict(ep, i, signals, triggers)
        if not (escalate or new_signal or settled):
            return []
        if escalate:
            ep.severity = severity
        cooled = self._when(ep.last_alert_index, ep.last_alert_time, c.cooldown_events, c.cooldown_s, i) is not None
        if escalate or cooled:
            ep.pending = None
            why = ("severity escalated" if escalate else f"new signal {', '.join(added)}" if new_signal else
                   "a move away from the level the episode had settled at")
            return self._fire(i, signals, severity, triggers, a.detector, note=why)
        # a change during the cooldown: keep it (the latest wins) and report it when the cooldown ends
        ep.pending = {"index": i, "signals": signals, "severity": severity.value, "detector": a.detector,
                      "triggers": [asdict(t) for t in triggers]}
        return []

    def _verdict(self, ep: _Episode, i: int, signals, triggers) -> None:
        ep.last_verdict = i
        ep.last_verdict_time = self._time_at(i)
        ep.signals.update(signals)
        ep.triggers = (ep.triggers + [t for t in triggers if t not in ep.triggers])[-20:]

    def _fire(self, i: int, signals, severity: Severity, triggers, detector: str, note: str = "",
              first: bool = False) -> list[DriftAlert]:
        ep = self.episode
        assert ep is not None
        if not first:
            ep.seq += 1
        ep.last_alert_index = i
        ep.last_alert_time = self._time_at(i)
        ep.settled = False
        return [self._make_alert(AlertKind.FIRED, i, list(signals), severity, self._time_at(i),
                                 detector=detector, triggers=list(triggers), note=note)]

    # ------------------------------------------------------------------ alert building
    def _order(self, name: str) -> int:
        return self.signal_names.index(name) if name in self.signal_names else len(self.signal_names)

    def _id_base(self) -> str:
        return f"{self.key.fingerprint}\0{self.key.collection}\0{self.reference_id}"

    def _window(self, index: int) -> slice:
        lo = max(self._rstart, index - self.config.stats_window + 1)
        return slice(lo - self._rstart, index - self._rstart + 1)

    def _window_shift(self, index: int, signals: list[str]) -> np.ndarray:
        w = self._window(index)
        cols = [self._order(s) for s in signals]
        return _nanmean(self._rz[w][:, cols])

    def _make_alert(self, kind: AlertKind, index: int, signals: list[str], severity: Severity,
                    event_time: int | None, *, detector: str | None = None,
                    triggers: list[Trigger] | None = None, note: str = "") -> DriftAlert:
        ep = self.episode
        assert ep is not None and self.reference is not None
        if kind is AlertKind.CLEARED:
            ep.seq += 1
        w = self._window(index)
        window_start = self._rstart + w.start
        zz = self._rz[w]
        ref = self.reference
        zmean, zstd = _nanmean(zz), _nanstd(zz)
        counts = (~np.isnan(zz)).sum(axis=0)
        stats = [
            SignalStats(
                signal=name,
                reference_mean=float(ref.signal_mean[j]),
                reference_std=float(ref.signal_std[j]),
                current_mean=float(ref.signal_mean[j] + zmean[j] * ref.signal_std[j]),
                current_std=float(zstd[j] * ref.signal_std[j]),
                current_n=int(counts[j]),
                shift=float(zmean[j]),
            )
            for j, name in enumerate(ref.names)
        ]
        # offsets per partition in the window
        parts, offs = self._rpart[w], self._roff[w]
        ranges = []
        ok = (parts >= 0) & (offs >= 0)
        for p in np.unique(parts[ok]).tolist():
            o = offs[ok & (parts == p)]
            ranges.append(PartitionRange(int(p), int(o.min()), int(o.max())))
        # examples: the most extreme rows on the alert's signals
        ids = self._rids[w]
        cols = [self._order(s) for s in signals] or list(range(len(ref.names)))
        with np.errstate(invalid="ignore"):
            score = np.nan_to_num(np.abs(zz[:, cols]), nan=-1.0).max(axis=1) if len(zz) else np.empty(0)
        examples = []
        for j in np.argsort(-score, kind="stable").tolist():
            if ids[j] is not None and ids[j] not in examples:
                examples.append(str(ids[j]))
                if len(examples) >= self.config.max_examples:
                    break
        seq = ep.seq
        shifts = ", ".join(f"{s.signal} {s.shift:+.2f}sd" for s in stats if s.signal in signals) or "none"
        if kind is AlertKind.FIRED:
            why = f" ({note})" if note else ""
            msg = (f"Embedding drift {severity.value} on '{self.key.collection}' "
                   f"(model {self.key.fingerprint[:16]}): {detector} fired on {', '.join(signals)} at event "
                   f"{index}{why}; shift over the last {len(zz)} events: {shifts}.")
        else:
            msg = (f"Embedding drift episode on '{self.key.collection}' cleared at event {index}: "
                   f"no detector fired for {self.config.clear_after} events"
                   f"{' (' + note + ')' if note else ''}; current shift: "
                   + ", ".join(f"{s.signal} {s.shift:+.2f}sd" for s in stats) + ".")
        self.n_alerts += 1
        return DriftAlert(
            alert_id=str(uuid.uuid5(_NS, f"{self._id_base()}\0{ep.start}\0{seq}\0{kind.value}")),
            kind=kind,
            severity=severity,
            model_fingerprint=self.key.fingerprint,
            collection=self.key.collection,
            episode_id=ep.episode_id,
            sequence=seq,
            detector=detector or ep.detector,
            signals=list(signals),
            triggers=list(triggers if triggers is not None else ep.triggers),
            fired_at=int(round(self.clock() * 1000)),
            event_time=event_time,
            event_index=int(index),
            episode_start_index=ep.start,
            window_start_index=int(window_start),
            offsets=ranges,
            stats=stats,
            example_doc_ids=examples,
            events_observed=int(index) + 1,
            message=msg,
        )

    # ------------------------------------------------------------------ persistence
    def _load(self) -> None:
        try:
            state = read_state(self.path)
        except StateVersionError:
            # written by an incompatible version (other signals): start over with a new warm-up;
            # the file is replaced at the next save
            self.n_state_discarded = 1
            return
        if state is None:
            return
        arrays, meta = state
        if meta.get("fingerprint") != self.key.fingerprint or meta.get("collection") != self.key.collection:
            raise ValueError(f"{self.path} belongs to another key")
        self.n_seen = int(meta["n_seen"])
        self.reference_id = meta.get("reference_id", "")
        self.watermark = meta.get("watermark")
        cnt = meta.get("counters", {})
        self.n_alarms = cnt.get("alarms", 0)
        self.alarms_by_signal = dict(cnt.get("alarms_by_signal", {}))
        self.n_alerts = cnt.get("alerts", 0)
        self.n_episodes = cnt.get("episodes", 0)
        self.n_invalid = cnt.get("invalid", 0)
        self.n_settled = cnt.get("settled", 0)
        self._warm_target = max(int(meta.get("warm_target", self.config.warmup)), self.config.warmup)
        self.started_at = float(meta.get("started_at", 0.0))  # (states before it: any request is newer)
        if "ref_signal_mean" in arrays:
            ref = Reference.from_arrays(arrays)
            recent = np.asarray(arrays.get("recent_z", np.empty((0, len(ref.names)))), dtype=np.float64)
            recent_start = int(meta.get("recent_start", self.n_seen - len(recent)))
            self._install_reference(ref, recent, recent_start=recent_start)
            # long-run-variance factors (states saved before them: 1, the exchangeable nulls)
            if "lrv_signals" in arrays:
                self.lrv_signals = np.asarray(arrays["lrv_signals"], dtype=np.float64)
            if "lrv_windows" in arrays:
                self.lrv_windows = np.asarray(arrays["lrv_windows"], dtype=np.float64)
            if meta.get("serial_p") is not None:
                self.serial_p = float(meta["serial_p"])
                self.serially_dependent = bool(meta.get("serially_dependent", False))
            if "scan_null" in arrays and self._scan is not None:
                basis = self.reference.basis
                self._scan = basis.new_window(budget=self.config.shift_budget,
                                              null=basis.null_from_array(arrays["scan_null"]))
                # the level the threshold rule watched before the restart (its bank is rebuilt on it)
                self._scan.threshold = float(meta.get("scan_threshold", self._scan.threshold))
            if self._scan is not None and self.lrv_windows is not None:
                self._scan.set_lrv(self.lrv_windows)
            self.shift_refit = meta.get("shift_refit")
            if meta.get("refit_at") is not None and "refit_vectors" in arrays:
                self._refit_at = int(meta["refit_at"])
                self._refit_vecs = [np.asarray(arrays["refit_vectors"], dtype=np.float32)]
            # the null in force when the state was saved, and detectors re-primed on the recent
            # (live) signals scored against it, so a restart does not fire
            self.ranks = RankScores.from_arrays(arrays, "ranks_") if "ranks_columns" in arrays else None
            self._new_bank(self.ranks.n if self.ranks is not None else int(ref.n_std))
            if len(recent):
                self.bank.update(self._detector_input(recent, recent_start), recent_start)
                self.bank.reset_blocks()
            if meta.get("episode"):
                self.episode = _Episode.from_json(meta["episode"])
            if "queue_vectors" in arrays:
                qmeta = {name: arrays.get("queue_" + name) for name in ("norms", "partitions", "offsets")}
                qmeta["doc_ids"] = meta.get("queue_doc_ids")
                self._queue = [(arrays["queue_vectors"], qmeta, np.asarray(arrays["queue_wm"], dtype=np.int64))]
                self._queued = len(arrays["queue_vectors"])
        else:
            self._warm_count = int(meta.get("warm_count", 0))
            self._warm_norms_ok = bool(meta.get("warm_norms_ok", True))
            if meta.get("serial_p") is not None:
                self.serial_p = float(meta["serial_p"])
                self.serially_dependent = bool(meta.get("serially_dependent", False))
            if "warm_vectors" in arrays:
                self._warm_vecs = [arrays["warm_vectors"]]
                if "warm_norms" in arrays:
                    self._warm_norms = [arrays["warm_norms"]]
        self._last_save = self.n_seen
