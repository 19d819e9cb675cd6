"""Faust wiring details that the end-to-end worker tests cannot see directly."""
from __future__ import annotations

import asyncio
import dataclasses

from app.agents import create_app
from app.config import Settings


class _NoProcessor:
    """create_app only stores the processor; these tests never run a batch."""


def test_worker_consumer_uses_the_configured_fetch_wait(broker, settings):
    """Faust hard-codes fetch_max_wait_ms=1500 for its worker consumer; ours comes from the
    setting and reaches aiokafka's Fetcher (the attribute it reads is private: this pins it)."""
    app = create_app(dataclasses.replace(settings, fetch_max_wait_ms=37), _NoProcessor())

    async def started_fetch_wait():
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        assert consumer._fetch_max_wait_ms == 37
        await consumer.start()
        try:
            return consumer._fetcher._fetch_max_wait_ms
        finally:
            await consumer.stop()

    assert asyncio.run(started_fetch_wait()) == 37


def test_default_fetch_wait_is_well_below_fausts():
    assert Settings.load(env={}).fetch_max_wait_ms < 1500


# ----------------------------------------------------------------------------------------
# the delivery layer end to end: a worker subprocess on the test broker (tests/test_source.py has
# the same rules on the in-memory source)

import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402


from app.broker import free_port  # noqa: E402
from app.events import ChangeEvent, EventCodec, Op  # noqa: E402
from app.store.lancedb import LanceDBStore  # noqa: E402
from conftest import REPO, committed_offsets as _committed, consume_all, settings_env, wait_for  # noqa: E402

#: a scrubber plugin (EMBEDSTREAM_SCRUBBER=module:factory) that raises on texts containing ``trigger``
#: ("" : on every text), as a user's buggy plugin would
BUGGY_SCRUBBER = '''
class BuggyScrubber:
    name = "buggy-v1"

    def scrub(self, text):
        if "{trigger}" in text:
            raise RuntimeError("buggy scrubber: cannot handle this text")
        return text, {{}}


def factory():
    return BuggyScrubber()
'''


def _http(port: int, path: str) -> tuple[int | None, str]:
    """(status, body) of GET http://127.0.0.1:port/path; (None, why) while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return None, str(exc)


def _metrics(port: int) -> dict[str, float] | None:
    """The worker's /metrics as {'name{labels}': value} (None while it does not answer)."""
    code, body = _http(port, "/metrics")
    if code != 200:
        return None
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _produce(settings, events, partition=None) -> dict[int, int]:
    """Produce (doc, text) upserts; returns the end offset per partition."""
    from confluent_kafka import Producer

    codec = EventCodec()
    p = Producer({"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 20})
    ends: dict[int, int] = {}

    def cb(err, msg):
        assert err is None, err
        ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)
    for doc, text in events:
        kw = {} if partition is None else {"partition": partition}
        p.produce(settings.changes_topic, key=doc.encode(), on_delivery=cb, **kw,
                  value=codec.encode(ChangeEvent(doc, Op.UPSERT, 1, int(time.time() * 1000), text)))
    assert p.flush(30) == 0
    return ends


def _store(settings, encoder):
    def attempt():
        try:
            return LanceDBStore(f"{settings.data_dir}/lancedb", encoder.fingerprint, encoder.dim, create=False)
        except Exception:
            return None
    return wait_for(attempt, 90, what="the worker's LanceDB tables")


def test_a_buggy_scrubber_plugin_does_not_wedge_the_worker(settings, worker_factory, tmp_path, encoder):
    """The issue's reproduction: a scrubber plugin raising RuntimeError on one document of an
    11-event batch. Before: the agent crashed and Faust restarted it, the 10 valid documents never
    reached the store, committed offsets stopped (lag 13 in `offsets show`) while
    embedstream_consumer_lag said 0 and /readyz said ready. Now the document the plugin cannot
    handle is dead-lettered (reason scrubber-error), the other 10 are written, everything is
    committed, and lag and readiness tell the truth."""
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "buggy_scrub.py").write_text(BUGGY_SCRUBBER.format(trigger="poison"))
    port = free_port()
    settings = settings.replace(metrics_port=port)
    docs = [(f"doc-{i}", f"text number {i} about rivers" + (" poison" if i == 6 else "")) for i in range(11)]
    ends = _produce(settings, docs)  # queued before the worker starts: one batch of 11
    worker = worker_factory(settings, EMBEDSTREAM_SCRUBBER="buggy_scrub:factory",
                            PYTHONPATH=f"{tmp_path / 'plugins'}", EMBEDSTREAM_HEALTH_INTERVAL_S="0.5")
    store = _store(settings, encoder)
    wait_for(lambda: store.count_documents() == 10, 90, what="the 10 valid documents")
    wait_for(lambda: _committed(settings) == ends, 30, what=f"committed offsets {ends}")
    [dl] = consume_all(settings.bootstrap_servers, settings.dlq_topic, 1)
    assert dl.key() == b"doc-6" and dict(dl.headers())["x-dlq-reason"] == b"scrubber-error"
    assert "buggy scrubber" in dict(dl.headers())["x-dlq-detail"].decode()
    assert "doc-6" not in store.get_states([d for d, _ in docs])
    m = wait_for(lambda: (lambda m: m if m and all(v == 0 for k, v in m.items() if "consumer_lag" in k)
                          and sum(1 for k in m if "consumer_lag" in k) == 8 else None)(_metrics(port)),
                 30, what="lag 0 exported for all 8 partitions")
    assert m["embedstream_ready"] == 1 and _http(port, "/readyz")[0] == 200
    assert "batch events=11" in worker.log() and worker.alive()
    assert worker.stop() == 0


