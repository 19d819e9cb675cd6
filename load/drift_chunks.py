"""The drift monitor fed as the worker feeds it: documents chunked, every chunk encoded (DRIFT.md 3).

    python -m load.drift_chunks --part tune                 # Reuters of the tuning part
    python -m load.drift_chunks --part holdout              # Reuters and 20 Newsgroups, held out
    python -m load.drift_chunks --synthetic --docs 4000     # no corpus, no model (the test)
    python -m load.drift_chunks --part holdout --streams 0 --switch-runs 30 --footer --no-mix
                                                            # boilerplate appended: in the last chunk

``load.drift_eval`` embeds each document once (the encoder truncates it to its first 256 tokens).
The worker chunks a document (256 tokens, 32 overlapping; :class:`app.chunking.Chunker`) and
encodes every chunk. This script builds that *chunk pool* of each corpus of one part with the
worker's own chunker and int8 encoder (cached in ``<cache>/embeddings``), draws drift-free streams
of documents from it (``load.drift_eval.draw_index``: i.i.d., and ``--burst``: same-topic runs),
expands each document into its chunks, and feeds the :class:`~app.drift.DriftMonitor`
in batches of 64 documents in three ways:

* ``chunks/0``: one row per chunk (a document's chunks consecutive), the serial-independence test
  off (``serial_alpha=0``): what the worker did before;
* ``chunks/0.001``: one row per chunk, the monitor's default test (``DriftConfig()``);
* ``events/0.001``: one row per document, the mean of its chunks (:func:`app.alerts.event_vectors`),
  the default test: what the worker does now.

It prints, per corpus, stream kind and feeding: false FIRED alerts per 100k rows after the warm-up,
the alarms by signal, and how many warm-ups the serial-independence test flagged; then, for a switch
of the natural mix to its largest topic (``--switch-runs`` streams), the median delay in documents.
``--json`` writes the rows.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import hashlib
import json
import logging
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from app.alerts import event_vectors
from app.drift import DriftConfig, DriftMonitor
from load import drift_data, drift_split
from load.drift_eval import Source, draw_index

BATCH_DOCS = 64
#: (feeding, serial_alpha): the old worker, the monitor's default on chunks, the worker now
FEEDINGS = (("chunks", 0.0), ("chunks", 1e-3), ("events", 1e-3))
#: corpus -> pool name; a part's corpora (20 Newsgroups is held out whole)
CORPORA = {"reuters-r8": "reuters", "20newsgroups": "20ng"}


@dataclass
class ChunkPool:
    """Chunk vectors of a document set: document ``i`` owns rows ``starts[i]:starts[i] + counts[i]``."""

    name: str
    labels: np.ndarray
    counts: np.ndarray
    vectors: np.ndarray
    norms: np.ndarray

    def __post_init__(self) -> None:
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
        self.doc_ids = [f"{self.name}-{i}" for i in range(len(self.counts))]

    def __len__(self) -> int:
        return len(self.counts)

    def topic_index(self, topics) -> np.ndarray:  # what draw_index needs of a pool
        if topics is None:
            return np.arange(len(self.labels))
        return np.nonzero(np.isin(self.labels, list(topics)))[0]

    def rows(self, docs: np.ndarray) -> np.ndarray:
        return np.concatenate([np.arange(self.starts[d], self.starts[d] + self.counts[d]) for d in docs]
                              or [np.zeros(0, np.int64)])


#: edits of every text of a chunk pool: web boilerplate prepended (``load.drift_eval``'s ``boiler``
#: variant; it lands in a document's first chunk) or appended (a footer: in its last chunk)
EDITS = {"boiler": drift_data.with_boilerplate, "footer": drift_data.with_footer}


def chunk_pool(corpus: str, part: str, cache: Path, variant: str = "int8", edit: str = "") -> ChunkPool:
    """The chunk pool of one part of a corpus, built with the worker's chunker and the ``variant``
    encoder (int8: the worker's on CPU). ``edit``: every text edited by ``EDITS[edit]`` first (a long
    document may then have one chunk more)."""
    from app.chunking import Chunker

    loader, _variants, cap, name = drift_data.CORPORA[corpus]
    texts, labels = loader(cache)
    texts, labels = drift_data._subset(texts, labels, cap, 0)
    rows = drift_split.split_indices(corpus, texts, part)
    texts, labels = [texts[i] for i in rows], np.array(labels)[rows]
    if edit:
        texts = [EDITS[edit](t) for t in texts]
    if not texts:  # a corpus held out whole, in the tuning part
        return ChunkPool(name, labels, np.zeros(0, dtype=np.int64), np.zeros((0, 0), np.float32), np.zeros(0, np.float32))
    enc = drift_data.load_encoder(variant)
    chunker = Chunker(enc.tokenizer)
    h = hashlib.sha256("\0".join(texts).encode()).hexdigest()[:12]
    fp = hashlib.sha256(enc.fingerprint.encode()).hexdigest()[:12]
    kind = ("chunks" if variant == "int8" else f"chunks-{variant}") + (f"-{edit}" if edit else "")
    path = Path(cache) / "embeddings" / f"{corpus}-{kind}-{chunker.signature}-{fp}-{h}.npz"
    if path.exists():
        with np.load(path) as d:
            return ChunkPool(name, labels, d["counts"], d["vectors"], d["norms"])
    chunks = chunker.chunk_many(texts)
    counts = np.array([len(c) for c in chunks], dtype=np.int64)
    tokens = [c.token_ids for cs in chunks for c in cs]
    label = f"[drift_chunks] {name}/{part}/{variant}" + (f"/{edit}" if edit else "")
    v, n = drift_data.encode_batches(enc.encode_tokens, tokens, label, "chunks")
    drift_data.save_npz(path, vectors=v, norms=n, counts=counts)
    return ChunkPool(name, labels, counts, v, n)


def synthetic_pool(n_docs: int, seed: int = 0, dim: int = 64) -> ChunkPool:
    """Topic clusters; a document's chunks share its direction (chunk noise 0.7 of the document's),
    one to five chunks (one in three documents has more than one)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, dim)) + rng.normal(size=dim)
    labels = rng.integers(8, size=n_docs)
    counts = np.minimum(rng.geometric(0.7, size=n_docs), 5)
    base = centres[labels] + rng.normal(size=(n_docs, dim))
    rows = np.repeat(base, counts, axis=0) + 0.7 * rng.normal(size=(int(counts.sum()), dim))
    norms = np.linalg.norm(rows, axis=1)
    return ChunkPool("synthetic", labels.astype(str), counts, (rows / norms[:, None]).astype(np.float32),
                     norms.astype(np.float32))


