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


# --- schema versions (issue 16: ENCODER_CHANGED and the canary field) ----------------------------
#: fingerprint of schemas/drift_alert.avsc as first released (commit 7761ba7), before ENCODER_CHANGED
V1_FINGERPRINT = "f1aa4a13d30794d9"


def _canary_alert():
    from app.drift.alert import CanaryCheck

    return _alert(kind=AlertKind.ENCODER_CHANGED, detector="EncoderCanary", signals=["canary"], triggers=[],
                  stats=[], offsets=[], example_doc_ids=[],
                  canary=CanaryCheck(worst_cosine=0.9641434, mean_cosine=0.99, worst_text="ok", max_abs_diff=0.046,
                                     tolerance=1e-6, abs_tolerance=1e-6, provider="CPUExecutionProvider",
                                     reference="shipped", texts=16, reason="periodic"))


def test_version_1_is_derived_with_its_released_fingerprint():
    from app.drift.alert import alert_schema_v1, writer_schema
    from app.events import schema_fingerprint

    assert schema_fingerprint(alert_schema_v1()).hex() == V1_FINGERPRINT
    assert schema_fingerprint(alert_schema()).hex() != V1_FINGERPRINT
    assert writer_schema(_alert()) is alert_schema_v1()
    assert writer_schema(_alert(kind=AlertKind.CLEARED)) is alert_schema_v1()
    assert writer_schema(_canary_alert()) is alert_schema()


def test_a_version_1_consumer_reads_fired_and_skips_encoder_changed():
    # a consumer of an older release: it decodes single-object records of version 1 only
    import io

    from app.alerts import decode_alert_message, encode_alert_message
    from app.drift.alert import alert_schema_v1
    from app.events import SINGLE_OBJECT_MAGIC, schema_fingerprint

    def old_decode(value):
        if value[:2] != SINGLE_OBJECT_MAGIC or value[2:10] != schema_fingerprint(alert_schema_v1()):
            raise ValueError("unknown-alert-format")
        return fastavro.schemaless_reader(io.BytesIO(value[10:]), alert_schema_v1(), None)

    fired = encode_alert_message(_alert())
    assert old_decode(fired)["kind"] == "FIRED"
    with pytest.raises(ValueError, match="unknown-alert-format"):
        old_decode(encode_alert_message(_canary_alert()))
    # this release reads both versions
    assert decode_alert_message(fired) == _alert()
    assert decode_alert_message(encode_alert_message(_canary_alert())) == _canary_alert()
    assert decode_alert(encode_alert(_canary_alert())) == _canary_alert()


def test_an_unknown_future_kind_reads_as_fired():
    # the enum's default: a reader of this version resolves a symbol it does not know to FIRED
    import copy
    import io

    raw = json.load(open(__import__("app.drift.alert", fromlist=["SCHEMA_PATH"]).SCHEMA_PATH))
    future = copy.deepcopy(raw)
    for f in future["fields"]:
        if f["name"] == "kind":
            f["type"]["symbols"] = f["type"]["symbols"] + ["SOMETHING_NEW"]
    writer = fastavro.parse_schema(future)
    rec = _alert().to_record()
    rec["kind"] = "SOMETHING_NEW"
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, writer, rec)
    got = fastavro.schemaless_reader(io.BytesIO(buf.getvalue()), writer, alert_schema())
    assert got["kind"] == "FIRED"