def _fault_worker(settings, log_path, fault: str, **env):
    full = {**settings_env(settings), "EMBEDSTREAM_TEST_FAULT": fault, **env}
    return subprocess.Popen([sys.executable, "-m", "load.faults"], cwd=REPO, env=full,
                            stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)


def test_a_failure_it_cannot_handle_stops_the_worker_without_committing_past_it(settings, worker_factory,
                                                                                   tmp_path, encoder):
    """A permanent store error without per-object errors (a fingerprint mismatch) used to end the
    agent; Faust restarted it on the same stream and the worker kept running, ready and stuck. Now
    it fails closed: exit status 70, /readyz 503 meanwhile, nothing of the batch committed; a new
    worker (the orchestrator's restart) gets the batch again and converges. Many more records wait
    behind the failed batch: Faust's stream keeps iterating after the delivery loop ends, and once
    acked every record it passed (a re-enabled ack flag), committing past the failed batch."""
    port = free_port()
    settings = settings.replace(metrics_port=port)
    first = _produce(settings, [(f"a-{i}", f"first round {i}") for i in range(4)], partition=0)
    log_path = tmp_path / "faulty.log"
    proc = _fault_worker(settings, log_path, "store-permanent:2")  # the 2nd batch's write is refused
    try:
        wait_for(lambda: _committed(settings, [0]) == first, 90, what="the first batch committed")
        second = _produce(settings, [(f"b-{i}", f"second round {i}") for i in range(1200)], partition=0)
        seen = []

        def exited():
            seen.append(_http(port, "/readyz"))
            return proc.poll() is not None
        wait_for(exited, 60, interval=0.05, what="the worker to exit after the failure")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_path.read_text()
    assert proc.returncode == 70, text[-3000:]
    assert "injected: collection holds another model's vectors" in text and "worker failed" in text
    assert any(code == 503 and "delivery" in body for code, body in seen), seen[-3:]
    assert _committed(settings, [0]) == first  # nothing past the failed batch
    # the orchestrator restarts it: the batch is redelivered and written
    worker = worker_factory(settings)
    store = _store(settings, encoder)
    wait_for(lambda: store.count_documents() == 1204, 180, what="all 1204 documents after the restart")
    wait_for(lambda: _committed(settings, [0]) == second, 30, what="everything committed")
    assert worker.stop() == 0


