"""The drift monitor: vectors in, :class:`~app.drift.alert.DriftAlert` objects out.

One :class:`DriftMonitor` watches one key (model fingerprint + collection). Lifecycle:

1. **warm-up** - the first ``config.warmup`` vectors are buffered; no alerts. Then a
   :class:`~app.drift.reference.Reference` is learned, the detectors are primed on the held-out
   half of the warm-up, and the state is saved.
2. **live** - every batch is reduced to standardised signals, fed to one River detector per signal
   (:class:`~app.drift.detectors.DetectorBank`), and detector alarms are turned into alerts:

   * a *verdict* needs ``k_required`` distinct (signal, detector) alarms within ``coincidence``
     events (default 1: any calibrated detector);
   * the first verdict opens an *episode* and emits FIRED (sequence 0); later verdicts of the same
     episode emit FIRED again only after ``cooldown_events`` events **and** ``cooldown_s`` seconds,
     or at once when the severity escalates;
   * when no verdict has happened for ``clear_after`` events, CLEARED closes the episode.

   After a verdict the detectors adapt: the ``rescale_window`` events that follow it give each
   signal a new zero and unit, and fresh River detectors are primed on them. A lasting shift thus
   fires, then the stream is "stable again" at its new level and the episode clears (the CLEARED
   alert's stats show that level against the reference). :meth:`DriftMonitor.rebaseline` learns a
   new reference instead.
3. **persistence** - state (reference, counters, episode, the last ``prime_window`` standardised
   signals) is written to ``state_dir`` after warm-up, every ``save_every`` events and on
   :meth:`close`; a new monitor for the same key resumes from it without a new warm-up, and
   re-primes its detectors on the saved signals, so it does not fire on restart.
"""
from __future__ import annotations

import hashlib
import itertools
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .alert import AlertKind, DriftAlert, PartitionRange, Severity, SignalStats, Trigger
from .detectors import Alarm, DetectorBank, DetectorSpec
from .reference import (MonitorKey, Reference, StateVersionError, learn_reference, read_state, state_path,
                        write_state)
from .signals import SHIFT_POWER, SHIFT_WINDOWS

__all__ = ["DriftConfig", "DriftMonitor", "DEFAULT_DETECTORS", "DEFAULT_BLOCK", "ONE_SIDED"]

_NS = uuid.UUID("0b6f3f0e-6f64-5c7c-9a55-6d1f2e4a7c31")

# --- calibrated defaults ------------------------------------------------------------------------
# Calibration run (see DRIFT.md, "Calibration"):
#   python -m load.drift_eval --calibrate --out calib.json
# on Reuters R8 embedded with all-MiniLM-L6-v2 int8 (7674 docs), 8 resampled drift-free streams of
# 250 000 events, each with its own 4000-event warm-up; target 1 false alarm / 100k, safety x2, i.e.
# <= 0.5 raw alarms (any signal) per 100k events = 10 per 2M. First the `shift` threshold rule gets
# half of that: threshold 6.0 -> 4 up-crossings / 2M (5.75: 11). Then PageHinkley(delta=0.25,
# alpha=1) on block means of 4 of the other signals, counted together with `shift`: threshold 6.5 ->
# 6 alarms / 2M (6.0: 12); verified on 2M fresh events (other seeds): 7 alarms, 0.35 per 100k (95 %
# upper bound 0.66), 2 of them on `shift`.
# alpha=1: River's default fading factor (1 - 1e-4) makes the CUSUM sum a leaky process whose
# swings exceed any useful threshold on long streams (calibrated threshold too high; DRIFT.md).
DEFAULT_BLOCK = 4
DEFAULT_DETECTORS: tuple[DetectorSpec, ...] = (
    DetectorSpec("page_hinkley", {"min_instances": 30, "delta": 0.25, "threshold": 6.5, "alpha": 1.0}),
)
# Threshold of the `shift` scan (max over windows of normalised U-statistics; DRIFT.md section 2),
# watched by an up-crossing rule rather than PageHinkley (same calibration run as above).
DEFAULT_SHIFT_THRESHOLD = 6.0
# Signals where only an increase means drift (PageHinkley would run with mode="up" on them; `shift`
# is one-sided by construction and watched by its threshold rule).
ONE_SIDED = frozenset({"shift"})