def run_stream(pool: ChunkPool, docs: np.ndarray, feeding: str, config: DriftConfig,
               alt: ChunkPool | None = None, alt_from: int = 0) -> dict:
    """Feed one stream of documents (pool indices) in batches of BATCH_DOCS documents; the documents
    from position ``alt_from`` on are taken from ``alt`` (the same documents through another encoder,
    or another text of them: their chunks may be more).

    ``fired_docs``: the position in ``docs`` of the document of each FIRED alert's event."""
    mon = DriftMonitor(("fingerprint", pool.name), Path(tempfile.mkdtemp(prefix="drift-chunks-")), config=config)
    fired, rows, at, fed_counts = 0, 0, [], []
    for s in range(0, len(docs), BATCH_DOCS):
        batch = docs[s : s + BATCH_DOCS]
        k = len(batch) if alt is None else int(np.clip(alt_from - s, 0, len(batch)))  # from `pool`, then `alt`
        parts = [(pool, batch[:k]), (alt, batch[k:])][: 1 if alt is None else 2]
        counts = np.concatenate([p.counts[d] for p, d in parts])
        v = np.vstack([p.vectors[p.rows(d)] for p, d in parts])
        n = np.concatenate([p.norms[p.rows(d)] for p, d in parts])
        ids = np.repeat(batch, counts)
        fed_counts.append(counts)
        if feeding == "events":
            # event_vectors tells events apart by identity, as the worker's records: one object each
            events = [object() for _ in batch]
            v, n, first = event_vectors(v, n, [events[j] for j in np.repeat(np.arange(len(batch)), counts)])
            ids = ids[first]
        alerts = mon.observe(v, norms=n, doc_ids=[pool.doc_ids[i] for i in ids])
        at += [a.event_index for a in alerts if a.kind.value == "FIRED"]
        rows += len(v)
    at += [a.event_index for a in mon.flush() if a.kind.value == "FIRED"]
    if feeding == "chunks":  # row index -> position of its document in the stream
        at = np.searchsorted(np.cumsum(np.concatenate(fed_counts)), at, side="right").tolist()
    st = mon.status()
    return {"rows": rows, "live": rows - st["warmup"], "fired": len(at), "fired_docs": at,
            "alarms": st["alarms_by_signal"],
            "flagged": bool(st["serial_dependence"] and st["serial_dependence"]["dependent"])}


