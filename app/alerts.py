"""Drift alerts on Kafka: the worker-side drift step, wire format and human formatting.

* :class:`DriftStage` feeds one vector per applied event of a processed batch to the
  :class:`~app.drift.DriftMonitor` of the store's fingerprint and collection (the mean of the
  event's chunk vectors, newly encoded or from the embedding cache: :func:`event_vectors`), and
  returns the alerts to publish.
* On the alerts topic an alert is keyed ``<fingerprint>/<collection>`` and its value is the
  ``DriftAlert`` record (``schemas/drift_alert.avsc``) in Avro single-object encoding
  (``C3 01`` + CRC-64-AVRO fingerprint + body), like change events, so any consumer with
  the schema file can decode it.
* Schema evolution: FIRED and CLEARED alerts are written with schema version 1 (the one released
  before ENCODER_CHANGED existed), so a consumer that only knows version 1 keeps decoding them and
  only skips ENCODER_CHANGED records (which its decoder rejects as an unknown schema); this decoder
  knows both versions and resolves version-1 records to the current one.
"""
from __future__ import annotations

import functools
import io
import logging
import weakref
from datetime import datetime, timezone
from pathlib import Path

import fastavro
import numpy as np

from app.drift import DriftAlert, DriftConfig, DriftMonitor
from app.drift.alert import alert_schema, alert_schema_v1, writer_schema
from app.drift.canary import EncoderCanary, encoder_changed_alert
from app.drift.variants import host_variant_offsets
from app.events import SINGLE_OBJECT_MAGIC, DecodeError, schema_fingerprint

log = logging.getLogger(__name__)


def _ref(obj):
    """A weak reference to ``obj`` (an ONNX session), so that seeing a new session is not fooled by
    an address reused after the old one was freed (``id()`` can be); a constant for None."""
    return (lambda: None) if obj is None else weakref.ref(obj)


def encode_alert_message(alert: DriftAlert) -> bytes:
    """Single-object encoding with the oldest schema version that carries the alert."""
    schema = writer_schema(alert)
    buf = io.BytesIO()
    buf.write(SINGLE_OBJECT_MAGIC + schema_fingerprint(schema))
    fastavro.schemaless_writer(buf, schema, alert.to_record())  # v1 ignores the (None) canary key
    return buf.getvalue()


@functools.cache
def _alert_writers() -> dict[bytes, dict]:
    """The writer schemas this release decodes, by fingerprint (built once)."""
    return {schema_fingerprint(s): s for s in (alert_schema(), alert_schema_v1())}


def decode_alert_message(value: bytes) -> DriftAlert:
    """Decode a record written with either schema version (resolved to the current one)."""
    writer = _alert_writers().get(value[2:10]) if value[:2] == SINGLE_OBJECT_MAGIC else None
    if writer is None:
        raise DecodeError("unknown-alert-format", "not a single-object encoded DriftAlert of a known schema")
    return DriftAlert.from_record(fastavro.schemaless_reader(io.BytesIO(value[10:]), writer, alert_schema()))


