"""Weaviate adapter of the :class:`~app.store.base.VectorStore` protocol (weaviate-client v4).

Layout in Weaviate, for a model fingerprint ``fp`` and ``collection_prefix="Embedstream"``::

    Embedstream                    alias -> the collection readers should query (Weaviate >= 1.32)
    Embedstream_<sha256(fp)[:12]>      chunk objects, one named vector "default" (HNSW, cosine)
    Embedstream_<sha256(fp)[:12]>_Docs document states, no vector index

Chunk object ids are :func:`~app.store.base.chunk_uuid` (uuid5 of ``doc#index``); document
state ids are uuid5 of the doc id in :data:`DOC_NAMESPACE`. Ids are deterministic, so
every write is an idempotent replace-by-id and a retried batch cannot duplicate anything.

Wire paths (weaviate-client 4.23): writes go through gRPC ``BatchObjects``
(``collection.data.insert_many``), deletes through gRPC ``BatchDelete``
(``data.delete_many``, at most ``QUERY_MAXIMUM_RESULTS`` objects per call, so it loops),
reads through gRPC ``Search``/``Aggregate``; schema, aliases and readiness use REST.

Failure handling:

* Every per-object batch error is inspected. Transient-looking ones (timeouts,
  unavailable, connection problems, read-only shards) are re-sent alone with exponential
  backoff and jitter; what still fails after ``RetryPolicy.max_attempts`` raises
  :class:`TransientStoreError`. Permanent ones are collected and raised as
  :class:`PermanentStoreError` with ``object_errors`` *after* the rest was written.
* Whole-call failures (gRPC UNAVAILABLE / DEADLINE_EXCEEDED, connection errors, HTTP 5xx
  and 429) are retried the same way, then raised as :class:`TransientStoreError`.
* Note: weaviate-client itself retries gRPC ``UNAVAILABLE`` with sleeps of 1, 2, 4, ... s
  (``weaviate.retry._Retry``; ~15 s for batches, ~63 s for searches and aggregates) before
  raising ``WeaviateRetryError``. The adapter does not add its own retries on top of an
  error the client already retried; it raises :class:`TransientStoreError` at once.

The API key is kept out of ``repr()``, log lines and exception messages.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
import time
import dataclasses
import uuid as uuid_lib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar
from urllib.parse import urlsplit

import grpc
import httpx
import numpy as np
import weaviate
from weaviate.classes.config import Configure, DataType, Property, Tokenization, VectorDistances
from weaviate.classes.data import DataObject
from weaviate.classes.init import AdditionalConfig, Auth, Timeout
from weaviate.classes.query import Filter, MetadataQuery
from weaviate.exceptions import (
    AuthenticationFailedError,
    UnexpectedStatusCodeError,
    WeaviateBaseError,
    WeaviateClosedClientError,
    WeaviateConnectionError,
    WeaviateGRPCUnavailableError,
    WeaviateInsertManyAllFailedError,
    WeaviateRetryError,
    WeaviateStartUpError,
    WeaviateTimeoutError,
)

from app.store.base import (
    ChunkRecord,
    DocState,
    FingerprintMismatch,
    PermanentStoreError,
    SearchHit,
    StaleWrite,
    TransientStoreError,
    check_doc_ids,
    doc_id_problem,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Namespace of document-state object ids (uuid5 of the doc id).
DOC_NAMESPACE = uuid_lib.UUID("3b0c2f4e-8d1a-5e6f-a7b9-1c2d3e4f5a6b")
#: Name of the chunk collection's (only) named vector.
VECTOR_NAME = "default"
#: Weaviate's default QUERY_MAXIMUM_RESULTS: the most one query/delete returns/deletes.
QUERY_MAXIMUM_RESULTS = 10_000

CHUNK_PROPERTIES = [
    "doc_id",
    "chunk_index",
    "chunk_count",
    "version",
    "content_hash",
    "fingerprint",
    "event_time_ms",
    "indexed_time_ms",
    "text",
    "metadata_json",
]
#: document-state properties: one per DocState field (str -> text, field-tokenised; int; bool),
#: so a field added to DocState is stored, read back and added to existing collections as is
_DOC_FIELDS = {f.name: f for f in dataclasses.fields(DocState)}
DOC_PROPERTIES = list(_DOC_FIELDS)
_SEARCH_PROPERTIES = ["doc_id", "chunk_index", "text", "version", "metadata_json"]

_TRANSIENT_GRPC_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
}
_TRANSIENT_MARKERS = (
    "unavailable",
    "deadline",
    "timeout",
    "timed out",
    "context canceled",
    "connection",
    "connect",
    "temporarily",
    "try again",
    "too many requests",
    "resource exhausted",
    "resource_exhausted",
    "socket closed",
    "broken pipe",
    "reset by peer",
    "shutting down",
    "not ready",
    "read-only",
    "readonly",
    "status code: 5",  # UnexpectedStatusCodeError text for 5xx
)


def doc_state_uuid(doc_id: str) -> str:
    """Deterministic object id of a document state."""
    return str(uuid_lib.uuid5(DOC_NAMESPACE, doc_id))


def _doc_property(name: str) -> Property:
    kind = str(_DOC_FIELDS[name].type)
    if kind == "str":
        return Property(name=name, data_type=DataType.TEXT, tokenization=Tokenization.FIELD)
    if kind == "bool":
        return Property(name=name, data_type=DataType.BOOL)
    if kind == "int":
        return Property(name=name, data_type=DataType.INT)
    raise TypeError(f"DocState.{name}: type {kind} has no Weaviate property mapping")


def _state_properties(state: DocState) -> dict[str, Any]:
    return {name: getattr(state, name) for name in DOC_PROPERTIES}


def _state_from(p: Mapping[str, Any]) -> DocState:
    """A DocState from stored properties; a property the object lacks (written before its
    field existed) takes the field's default."""
    values: dict[str, Any] = {}
    for name, f in _DOC_FIELDS.items():
        v = p.get(name)
        kind = str(f.type)
        if v is None:
            if f.default is not dataclasses.MISSING:
                v = f.default
            else:
                v = {"str": "", "int": 0, "bool": False}[kind]
        values[name] = int(v) if kind == "int" else bool(v) if kind == "bool" else v
    return DocState(**values)


