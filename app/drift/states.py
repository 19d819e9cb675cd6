"""The drift monitors' state files, seen from outside a worker: what each one watches, and requests
to learn a new reference.

A worker keeps one state file per watched key (model fingerprint + collection) under
``<EMBEDSTREAM_DATA_DIR>/drift/`` (:func:`~app.drift.reference.state_path`). :func:`list_states`
reads what they say without loading a monitor; :func:`request_relearn` leaves a *relearn request*
beside a state file: "learn a reference from the events after this time". The worker's drift stage
looks at it before every batch (one ``stat``) and, when it is newer than the start of the monitor's
own warm-up, calls :meth:`~app.drift.DriftMonitor.rebaseline`: an open episode is closed with a
CLEARED alert and a new warm-up starts with the next event. A stopped worker does it when it
starts. The request is a file, not a change to the state file, because a running worker rewrites
its state file from memory (every 10 000 events and on shutdown): an edit to it would be lost. It
is not removed when taken: several workers that share a data directory each take it once (the
time of the monitor's warm-up start is in its state).

>>> import tempfile
>>> from app.drift.reference import MonitorKey
>>> d = tempfile.mkdtemp()
>>> key = MonitorKey("all-MiniLM-L6-v2:int8:abc", "docs")
>>> request_relearn(d, key, "new product line").name.endswith(".relearn")
True
>>> req = pending_relearn(d, key)
>>> req["reason"], req["requested_at"] > 0
('new product line', True)
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .reference import STATE_VERSION, MonitorKey, read_meta, state_path

__all__ = ["StateInfo", "list_states", "newer_request", "pending_relearn", "relearn_path", "request_relearn"]


def relearn_path(state_dir: Path | str, key: MonitorKey) -> Path:
    """Where a relearn request for ``key`` is left: beside its state file."""
    return state_path(Path(state_dir), key).with_suffix(".relearn")


def request_relearn(state_dir: Path | str, key: MonitorKey, reason: str = "") -> Path:
    """Ask the worker watching ``key`` to learn a new reference (atomic; a second request before it
    is taken replaces the first). Returns the request's path."""
    path = relearn_path(state_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"fingerprint": key.fingerprint, "collection": key.collection, "reason": reason,
                               "requested_at": time.time()}))
    os.replace(tmp, path)
    return path


def pending_relearn(state_dir: Path | str, key: MonitorKey) -> dict[str, Any] | None:
    """The latest request for ``key`` (None if there is none): ``reason`` and ``requested_at``
    (seconds since the epoch; a monitor whose warm-up started later has already satisfied it). An
    unreadable request file is still a request, made when the file was written."""
    path = relearn_path(state_dir, key)
    try:
        text, mtime = path.read_text(), path.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        req = json.loads(text)
    except ValueError:
        req = None
    if not isinstance(req, dict):
        req = {}
    try:
        at = float(req.get("requested_at", mtime))
    except (TypeError, ValueError):
        at = mtime
    return {**req, "reason": str(req.get("reason") or ""), "requested_at": at}


def newer_request(state_dir: Path | str, key: MonitorKey, started_at: float | None) -> dict[str, Any] | None:
    """The request for ``key`` if it is newer than a warm-up that started at ``started_at`` (None:
    no request, or that warm-up already satisfies it)."""
    req = pending_relearn(state_dir, key)
    return req if req is not None and req["requested_at"] > float(started_at or 0.0) else None


@dataclass(frozen=True)
class StateInfo:
    """What one state file says (read without loading a monitor)."""

    path: Path
    fingerprint: str
    collection: str
    #: events the monitor has seen, warm-up included
    events: int
    warming_up: bool
    #: warm-up: events collected and events it takes (extended for a bursty collection)
    warmup_progress: int
    warmup: int | None
    #: the warm-up's test of serial independence: p-value and verdict (None: not done yet)
    serial_p: float | None
    serially_dependent: bool | None
    episode_open: bool
    thresholds: dict[str, float]
    reference_id: str
    saved_at: float | None
    #: a relearn request newer than this monitor's warm-up start: not taken yet
    relearn_requested: bool
    #: set when the file cannot be used (another state version, unreadable): the worker starts a
    #: new warm-up for it
    error: str | None = None
    #: the `shift` scan's second fit (DriftConfig.shift_refit): None (none planned), "pending"
    #: (at event ``shift_refit_at``), "done", "skipped" (an episode was open)
    shift_refit: str | None = None
    shift_refit_at: int | None = None

    @property
    def key(self) -> MonitorKey:
        return MonitorKey(self.fingerprint, self.collection)

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["path"] = str(self.path)
        return d


def list_states(state_dir: Path | str) -> list[StateInfo]:
    """Every drift state file under ``state_dir``, by collection then fingerprint."""
    out = []
    for path in sorted(Path(state_dir).glob("drift-*.npz")):
        try:
            meta, names = read_meta(path)
        except (OSError, ValueError, KeyError) as exc:
            out.append(StateInfo(path, "?", "?", 0, True, 0, None, None, None, False, {}, "", None, False,
                                 error=f"unreadable: {exc}"))
            continue
        key = MonitorKey(str(meta.get("fingerprint", "?")), str(meta.get("collection", "?")))
        cfg = meta.get("config") or {}
        warmup = meta.get("warm_target") or cfg.get("warmup")
        warming = "ref_signal_mean" not in names
        dependent = meta.get("serially_dependent")
        error = None
        if meta.get("version") != STATE_VERSION:
            error = f"state version {meta.get('version')}, this release reads {STATE_VERSION}: a new warm-up starts"
        out.append(StateInfo(
            path=path, fingerprint=key.fingerprint, collection=key.collection, events=int(meta.get("n_seen", 0)),
            warming_up=warming,
            warmup_progress=int(meta.get("warm_count", 0)) if warming else int(warmup or 0),
            warmup=None if warmup is None else int(warmup),
            serial_p=None if meta.get("serial_p") is None else float(meta["serial_p"]),
            serially_dependent=None if dependent is None else bool(dependent),
            episode_open=bool(meta.get("episode")), thresholds=dict(meta.get("thresholds") or {}),
            reference_id=str(meta.get("reference_id", "")), saved_at=meta.get("saved_at"),
            relearn_requested=newer_request(state_dir, key, meta.get("started_at")) is not None, error=error,
            shift_refit=meta.get("shift_refit"), shift_refit_at=meta.get("refit_at")))
    return sorted(out, key=lambda s: (s.collection, s.fingerprint))
