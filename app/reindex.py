"""Blue/green reindex: build a new collection (new model variant, or new chunking) by
replaying the changes topic, while the live worker keeps serving the old one; then swap
the alias readers query, and roll back if needed.

Sides and names. The *alias* is the collection prefix (``EMBEDSTREAM_COLLECTION_PREFIX``,
default ``embedstream``; on Weaviate its class-name form ``Embedstream``). A collection
is named from a prefix and a model fingerprint, so a new model variant gets a new
collection under the same prefix. A chunking change keeps the fingerprint, so the new
collection gets its own prefix (``<alias>_c<tokens>o<overlap>`` unless ``target_prefix``).

Phases (persisted in ``<data_dir>/reindex/<alias>.json``, rewritten atomically; run the
reindex commands from one place, with the same data dir, also for Weaviate)::

    backfilling --(backfill + catch-up done)--> ready --swap--> swapped --finish--> finished
         \\______________________________ rollback ____________________________/--> rolled-back

* ``start``: replay from the beginning of the changes topic to its current end into the
  new collection (the live group's offsets are not touched), then catch-up passes to the
  moving end until a pass applies little. Interrupt with Ctrl-C and run ``start`` again to
  continue from the replay checkpoint.
* ``swap``: one more catch-up pass, then checks (document counts of both sides match within
  the live lag; sample queries answer from the new collection), then the alias is repointed
  atomically (Weaviate alias update; LanceDB ``aliases.json`` rewritten with
  ``os.replace``). Old workers keep writing the old collection (their fingerprint's).
* ``finish``: after the old workers were stopped (the live group is empty): a final
  catch-up to the end, which is at or past the group's committed offsets, now frozen. Then
  workers are started with the new variant; they resume from the committed offsets and
  write the new collection: nothing between is missed, what is applied twice is absorbed.
* ``rollback``: before ``finish``, repoints the alias at the old collection (which old
  workers kept current). After ``finish`` (new workers stopped first), it first replays
  into the old collection everything from the offsets the old workers had committed when
  they were stopped, then repoints; restart workers with the old variant.

Why the new collection ends in the same state as an index built from scratch: the replay
applies every event of every partition in offset order through the same Processor, and
every document lives in one partition (records are keyed by doc_id). A change or delete
made during the backfill is a later record of the same partition: the backfill reaches it
(it is before the end snapshot) or a catch-up pass does; per-document versions make the
result independent of batch boundaries, and replaying a record twice is a no-op
(duplicate/stale). Tombstones delete whatever is stored, so they too end the same way.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from app.config import ConfigError, Settings
from app.offsets import committed_offsets, group_activity, high_watermarks, topic_partitions
from app.replay import ProgressDisplay, Replayer, ReplayRange, write_json_atomic

log = logging.getLogger(__name__)
STATE_FORMAT = "embedstream.reindex/1"


class ReindexError(RuntimeError):
    """A reindex step cannot run (wrong phase, failed checks, missing alias ...)."""


# ----------------------------------------------------------------------------------------
# model variants <-> fingerprints, without loading a model
def variant_fingerprint(variant: str) -> str:
    """The fingerprint an :class:`~app.encoder.Encoder` of ``variant`` has (from the manifest).

    >>> variant_fingerprint("int8").split(":")[:2]
    ['all-MiniLM-L6-v2', 'int8']
    """
    import hashlib

    from app.encoder import MODEL_DIR, Fingerprint

    manifest = json.loads((MODEL_DIR / "manifest.json").read_text())
    if variant not in manifest["variants"]:
        raise ConfigError(f"unknown model variant {variant!r}; have {sorted(manifest['variants'])}")
    onnx = manifest["variants"][variant]["file"]
    art = hashlib.sha256((manifest["files"][onnx]["sha256"] +
                          manifest["files"]["tokenizer.json"]["sha256"]).encode()).hexdigest()
    return str(Fingerprint(model=manifest["model"], variant=variant, artefact_sha256=art,
                           max_length=int(manifest["max_length"]), pooling="mean-l2", dim=int(manifest["dim"])))


def known_fingerprints() -> dict[str, str]:
    """variant -> fingerprint for every variant in the model manifest."""
    from app.encoder import MODEL_DIR

    manifest = json.loads((MODEL_DIR / "manifest.json").read_text())
    return {v: variant_fingerprint(v) for v in sorted(manifest["variants"])}


def variant_of(fingerprint: str) -> str:
    """The model variant of a fingerprint of this model's artefacts (ReindexError otherwise)."""
    for v, fp in known_fingerprints().items():
        if fp == fingerprint:
            return v
    raise ReindexError(f"fingerprint {fingerprint!r} is not one of this installation's model variants "
                       f"({', '.join(known_fingerprints())}): were the model artefacts rebuilt?")


