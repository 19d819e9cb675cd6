"""Operator commands: ``replay``, ``reindex``, ``offsets``, ``dlq``, ``drift`` (registered into the
``embedstream`` parser by :func:`register`). The logic lives in app/replay.py,
app/reindex.py, app/offsets.py and app/drift/states.py; this module is argument parsing and printing only.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading

from app.config import ConfigError

log = logging.getLogger("embedstream")

EXIT_INTERRUPTED = 130


def _cli():
    from app import cli  # late: app.cli imports this module

    return cli


def _settings(args, **extra):
    over = {"collection_prefix": getattr(args, "collection_prefix", None),
            "dlq_topic": getattr(args, "dlq_topic", None), "app_id": getattr(args, "group", None)}
    over.update(extra)
    return _cli()._settings(args, **{k: v for k, v in over.items() if v is not None})


def _quiet_logging(settings) -> None:
    _cli().setup_logging(settings.replace(log_level="WARNING") if settings.log_level == "INFO" else settings)


@contextlib.contextmanager
def graceful_interrupt(request_stop, abort=None):
    """First Ctrl-C (or SIGTERM): stop after the current batch. Second: abort now."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hits = {"n": 0}
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        hits["n"] += 1
        if hits["n"] == 1:
            print("\nstopping after the current batch (Ctrl-C again to abort it)", file=sys.stderr, flush=True)
            request_stop()
            return
        for sig, h in previous.items():
            signal.signal(sig, h)
        if abort is not None:
            abort()
        raise KeyboardInterrupt

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def _progress(args):
    from app.replay import ProgressDisplay

    if getattr(args, "quiet", False):
        return None
    return ProgressDisplay(interval_s=getattr(args, "progress_interval", None))


# ----------------------------------------------------------------------------------------
def _ago(ts) -> str:
    import time

    if ts is None:
        return "-"
    s = max(0.0, time.time() - float(ts))
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}min ago" if s < 7200 else f"{s / 3600:.1f}h ago"


def _drift_line(st) -> str:
    if st.error and st.fingerprint == "?":
        return f"{st.path.name}: {st.error}"
    if st.warming_up:
        what = f"warming up {st.warmup_progress}/{st.warmup or '?'}"
        if st.serially_dependent:
            what += f" (extended: fed in bursts, Ljung-Box p = {st.serial_p:.2g})"
    else:
        what = "watching"
        if st.serially_dependent:
            what += f", fed in bursts (Ljung-Box p = {st.serial_p:.2g}): coarser PageHinkley, shift unwatched"
        what += ", episode OPEN" if st.episode_open else ", no open episode"
        what += {"pending": f"; shift scan fitted again at event {st.shift_refit_at}",
                 "done": "; shift scan fitted again", "skipped": "; shift scan keeps its warm-up fit"
                 }.get(st.shift_refit, "")
    extra = [f"{st.events} events", f"reference {st.reference_id[:12] or '-'}", f"saved {_ago(st.saved_at)}"]
    if st.relearn_requested:
        extra.append("NEW REFERENCE REQUESTED (taken with the worker's next batch)")
    if st.error:
        extra.append(st.error)
    return f"{st.collection}  [{st.fingerprint}]\n  {what}\n  " + "; ".join(extra)