def format_alert(a: DriftAlert) -> str:
    """A few readable lines for a terminal."""
    when = datetime.fromtimestamp(a.fired_at / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    head = f"[{when}] {a.kind.value:7s} {a.severity.value:8s} {a.collection} ({a.model_fingerprint})"
    lines = [head, f"    {a.message}" if a.message else None,
             f"    detector {a.detector} on {', '.join(a.signals)}; episode {a.episode_id} #{a.sequence}; "
             f"event {a.event_index:,} of {a.events_observed:,}"]
    width = max([10, *(len(s.signal) for s in a.stats)])
    for s in a.stats:
        lines.append(f"    {s.signal:{width}s} reference {s.reference_mean:+.3f}±{s.reference_std:.3f}  "
                     f"current {s.current_mean:+.3f}±{s.current_std:.3f} (n={s.current_n}, shift {s.shift:+.2f})")
    if a.offsets:
        lines.append("    offsets " + ", ".join(f"p{r.partition}:{r.first_offset}-{r.last_offset}" for r in a.offsets))
    if a.example_doc_ids:
        lines.append("    e.g. " + ", ".join(a.example_doc_ids))
    if a.canary is not None:
        c = a.canary
        lines.append(f"    canary: worst cosine {c.worst_cosine:.7f} (mean {c.mean_cosine:.7f}), max |diff| "
                     f"{c.max_abs_diff:.2e}, tolerance {c.tolerance:.0e}/{c.abs_tolerance:.0e}, {c.texts} texts, "
                     f"{c.reference} reference on {c.provider} ({c.reason})")
    return "\n".join(x for x in lines if x)


def event_vectors(vectors: np.ndarray, norms: np.ndarray, records: list) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """One row per event: ``(vectors, norms, first)``, from a batch's chunk rows in stream order.

    ``records[i]`` is the event (Kafka record) of chunk row ``i``; an event's chunks are consecutive
    rows. An event's vector is the mean of its chunks' unit vectors, renormalised, its norm the mean
    of their norms; ``first`` the index of each event's first row (for its metadata).

    The drift monitor's nulls assume that a drift-free stream is exchangeable. The chunks of one
    document are not: they share its topic and, by 32 tokens, their text. Fed chunk by chunk, i.i.d.
    streams of Reuters documents (one in ten has more than one chunk) gave 15.5 false FIRED per 100k
    chunks, nearly all from the ``shift`` scan; fed one vector per document, none
    (``python -m load.drift_chunks --part tune``; DRIFT.md section 3).

    >>> a, b = object(), object()
    >>> v = np.array([[1, 0], [0, 1], [1, 0]], dtype=np.float32)
    >>> ev, nr, first = event_vectors(v, np.array([2.0, 4.0, 5.0]), [a, a, b])
    >>> np.round(ev.astype(float), 4).tolist(), nr.tolist(), first
    ([[0.7071, 0.7071], [1.0, 0.0]], [3.0, 5.0], [0, 2])
    """
    first = [i for i, r in enumerate(records) if i == 0 or r is not records[i - 1]]
    if len(first) == len(records):
        return vectors, norms, first
    at = np.asarray(first)
    size = np.diff(np.append(at, len(records)))
    mean = np.asarray(vectors[at], dtype=np.float64)
    for k in np.nonzero(size > 1)[0]:  # a loop over the multi-chunk events: np.add.reduceat is slower here
        mean[k] = vectors[at[k] : at[k] + size[k]].sum(axis=0, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):  # a zero mean stays NaN: counted invalid by the monitor
        mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    return mean.astype(np.float32), np.add.reduceat(np.asarray(norms, dtype=np.float64), at) / size, first


def _variant_loader(encoder):
    """Loads another variant of ``encoder``'s model on the same device (to record this host's
    variant means, :func:`app.drift.variants.host_variant_offsets`)."""
    def load(variant: str):
        from app.encoder import Encoder

        device = "cuda" if getattr(encoder, "provider", "") == "CUDAExecutionProvider" else "cpu"
        return Encoder.load(variant=variant, model_dir=encoder.model_dir, device=device)

    return load


class DriftStage:
    """The worker's drift step for one fingerprint/collection (state under ``state_dir``).

    With an ``encoder``, it also runs the encoder canary (:mod:`app.drift.canary`): at construction,
    every ``canary_every`` observed batches, and after a model reload (:meth:`encoder_reloaded`, or
    a new ONNX session object noticed on the encoder). A check that finds a change produces an
    ENCODER_CHANGED alert, returned by the next :meth:`observe` with the batch's other alerts (the
    worker publishes them and waits for Kafka's acknowledgement before acking the batch); the same
    change is reported once per process.

    The encoder's model directory also gives the monitor the offsets of the encoder's other known
    variants (:mod:`app.drift.variants`: ``variant_fp32`` for an int8 encoder), measured for this
    host: the shipped means where they were recorded for this CPU class and provider, else means the
    host records once (about 11 s on two CPU cores, at the first start) and caches.
    """

    def __init__(self, fingerprint: str, collection: str, state_dir: Path, config: DriftConfig | None = None, *,
                 encoder=None, canary_every: int = 64):
        offsets = ({} if encoder is None else
                   host_variant_offsets(encoder, _variant_loader(encoder), fingerprint=fingerprint))
        self.monitor = DriftMonitor((fingerprint, collection), state_dir, config=config, variants=offsets)
        self.fingerprint, self.collection = fingerprint, collection
        log.info("drift monitor %s/%s: %s", fingerprint, collection,
                 "warming up" if self.monitor.warming_up else "resumed from saved reference")
        # a new reference requested while the worker was stopped (its CLEARED alert, if any, is
        # published with the first batch)
        self._pending: list[DriftAlert] = self.monitor.relearn_if_requested()
        self.encoder = encoder
        self.canary_every = int(canary_every)
        self.canary = None
        self.batches = 0
        self._reported: set[str] = set()
        self._reload = False
        self._session = None
        if encoder is not None and self.canary_every > 0:
            try:
                self.canary = EncoderCanary(encoder, state_dir=state_dir)
            except (OSError, AttributeError) as exc:  # no canary texts with this model
                log.warning("encoder canary disabled: %s", exc)
            else:
                self._session = _ref(getattr(encoder, "session", None))
                self._check("start-up")

    def encoder_reloaded(self, encoder=None) -> None:
        """Call after the model was reloaded: the next :meth:`observe` runs the canary first."""
        if encoder is not None:
            self.encoder = encoder
            if self.canary is not None:
                self.canary.encoder = encoder
        self._reload = True

    def _check(self, reason: str) -> None:
        res = self.canary.check()
        log.log(logging.WARNING if res.changed else logging.INFO,
                "encoder canary (%s, %s reference, %s): worst cosine %.7f, max |diff| %.2e, %.0f ms%s", reason,
                res.reference, res.provider, res.worst_cosine, res.max_abs_diff, res.seconds * 1000,
                " - CHANGED" if res.changed else "")
        if not res.changed:
            return
        alert = encoder_changed_alert(res, fingerprint=self.fingerprint, collection=self.collection,
                                      texts=self.canary.texts, current=self.canary.last_vectors,
                                      events_observed=self.monitor.n_seen, reason=reason,
                                      event_time=self.monitor.watermark)
        if alert.alert_id not in self._reported:
            self._reported.add(alert.alert_id)
            self._pending.append(alert)

    def observe(self, result) -> list[DriftAlert]:
        """Alerts caused by a processed batch (a pipeline.BatchResult), canary alerts first."""
        if self.canary is not None:
            session = getattr(self.encoder, "session", None)
            if self._reload or self._session() is not session:
                self._reload, self._session = False, _ref(session)
                self._check("reload")
        alerts, self._pending = self._pending, []
        alerts += self.monitor.relearn_if_requested()  # `embedstream drift relearn`: before this batch
        if result.vectors is not None and len(result.vectors):
            vecs, norms, first = event_vectors(result.vectors, result.norms, result.vector_records)
            recs = [result.vector_records[i] for i in first]
            alerts += self.monitor.observe(
                vecs, norms=norms, doc_ids=[result.vector_doc_ids[i] for i in first],
                partitions=[r.partition for r in recs], offsets=[r.offset for r in recs],
                event_times_ms=[r.timestamp_ms for r in recs])
        self.batches += 1
        if self.canary is not None and self.batches % self.canary_every == 0:
            self._check("periodic")
            alerts, self._pending = alerts + self._pending, []
        return alerts

    def flush(self) -> list[DriftAlert]:
        """Alerts not returned yet: a pending canary alert (start-up) and those of the events the
        monitor's micro-batching held back, and a CLEARED alert if a new reference was requested
        (``embedstream drift relearn``) while the stream is quiet. The worker calls this when no
        event is waiting."""
        alerts, self._pending = self._pending, []
        return alerts + self.monitor.flush() + self.monitor.relearn_if_requested()

    def close(self) -> None:
        try:
            self.monitor.close()
        except Exception:  # never fail a shutdown over drift state
            log.exception("could not save drift state")