def default_variant(settings: Settings) -> str:
    if settings.model_variant:
        return settings.model_variant
    from app.encoder import cuda_usable

    use_cuda = settings.device == "cuda" or (settings.device == "auto" and cuda_usable())
    return "fp32" if use_cuda else "int8"


# ----------------------------------------------------------------------------------------
# the alias, both stores
def lancedb_dir(settings: Settings) -> Path:
    return Path(settings.data_dir) / "lancedb"


def _collection(settings: Settings, prefix: str, fingerprint: str) -> str:
    if settings.store == "lancedb":
        from app.store.lancedb import collection_name

        return collection_name(prefix, fingerprint)
    from app.store.weaviate import collection_names

    return collection_names(fingerprint, prefix)[1]


def _alias_name(settings: Settings) -> str:
    if settings.store == "weaviate":
        from app.store.weaviate import sanitise_class_name

        return sanitise_class_name(settings.collection_prefix)
    return settings.collection_prefix


def _weaviate_client(settings: Settings):
    from urllib.parse import urlsplit

    import weaviate
    from weaviate.classes.init import AdditionalConfig, Auth, Timeout

    parts = urlsplit(settings.weaviate_url)
    secure = parts.scheme == "https"
    t = settings.weaviate_timeout_s
    return weaviate.connect_to_custom(
        http_host=parts.hostname, http_port=parts.port or (443 if secure else 80), http_secure=secure,
        grpc_host=parts.hostname, grpc_port=settings.weaviate_grpc_port, grpc_secure=secure,
        auth_credentials=Auth.api_key(settings.weaviate_api_key) if settings.weaviate_api_key else None,
        additional_config=AdditionalConfig(timeout=Timeout(init=t, query=t, insert=t)), skip_init_checks=True)


def _weaviate_side(collection: str) -> dict:
    """Prefix and fingerprint of a Weaviate collection named ``<Prefix>_<sha256(fp)[:12]>``."""
    from app.store.weaviate import collection_names

    prefix = collection.rsplit("_", 1)[0]
    for v, fp in known_fingerprints().items():
        if collection_names(fp, prefix)[1] == collection:
            return {"collection": collection, "prefix": prefix, "fingerprint": fp}
    raise ReindexError(f"the alias points at {collection}, which is not the collection of any model variant "
                       f"of this installation ({', '.join(known_fingerprints())})")


def alias_record(settings: Settings) -> dict | None:
    """Where the alias points: ``{"collection", "prefix", "fingerprint"}`` (None: no alias)."""
    if settings.store == "lancedb":
        from app.store.lancedb import read_alias

        rec = read_alias(lancedb_dir(settings), settings.collection_prefix)
        return None if rec is None else {k: rec[k] for k in ("collection", "prefix", "fingerprint")}
    from weaviate.exceptions import WeaviateUnsupportedFeatureError

    client = _weaviate_client(settings)
    try:
        found = client.alias.get(alias_name=_alias_name(settings))
    except WeaviateUnsupportedFeatureError:
        return None  # Weaviate < 1.32: no aliases; readers use the settings' own collection
    finally:
        client.close()
    return None if found is None else _weaviate_side(found.collection)


