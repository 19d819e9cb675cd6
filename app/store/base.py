"""The vector-store protocol every adapter implements.

A store holds, for one model fingerprint (one vector space):

* **chunk objects** - one per chunk of a document, with its vector and the
  document's version, content hash, fingerprint, times and metadata;
* **document states** - one per document, the per-document bookkeeping the
  pipeline needs to be idempotent and to refuse stale events: version, content
  hash, fingerprint, chunk count and a ``deleted`` flag (a tombstone, kept so
  that an older upsert arriving after a delete cannot resurrect the document).

Every method is synchronous and returns only after the store has acknowledged
the work (durably written). Errors are reported with the two exception types
below; adapters never swallow a failed write.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

#: Namespace for deterministic chunk object ids (uuid5 of "<doc_id>#<chunk_index>").
CHUNK_NAMESPACE = uuid.UUID("6f1d8a52-3c4e-5b7a-9e21-0c5d4f3b2a19")


def chunk_uuid(doc_id: str, chunk_index: int) -> str:
    """Deterministic object id of a chunk: the same doc and index always give the same id."""
    return str(uuid.uuid5(CHUNK_NAMESPACE, f"{doc_id}#{chunk_index}"))


class StoreError(Exception):
    """Base class of store failures."""


class TransientStoreError(StoreError):
    """The store could not do the work now (down, timeout, throttled). Retry later; never skip."""


class PermanentStoreError(StoreError):
    """The store refused the work and retrying will not help (bad data, schema mismatch).

    ``object_errors`` maps chunk object ids (or doc ids) to the store's message when the
    failure concerns individual objects; the rest of the batch was written.
    """

    def __init__(self, message: str, object_errors: Mapping[str, str] | None = None,
                 stale: Mapping[str, str] | None = None):
        super().__init__(message)
        self.object_errors: dict[str, str] = dict(object_errors or {})
        #: doc ids not written because the store holds a newer version (see StaleWrite); set
        #: beside ``object_errors`` when one call met both
        self.stale: dict[str, str] = dict(stale or {})


class FingerprintMismatch(PermanentStoreError):
    """A write would mix vector spaces: the collection belongs to another model fingerprint."""


class StaleWrite(PermanentStoreError):
    """Writes refused because the store holds a newer version of their documents.

    The store call itself compares versions (an evicted worker coming back after a rebalance,
    or any concurrent writer, must not overwrite newer state): a chunk or state whose version is
    below the stored one is not written. ``object_errors`` maps each refused **doc id** to the
    reason; everything else of the call was written. Not bad input: the pipeline counts these
    documents as ``stale`` (never dead-letters them). ``stale`` equals ``object_errors``.
    """

    def __init__(self, message: str, object_errors: Mapping[str, str] | None = None):
        super().__init__(message, object_errors, stale=object_errors)


def doc_id_problem(doc_id: str) -> str | None:
    """Why a store refuses ``doc_id`` (None: fine).

    Ids with leading or trailing whitespace are refused by every adapter: Weaviate's ``field``
    tokenisation compares trimmed values, so ``"a "`` and ``"a"`` would share (and delete) each
    other's chunks. Decoding refuses such events first (``invalid-doc-id``); this keeps the
    stores in agreement for any other caller.

    >>> doc_id_problem("doc-1"), doc_id_problem(" doc-1"), doc_id_problem("doc-1\u00a0")
    (None, 'doc_id has leading or trailing whitespace', 'doc_id has leading or trailing whitespace')
    """
    if not doc_id:
        return "empty doc_id"
    if doc_id != doc_id.strip():
        return "doc_id has leading or trailing whitespace"
    return None


def check_doc_ids(doc_ids: Iterable[str]) -> None:
    """Raise PermanentStoreError (``object_errors`` by doc id) for ids no store accepts."""
    bad = {d: p for d in doc_ids if (p := doc_id_problem(d)) is not None}
    if bad:
        sample = next(iter(bad.items()))
        raise PermanentStoreError(f"{len(bad)} doc id(s) refused, e.g. {sample[0]!r}: {sample[1]}",
                                  object_errors=bad)


@dataclass(frozen=True)
class ChunkRecord:
    """One chunk object as written to the store."""

    doc_id: str
    chunk_index: int
    chunk_count: int
    version: int
    content_hash: str
    fingerprint: str
    event_time_ms: int
    indexed_time_ms: int
    text: str
    vector: np.ndarray  # float32, shape (dim,)
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return chunk_uuid(self.doc_id, self.chunk_index)


@dataclass(frozen=True)
class DocState:
    """Per-document bookkeeping, kept in the store next to the chunks."""

    doc_id: str
    version: int
    content_hash: str  # "" for a deleted document
    fingerprint: str
    chunk_count: int  # 0 for a deleted document
    deleted: bool
    event_time_ms: int
    updated_time_ms: int
    #: the Kafka record this state was last written from (its document's last record in the
    #: batch): redelivered records at or below it are recognised and skipped
    source_topic: str = ""
    source_partition: int = -1
    source_offset: int = -1
    #: the incarnation of source_topic (Kafka topic id, or cluster id + topic) the offset belongs
    #: to: after a topic is recreated or mirrored, offsets start again and are not comparable.
    #: "" for states written before it was recorded (or by a broker that names none).
    source_incarnation: str = ""


@dataclass(frozen=True)
class SearchHit:
    doc_id: str
    chunk_index: int
    score: float  # cosine similarity, higher is closer
    text: str
    version: int
    metadata: Mapping[str, str]


@runtime_checkable
class VectorStore(Protocol):
    """What the pipeline needs from a vector store. One instance serves one fingerprint."""

    #: The model fingerprint this store instance reads and writes.
    fingerprint: str
    #: The vector dimension.
    dim: int

    def get_states(self, doc_ids: Iterable[str]) -> dict[str, DocState]:
        """Per-document state for the given ids (missing ids are simply absent)."""

    def fetch_vectors(self, chunk_ids: Iterable[str],
                      content_hashes: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
        """Stored vectors by chunk object id (missing ids are absent). With ``content_hashes``
        (chunk id -> expected content hash), only chunks stored with that hash are returned."""

    def upsert_chunks(self, chunks: Sequence[ChunkRecord]) -> None:
        """Insert or replace chunk objects by id. Refuses chunks of another fingerprint, and
        (:class:`StaleWrite`) the chunks of a document whose stored state or stored chunks
        have a higher version than the chunk's."""

    def delete_chunks(self, doc_id: str, from_index: int = 0, max_version: int | None = None) -> int:
        """Delete every chunk of ``doc_id`` whose chunk_index >= from_index (and, with
        ``max_version``, whose version <= it: a delete never removes newer chunks); returns how many.
        ``delete_chunks_many`` takes ``(doc_id, from_index[, max_version])`` tuples."""

    def put_states(self, states: Sequence[DocState]) -> None:
        """Insert or replace document states by doc_id; a state whose version is below the
        stored one is not written (:class:`StaleWrite`, after the others were)."""

    def search(self, vector: np.ndarray, k: int = 5) -> list[SearchHit]:
        """Nearest chunks by cosine similarity, best first."""

    def count(self) -> int:
        """Number of chunk objects."""

    def count_documents(self, include_deleted: bool = False) -> int:
        """Number of document states (live ones unless include_deleted)."""

    def close(self) -> None:
        """Release connections and handles."""
