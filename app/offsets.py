"""Kafka offsets for operators: watermarks, committed offsets, group activity, resets,
and a bounded reader of offset ranges with manual partition assignment (Faust-free).

Everything here reads with **manual assignment** (``assign()``, never ``subscribe()``),
``enable.auto.commit=False`` and a throw-away ``group.id`` that is never committed, so the
live worker's group is never joined and its committed offsets never move (only
:func:`reset_offsets` changes them, on purpose).

**Which broker?** (:func:`broker_flavour`). The workarounds below exist only for the Tansu
development broker (``embedstream dev`` / ``make demo``). On Apache Kafka (and every broker that
implements DescribeConfigs) ListOffsets, ``offsets_for_times`` and DescribeGroups are exact, so the
workarounds are skipped there: the watermarks are ListOffsets' answer, the time lookup is
``offsets_for_times``' answer, and a group's members are what DescribeGroups lists. Tansu is
recognised by its cluster id (``tansu_cluster``) or by answering DescribeConfigs(BROKER) with no
configs at all; ``EMBEDSTREAM_BROKER_FLAVOUR=kafka|tansu`` overrides the detection.

**High-watermark (log end) per partition on Tansu, measured from a fetch** (:func:`high_watermarks`).
``ListOffsets(latest)`` (``get_watermark_offsets(cached=False)``) is wrong on the Tansu
development broker: it answers the base offset of the last record batch + 1. Every fetch
response, however, carries the partition's real high-watermark, on Tansu and on Kafka. So
a consumer assigns each partition one record before the ``ListOffsets`` answer (which is
never past the real end on Tansu; on Kafka it *is* the end), with
``enable.partition.eof=true``, and reads until librdkafka reports end-of-partition: the
EOF event's offset is the high-watermark of the fetch response. When no EOF comes in time
(a producer keeps the partition busy), the consumer's cached watermark
(``get_watermark_offsets(cached=True)``, updated by every fetch response) is used; only when
no fetch answered at all is the ``ListOffsets`` value returned, flagged ``list-offsets``.

**Offsets for a time** (:func:`offsets_for_time`): Kafka semantics, the first offset whose
record timestamp is >= the time (the high-watermark when there is none): on Kafka exactly
``offsets_for_times``' answer (-1 meaning the end). Tansu's
``offsets_for_times`` looks at the broker's write time per batch and answers 0 past the end,
so its answer is only a starting hint: the record before the hint is read back, and while
it is already at/after the time the start steps back (1, 2, 4, ... records, down to the
beginning); from there the records are scanned forward by their own timestamps.

**Is the group active?** (:func:`group_activity`): ``describe_consumer_groups`` gives the
state and the members. On Kafka that is the answer (a member that died without leaving is
dropped after the session timeout). Tansu's DescribeGroups lists no members at all, and it
keeps a stopped Faust worker's group ``STABLE`` (even AlterConsumerGroupOffsets is then
refused with UNKNOWN_MEMBER_ID) until some JoinGroup makes it expire members that stopped
heartbeating. So when the state says active but no member is listed (which only Tansu
does), one JoinGroup attempt is made with an assignor the workers do not use
(``roundrobin``; Faust's protocol is ``faust``): a live group refuses it
(INCONSISTENT_GROUP_PROTOCOL) and stays ``STABLE``, a dead one becomes ``EMPTY``. The probe
commits nothing and leaves at once; against a live group on Tansu it can cost the workers
one rebalance. When the broker reports neither members nor a known state, the answer is
"unknown" and callers refuse to act without ``--force``.
"""
from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterator

from app.config import ConfigError, Settings

log = logging.getLogger(__name__)

#: group states in which some consumer is (or is about to be) a member
ACTIVE_STATES = {"STABLE", "PREPARING_REBALANCE", "COMPLETING_REBALANCE", "ASSIGNING", "RECONCILING"}


