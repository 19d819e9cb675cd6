"""The delivery loop (app/delivery.py) on the in-memory source (app/source.py): ordering, acking,
abandonment, revocation, shutdown, failures, the dead-letter limit and health - deterministic, no
broker, each test well under a second.

The processor here is a stand-in with the real Processor's contract (prepare in one thread, commit
in another, ``cancel`` ends retries, ``abandon`` releases a prepared batch); what it writes is a
dict. Tests with the real pipeline are at the end (real encoder, real LanceDB files).
"""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from app.deadletter import DeadLetter, Record
from app.delivery import Delivery, DeliveryConfig, DeliveryFailed
from app.dlq_limit import DeadLetterLimit, DeadLetterLimiter
from app.observability import Health, Metrics
from app.pipeline import BatchResult, Interrupted
from app.source import Batch, MemorySource, OffsetTracker

P0, P1 = ("changes", 0), ("changes", 1)


class Prepared:
    def __init__(self, records, result):
        self.records, self.result = records, result


class FakeProcessor:
    """Writes ``key -> value`` into ``self.store``; ``b"bad"`` values become dead letters.

    ``block`` (threading.Event) holds commits until set - a store that does not answer - and
    honours the batch's cancel token like the real retry loop; ``fail_commit`` / ``fail_prepare``
    raise on the n-th call.
    """

    def __init__(self):
        self.store: dict[bytes, bytes] = {}
        self.block: threading.Event | None = None
        self.fail_commit: dict[int, BaseException] = {}
        self.fail_prepare: dict[int, BaseException] = {}
        self.prepares = self.commits = 0
        self.abandoned: list = []
        self.holding: set = set()
        self.stopped = threading.Event()

    def prepare(self, records, cancel=None):
        self.prepares += 1
        if self.prepares in self.fail_prepare:
            raise self.fail_prepare[self.prepares]
        res = BatchResult(records=len(records), cancel=cancel)
        for r in records:
            if r.value == b"bad":
                res.dead_letter(DeadLetter(r, "unknown-magic-byte", "test"))
        p = Prepared([r for r in records if r.value != b"bad"], res)
        self.holding.add(id(p))
        return p

    def commit(self, prepared):
        self.commits += 1
        try:
            if self.commits in self.fail_commit:
                raise self.fail_commit[self.commits]
            if self.block is not None:
                cancelled = lambda: ((prepared.result.cancel is not None and prepared.result.cancel.is_set())
                                     or self.stopped.is_set())
                while not self.block.wait(0.005) or cancelled():  # like Processor._retry: checked
                    if cancelled():                                 # before every store call
                        raise Interrupted("cancelled while the store was down")
            for r in prepared.records:
                self.store[r.key] = r.value
            prepared.result.count("UPSERT", "written", len(prepared.records))
            return prepared.result
        finally:
            self.holding.discard(id(prepared))

    def abandon(self, prepared):
        self.abandoned.append(prepared)
        self.holding.discard(id(prepared))

    def stop(self):
        self.stopped.set()


def rec(p: int, key: str, value: bytes = b"v") -> Record:
    return Record("changes", p, -1, key.encode(), value)


def delivery(source, proc, *, grace=0.2, health=None, metrics=None, limit=None, max_events=4):
    cfg = DeliveryConfig(app_id="t", dlq_topic="dlq", alerts_topic="alerts", max_events=max_events,
                         linger_s=0, revoke_grace_s=grace, shutdown_grace_s=grace, health_interval_s=0.01)
    return Delivery(source, proc, cfg, health=health, metrics=metrics,
                    limiter=DeadLetterLimiter(limit or DeadLetterLimit()))


async def until(pred, timeout=2.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.002)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


# -- offsets -----------------------------------------------------------------------------------
def test_tracker_commits_only_over_a_contiguous_run_of_acked_batches():
    t = OffsetTracker()
    b1, b2, b3 = (Batch(i, [Record("changes", 0, o, b"k", b"v") for o in offs])
                  for i, offs in ((1, (0, 1)), (2, (2, 5)), (3, (6,))))
    for b in (b1, b2, b3):
        t.handed_out(b)
    assert t.acked(b2) == {} and t.position(P0) is None  # out of order: nothing committable
    assert t.acked(b1) == {P0: [1, 2]} and t.position(P0) == 6  # b1 completes the run b1, b2