def sanitise_class_name(name: str) -> str:
    """A valid Weaviate class/alias name: ``^[A-Z][_0-9A-Za-z]*$``.

    >>> sanitise_class_name("embedstream")
    'Embedstream'
    >>> sanitise_class_name("my-store.v2")
    'My_store_v2'
    >>> sanitise_class_name("2nd")
    'C2nd'
    """
    cleaned = re.sub(r"[^0-9A-Za-z_]", "_", name)
    if not cleaned or not cleaned[0].isalpha():
        cleaned = "C" + cleaned
    return cleaned[0].upper() + cleaned[1:]


def collection_names(fingerprint: str, prefix: str = "Embedstream") -> tuple[str, str, str]:
    """``(alias, chunk collection, docs collection)`` for a fingerprint.

    >>> collection_names("minilm-l6@abc", "embedstream")
    ('Embedstream', 'Embedstream_2e8a40091861', 'Embedstream_2e8a40091861_Docs')
    """
    alias = sanitise_class_name(prefix)
    short = hashlib.sha256(fingerprint.encode("utf-8")).hexdigest()[:12]
    chunks = f"{alias}_{short}"
    return alias, chunks, f"{chunks}_Docs"


def is_transient_message(message: str) -> bool:
    """Does an error text from Weaviate look like something a retry can fix?

    >>> is_transient_message("rpc error: code = Unavailable desc = connection refused")
    True
    >>> is_transient_message("context deadline exceeded")
    True
    >>> is_transient_message("invalid text property 'doc_id' on class 'X': requires a text")
    False
    """
    lowered = message.lower()
    return any(marker in lowered for marker in _TRANSIENT_MARKERS)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter for retries inside one store call."""

    max_attempts: int = 5
    base_delay_s: float = 0.2
    max_delay_s: float = 5.0
    jitter: float = 0.5  # the delay is drawn from [d * (1 - jitter), d]

    def delay(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (1-based)."""
        d = min(self.max_delay_s, self.base_delay_s * (2 ** (attempt - 1)))
        return random.uniform(d * (1.0 - self.jitter), d)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class WeaviateStore:
    """:class:`~app.store.base.VectorStore` on Weaviate for one model fingerprint.

    Args:
        url: REST endpoint, ``http(s)://host:port``; the scheme also sets TLS for gRPC.
        fingerprint: model fingerprint this instance reads and writes.
        dim: vector dimension.
        grpc_port: gRPC port (Weaviate's default 50051).
        grpc_host: gRPC host (default: the url's host).
        api_key: optional API key (sent as ``Authorization: Bearer``; never shown).
        timeout_s: client init/query/insert timeout, seconds.
        skip_init_checks: skip the client's own start-up checks (gRPC ping, PyPI
            version lookup); the adapter still checks REST readiness and gRPC health.
        collection_prefix: alias name and prefix of the collection names.
        hnsw_distance: ``cosine`` (default), ``dot`` or ``l2-squared``.
        ef_construction, max_connections: optional HNSW parameters.
        batch_size: objects per gRPC BatchObjects call.
        retry: backoff policy of retries inside one call.
        use_alias: create the alias ``collection_prefix`` if missing (Weaviate >= 1.32).
    """

    def __init__(
        self,
        *,
        url: str,
        fingerprint: str,
        dim: int,
        grpc_port: int = 50051,
        grpc_host: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        skip_init_checks: bool = True,
        collection_prefix: str = "Embedstream",
        hnsw_distance: str = "cosine",
        ef_construction: int | None = None,
        max_connections: int | None = None,
        batch_size: int = 256,
        retry: RetryPolicy | None = None,
        use_alias: bool = True,
    ) -> None:
        if hnsw_distance not in ("cosine", "dot", "l2-squared"):
            raise ValueError(f"hnsw_distance must be cosine, dot or l2-squared, not {hnsw_distance!r}")
        if dim <= 0:
            raise ValueError("dim must be positive")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must look like http(s)://host:port, got {url!r}")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        self.url = f"{parts.scheme}://{host}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
        self.fingerprint = fingerprint
        self.dim = int(dim)
        self.secure = parts.scheme == "https"
        self.http_host = parts.hostname
        self.http_port = parts.port or (443 if self.secure else 80)
        self.grpc_host = grpc_host or parts.hostname
        self.grpc_port = int(grpc_port)
        self.timeout_s = float(timeout_s)
        self.distance = hnsw_distance
        self.batch_size = max(1, int(batch_size))
        self.retry = retry or RetryPolicy()
        self.alias_name, self.collection_name, self.docs_collection_name = collection_names(
            fingerprint, collection_prefix
        )
        self._api_key = api_key or None
        self._ef_construction = ef_construction
        self._max_connections = max_connections
        self._use_alias = use_alias
        self._closed = False
        self._client = self._connect(skip_init_checks)
        try:
            self.server_version = self._server_version()
            self.aliases_supported = self.server_version >= (1, 32)
            self._chunks = self._client.collections.use(self.collection_name)
            self._docs = self._client.collections.use(self.docs_collection_name)
            self._ensure_schema()
            self._check_existing_objects()
            if self._use_alias:
                self._ensure_alias()
        except BaseException:
            self.close()
            raise

    @classmethod
    def connect(cls, **kwargs: Any) -> "WeaviateStore":
        """Open a store (same keyword arguments as the constructor)."""
        return cls(**kwargs)

    def __repr__(self) -> str:
        return (
            f"WeaviateStore(url={self.url!r}, grpc={self.grpc_host}:{self.grpc_port}, "
            f"collection={self.collection_name!r}, alias={self.alias_name!r}, "
            f"fingerprint={self.fingerprint!r}, dim={self.dim}, "
            f"api_key={'***' if self._api_key else None})"
        )

    def __enter__(self) -> "WeaviateStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ start-up
    def _connect(self, skip_init_checks: bool) -> Any:
        where = f"Weaviate at {self.url} (gRPC {self.grpc_host}:{self.grpc_port})"
        hint = (
            "Hint: is Weaviate running and reachable from here? Check the url, grpc_port "
            "(both the REST and the gRPC port must be open) and TLS (https:// url)."
        )
        try:
            client = weaviate.connect_to_custom(
                http_host=self.http_host,
                http_port=self.http_port,
                http_secure=self.secure,
                grpc_host=self.grpc_host,
                grpc_port=self.grpc_port,
                grpc_secure=self.secure,
                auth_credentials=Auth.api_key(self._api_key) if self._api_key else None,
                additional_config=AdditionalConfig(
                    timeout=Timeout(init=self.timeout_s, query=self.timeout_s, insert=self.timeout_s)
                ),
                skip_init_checks=skip_init_checks,
            )
        except AuthenticationFailedError as e:
            raise PermanentStoreError(self._scrub(f"{where} refused the credentials: {e}")) from None
        except UnexpectedStatusCodeError as e:
            status = getattr(e, "status_code", None)
            if status in (401, 403):
                raise PermanentStoreError(
                    f"{where} refused the credentials (HTTP {status} on GET /v1/meta). "
                    "Hint: check api_key."
                ) from None
            raise TransientStoreError(
                self._scrub(f"{where} is not usable: GET /v1/meta answered HTTP {status}. {hint}")
            ) from self._safe_cause(e)
        except Exception as e:  # connection refused, DNS, TLS, gRPC ping (when checks are on)
            reason = self._scrub(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
            raise TransientStoreError(
                f"{where} is not reachable ({type(e).__name__}: {reason}). {hint}"
            ) from self._safe_cause(e)

        try:
            if not client.is_ready():
                raise TransientStoreError(
                    f"{where} is not ready: GET {self.url}/v1/.well-known/ready did not answer 200. "
                    "Hint: Weaviate may still be starting up (or be unhealthy); retry later."
                )
            if not client.is_live():
                raise TransientStoreError(
                    f"{where}: REST answers but the gRPC health check on "
                    f"{self.grpc_host}:{self.grpc_port} failed. Hint: check grpc_port/grpc_host "
                    "and that the gRPC port is exposed (docker: -p 50051:50051)."
                )
        except BaseException:
            client.close()
            raise
        return client

    def _server_version(self) -> tuple[int, int]:
        meta = self._call("read server version", self._client.get_meta)
        found = re.match(r"(\d+)\.(\d+)", str(meta.get("version", "")))
        return (int(found.group(1)), int(found.group(2))) if found else (0, 0)

    def _ensure_schema(self) -> None:
        def text(name: str, tokenization: Any = Tokenization.FIELD, **kw: Any) -> Property:
            return Property(name=name, data_type=DataType.TEXT, tokenization=tokenization, **kw)

        def integer(name: str) -> Property:
            return Property(name=name, data_type=DataType.INT)

        chunk_props = [
            text("doc_id"),
            integer("chunk_index"),
            integer("chunk_count"),
            integer("version"),
            text("content_hash"),
            text("fingerprint"),
            integer("event_time_ms"),
            integer("indexed_time_ms"),
            text("text", Tokenization.WORD),
            text("metadata_json", None, index_filterable=False, index_searchable=False),
        ]
        hnsw_kwargs: dict[str, Any] = {"distance_metric": VectorDistances(self.distance)}
        if self._ef_construction is not None:
            hnsw_kwargs["ef_construction"] = self._ef_construction
        if self._max_connections is not None:
            hnsw_kwargs["max_connections"] = self._max_connections
        self._create_if_missing(
            self.collection_name,
            properties=chunk_props,
            vector_config=Configure.Vectors.self_provided(
                name=VECTOR_NAME, vector_index_config=Configure.VectorIndex.hnsw(**hnsw_kwargs)
            ),
        )
        doc_props = [_doc_property(name) for name in DOC_PROPERTIES]
        # Document states carry no vector: skip the vector index entirely.
        self._create_if_missing(
            self.docs_collection_name,
            properties=doc_props,
            vector_config=Configure.Vectors.self_provided(
                name=VECTOR_NAME, vector_index_config=Configure.VectorIndex.none()
            ),
        )
        self._check_schema(self.collection_name, CHUNK_PROPERTIES, check_distance=True)
        self._add_missing_properties(self.docs_collection_name, doc_props)
        self._check_schema(self.docs_collection_name, DOC_PROPERTIES, check_distance=False)

    def _add_missing_properties(self, name: str, props: list[Property]) -> None:
        """Document collections created before a DocState field existed get its property (objects
        written before read it as null, i.e. the field's default)."""
        config = self._call(f"read config of {name}", lambda: self._client.collections.use(name).config.get())
        have = {p.name for p in config.properties}
        for prop in props:
            if prop.name not in have:
                self._call(f"add property {prop.name} to {name}",
                           lambda: self._client.collections.use(name).config.add_property(prop))
                log.info("added property %s to Weaviate collection %s", prop.name, name)

    def _create_if_missing(self, name: str, **config: Any) -> None:
        """Exists-check, then create; losing a creation race ("already exists") is fine."""

        def create() -> bool:
            if self._client.collections.exists(name):
                return False
            try:
                self._client.collections.create(name, **config)
            except UnexpectedStatusCodeError as e:
                if e.status_code == 422 and "already exists" in str(e):
                    return False  # another instance created it between our check and create
                raise
            return True

        if self._call(f"create collection {name}", create):
            log.info("created Weaviate collection %s", name)

    def _check_schema(self, name: str, required: list[str], *, check_distance: bool) -> None:
        """Refuse an existing collection whose layout would make the adapter wrong."""
        config = self._call(f"read config of {name}", lambda: self._client.collections.use(name).config.get())
        props = {p.name: p for p in config.properties}
        missing = [p for p in required if p not in props]
        if missing:
            raise PermanentStoreError(f"Weaviate collection {name} lacks properties {missing}")
        if props["doc_id"].tokenization != Tokenization.FIELD:
            raise PermanentStoreError(
                f"Weaviate collection {name}: property doc_id has tokenization "
                f"{props['doc_id'].tokenization}, not field; deletes by doc_id would hit other "
                "documents whose ids share words. Recreate the collection."
            )
        if check_distance:
            vectors = config.vector_config or {}
            if VECTOR_NAME not in vectors:
                raise PermanentStoreError(f"Weaviate collection {name} has no named vector {VECTOR_NAME!r}")
            metric = vectors[VECTOR_NAME].vector_index_config.distance_metric
            if metric is not None and str(getattr(metric, "value", metric)) != self.distance:
                raise PermanentStoreError(
                    f"Weaviate collection {name} uses distance {metric}, not {self.distance}"
                )

    def _check_existing_objects(self) -> None:
        """One stored object of each collection must carry this fingerprint (and dim)."""
        sample = self._call(
            "read a sample chunk",
            lambda: self._chunks.query.fetch_objects(
                limit=1, return_properties=["fingerprint"], include_vector=[VECTOR_NAME]
            ),
        ).objects
        if sample:
            obj = sample[0]
            other = obj.properties.get("fingerprint")
            if other != self.fingerprint:
                raise FingerprintMismatch(
                    f"collection {self.collection_name} holds vectors of fingerprint {other!r}, "
                    f"not {self.fingerprint!r}"
                )
            vec = obj.vector.get(VECTOR_NAME)
            if vec is not None and len(vec) != self.dim:
                raise FingerprintMismatch(
                    f"collection {self.collection_name} holds {len(vec)}-d vectors, not {self.dim}-d"
                )
        states = self._call(
            "read a sample document state",
            lambda: self._docs.query.fetch_objects(limit=1, return_properties=["fingerprint"]),
        ).objects
        if states and states[0].properties.get("fingerprint") not in (self.fingerprint, "", None):
            raise FingerprintMismatch(
                f"collection {self.docs_collection_name} holds states of fingerprint "
                f"{states[0].properties.get('fingerprint')!r}, not {self.fingerprint!r}"
            )

    # ------------------------------------------------------------------ alias
    def _ensure_alias(self) -> None:
        if not self.aliases_supported:
            log.warning(
                "Weaviate %s.%s has no aliases (need >= 1.32): query %s directly",
                *self.server_version,
                self.collection_name,
            )
            return
        target = self.alias_target()
        if target is None:
            try:
                self._call(
                    f"create alias {self.alias_name}",
                    lambda: self._client.alias.create(
                        alias_name=self.alias_name, target_collection=self.collection_name
                    ),
                )
                log.info("created alias %s -> %s", self.alias_name, self.collection_name)
                return
            except PermanentStoreError as e:
                target = self.alias_target()  # lost a race with another instance?
                if target is None:
                    log.warning("could not create alias %s: %s", self.alias_name, e)
                    return
        if target != self.collection_name:
            log.info(
                "alias %s points at %s, not at this fingerprint's %s; leaving it (a reindex swaps it)",
                self.alias_name,
                target,
                self.collection_name,
            )

    def alias_target(self) -> str | None:
        """The collection the alias points at (None: no alias, or no alias support)."""
        if not self.aliases_supported:
            return None
        found = self._call(
            f"read alias {self.alias_name}", lambda: self._client.alias.get(alias_name=self.alias_name)
        )
        return None if found is None else found.collection

    def point_alias(self, collection: str | None = None) -> None:
        """Point the alias at ``collection`` (default: this store's collection), creating it if needed."""
        if not self.aliases_supported:
            raise PermanentStoreError(
                f"Weaviate {self.server_version[0]}.{self.server_version[1]} has no aliases (need >= 1.32)"
            )
        target = collection or self.collection_name
        if self.alias_target() is None:
            self._call(
                f"create alias {self.alias_name}",
                lambda: self._client.alias.create(alias_name=self.alias_name, target_collection=target),
            )
        else:
            ok = self._call(
                f"repoint alias {self.alias_name}",
                lambda: self._client.alias.update(alias_name=self.alias_name, new_target_collection=target),
            )
            if not ok:
                raise PermanentStoreError(f"alias {self.alias_name} or collection {target} not found")
        log.info("alias %s -> %s", self.alias_name, target)

    # ------------------------------------------------------------------ protocol: writes
    def upsert_chunks(self, chunks: Sequence[ChunkRecord]) -> None:
        """Insert or replace chunk objects by id (gRPC batch); see the module doc for errors.

        Version guard: chunks of a document whose stored state, or whose stored chunk at one of
        the ids written, has a higher version are not written (:class:`StaleWrite` after the rest
        is). Weaviate has no compare-and-set, so this reads before it writes (one query for the
        states, one per 1000 chunk ids); a newer version written by another worker between that
        read and this batch's BatchObjects call (one round trip) is overwritten. That residual
        race needs two workers writing one document at the same moment, i.e. a zombie whose
        partition was reassigned; the states it then writes are refused by :meth:`put_states`
        (which reads again), so the pipeline counts it stale, but the chunks it overwrote keep
        the older content until the document's next change.
        """
        vectors = [self._checked_vector(chunk) for chunk in chunks]  # all checked before any write
        check_doc_ids([c.doc_id for c in chunks])
        stale = self._stale_docs(chunks) if chunks else {}
        objects: dict[str, Any] = {}
        invalid: dict[str, str] = {}
        for chunk, vector in zip(chunks, vectors):
            if chunk.doc_id in stale:
                continue
            if vector is None:
                invalid[chunk.id] = "vector has NaN or infinite values"
                objects.pop(chunk.id, None)
                continue
            invalid.pop(chunk.id, None)
            objects[chunk.id] = DataObject(
                uuid=chunk.id, properties=self._chunk_properties(chunk), vector={VECTOR_NAME: vector}
            )
        self._write(
            self._chunks, objects, keys={oid: oid for oid in [*objects, *invalid]}, what="upsert chunks",
            refused=invalid, stale=stale,
        )

    def _stale_docs(self, chunks: Sequence[ChunkRecord]) -> dict[str, str]:
        """Documents of ``chunks`` stored in a newer version (their state or a chunk at these ids)."""
        incoming: dict[str, int] = {}
        for c in chunks:
            incoming[c.doc_id] = min(c.version, incoming.get(c.doc_id, c.version))
        stored = {d: st.version for d, st in self.get_states(list(incoming)).items()}
        ids = list(dict.fromkeys(c.id for c in chunks))
        for page in _batches(ids, 1000):
            res = self._call(
                "read chunk versions",
                lambda: self._chunks.query.fetch_objects_by_ids(
                    list(page), limit=len(page), return_properties=["doc_id", "version"]),
            )
            for obj in res.objects:
                d, v = obj.properties.get("doc_id"), int(obj.properties.get("version") or 0)
                if d in incoming:
                    stored[d] = max(v, stored.get(d, v))
        return {d: f"stored version {stored[d]} is newer than {v}" for d, v in incoming.items()
                if stored.get(d, v) > v}

    def put_states(self, states: Sequence[DocState]) -> None:
        """Insert or replace document states by doc id (object_errors are keyed by doc id).

        A state whose version is below the stored one is not written (:class:`StaleWrite`, after
        the others were). Weaviate has no conditional write: the stored versions are read first
        (one query), so a newer state written by someone else between that read and this batch
        (one round trip) would still be overwritten - see :meth:`upsert_chunks`.
        """
        for state in states:
            if state.fingerprint != self.fingerprint:
                raise FingerprintMismatch(
                    f"state of {state.doc_id!r} has fingerprint {state.fingerprint!r}; "
                    f"this store holds {self.fingerprint!r}",
                )
        check_doc_ids([s.doc_id for s in states])
        stored = self.get_states([s.doc_id for s in states]) if states else {}
        stale = {s.doc_id: f"stored version {stored[s.doc_id].version} is newer than {s.version}"
                 for s in states if s.doc_id in stored and stored[s.doc_id].version > s.version}
        objects: dict[str, Any] = {}
        keys: dict[str, str] = {}
        for state in states:
            if state.doc_id in stale:
                continue
            oid = doc_state_uuid(state.doc_id)
            keys[oid] = state.doc_id
            objects[oid] = DataObject(uuid=oid, properties=_state_properties(state))
        self._write(self._docs, objects, keys=keys, what="put states", stale=stale)

    def delete_chunks(self, doc_id: str, from_index: int = 0, max_version: int | None = None) -> int:
        """Delete chunks of ``doc_id`` with chunk_index >= from_index (and version <= max_version)."""
        return self.delete_chunks_many([(doc_id, from_index, max_version)])

    def delete_chunks_many(self, items: Sequence[tuple]) -> int:
        """Delete ``(doc_id, from_index[, max_version])`` tails of several documents (one filter per
        100 docs); with ``max_version`` only chunks of that version or older (never newer ones)."""
        check_doc_ids([item[0] for item in items])
        total = 0
        for part in _batches(list(items), 100):
            clauses = []
            for item in part:
                clause = Filter.by_property("doc_id").equal(item[0]) \
                    & Filter.by_property("chunk_index").greater_or_equal(int(item[1]))
                if len(item) > 2 and item[2] is not None:
                    clause = clause & Filter.by_property("version").less_or_equal(int(item[2]))
                clauses.append(clause)
            where = clauses[0] if len(clauses) == 1 else Filter.any_of(clauses)
            what = f"delete chunks of {part[0][0]!r}"
            if len(part) > 1:
                what += f" and {len(part) - 1} more documents"
            total += self._delete_where(where, what=what)
        return total

    def _delete_where(self, where: Any, *, what: str) -> int:
        total = 0
        failed_rounds = 0
        while True:
            res = self._call(what, lambda: self._chunks.data.delete_many(where=where))
            total += res.successful
            if res.failed:
                failed_rounds += 1
                if failed_rounds >= self.retry.max_attempts:
                    raise TransientStoreError(
                        f"{what}: Weaviate failed to delete {res.failed} of {res.matches} matching "
                        f"objects {failed_rounds} times"
                    )
                self._sleep(self.retry.delay(failed_rounds))
                continue
            # Loop until nothing matches: one call deletes at most QUERY_MAXIMUM_RESULTS, a
            # server setting the client cannot read, so "fewer than 10 000" proves nothing.
            if res.matches == 0 or res.successful == 0:
                return total

    def _write(
        self,
        collection: Any,
        objects: dict[str, Any],
        *,
        keys: Mapping[str, str],
        what: str,
        refused: Mapping[str, str] | None = None,
        stale: Mapping[str, str] | None = None,
    ) -> None:
        """Write all objects; then raise PermanentStoreError for refused/failed ones, if any, or
        StaleWrite when the only ones not written are documents ``stale`` (doc id -> reason)."""
        permanent: dict[str, str] = dict(refused or {})
        items = list(objects.items())
        for batch in _batches(items, self.batch_size):
            permanent.update(self._write_batch(collection, dict(batch), what))
        stale = dict(stale or {})
        if permanent:
            errors = {keys[oid]: msg for oid, msg in permanent.items()}
            sample = next(iter(errors.items()))
            raise PermanentStoreError(
                self._scrub(
                    f"{what}: {len(errors)} of {len(keys)} objects were refused "
                    f"(the others were written); e.g. {sample[0]}: {sample[1]}"
                ),
                object_errors={k: self._scrub(v) for k, v in errors.items()},
                stale=stale,
            )
        if stale:
            raise StaleWrite(f"{what}: {len(stale)} document(s) not written, the store holds a newer "
                             f"version (e.g. {next(iter(stale.items()))})", object_errors=stale)

    def _write_batch(self, collection: Any, pending: dict[str, Any], what: str) -> dict[str, str]:
        """Write one batch; retry transient failures; return permanent per-object errors."""
        permanent: dict[str, str] = {}
        attempt = 0
        while pending:
            attempt += 1
            errors = self._insert_many(collection, pending, what, attempt)
            if errors is None:  # whole call failed transiently (or partially unknown)
                last = f"{what}: the batch call failed"
                retry_ids = pending
            else:
                retry_ids = {}
                for oid, msg in errors.items():
                    if is_transient_message(msg):
                        retry_ids[oid] = pending[oid]
                    else:
                        permanent[oid] = msg
                last = next((errors[oid] for oid in retry_ids), "")
            pending = retry_ids
            if not pending:
                break
            if attempt >= self.retry.max_attempts:
                raise TransientStoreError(
                    self._scrub(
                        f"{what}: {len(pending)} objects still failing after {attempt} attempts; last error: {last}"
                    )
                )
            log.warning("%s: retrying %d objects (attempt %d): %s", what, len(pending), attempt, self._scrub(last))
            self._sleep(self.retry.delay(attempt))
        return permanent

    def _insert_many(self, collection: Any, pending: dict[str, Any], what: str, attempt: int) -> dict[str, str] | None:
        """One insert_many; per-object errors by id, or None when the whole call failed transiently."""
        ids = list(pending)
        try:
            res = collection.data.insert_many(list(pending.values()))
        except WeaviateInsertManyAllFailedError as e:
            # Every object failed; the client only gives the *set* of messages.
            messages = self._all_failed_messages(e)
            if len(ids) == 1 or len(messages) == 1:
                return {oid: messages[0] for oid in ids}
            if all(is_transient_message(m) for m in messages):
                return {oid: messages[0] for oid in ids}
            # Mixed reasons: send one by one to learn which object failed why.
            out: dict[str, str] = {}
            for oid in ids:
                single = self._insert_many(collection, {oid: pending[oid]}, what, attempt)
                if single is None:
                    return None
                out.update(single)
            return out
        except Exception as e:
            kind = self._classify(e)
            if kind is None:
                raise  # not a store failure: a bug
            if kind == "permanent" or kind == "retried" or attempt >= self.retry.max_attempts:
                raise self._store_error(kind, what, e, attempt) from self._safe_cause(e)
            log.warning("%s: transient failure (attempt %d): %s", what, attempt, self._scrub(self._message(e)))
            return None
        return {ids[idx]: err.message for idx, err in res.errors.items()}

    @staticmethod
    def _all_failed_messages(e: Exception) -> list[str]:
        text = str(e)
        marker = "Here is the set of all errors:"
        if marker in text:
            lines = [m.strip() for m in text.split(marker, 1)[1].split("\n") if m.strip()]
            if lines:
                return lines
        return [text]

    def _chunk_properties(self, chunk: ChunkRecord) -> dict[str, Any]:
        return {
            "doc_id": chunk.doc_id,
            "chunk_index": int(chunk.chunk_index),
            "chunk_count": int(chunk.chunk_count),
            "version": int(chunk.version),
            "content_hash": chunk.content_hash,
            "fingerprint": chunk.fingerprint,
            "event_time_ms": int(chunk.event_time_ms),
            "indexed_time_ms": int(chunk.indexed_time_ms),
            "text": chunk.text,
            "metadata_json": json.dumps(dict(chunk.metadata), sort_keys=True, ensure_ascii=False),
        }

    def _checked_vector(self, chunk: ChunkRecord) -> list[float] | None:
        """Refuse, before anything is sent, a chunk that would mix vector spaces.

        FingerprintMismatch carries no ``object_errors`` on purpose: it is a configuration
        error of the whole worker (wrong model or store), not bad data of one document.
        Returns None for a vector with NaN/inf values (refused per object, the rest is written).
        """
        if chunk.fingerprint != self.fingerprint:
            raise FingerprintMismatch(
                f"chunk {chunk.id} ({chunk.doc_id}#{chunk.chunk_index}) has fingerprint "
                f"{chunk.fingerprint!r}; this store holds {self.fingerprint!r}"
            )
        vec = np.asarray(chunk.vector, dtype=np.float32)
        if vec.shape != (self.dim,):
            raise FingerprintMismatch(
                f"chunk {chunk.id} ({chunk.doc_id}#{chunk.chunk_index}) has a vector of shape "
                f"{vec.shape}; this store holds {self.dim}-d vectors"
            )
        if not np.all(np.isfinite(vec)):
            return None
        return vec.tolist()

    # ------------------------------------------------------------------ protocol: reads
    def get_states(self, doc_ids: Iterable[str]) -> dict[str, DocState]:
        """One ContainsAny query on the FIELD-tokenised doc_id per page of ids. Ids no store
        accepts (surrounding whitespace) cannot be stored: they are absent without a query, and
        they would match their trimmed twin under ``field`` tokenisation."""
        wanted = [d for d in dict.fromkeys(doc_ids) if doc_id_problem(d) is None]
        out: dict[str, DocState] = {}
        for page in _batches(wanted, QUERY_MAXIMUM_RESULTS):
            res = self._call(
                "get document states",
                lambda: self._docs.query.fetch_objects(
                    filters=Filter.by_property("doc_id").contains_any(list(page)),
                    limit=len(page),
                    return_properties=DOC_PROPERTIES,
                ),
            )
            for obj in res.objects:
                p = obj.properties
                if p.get("doc_id") not in page:
                    continue
                out[p["doc_id"]] = _state_from(p)
        return out

    def fetch_vectors(self, chunk_ids: Iterable[str],
                      content_hashes: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
        """Stored vectors by chunk id (ids that are not uuids, or not stored, are absent); with
        ``content_hashes``, only chunks stored with the expected content hash."""
        ids: list[str] = []
        for cid in dict.fromkeys(chunk_ids):
            try:
                ids.append(str(uuid_lib.UUID(str(cid))))
            except ValueError:
                continue
        out: dict[str, np.ndarray] = {}
        for page in _batches(ids, 1000):
            res = self._call(
                "fetch vectors",
                lambda: self._chunks.query.fetch_objects_by_ids(
                    list(page), limit=len(page), return_properties=["content_hash"],
                    include_vector=[VECTOR_NAME]
                ),
            )
            for obj in res.objects:
                vec = obj.vector.get(VECTOR_NAME)
                if content_hashes is not None and \
                        content_hashes.get(str(obj.uuid)) != obj.properties.get("content_hash"):
                    continue
                if vec is not None:
                    out[str(obj.uuid)] = np.asarray(vec, dtype=np.float32)
        return out

    def search(self, vector: np.ndarray, k: int = 5) -> list[SearchHit]:
        """Nearest chunks (near_vector on this fingerprint's collection); score = cosine similarity."""
        if k <= 0:
            return []
        query = np.asarray(vector, dtype=np.float32)
        if query.shape != (self.dim,):
            raise FingerprintMismatch(f"query vector has shape {query.shape}; this store holds {self.dim}-d vectors")
        res = self._call(
            "search",
            lambda: self._chunks.query.near_vector(
                near_vector=query.tolist(),
                limit=int(k),
                target_vector=VECTOR_NAME,
                return_metadata=MetadataQuery(distance=True),
                return_properties=_SEARCH_PROPERTIES,
            ),
        )
        hits = []
        for obj in res.objects:
            p = obj.properties
            hits.append(
                SearchHit(
                    doc_id=p.get("doc_id") or "",
                    chunk_index=int(p.get("chunk_index") or 0),
                    score=self._score(obj.metadata.distance),
                    text=p.get("text") or "",
                    version=int(p.get("version") or 0),
                    metadata=json.loads(p.get("metadata_json") or "{}"),
                )
            )
        return hits

    def chunk_rows(self, doc_id: str) -> list[dict]:
        """All chunk objects of one document (without vectors), ordered by chunk_index, as dicts with
        the LanceDB adapter's ``chunk_rows`` keys. For checks and tests."""
        res = self._call(
            f"read chunks of {doc_id!r}",
            lambda: self._chunks.query.fetch_objects(
                filters=Filter.by_property("doc_id").equal(doc_id), limit=QUERY_MAXIMUM_RESULTS,
                return_properties=CHUNK_PROPERTIES),
        )
        rows = [self._row(o) for o in res.objects if o.properties.get("doc_id") == doc_id]
        return sorted(rows, key=lambda r: r["chunk_index"])

    def all_chunk_rows(self) -> list[dict]:
        """Every chunk object of the collection (without vectors), as ``chunk_rows`` dicts, in no
        particular order: a cursor scan (``after`` an object id), so not capped by
        QUERY_MAXIMUM_RESULTS. For checks (the crash harness). A failure restarts the scan."""
        def scan() -> list[dict]:
            return [self._row(o) for o in self._chunks.iterator(return_properties=CHUNK_PROPERTIES,
                                                                  cache_size=1000)]
        return self._call("read every chunk", scan)

    @staticmethod
    def _row(o: Any) -> dict:
        r = {"id": str(o.uuid), **{k: o.properties.get(k) for k in CHUNK_PROPERTIES}}
        for k in ("chunk_index", "chunk_count", "version", "event_time_ms", "indexed_time_ms"):
            r[k] = int(r[k] or 0)
        return r

    def _score(self, distance: float | None) -> float:
        if distance is None:
            return math.nan
        if self.distance == "cosine":
            return 1.0 - distance
        if self.distance == "dot":
            return -distance
        return 1.0 - distance / 2.0  # l2-squared of unit vectors

    def count(self) -> int:
        res = self._call("count chunks", lambda: self._chunks.aggregate.over_all(total_count=True))
        return int(res.total_count or 0)

    def count_documents(self, include_deleted: bool = False) -> int:
        filters = None if include_deleted else Filter.by_property("deleted").equal(False)
        res = self._call(
            "count documents", lambda: self._docs.aggregate.over_all(filters=filters, total_count=True)
        )
        return int(res.total_count or 0)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        client = getattr(self, "_client", None)
        if client is not None:
            try:
                client.close()
            except Exception as e:  # closing must not mask the reason we are closing
                log.debug("closing the Weaviate client failed: %s", self._scrub(str(e)))

    def drop_collections(self) -> None:
        """Delete this fingerprint's collections (and the alias if it points at them). Tests/ops only."""
        if self.alias_target() == self.collection_name:
            self._call("delete alias", lambda: self._client.alias.delete(alias_name=self.alias_name))
        for name in (self.collection_name, self.docs_collection_name):
            self._call(f"delete collection {name}", lambda: self._client.collections.delete(name))

    # ------------------------------------------------------------------ error handling
    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn``; retry transient failures with backoff; map errors to the store's types."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except Exception as e:
                kind = self._classify(e)
                if kind is None:
                    raise  # not a store failure: a bug, let it surface as is
                if kind == "permanent" or kind == "retried" or attempt >= self.retry.max_attempts:
                    raise self._store_error(kind, what, e, attempt) from self._safe_cause(e)
                log.warning("%s failed (attempt %d, retrying): %s", what, attempt, self._scrub(self._message(e)))
                self._sleep(self.retry.delay(attempt))

    def _store_error(self, kind: str, what: str, e: BaseException, attempt: int) -> Exception:
        """The store exception for a classified failure (message scrubbed of the API key)."""
        message = self._scrub(f"{what} failed: {self._message(e)}")
        if kind == "permanent":
            return PermanentStoreError(message)
        if kind == "retried":
            return TransientStoreError(f"{message} (after the client's own retries on UNAVAILABLE)")
        return TransientStoreError(f"{message} (after {attempt} attempt(s))")

    @staticmethod
    def _classify(e: BaseException) -> str | None:
        """'transient', 'retried' (transient, already retried by the client), 'permanent' or None."""
        if isinstance(e, (TransientStoreError, PermanentStoreError)):
            return "transient" if isinstance(e, TransientStoreError) else "permanent"
        if any(isinstance(x, WeaviateRetryError) for x in _chain(e)):
            return "retried"
        if isinstance(e, WeaviateClosedClientError):
            return "permanent"
        if isinstance(
            e, (WeaviateConnectionError, WeaviateTimeoutError, WeaviateStartUpError, WeaviateGRPCUnavailableError)
        ):
            return "transient"
        if isinstance(e, httpx.TransportError):
            return "transient"
        if isinstance(e, grpc.RpcError):
            code = e.code() if hasattr(e, "code") else None
            return "transient" if code in _TRANSIENT_GRPC_CODES else "permanent"
        if isinstance(e, UnexpectedStatusCodeError):
            status = e.status_code
            return "transient" if status == 429 or status >= 500 else "permanent"
        if isinstance(e, WeaviateBaseError):
            return "transient" if is_transient_message(WeaviateStore._message(e)) else "permanent"
        return None

    @staticmethod
    def _message(e: BaseException) -> str:
        text = getattr(e, "message", None) or str(e) or type(e).__name__
        return " ".join(str(text).split())

    def _scrub(self, text: str) -> str:
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text

    def _safe_cause(self, e: BaseException) -> BaseException | None:
        """Chain the original exception unless its text would reveal the API key."""
        if self._api_key and any(self._api_key in f"{x}{x!r}" for x in _chain(e)):
            return None
        return e

    @staticmethod
    def _sleep(seconds: float) -> None:
        time.sleep(seconds)