def _row(part: str, pool: str, stream: str, feeding: str, alpha: float, t0: float, **fields) -> dict:
    return {"part": part, "pool": pool, "stream": stream, "feeding": feeding, "serial_alpha": alpha, **fields,
            "seconds": round(time.perf_counter() - t0, 1)}


def _label(row: dict) -> str:
    return (f"{row['part']:8s} {row['pool']:9s} {row['stream']:14s} "
            f"{row['feeding'] + '/' + format(row['serial_alpha'], 'g'):12s}")


def evaluate(pools: dict[str, ChunkPool], *, part: str, streams: int, docs: int, burst: float,
             config: DriftConfig | None = None, log=print) -> list[dict]:
    config = config or DriftConfig()
    base = drift_split.run_seed(part)
    out = []
    for name, pool in pools.items() if streams > 0 else ():
        kinds = [("iid", Source(pool=name))] + ([("bursty", Source(pool=name, burst=burst))] if burst > 0 else [])
        for kind, src in kinds:
            for feeding, alpha in FEEDINGS:
                tot = {"rows": 0, "live": 0, "fired": 0, "flagged": 0, "alarms": Counter()}
                t0 = time.perf_counter()
                for k in range(streams):
                    seed = base + 7919 * k + (0 if kind == "iid" else 104_729)  # the same streams for every feeding
                    idx = draw_index(pool, src, np.random.default_rng(seed), docs)
                    r = run_stream(pool, idx, feeding, replace(config, serial_alpha=alpha))
                    for key in ("rows", "live", "fired"):
                        tot[key] += r[key]
                    tot["flagged"] += r["flagged"]
                    tot["alarms"].update(r["alarms"])
                row = _row(part, name, kind, feeding, alpha, t0, streams=streams, docs_per_stream=docs,
                           rows=tot["rows"], fired=tot["fired"],
                           fired_per_100k=round(1e5 * tot["fired"] / max(tot["live"], 1), 2),
                           alarms_by_signal=dict(tot["alarms"]), warmups_flagged=tot["flagged"])
                out.append(row)
                log(f"{_label(row)} rows {row['rows']:>8d}  FIRED {row['fired']:>4d}  per 100k "
                    f"{row['fired_per_100k']:>7.2f}  flagged {row['warmups_flagged']}/{streams}  alarms "
                    f"{row['alarms_by_signal']}  ({row['seconds']} s)")
    return out