# ----------------------------------------------------------------------------------------
# parsing helpers (CLI arguments)
def parse_time(value: str) -> int:
    """ISO-8601 (or epoch milliseconds) to epoch milliseconds; naive times are UTC.

    >>> parse_time("2024-01-01T00:00:00Z")
    1704067200000
    >>> parse_time("2024-01-01T01:00:00+01:00")
    1704067200000
    >>> parse_time("1704067200000")
    1704067200000
    """
    v = value.strip()
    if re.fullmatch(r"\d{10,}", v):
        return int(v)
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ConfigError(f"not an ISO-8601 time: {value!r} (e.g. 2024-05-01T12:00:00Z)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def format_ms(ms: int | None) -> str:
    """
    >>> format_ms(1704067200000)
    '2024-01-01T00:00:00.000Z'
    """
    if ms is None or ms < 0:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_partition_offsets(value: str) -> int | dict[int, int]:
    """``"100"`` (every partition) or ``"0:100,1:0"`` (per partition).

    >>> parse_partition_offsets("100")
    100
    >>> parse_partition_offsets("0:100, 3:7")
    {0: 100, 3: 7}
    """
    v = value.strip()
    if re.fullmatch(r"\d+", v):
        return int(v)
    out: dict[int, int] = {}
    for part in v.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", part)
        if not m:
            raise ConfigError(f"offsets must look like 100 or 0:100,1:0 (partition:offset), not {value!r}")
        out[int(m.group(1))] = int(m.group(2))
    return out


def parse_partitions(value: str | None) -> list[int] | None:
    """
    >>> parse_partitions("0, 3,3")
    [0, 3]
    >>> parse_partitions(None) is None
    True
    """
    if value is None or not value.strip():
        return None
    try:
        return sorted({int(p) for p in value.split(",") if p.strip()})
    except ValueError:
        raise ConfigError(f"partitions must look like 0,3: {value!r}") from None


# ----------------------------------------------------------------------------------------
# clients
def consumer_config(settings: Settings, **extra) -> dict:
    """A reader that never joins or commits to a group (manual assignment only)."""
    conf = {**settings.kafka_config(),
            "group.id": f"{settings.app_id}.tool-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False, "enable.auto.offset.store": False,
            "enable.partition.eof": True, "auto.offset.reset": "earliest",
            # end-of-partition is reported after an empty fetch: do not let the broker hold it long
            "fetch.wait.max.ms": 100,
            "session.timeout.ms": int(settings.session_timeout_s * 1000),
            "heartbeat.interval.ms": int(settings.heartbeat_interval_s * 1000)}
    conf.update(extra)
    return conf


def reader_consumer(settings: Settings, **extra):
    """A Consumer with :func:`consumer_config` (manual assignment only)."""
    from confluent_kafka import Consumer

    return Consumer(consumer_config(settings, **extra))


def admin_client(settings: Settings):
    from confluent_kafka.admin import AdminClient

    return AdminClient(settings.kafka_config())


def topic_partitions(settings: Settings, topic: str, timeout: float = 10.0) -> list[int]:
    md = admin_client(settings).list_topics(topic, timeout=timeout)
    t = md.topics.get(topic)
    if t is None or t.error is not None or not t.partitions:
        raise ConfigError(f"topic {topic!r} does not exist on {settings.bootstrap_servers}"
                          + (f" ({t.error})" if t is not None and t.error is not None else ""))
    return sorted(t.partitions)


def select_partitions(all_partitions: list[int], wanted: list[int] | None) -> list[int]:
    if wanted is None:
        return list(all_partitions)
    missing = sorted(set(wanted) - set(all_partitions))
    if missing:
        raise ConfigError(f"no partition(s) {missing}; the topic has {all_partitions}")
    return sorted(wanted)


# ----------------------------------------------------------------------------------------
TANSU_CLUSTER_ID = "tansu_cluster"
_FLAVOURS: dict[str, str] = {}


def broker_flavour(settings: Settings, timeout: float = 10.0) -> str:
    """``"kafka"`` (exact ListOffsets, offsets_for_times, DescribeGroups) or ``"tansu"`` (module doc).

    Asked once per bootstrap address and cached. ``settings.broker_flavour`` other than ``auto``
    decides without asking.
    """
    forced = getattr(settings, "broker_flavour", "auto")
    if forced in ("kafka", "tansu"):
        return forced
    key = settings.bootstrap_servers
    if key in _FLAVOURS:
        return _FLAVOURS[key]
    from confluent_kafka.admin import ConfigResource, ResourceType

    admin = admin_client(settings)
    md = admin.list_topics(timeout=timeout)
    flavour = "kafka"
    if (md.cluster_id or "").startswith(TANSU_CLUSTER_ID):
        flavour = "tansu"
    elif md.brokers:
        try:
            res = admin.describe_configs([ConfigResource(ResourceType.BROKER, str(next(iter(md.brokers))))],
                                         request_timeout=timeout)
            configs = next(iter(res.values())).result(timeout)
            if not configs:
                flavour = "tansu"
        except Exception as exc:  # noqa: BLE001 - e.g. not authorised to describe: a real Kafka
            log.debug("describe_configs(BROKER) failed (%s): treating the broker as Apache Kafka", exc)
    _FLAVOURS[key] = flavour
    return flavour


@dataclass(frozen=True)
class Watermark:
    low: int
    high: int
    #: how ``high`` was obtained: ``list-offsets`` (ListOffsets on Kafka: exact), ``fetch`` (EOF
    #: of a fetch, Tansu), ``fetch-cached`` (watermark of the latest fetch response, Tansu) or
    #: ``list-offsets-unverified`` (Tansu's ListOffsets, when no fetch answered: can be short)
    method: str

    @property
    def exact(self) -> bool:
        return self.method != "list-offsets-unverified"


def _list_offsets(consumer, tp, timeout: float) -> tuple[int, int]:
    """ListOffsets (earliest, latest) of one partition. A retriable answer - a new topic whose
    leader is not elected yet (NOT_LEADER_FOR_PARTITION, LEADER_NOT_AVAILABLE), a broker that is
    restarting - is asked again until ``timeout``."""
    from confluent_kafka import KafkaError, KafkaException

    again = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError._TRANSPORT,
             KafkaError.NOT_COORDINATOR, KafkaError.REQUEST_TIMED_OUT}
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        try:
            return consumer.get_watermark_offsets(tp, timeout=max(0.5, deadline - time.monotonic()), cached=False)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if err is None or not (err.retriable() or err.code() in again) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(1.0, delay * 2)


