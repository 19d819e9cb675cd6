"""Offsets tooling on both real brokers: exact high-watermarks (ListOffsets on Kafka, fetch-based on
Tansu, whose ListOffsets is wrong), exact offsets for a time, group activity, `offsets show` and
`offsets reset`. Every broker test runs on Apache Kafka and on Tansu."""
from __future__ import annotations

import json
import time

import pytest
from confluent_kafka import Consumer

from app import offsets as o
from app.cli import main
from conftest import both_brokers, wait_for


T0 = 1_672_531_200_000


def fill(producer, topic, per_partition: dict[int, int], batches: int = 3):
    """Several produce batches per partition (Tansu's ListOffsets answers the last batch's base + 1)."""
    n = 0
    for b in range(batches):
        for p, count in per_partition.items():
            for i in range(count // batches + (1 if b < count % batches else 0)):
                producer.produce(topic, key=f"k{p}-{b}-{i}".encode(), value=b"v", partition=p,
                                 timestamp=T0 + n * 1000)
                n += 1
        producer.flush(10)


@both_brokers()
def test_high_watermarks_are_exact(settings, producer, broker):
    counts = {0: 7, 1: 12, 3: 1}
    fill(producer, settings.changes_topic, counts)
    assert o.broker_flavour(settings) == broker.kind
    marks = o.high_watermarks(settings, settings.changes_topic)
    assert {p: m.high for p, m in marks.items()} == {p: counts.get(p, 0) for p in range(8)}
    # Kafka: ListOffsets is exact and used as is; Tansu: the end comes from a fetch
    method = "list-offsets" if broker.kind == "kafka" else "fetch"
    assert all(m.low == 0 and m.method == method and m.exact for m in marks.values())


@both_brokers()
def test_offsets_for_time_is_exact(settings, producer):
    topic = settings.changes_topic
    # partition 0: ascending record times, written in three batches; partition 1: one late record
    for i in range(9):
        producer.produce(topic, key=b"a", value=b"x", partition=0, timestamp=T0 + i * 60_000)
        if i % 3 == 2:
            producer.flush(10)
    producer.produce(topic, key=b"b", value=b"x", partition=1, timestamp=T0 + 10 * 60_000)
    producer.flush(10)
    # records are timestamped 2023, so Tansu's write-time answer cannot be right by accident
    got = o.offsets_for_time(settings, topic, [0, 1, 2], T0 + 4 * 60_000)
    assert got == {0: 4, 1: 0, 2: 0}
    assert o.offsets_for_time(settings, topic, [0], T0 + 8 * 60_000 + 1) == {0: 9}  # past the last: the end
    assert o.offsets_for_time(settings, topic, [0], T0 - 1) == {0: 0}


@both_brokers()
def test_group_activity_and_offsets_show(env, producer, capsys):
    s = env
    fill(producer, s.changes_topic, {0: 5, 2: 3}, batches=1)
    assert o.group_activity(s, s.app_id).active is False  # nobody ever joined
    o.reset_offsets(s, s.app_id, s.changes_topic, {0: 2})

    assert main(["offsets", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    rows = {r["partition"]: r for r in shown["partitions"]}
    assert rows[0]["committed"] == 2 and rows[0]["high_watermark"] == 5 and rows[0]["lag"] == 3
    assert rows[2]["committed"] is None and rows[2]["high_watermark"] == 3 and rows[2]["lag"] is None
    assert shown["active"] is False

    # a consumer in the group: Tansu lists no members but reports the state
    c = Consumer({"bootstrap.servers": s.bootstrap_servers, "group.id": s.app_id, "enable.auto.commit": False,
                  "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000})
    c.subscribe([s.changes_topic])
    try:
        wait_for(lambda: c.poll(0.2) is not None or c.assignment(), 30, what="the consumer to join")
        act = wait_for(lambda: (lambda a: a if a.active else None)(o.group_activity(s, s.app_id)), 15,
                       what="the group to look active")
        assert act.active is True and act.state == "STABLE"
        # reset is refused while the group is active
        assert main(["offsets", "reset", "--to-offset", "earliest", "--yes"]) == 2
        assert "active" in capsys.readouterr().err
    finally:
        c.close()
    wait_for(lambda: o.group_activity(s, s.app_id).active is False, 30, what="the group to become empty")
    assert main(["offsets", "show"]) == 0
    out = capsys.readouterr().out
    assert "EMPTY" in out and "total lag" in out


@both_brokers()
def test_offsets_reset(env, producer, capsys):
    s = env
    topic = s.changes_topic
    for i in range(6):
        producer.produce(topic, key=b"k", value=b"x", partition=0, timestamp=T0 + i * 1000)
    for i in range(4):
        producer.produce(topic, key=b"k", value=b"x", partition=1, timestamp=T0 + i * 1000)
    producer.flush(10)

    def committed():
        return o.committed_offsets(s, s.app_id, topic, [0, 1])

    # no terminal to confirm on, and no --yes: refused, nothing changed
    assert main(["offsets", "reset", "--to-offset", "latest", "--partitions", "0,1"]) == 2
    assert "--yes" in capsys.readouterr().err
    assert committed() == {0: None, 1: None}

    assert main(["offsets", "reset", "--to-offset", "latest", "--partitions", "0,1", "--yes"]) == 0
    assert committed() == {0: 6, 1: 4}
    assert main(["offsets", "reset", "--to-time", "2023-01-01T00:00:03Z", "--partitions", "0,1", "--yes"]) == 0
    assert committed() == {0: 3, 1: 3}
    assert main(["offsets", "reset", "--to-offset", "0:1,1:2", "--yes"]) == 0
    assert committed() == {0: 1, 1: 2}
    assert main(["offsets", "reset", "--to-offset", "earliest", "--partitions", "1", "--yes"]) == 0
    assert committed() == {0: 1, 1: 0}
    out = capsys.readouterr().out
    assert "p0: - -> 6" in out and "p1: 2 -> 0" in out


def test_parsers():
    assert o.parse_partition_offsets("0:5,2:7") == {0: 5, 2: 7}
    with pytest.raises(Exception):
        o.parse_partition_offsets("0-5")
    with pytest.raises(Exception):
        o.parse_time("yesterday")
    assert o.parse_time("2023-01-01T00:00:00") == T0
    assert time.time() * 1000 > o.parse_time("2023-01-01T00:00:00+00:00")
