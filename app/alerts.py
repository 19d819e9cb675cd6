"""Drift alerts on Kafka: the worker-side drift step, wire format and human formatting.

* :class:`DriftStage` feeds every vector of a processed batch (newly encoded or from the
  embedding cache) to the :class:`~app.drift.DriftMonitor` of the store's fingerprint and
  collection, and returns the alerts to publish.
* On the alerts topic an alert is keyed ``<fingerprint>/<collection>`` and its value is the
  ``DriftAlert`` record (``schemas/drift_alert.avsc``) in Avro single-object encoding
  (``C3 01`` + CRC-64-AVRO fingerprint + body), like change events, so any consumer with
  the schema file can decode it.
"""
from __future__ import annotations

import io
import logging
from datetime import datetime, timezone
from pathlib import Path

import fastavro

from app.drift import DriftAlert, DriftConfig, DriftMonitor
from app.drift.alert import alert_schema
from app.events import SINGLE_OBJECT_MAGIC, DecodeError, schema_fingerprint

log = logging.getLogger(__name__)


def encode_alert_message(alert: DriftAlert) -> bytes:
    schema = alert_schema()
    buf = io.BytesIO()
    buf.write(SINGLE_OBJECT_MAGIC + schema_fingerprint(schema))
    fastavro.schemaless_writer(buf, schema, alert.to_record())
    return buf.getvalue()


def decode_alert_message(value: bytes) -> DriftAlert:
    schema = alert_schema()
    if value[:2] != SINGLE_OBJECT_MAGIC or value[2:10] != schema_fingerprint(schema):
        raise DecodeError("unknown-alert-format", "not a single-object encoded DriftAlert of this schema")
    return DriftAlert.from_record(fastavro.schemaless_reader(io.BytesIO(value[10:]), schema, None))


def format_alert(a: DriftAlert) -> str:
    """A few readable lines for a terminal."""
    when = datetime.fromtimestamp(a.fired_at / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    head = f"[{when}] {a.kind.value:7s} {a.severity.value:8s} {a.collection} ({a.model_fingerprint})"
    lines = [head, f"    {a.message}" if a.message else None,
             f"    detector {a.detector} on {', '.join(a.signals)}; episode {a.episode_id} #{a.sequence}; "
             f"event {a.event_index:,} of {a.events_observed:,}"]
    for s in a.stats:
        lines.append(f"    {s.signal:10s} reference {s.reference_mean:+.3f}±{s.reference_std:.3f}  "
                     f"current {s.current_mean:+.3f}±{s.current_std:.3f} (n={s.current_n}, shift {s.shift:+.2f})")
    if a.offsets:
        lines.append("    offsets " + ", ".join(f"p{r.partition}:{r.first_offset}-{r.last_offset}" for r in a.offsets))
    if a.example_doc_ids:
        lines.append("    e.g. " + ", ".join(a.example_doc_ids))
    return "\n".join(x for x in lines if x)


class DriftStage:
    """The worker's drift step for one fingerprint/collection (state under ``state_dir``)."""

    def __init__(self, fingerprint: str, collection: str, state_dir: Path, config: DriftConfig | None = None):
        self.monitor = DriftMonitor((fingerprint, collection), state_dir, config=config)
        log.info("drift monitor %s/%s: %s", fingerprint, collection,
                 "warming up" if self.monitor.warming_up else "resumed from saved reference")

    def observe(self, result) -> list[DriftAlert]:
        """Alerts caused by a processed batch (a pipeline.BatchResult)."""
        if result.vectors is None or not len(result.vectors):
            return []
        recs = result.vector_records
        return self.monitor.observe(
            result.vectors, norms=result.norms, doc_ids=result.vector_doc_ids,
            partitions=[r.partition for r in recs], offsets=[r.offset for r in recs],
            event_times_ms=[r.timestamp_ms for r in recs])

    def close(self) -> None:
        try:
            self.monitor.close()
        except Exception:  # never fail a shutdown over drift state
            log.exception("could not save drift state")
