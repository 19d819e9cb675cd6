import json
from dataclasses import fields
from datetime import datetime, timezone

import fastavro
import pytest

from app.drift.alert import (
    AlertKind, DriftAlert, PartitionRange, Severity, SignalStats, Trigger, alert_schema, decode_alert, encode_alert,
)


def _alert(**kw):
    base = dict(
        alert_id="a1", kind=AlertKind.FIRED, severity=Severity.CRITICAL, model_fingerprint="m:int8:abc",
        collection="docs", episode_id="e1", sequence=0, detector="PageHinkley", signals=["centroid", "nearest"],
        triggers=[Trigger("centroid", "PageHinkley", 5003), Trigger("nearest", "PageHinkley", 5011)],
        fired_at=1_700_000_123_456, event_time=1_699_999_999_001, event_index=5011, episode_start_index=5003,
        window_start_index=4812, offsets=[PartitionRange(0, 100, 150), PartitionRange(3, 7, 60)],
        stats=[SignalStats("centroid", 0.5, 0.1, 0.7, 0.12, 200, 2.0)], example_doc_ids=["d1", "d2"],
        events_observed=5100, message="drift",
    )
    base.update(kw)
    return DriftAlert(**base)


def test_avro_round_trip():
    a = _alert()
    data = encode_alert(a)
    assert isinstance(data, bytes) and len(data) < 1000
    assert decode_alert(data) == a


def test_avro_round_trip_cleared_without_event_time():
    a = _alert(kind=AlertKind.CLEARED, severity=Severity.WARNING, event_time=None, offsets=[], example_doc_ids=[])
    assert decode_alert(encode_alert(a)) == a


def test_timestamps_are_timestamp_millis():
    rec = fastavro.schemaless_reader(__import__("io").BytesIO(encode_alert(_alert())), alert_schema(), None)
    assert rec["fired_at"] == datetime(2023, 11, 14, 22, 15, 23, 456000, tzinfo=timezone.utc)
    assert rec["kind"] == "FIRED"


def test_schema_matches_dataclass():
    schema = json.load(open(__import__("app.drift.alert", fromlist=["SCHEMA_PATH"]).SCHEMA_PATH))
    assert {f["name"] for f in schema["fields"]} == {f.name for f in fields(DriftAlert)}


def test_json_and_key():
    a = _alert()
    doc = json.loads(a.to_json())
    assert doc["kind"] == "FIRED" and doc["fired_at_iso"] == "2023-11-14T22:15:23.456+00:00"
    assert DriftAlert.from_json(a.to_json()) == a
    assert a.kafka_key == b"m:int8:abc/docs"


def test_invalid_enum_rejected():
    with pytest.raises(ValueError):
        AlertKind("MAYBE")