def high_watermarks(settings: Settings, topic: str, partitions: list[int] | None = None,
                    timeout: float = 15.0) -> dict[int, Watermark]:
    """Log start and end per partition: ListOffsets on Kafka; on Tansu the end is taken from
    fetch responses (module doc)."""
    from confluent_kafka import KafkaError, TopicPartition

    parts = partitions if partitions is not None else topic_partitions(settings, topic)
    kafka = broker_flavour(settings) == "kafka"
    c = reader_consumer(settings)
    try:
        listed: dict[int, tuple[int, int]] = {}
        for p in parts:
            lo, hi = _list_offsets(c, TopicPartition(topic, p), timeout)
            listed[p] = (max(lo, 0), max(hi, 0))
        if kafka:
            return {p: Watermark(lo, hi, "list-offsets") for p, (lo, hi) in listed.items()}
        c.assign([TopicPartition(topic, p, max(listed[p][0], listed[p][1] - 1)) for p in parts])
        eof: dict[int, int] = {}
        deadline = time.monotonic() + timeout
        while len(eof) < len(parts) and time.monotonic() < deadline:
            for m in c.consume(500, 0.2):
                err = m.error()
                if err is None:
                    continue
                if err.code() == KafkaError._PARTITION_EOF:
                    eof[m.partition()] = m.offset()
                elif err.fatal() or err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
                    raise RuntimeError(f"reading {topic}: {err}")
        out: dict[int, Watermark] = {}
        for p in parts:
            lo = listed[p][0]
            if p in eof:
                out[p] = Watermark(lo, eof[p], "fetch")
                continue
            _, cached = c.get_watermark_offsets(TopicPartition(topic, p), cached=True)
            if cached is not None and cached >= 0:
                out[p] = Watermark(lo, cached, "fetch-cached")
            else:
                log.warning("no fetch answered for %s[%d] within %.0fs: using ListOffsets (%d), which "
                            "can be wrong on Tansu", topic, p, timeout, listed[p][1])
                out[p] = Watermark(lo, listed[p][1], "list-offsets-unverified")
        return out
    finally:
        c.close()


