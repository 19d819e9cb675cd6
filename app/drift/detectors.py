"""River change detectors run on block means of standardised signals.

Each signal gets its own River detector (one per :class:`DetectorSpec`). Detectors see the mean of
``block`` consecutive standardised values rather than every value: the mean of a few values is
closer to Gaussian (calibration transfers better between corpora), the Python cost per vector
drops by ``block``, and the detection delay grows by at most ``block - 1`` events (see DRIFT.md
for the measured trade-off).

A signal that is already a normalised scan statistic (``shift``: a maximum over windows of
U-statistics, strongly autocorrelated by construction) is not fed to a CUSUM: a *threshold rule*
watches it instead, at every event, and alarms when it crosses its calibrated threshold upwards
(one alarm per up-crossing).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from river import drift

__all__ = ["Alarm", "DetectorSpec", "DetectorBank", "DETECTOR_KINDS", "THRESHOLD_LABEL", "upcrossings"]

THRESHOLD_LABEL = "Threshold"
#: River's PageHinkley defaults (for a spec that leaves them out)
PH_DEFAULT_THRESHOLD, PH_DEFAULT_DELTA = 50.0, 0.005

DETECTOR_KINDS = {
    "page_hinkley": ("PageHinkley", drift.PageHinkley),
    "adwin": ("ADWIN", drift.ADWIN),
    "kswin": ("KSWIN", drift.KSWIN),
}


class Alarm(NamedTuple):
    """One detector firing: the event index that completed the block, the signal, the detector."""

    index: int
    signal: str
    detector: str


@dataclass(frozen=True)
class DetectorSpec:
    """Which River detector to build, and with which parameters.

    >>> spec = DetectorSpec("page_hinkley", {"threshold": 8.0, "delta": 0.1})
    >>> spec.label
    'PageHinkley'
    >>> type(spec.build()).__name__, spec.build().threshold
    ('PageHinkley', 8.0)
    """

    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in DETECTOR_KINDS:
            raise ValueError(f"unknown detector kind {self.kind!r}; choose from {sorted(DETECTOR_KINDS)}")

    @property
    def label(self) -> str:
        return DETECTOR_KINDS[self.kind][0]

    def build(self):
        return DETECTOR_KINDS[self.kind][1](**self.params)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DetectorSpec":
        return cls(d["kind"], dict(d.get("params", {})))


def upcrossings(values: np.ndarray, threshold: float, armed: bool = True) -> tuple[np.ndarray, bool]:
    """Positions where ``values`` (no NaN) rise above ``threshold``, and whether the rule is armed after.

    The rule is armed while the last value was <= ``threshold`` (``armed`` is the state before the
    first value).

    >>> upcrossings(np.array([0.0, 5.0, 6.0, 1.0, 7.0]), 4.0)
    (array([1, 4]), False)
    """
    above = np.asarray(values) > threshold
    if not len(above):
        return np.empty(0, dtype=np.int64), armed
    prev = np.concatenate([[not armed], above[:-1]])
    return np.nonzero(above & ~prev)[0], not bool(above[-1])


class DetectorBank:
    """One River detector per (signal, spec), fed with block means of standardised signals.

    ``one_sided`` names signals where only an increase is drift (PageHinkley gets ``mode="up"``).
    ``thresholds`` maps signals watched by a threshold rule instead (every event, no blocks, one
    alarm per up-crossing; see :func:`upcrossings`) to their thresholds.
    ``scales`` maps signals to ``s = sqrt(f)`` (``f``: their long-run-variance factor,
    :mod:`app.drift.lrv`): their values are divided by ``s``, their PageHinkley threshold multiplied
    by ``s`` and its ``delta`` divided by ``s`` - in the signal's own units, threshold x ``f`` and
    ``delta`` unchanged (DRIFT.md section 3).
    ``update(z, start)`` takes a batch of standardised signals ``z`` (n, n_signals) whose first row
    is global event ``start``; NaN entries (a signal missing for that event) are skipped. It returns
    the alarms in event order. A block is per signal: it completes on the ``block``-th valid value.

    Examples
    --------
    >>> rng = np.random.default_rng(7)
    >>> z = rng.normal(size=(4000, 2))
    >>> z[3000:, 1] += 1.0                      # signal "b" shifts by one sigma at event 3000
    >>> bank = DetectorBank(["a", "b"], [DetectorSpec("page_hinkley", {"threshold": 6.0, "delta": 0.1})], block=4)
    >>> alarms = bank.update(z, start=0)
    >>> [(a.index, a.signal) for a in alarms if a.index >= 3000][:1]
    [(3027, 'b')]
    """

    def __init__(self, signals: list[str] | tuple[str, ...], specs: list[DetectorSpec], *, block: int = 4,
                 one_sided=(), thresholds: dict[str, float] | None = None, scales: dict[str, float] | None = None):
        if block < 1:
            raise ValueError("block must be >= 1")
        self.signals = tuple(signals)
        self.specs = list(specs)
        self.block = int(block)
        self.one_sided = frozenset(one_sided)
        self.thresholds = {k: float(v) for k, v in (thresholds or {}).items() if k in self.signals}
        self.scales = {k: float(v) for k, v in (scales or {}).items() if k in self.signals and float(v) != 1.0}
        self._scale_cols = [j for j, s in enumerate(self.signals) if s in self.scales]
        self._scale_vals = np.array([self.scales[self.signals[j]] for j in self._scale_cols])
        self.reset()

    def _build(self, spec: DetectorSpec, signal: str):
        """The detector of ``spec`` for ``signal``.

        >>> spec = DetectorSpec("page_hinkley", {"threshold": 6.0, "delta": 0.25})
        >>> bank = DetectorBank(["a", "b"], [spec], scales={"b": 2.0})
        >>> [(d.threshold, d.delta) for d in (bank._build(spec, "a"), bank._build(spec, "b"))]
        [(6.0, 0.25), (12.0, 0.125)]
        """
        if spec.kind == "page_hinkley":
            params = dict(spec.params)
            s = self.scales.get(signal)
            if s is not None:
                params["threshold"] = params.get("threshold", PH_DEFAULT_THRESHOLD) * s
                params["delta"] = params.get("delta", PH_DEFAULT_DELTA) / s
            if signal in self.one_sided:
                params["mode"] = "up"
            if params != spec.params:
                return DetectorSpec(spec.kind, params).build()
        return spec.build()

    def reset(self) -> None:
        """Fresh detectors and no partial blocks."""
        self._detectors = [[] if s in self.thresholds else [self._build(spec, s) for spec in self.specs]
                           for s in self.signals]
        self._armed = {s: True for s in self.thresholds}
        self.n_updates = 0
        self.reset_blocks()

    def reset_blocks(self) -> None:
        """Drop partially filled blocks (the next value starts a new block for every signal)."""
        self._carry_vals = [np.empty(0) for _ in self.signals]
        self._carry_idx = [np.empty(0, dtype=np.int64) for _ in self.signals]

    def update(self, z: np.ndarray, start: int) -> list[Alarm]:
        z = np.asarray(z, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != len(self.signals):
            raise ValueError(f"expected (n, {len(self.signals)}) signals, got {z.shape}")
        if self._scale_cols:  # a copy: the caller's array is left as it was
            z = z.copy()
            z[:, self._scale_cols] = z[:, self._scale_cols] / self._scale_vals
        n = len(z)
        alarms: list[Alarm] = []
        if n == 0:
            return alarms
        nan_cols = np.isnan(z).any(axis=0).tolist()
        batch_idx = None
        # Signals without NaN in this batch whose partial blocks are equally long (the usual case)
        # are blocked together, as one matrix; the others one by one.
        groups: dict[int, list[int]] = {}
        for s, name in enumerate(self.signals):
            if name in self.thresholds:
                col = z[:, s]
                if nan_cols[s]:
                    pos = np.nonzero(~np.isnan(col))[0]
                    vals, idx = col[pos], pos.astype(np.int64) + start
                else:
                    if batch_idx is None:
                        batch_idx = np.arange(start, start + n, dtype=np.int64)
                    vals, idx = col, batch_idx
                hits, self._armed[name] = upcrossings(vals, self.thresholds[name], self._armed[name])
                alarms.extend(Alarm(int(idx[h]), name, THRESHOLD_LABEL) for h in hits)
                self.n_updates += len(vals)
            elif nan_cols[s]:
                col = z[:, s]
                pos = np.nonzero(~np.isnan(col))[0]
                self._feed([s], col[pos][:, None], pos.astype(np.int64) + start, alarms)
            else:
                groups.setdefault(len(self._carry_vals[s]), []).append(s)
        for cols in groups.values():
            if batch_idx is None:
                batch_idx = np.arange(start, start + n, dtype=np.int64)
            self._feed(cols, z[:, cols], batch_idx, alarms)
        alarms.sort(key=lambda a: a.index)
        return alarms

    def _feed(self, cols: list[int], vals: np.ndarray, idx: np.ndarray, alarms: list[Alarm]) -> None:
        """Block and feed the values ``vals`` (k, len(cols)) of signals ``cols`` (equal carries)."""
        m = self.block
        c0 = cols[0]
        if len(self._carry_vals[c0]):
            vals = np.concatenate([np.column_stack([self._carry_vals[c] for c in cols]), vals])
            idx = np.concatenate([self._carry_idx[c0], idx])
        nb = len(vals) // m
        rest_v, rest_i = vals[nb * m :], idx[nb * m :]
        for k, c in enumerate(cols):
            self._carry_vals[c] = rest_v[:, k].copy()
            self._carry_idx[c] = rest_i
        if nb == 0:
            return
        # ((v0 + v1) + v2) + v3 ...: the same bits for a block whatever the batching
        means = vals[0 : nb * m : m].copy()
        for j in range(1, m):
            means += vals[j : nb * m : m]
        if m > 1:
            means /= m
        ends = idx[m - 1 : nb * m : m].tolist()
        labels = [spec.label for spec in self.specs]
        for k, c in enumerate(cols):
            name = self.signals[c]
            xs = means[:, k].tolist()
            for det, label in zip(self._detectors[c], labels):
                upd = det.update
                for x, i in zip(xs, ends):
                    upd(x)
                    if det.drift_detected:
                        alarms.append(Alarm(i, name, label))
            self.n_updates += nb * len(self.specs)
