"""LanceDB adapter: the embedded default vector store (files under a data directory).

Two tables per model fingerprint, named from a short hash of the fingerprint:
``<prefix>__<hash>__chunks`` (vectors) and ``<prefix>__<hash>__docs`` (document states).
The full fingerprint is written into each table's Arrow schema metadata and checked on
open, so a table can never receive vectors of another model.

LanceDB allows one writer per table (two writer processes duplicate rows): run one
worker per data directory. Readers (``embedstream search``) may run alongside; they see
the latest committed version on every query.

**Alias pointer** (the LanceDB equivalent of the Weaviate alias): ``aliases.json`` in the
LanceDB directory maps an alias name (the collection prefix) to the collection readers
should query and the fingerprint of its vectors, so a reader can load the matching
encoder::

    {"format": "embedstream.lancedb-aliases/1",
     "aliases": {"embedstream": {"collection": "embedstream__1a2b3c4d5e6f",
                                 "prefix": "embedstream",
                                 "fingerprint": "all-MiniLM-L6-v2:int8:...:d384",
                                 "updated_ms": 1700000000000}}}

It is rewritten atomically (temporary file + fsync + ``os.replace``) under an exclusive
``flock`` on ``aliases.lock``, so readers never see a half-written file and concurrent
writers do not lose each other's updates. A store opened with ``create=True`` creates its
alias when it is missing and never repoints an existing one (a reindex does, with
:meth:`LanceDBStore.point_alias`).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa

from app.store.base import (ChunkRecord, DocState, FingerprintMismatch, PermanentStoreError, SearchHit,
                            StaleWrite, TransientStoreError, check_doc_ids, chunk_uuid, doc_id_problem)

log = logging.getLogger(__name__)
FP_KEY = b"embedstream.fingerprint"


def _q(value: str) -> str:
    """SQL string literal for a LanceDB (DataFusion) filter."""
    return "'" + value.replace("'", "''") + "'"


def collection_name(prefix: str, fingerprint: str) -> str:
    return f"{prefix}__{hashlib.sha256(fingerprint.encode()).hexdigest()[:12]}"


# -- alias pointer ----------------------------------------------------------------------
ALIASES_FILE = "aliases.json"
ALIASES_FORMAT = "embedstream.lancedb-aliases/1"


def read_aliases(path: str | Path) -> dict[str, dict]:
    """Every alias record in the LanceDB directory ``path`` (empty when there is none).

    >>> read_aliases("/nonexistent")
    {}
    """
    f = Path(path) / ALIASES_FILE
    try:
        data = json.loads(f.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise TransientStoreError(f"cannot read {f}: {exc}") from exc
    return dict(data.get("aliases") or {})


def read_alias(path: str | Path, alias: str) -> dict | None:
    """The record of one alias: ``{"collection", "prefix", "fingerprint", "updated_ms"}`` or None."""
    return read_aliases(path).get(alias)


@contextlib.contextmanager
def _aliases_locked(path: Path):
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "aliases.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_aliases(path: Path, aliases: dict[str, dict]) -> None:
    tmp = path / f".{ALIASES_FILE}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"format": ALIASES_FORMAT, "aliases": aliases}, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path / ALIASES_FILE)
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def set_alias(path: str | Path, alias: str, collection: str, fingerprint: str, prefix: str | None = None,
              only_if_missing: bool = False) -> dict:
    """Point ``alias`` at ``collection`` (atomically); returns the alias record now in force.

    With ``only_if_missing`` an existing alias is left as it is (and returned).
    """
    path = Path(path)
    try:
        with _aliases_locked(path):
            aliases = read_aliases(path)
            if only_if_missing and alias in aliases:
                return aliases[alias]
            rec = {"collection": collection, "fingerprint": fingerprint,
                   "prefix": prefix if prefix is not None else collection.rsplit("__", 1)[0],
                   "updated_ms": int(time.time() * 1000)}
            aliases[alias] = rec
            _write_aliases(path, aliases)
            return rec
    except OSError as exc:
        raise TransientStoreError(f"cannot write the alias file in {path}: {exc}") from exc


class LanceDBStore:
    """VectorStore on LanceDB files. See :mod:`app.store.base` for the contract."""

    #: reads and writes may come from two threads at once (the worker prepares batch N+1 while
    #: batch N is written): LanceDB tables take concurrent calls
    concurrent_calls = True

    def __init__(self, path: str | Path, fingerprint: str, dim: int, collection_prefix: str = "embedstream",
                 create: bool = True, use_alias: bool = True, sole_writer: bool = False):
        """``sole_writer``: no other process writes these tables while this one is open (the
        worker), so reads skip the check for newer versions committed elsewhere (about a quarter
        of each call's cost, measured). Otherwise every read sees other processes' commits."""
        import lancedb

        self.path = Path(path)
        self.fingerprint = fingerprint
        self.dim = dim
        self.prefix = collection_prefix
        #: the alias readers query (same name as the Weaviate alias: the collection prefix)
        self.alias_name = collection_prefix
        self.collection = collection_name(collection_prefix, fingerprint)
        try:
            if create:
                self.path.mkdir(parents=True, exist_ok=True)
            self._db = lancedb.connect(str(self.path),
                                       read_consistency_interval=None if sole_writer else timedelta(0))
        except OSError as exc:
            raise TransientStoreError(f"cannot open LanceDB at {self.path}: {exc}") from exc
        meta = {FP_KEY: fingerprint.encode()}
        self._chunks_schema = pa.schema([
            pa.field("id", pa.string(), nullable=False),
            pa.field("doc_id", pa.string(), nullable=False),
            pa.field("chunk_index", pa.int32(), nullable=False),
            pa.field("chunk_count", pa.int32(), nullable=False),
            pa.field("version", pa.int64(), nullable=False),
            pa.field("content_hash", pa.string(), nullable=False),
            pa.field("fingerprint", pa.string(), nullable=False),
            pa.field("event_time_ms", pa.int64(), nullable=False),
            pa.field("indexed_time_ms", pa.int64(), nullable=False),
            pa.field("text", pa.string()),
            pa.field("metadata_json", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dim)),
        ]).with_metadata(meta)
        self._docs_schema = pa.schema([
            pa.field("doc_id", pa.string(), nullable=False),
            pa.field("version", pa.int64(), nullable=False),
            pa.field("content_hash", pa.string(), nullable=False),
            pa.field("fingerprint", pa.string(), nullable=False),
            pa.field("chunk_count", pa.int32(), nullable=False),
            pa.field("deleted", pa.bool_(), nullable=False),
            pa.field("event_time_ms", pa.int64(), nullable=False),
            pa.field("updated_time_ms", pa.int64(), nullable=False),
            pa.field("source_topic", pa.string(), nullable=False),
            pa.field("source_partition", pa.int32(), nullable=False),
            pa.field("source_offset", pa.int64(), nullable=False),
            pa.field("source_incarnation", pa.string(), nullable=False),
        ]).with_metadata(meta)
        self._chunks = self._open(f"{self.collection}__chunks", self._chunks_schema, create)
        self._docs = self._open(f"{self.collection}__docs", self._docs_schema, create)
        self._migrate_docs()
        if create and use_alias:
            self._ensure_alias()

    def _open(self, name: str, schema: pa.Schema, create: bool):
        try:
            if create:
                table = self._db.create_table(name, schema=schema, exist_ok=True)
            else:
                table = self._db.open_table(name)
        except (OSError, RuntimeError) as exc:
            raise TransientStoreError(f"cannot open LanceDB table {name} in {self.path}: {exc}") from exc
        have = (table.schema.metadata or {}).get(FP_KEY, b"").decode()
        if have != self.fingerprint:
            raise FingerprintMismatch(f"LanceDB table {name} holds vectors of {have!r}, not {self.fingerprint!r}")
        return table

    # -- alias ------------------------------------------------------------------------
    def _ensure_alias(self) -> None:
        """Create the alias pointing at this collection if missing; never repoint an existing one."""
        rec = set_alias(self.path, self.alias_name, self.collection, self.fingerprint, self.prefix,
                        only_if_missing=True)
        if rec["collection"] != self.collection:
            log.info("alias %s points at %s, not at this fingerprint's %s; leaving it (a reindex swaps it)",
                     self.alias_name, rec["collection"], self.collection)

    def alias_target(self) -> str | None:
        """The collection the alias points at (None: no alias yet)."""
        rec = read_alias(self.path, self.alias_name)
        return None if rec is None else rec["collection"]

    def alias_record(self) -> dict | None:
        """The alias record: collection, prefix and fingerprint of the collection it points at."""
        return read_alias(self.path, self.alias_name)

    def collection_fingerprint(self, collection: str) -> str:
        """Fingerprint of another collection in this directory, from its table metadata."""
        try:
            table = self._db.open_table(f"{collection}__chunks")
        except (OSError, RuntimeError, ValueError, FileNotFoundError) as exc:
            raise PermanentStoreError(f"no LanceDB collection {collection} in {self.path}") from exc
        return (table.schema.metadata or {}).get(FP_KEY, b"").decode()

    def point_alias(self, collection: str | None = None, fingerprint: str | None = None) -> None:
        """Point the alias at ``collection`` (default: this store's), creating it if needed.

        The fingerprint recorded with the alias is read from the target's table metadata when
        not given (and must match it when given), so a reader can load the matching encoder.
        """
        target = collection or self.collection
        have = self.fingerprint if target == self.collection else self.collection_fingerprint(target)
        if fingerprint is not None and fingerprint != have:
            raise FingerprintMismatch(f"collection {target} holds vectors of {have!r}, not {fingerprint!r}")
        set_alias(self.path, self.alias_name, target, have, target.rsplit("__", 1)[0])
        log.info("alias %s -> %s", self.alias_name, target)

    def _migrate_docs(self) -> None:
        """Add the source_* columns to document tables written by earlier versions."""
        have = set(self._docs.schema.names)
        missing = {"source_topic": "''", "source_partition": "CAST(-1 AS INT)",
                   "source_offset": "CAST(-1 AS BIGINT)", "source_incarnation": "''"}
        add = {k: v for k, v in missing.items() if k not in have}
        if add:
            self._guard("migrate document table", self._docs.add_columns, add)

    # -- helpers ----------------------------------------------------------------------
    def _guard(self, what: str, fn, *args):
        """Run a LanceDB call; I/O failures (disk full, unwritable, vanished dir) are transient."""
        try:
            return fn(*args)
        except (OSError, RuntimeError) as exc:
            raise TransientStoreError(f"LanceDB {what} failed at {self.path}: {exc}") from exc
        except Exception as exc:  # lance raises plain exceptions for I/O errors too
            if "IO" in type(exc).__name__ or "io" in str(exc).lower()[:200]:
                raise TransientStoreError(f"LanceDB {what} failed at {self.path}: {exc}") from exc
            raise

    @staticmethod
    def _in(column: str, values: Sequence[str]) -> str:
        return f"{column} IN ({', '.join(_q(v) for v in values)})"

    # -- reads --------------------------------------------------------------------------
    def get_states(self, doc_ids: Iterable[str]) -> dict[str, DocState]:
        ids = [d for d in dict.fromkeys(doc_ids) if doc_id_problem(d) is None]  # others cannot be stored
        out: dict[str, DocState] = {}
        for i in range(0, len(ids), 1000):
            part = ids[i:i + 1000]
            tbl = self._guard("read states", lambda: self._docs.search().where(self._in("doc_id", part))
                              .limit(None).to_arrow())
            for row in tbl.to_pylist():
                out[row["doc_id"]] = DocState(**row)
        return out

    def fetch_vectors(self, chunk_ids: Iterable[str],
                      content_hashes: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
        ids = list(dict.fromkeys(chunk_ids))
        out: dict[str, np.ndarray] = {}
        for i in range(0, len(ids), 1000):
            part = ids[i:i + 1000]
            tbl = self._guard("read vectors", lambda: self._chunks.search().where(self._in("id", part))
                              .select(["id", "content_hash", "vector"]).limit(None).to_arrow())
            if tbl.num_rows:
                vecs = np.asarray(tbl.column("vector").combine_chunks().flatten(), dtype=np.float32).reshape(-1, self.dim)
                for cid, h, v in zip(tbl.column("id").to_pylist(), tbl.column("content_hash").to_pylist(), vecs):
                    if content_hashes is None or content_hashes.get(cid) == h:
                        out[cid] = v
        return out

    def search(self, vector: np.ndarray, k: int = 5) -> list[SearchHit]:
        v = np.asarray(vector, dtype=np.float32)
        rows = self._guard("search", lambda: self._chunks.search(v).distance_type("cosine")
                           .select(["doc_id", "chunk_index", "text", "version", "metadata_json", "_distance"])
                           .limit(k).to_list())
        return [SearchHit(doc_id=r["doc_id"], chunk_index=r["chunk_index"], score=1.0 - float(r["_distance"]),
                          text=r["text"], version=r["version"], metadata=json.loads(r["metadata_json"] or "{}"))
                for r in rows]

    def count(self) -> int:
        return self._guard("count", self._chunks.count_rows)

    def count_documents(self, include_deleted: bool = False) -> int:
        if include_deleted:
            return self._guard("count", self._docs.count_rows)
        return self._guard("count", self._docs.count_rows, "deleted = false")

    #: the columns of chunk_rows / all_chunk_rows (every chunk column but the vector)
    _ROW_COLUMNS = ["id", "doc_id", "chunk_index", "chunk_count", "version", "content_hash", "fingerprint",
                    "event_time_ms", "indexed_time_ms", "text", "metadata_json"]

    def chunk_rows(self, doc_id: str) -> list[dict]:
        """All chunk rows of one document (without vectors), ordered by chunk_index. For checks and tests."""
        tbl = self._chunks.search().where(f"doc_id = {_q(doc_id)}").select(self._ROW_COLUMNS).limit(None).to_arrow()
        return sorted(tbl.to_pylist(), key=lambda r: r["chunk_index"])

    def all_chunk_rows(self) -> list[dict]:
        """Every chunk row of the collection (without vectors) in one scan, in no particular order,
        duplicates included (a row id stored twice comes back twice). For checks (the crash harness)."""
        return self._guard("read every chunk", lambda: self._chunks.search().select(self._ROW_COLUMNS)
                           .limit(None).to_arrow().to_pylist())

    # -- writes -------------------------------------------------------------------------
    #: merge condition of every chunk and state write: never replace a row by an older version
    _NOT_OLDER = "target.version <= source.version"

    def upsert_chunks(self, chunks: Sequence[ChunkRecord]) -> None:
        self.write_chunks(chunks, [])

    def _stale_docs(self, chunks: Sequence[ChunkRecord]) -> dict[str, str]:
        """Documents of ``chunks`` the store holds in a newer version (state or chunks), with why.

        One read of the states and one of the chunk rows at the ids written. With one writer per
        table (LanceDB's rule) nothing can change between this read and the write; the merge
        condition also refuses replacing a newer chunk row, and a shortfall in its counts is
        reported as stale too."""
        incoming: dict[str, int] = {}
        for c in chunks:
            incoming[c.doc_id] = min(c.version, incoming.get(c.doc_id, c.version))
        stored = {d: st.version for d, st in self.get_states(list(incoming)).items()}
        ids = [chunk_uuid(c.doc_id, c.chunk_index) for c in chunks]
        for i in range(0, len(ids), 1000):
            part = ids[i:i + 1000]
            tbl = self._guard("read chunk versions", lambda: self._chunks.search().where(self._in("id", part))
                              .select(["doc_id", "version"]).limit(None).to_arrow())
            for d, v in zip(tbl.column("doc_id").to_pylist(), tbl.column("version").to_pylist()):
                stored[d] = max(v, stored.get(d, v))
        return {d: f"stored version {stored[d]} is newer than {v}" for d, v in incoming.items()
                if stored.get(d, v) > v}

    def _chunk_table(self, chunks: Sequence[ChunkRecord]) -> pa.Table:
        self._check_chunks(chunks)
        vecs = np.stack([c.vector for c in chunks]).astype(np.float32, copy=False)
        return self._arrow_chunks(chunks, vecs)

    def _check_chunks(self, chunks: Sequence[ChunkRecord]) -> None:
        for c in chunks:
            if c.fingerprint != self.fingerprint:
                raise FingerprintMismatch(f"chunk of {c.doc_id!r} has fingerprint {c.fingerprint!r}; "
                                          f"this collection holds {self.fingerprint!r}")
            if c.vector.shape != (self.dim,):
                raise FingerprintMismatch(f"chunk of {c.doc_id!r} has dim {c.vector.shape}, expected {self.dim}")

    def _arrow_chunks(self, chunks: Sequence[ChunkRecord], vecs: np.ndarray) -> pa.Table:
        return pa.table({
            "id": [chunk_uuid(c.doc_id, c.chunk_index) for c in chunks],
            "doc_id": [c.doc_id for c in chunks],
            "chunk_index": pa.array([c.chunk_index for c in chunks], pa.int32()),
            "chunk_count": pa.array([c.chunk_count for c in chunks], pa.int32()),
            "version": pa.array([c.version for c in chunks], pa.int64()),
            "content_hash": [c.content_hash for c in chunks],
            "fingerprint": [c.fingerprint for c in chunks],
            "event_time_ms": pa.array([c.event_time_ms for c in chunks], pa.int64()),
            "indexed_time_ms": pa.array([c.indexed_time_ms for c in chunks], pa.int64()),
            "text": [c.text for c in chunks],
            "metadata_json": [json.dumps(dict(c.metadata), sort_keys=True) for c in chunks],
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), self.dim),
        }, schema=self._chunks_schema)

    def write_chunks(self, chunks: Sequence[ChunkRecord], deletes: Sequence[tuple]) -> None:
        """Upsert ``chunks`` and delete, per ``(doc_id, from_index[, max_version])``, the document's
        chunks from that index on that are not in ``chunks`` - in one table version (one commit
        instead of two). Documents held in a newer version are neither written nor deleted from
        (:class:`StaleWrite` after the rest is done)."""
        self._check_chunks(chunks)
        check_doc_ids([c.doc_id for c in chunks] + [d[0] for d in deletes])
        stale = self._stale_docs(chunks) if chunks else {}
        if stale:
            chunks = [c for c in chunks if c.doc_id not in stale]
            deletes = [d for d in deletes if d[0] not in stale]
        if chunks:
            table = self._chunk_table(chunks)
            merge = self._chunks.merge_insert("id").when_matched_update_all(where=self._NOT_OLDER) \
                .when_not_matched_insert_all()
            combined = bool(deletes) and len(deletes) <= 500
            if combined:
                merge = merge.when_not_matched_by_source_delete(self._delete_predicate(deletes))
            res = self._guard("upsert", merge.execute, table)
            if not combined:
                self.delete_chunks_many(deletes)
            if res is not None and res.num_updated_rows + res.num_inserted_rows < table.num_rows:
                # a newer row appeared after the check (another writer, against LanceDB's rule)
                stale.update(self._stale_docs(chunks))
        else:
            self.delete_chunks_many(deletes)
        if stale:
            raise StaleWrite(f"{len(stale)} document(s) not written: the store holds a newer version "
                             f"(e.g. {next(iter(stale.items()))})", object_errors=stale)

    @staticmethod
    def _delete_predicate(items: Sequence[tuple]) -> str:
        def one(item: tuple) -> str:
            pred = f"doc_id = {_q(item[0])} AND chunk_index >= {int(item[1])}"
            if len(item) > 2 and item[2] is not None:
                pred += f" AND version <= {int(item[2])}"  # never delete newer chunks
            return f"({pred})"
        return " OR ".join(one(i) for i in items)

    def delete_chunks(self, doc_id: str, from_index: int = 0, max_version: int | None = None) -> int:
        return self.delete_chunks_many([(doc_id, from_index, max_version)])

    def delete_chunks_many(self, items: Sequence[tuple]) -> int:
        """Delete chunks of several documents in one table version; items are
        ``(doc_id, from_index[, max_version])``."""
        check_doc_ids([d[0] for d in items])
        total = 0
        for i in range(0, len(items), 500):
            part = items[i:i + 500]
            pred = self._delete_predicate(part)
            res = self._guard("delete", self._chunks.delete, pred)
            total += int(getattr(res, "num_deleted_rows", 0) or 0)
        return total

    def put_states(self, states: Sequence[DocState]) -> None:
        if not states:
            return
        for s in states:
            if s.fingerprint != self.fingerprint:
                raise FingerprintMismatch(f"state of {s.doc_id!r} has fingerprint {s.fingerprint!r}")
        check_doc_ids([s.doc_id for s in states])
        stored = {d: st.version for d, st in self.get_states([s.doc_id for s in states]).items()}
        stale = {s.doc_id: f"stored version {stored[s.doc_id]} is newer than {s.version}"
                 for s in states if stored.get(s.doc_id, s.version) > s.version}
        states = [s for s in states if s.doc_id not in stale]
        if states:
            table = pa.Table.from_pylist([s.__dict__ for s in states], schema=self._docs_schema)
            res = self._guard("write states", lambda: self._docs.merge_insert("doc_id")
                              .when_matched_update_all(where=self._NOT_OLDER)
                              .when_not_matched_insert_all().execute(table))
            if res is not None and res.num_updated_rows + res.num_inserted_rows < table.num_rows:
                now = self.get_states([s.doc_id for s in states])
                stale.update({s.doc_id: f"stored version {now[s.doc_id].version} is newer than {s.version}"
                              for s in states if s.doc_id in now and now[s.doc_id].version > s.version})
        if stale:
            raise StaleWrite(f"{len(stale)} state(s) not written: the store holds a newer version "
                             f"(e.g. {next(iter(stale.items()))})", object_errors=stale)

    #: optimize() removes table versions older than this. LanceDB's default keeps 7 days, and a
    #: worker commits several versions per second (each a manifest plus small data/deletion
    #: files): millions of files a day. Nothing here reads old versions (no time travel); a
    #: reader that is mid-query on a version this old would fail and retry on the latest.
    KEEP_VERSIONS = timedelta(minutes=1)

    def optimize(self, keep_versions: timedelta | None = None) -> None:
        """Compact small fragments left by many small writes and drop old versions (run periodically)."""
        keep = self.KEEP_VERSIONS if keep_versions is None else keep_versions
        for t in (self._chunks, self._docs):
            self._guard("optimize", lambda: t.optimize(cleanup_older_than=keep))

    def close(self) -> None:
        self._chunks = self._docs = None  # type: ignore[assignment]
        self._db = None

    def __repr__(self) -> str:
        return f"LanceDBStore(path={os.fspath(self.path)!r}, collection={self.collection!r})"