def point_alias(settings: Settings, side: dict) -> None:
    """Repoint the alias at ``side`` (atomically); the collection must exist."""
    if settings.store == "lancedb":
        from app.store.lancedb import set_alias

        _open_side(settings, side, create=False).close()  # exists, and holds this fingerprint
        set_alias(lancedb_dir(settings), settings.collection_prefix, side["collection"], side["fingerprint"],
                  side["prefix"])
        return
    client = _weaviate_client(settings)
    try:
        name = _alias_name(settings)
        if not client.collections.exists(side["collection"]):
            raise ReindexError(f"collection {side['collection']} does not exist")
        if client.alias.get(alias_name=name) is None:
            client.alias.create(alias_name=name, target_collection=side["collection"])
        elif not client.alias.update(alias_name=name, new_target_collection=side["collection"]):
            raise ReindexError(f"could not repoint alias {name} to {side['collection']}")
    finally:
        client.close()
    log.info("alias %s -> %s", _alias_name(settings), side["collection"])


def _open_side(settings: Settings, side: dict, create: bool = True, dim: int = 384):
    """The store of one side, without touching the alias."""
    if settings.store == "lancedb":
        from app.store.lancedb import LanceDBStore

        return LanceDBStore(lancedb_dir(settings), side["fingerprint"], dim, collection_prefix=side["prefix"],
                            create=create, use_alias=False)
    from app.store.weaviate import WeaviateStore

    return WeaviateStore(url=settings.weaviate_url, grpc_port=settings.weaviate_grpc_port,
                         api_key=settings.weaviate_api_key or None, timeout_s=settings.weaviate_timeout_s,
                         fingerprint=side["fingerprint"], dim=dim, collection_prefix=side["prefix"],
                         use_alias=False)


def _drop_side(settings: Settings, side: dict) -> None:
    if settings.store == "lancedb":
        import lancedb

        db = lancedb.connect(str(lancedb_dir(settings)))
        for t in (f"{side['collection']}__chunks", f"{side['collection']}__docs"):
            try:
                db.drop_table(t)
            except Exception:  # noqa: BLE001 - not there
                pass
        return
    store = _open_side(settings, side)
    try:
        store.drop_collections()
    finally:
        store.close()


#: reindex phases during which the old side's workers keep running (and may restart)
OLD_WORKERS_PHASES = ("backfilling", "ready", "swapped")


def check_worker_alias(settings: Settings, fingerprint: str) -> str:
    """Refuse a worker whose vectors would not be the ones readers query.

    Readers query the collection the alias points at. A worker of another model fingerprint
    (e.g. the GPU fp32 worker started beside, or instead of, the CPU int8 one) would keep the
    group's offsets moving while writing a collection nobody searches: searches through the alias
    miss everything it indexed. So a worker refuses to start when the alias points at another
    fingerprint's collection, unless it is an old-side worker of a reindex that is under way (the
    reindex state in this data dir says so, or ``EMBEDSTREAM_ALLOW_ALIAS_MISMATCH`` is set on the
    old workers while a reindex done from another machine is between ``swap`` and ``finish``).
    Raises :class:`ReindexError` with what to do; returns a note for the log otherwise.
    """
    rec = alias_record(settings)
    if rec is None:
        return "no alias yet"
    if rec["fingerprint"] == fingerprint:
        return f"alias {_alias_name(settings)} -> {rec['collection']} (this worker's model)"
    path = state_path(settings)
    st = json.loads(path.read_text()) if path.exists() else None
    if st is not None and st.get("phase") in OLD_WORKERS_PHASES and st["old"]["fingerprint"] == fingerprint:
        return (f"alias {_alias_name(settings)} -> {rec['collection']} ({rec['fingerprint']}): a reindex is "
                f"{st['phase']} and this worker serves its old side")
    if settings.allow_alias_mismatch:
        return (f"alias {_alias_name(settings)} -> {rec['collection']} ({rec['fingerprint']}): another model; "
                "consuming anyway (EMBEDSTREAM_ALLOW_ALIAS_MISMATCH)")
    raise ReindexError(
        f"alias {_alias_name(settings)} points at {rec['collection']}, the collection of model "
        f"{rec['fingerprint']}, but this worker embeds with {fingerprint}: its writes would go to a collection "
        "that searches do not read, while it commits the group's offsets. Run the worker with the alias's "
        f"model variant (EMBEDSTREAM_MODEL_VARIANT={_variant_or_unknown(rec['fingerprint'])}), or move the alias "
        "to this model with `embedstream reindex start --model ...`, then `swap` and `finish`.")