def test_an_abandoned_batch_blocks_later_acks_on_a_partition_that_never_committed():
    """Faust skips its gap check when a partition never committed, so acking batch 2 after batch 1
    was dropped would commit past batch 1. The tracker refuses."""
    t = OffsetTracker()
    b1, b2 = Batch(1, [Record("changes", 0, 0, b"k", b"v")]), Batch(2, [Record("changes", 0, 1, b"k", b"v")])
    t.handed_out(b1)
    t.handed_out(b2)
    t.abandon(b1)
    assert t.acked(b2) == {} and t.position(P0) is None
    t.revoke([P0])  # a new assignment re-reads from the committed offset
    assert not t.blocked(P0)


def test_batches_before_an_abandoned_one_are_still_acked():
    t = OffsetTracker()
    b1, b2 = Batch(1, [Record("changes", 0, 0, b"k", b"v")]), Batch(2, [Record("changes", 0, 1, b"k", b"v")])
    t.handed_out(b1)
    t.handed_out(b2)
    t.abandon(b2)  # e.g. the prepared batch at shutdown
    assert t.acked(b1) == {P0: [1]} and t.position(P0) == 1


# -- the loop -----------------------------------------------------------------------------------
def test_batches_are_written_in_order_and_committed_after_their_dead_letters():
    async def main():
        src, proc = MemorySource([P0, P1]), FakeProcessor()
        d = delivery(src, proc)
        for i in range(10):
            src.append(rec(i % 2, f"k{i}", b"bad" if i == 3 else b"v"))
        task = asyncio.ensure_future(d.run())
        await until(lambda: src.acked == {P0: 5, P1: 5})
        await src.commit()
        assert src.committed == {P0: 5, P1: 5}
        assert [s[1] for s in src.sent] == [b"k3"] and src.sent[0][0] == "dlq"
        assert len(proc.store) == 9 and not proc.holding
        src.stop()
        await task
    run(main())


def test_a_failing_batch_fails_closed_and_releases_what_it_held():
    """Defect 1: a non-transient error must not wedge the worker. The failed batch and everything
    after it stay unacked, the prepared next batch's documents are released, readiness drops, and
    the loop ends with DeliveryFailed (the worker exits non-zero; Kafka redelivers)."""
    async def main():
        src, proc = MemorySource([P0]), FakeProcessor()
        health = Health(failing_after_s=60)
        for c in Health.CHECKS:
            health.set(c, True)
        proc.fail_commit[2] = RuntimeError("scrubber plugin crashed")  # permanent, not a store outage
        proc.block = threading.Event()
        d = delivery(src, proc, health=health, max_events=2)
        for i in range(8):
            src.append(rec(0, f"k{i}"))
        task = asyncio.ensure_future(d.run())
        await until(lambda: proc.prepares >= 2)
        proc.block.set()
        with pytest.raises(DeliveryFailed, match="scrubber plugin crashed"):
            await task
        await src.commit()
        assert src.committed == {P0: 2}  # batch 1 only; nothing past the failed batch 2
        await asyncio.sleep(0.05)
        assert not proc.holding, "a prepared batch kept its documents"
        rep = health.report()
        assert not rep["ready"] and "scrubber plugin crashed" in rep["checks"]["delivery"]["detail"]
    run(main())


@pytest.mark.parametrize("where", ["prepare", "send"])
def test_failures_elsewhere_fail_closed_too(where):
    async def main():
        src, proc = MemorySource([P0]), FakeProcessor()
        if where == "prepare":
            proc.fail_prepare[2] = ValueError("drift stage broke")
        else:
            src.fail_sends = 1  # Kafka did not acknowledge the dead letter
        d = delivery(src, proc, max_events=2)
        for i in range(6):
            src.append(rec(0, f"k{i}", b"bad" if (where == "send" and i == 2) else b"v"))
        with pytest.raises(DeliveryFailed):
            await d.run()
        await src.commit()
        assert src.committed == {P0: 2}
    run(main())


def test_revocation_while_the_store_is_down_abandons_the_batch_within_the_grace():
    """Defect 2: the rebalance finishes within its bound; the batch is not acked and its later
    store calls are not made (the cancel token stops the retry loop)."""
    async def main():
        src, proc = MemorySource([P0, P1]), FakeProcessor()
        proc.block = threading.Event()  # the store does not answer
        d = delivery(src, proc, grace=0.1)
        for i in range(6):
            src.append(rec(i % 2, f"k{i}"))
        task = asyncio.ensure_future(d.run())
        await until(lambda: proc.commits >= 1)
        t0 = time.monotonic()
        await src.revoke()
        took = time.monotonic() - t0
        assert 0.09 <= took < 0.5, took
        assert src.committed == {} and proc.store == {}
        await until(lambda: not proc.holding)  # the store thread gave up, documents released
        proc.block.set()
        await src.assign([P0, P1])  # the partitions come back: read again from the committed offset
        await until(lambda: src.acked == {P0: 3, P1: 3})
        assert len(proc.store) == 6
        src.stop()
        await task
    run(main())