def cmd_drift(args) -> int:
    from pathlib import Path

    from app.drift.states import list_states, request_relearn

    s = _settings(args)
    state_dir = Path(s.data_dir) / "drift"
    states = list_states(state_dir)
    if args.drift_cmd == "status":
        if args.json:
            for st in states:
                print(json.dumps(st.to_json()))
            return 0
        if not states:
            print(f"no drift state under {state_dir} (no worker has watched a collection with this data "
                  "directory yet)", file=sys.stderr)
            return 0
        print("\n".join(_drift_line(st) for st in states))
        return 0
    # relearn
    def named(st) -> bool:  # the collection's name, or the prefix it was made from (`<prefix>__<hash>`)
        return st.collection == args.collection or (
            st.collection.startswith(f"{args.collection}__") and not any(o.collection == args.collection for o in states))

    chosen = [st for st in states if st.fingerprint != "?" and (
        args.all or (named(st) and (args.fingerprint is None or st.fingerprint == args.fingerprint)))]
    if not chosen:
        known = ", ".join(sorted({f"{st.collection} [{st.fingerprint}]" for st in states if st.fingerprint != "?"}))
        print(f"no drift state for {'any collection' if args.all else repr(args.collection)} under {state_dir}"
              + (f"; known: {known}" if known else " (no worker has watched a collection with this data directory)"),
              file=sys.stderr)
        return 2
    for st in chosen:
        path = request_relearn(state_dir, st.key, args.reason or "")
        print(f"requested a new reference for {st.collection} [{st.fingerprint}] ({path.name})")
    print("a running worker takes it before its next batch (or within a second on a quiet stream), a stopped one "
          "when it starts: an open episode is closed with a CLEARED alert and a new warm-up starts with the next "
          "event; nothing is watched until it ends (`embedstream drift status` shows its progress)")
    return 0


