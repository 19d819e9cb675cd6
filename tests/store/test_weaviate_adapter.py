"""WeaviateStore adapter tests against the Weaviate *test server*.

These are NOT integration tests with a real Weaviate: ``tests/weaviate_server`` is an
in-process protocol double. The real weaviate-client talks to it over real sockets (no
client method is mocked), and the server injects faults - gRPC status codes, deadlines,
HTTP 5xx, per-object batch errors, a whole outage - that a real server cannot be made to
produce on demand. The contract suite (test_contract.py) runs against a real Weaviate
when WEAVIATE_URL is set.
"""
from __future__ import annotations

import logging
import time

import grpc
import pytest
import weaviate
from weaviate.classes.config import Configure, DataType, Property, Tokenization
from weaviate.classes.data import DataObject
from weaviate.classes.query import Filter
from weaviate.exceptions import WeaviateQueryError

from app.store.base import (
    ChunkRecord,
    FingerprintMismatch,
    PermanentStoreError,
    TransientStoreError,
    chunk_uuid,
)
from app.store.weaviate import (
    RetryPolicy,
    WeaviateStore,
    collection_names,
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
    weaviate_server.down()
    weaviate_server.reset_calls()
    with pytest.raises(TransientStoreError, match="client's own retries"):
        store.upsert_chunks(chunks)
    # the adapter did not multiply the client's retries
    assert weaviate_server.calls("BatchObjects") == 4
    weaviate_server.up()
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


def test_test_server_hnsw_parameters_are_applied(weaviate_server):
    store = open_test_server_store(
        weaviate_server, fingerprint=FP, hnsw_distance="dot", ef_construction=256, max_connections=48
    )
    try:
        idx = weaviate_server.db.get_class(store.collection_name)["vectorConfig"]["default"]["vectorIndexConfig"]
        assert (idx["distance"], idx["efConstruction"], idx["maxConnections"]) == ("dot", 256, 48)
    finally:
        store.close()


def test_test_server_existing_collection_of_another_fingerprint_is_refused(weaviate_server):
    store = open_test_server_store(weaviate_server, fingerprint=FP)
    store.close()
    with raw_client(weaviate_server) as client:
        client.collections.use(store.collection_name).data.insert_many(
            [DataObject(properties={"doc_id": "x", "fingerprint": "fp-intruder"}, vector={"default": [0.1] * 8})]
        )
    with pytest.raises(FingerprintMismatch, match="fp-intruder"):
        open_test_server_store(weaviate_server, fingerprint=FP)


def test_test_server_existing_collection_of_another_dim_is_refused(weaviate_server):
    store = open_test_server_store(weaviate_server, fingerprint=FP, dim=8)
    store.upsert_chunks(chunks_of("doc-a", 1, fingerprint=FP))
    store.close()
    with pytest.raises(FingerprintMismatch, match="8-d"):
        open_test_server_store(weaviate_server, fingerprint=FP, dim=16)


def test_test_server_word_tokenised_doc_id_collection_is_refused(weaviate_server):
    _, chunks, _ = collection_names(FP, "Embedstream")
    text_props = ["doc_id", "content_hash", "fingerprint", "text", "metadata_json"]  # doc_id: default WORD
    int_props = ["chunk_index", "chunk_count", "version", "event_time_ms", "indexed_time_ms"]
    with raw_client(weaviate_server) as client:
        client.collections.create(
            chunks,
            properties=[Property(name=n, data_type=DataType.TEXT) for n in text_props]
            + [Property(name=n, data_type=DataType.INT) for n in int_props],
            vector_config=Configure.Vectors.self_provided(),
        )
    with pytest.raises(PermanentStoreError, match="tokenization"):
        open_test_server_store(weaviate_server, fingerprint=FP)


# --------------------------------------------------------------------------- alias


def test_test_server_alias_points_at_the_fingerprint_collection(weaviate_server, store):
    assert store.alias_name == "Embedstream"
    assert store.alias_target() == store.collection_name
    store.upsert_chunks(chunks_of("doc-a", 3, fingerprint=FP))
    with raw_client(weaviate_server) as client:
        assert len(client.collections.use("Embedstream")) == 3  # readers query the alias

    other = open_test_server_store(weaviate_server, fingerprint="fp-next")
    try:
        assert other.alias_target() == store.collection_name  # an existing alias is not repointed
        other.point_alias()
        assert store.alias_target() == other.collection_name
        store.point_alias(store.collection_name)
        assert other.alias_target() == store.collection_name
    finally:
        other.close()


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


def test_test_server_metadata_round_trips(weaviate_server, store):
    metadata = {"title": 'Ünïcødé "quoted" \\ back', "json": '{"a": [1, 2]}', "empty": ""}
    chunks = chunks_of("doc-a", 2, fingerprint=FP, metadata=metadata)
    store.upsert_chunks(chunks)
    hit = store.search(chunks[0].vector, k=1)[0]
    assert dict(hit.metadata) == metadata


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


def test_test_server_delete_chunks_many_removes_each_tail(weaviate_server, store):
    store.upsert_chunks(
        chunks_of("a", 3, fingerprint=FP) + chunks_of("b", 3, fingerprint=FP) + chunks_of("a-b", 2, fingerprint=FP)
    )
    assert store.delete_chunks_many([("a", 1), ("b", 0)]) == 5
    assert stored_ids(weaviate_server, store.collection_name) == {
        chunk_uuid("a", 0), chunk_uuid("a-b", 0), chunk_uuid("a-b", 1)
    }


def test_test_server_wrong_dimension_is_refused_before_any_request(weaviate_server, store):
    weaviate_server.reset_calls()
    bad = ChunkRecord("doc-a", 0, 1, 1, "h", FP, 1, 2, "t", unit_vectors(1, 4)[0], {})
    with pytest.raises(FingerprintMismatch, match="4") as info:
        store.upsert_chunks(chunks_of("doc-b", 2, fingerprint=FP) + [bad])
    assert info.value.object_errors == {}  # a configuration error, not one bad document
    assert weaviate_server.calls("BatchObjects") == 0


def test_test_server_non_finite_vector_is_refused_per_object_and_the_rest_written(weaviate_server, store):
    chunks = chunks_of("doc-a", 3, fingerprint=FP)
    broken = chunks[1].vector.copy()
    broken[0] = float("nan")
    chunks[1] = ChunkRecord(**{**chunks[1].__dict__, "vector": broken})
    with pytest.raises(PermanentStoreError) as info:
        store.upsert_chunks(chunks)
    assert set(info.value.object_errors) == {chunks[1].id}
    assert stored_ids(weaviate_server, store.collection_name) == {chunks[0].id, chunks[2].id}


def test_transient_message_classification():
    assert is_transient_message("rpc error: code = Unavailable desc = transport is closing")
    assert is_transient_message("Deadline Exceeded")
    assert not is_transient_message("no such prop with name 'x' found in class 'Y' in the schema")
    policy = RetryPolicy(max_attempts=3, base_delay_s=0.1, max_delay_s=0.3, jitter=0.5)
    assert 0.05 <= policy.delay(1) <= 0.1 and 0.15 <= policy.delay(3) <= 0.3 and policy.delay(9) <= 0.3


# --------------------------------------------------------------------------- the test server itself


def test_test_server_models_word_tokenization_pitfall(weaviate_server):
    """Under WORD tokenization Equal('doc-1') also matches 'doc-1-extra' - as in Weaviate."""
    with raw_client(weaviate_server) as client:
        coll = client.collections.create(
            "Pitfall",
            properties=[
                Property(name="word_id", data_type=DataType.TEXT),
                Property(name="field_id", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
            ],
            vector_config=Configure.Vectors.self_provided(),
        )
        coll.data.insert_many(
            [DataObject(properties={"word_id": v, "field_id": v}) for v in ("doc-1", "doc-1-extra", "doc-2")]
        )
        word = coll.query.fetch_objects(filters=Filter.by_property("word_id").equal("doc-1"), limit=10)
        field = coll.query.fetch_objects(filters=Filter.by_property("field_id").equal("doc-1"), limit=10)
        assert sorted(o.properties["word_id"] for o in word.objects) == ["doc-1", "doc-1-extra"]
        assert [o.properties["field_id"] for o in field.objects] == ["doc-1"]
        # no limit -> QUERY_DEFAULTS_LIMIT (10), like Weaviate
        coll.data.insert_many([DataObject(properties={"word_id": f"x{i}"}) for i in range(20)])
        assert len(coll.query.fetch_objects().objects) == 10


def test_test_server_answers_unimplemented_loudly(weaviate_server):
    with raw_client(weaviate_server) as client:
        coll = client.collections.create("Loud", vector_config=Configure.Vectors.self_provided())
        with pytest.raises(WeaviateQueryError, match="not implemented in the test server"):
            coll.query.bm25("anything")
        with pytest.raises(Exception, match="501"):
            coll.config.add_property(Property(name="extra", data_type=DataType.TEXT))


def test_test_server_caps_batch_delete_at_query_maximum(weaviate_server):
    with raw_client(weaviate_server) as client:
        coll = client.collections.create(
            "Capped",
            properties=[Property(name="k", data_type=DataType.TEXT, tokenization=Tokenization.FIELD)],
            vector_config=Configure.Vectors.self_provided(),
        )
        coll.data.insert_many([DataObject(properties={"k": "same"}) for _ in range(10_050)])
        res = coll.data.delete_many(where=Filter.by_property("k").equal("same"))
        assert (res.matches, res.successful) == (10_000, 10_000)
        assert len(coll) == 50


def test_test_server_cursor_offset_and_by_id_queries(weaviate_server):
    with raw_client(weaviate_server) as client:
        coll = client.collections.create(
            "Paged",
            properties=[Property(name="n", data_type=DataType.INT)],
            vector_config=Configure.Vectors.self_provided(),
        )
        res = coll.data.insert_many([DataObject(properties={"n": i}) for i in range(25)])
        assert not res.has_errors
        assert sorted(o.properties["n"] for o in coll.iterator(cache_size=7)) == list(range(25))
        page = coll.query.fetch_objects(filters=Filter.by_property("n").greater_or_equal(10), limit=5, offset=10)
        assert sorted(o.properties["n"] for o in page.objects) == [20, 21, 22, 23, 24]
        some = list(res.uuids.values())[:3]
        assert {o.uuid for o in coll.query.fetch_objects_by_ids(some).objects} == set(some)
        with pytest.raises(WeaviateQueryError, match="could not find class"):
            client.collections.use("Missing").query.fetch_objects(limit=1)