def _variant_or_unknown(fingerprint: str) -> str:
    try:
        return variant_of(fingerprint)
    except ReindexError:
        return "?"


def resolve_search_target(settings: Settings, encoders: dict | None = None):
    """``(encoder, store)`` for queries: the collection the alias points at, and an encoder
    of that collection's model variant (the alias record carries the fingerprint). Without
    an alias, the settings' own model and collection (as before aliases existed)."""
    from app.components import build_encoder, open_store

    rec = alias_record(settings)
    if rec is None:
        enc = (encoders or {}).get(settings.model_variant) or build_encoder(settings)
        return enc, open_store(settings, enc.fingerprint, enc.dim, create=False)
    variant = variant_of(rec["fingerprint"])
    enc = (encoders or {}).get(variant) or build_encoder(settings.replace(model_variant=variant))
    if enc.fingerprint != rec["fingerprint"]:
        raise ReindexError(f"alias {settings.collection_prefix} points at vectors of {rec['fingerprint']!r}; the "
                           f"local model gives {enc.fingerprint!r}")
    return enc, _open_side(settings, rec, create=False, dim=enc.dim)


# ----------------------------------------------------------------------------------------
def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def state_path(settings: Settings) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in settings.collection_prefix)
    return Path(settings.data_dir) / "reindex" / f"{safe}.json"


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str