def test_dead_letter_limit_stops_consuming_the_partition(settings, worker_factory, tmp_path, encoder):
    """A systematic fault (here: a scrubber that fails on every text) would dead-letter and commit
    the whole partition. Past the limit the worker stops consuming it, commits nothing past the
    limit, answers 503 with the reason and logs what to do."""
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "broken_scrub.py").write_text(BUGGY_SCRUBBER.format(trigger=""))
    port = free_port()
    settings = settings.replace(metrics_port=port, batch_max_events=5)
    _produce(settings, [(f"d-{i}", f"text {i}") for i in range(40)], partition=0)
    worker = worker_factory(settings, EMBEDSTREAM_SCRUBBER="broken_scrub:factory",
                            PYTHONPATH=f"{tmp_path / 'plugins'}", EMBEDSTREAM_DLQ_MAX_CONSECUTIVE="10")
    code, body = wait_for(lambda: (lambda r: r if r[0] == 503 and "dead-letter" in r[1] else None)(
        _http(port, "/readyz")), 90, what="/readyz 503 for the dead-letter limit")
    assert "dead-letter limit reached on" in body and "11 dead letters in a row (limit 10)" in body
    time.sleep(3)
    # batches of 5: the first two (10 dead letters) went through; the one crossing the limit, and
    # everything after it, is neither dead-lettered nor committed
    assert _committed(settings, [0]) == {0: 10}
    dls = consume_all(settings.bootstrap_servers, settings.dlq_topic, 40, timeout=5)
    assert len(dls) == 10
    log = worker.log()
    assert "EMBEDSTREAM_DLQ_MAX_CONSECUTIVE" in log and "embedstream dlq show" in log
    assert worker.alive() and worker.stop() == 0


def test_a_rebalance_while_the_store_is_down_finishes_within_the_rebalance_timeout(settings, worker_factory,
                                                                                     tmp_path, encoder):
    """Worker A retries a batch against a store that is down (for A only: an injected 40 s outage);
    B joins. Before, A's revocation waited for that batch forever (Faust's stream_wait_empty), so
    the group could not finish rebalancing until Kafka expelled A after the rebalance timeout. Now
    A abandons the batch unacked after half the rebalance timeout, B gets its partitions at once,
    and when A's store returns everything converges: 0 lost."""
    settings = settings.replace(rebalance_timeout_s=20.0)
    env = {"EMBEDSTREAM_REBALANCE_TIMEOUT_S": "20"}
    first = _produce(settings, [(f"p-{i}", f"before the outage {i}") for i in range(16)])
    a = _fault_worker(settings, tmp_path / "a.log", "store-outage:2:40", **env)  # from its 2nd batch on
    try:
        store = _store(settings, encoder)
        wait_for(lambda: store.count_documents() == 16, 90, what="16 documents before the outage")
        wait_for(lambda: _committed(settings) == first, 30, what="committed before the outage")
        during = _produce(settings, [(f"q-{i}", f"during the outage {i}") for i in range(16)])
        a_log = lambda: (tmp_path / "a.log").read_text()  # noqa: E731
        wait_for(lambda: "retrying" in a_log(), 30, what="A retrying the store")
        b = worker_factory(settings, **env)
        wait_for(lambda: "worker ready" in b.log(), 60, what="B started")
        t0 = time.monotonic()
        wait_for(lambda: "partitions assigned: changes" in b.log(), 30, what="B getting partitions")
        took = time.monotonic() - t0
        assert took < 20, f"the rebalance took {took:.0f}s (rebalance timeout 20 s)"
        assert "abandoned" in a_log() or "abandoning it unacked" in a_log(), a_log()[-2000:]
        wait_for(lambda: store.count_documents() == 32, 120, what="all 32 documents after A's outage")
        wait_for(lambda: _committed(settings) == {p: max(first.get(p, 0), during.get(p, 0))
                                                  for p in set(first) | set(during)}, 60, what="all committed")
        print(f"B got its partitions {took:.1f}s after it was ready (rebalance timeout 20 s)")
        assert a.poll() is None and b.stop() == 0
    finally:
        if a.poll() is None:
            a.send_signal(15)
            a.wait(60)
    assert a.returncode == 0, a_log()[-3000:]


