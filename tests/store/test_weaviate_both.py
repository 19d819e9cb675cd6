"""Weaviate behaviour the adapter relies on, checked on real Weaviate **and** on the test server.

Every test runs twice: against the session's real Weaviate (``real``) and against the in-process
test server (``test-server``, tests/weaviate_server). The real server defines the behaviour; the
test server must agree, so that the fault-injection tests in test_weaviate_adapter.py exercise the
adapter against a faithful double. Differences found when these first ran on Weaviate 1.36.23
(the test server was fixed to match):

* ``field`` tokenisation trims what Go's ``strings.TrimSpace`` trims (tab, NBSP, U+3000 ...);
  the double used Python's ``str.strip`` (which also trims U+001C..U+001F);
* ``word`` tokenisation splits on everything that is not a letter or digit (``_``, U+200B);
* deleting a collection leaves its aliases in place, pointing at nothing;
* an alias to a missing collection is refused with 422 (the double answered 404);
* a batch delete reports every match in ``matches`` (the double: at most 10 000), deleting 10 000;
* a collection with one named vector takes an unnamed vector as that one (the double refused it);
* a schema property an object lacks (added later) comes back as null (the double left it out);
* ``config.add_property`` works (the double answered 501);
* the version: the double reported 1.32.0 (the client takes other code paths below 1.36).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any

import pytest
import weaviate
from weaviate.classes.config import Configure, DataType, Property, Tokenization
from weaviate.classes.data import DataObject
from weaviate.classes.query import Filter
from weaviate.exceptions import UnexpectedStatusCodeError, WeaviateQueryError

from app.store.base import ChunkRecord, FingerprintMismatch, PermanentStoreError, chunk_uuid
from app.store.weaviate import WeaviateStore, collection_names

from .conftest import FAST_RETRY, WeaviateTestServer, unit_vectors
from .real_weaviate import unique_prefix
from .test_contract import chunks_of

FP = "fp-test"


class Target:
    """One Weaviate (real or the double) with a collection-name prefix of its own."""

    def __init__(self, kind: str, url: str, grpc_port: int, api_key: str | None, cleanup):
        self.kind, self.url, self.grpc_port, self.api_key = kind, url, grpc_port, api_key
        self.prefix = unique_prefix("Fi")
        self._cleanup = cleanup
        self._opened: list[WeaviateStore] = []

    @property
    def real(self) -> bool:
        return self.kind == "real"

    def name(self, suffix: str) -> str:
        return f"{self.prefix}{suffix}"

    @contextlib.contextmanager
    def client(self):
        c = weaviate.connect_to_custom(
            http_host="127.0.0.1", http_port=int(self.url.rsplit(":", 1)[1]), http_secure=False,
            grpc_host="127.0.0.1", grpc_port=self.grpc_port, grpc_secure=False,
            auth_credentials=weaviate.classes.init.Auth.api_key(self.api_key) if self.api_key else None,
            skip_init_checks=True)
        try:
            yield c
        finally:
            c.close()

    def store(self, **kwargs: Any) -> WeaviateStore:
        params: dict[str, Any] = dict(url=self.url, grpc_port=self.grpc_port, api_key=self.api_key,
                                      fingerprint=FP, dim=8, collection_prefix=self.prefix, timeout_s=10,
                                      retry=FAST_RETRY)
        params.update(kwargs)
        s = WeaviateStore(**params)
        self._opened.append(s)
        return s

    def close(self) -> None:
        for s in self._opened:
            s.close()
        self._cleanup(self.prefix)


@pytest.fixture(params=["real", "test-server"])
def wv(request):
    if request.param == "real":
        if request.node.get_closest_marker("real_weaviate") is None:
            request.applymarker(pytest.mark.real_weaviate)
        rw = request.getfixturevalue("real_weaviate")
        t = Target("real", rw.url, rw.grpc_port, rw.api_key, rw.drop_prefix)
        yield t
        t.close()
    else:
        server = WeaviateTestServer().start()
        t = Target("test-server", server.url, server.grpc_port, None, lambda prefix: None)
        try:
            yield t
        finally:
            t.close()
            server.stop()


def _ids_of(coll, prop: str, value: str, op: str = "equal") -> list[str]:
    f = getattr(Filter.by_property(prop), op)([value] if op == "contains_any" else value)
    return sorted(o.properties[prop] for o in coll.query.fetch_objects(filters=f, limit=50).objects)


# --------------------------------------------------------------------------- tokenisation


def test_field_tokenisation_trims_what_go_trims(wv):
    """The cause of the whitespace bug: ``field`` compares the value trimmed of Unicode spaces."""
    same = ["doc-1", " doc-1", "doc-1 ", "doc-1\t", "doc-1\n", "doc-1\u00a0", "doc-1\u3000", "\u2003doc-1"]
    other = ["Doc-1", "doc-1\u200b", "doc-1\x1f", "doc 1", "doc-1-extra"]
    with wv.client() as c:
        coll = c.collections.create(
            wv.name("Field"), properties=[Property(name="k", data_type=DataType.TEXT, tokenization=Tokenization.FIELD)],
            vector_config=Configure.Vectors.self_provided())
        assert not coll.data.insert_many([DataObject(properties={"k": v}) for v in same + other]).has_errors
        assert _ids_of(coll, "k", "doc-1") == sorted(same)
        assert _ids_of(coll, "k", " doc-1 ") == sorted(same)
        assert _ids_of(coll, "k", "doc-1", "contains_any") == sorted(same)
        for v in other:
            assert _ids_of(coll, "k", v) == [v]
        assert _ids_of(coll, "k", "") == []


def test_word_tokenisation_pitfall(wv):
    """Under ``word`` Equal('doc-1') also matches 'doc-1-extra', 'Doc 1', 'doc_1'."""
    with wv.client() as c:
        coll = c.collections.create(
            wv.name("Word"),
            properties=[Property(name="word_id", data_type=DataType.TEXT),
                        Property(name="field_id", data_type=DataType.TEXT, tokenization=Tokenization.FIELD)],
            vector_config=Configure.Vectors.self_provided())
        values = ["doc-1", "doc-1-extra", "Doc 1", "doc_1", "doc-1\u200b", "doc-2", "doc1"]
        coll.data.insert_many([DataObject(properties={"word_id": v, "field_id": v}) for v in values])
        assert _ids_of(coll, "word_id", "doc-1") == sorted(["doc-1", "doc-1-extra", "Doc 1", "doc_1", "doc-1\u200b"])
        assert _ids_of(coll, "field_id", "doc-1") == ["doc-1"]


# --------------------------------------------------------------------------- queries, deletes


def test_fetch_without_limit_returns_ten(wv):
    with wv.client() as c:
        coll = c.collections.create(wv.name("Lim"), vector_config=Configure.Vectors.self_provided())
        coll.data.insert_many([DataObject(properties={}) for _ in range(25)])
        assert len(coll.query.fetch_objects().objects) == 10
        assert len(coll.query.fetch_objects(limit=25).objects) == 25


def test_batch_delete_is_capped_at_query_maximum_results(wv):
    with wv.client() as c:
        coll = c.collections.create(
            wv.name("Capped"),
            properties=[Property(name="k", data_type=DataType.TEXT, tokenization=Tokenization.FIELD)],
            vector_config=Configure.Vectors.self_provided())
        for start in range(0, 10_050, 2_500):
            n = min(2_500, 10_050 - start)
            assert not coll.data.insert_many([DataObject(properties={"k": "same"}) for _ in range(n)]).has_errors
        res = coll.data.delete_many(where=Filter.by_property("k").equal("same"))
        assert (res.matches, res.successful) == (10_050, 10_000)  # every match is counted
        assert len(coll) == 50


def test_cursor_offset_and_by_id_queries(wv):
    with wv.client() as c:
        coll = c.collections.create(wv.name("Paged"), properties=[Property(name="n", data_type=DataType.INT)],
                                    vector_config=Configure.Vectors.self_provided())
        res = coll.data.insert_many([DataObject(properties={"n": i}) for i in range(25)])
        assert not res.has_errors
        assert sorted(o.properties["n"] for o in coll.iterator(cache_size=7)) == list(range(25))
        page = coll.query.fetch_objects(filters=Filter.by_property("n").greater_or_equal(10), limit=5, offset=10)
        assert len(page.objects) == 5 and all(o.properties["n"] >= 10 for o in page.objects)
        some = list(res.uuids.values())[:3]
        assert {o.uuid for o in coll.query.fetch_objects_by_ids(some).objects} == set(some)
        with pytest.raises(WeaviateQueryError, match="could not find class"):
            c.collections.use(wv.name("Missing")).query.fetch_objects(limit=1)


def test_objects_are_refused_for_unknown_properties_wrong_types_and_dimensions(wv):
    """Auto-schema is off: nothing is guessed. (A NaN vector is *accepted* by Weaviate: the
    adapter refuses it before sending, see the contract suite.)"""
    with wv.client() as c:
        coll = c.collections.create(wv.name("Strict"), properties=[Property(name="n", data_type=DataType.INT)],
                                    vector_config=Configure.Vectors.self_provided())
        for bad, match in (({"nope": "x"}, "no such prop"), ({"n": "x"}, "n")):
            with pytest.raises(Exception, match=match):
                coll.data.insert_many([DataObject(properties=bad, vector=[1.0, 0.0])])
        assert not coll.data.insert_many([DataObject(properties={"n": 1}, vector=[1.0, 0.0])]).has_errors
        with pytest.raises(Exception, match="new node has a vector with length 3"):
            coll.data.insert_many([DataObject(properties={"n": 1}, vector=[1.0, 0.0, 0.0])])
        assert len(coll) == 1


# --------------------------------------------------------------------------- schema, aliases


def test_schema_create_conflicts_and_add_property(wv):
    with wv.client() as c:
        name = wv.name("Mig")
        coll = c.collections.create(name, properties=[Property(name="a", data_type=DataType.TEXT)],
                                    vector_config=Configure.Vectors.self_provided())
        coll.data.insert_many([DataObject(properties={"a": "old"})])
        with pytest.raises(UnexpectedStatusCodeError, match="already exists") as info:
            c.collections.create(name)
        assert info.value.status_code == 422
        coll.config.add_property(Property(name="b", data_type=DataType.INT))
        assert [o.properties for o in coll.query.fetch_objects(limit=5).objects] == [{"a": "old", "b": None}]
        lower = c.collections.create(wv.name("lower")[0].lower() + wv.name("lower")[1:],
                                     vector_config=Configure.Vectors.self_provided())
        assert lower.name == wv.name("lower")  # first letter upper-cased


def test_alias_lifecycle(wv):
    with wv.client() as c:
        a, b, alias = wv.name("A"), wv.name("B"), wv.name("Al")
        for n in (a, b):
            c.collections.create(n, vector_config=Configure.Vectors.self_provided())
        assert c.alias.get(alias_name=alias) is None
        with pytest.raises(UnexpectedStatusCodeError) as info:
            c.alias.create(alias_name=alias, target_collection=wv.name("Missing"))
        assert info.value.status_code == 422
        c.alias.create(alias_name=alias, target_collection=a)
        c.collections.use(a).data.insert_many([DataObject(properties={}) for _ in range(3)])
        assert len(c.collections.use(alias)) == 3  # readers query the alias
        with pytest.raises(UnexpectedStatusCodeError, match="already exists"):
            c.alias.create(alias_name=a, target_collection=a)  # a collection's name
        with pytest.raises(UnexpectedStatusCodeError, match="already exists"):
            c.collections.create(alias)  # an alias's name
        assert c.alias.update(alias_name=alias, new_target_collection=b)
        assert c.alias.get(alias_name=alias).collection == b
        assert c.alias.update(alias_name=wv.name("Nope"), new_target_collection=b) is False
        c.collections.delete(b)
        assert c.alias.get(alias_name=alias).collection == b  # dangling, as in Weaviate
        c.alias.delete(alias_name=alias)


# --------------------------------------------------------------------------- the adapter


def test_adapter_schema_is_created_once_with_field_doc_ids(wv):
    first = wv.store()
    first.upsert_chunks(chunks_of("doc-a", 2, fingerprint=FP))
    second = wv.store()
    assert second.count() == 2
    with wv.client() as c:
        cfg = c.collections.use(first.collection_name).config.get()
        props = {p.name: p for p in cfg.properties}
        assert props["doc_id"].tokenization == Tokenization.FIELD
        assert props["text"].tokenization == Tokenization.WORD
        assert props["metadata_json"].index_filterable is False
        vec = cfg.vector_config["default"]
        assert vec.vector_index_config.distance_metric.value == "cosine"
        docs = c.collections.use(first.docs_collection_name).config.get()
        assert docs.vector_config["default"].vector_index_config.skip is True


def test_adapter_hnsw_parameters_are_applied(wv):
    store = wv.store(hnsw_distance="dot", ef_construction=256, max_connections=48)
    with wv.client() as c:
        idx = c.collections.use(store.collection_name).config.get().vector_config["default"].vector_index_config
    assert (idx.distance_metric.value, idx.ef_construction, idx.max_connections) == ("dot", 256, 48)


def test_adapter_refuses_a_collection_of_another_fingerprint_or_dim(wv):
    store = wv.store(dim=8)
    store.upsert_chunks(chunks_of("doc-a", 1, fingerprint=FP))
    with pytest.raises(FingerprintMismatch, match="8-d"):
        wv.store(dim=16)
    with wv.client() as c:
        c.collections.use(store.collection_name).data.insert_many(
            [DataObject(properties={"doc_id": "x", "fingerprint": "fp-intruder"}, vector={"default": [0.1] * 8},
                        uuid=chunk_uuid("doc-a", 0))])
    with pytest.raises(FingerprintMismatch, match="fp-intruder"):
        wv.store()


def test_adapter_refuses_a_word_tokenised_doc_id_collection(wv):
    _, chunks, _ = collection_names(FP, wv.prefix)
    text_props = ["doc_id", "content_hash", "fingerprint", "text", "metadata_json"]  # doc_id: default WORD
    int_props = ["chunk_index", "chunk_count", "version", "event_time_ms", "indexed_time_ms"]
    with wv.client() as c:
        c.collections.create(
            chunks, properties=[Property(name=n, data_type=DataType.TEXT) for n in text_props]
            + [Property(name=n, data_type=DataType.INT) for n in int_props],
            vector_config=Configure.Vectors.self_provided())
    with pytest.raises(PermanentStoreError, match="tokenization"):
        wv.store()


def test_adapter_alias_points_at_the_fingerprint_collection(wv):
    store = wv.store()
    assert store.alias_name == collection_names(FP, wv.prefix)[0]
    assert store.alias_target() == store.collection_name
    store.upsert_chunks(chunks_of("doc-a", 3, fingerprint=FP))
    with wv.client() as c:
        assert len(c.collections.use(store.alias_name)) == 3
    other = wv.store(fingerprint="fp-next")
    assert other.alias_target() == store.collection_name  # an existing alias is not repointed
    other.point_alias()
    assert store.alias_target() == other.collection_name
    store.point_alias(store.collection_name)
    assert other.alias_target() == store.collection_name
    other.drop_collections()  # the alias does not point at it: it stays
    assert store.alias_target() == store.collection_name


def test_adapter_metadata_round_trips(wv):
    store = wv.store()
    metadata = {"title": 'Ünïcødé "quoted" \\ back', "json": '{"a": [1, 2]}', "empty": ""}
    chunks = chunks_of("doc-a", 2, fingerprint=FP, metadata=metadata)
    store.upsert_chunks(chunks)
    assert dict(store.search(chunks[0].vector, k=1)[0].metadata) == metadata


def test_adapter_delete_chunks_many_removes_each_tail(wv):
    store = wv.store()
    everything = chunks_of("a", 3, fingerprint=FP) + chunks_of("b", 3, fingerprint=FP) + chunks_of("a-b", 2, fingerprint=FP)
    store.upsert_chunks(everything)
    assert store.delete_chunks_many([("a", 1), ("b", 0)]) == 5
    assert set(store.fetch_vectors([c.id for c in everything])) == {
        chunk_uuid("a", 0), chunk_uuid("a-b", 0), chunk_uuid("a-b", 1)}


def test_adapter_refuses_a_non_finite_vector_per_object_and_writes_the_rest(wv):
    store = wv.store()
    chunks = chunks_of("doc-a", 3, fingerprint=FP)
    broken = chunks[1].vector.copy()
    broken[0] = math.nan
    chunks[1] = ChunkRecord(**{**chunks[1].__dict__, "vector": broken})
    with pytest.raises(PermanentStoreError) as info:
        store.upsert_chunks(chunks)
    assert set(info.value.object_errors) == {chunks[1].id}
    assert set(store.fetch_vectors([c.id for c in chunks])) == {chunks[0].id, chunks[2].id}


def test_adapter_wrong_dimension_is_refused_before_anything_is_written(wv):
    store = wv.store()
    bad = ChunkRecord("doc-a", 0, 1, 1, "h", FP, 1, 2, "t", unit_vectors(1, 4)[0], {})
    with pytest.raises(FingerprintMismatch, match="4") as info:
        store.upsert_chunks(chunks_of("doc-b", 2, fingerprint=FP) + [bad])
    assert info.value.object_errors == {}  # a configuration error, not one bad document
    assert store.count() == 0