class Reindex:
    """The reindex of the alias ``settings.collection_prefix``. See the module doc.

    ``encoders``: already loaded encoders by variant (tests; otherwise loaded on demand).
    """

    def __init__(self, settings: Settings, encoders: dict | None = None, progress: ProgressDisplay | None = None,
                 echo: Callable[[str], None] = lambda m: log.info("%s", m)):
        self.settings = settings
        self.path = state_path(settings)
        self.encoders = dict(encoders or {})
        self.progress = progress
        self.echo = echo
        self.state: dict | None = json.loads(self.path.read_text()) if self.path.exists() else None
        self._replayer: Replayer | None = None
        self._stop_requested = False

    # -- helpers -------------------------------------------------------------------------------
    def _save(self) -> None:
        assert self.state is not None
        self.state["updated"] = _now_iso()
        write_json_atomic(self.path, self.state)

    def _event(self, event: str, **kw) -> None:
        self.state.setdefault("history", []).append({"time": _now_iso(), "event": event, **kw})

    def _need(self, *phases: str) -> dict:
        if self.state is None:
            raise ReindexError(f"no reindex of alias {self.settings.collection_prefix!r} in {self.path}: "
                               "run `embedstream reindex start` first")
        if phases and self.state["phase"] not in phases:
            raise ReindexError(f"the reindex is {self.state['phase']!r}; this step needs {' or '.join(phases)}")
        return self.state

    def encoder(self, variant: str):
        if variant not in self.encoders:
            from app.components import build_encoder

            self.encoders[variant] = build_encoder(self.settings.replace(model_variant=variant))
        return self.encoders[variant]

    def side_settings(self, side: dict) -> Settings:
        return self.settings.replace(model_variant=side["variant"], chunk_tokens=side["chunk_tokens"],
                                     chunk_overlap=side["chunk_overlap"], collection_prefix=side["prefix"])

    def processor(self, side: dict):
        from app.components import build_processor

        enc = self.encoder(side["variant"])
        if enc.fingerprint != side["fingerprint"]:
            raise ReindexError(f"model variant {side['variant']} now gives {enc.fingerprint}, the reindex was "
                               f"started for {side['fingerprint']}")
        store = _open_side(self.settings, side, create=True, dim=enc.dim)
        return build_processor(self.side_settings(side), enc, store)

    def request_stop(self) -> None:
        """Stop after the batch in flight (Ctrl-C); ``start``/``catchup`` continue later."""
        self._stop_requested = True
        if self._replayer is not None:
            self._replayer.request_stop()

    # -- replay passes -------------------------------------------------------------------------
    def _advance(self, side_key: str, processor, kind: str, from_offsets: dict[int, int] | None = None,
                 **replay_kw) -> dict:
        """One replay pass into a side: resume its unfinished checkpoint, or from its position
        (the beginning when it has none) to the current end. Returns the pass record."""
        st = self.state
        side = st[side_key]
        ckpt = Path(side["checkpoint"]) if side.get("checkpoint") else None
        common = dict(processor=processor, progress=self.progress, dlq=st.get("dlq", False),
                      worker_id=f"{self.settings.app_id}.reindex", **replay_kw)
        if ckpt is not None and ckpt.exists() and not json.loads(ckpt.read_text()).get("complete"):
            self.echo(f"continuing {kind} from checkpoint {ckpt}")
            r = Replayer.resume(self.settings, ckpt, **common)
        else:
            start = from_offsets if from_offsets is not None else (
                {int(p): o for p, o in side["position"].items()} if side.get("position") else None)
            n = len(st.get("passes", [])) + 1
            ckpt = self.path.with_name(f"{self.path.stem}.{side_key}.pass{n}.json")
            r = Replayer.start(self.settings, ReplayRange(from_offsets=start), name=f"reindex-{side_key}-{n}",
                               checkpoint=ckpt, **common)
            side["checkpoint"] = str(ckpt)
            self._save()
        self._replayer = r
        if self._stop_requested:
            r.request_stop()
        try:
            report = r.run()
        finally:
            self._replayer = None
        rec = {"kind": kind, "side": side_key, "records": report.records, "dead_letters": report.dead_letters,
               "complete": report.complete, "finished": _now_iso(),
               "ends": {str(p): d["next"] for p, d in report.partitions.items()}}
        if report.complete:  # a checkpoint's counts are cumulative over its runs: add them once
            side["position"] = rec["ends"]
            side["checkpoint"] = None
            totals = side.setdefault("totals", {})
            for k, v in report.counts.items():
                totals[k] = totals.get(k, 0) + v
            st.setdefault("passes", []).append(rec)
        self._save()
        left = "" if report.complete else f", stopped (checkpoint {ckpt})"
        self.echo(f"{kind} into {side['collection']}: {report.records} records, {report.dead_letters} dead letters, "
                  f"{report.filtered} skipped in {report.elapsed_s:.1f}s{left}")
        return rec

    # -- start ---------------------------------------------------------------------------------
    def start(self, variant: str | None = None, chunk_tokens: int | None = None, chunk_overlap: int | None = None,
              target_prefix: str | None = None, fresh: bool = False, dlq: bool = False, max_passes: int = 4,
              settle_records: int | None = None, **replay_kw) -> dict:
        """Create the new collection and backfill + catch up (or continue an interrupted start)."""
        s = self.settings
        if self.state is not None and self.state["phase"] == "backfilling":
            want = self.state["new"]
            if (variant and variant != want["variant"]) or (chunk_tokens and chunk_tokens != want["chunk_tokens"]) \
                    or (chunk_overlap is not None and chunk_overlap != want["chunk_overlap"]):
                raise ReindexError(f"a reindex to {want['collection']} ({want['variant']}) is in progress: continue "
                                   "it with `reindex start` without other options, or `reindex rollback` it")
            self.echo(f"continuing the reindex to {want['collection']}")
        else:
            if self.state is not None and self.state["phase"] in ("ready", "swapped"):
                raise ReindexError(f"a reindex is {self.state['phase']}: swap/finish or rollback it first")
            self._create(variant, chunk_tokens, chunk_overlap, target_prefix, fresh, dlq)
        st = self.state
        proc = self.processor(st["new"])
        try:
            if st["new"].get("position") is None:
                self._advance("new", proc, "backfill", **replay_kw)
                if st["new"].get("position") is None:
                    return self.status(counts=False)  # interrupted: `reindex start` continues
            settle = settle_records if settle_records is not None else max(s.batch_max_events, 1)
            for _ in range(max_passes):
                if self._stop_requested:
                    break
                rec = self._advance("new", proc, "catch-up", **replay_kw)
                if not rec["complete"] or rec["records"] <= settle:
                    break
            if st["new"].get("checkpoint") is None and not self._stop_requested:
                st["phase"] = "ready"
                self._event("ready", position=st["new"]["position"])
                self._save()
        finally:
            proc.store.close()
        return self.status(counts=False)

    def _create(self, variant, chunk_tokens, chunk_overlap, target_prefix, fresh, dlq) -> None:
        s = self.settings
        cur = alias_record(s)
        if cur is None:
            raise ReindexError(f"alias {_alias_name(s)!r} does not exist yet in the {s.store} store: the live worker "
                               "creates it when it starts (Weaviate needs >= 1.32 for aliases)")
        old_variant = variant_of(cur["fingerprint"])
        old = {**cur, "variant": old_variant, "chunk_tokens": s.chunk_tokens, "chunk_overlap": s.chunk_overlap}
        prev = self.state
        if prev is not None and prev.get("phase") in ("finished",) and prev["new"]["collection"] == cur["collection"]:
            old["chunk_tokens"], old["chunk_overlap"] = prev["new"]["chunk_tokens"], prev["new"]["chunk_overlap"]
        new_variant = variant or old_variant
        tokens = chunk_tokens or s.chunk_tokens
        overlap = chunk_overlap if chunk_overlap is not None else s.chunk_overlap
        s.replace(chunk_tokens=tokens, chunk_overlap=overlap)  # validates
        fp = variant_fingerprint(new_variant)
        if target_prefix:
            prefix = target_prefix
        elif fp == cur["fingerprint"] and (tokens, overlap) == (old["chunk_tokens"], old["chunk_overlap"]):
            raise ReindexError(f"the new collection would be the live one ({cur['collection']}): change the model "
                               "variant (--model), the chunking (--chunk-tokens/--chunk-overlap) or give "
                               "--target-prefix to rebuild into a fresh collection")
        elif fp == cur["fingerprint"]:
            prefix = f"{s.collection_prefix}_c{tokens}o{overlap}"
        else:  # the prefix of the live collection: workers of the new variant then write exactly there
            prefix = cur["prefix"]
        collection = _collection(s, prefix, fp)
        if collection == cur["collection"]:
            raise ReindexError(f"the new collection would be the live one ({collection}): change the model "
                               "variant, the chunking (--chunk-tokens/--chunk-overlap) or --target-prefix")
        new = {"collection": collection, "prefix": prefix if s.store == "lancedb" else collection.rsplit("_", 1)[0],
               "fingerprint": fp, "variant": new_variant, "chunk_tokens": tokens, "chunk_overlap": overlap,
               "position": None, "checkpoint": None}
        if fresh:
            self.echo(f"dropping {collection} first (--fresh)")
            _drop_side(s, new)
        if prev is not None:  # keep the previous reindex's record next to the new one
            archive = self.path.with_name(f"{self.path.stem}.{int(time.time())}.done.json")
            shutil.copyfile(self.path, archive)
        self.state = {"format": STATE_FORMAT, "alias": _alias_name(s), "store": s.store,
                      "changes_topic": s.changes_topic, "live_group": s.app_id, "phase": "backfilling",
                      "old": old, "new": new, "dlq": dlq, "passes": [], "history": [], "started": _now_iso()}
        self._event("started", old=old["collection"], new=collection)
        self._save()
        self.echo(f"reindex {old['collection']} ({old_variant}) -> {collection} ({new_variant}, chunks "
                  f"{tokens}/{overlap}); state {self.path}")

    def catch_up(self, **replay_kw) -> dict:
        """One more pass into the new collection, to the current end. Not after ``finish``: the
        new workers write that collection then (LanceDB allows one writer per table)."""
        st = self._need("ready", "swapped")
        proc = self.processor(st["new"])
        try:
            return self._advance("new", proc, "catch-up", **replay_kw)
        finally:
            proc.store.close()

    # -- status --------------------------------------------------------------------------------
    def status(self, counts: bool = True) -> dict:
        st = self._need()
        s = self.settings
        out: dict[str, Any] = {"phase": st["phase"], "alias": st["alias"], "state_file": str(self.path),
                               "old": {k: st["old"][k] for k in ("collection", "variant", "fingerprint")},
                               "new": {k: st["new"][k] for k in ("collection", "variant", "fingerprint",
                                                                   "chunk_tokens", "chunk_overlap")}}
        try:
            out["alias_target"] = (alias_record(s) or {}).get("collection")
        except Exception as exc:  # noqa: BLE001 - status must still answer
            out["alias_target"] = f"? ({exc})"
        parts = topic_partitions(s, st["changes_topic"])
        marks = high_watermarks(s, st["changes_topic"], parts)
        live = committed_offsets(s, st["live_group"], st["changes_topic"], parts)
        pos = st["new"].get("position") or {}
        ckpt = st["new"].get("checkpoint")
        if ckpt and Path(ckpt).exists():
            cp = json.loads(Path(ckpt).read_text())
            pos = {p: d["next"] for p, d in cp["partitions"].items()}
            out["running_pass"] = {"checkpoint": ckpt, "records": sum(d["records"] for d in cp["partitions"].values()),
                                   "remaining": sum(max((d["end"] or 0) - d["next"], 0)
                                                    for d in cp["partitions"].values())}
        rows = {}
        for p in parts:
            hw = marks[p].high
            np_ = int(pos.get(str(p), pos.get(p, 0)) or 0)
            lc = live[p]
            rows[p] = {"high_watermark": hw, "new_position": np_, "new_lag": max(hw - np_, 0),
                       "live_committed": lc, "live_lag": None if lc is None else max(hw - lc, 0)}
        out["partitions"] = rows
        out["new_lag"] = sum(r["new_lag"] for r in rows.values())
        out["live_lag"] = sum(r["live_lag"] or 0 for r in rows.values())
        out["between"] = sum(abs(r["new_position"] - (r["live_committed"] or 0)) for r in rows.values())
        out["passes"] = st.get("passes", [])
        out["outcomes"] = st["new"].get("totals", {})
        if counts:
            for key in ("old", "new"):
                try:
                    store = _open_side(s, st[key], create=False)
                    try:
                        out[key]["documents"] = store.count_documents()
                        out[key]["chunks"] = store.count()
                    finally:
                        store.close()
                except Exception as exc:  # noqa: BLE001
                    out[key]["documents"] = out[key]["chunks"] = None
                    out[key]["error"] = str(exc)
        return out

    # -- swap ----------------------------------------------------------------------------------
    def checks(self, queries: list[str] | None = None, samples: int = 5, min_match: float = 0.8) -> list[CheckResult]:
        st = self._need()
        s = self.settings
        stat = self.status()
        results: list[CheckResult] = []
        old_docs, new_docs = stat["old"].get("documents"), stat["new"].get("documents")
        tol = stat["between"]
        if old_docs is None or new_docs is None:
            err = stat["old"].get("error") or stat["new"].get("error")
            results.append(CheckResult("documents", False, f"cannot count documents: {err}"))
        else:
            diff = abs(old_docs - new_docs)
            results.append(CheckResult("documents", diff <= tol,
                                       f"old {old_docs}, new {new_docs}: difference {diff}, allowed {tol} (records "
                                       "between the live group's committed offsets and the new collection's position)"))
        new_store = _open_side(s, st["new"], create=False)
        old_store = None
        try:
            enc = self.encoder(st["new"]["variant"])
            sample: list[tuple[str, str | None]] = [(q, None) for q in (queries or [])]
            if not sample:
                old_store = _open_side(s, st["old"], create=False)
                rng = np.random.default_rng(7)
                seen: set[str] = set()
                for _ in range(samples * 3):
                    v = rng.normal(size=old_store.dim).astype(np.float32)
                    for h in old_store.search(v / np.linalg.norm(v), k=samples):
                        if h.doc_id not in seen and h.text.strip():
                            seen.add(h.doc_id)
                            sample.append((h.text[:500], h.doc_id))
                    if len(sample) >= samples:
                        break
                sample = sample[:samples]
            if not sample:
                results.append(CheckResult("queries", new_docs == 0 if new_docs is not None else False,
                                           "no documents to sample queries from"))
            else:
                vecs = enc.encode([q for q, _ in sample])
                answered = matched = expected = 0
                for (q, doc), v in zip(sample, vecs):
                    hits = new_store.search(v, k=10)
                    answered += bool(hits)
                    if doc is not None:
                        expected += 1
                        matched += any(h.doc_id == doc for h in hits)
                ok = answered == len(sample) and (expected == 0 or matched >= min_match * expected)
                results.append(CheckResult("queries", ok, f"{answered}/{len(sample)} sample queries answered from "
                                                          f"{st['new']['collection']}; {matched}/{expected} found "
                                                          "the document they were taken from"))
        finally:
            new_store.close()
            if old_store is not None:
                old_store.close()
        return results

    def swap(self, force: bool = False, queries: list[str] | None = None, catch_up: bool = True,
             **replay_kw) -> list[CheckResult]:
        st = self._need("ready", "swapped", "backfilling" if force else "ready")
        if catch_up and st["phase"] != "backfilling":
            self.catch_up(**replay_kw)
        results = [] if force else self.checks(queries)
        failed = [r for r in results if not r.ok]
        if failed:
            raise ReindexError("checks failed, alias not switched (--force skips them):\n  "
                               + "\n  ".join(f"{r.name}: {r.detail}" for r in failed))
        point_alias(self.settings, st["new"])
        st["phase"] = "swapped"
        self._event("swapped", to=st["new"]["collection"], forced=force)
        self._save()
        return results

    # -- finish / rollback ---------------------------------------------------------------------
    def _require_idle_group(self, force: bool, doing: str) -> None:
        act = group_activity(self.settings, self.state["live_group"])
        if act.active is False:
            return
        msg = (f"the live group {act.group!r} is {'active' if act.active else 'possibly active'} ({act.note}): "
               f"stop the workers before {doing}")
        if not force:
            raise ReindexError(msg + " (or --force)")
        self.echo("WARNING: " + msg + "; going on (--force)")

    def finish(self, force: bool = False, **replay_kw) -> dict:
        """After the old workers stopped: final catch-up; then start workers with the new variant."""
        st = self._need("swapped")
        self._require_idle_group(force, "finishing")
        parts = topic_partitions(self.settings, st["changes_topic"])
        committed = committed_offsets(self.settings, st["live_group"], st["changes_topic"], parts)
        self.catch_up(**replay_kw)
        if st["new"].get("checkpoint"):
            raise ReindexError("the final catch-up was interrupted; run `reindex finish` again")
        pos = {int(p): o for p, o in (st["new"].get("position") or {}).items()}
        behind = {p: (pos.get(p, 0), c) for p, c in committed.items() if c is not None and pos.get(p, 0) < c}
        if behind:
            raise ReindexError(f"the new collection is behind the live group's committed offsets on {behind}; "
                               "run `reindex catchup` and finish again")
        st["finished_at"] = {"committed": {str(p): c for p, c in committed.items()}}
        st["phase"] = "finished"
        self._event("finished", committed=st["finished_at"]["committed"])
        self._save()
        return self.status(counts=False)

    def rollback(self, force: bool = False, **replay_kw) -> dict:
        st = self._need("backfilling", "ready", "swapped", "finished")
        phase = st["phase"]
        if phase == "finished":
            # new-variant workers wrote only the new collection since finish: bring the old one up to date
            self._require_idle_group(force, "rolling back")
            start = {int(p): (c or 0) for p, c in st["finished_at"]["committed"].items()}
            st["old"].setdefault("checkpoint", None)
            proc = self.processor(st["old"])
            try:
                self._advance("old", proc, "rollback catch-up", from_offsets=start, **replay_kw)
            finally:
                proc.store.close()
            if st["old"].get("checkpoint"):
                raise ReindexError("the rollback catch-up was interrupted; run `reindex rollback` again")
        if phase in ("swapped", "finished"):
            point_alias(self.settings, st["old"])
        st["phase"] = "rolled-back"
        self._event("rolled-back", from_phase=phase, to=st["old"]["collection"])
        self._save()
        return self.status(counts=False)