def committed_offsets(settings: Settings, group: str, topic: str, partitions: list[int]) -> dict[int, int | None]:
    """Committed offset of ``group`` per partition (None: nothing committed)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

    admin = admin_client(settings)
    req = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in partitions])
    res = admin.list_consumer_group_offsets([req], request_timeout=15)[group].result(20)
    out: dict[int, int | None] = {p: None for p in partitions}
    for tp in res.topic_partitions or []:
        if tp.topic == topic and tp.partition in out and tp.error is None and tp.offset >= 0:
            out[tp.partition] = tp.offset
    return out


@dataclass(frozen=True)
class GroupActivity:
    group: str
    state: str
    members: int
    #: True: a consumer is in the group; False: none; None: the broker did not say
    active: bool | None
    note: str = ""


def _describe(settings: Settings, group: str) -> tuple[str, int]:
    admin = admin_client(settings)
    d = admin.describe_consumer_groups([group], request_timeout=15)[group].result(20)
    return getattr(d.state, "name", str(d.state)).upper(), len(d.members or [])


def _nudge_group(settings: Settings, group: str, topic: str, timeout: float) -> str:
    """One JoinGroup attempt with a partition assignor the workers do not use, then leave.

    Against a group with live members the join is refused (INCONSISTENT_GROUP_PROTOCOL) and
    the members are not disturbed; Tansu, which otherwise keeps a stopped worker's
    membership forever, expires members that stopped heartbeating while handling the join.
    Commits nothing. Returns what happened (for the note).
    """
    from confluent_kafka import Consumer, KafkaError

    c = Consumer({**settings.kafka_config(), "group.id": group, "enable.auto.commit": False,
                  "enable.auto.offset.store": False, "partition.assignment.strategy": "roundrobin",
                  "session.timeout.ms": int(settings.session_timeout_s * 1000),
                  "heartbeat.interval.ms": int(settings.heartbeat_interval_s * 1000)})
    outcome = "no answer"
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is not None and m.error() is not None:
                if m.error().code() == KafkaError.INCONSISTENT_GROUP_PROTOCOL:
                    outcome = "join refused: the group uses another protocol"
                    break
                outcome = f"join failed: {m.error()}"
            if c.assignment():
                outcome = f"joined, assigned {len(c.assignment())} partition(s)"
                break
    finally:
        c.close()  # LeaveGroup
    return outcome


def group_activity(settings: Settings, group: str, topic: str | None = None, probe: bool = True) -> GroupActivity:
    """Whether a consumer is in ``group`` now (see the module doc for Tansu).

    Kafka lists the members of a group: that is the answer. Tansu lists none and keeps a
    stopped worker's group ``STABLE`` until some JoinGroup makes it expire dead members, so
    when the state says active but no members are listed (Tansu's signature), ``probe``
    makes one JoinGroup attempt (:func:`_nudge_group`) and asks again: a group whose
    members are gone is then ``EMPTY``; one with live members stays ``STABLE``.
    """
    try:
        state, members = _describe(settings, group)
    except Exception as exc:  # noqa: BLE001 - reported, and treated as "cannot tell"
        return GroupActivity(group, "UNKNOWN", 0, None, f"describe_consumer_groups failed: {exc}")
    if members:
        return GroupActivity(group, state, members, True, f"{members} member(s)")
    if state in ("EMPTY", "DEAD"):
        return GroupActivity(group, state, 0, False, f"state {state}")
    if state not in ACTIVE_STATES:
        return GroupActivity(group, state, 0, None, f"state {state} and no members: cannot tell whether it is active")
    if broker_flavour(settings) == "kafka":
        # Kafka lists every member; an active state without members is a transition: ask again
        return GroupActivity(group, state, 0, None, f"state {state} and no members listed")
    note = f"state {state} but no members listed (Tansu's DescribeGroups lists none)"
    if not probe:
        return GroupActivity(group, state, 0, True, note)
    outcome = _nudge_group(settings, group, topic or settings.changes_topic, settings.session_timeout_s + 4)
    deadline = time.monotonic() + 3
    while True:
        try:
            state, members = _describe(settings, group)
        except Exception as exc:  # noqa: BLE001
            return GroupActivity(group, "UNKNOWN", 0, None, f"{note}; describe after a join probe failed: {exc}")
        if state in ("EMPTY", "DEAD") or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    if state in ("EMPTY", "DEAD"):
        return GroupActivity(group, state, 0, False, f"{note}; after a join probe ({outcome}) it is {state}: "
                                                     "no live member")
    return GroupActivity(group, state, members, True, f"{note}; still {state} after a join probe ({outcome}): "
                                                      "a member is alive")


def reset_offsets(settings: Settings, group: str, topic: str, targets: dict[int, int]) -> dict[int, str | None]:
    """AlterConsumerGroupOffsets for ``group``; returns partition -> error text (None: done)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

    admin = admin_client(settings)
    req = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p, o) for p, o in sorted(targets.items())])
    res = admin.alter_consumer_group_offsets([req], request_timeout=15)[group].result(20)
    out: dict[int, str | None] = {p: "no answer for this partition" for p in targets}
    for tp in res.topic_partitions or []:
        out[tp.partition] = None if tp.error is None else str(tp.error)
    return out