def test_revocation_waits_for_a_batch_that_finishes_in_time_and_commits_it():
    async def main():
        src, proc = MemorySource([P0]), FakeProcessor()
        proc.block = threading.Event()
        d = delivery(src, proc, grace=2)
        for i in range(3):
            src.append(rec(0, f"k{i}"))
        task = asyncio.ensure_future(d.run())
        await until(lambda: proc.commits >= 1)
        asyncio.get_running_loop().call_later(0.05, proc.block.set)
        await src.revoke()
        assert src.committed == {P0: 3}  # written, acked and committed before the partition went
        src.stop()
        await task
    run(main())


def test_a_prepared_batch_of_revoked_partitions_is_not_written():
    async def main():
        src, proc = MemorySource([P0]), FakeProcessor()
        proc.block = threading.Event()
        d = delivery(src, proc, grace=0.05, max_events=2)
        for i in range(4):
            src.append(rec(0, f"k{i}"))
        task = asyncio.ensure_future(d.run())
        await until(lambda: proc.prepares >= 2)  # batch 1 writing, batch 2 prepared
        await src.revoke()
        proc.block.set()
        await asyncio.sleep(0.05)
        assert proc.store == {} and proc.commits == 1 and len(proc.abandoned) == 1
        src.stop()
        await task
    run(main())


def test_shutdown_finishes_the_batch_being_written_or_gives_it_up():
    async def main():
        for store_up in (True, False):
            src, proc = MemorySource([P0]), FakeProcessor()
            proc.block = threading.Event()
            d = delivery(src, proc, grace=0.1)
            for i in range(3):
                src.append(rec(0, f"k{i}"))
            task = asyncio.ensure_future(d.run())
            await until(lambda: proc.commits >= 1)
            if store_up:
                asyncio.get_running_loop().call_later(0.02, proc.block.set)
            assert await d.drain() is store_up
            await src.commit()
            assert src.committed == ({P0: 3} if store_up else {})
            assert proc.stopped.is_set() is (not store_up)
            src.stop()
            await task
    run(main())


def test_dead_letter_limit_stops_the_partition_and_reports_why():
    """Defect 5: a systematic fault does not drain the topic into the DLQ."""
    async def main():
        src, proc = MemorySource([P0, P1]), FakeProcessor()
        metrics = Metrics()
        health = Health(metrics)
        for c in Health.CHECKS:
            health.set(c, True)
        d = delivery(src, proc, health=health, metrics=metrics, max_events=10,
                     limit=DeadLetterLimit(max_consecutive=5, max_share=1))
        for i in range(30):
            src.append(rec(0, f"bad{i}", b"bad"))  # partition 0: everything is dead-lettered
            src.append(rec(1, f"ok{i}"))
        task = asyncio.ensure_future(d.run())
        await until(lambda: src.acked.get(P1) == 30)
        await src.commit()
        # p0's first batch (5 dead letters, at the limit) went through; the one crossing it did not
        assert src.committed.get(P0) == 5 and P0 in src.paused and P0 in d.tripped
        assert sum(1 for s in src.sent if s[0] == "dlq") == 5
        rep = health.report()
        assert not rep["ready"]
        assert "dead-letter limit" in rep["checks"]["dead-letter-limit changes[0]"]["detail"]
        assert 'embedstream_dlq_limit_stopped{partition="0",topic="changes"} 1.0' in metrics.render().decode()
        src.stop()
        await task
    run(main())


def test_dead_letter_share_limit():
    lim = DeadLetterLimiter(DeadLetterLimit(max_consecutive=0, max_share=0.5, window=10, min_records=10))
    breaches = [lim.observe(P0, i, "x" if i % 3 else None) for i in range(12)]
    first = next(i for i, b in enumerate(breaches) if b is not None)
    assert first == 9 and breaches[first].rule == "share"  # 6 of 10 dead letters