def test_faust_acks_only_count_for_records_the_store_acknowledged(broker, settings, monkeypatch):
    """Faust acks on its own every message its stream skips (flow control suspended during a
    rebalance or a shutdown, an earlier consumer generation). Those records were never processed:
    the worker's consumer refuses such acks, so no commit can pass them. Found by the crash harness
    with injected faults (three junk records committed without a dead letter)."""
    from faust.types import TP as FaustTP
    from faust.types.tuples import ConsumerMessage

    app = create_app(settings, _NoProcessor())
    consumer = app.consumer
    tp = FaustTP(settings.changes_topic, 0)
    monkeypatch.setattr(app.topics, "acks_enabled_for", lambda topic: True)  # as once the agent subscribed

    def message(offset: int):
        return ConsumerMessage(tp.topic, tp.partition, offset, 0.0, 0, [], b"k", b"v", None, 1, 1, tp)

    skipped, processed = message(7), message(8)
    assert skipped.ack(consumer) is False           # what Faust's stream does with a skipped message
    assert consumer._acked[tp] == [] and not skipped.acked
    consumer.approve(processed)                      # FaustSource.ack, after the store acknowledged
    assert processed.ack(consumer) is True
    assert consumer._acked[tp] == [8]


def test_records_are_handed_to_the_producer_in_order_even_when_a_send_awaits_first():
    """Two alerts of one episode (WARNING #0, then CRITICAL #1) must reach the alerts topic in that
    order. Faust's ``topic.send`` may await (declaring the topic, a full buffer) before it enqueues,
    so sending them side by side with ``gather`` let a later alert overtake an earlier one (seen in
    ``demo --drift``: #1 printed before #0)."""
    from app.agents import FaustSource

    enqueued = []

    class SlowFirstTopic:
        async def send(self, key, value, headers=None):
            if not enqueued and key == b"a":
                await asyncio.sleep(0.05)  # the first send is the slow one
            enqueued.append(key)
            fut = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_later(0.01, fut.set_result, None)
            return fut

    src = FaustSource.__new__(FaustSource)
    src.topics = {"alerts": SlowFirstTopic()}
    asyncio.run(src.send("alerts", [(b"a", b"1", ()), (b"b", b"2", ()), (b"c", b"3", [("h", b"v")])]))
    assert enqueued == [b"a", b"b", b"c"]


def test_a_topic_missing_from_metadata_at_the_assignment_is_waited_for_not_ignored_for_minutes(broker):
    """Right after a broker restart, Kafka may answer metadata without a topic; the group leader
    then assigns nothing ("Ignoring missing topic") and aiokafka notices the topic again only at the
    next metadata refresh, 5 minutes later (the broker-restart crash test saw the worker idle with no
    partitions for 3 minutes). A topic that appears after the join stands in for that here: with
    ``refresh_until_topics_known`` the group rejoins and gets the partitions within seconds; without
    it, nothing is assigned for as long as we wait."""
    import uuid

    from aiokafka import AIOKafkaConsumer
    from aiokafka.abc import ConsumerRebalanceListener
    from confluent_kafka.admin import AdminClient, NewTopic

    from app.agents import refresh_until_topics_known, unknown_subscribed_topics

    admin = AdminClient({"bootstrap.servers": broker.bootstrap})

    async def join_then_create(topic: str, watch: bool, wait_s: float) -> set:
        joined = asyncio.Event()

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                pass

            def on_partitions_assigned(self, assigned):
                joined.set()

        c = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=f"g-{topic}", session_timeout_ms=6000,
                             heartbeat_interval_ms=1000)
        await c.start()  # then subscribe, as Faust does (start() would wait for the topic)
        try:
            c.subscribe([topic], listener=Listener())
            getter = asyncio.ensure_future(c.getmany(timeout_ms=200))
            await asyncio.wait_for(joined.wait(), 30)
            assert c.assignment() == set() and unknown_subscribed_topics(c) == {topic}
            admin.create_topics([NewTopic(topic, 3, 1)])[topic].result(30)
            watcher = asyncio.ensure_future(refresh_until_topics_known(c, first_s=0.2, max_s=1.0)) if watch else None
            deadline = asyncio.get_running_loop().time() + wait_s
            while not c.assignment() and asyncio.get_running_loop().time() < deadline:
                if getter.done():
                    getter = asyncio.ensure_future(c.getmany(timeout_ms=200))
                await asyncio.sleep(0.2)
            if watcher is not None:
                assert watcher.done()
            getter.cancel()
            return {tp.partition for tp in c.assignment()}
        finally:
            await c.stop()

    tag = uuid.uuid4().hex[:8]
    assert asyncio.run(join_then_create(f"late-{tag}", watch=True, wait_s=30)) == {0, 1, 2}
    assert asyncio.run(join_then_create(f"late-ctl-{tag}", watch=False, wait_s=10)) == set()
