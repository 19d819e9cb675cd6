"""WeaviateStore adapter tests that need the Weaviate *test server* (tests/weaviate_server).

These are NOT integration tests with a real Weaviate: the test server is an in-process protocol
double. The real weaviate-client talks to it over real sockets (no client method is mocked). What
is here needs something a real server cannot be made to do on demand:

* exact gRPC status codes on chosen calls (UNAVAILABLE, DEADLINE_EXCEEDED, a reply lost after
  the write), HTTP 5xx during start-up, a whole-server outage flipped on and off in milliseconds;
* per-object batch errors on chosen objects (transient and permanent, mixed reasons);
* call counts (one query per get_states, one schema creation, delete loops) and an old server
  version (no aliases below 1.32).

Everything else about Weaviate - tokenisation, aliases, schema, limits, the adapter's behaviour
without faults - runs against the real server too (test_weaviate_both.py, test_contract.py), and
the test server is kept equal to it there.
"""
from __future__ import annotations

import logging
import time

import grpc
import pytest
import weaviate
from weaviate.classes.config import Configure
from weaviate.exceptions import WeaviateQueryError

from app.store.base import (
    ChunkRecord,
    FingerprintMismatch,
    PermanentStoreError,
    TransientStoreError,
)
from app.store.weaviate import (
    RetryPolicy,
    WeaviateStore,
    doc_state_uuid,
    is_transient_message,
)

from .conftest import FAST_RETRY, WeaviateTestServer, free_port, open_test_server_store, unit_vectors
from .test_contract import chunks_of, state

FP = "fp-test"


def raw_client(server: WeaviateTestServer, api_key: str | None = None) -> weaviate.WeaviateClient:
    """The real weaviate-client, straight at the test server (for setting up odd states)."""
    return weaviate.connect_to_custom(
        http_host="127.0.0.1",
        http_port=server.http_port,
        http_secure=False,
        grpc_host="127.0.0.1",
        grpc_port=server.grpc_port,
        grpc_secure=False,
        auth_credentials=weaviate.classes.init.Auth.api_key(api_key) if api_key else None,
        skip_init_checks=True,
    )


@pytest.fixture
def store(weaviate_server):
    s = open_test_server_store(weaviate_server, fingerprint=FP)
    yield s
    s.close()


def stored_ids(server: WeaviateTestServer, collection: str) -> set[str]:
    with server.db.lock:
        return set(server.db.resolve(collection).objects)


# --------------------------------------------------------------------------- transient faults


def test_test_server_unavailable_twice_on_batch_still_upserts_everything(weaviate_server, store):
    """UNAVAILABLE is retried inside weaviate-client (sleeps 1 s, 2 s) - the upsert succeeds."""
    weaviate_server.faults.add("BatchObjects", grpc.StatusCode.UNAVAILABLE, times=2)
    chunks = chunks_of("doc-a", 5, fingerprint=FP)
    weaviate_server.reset_calls()
    store.upsert_chunks(chunks)
    assert weaviate_server.calls("BatchObjects") == 3
    assert stored_ids(weaviate_server, store.collection_name) == {c.id for c in chunks}
    assert store.count() == 5


def test_test_server_deadline_exceeded_twice_is_retried_by_the_adapter(weaviate_server):
    """A server slower than the client's deadline: DEADLINE_EXCEEDED, retried with backoff."""
    store = open_test_server_store(weaviate_server, fingerprint=FP, timeout_s=1.0)
    try:
        weaviate_server.faults.add(
            "BatchObjects", grpc.StatusCode.DEADLINE_EXCEEDED, times=2, delay_s=1.5
        )
        chunks = chunks_of("doc-a", 4, fingerprint=FP)
        weaviate_server.reset_calls()
        store.upsert_chunks(chunks)
        assert weaviate_server.calls("BatchObjects") == 3
        assert stored_ids(weaviate_server, store.collection_name) == {c.id for c in chunks}
    finally:
        store.close()


def test_test_server_lost_reply_after_write_is_retried_idempotently(weaviate_server, store):
    """The write happened but the answer was lost: the retry replaces by id, no duplicates."""
    weaviate_server.faults.add(
        "BatchObjects", grpc.StatusCode.DEADLINE_EXCEEDED, times=1, apply_first=True
    )
    chunks = chunks_of("doc-a", 3, fingerprint=FP)
    store.upsert_chunks(chunks)
    assert store.count() == 3
    assert weaviate_server.object_count(store.collection_name) == 3