def switches(pools: dict[str, ChunkPool], *, part: str, runs: int, before: int = 3000, after: int = 2000,
             config: DriftConfig | None = None, fp32: dict[str, ChunkPool] | None = None,
             edited: dict[str, dict[str, ChunkPool]] | None = None, mix: bool = True, log=print) -> list[dict]:
    """Changes ``before`` documents after the warm-up; the delay, in documents, of the first FIRED
    alert at or after the change (a miss: none within ``after``; an alert before it: false):

    * ``mix->T``: the pool's natural mix, then its largest topic alone (``load.drift_eval``'s
      ``topic:P:mix->T``);
    * ``int8->fp32`` / ``fp32->int8`` (with ``fp32`` pools): the same stream of documents, through
      the other encoder from the change on (``load.drift_eval``'s ``encoder:P:...``; the canary's
      job first, DRIFT.md section 5);
    * ``boilerplate`` (with ``edited["boiler"]`` pools): the same stream of documents with web
      boilerplate prepended from the change on (``load.drift_eval``'s ``boilerplate:P:100%``). Fed
      by event, a long document's boilerplate chunk is averaged with its other chunks;
    * ``footer`` (with ``edited["footer"]`` pools): the same boilerplate appended instead, so it
      lands in the *last* chunk of a long document (the first 256 tokens, which is what
      ``load.drift_eval`` embeds, do not change at all then).
    """
    config = config or DriftConfig()
    base = drift_split.run_seed(part)
    out = []
    for name, pool in pools.items():
        labels, sizes = np.unique(pool.labels, return_counts=True)
        top = str(labels[np.argmax(sizes)])
        switch = config.warmup + before
        changes = [(f"mix->{top}", pool, None)] if mix else []
        if fp32 and name in fp32:
            changes += [("int8->fp32", pool, fp32[name]), ("fp32->int8", fp32[name], pool)]
        for edit, change in (("boiler", "boilerplate"), ("footer", "footer")):
            if edited and name in edited.get(edit, {}):
                changes += [(change, pool, edited[edit][name])]
        for (change, first, alt), (feeding, alpha) in ((c, f) for c in changes for f in FEEDINGS):
            delays, early, t0 = [], 0, time.perf_counter()
            for k in range(runs):
                rng = np.random.default_rng(base + 31_337 + 7919 * k)
                after_src = Source(pool=name) if alt is not None else Source(pool=name, topics=(top,))
                docs = np.concatenate([draw_index(pool, Source(pool=name), rng, switch),
                                       draw_index(pool, after_src, rng, after)])
                r = run_stream(first, docs, feeding, replace(config, serial_alpha=alpha), alt=alt, alt_from=switch)
                early += sum(1 for d in r["fired_docs"] if d < switch)
                late = [d - switch for d in r["fired_docs"] if d >= switch]
                delays.append(late[0] if late else None)
            found = sorted(d for d in delays if d is not None)
            row = _row(part, name, change, feeding, alpha, t0, runs=runs, delays=delays,
                       median_delay=float(np.median(found)) if found else None, missed=runs - len(found),
                       fired_before_switch=early)
            out.append(row)
            log(f"{_label(row)} median delay {row['median_delay']} documents, missed {row['missed']}/{runs}, "
                f"FIRED before the switch {early}  ({row['seconds']} s)")
    return out