@dataclass(frozen=True)
class DriftConfig:
    """Tuning knobs of :class:`DriftMonitor` (defaults are the calibrated ones)."""

    warmup: int = 4000
    fit_fraction: float = 0.75
    n_axes: int = 2
    n_whiten: int = 32
    n_clusters: int = 8
    shift_windows: tuple[int, ...] = SHIFT_WINDOWS
    shift_shrink: float = 0.01
    shift_power: float = SHIFT_POWER
    shift_threshold: float = DEFAULT_SHIFT_THRESHOLD
    seed: int = 0
    block: int = DEFAULT_BLOCK
    detectors: tuple[DetectorSpec, ...] = DEFAULT_DETECTORS
    k_required: int = 1
    coincidence: int = 500
    critical_signals: int = 2
    critical_shift: float = 1.0
    cooldown_events: int = 1000
    cooldown_s: float = 60.0
    clear_after: int = 2000
    rescale_window: int = 500
    stats_window: int = 200
    prime_window: int = 1000
    max_examples: int = 5
    save_every: int = 10_000

    def __post_init__(self) -> None:
        if self.warmup < 20:
            raise ValueError("warmup must be >= 20")
        if self.k_required < 1 or self.block < 1 or self.clear_after < 1:
            raise ValueError("k_required, block and clear_after must be >= 1")
        object.__setattr__(self, "detectors", tuple(self.detectors))
        object.__setattr__(self, "shift_windows", tuple(int(w) for w in self.shift_windows))

    def reference_kwargs(self) -> dict:
        """Arguments of :func:`~app.drift.reference.learn_reference` taken from this config."""
        return {"fit_fraction": self.fit_fraction, "n_axes": self.n_axes, "n_whiten": self.n_whiten,
                "n_clusters": self.n_clusters, "windows": self.shift_windows, "shrink": self.shift_shrink,
                "power": self.shift_power, "seed": self.seed}

    @property
    def thresholds(self) -> dict[str, float]:
        """Signals watched by a threshold rule instead of the detectors (see detectors.py)."""
        return {"shift": self.shift_threshold}

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
    last_alert_index: int = 0
    last_alert_time: float = 0.0

    def to_json(self) -> dict:
        return {
            "episode_id": self.episode_id,
            "start": self.start,
            "severity": self.severity.value,
            "detector": self.detector,
            "signals": sorted(self.signals),
            "triggers": [asdict(t) for t in self.triggers],
            "seq": self.seq,
            "last_verdict": self.last_verdict,
            "last_alert_index": self.last_alert_index,
            "last_alert_time": self.last_alert_time,
        }

    @classmethod
    def from_json(cls, d: dict) -> "_Episode":
        return cls(
            episode_id=d["episode_id"],
            start=d["start"],
            severity=Severity(d["severity"]),
            detector=d["detector"],
            signals=set(d["signals"]),
            triggers=[Trigger(**t) for t in d["triggers"]],
            seq=d["seq"],
            last_verdict=d["last_verdict"],
            last_alert_index=d["last_alert_index"],
            last_alert_time=d["last_alert_time"],
        )


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
        :class:`DriftConfig`; the defaults are calibrated (see DRIFT.md).
    clock
        Wall clock in seconds (injectable for tests); used for ``fired_at`` and ``cooldown_s``.

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
    [('FIRED', 6023, 'CRITICAL', ['nearest', 'shift']),
     ('CLEARED', 8299, 'CRITICAL', ['centroid', 'axis2', 'mahal', 'nearest', 'shift'])]

    The first alert opens the episode; two signals agree at once, so it is CRITICAL (with one, it
    would be a WARNING, escalated to CRITICAL as soon as a second signal agrees); the detectors then
    re-scale to the new mix, which is stable, and the episode clears 2000 events after the last
    detector alarm. Alerts are Avro-encodable and keyed by
    ``fingerprint/collection``:

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
    ):
        self.key = MonitorKey(*key)
        self.state_dir = Path(state_dir)
        self.config = config or DriftConfig()
        self.clock = clock
        self.path = state_path(self.state_dir, self.key)
        self._reset_all()
        self._load()

    # ------------------------------------------------------------------ state
    def _reset_all(self) -> None:
        self.n_seen = 0
        self.reference: Reference | None = None
        self.reference_id = ""
        self.bank: DetectorBank | None = None
        self._warm_vecs: list[np.ndarray] = []
        self._warm_norms: list[np.ndarray] = []
        self._warm_count = 0
        self._warm_norms_ok = True
        self._rz = np.empty((0, 0))
        self._rids: list[str | None] = []
        self._rpart = np.empty(0, dtype=np.int64)
        self._roff = np.empty(0, dtype=np.int64)
        self._rstart = 0
        self._recent_alarms: deque[Alarm] = deque()
        # Detector input = (z - scale_mean) / scale_std: identity until a verdict, then re-estimated
        # on the `rescale_window` events that follow it (see _rescale).
        self._scale_mean: np.ndarray | None = None
        self._scale_std: np.ndarray | None = None
        self._collect_from: int | None = None
        self.episode: _Episode | None = None
        self.n_alarms = 0
        self.n_alerts = 0
        self.n_episodes = 0
        self.n_invalid = 0
        self.n_state_discarded = 0
        self._last_save = 0

    @property
    def warming_up(self) -> bool:
        return self.reference is None

    @property
    def signal_names(self) -> tuple[str, ...]:
        return self.reference.names if self.reference is not None else ()

    def status(self) -> dict:
        """Counters for metrics/health endpoints."""
        return {
            "key": f"{self.key.fingerprint}/{self.key.collection}",
            "events_observed": self.n_seen,
            "warming_up": self.warming_up,
            "warmup_progress": self._warm_count if self.warming_up else self.config.warmup,
            "signals": list(self.signal_names),
            "episode_active": self.episode is not None,
            "detector_alarms": self.n_alarms,
            "alerts": self.n_alerts,
            "episodes": self.n_episodes,
            "invalid_vectors": self.n_invalid,
            "state_discarded": self.n_state_discarded,
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

        ``norms`` are the pre-normalisation norms (n,), ``doc_ids`` / ``partitions`` / ``offsets`` /
        ``event_times_ms`` per-vector metadata used only to describe alerts. Rows with non-finite
        values are counted (``status()["invalid_vectors"]``) and skipped by the detectors.
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
        alerts: list[DriftAlert] = []
        if self.reference is None:
            take = min(self.config.warmup - self._warm_count, n)
            self._warm_add(v[:take], None if meta["norms"] is None else meta["norms"][:take])
            self.n_seen += take
            if self._warm_count >= self.config.warmup:
                self._finish_warmup()
            if take == n:
                return alerts
            v = v[take:]
            meta = {k: None if a is None else a[take:] for k, a in meta.items()}
        alerts += self._observe_live(v, **meta)
        return alerts

    def save(self) -> Path:
        """Write the state file now (atomic); returns its path."""
        arrays: dict[str, np.ndarray] = {}
        meta = {
            "fingerprint": self.key.fingerprint,
            "collection": self.key.collection,
            "n_seen": self.n_seen,
            "reference_id": self.reference_id,
            "counters": {
                "alarms": self.n_alarms,
                "alerts": self.n_alerts,
                "episodes": self.n_episodes,
                "invalid": self.n_invalid,
            },
            "episode": None if self.episode is None else self.episode.to_json(),
            "config": self.config.to_dict(),
            "saved_at": self.clock(),
        }
        if self.reference is not None:
            arrays.update(self.reference.to_arrays())
            arrays["recent_z"] = self._rz[-self.config.prime_window :]
            meta["recent_start"] = self.n_seen - len(arrays["recent_z"])
            meta["collect_from"] = self._collect_from
            if self._scale_mean is not None:
                arrays["scale_mean"], arrays["scale_std"] = self._scale_mean, self._scale_std
        else:
            meta["warm_count"] = self._warm_count
            meta["warm_norms_ok"] = self._warm_norms_ok
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

    def rebaseline(self) -> list[DriftAlert]:
        """Forget the reference and learn a new one from the next ``warmup`` vectors.

        Closes an open episode with a CLEARED alert (returned). The event counter keeps running.
        """
        alerts = []
        if self.episode is not None:
            last = self.n_seen - 1
            alerts.append(self._make_alert(AlertKind.CLEARED, last, [], self.episode.severity, None,
                                           note="reference re-learned (rebaseline)"))
            self.episode = None
        n_seen, counters = self.n_seen, (self.n_alarms, self.n_alerts, self.n_episodes, self.n_invalid)
        self._reset_all()
        self.n_seen = n_seen
        self.n_alarms, self.n_alerts, self.n_episodes, self.n_invalid = counters
        self.save()
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
        ref, z_hold = learn_reference(vecs, norms, **c.reference_kwargs())
        self._warm_vecs, self._warm_norms = [], []
        # content hash: the same warm-up gives the same reference id, hence the same alert ids
        h = hashlib.sha256()
        for arr in ref.to_arrays().values():
            h.update(np.ascontiguousarray(arr).tobytes())
        self.reference_id = h.hexdigest()[:32]
        self._install_reference(ref, z_hold, recent_start=self.n_seen - len(z_hold))
        self.save()

    def _install_reference(self, ref: Reference, prime_z: np.ndarray, recent_start: int) -> None:
        self.reference = ref
        self._shift_state = ref.new_window()  # `shift` restarts empty (NaN for min(shift_windows) - 1 events)
        self.bank = DetectorBank(ref.names, list(self.config.detectors), block=self.config.block,
                                 one_sided=ONE_SIDED, thresholds=self.config.thresholds)
        if len(prime_z):
            self.bank.update(self._scaled(prime_z), start=recent_start)  # alarms while priming are discarded
        self.bank.reset_blocks()
        self._rz = np.asarray(prime_z, dtype=np.float64)
        self._rids = [None] * len(prime_z)
        self._rpart = np.full(len(prime_z), -1, dtype=np.int64)
        self._roff = np.full(len(prime_z), -1, dtype=np.int64)
        self._rstart = recent_start

    # ------------------------------------------------------------------ live
    def _observe_live(self, v, *, norms, doc_ids, partitions, offsets, times) -> list[DriftAlert]:
        assert self.reference is not None and self.bank is not None
        n = len(v)
        start = self.n_seen
        z = self.reference.signals(v, norms, self._shift_state)
        bad = ~np.isfinite(v).all(axis=1)
        if bad.any():
            z[bad] = np.nan
            self.n_invalid += int(bad.sum())
        # recent buffers (trimmed after this batch is processed)
        self._rz = np.concatenate([self._rz, z]) if len(self._rz) else z
        self._rids.extend(doc_ids if doc_ids is not None else [None] * n)
        self._rpart = np.concatenate([self._rpart, partitions if partitions is not None else np.full(n, -1)])
        self._roff = np.concatenate([self._roff, offsets if offsets is not None else np.full(n, -1)])

        self.n_seen += n
        alerts: list[DriftAlert] = []
        pos = 0
        while pos < n:
            # Feed the detectors up to the end of a pending re-scaling window (or the batch end).
            lim = n if self._collect_from is None else min(n, self._collect_end() - start + 1)
            alarms = self.bank.update(self._scaled(z[pos:lim]), start + pos)
            for index, group in itertools.groupby(alarms, key=lambda a: a.index):
                if self._collect_from is not None and index > self._collect_end():
                    break  # the detectors are rebuilt at the window's end; later alarms are void
                group = list(group)
                self.n_alarms += len(group)
                alerts += self._maybe_clear(index, times, start)
                alerts += self._on_alarms(group, times, start)
            if self._collect_from is not None and self._collect_end() < start + lim:
                lim = self._collect_end() - start + 1
                self._rescale()
            pos = lim
        alerts += self._maybe_clear(self.n_seen - 1, times, start)

        keep = max(self.config.stats_window, self.config.prime_window, self.config.rescale_window)
        if len(self._rz) > keep:
            drop = len(self._rz) - keep
            self._rz = self._rz[drop:]
            del self._rids[:drop]
            self._rpart = self._rpart[drop:]
            self._roff = self._roff[drop:]
            self._rstart += drop
        if self.n_seen - self._last_save >= self.config.save_every:
            self.save()
        return alerts

    def _scaled(self, z: np.ndarray) -> np.ndarray:
        if self._scale_mean is None:
            return z
        return (z - self._scale_mean) / self._scale_std

    def _collect_end(self) -> int:
        return self._collect_from + self.config.rescale_window - 1

    def _rescale(self) -> None:
        """Adapt the detectors to the regime after a verdict.

        The mean and spread of each signal over the ``rescale_window`` events after the verdict
        become the detectors' new zero and unit, and fresh detectors are primed on those events.
        Without this, a lasting change to a regime noisier than the reference (another domain,
        boilerplate) keeps the reference-calibrated detectors firing, and the episode never clears.
        Reported statistics stay relative to the reference.
        """
        lo = self._collect_from - self._rstart
        rows = self._rz[lo : lo + self.config.rescale_window]
        mean, std = _nanmean(rows), _nanstd(rows)
        ok = np.isfinite(mean) & np.isfinite(std)
        old_mean = self._scale_mean if self._scale_mean is not None else np.zeros(rows.shape[1])
        old_std = self._scale_std if self._scale_std is not None else np.ones(rows.shape[1])
        self._scale_mean = np.where(ok, mean, old_mean)
        self._scale_std = np.where(ok, np.maximum(std, 0.1), old_std)
        self.bank.reset()
        self.bank.update(self._scaled(rows), self._collect_from)  # priming: alarms discarded
        self.bank.reset_blocks()
        self._collect_from = None

    def _maybe_clear(self, index: int, times, batch_start: int) -> list[DriftAlert]:
        ep = self.episode
        if ep is None or index - ep.last_verdict < self.config.clear_after:
            return []
        at = ep.last_verdict + self.config.clear_after
        alert = self._make_alert(AlertKind.CLEARED, at, sorted(ep.signals, key=self._order), ep.severity,
                                 self._time_at(at, times, batch_start))
        self.episode = None
        return [alert]

    def _on_alarms(self, group: list[Alarm], times, batch_start: int) -> list[DriftAlert]:
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
        now = self.clock()
        triggers = [Trigger(x.signal, x.detector, x.index) for x in recent]
        ep = self.episode
        if ep is None:
            ep = self.episode = _Episode(
                episode_id=str(uuid.uuid5(_NS, f"{self._id_base()}\0{i}")),
                start=i, severity=severity, detector=a.detector,
            )
            self.n_episodes += 1
            emit = True
        else:
            escalate = severity.rank > ep.severity.rank
            cooled = i - ep.last_alert_index >= c.cooldown_events and now - ep.last_alert_time >= c.cooldown_s
            emit = escalate or cooled
            if emit:
                ep.seq += 1
                if escalate:
                    ep.severity = severity
        if self._collect_from is None and c.rescale_window > 0:
            self._collect_from = i + 1
        ep.last_verdict = i
        ep.signals.update(signals)
        ep.triggers = (ep.triggers + [t for t in triggers if t not in ep.triggers])[-20:]
        if not emit:
            return []
        ep.last_alert_index = i
        ep.last_alert_time = now
        alert = self._make_alert(AlertKind.FIRED, i, signals, severity, self._time_at(i, times, batch_start),
                                 detector=a.detector, triggers=triggers)
        return [alert]

    # ------------------------------------------------------------------ alert building
    def _order(self, name: str) -> int:
        return self.signal_names.index(name) if name in self.signal_names else len(self.signal_names)

    def _id_base(self) -> str:
        return f"{self.key.fingerprint}\0{self.key.collection}\0{self.reference_id}"

    @staticmethod
    def _time_at(index: int, times, batch_start: int) -> int | None:
        if times is None:
            return None
        j = index - batch_start
        return int(times[j]) if 0 <= j < len(times) else None

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
            msg = (f"Embedding drift {severity.value} on '{self.key.collection}' "
                   f"(model {self.key.fingerprint[:16]}): {detector} fired on {', '.join(signals)} at event "
                   f"{index}; shift over the last {len(zz)} events: {shifts}.")
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
            events_observed=self.n_seen,
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
        cnt = meta.get("counters", {})
        self.n_alarms = cnt.get("alarms", 0)
        self.n_alerts = cnt.get("alerts", 0)
        self.n_episodes = cnt.get("episodes", 0)
        self.n_invalid = cnt.get("invalid", 0)
        if "ref_signal_mean" in arrays:
            ref = Reference.from_arrays(arrays)
            recent = np.asarray(arrays.get("recent_z", np.empty((0, len(ref.names)))), dtype=np.float64)
            if "scale_mean" in arrays:
                self._scale_mean, self._scale_std = arrays["scale_mean"], arrays["scale_std"]
            self._install_reference(ref, recent, recent_start=int(meta.get("recent_start", self.n_seen - len(recent))))
            collect_from = meta.get("collect_from")
            if collect_from is not None and collect_from >= self._rstart:
                self._collect_from = int(collect_from)  # resume the re-scaling window
            if meta.get("episode"):
                self.episode = _Episode.from_json(meta["episode"])
        else:
            self._warm_count = int(meta.get("warm_count", 0))
            self._warm_norms_ok = bool(meta.get("warm_norms_ok", True))
            if "warm_vectors" in arrays:
                self._warm_vecs = [arrays["warm_vectors"]]
                if "warm_norms" in arrays:
                    self._warm_norms = [arrays["warm_norms"]]
        self._last_save = self.n_seen