def test_test_server_deadline_exceeded_on_every_try_raises_transient(weaviate_server):
    store = open_test_server_store(weaviate_server, fingerprint=FP, timeout_s=1.0)
    try:
        weaviate_server.faults.add(
            "BatchObjects", grpc.StatusCode.DEADLINE_EXCEEDED, times=None, delay_s=1.5
        )
        with pytest.raises(TransientStoreError, match="(?i)deadline"):
            store.upsert_chunks(chunks_of("doc-a", 2, fingerprint=FP))
        assert weaviate_server.calls("BatchObjects") == FAST_RETRY.max_attempts
    finally:
        store.close()


def test_test_server_transient_object_error_retries_only_that_object(weaviate_server, store):
    chunks = chunks_of("doc-a", 4, fingerprint=FP)
    weaviate_server.faults.object_error(chunks[2].id, "context deadline exceeded", times=2)
    weaviate_server.reset_calls()
    store.upsert_chunks(chunks)
    assert weaviate_server.calls("BatchObjects") == 3
    assert stored_ids(weaviate_server, store.collection_name) == {c.id for c in chunks}


def test_test_server_persistent_transient_object_error_raises_transient(weaviate_server, store):
    chunks = chunks_of("doc-a", 3, fingerprint=FP)
    weaviate_server.faults.object_error(chunks[0].id, "shard is read-only", times=None)
    with pytest.raises(TransientStoreError, match="read-only"):
        store.upsert_chunks(chunks)
    assert stored_ids(weaviate_server, store.collection_name) == {chunks[1].id, chunks[2].id}


def test_test_server_permanent_object_error_names_exactly_that_id(weaviate_server, store):
    chunks = chunks_of("doc-a", 5, fingerprint=FP)
    bad = chunks[3].id
    weaviate_server.faults.object_error(bad, "invalid text property 'text': bad encoding")
    weaviate_server.reset_calls()
    with pytest.raises(PermanentStoreError) as info:
        store.upsert_chunks(chunks)
    assert not isinstance(info.value, FingerprintMismatch)
    assert info.value.object_errors == {bad: "invalid text property 'text': bad encoding"}
    assert weaviate_server.calls("BatchObjects") == 1  # permanent: not retried
    assert stored_ids(weaviate_server, store.collection_name) == {c.id for c in chunks} - {bad}


def test_test_server_permanent_errors_across_batches_write_the_rest(weaviate_server):
    store = open_test_server_store(weaviate_server, fingerprint=FP, batch_size=3)
    try:
        chunks = chunks_of("doc-a", 8, fingerprint=FP)
        weaviate_server.faults.object_error(chunks[1].id, "invalid: one")
        weaviate_server.faults.object_error(chunks[6].id, "invalid: two")
        with pytest.raises(PermanentStoreError) as info:
            store.upsert_chunks(chunks)
        assert info.value.object_errors == {chunks[1].id: "invalid: one", chunks[6].id: "invalid: two"}
        assert store.count() == 6
    finally:
        store.close()


def test_test_server_every_object_failing_differently_is_resolved_per_object(weaviate_server, store):
    """insert_many raises WeaviateInsertManyAllFailedError with only the *set* of messages."""
    chunks = chunks_of("doc-a", 3, fingerprint=FP)
    weaviate_server.faults.object_error(chunks[0].id, "invalid: first")
    weaviate_server.faults.object_error(chunks[1].id, "invalid: second")
    weaviate_server.faults.object_error(chunks[2].id, "connection reset by peer", times=1)
    with pytest.raises(PermanentStoreError) as info:
        store.upsert_chunks(chunks)
    assert info.value.object_errors == {chunks[0].id: "invalid: first", chunks[1].id: "invalid: second"}
    assert stored_ids(weaviate_server, store.collection_name) == {chunks[2].id}


def test_test_server_state_object_errors_are_keyed_by_doc_id(weaviate_server, store):
    weaviate_server.faults.object_error(doc_state_uuid("doc-b"), "invalid: refused")
    with pytest.raises(PermanentStoreError) as info:
        store.put_states([state("doc-a", fingerprint=FP), state("doc-b", fingerprint=FP)])
    assert info.value.object_errors == {"doc-b": "invalid: refused"}
    assert set(store.get_states(["doc-a", "doc-b"])) == {"doc-a"}