def cost(pools: dict[str, ChunkPool], *, batches: int = 300, log=print) -> list[dict]:
    """µs per event of :func:`app.alerts.event_vectors` at batches of BATCH_DOCS random documents of
    each pool (the worker's cost of feeding by event, on top of the monitor's per-vector cost)."""
    out = []
    for name, pool in pools.items():
        rng = np.random.default_rng(0)
        total, n_ev, n_rows = 0.0, 0, 0
        for _ in range(batches):
            batch = rng.integers(len(pool), size=BATCH_DOCS)
            r = pool.rows(batch)
            v, n = pool.vectors[r], pool.norms[r]
            events = [object() for _ in batch]
            recs = [events[j] for j in np.repeat(np.arange(len(batch)), pool.counts[batch])]
            t = time.perf_counter()
            event_vectors(v, n, recs)
            total += time.perf_counter() - t
            n_ev, n_rows = n_ev + len(batch), n_rows + len(r)
        row = {"pool": name, "batch_docs": BATCH_DOCS, "chunks_per_event": round(n_rows / n_ev, 2),
               "us_per_event": round(1e6 * total / n_ev, 2)}
        out.append(row)
        log(f"cost     {name:9s} event_vectors: {row['us_per_event']} µs per event "
            f"({row['chunks_per_event']} chunks per event, batches of {BATCH_DOCS})")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m load.drift_chunks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("tune", "holdout"), default="tune",
                    help="which part of the fixed split (load/drift_split.py); 20 Newsgroups is held out whole")
    ap.add_argument("--synthetic", action="store_true", help="a synthetic chunk pool (no corpus, no model)")
    ap.add_argument("--streams", type=int, default=3, help="drift-free streams per pool, kind and feeding (default 3; 0: none)")
    ap.add_argument("--docs", type=int, default=60_000, help="documents per stream (default 60000)")
    ap.add_argument("--burst", type=float, default=20.0,
                    help="mean same-topic run of the bursty streams (default 20; 0: i.i.d. streams only)")
    ap.add_argument("--switch-runs", type=int, default=10,
                    help="topic-switch streams per pool and feeding (default 10; 0: none)")
    ap.add_argument("--encoder", action="store_true",
                    help="also an encoder change (int8 -> fp32; builds the fp32 chunk pools: slow the first time)")
    ap.add_argument("--boilerplate", action="store_true",
                    help="also a change to the same documents with web boilerplate prepended (builds the "
                         "boilerplate chunk pools: slow the first time)")
    ap.add_argument("--footer", action="store_true",
                    help="also a change to the same documents with the boilerplate appended (a footer, in "
                         "the last chunk; builds the footer chunk pools: slow the first time)")
    ap.add_argument("--no-mix", action="store_true", help="leave out the switch of the mix to one topic")
    ap.add_argument("--cost", action="store_true", help="only time app.alerts.event_vectors on each pool")
    ap.add_argument("--cache", type=Path, default=drift_data.DEFAULT_CACHE)
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args(argv)
    logging.getLogger("app.drift").setLevel(logging.ERROR)  # the bursty warm-ups' warning, once per stream
    fp32: dict[str, ChunkPool] = {}
    edited: dict[str, dict[str, ChunkPool]] = {"boiler": {}, "footer": {}}
    if args.synthetic:
        pools = {"synthetic": synthetic_pool(max(args.docs // 4, 500))}
    else:
        pools = {}
        for corpus, name in CORPORA.items():
            try:
                pool = chunk_pool(corpus, args.part, args.cache)
            except drift_data.DataMissing as exc:
                print(f"[drift_chunks] {exc}", file=sys.stderr)
                return 2
            if len(pool):
                pools[name] = pool
                if args.encoder:
                    fp32[name] = chunk_pool(corpus, args.part, args.cache, "fp32")
                for edit, wanted in (("boiler", args.boilerplate), ("footer", args.footer)):
                    if wanted:
                        edited[edit][name] = chunk_pool(corpus, args.part, args.cache, edit=edit)
                print(f"[drift_chunks] {name}/{args.part}: {len(pool)} documents, {int(pool.counts.sum())} chunks; "
                      f"{(pool.counts > 1).mean():.0%} have more than one, at most {int(pool.counts.max())}",
                      flush=True)
    say = lambda s: print(s, flush=True)  # noqa: E731
    if args.cost:
        rows = cost(pools, log=say)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        return 0
    rows = evaluate(pools, part=args.part, streams=args.streams, docs=args.docs, burst=args.burst, log=say)
    if args.switch_runs:
        rows += switches(pools, part=args.part, runs=args.switch_runs, fp32=fp32, edited=edited,
                         mix=not args.no_mix, log=say)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