def cmd_replay(args) -> int:
    from app.offsets import parse_partition_offsets, parse_partitions, parse_time
    from app.replay import Replayer, ReplayError, ReplayRange, default_checkpoint_path, open_target
    from app.store.base import StoreError

    s = _settings(args)
    _quiet_logging(s)
    common = dict(max_rate=args.max_rate, batch_size=args.batch_size, idle_s=args.idle,
                  max_records=args.max_records, progress=_progress(args), dlq=not args.no_dlq,
                  dlq_topic=args.dlq_topic)
    ranged = any(v is not None for v in (args.from_offset, args.to_offset, args.from_time, args.to_time,
                                         args.partitions))
    resume = args.resume
    if resume is None and args.name and not args.dry_run:
        path = default_checkpoint_path(s, args.name)
        if path.exists():
            state = json.loads(path.read_text())
            if state.get("complete") and not args.restart:
                print(f"replay {args.name!r} already completed ({path}); --restart replays it again",
                      file=sys.stderr)
                return 0
            if not state.get("complete") and not args.restart:
                resume = str(path)
    if args.resume is not None and args.dry_run:
        raise ConfigError("a dry run has no checkpoint to resume: drop --resume or --dry-run")
    if args.resume is not None and ranged:
        raise ConfigError("--resume continues the range stored in the checkpoint: drop the range options")
    if resume is not None and ranged:
        print(f"replay {args.name!r} has an unfinished checkpoint: continuing it with its stored range "
              "(--restart starts over)", file=sys.stderr)
    processor = None if args.dry_run else open_target(s)
    if resume is not None:
        print(f"resuming replay from {resume}", file=sys.stderr)
        r = Replayer.resume(s, resume, processor=processor, **common)
    else:
        rng = ReplayRange(
            partitions=parse_partitions(args.partitions),
            from_offsets=parse_partition_offsets(args.from_offset) if args.from_offset is not None else None,
            to_offsets=parse_partition_offsets(args.to_offset) if args.to_offset is not None else None,
            from_ms=parse_time(args.from_time) if args.from_time else None,
            to_ms=parse_time(args.to_time) if args.to_time else None,
            time_slack_ms=int(args.time_slack * 1000) if args.time_slack is not None else None)
        r = Replayer.start(s, rng, name=args.name, topic=args.topic, processor=processor, dry_run=args.dry_run,
                           **common)
        target = "nothing (dry run)" if args.dry_run else \
            f"{s.store} collection {r.state['target']['collection']} ({processor.fingerprint})"
        print(f"replay {r.name}: {r.topic} {rng.describe()} -> {target}"
              + ("" if args.dry_run else f"\ncheckpoint: {r.checkpoint}"), file=sys.stderr)
    try:
        with graceful_interrupt(r.request_stop, abort=processor.stop if processor else None):
            report = r.run()
    except (ReplayError, StoreError) as exc:
        print(f"replay {r.name} failed: {exc}", file=sys.stderr)
        if r.checkpoint:
            print(f"after fixing the cause: embedstream replay --resume {r.checkpoint}", file=sys.stderr)
        return 1
    finally:
        if processor is not None:
            processor.store.close()
    if args.json:
        print(json.dumps({k: v for k, v in report.__dict__.items()}, indent=2, default=str))
    else:
        print(report.summary())
    if not report.complete:
        print(f"stopped before the end; continue with: embedstream replay --resume {report.checkpoint}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


# ----------------------------------------------------------------------------------------
def _print_status(st: dict) -> None:
    print(f"reindex of alias {st['alias']}: {st['phase']}   (state {st['state_file']})")
    print(f"  alias -> {st.get('alias_target')}")
    for key in ("old", "new"):
        d = st[key]
        counts = "" if "documents" not in d else f"  documents={d['documents']} chunks={d['chunks']}"
        print(f"  {key}: {d['collection']} [{d['variant']}]{counts}{'  ' + d['error'] if d.get('error') else ''}")
    if st.get("running_pass"):
        rp = st["running_pass"]
        print(f"  replay in progress: {rp['records']} records applied, {rp['remaining']} offsets to go "
              f"(checkpoint {rp['checkpoint']})")
    print(f"  lag: new collection {st['new_lag']} records behind the end; live group {st['live_lag']}")
    for p, r in sorted(st["partitions"].items()):
        print(f"    p{p}: end={r['high_watermark']} new={r['new_position']} live={r['live_committed']}")
    if st.get("outcomes"):
        print("  outcomes: " + ", ".join(f"{k}={v}" for k, v in sorted(st["outcomes"].items())))


def _next_steps(st: dict, reindex) -> str:
    new = reindex.state["new"]
    env = [f"EMBEDSTREAM_MODEL_VARIANT={new['variant']}"]
    if new["chunk_tokens"] != reindex.settings.chunk_tokens or new["chunk_overlap"] != reindex.settings.chunk_overlap:
        env += [f"EMBEDSTREAM_CHUNK_TOKENS={new['chunk_tokens']}", f"EMBEDSTREAM_CHUNK_OVERLAP={new['chunk_overlap']}"]
    from app.reindex import _alias_name

    if new["prefix"] != _alias_name(reindex.settings):
        env.append(f"EMBEDSTREAM_COLLECTION_PREFIX={new['prefix']}  (workers only: readers and reindex commands "
                   f"keep {reindex.settings.collection_prefix})")
    return "start the workers with: " + " ".join(env)


def cmd_reindex(args) -> int:
    from app.reindex import Reindex, ReindexError
    from app.replay import ReplayError
    from app.store.base import StoreError

    s = _settings(args)
    _quiet_logging(s)
    rx = Reindex(s, progress=_progress(args), echo=lambda m: print(m, file=sys.stderr, flush=True))
    kw = {}
    if getattr(args, "max_rate", None):
        kw["max_rate"] = args.max_rate
    if getattr(args, "batch_size", None):
        kw["batch_size"] = args.batch_size
    try:
        with graceful_interrupt(rx.request_stop):
            if args.reindex_cmd == "start":
                st = rx.start(variant=args.model, chunk_tokens=args.chunk_tokens, chunk_overlap=args.chunk_overlap,
                              target_prefix=args.target_prefix, fresh=args.fresh, dlq=args.dlq,
                              max_passes=args.max_passes, **kw)
                _print_status(st)
                if st["phase"] == "backfilling":
                    print("interrupted: `embedstream reindex start` continues from the checkpoint", file=sys.stderr)
                    return EXIT_INTERRUPTED
                print("ready: check `embedstream reindex status`, then `embedstream reindex swap`", file=sys.stderr)
            elif args.reindex_cmd == "catchup":
                rx.catch_up(**kw)
                _print_status(rx.status())
            elif args.reindex_cmd == "status":
                st = rx.status()
                if args.json:
                    print(json.dumps(st, indent=2, default=str))
                else:
                    _print_status(st)
            elif args.reindex_cmd == "swap":
                results = rx.swap(force=args.force, queries=args.query, catch_up=not args.no_catchup, **kw)
                for r in results:
                    print(f"  check {r.name}: {'ok' if r.ok else 'FAILED'} - {r.detail}")
                print(f"alias {rx.state['alias']} -> {rx.state['new']['collection']}. Searches now use the new "
                      f"collection. Next: stop the old workers, then `embedstream reindex finish`.")
            elif args.reindex_cmd == "finish":
                st = rx.finish(force=args.force, **kw)
                _print_status(st)
                print(_next_steps(st, rx))
            elif args.reindex_cmd == "rollback":
                before = rx.state["phase"] if rx.state else None
                st = rx.rollback(force=args.force, **kw)
                _print_status(st)
                if before == "finished":
                    print(f"stop the new workers if not done; start the workers with "
                          f"EMBEDSTREAM_MODEL_VARIANT={rx.state['old']['variant']}")
    except (ReindexError, ReplayError, StoreError) as exc:
        print(f"reindex: {exc}", file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------------------
def cmd_offsets(args) -> int:
    from app import offsets as o

    s = _settings(args)
    _quiet_logging(s)
    topic = args.topic or s.changes_topic
    group = s.app_id
    parts = o.select_partitions(o.topic_partitions(s, topic), o.parse_partitions(getattr(args, "partitions", None)))
    marks = o.high_watermarks(s, topic, parts)
    committed = o.committed_offsets(s, group, topic, parts)
    # show: describe only; reset: also the join probe where the broker lists no members (Tansu)
    activity = o.group_activity(s, group, topic, probe=args.offsets_cmd == "reset")
    if args.offsets_cmd == "show":
        rows = []
        for p in parts:
            c = committed[p]
            rows.append({"partition": p, "committed": c, "low": marks[p].low, "high_watermark": marks[p].high,
                         "lag": None if c is None else max(marks[p].high - c, 0),
                         "hw_method": marks[p].method})
        if args.json:
            print(json.dumps({"group": group, "topic": topic, "state": activity.state, "active": activity.active,
                              "note": activity.note, "partitions": rows}, indent=2))
            return 0
        print(f"group {group} on {topic}: {activity.state} "
              f"({'active' if activity.active else 'inactive' if activity.active is False else 'unknown'}: "
              f"{activity.note})")
        print(f"  {'partition':>9} {'committed':>10} {'high-wm':>10} {'lag':>8}  hw from")
        for r in rows:
            c = "-" if r["committed"] is None else r["committed"]
            lag = "-" if r["lag"] is None else r["lag"]
            print(f"  {r['partition']:>9} {c:>10} {r['high_watermark']:>10} {lag:>8}  {r['hw_method']}")
        total = sum(r["lag"] or 0 for r in rows)
        print(f"  total lag: {total}" + ("" if all(r["committed"] is not None for r in rows)
                                          else " (partitions without a committed offset not counted)"))
        return 0

    # reset
    if args.to_time:
        targets = o.offsets_for_time(s, topic, parts, o.parse_time(args.to_time))
    elif args.to_offset == "earliest":
        targets = {p: marks[p].low for p in parts}
    elif args.to_offset == "latest":
        targets = {p: marks[p].high for p in parts}
    else:
        v = o.parse_partition_offsets(args.to_offset)
        targets = {p: v for p in parts} if isinstance(v, int) else {p: off for p, off in v.items() if p in parts}
        unknown = set(v) - set(parts) if isinstance(v, dict) else set()
        if unknown:
            raise ConfigError(f"--to-offset names partitions {sorted(unknown)} outside {parts}")
    print(f"reset committed offsets of group {group} on {topic}:")
    for p, t in sorted(targets.items()):
        c = committed.get(p)
        note = ""
        if t > marks[p].high:
            note = f"  (past the end {marks[p].high})"
        elif t < marks[p].low:
            note = f"  (before the start {marks[p].low})"
        print(f"  p{p}: {'-' if c is None else c} -> {t}{note}")
    if activity.active is not False:
        msg = (f"group {group} is {'active' if activity.active else 'possibly active'} ({activity.note}); "
               "stop its workers first: a running consumer overwrites reset offsets with its own commits")
        if not args.force:
            print(f"refusing: {msg} (--force to try anyway)", file=sys.stderr)
            return 2
        print(f"WARNING: {msg}; going on (--force)", file=sys.stderr)
    if not args.yes:
        if not sys.stdin.isatty():
            print("refusing: stdin is not a terminal, so there is nobody to confirm; pass --yes", file=sys.stderr)
            return 2
        answer = input(f"reset group {group}? type 'yes' to confirm: ").strip().lower()
        if answer != "yes":
            print("not changed", file=sys.stderr)
            return 1
    errors = o.reset_offsets(s, group, topic, targets)
    failed = {p: e for p, e in errors.items() if e}
    for p, e in sorted(errors.items()):
        print(f"  p{p}: {'FAILED: ' + e if e else 'done'}")
    return 1 if failed else 0


# ----------------------------------------------------------------------------------------
def cmd_dlq(args) -> int:
    from app.offsets import parse_partition_offsets
    from app.replay import read_dead_letters, reinject_dead_letters

    s = _settings(args)
    _quiet_logging(s)
    start = parse_partition_offsets(args.from_offset) if args.from_offset is not None else None
    letters, ends = read_dead_letters(s, from_offsets=start, reason=args.reason, limit=args.limit)
    if args.dlq_cmd == "show":
        if args.json:
            for dl in letters:
                print(json.dumps(dl.as_dict()))
            return 0
        if not letters:
            print(f"no dead letters in {s.dlq_topic}" + (f" with reason {args.reason}" if args.reason else ""))
        for dl in letters:
            d = dl.as_dict()
            print(f"{s.dlq_topic}[{d['dlq_partition']}]@{d['dlq_offset']}  {d['time']}  reason={d['reason']}  "
                  f"stage={d['stage']}")
            print(f"    detail: {d['detail']}")
            print(f"    source: {d['source_topic']}[{d['source_partition']}]@{d['source_offset']}  "
                  f"record time {d['source_time']}  worker {d['worker']}")
            size = "null (tombstone)" if d["value_size"] is None else f"{d['value_size']} bytes"
            print(f"    key: {d['key']!r}  value: {size}  {d['value_preview_hex'][:96]}")
        return 0
    # replay
    what = f"{len(letters)} dead letter(s)" + (f" with reason {args.reason}" if args.reason else "")
    if args.dry_run:
        print(f"would re-inject {what} into {args.to_topic or s.changes_topic}")
        for dl in letters:
            d = dl.as_dict()
            print(f"  {d['dlq_partition']}@{d['dlq_offset']} key={d['key']!r} reason={d['reason']}")
        return 0
    n = reinject_dead_letters(s, letters, topic=args.to_topic)
    nxt = ",".join(f"{p}:{o}" for p, o in sorted(ends.items()))
    print(f"re-injected {n} of {what} into {args.to_topic or s.changes_topic} (x-dlq-* headers removed); "
          f"the DLQ was read up to {nxt}: `--from-offset {nxt}` skips these next time")
    return 0


# ----------------------------------------------------------------------------------------
def register(sub, common) -> None:
    """Add replay, reindex, offsets, drift and dlq to the ``embedstream`` subcommands."""
    fmt = argparse.RawDescriptionHelpFormatter

    def prefix(sp):
        sp.add_argument("--collection-prefix",
                        help="collection prefix / alias name (env EMBEDSTREAM_COLLECTION_PREFIX)")
        return sp

    def progress(sp):
        sp.add_argument("--progress-interval", type=float, metavar="S",
                        help="seconds between progress lines (default: 0.5 on a terminal, 10 otherwise)")
        sp.add_argument("--quiet", action="store_true", help="no progress display")

    # replay -------------------------------------------------------------------------------
    sp = prefix(common(sub.add_parser(
        "replay", help="replay a range of the changes topic into a store", formatter_class=fmt,
        description="Replay records of the changes topic through the same pipeline as the worker (decode, plan "
                    "against stored versions, chunk, encode, write) into the configured store/collection.\n"
                    "Reads with manual assignment and never commits: the live worker's offsets do not move.\n"
                    "Ranges: offsets are [from, to) per partition; times are [from, to) on record timestamps.\n"
                    "A checkpoint (<data_dir>/replay/<name>.json) is written after every batch; Ctrl-C stops "
                    "after the current batch and prints how to resume.",
        epilog="examples:\n"
               "  embedstream replay --dry-run                                  count everything, write nothing\n"
               "  embedstream replay --from-offset 0:100,1:0 --to-offset 0:200,1:50\n"
               "  embedstream replay --from 2024-05-01T00:00:00Z --to 2024-05-02T00:00:00Z --partitions 0,3\n"
               "  embedstream replay --name backfill --model-variant fp32 --collection-prefix scratch --max-rate 200\n"
               "  embedstream replay --resume data/replay/backfill.json")))
    sp.add_argument("--from-offset", metavar="N|P:N,...",
                    help="first offset (inclusive), all partitions or per partition")
    sp.add_argument("--to-offset", metavar="N|P:N,...", help="end offset (exclusive); default: the end when it starts")
    sp.add_argument("--from", dest="from_time", metavar="ISO", help="first record time (inclusive), ISO-8601")
    sp.add_argument("--to", dest="to_time", metavar="ISO", help="end record time (exclusive), ISO-8601")
    sp.add_argument("--time-slack", type=float, metavar="S",
                    help="with --to: stop a partition at its first record newer than --to + S seconds "
                         "(default: read to the end, exact even for out-of-order timestamps)")
    sp.add_argument("--partitions", metavar="0,3", help="only these partitions")
    sp.add_argument("--topic", help="topic to replay (default: the changes topic)")
    sp.add_argument("--dry-run", action="store_true", help="count records per partition and op; write nothing")
    sp.add_argument("--max-rate", type=float, metavar="N", help="at most N events per second")
    sp.add_argument("--batch-size", type=int, metavar="N",
                    help="records per batch (default EMBEDSTREAM_BATCH_MAX_EVENTS)")
    sp.add_argument("--name", help="replay name; its checkpoint is <data_dir>/replay/<name>.json and an unfinished "
                                   "one is resumed automatically")
    sp.add_argument("--resume", metavar="CHECKPOINT", help="continue the replay of this checkpoint file")
    sp.add_argument("--restart", action="store_true", help="with --name: start over even if a checkpoint exists")
    sp.add_argument("--dlq-topic", help="dead-letter topic (default EMBEDSTREAM_DLQ_TOPIC)")
    sp.add_argument("--no-dlq", action="store_true", help="count dead letters but do not write them to the DLQ")
    sp.add_argument("--idle", type=float, default=2.0, metavar="S",
                    help="a partition that ends before its end offset is done after S quiet seconds (default 2)")
    sp.add_argument("--max-records", type=int, metavar="N", help="stop after about N records (resumable)")
    sp.add_argument("--json", action="store_true", help="print the report as JSON")
    progress(sp)
    sp.set_defaults(func=cmd_replay)

    # reindex ------------------------------------------------------------------------------
    rp = sub.add_parser("reindex", help="blue/green reindex: new model or chunking, swap, rollback",
                        formatter_class=fmt,
                        description="Build a new collection by replaying the changes topic while the live worker "
                                    "serves the old one; swap the alias when it has caught up; roll back if needed.\n"
                                    "start -> status -> swap -> (stop old workers) finish -> start new workers.",
                        epilog="examples:\n"
                               "  embedstream reindex start --model fp32\n"
                               "  embedstream reindex status\n"
                               "  embedstream reindex swap\n"
                               "  embedstream reindex finish      # after stopping the old workers\n"
                               "  embedstream reindex rollback")
    rsub = rp.add_subparsers(dest="reindex_cmd", required=True)
    sp = prefix(common(rsub.add_parser("start", help="create the new collection, backfill and catch up (resumable)")))
    sp.add_argument("--model", choices=("int8", "fp32"), help="model variant of the new collection")
    sp.add_argument("--chunk-tokens", type=int, help="chunk size of the new collection")
    sp.add_argument("--chunk-overlap", type=int, help="chunk overlap of the new collection")
    sp.add_argument("--target-prefix", help="collection prefix of the new collection (default: the alias, or "
                                            "<alias>_c<tokens>o<overlap> when only the chunking changes)")
    sp.add_argument("--fresh", action="store_true", help="drop the new collection first if it exists")
    sp.add_argument("--dlq", action="store_true", help="also write dead letters of the backfill to the DLQ "
                                                       "(default: count only; the live worker already did)")
    sp.add_argument("--max-passes", type=int, default=4, help="catch-up passes after the backfill (default 4)")
    sp.add_argument("--max-rate", type=float, metavar="N", help="at most N events per second")
    sp.add_argument("--batch-size", type=int, metavar="N", help="records per batch")
    progress(sp)
    sp.set_defaults(func=cmd_reindex)
    sp = prefix(common(rsub.add_parser("status", help="phase, counts old vs new, positions and lag")))
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_reindex, quiet=True)
    sp = prefix(common(rsub.add_parser("catchup", help="one more replay pass into the new collection")))
    sp.add_argument("--max-rate", type=float, metavar="N")
    progress(sp)
    sp.set_defaults(func=cmd_reindex)
    sp = prefix(common(rsub.add_parser("swap", help="catch up, check, point the alias at the new collection")))
    sp.add_argument("--force", action="store_true", help="skip the checks")
    sp.add_argument("--query", action="append", help="sample query for the check (repeatable; default: texts "
                                                     "sampled from the old collection)")
    sp.add_argument("--no-catchup", action="store_true", help="do not run a catch-up pass first")
    progress(sp)
    sp.set_defaults(func=cmd_reindex)
    sp = prefix(common(rsub.add_parser("finish", help="after the old workers stopped: final catch-up")))
    sp.add_argument("--force", action="store_true", help="even if the live group still looks active")
    progress(sp)
    sp.set_defaults(func=cmd_reindex)
    sp = prefix(common(rsub.add_parser("rollback", help="point the alias back at the old collection")))
    sp.add_argument("--force", action="store_true", help="even if the live group still looks active")
    progress(sp)
    sp.set_defaults(func=cmd_reindex)

    # offsets ------------------------------------------------------------------------------
    op = sub.add_parser("offsets", help="committed offsets, high-watermarks and lag of the live group; reset",
                        formatter_class=fmt,
                        description="High-watermarks come from fetch responses (ListOffsets is wrong on Tansu).")
    osub = op.add_subparsers(dest="offsets_cmd", required=True)
    sp = common(osub.add_parser("show", help="per partition: committed offset, high-watermark, lag"), store=False)
    sp.add_argument("--group", help="consumer group (default EMBEDSTREAM_APP_ID)")
    sp.add_argument("--topic", help="topic (default: the changes topic)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_offsets)
    sp = common(osub.add_parser(
        "reset", help="move the live group's committed offsets", formatter_class=fmt,
        description="Alter the committed offsets of the live group (AlterConsumerGroupOffsets). Refused while the "
                    "group is active (stop the workers first) unless --force; asks for confirmation unless --yes "
                    "(and refuses without --yes when stdin is not a terminal).",
        epilog="examples:\n  embedstream offsets reset --to-time 2024-05-01T00:00:00Z\n"
               "  embedstream offsets reset --to-offset earliest --yes\n"
               "  embedstream offsets reset --to-offset 0:120,1:0 --partitions 0,1"), store=False)
    g = sp.add_mutually_exclusive_group(required=True)
    g.add_argument("--to-time", metavar="ISO", help="first offset whose record time is >= this time")
    g.add_argument("--to-offset", metavar="N|P:N,...|earliest|latest")
    sp.add_argument("--partitions", metavar="0,3", help="only these partitions")
    sp.add_argument("--group", help="consumer group (default EMBEDSTREAM_APP_ID)")
    sp.add_argument("--topic", help="topic (default: the changes topic)")
    sp.add_argument("--force", action="store_true", help="even if the group looks active")
    sp.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    sp.set_defaults(func=cmd_offsets)

    # drift --------------------------------------------------------------------------------
    dp = sub.add_parser("drift", help="the drift monitors' state: show it; learn a new reference",
                        formatter_class=fmt,
                        description="Reads the drift monitors' state files under <data_dir>/drift/ (one per model "
                                    "fingerprint and collection, written by the worker); needs no broker.\n"
                                    "relearn: after an intended change of what a collection holds (a new product "
                                    "line, a backfill done), or when the warm-up was not a sample of the stream "
                                    "(DRIFT.md section 8), make the worker forget the reference and learn a new one "
                                    "from the next events. Run it where the worker's data directory is.",
                        epilog="examples:\n  embedstream drift status\n"
                               "  embedstream drift relearn --collection embedstream --reason 'catalogue v2 live'\n"
                               "  embedstream drift relearn --collection embedstream__4f1c2a9be0d3 --fingerprint "
                               "all-MiniLM-L6-v2:int8:...\n"
                               "  embedstream drift relearn --all")
    drsub = dp.add_subparsers(dest="drift_cmd", required=True)
    sp = drsub.add_parser("status", help="each watched collection: warm-up, watching, open episode, bursts")
    sp.add_argument("--json", action="store_true", help="one JSON object per state file")
    sp.add_argument("--data-dir", help="the worker's data directory (env EMBEDSTREAM_DATA_DIR)")
    sp.set_defaults(func=cmd_drift)
    sp = drsub.add_parser("relearn", help="make the worker learn a new drift reference for a collection")
    who = sp.add_mutually_exclusive_group(required=True)
    who.add_argument("--collection", help="the collection as `embedstream drift status` names it, or the "
                                          "collection prefix it was made from (EMBEDSTREAM_COLLECTION_PREFIX)")
    who.add_argument("--all", action="store_true", help="every collection with a state file")
    sp.add_argument("--fingerprint", help="with --collection: only the state of this model fingerprint")
    sp.add_argument("--reason", help="why (in the log and in the CLEARED alert of an open episode)")
    sp.add_argument("--data-dir", help="the worker's data directory (env EMBEDSTREAM_DATA_DIR)")
    sp.set_defaults(func=cmd_drift)

    # dlq ----------------------------------------------------------------------------------
    dp = sub.add_parser("dlq", help="show dead letters; re-inject them into the changes topic",
                        formatter_class=fmt,
                        description="Reads the dead-letter topic from the beginning with manual assignment "
                                    "(no group, nothing committed).",
                        epilog="examples:\n  embedstream dlq show --limit 20\n"
                               "  embedstream dlq show --json --reason unknown-schema-fingerprint\n"
                               "  embedstream dlq replay --reason unknown-schema-fingerprint --dry-run\n"
                               "  embedstream dlq replay --reason unknown-schema-fingerprint")
    dsub = dp.add_subparsers(dest="dlq_cmd", required=True)
    for name, hlp in (("show", "print dead letters: reason, detail, source, time, key, value"),
                      ("replay", "re-inject dead letters (original key, value, headers without x-dlq-*)")):
        sp = common(dsub.add_parser(name, help=hlp), store=False)
        sp.add_argument("--reason", help="only dead letters with this x-dlq-reason")
        sp.add_argument("--limit", type=int, metavar="N", help="at most N dead letters")
        sp.add_argument("--from-offset", metavar="N|P:N,...", help="start in the DLQ topic (default: beginning)")
        sp.add_argument("--dlq-topic", help="dead-letter topic (default EMBEDSTREAM_DLQ_TOPIC)")
        if name == "show":
            sp.add_argument("--json", action="store_true", help="one JSON object per line")
        else:
            sp.add_argument("--dry-run", action="store_true", help="list what would be re-injected")
            sp.add_argument("--to-topic", help="topic to re-inject into (default: the changes topic)")
        sp.set_defaults(func=cmd_dlq)