# ----------------------------------------------------------------------------------------
def _record_at(c, topic: str, partition: int, offset: int, timeout: float = 10.0):
    """The first record at or after ``offset`` (None at the end of the partition)."""
    from confluent_kafka import KafkaError, TopicPartition

    c.assign([TopicPartition(topic, partition, offset)])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is None:
                continue
            if m.error() is None:
                return m
            if m.error().code() == KafkaError._PARTITION_EOF:
                return None
        return None
    finally:
        c.unassign()


def offsets_for_time(settings: Settings, topic: str, partitions: list[int], ts_ms: int,
                     timeout: float = 15.0) -> dict[int, int]:
    """First offset per partition whose record timestamp is >= ``ts_ms`` (else the end). Exact
    by reading the records' own timestamps; ``offsets_for_times`` is only a hint (module doc)."""
    from confluent_kafka import TopicPartition

    marks = high_watermarks(settings, topic, partitions, timeout)
    c = reader_consumer(settings)
    try:
        hints = {tp.partition: tp.offset for tp in
                 c.offsets_for_times([TopicPartition(topic, p, ts_ms) for p in partitions], timeout=timeout)}
        if broker_flavour(settings) == "kafka":  # exact: -1 means no record at/after ts
            return {p: (marks[p].high if hints.get(p, -1) < 0 else hints[p]) for p in partitions}
        out: dict[int, int] = {}
        for p in partitions:
            start = seek_start_for_time(c, topic, p, ts_ms, hints.get(p, -1), marks[p])
            out[p] = marks[p].high
            for m in read_range_messages(c, topic, {p: start}, {p: marks[p].high}):
                if m.timestamp()[1] >= ts_ms:
                    out[p] = m.offset()
                    break
        return out
    finally:
        c.close()


def seek_start_for_time(c, topic: str, partition: int, ts_ms: int, hint: int, mark: Watermark) -> int:
    """A start offset at or before the first record with timestamp >= ts_ms (see module doc).

    ``hint`` is offsets_for_times' answer. -1 (none) or 0 are not trusted as a position past
    data (Tansu answers 0 for a time after the last record); a hint past the end is clamped.
    """
    low, high = mark.low, mark.high
    if high <= low:
        return low
    if hint is None or hint < 0:
        # -1: "no record at or after ts" on Kafka. Trust it only when the last record agrees.
        last = _record_at(c, topic, partition, high - 1)
        return high if last is not None and last.timestamp()[1] < ts_ms else low
    if hint <= low:
        return low  # 0 is also Tansu's answer for a time past the end: scan from the beginning
    start = min(hint, high)
    step = 1
    while start > low:
        cand = max(low, start - step)
        prev = _record_at(c, topic, partition, cand)
        if prev is None or prev.timestamp()[1] < ts_ms:
            return cand  # the record before the window is older than ts: start scanning there
        start = cand
        step *= 2
    return low


def read_range_messages(c, topic: str, starts: dict[int, int], ends: dict[int, int | None],
                        idle_s: float = 1.0) -> Iterator:
    """Messages of ``topic`` from ``starts`` (inclusive) to ``ends`` (exclusive), in offset order
    per partition (the simple form of :class:`RangeReader` for an existing consumer)."""
    reader = RangeReader(c, topic, starts, ends, idle_s=idle_s)
    for batch in reader:
        yield from batch