def test_test_server_rest_5xx_during_start_up_is_retried(weaviate_server):
    weaviate_server.faults.add_http("/v1/schema", status=503, times=2)
    store = open_test_server_store(weaviate_server, fingerprint=FP)
    try:
        assert store.count() == 0
    finally:
        store.close()


def test_test_server_batch_delete_unavailable_is_retried_by_the_adapter(weaviate_server, store):
    """The client does not retry BatchDelete itself; the adapter does."""
    store.upsert_chunks(chunks_of("doc-a", 3, fingerprint=FP))
    weaviate_server.faults.add("BatchDelete", grpc.StatusCode.UNAVAILABLE, times=2)
    assert store.delete_chunks("doc-a") == 3
    assert store.count() == 0


# --------------------------------------------------------------------------- outage


def test_test_server_outage_raises_transient_fast_and_recovers(weaviate_server, store):
    store.upsert_chunks(chunks_of("doc-a", 2, fingerprint=FP))
    weaviate_server.down()
    t0 = time.perf_counter()
    with pytest.raises(TransientStoreError, match="(?i)unavailable|down"):
        store.delete_chunks("doc-a")
    assert time.perf_counter() - t0 < 2.0
    weaviate_server.up()
    assert store.delete_chunks("doc-a") == 2


@pytest.mark.slow
def test_test_server_outage_during_upsert_raises_transient_then_retry_works(weaviate_server, store):
    """Slow (~15 s): weaviate-client sleeps 1+2+4+8 s on UNAVAILABLE before giving up."""
    chunks = chunks_of("doc-a", 3, fingerprint=FP)
    # BatchObjects only: the version guard's reads before it (Search) still answer
    weaviate_server.faults.add("BatchObjects", grpc.StatusCode.UNAVAILABLE, times=None)
    weaviate_server.reset_calls()
    with pytest.raises(TransientStoreError, match="client's own retries"):
        store.upsert_chunks(chunks)
    # the adapter did not multiply the client's retries
    assert weaviate_server.calls("BatchObjects") == 4
    weaviate_server.faults.clear()
    store.upsert_chunks(chunks)
    assert store.count() == 3


def test_test_server_down_at_start_up_is_transient(weaviate_server):
    weaviate_server.down()
    with pytest.raises(TransientStoreError, match="503"):
        open_test_server_store(weaviate_server)


# --------------------------------------------------------------------------- start-up


def test_readiness_error_is_clear_when_nothing_listens():
    port = free_port()
    t0 = time.perf_counter()
    with pytest.raises(TransientStoreError) as info:
        WeaviateStore(url=f"http://127.0.0.1:{port}", grpc_port=free_port(), fingerprint=FP, dim=8, timeout_s=2)
    message = str(info.value)
    assert f"http://127.0.0.1:{port}" in message
    assert "not reachable" in message and "Hint" in message
    assert time.perf_counter() - t0 < 10


def test_test_server_wrong_grpc_port_is_reported(weaviate_server):
    with pytest.raises(TransientStoreError, match="gRPC health check") as info:
        open_test_server_store(weaviate_server, grpc_port=free_port(), timeout_s=2)
    assert "grpc_port" in str(info.value)


def test_test_server_schema_creation_is_idempotent(weaviate_server):
    first = open_test_server_store(weaviate_server, fingerprint=FP)
    first.upsert_chunks(chunks_of("doc-a", 2, fingerprint=FP))
    second = open_test_server_store(weaviate_server, fingerprint=FP)
    try:
        assert weaviate_server.calls("POST /v1/schema") == 2  # chunks + docs, once
        assert second.count() == 2
        schema = weaviate_server.db.get_class(first.collection_name)
        props = {p["name"]: p for p in schema["properties"]}
        assert props["doc_id"]["tokenization"] == "field"
        assert props["text"]["tokenization"] == "word"
        assert props["metadata_json"]["indexFilterable"] is False
        vec = schema["vectorConfig"]["default"]
        assert vec["vectorizer"] == {"none": {}} and vec["vectorIndexType"] == "hnsw"
        assert vec["vectorIndexConfig"]["distance"] == "cosine"
        docs = weaviate_server.db.get_class(first.docs_collection_name)
        assert docs["vectorConfig"]["default"]["vectorIndexConfig"]["skip"] is True
    finally:
        first.close()
        second.close()