def test_lag_is_exported_for_every_assigned_partition_and_dropped_on_revocation():
    """Defect 3: lag from the committed position on a timer, not only for the last batch's
    partitions; gauges of revoked partitions disappear; a stall makes /readyz fail."""
    async def main():
        src, proc = MemorySource([P0, P1]), FakeProcessor()
        metrics = Metrics()
        clock = [1000.0]
        health = Health(metrics, stall_after_s=30, clock=lambda: clock[0])
        for c in Health.CHECKS:
            health.set(c, True)
        d = delivery(src, proc, health=health, metrics=metrics)
        src.paused.add(P1)  # nothing of p1 is processed: it has lag
        for i in range(4):
            src.append(rec(0, f"a{i}"))
            src.append(rec(1, f"b{i}"))
        task = asyncio.ensure_future(d.run())
        await until(lambda: src.acked.get(P0) == 4)
        await src.commit()
        assert await d.export_lag() == 4
        text = metrics.render().decode()
        assert 'embedstream_consumer_lag{partition="0",topic="changes"} 0.0' in text
        assert 'embedstream_consumer_lag{partition="1",topic="changes"} 4.0' in text
        assert health.ready
        clock[0] += 31  # no progress for longer than stall_after_s while there is lag
        assert not health.ready and "no batch acked" in health.report()["checks"]["progress"]["detail"]
        assert 'embedstream_seconds_since_progress 31.0' in metrics.render().decode()
        await src.revoke([P1])
        await d.export_lag()
        assert 'partition="1"' not in metrics.render().decode()
        src.stop()
        await task
    run(main())


def test_store_failures_make_the_worker_unready_only_when_they_last():
    clock = [0.0]
    h = Health(failing_after_s=30, clock=lambda: clock[0])
    for c in Health.CHECKS:
        h.set(c, True)
    h.failing("store", "timeout")
    clock[0] = 29
    h.failing("store", "timeout again")
    assert h.ready
    clock[0] = 31
    assert not h.ready and "timeout again" in h.report()["checks"]["store"]["detail"]
    h.succeeded("store")
    assert h.ready


def _alert():
    from app.drift.alert import AlertKind, DriftAlert, Severity

    return DriftAlert(alert_id="a1", kind=AlertKind.ENCODER_CHANGED, severity=Severity.CRITICAL,
                      model_fingerprint="m:int8:abc", collection="docs", episode_id="e1", sequence=0,
                      detector="canary", signals=["canary"], triggers=[], fired_at=1_700_000_123_456,
                      event_time=0, event_index=0, episode_start_index=0, window_start_index=0, offsets=[],
                      stats=[], example_doc_ids=[], events_observed=0, message="encoder changed")


def _run_with_one_event(drift_stage):
    """A delivery loop with ``drift_stage`` over a source holding one event (call inside a loop)."""
    src = MemorySource([P0])
    d = delivery(src, FakeProcessor())
    d.drift = drift_stage
    src.append(rec(0, "k0"))
    return src, asyncio.ensure_future(d.run())


def test_an_idle_worker_publishes_what_the_drift_stage_still_holds():
    """The drift stage batches single events and keeps a start-up canary alert until it is asked:
    when no event waits, the loop flushes it (in the store thread) and publishes the alerts."""
    import threading

    class HeldBack:
        def __init__(self):
            self.threads: set[str] = set()
            self.flushed = 0
            # built here, not in flush(): its first call imports the drift package, which took
            # 1.5-1.8 s of the 2 s the test waits on a loaded machine
            self.alert = _alert()

        def observe(self, result):
            self.threads.add(threading.current_thread().name)
            return []

        def flush(self):
            self.threads.add(threading.current_thread().name)
            self.flushed += 1
            return [self.alert] if self.flushed == 1 else []

    async def main():
        stage = HeldBack()
        src, task = _run_with_one_event(stage)
        await until(lambda: any(s[0] == "alerts" for s in src.sent))
        assert src.acked == {P0: 1} and stage.flushed >= 1
        assert all(t.startswith("store") for t in stage.threads), stage.threads
        src.stop()
        await task
    run(main())


def test_an_idle_worker_runs_its_idle_step_again_while_nothing_arrives(monkeypatch):
    """A quiet stream: the drift stage is flushed again every IDLE_TICK_S (it takes a relearn request
    then, `embedstream drift relearn`), not only once when the stream went quiet."""
    import app.source as source_mod

    monkeypatch.setattr(source_mod, "IDLE_TICK_S", 0.05)

    class Counting:
        flushed = 0

        def observe(self, result):
            return []

        def flush(self):
            self.flushed += 1
            return []

    async def main():
        stage = Counting()
        src, task = _run_with_one_event(stage)
        await until(lambda: stage.flushed >= 5)
        assert src.acked == {P0: 1}
        src.append(rec(0, "k1"))  # an event still ends the wait at once
        await until(lambda: src.acked == {P0: 2}, timeout=0.5)
        src.stop()
        await task
    run(main())
