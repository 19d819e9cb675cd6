"""Every embedstream producer puts a key in the partition the Java client would (issue 12, item 6).

librdkafka's default partitioner (consistent_random, CRC32) differs from the Java client's and
aiokafka's (murmur2): with mixed producers one doc_id lands in two partitions and an upsert and a
later tombstone can be applied out of order. Ground truth is the Java client itself: a tiny Java
program calls ``Utils.murmur2`` and the producer's ``BuiltInPartitioner.partitionForKey`` from the
kafka-clients jar of the test broker's install; the Python murmur2 below is written from the same
algorithm and checked against it.
"""
from __future__ import annotations

import subprocess
import uuid

import pytest
from confluent_kafka import Producer

from app.config import PRODUCER_PARTITIONER

PARTITIONS = 8  # the changes topic of topics/topics.toml

#: doc_ids of every byte length 1..13 (all murmur2 tail cases), non-ASCII, long, numeric
SAMPLE_KEYS = ([f"doc-{i}" for i in range(120)] + ["a", "ab", "abc", "abcd", "abcde", "kb-42", "kb-17"]
               + ["é", "ü-ß", "日本語の文書", "📄-1", "x" * 300, "0", "12345678", "tenant/a/doc/9"]
               + [str(uuid.UUID(int=i)) for i in range(20)])

JAVA = r"""
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.HexFormat;
import org.apache.kafka.clients.producer.internals.BuiltInPartitioner;
import org.apache.kafka.common.utils.Utils;

/** For each hex-encoded key on stdin: Utils.murmur2(key) and the Java producer's partition for it. */
public class KafkaPartition {
    public static void main(String[] args) throws Exception {
        int n = Integer.parseInt(args[0]);
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null) {
            byte[] key = HexFormat.of().parseHex(line.trim());
            System.out.println(Utils.murmur2(key) + " " + BuiltInPartitioner.partitionForKey(key, n));
        }
    }
}
"""