def test_test_server_creation_race_already_exists_is_tolerated(weaviate_server):
    """Exists-check says 'missing' (another instance creates it meanwhile): 422 is fine."""
    first = open_test_server_store(weaviate_server, fingerprint=FP)
    first.close()
    weaviate_server.faults.add_http(f"/v1/schema/{first.collection_name}", status=404, times=1, http_method="GET")
    second = open_test_server_store(weaviate_server, fingerprint=FP)
    second.close()
    assert weaviate_server.calls("POST /v1/schema") == 3  # the raced create answered 422










# --------------------------------------------------------------------------- alias




def test_test_server_without_alias_support_still_works():
    with WeaviateTestServer(version="1.30.1") as server:
        store = open_test_server_store(server, fingerprint=FP)
        try:
            assert store.alias_target() is None
            assert server.calls("GET /v1/aliases/Embedstream") == 0
            with pytest.raises(PermanentStoreError, match="1.32"):
                store.point_alias()
            store.upsert_chunks(chunks_of("doc-a", 1, fingerprint=FP))
            assert store.count() == 1
        finally:
            store.close()


# --------------------------------------------------------------------------- secrets, data


def test_test_server_api_key_never_appears_in_repr_errors_or_logs(caplog):
    key = "s3cret-key-0123456789"
    caplog.set_level(logging.DEBUG)
    with WeaviateTestServer(api_key=key) as server:
        store = open_test_server_store(server, fingerprint=FP, api_key=key)
        try:
            store.upsert_chunks(chunks_of("doc-a", 2, fingerprint=FP))
            assert store.count() == 2
            assert key not in repr(store) and "api_key=***" in repr(store)
            server.faults.add("BatchDelete", grpc.StatusCode.UNAVAILABLE, times=None, message=f"echo {key}")
            with pytest.raises(TransientStoreError) as transient:
                store.delete_chunks("doc-a")
            assert key not in str(transient.value)
            assert transient.value.__cause__ is None  # the cause would have shown the key
        finally:
            store.close()
        with pytest.raises(PermanentStoreError) as refused:
            open_test_server_store(server, fingerprint=FP, api_key="wrong-" + key)
        assert key not in str(refused.value) and "401" in str(refused.value)
    assert key not in caplog.text




def test_test_server_get_states_is_one_query(weaviate_server, store):
    store.put_states([state(f"d{i}", fingerprint=FP) for i in range(50)])
    weaviate_server.reset_calls()
    assert len(store.get_states([f"d{i}" for i in range(60)])) == 50
    assert weaviate_server.calls("Search") == 1


def test_test_server_delete_loops_until_nothing_matches(weaviate_server, store):
    store.upsert_chunks(chunks_of("doc-a", 3, fingerprint=FP))
    weaviate_server.reset_calls()
    assert store.delete_chunks("doc-a", from_index=1) == 2
    assert weaviate_server.calls("BatchDelete") == 2  # the second call proves nothing is left




def test_test_server_wrong_dimension_is_refused_before_any_request(weaviate_server, store):
    weaviate_server.reset_calls()
    bad = ChunkRecord("doc-a", 0, 1, 1, "h", FP, 1, 2, "t", unit_vectors(1, 4)[0], {})
    with pytest.raises(FingerprintMismatch, match="4") as info:
        store.upsert_chunks(chunks_of("doc-b", 2, fingerprint=FP) + [bad])
    assert info.value.object_errors == {}  # a configuration error, not one bad document
    assert weaviate_server.calls("BatchObjects") == 0




def test_transient_message_classification():
    assert is_transient_message("rpc error: code = Unavailable desc = transport is closing")
    assert is_transient_message("Deadline Exceeded")
    assert not is_transient_message("no such prop with name 'x' found in class 'Y' in the schema")
    policy = RetryPolicy(max_attempts=3, base_delay_s=0.1, max_delay_s=0.3, jitter=0.5)
    assert 0.05 <= policy.delay(1) <= 0.1 and 0.15 <= policy.delay(3) <= 0.3 and policy.delay(9) <= 0.3


# --------------------------------------------------------------------------- the test server itself




def test_test_server_answers_unimplemented_loudly(weaviate_server):
    with raw_client(weaviate_server) as client:
        coll = client.collections.create("Loud", vector_config=Configure.Vectors.self_provided())
        with pytest.raises(WeaviateQueryError, match="not implemented in the test server"):
            coll.query.bm25("anything")
        with pytest.raises(Exception, match="501"):
            coll.tenants.create("t1")