# ----------------------------------------------------------------------------------------
@dataclass
class _PartState:
    start: int
    end: int | None
    position: int
    done: bool = False
    eof_at: float | None = None
    short_end: bool = False
    last_record_at: float = field(default_factory=time.monotonic)


class RangeReader:
    """Reads offset ranges of one topic with manual assignment; yields lists of messages.

    Stop condition per partition (``end`` exclusive):

    * ``end`` known (an explicit offset, or the high-watermark measured from a fetch when
      the read began): done once a message at/after ``end`` shows up (it is not yielded),
      or librdkafka reports end-of-partition at an offset >= ``end`` (this also covers
      compaction gaps and transaction markers that occupy the last offsets);
    * ``end`` unknown (None), or the partition really ends before ``end``: done once
      end-of-partition was reported (the fetch response's high-watermark was reached) *and*
      no record arrived for ``idle_s`` seconds since.

    A done partition is paused. Each iteration yields the messages of one ``consume()``
    call that are inside the ranges (possibly an empty list when nothing arrived: callers
    use it to flush partial batches). ``positions`` holds the next offset per partition
    after what was yielded.
    """

    def __init__(self, consumer, topic: str, starts: dict[int, int], ends: dict[int, int | None],
                 idle_s: float = 2.0, poll_s: float = 0.1, max_messages: int = 500):
        from confluent_kafka import TopicPartition

        self.c = consumer
        self.topic = topic
        self.idle_s = idle_s
        self.poll_s = poll_s
        self.max_messages = max_messages
        self.parts: dict[int, _PartState] = {}
        assign = []
        for p, start in sorted(starts.items()):
            end = ends.get(p)
            st = _PartState(start=start, end=end, position=start)
            if end is not None and start >= end:
                st.done = True
            else:
                assign.append(TopicPartition(topic, p, start))
            self.parts[p] = st
        if assign:
            self.c.assign(assign)

    @property
    def positions(self) -> dict[int, int]:
        return {p: st.position for p, st in self.parts.items()}

    @property
    def done(self) -> bool:
        return all(st.done for st in self.parts.values())

    def short_ends(self) -> dict[int, int]:
        """Partitions that ended before their requested end: partition -> where they ended."""
        return {p: st.position for p, st in self.parts.items() if st.short_end}

    def _finish(self, p: int) -> None:
        from confluent_kafka import TopicPartition

        st = self.parts[p]
        if not st.done:
            st.done = True
            try:
                self.c.pause([TopicPartition(self.topic, p)])
            except Exception:  # noqa: BLE001 - pausing is an optimisation only
                pass

    def __iter__(self):
        from confluent_kafka import KafkaError

        while not self.done:
            msgs = self.c.consume(self.max_messages, self.poll_s)
            now = time.monotonic()
            out = []
            for m in msgs:
                p = m.partition()
                st = self.parts.get(p)
                if st is None or m.topic() != self.topic:
                    continue
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        if st.done:
                            continue
                        if st.end is not None and m.offset() >= st.end:
                            st.position = max(st.position, st.end)
                            self._finish(p)
                        else:  # everything up to the fetch's high-watermark was delivered
                            st.position = max(st.position, m.offset())
                            st.eof_at = now
                        continue
                    if err.fatal() or err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
                        raise RuntimeError(f"reading {self.topic}[{p}]: {err}")
                    log.warning("reading %s[%d]: %s", self.topic, p, err)
                    continue
                if st.done:
                    continue
                if st.end is not None and m.offset() >= st.end:
                    st.position = max(st.position, st.end)
                    self._finish(p)
                    continue
                if m.offset() < st.position:
                    continue  # a re-fetch of something already yielded
                st.position = m.offset() + 1
                st.last_record_at = now
                st.eof_at = None
                out.append(m)
            for p, st in self.parts.items():
                if st.done:
                    continue
                if st.end is not None and st.position >= st.end:
                    self._finish(p)
                elif st.eof_at is not None and now - max(st.eof_at, st.last_record_at) >= self.idle_s:
                    if st.end is not None:
                        st.short_end = True
                        log.warning("%s[%d] ends at %d, before the requested end %d", self.topic, p,
                                    st.position, st.end)
                    self._finish(p)
            yield out