def murmur2(data: bytes) -> int:
    """Kafka's Utils.murmur2 (MurmurHash2, seed 0x9747b28c), as a signed 32-bit int."""
    m, r = 0x5BD1E995, 24
    h = (0x9747B28C ^ len(data)) & 0xFFFFFFFF
    n4 = len(data) // 4
    for i in range(n4):
        k = int.from_bytes(data[4 * i:4 * i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = data[4 * n4:]
    if len(tail) >= 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if len(tail) >= 1:
        h ^= tail[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def java_partition(key: bytes, n: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % n  # Utils.toPositive(murmur2(key)) % n


@pytest.fixture(scope="session")
def java_truth(tmp_path_factory) -> dict[str, tuple[int, int]]:
    """key -> (murmur2, partition) from the Java client of the installed Kafka."""
    from load.servers import java_bin
    from load.servers.kafka import install

    lib = install(quiet=True)
    src = tmp_path_factory.mktemp("java") / "KafkaPartition.java"
    src.write_text(JAVA)
    out = subprocess.run([java_bin(), "-cp", f"{lib}/*", str(src), str(PARTITIONS)], capture_output=True,
                         text=True, timeout=120, input="\n".join(k.encode().hex() for k in SAMPLE_KEYS) + "\n")
    assert out.returncode == 0, out.stderr
    rows = [tuple(map(int, line.split())) for line in out.stdout.splitlines()]
    assert len(rows) == len(SAMPLE_KEYS)
    return dict(zip(SAMPLE_KEYS, rows))


def test_python_murmur2_is_the_java_clients(java_truth):
    assert {k: (murmur2(k.encode()), java_partition(k.encode(), PARTITIONS)) for k in SAMPLE_KEYS} == java_truth
    # Kafka's own test vectors (clients/src/test/.../UtilsTest.testMurmur2)
    assert murmur2(b"21") == -973932308 and murmur2(b"foobar") == -790332482
    assert murmur2(b"a-little-bit-long-string") == -985981536


def test_aiokafka_default_partitioner_is_the_java_clients(java_truth):
    """The worker's dead-letter and alert producers are Faust's aiokafka producer: its default."""
    from aiokafka.partitioner import DefaultPartitioner

    parts = list(range(PARTITIONS))
    got = {k: DefaultPartitioner()(k.encode(), parts, parts) for k in SAMPLE_KEYS}
    assert got == {k: p for k, (_, p) in java_truth.items()}


def test_the_workers_producer_keeps_aiokafkas_default_partitioner():
    from aiokafka.partitioner import DefaultPartitioner

    from app.agents import create_app
    from app.config import Settings

    app = create_app(Settings.load(env={}, bootstrap_servers="127.0.0.1:1"), None)
    assert type(app.producer.partitioner) is DefaultPartitioner
    assert app.producer._settings_default()["partitioner"] is app.producer.partitioner


def _partitions_of(send, bootstrap: str, topic: str, keys) -> dict[str, int]:
    """Send each key (value b"x") with ``send(topic, key, value, on_delivery)``; key -> partition delivered."""
    got: dict[str, int] = {}

    def cb(err, msg):
        assert err is None, err
        got[msg.key().decode()] = msg.partition()
    for k in keys:
        send(topic, k.encode(), b"x", cb)
    return got


def _flushing(p: Producer):
    def send(topic, key, value, cb):
        p.produce(topic, key=key, value=value, on_delivery=cb)
    return send


def test_every_librdkafka_producer_partitions_like_java(settings, producer, java_truth):
    """The tests' producer fixture, load/loadgen (and so load/bench), load/crash_harness and the DLQ
    re-injection of `embedstream dlq replay` (and the replay's dead-letter producer) against Java."""
    from app.replay import DeadLetterView, reinject_dead_letters
    from load.crash_harness import produce_events
    from load.loadgen import make_producer

    topic, bootstrap = settings.changes_topic, settings.bootstrap_servers
    want = {k: p for k, (_, p) in java_truth.items()}
    results = {}

    results["tests' producer fixture"] = _partitions_of(_flushing(producer), bootstrap, topic, SAMPLE_KEYS)
    producer.flush(30)

    lg = make_producer(settings.kafka_config())
    results["load.loadgen.make_producer"] = _partitions_of(_flushing(lg), bootstrap, topic, SAMPLE_KEYS)
    lg.flush(30)

    class Gen:  # what crash_harness's generator yields: idx, key, value; partition/offset filled in
        def __init__(self, i, k):
            self.idx, self.key, self.value, self.partition, self.offset = i, k.encode(), b"x", None, None
    stream = [Gen(i, k) for i, k in enumerate(SAMPLE_KEYS)]
    errors: list[str] = []
    produce_events(bootstrap, topic, stream, rate=10_000, errors=errors)
    assert errors == []
    results["load.crash_harness.produce_events"] = {g.key.decode(): g.partition for g in stream}

    letters = [DeadLetterView(0, i, 0, k.encode(), b"x", ()) for i, k in enumerate(SAMPLE_KEYS)]
    assert reinject_dead_letters(settings, letters, topic) == len(SAMPLE_KEYS)

    for name, got in results.items():
        wrong = {k: (p, want[k]) for k, p in got.items() if p != want[k]}
        assert not wrong and len(got) == len(SAMPLE_KEYS), f"{name}: (got, java) {wrong}"

    # the re-injected copies: read back where they landed (the last len(SAMPLE_KEYS) records per key)
    from conftest import consume_all
    msgs = consume_all(bootstrap, topic, 4 * len(SAMPLE_KEYS), timeout=60)
    assert len(msgs) == 4 * len(SAMPLE_KEYS)
    by_key: dict[str, set[int]] = {}
    for m in msgs:
        by_key.setdefault(m.key().decode(), set()).add(m.partition())
    assert by_key == {k: {p} for k, p in want.items()}, "one key, one partition, whichever producer sent it"


def test_librdkafkas_default_partitioner_would_split_documents(settings, java_truth):
    """Why the setting matters: librdkafka's default puts many of the sample keys elsewhere."""
    p = Producer({"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 5})
    got = _partitions_of(_flushing(p), settings.bootstrap_servers, settings.changes_topic, SAMPLE_KEYS)
    p.flush(30)
    differ = [k for k, part in got.items() if part != java_truth[k][1]]
    assert len(differ) > len(SAMPLE_KEYS) // 2
    assert PRODUCER_PARTITIONER == "murmur2_random"
