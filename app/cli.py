"""embedstream command line. `embedstream --help` lists the commands; each has --help."""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from app.config import ConfigError, Settings

log = logging.getLogger("embedstream")
SAMPLE_CORPUS = Path(__file__).resolve().parent / "data" / "sample_corpus.jsonl"

DESCRIPTION = """\
embedstream: streaming embedding of document-change events.

Kafka change events (Avro, keyed by doc_id) are micro-batched into an ONNX
all-MiniLM-L6-v2 encoder and upserted into / deleted from a vector store
(LanceDB embedded by default, Weaviate in production). Offsets are committed only
after the store acknowledged the writes; bad events go to a dead-letter topic.

Settings come from EMBEDSTREAM_* environment variables (see `embedstream config`).
"""

EPILOG = """\
quick start:
  embedstream demo                      embedded broker + LanceDB + sample corpus + searches
  embedstream dev                       embedded broker + worker; produce to the printed address
  embedstream produce docs.jsonl        send change events (JSON lines) to the changes topic
  embedstream search "black holes"      query the store
"""


# ----------------------------------------------------------------------------------------
class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
               "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_json else
                         logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    for noisy in ("aiokafka", "faust", "mode", "httpx", "lance"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def _settings(args, **extra) -> Settings:
    over = {k: getattr(args, k, None) for k in ("bootstrap_servers", "data_dir", "store", "model_variant")}
    over.update(extra)
    return Settings.load(**{k: v for k, v in over.items() if v is not None})


def _progress(done: int, total: int, started: float, what: str) -> None:
    """One-line progress on a TTY; periodic lines otherwise."""
    rate = done / max(time.monotonic() - started, 1e-6)
    eta = (total - done) / rate if rate > 0 and total else 0
    line = f"{what}: {done}/{total} ({rate:.0f}/s, ETA {eta:.0f}s)"
    if sys.stderr.isatty():
        sys.stderr.write("\r" + line.ljust(70))
        if done >= total:
            sys.stderr.write("\n")
    else:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()


# ----------------------------------------------------------------------------------------
def cmd_config(args) -> int:
    s = _settings(args)
    if args.markdown:  # the README's settings table
        print("| variable | default | meaning |\n|---|---|---|")
        for name, value, _, doc in Settings.load(env={}).describe():
            shown = "(empty)" if value in ("", "''") else f"`{value}`"
            print(f"| `{name}` | {shown} | {doc} |")
        return 0
    for name, value, source, doc in s.describe():
        print(f"{name:34s} {value:28s} [{source}]\n    {doc}")
    return 0


def cmd_topics(args) -> int:
    from app.topics import create_topics, existing_topics, load_specs

    s = _settings(args)
    if args.topics_cmd == "create":
        create_topics(s, replication_factor=args.replication_factor)
        return 0
    have = existing_topics(s)
    for spec in load_specs(s):
        state = f"{have[spec.name]} partitions" if spec.name in have else "MISSING"
        print(f"{spec.role:8s} {spec.name:32s} {state}")
    return 0


def cmd_worker(args) -> int:
    from app.agents import run_worker
    from app.components import build_encoder, build_processor
    from app.observability import Health, Metrics, serve
    from app.topics import require_topics

    s = _settings(args)
    setup_logging(s)
    s.kafka_config()  # fails clearly without bootstrap servers
    metrics = Metrics()
    health = Health(metrics, failing_after_s=s.unready_after_s, stall_after_s=s.stall_after_s)
    if s.metrics_port:
        serve(metrics, health, s.metrics_port, s.metrics_host)
    require_topics(s)
    from app.source import topic_incarnations

    cluster_id, incarnations = topic_incarnations(s.kafka_config(), s.input_topics())
    if s.producer_idempotence and cluster_id.startswith("tansu"):
        # the embedded Tansu broker answers InitProducerId with an error: aiokafka's idempotent
        # producer cannot start there (ENVIRONMENT.md section 1)
        log.warning("idempotent producer off: the broker (cluster id %r, the embedded Tansu) cannot give out "
                    "producer ids; dead letters and alerts may be duplicated by producer retries", cluster_id)
        s = s.replace(producer_idempotence=False)
    health.set("broker", True, s.bootstrap_servers)
    health.set("topics", True, ", ".join((s.changes_topic, s.dlq_topic, s.alerts_topic)))
    t = time.perf_counter()
    encoder = build_encoder(s)
    health.set("model", True, f"{encoder.fingerprint} on {encoder.provider}")
    store = _open_store_waiting(s, encoder, health)
    from app.reindex import ReindexError, check_worker_alias

    try:  # never write a collection that searches through the alias do not read
        log.info("%s", check_worker_alias(s, encoder.fingerprint))
    except ReindexError as exc:
        log.error("refusing to consume: %s", exc)
        store.close()
        return 2
    health.set("store", True, repr(store))
    processor = build_processor(s, encoder, store)
    processor.health = health  # store and registry failures (failing/succeeded) show in /readyz
    processor.incarnations = incarnations  # offsets compare only within one topic incarnation
    if s.schema_registry_url:
        # not ready while decodes keep waiting for an unavailable registry (records are retried,
        # never dead-lettered for it); ready again as soon as it answers
        health.set("registry", True, _url_without_credentials(s.schema_registry_url))
    metrics.info.info({"fingerprint": encoder.fingerprint, "provider": encoder.provider,
                       "store": s.store, **_versions()})
    drift = None
    if s.drift_enabled:
        import atexit

        from app.alerts import DriftStage
        from app.drift import DriftConfig

        collection = getattr(store, "collection", s.collection_prefix)
        drift = DriftStage(encoder.fingerprint, collection, Path(s.data_dir) / "drift",
                           DriftConfig(warmup=s.drift_warmup, serial_alpha=s.drift_serial_alpha), encoder=encoder,
                           canary_every=s.drift_canary_every)
        atexit.register(drift.close)
    log.info("worker ready: model %s on %s (%.1fs), store %s, topics %s -> %s",
             processor.fingerprint, processor.encoder.provider, time.perf_counter() - t,
             processor.store, s.changes_topic, s.dlq_topic)
    return run_worker(s, processor, metrics, drift=drift, health=health)


def _open_store_waiting(s: Settings, encoder, health):
    """The worker's store. While it is unavailable (TransientStoreError: down, unreachable, its files
    not there) the worker waits with backoff - not ready, the reason in /readyz - instead of exiting:
    an unavailable store is transient. A permanent problem (another model's collection) still fails."""
    from app.components import open_store
    from app.pipeline import Backoff
    from app.store.base import TransientStoreError

    delays = Backoff().delays()
    started = time.monotonic()
    while True:
        try:
            return open_store(s, encoder.fingerprint, encoder.dim, sole_writer=True)
        except TransientStoreError as exc:
            delay = next(delays)
            health.set("store", False, f"unavailable for {time.monotonic() - started:.0f}s: {exc}")
            log.warning("store unavailable (%s); retrying in %.1fs", exc, delay)
            time.sleep(delay)


def _url_without_credentials(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    u = urlsplit(url)
    if u.username is None and u.password is None:
        return url
    host = u.hostname + (f":{u.port}" if u.port else "")
    return urlunsplit((u.scheme, host, u.path, "", ""))


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in ("embedstream", "onnxruntime", "onnxruntime-gpu", "faust-streaming", "confluent-kafka"):
        try:
            out[dist.replace("-", "_")] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def cmd_produce(args) -> int:
    from app.events import ChangeEvent, Op
    from app.producer import DeliveryError, DocumentProducer

    s = _settings(args)
    src = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")
    lines = [ln for ln in src if ln.strip()]
    producer = DocumentProducer(settings=s, framing=args.framing)
    # every line is parsed and checked before the first is sent: a bad line sends nothing
    events: list[ChangeEvent] = []
    for n, line in enumerate(lines, 1):
        try:
            obj = json.loads(line)
            if obj.get("tombstone"):
                ev = ChangeEvent(doc_id=str(obj["doc_id"]), op=Op.DELETE, version=None, event_time_ms=0)
            else:
                if "version" not in obj and args.version is not None:
                    obj["version"] = args.version
                ev = ChangeEvent.from_json(obj)
            producer.check(ev)  # what the worker would dead-letter is refused here
        except (ValueError, KeyError, AttributeError) as exc:
            print(f"line {n}: {exc}", file=sys.stderr)
            return 2
        events.append(ev)
    started = time.monotonic()
    failure: DeliveryError | None = None
    try:
        for ev in events:
            producer.send(ev)
            if producer.sent % 1000 == 0:
                _progress(producer.sent, len(events), started, "produced")
    except DeliveryError as exc:  # Kafka refused a record: stop sending, report
        failure = exc
    try:
        producer.close()
    except DeliveryError as exc:
        failure = DeliveryError((failure.failures if failure else []) + exc.failures, exc.undelivered)
    if failure is not None:
        print(f"NOT delivered: {len(events) - producer.delivered} of {len(events)}", file=sys.stderr)
        for f in failure.failures[:10]:
            print(f"  {f.doc_id!r}: {f.error}", file=sys.stderr)
        return 1
    print(f"delivered {producer.sent} events to {producer.topic} on {s.bootstrap_servers}", file=sys.stderr)
    return 0


def cmd_alerts(args) -> int:
    import uuid

    from confluent_kafka import Consumer

    from app.alerts import decode_alert_message, format_alert
    from app.events import DecodeError

    s = _settings(args)
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition

    # manual assignment: no consumer-group join (fast) and nothing is ever committed
    consumer = Consumer({**s.kafka_config(), "group.id": f"embedstream-alerts-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False})
    md = consumer.list_topics(s.alerts_topic, timeout=10).topics.get(s.alerts_topic)
    if md is None or md.error is not None:
        print(f"alerts topic {s.alerts_topic} not found; create topics with `embedstream topics create`",
              file=sys.stderr)
        return 2
    start = OFFSET_END if args.follow and not args.from_beginning else OFFSET_BEGINNING
    consumer.assign([TopicPartition(s.alerts_topic, p, start) for p in md.partitions])
    if not args.json:
        mode = "following" if args.follow else "reading"
        print(f"{mode} drift alerts on {s.alerts_topic} ({s.bootstrap_servers}); Ctrl-C stops",
              file=sys.stderr, flush=True)
    idle_since, shown = time.monotonic(), 0
    try:
        while args.follow or time.monotonic() - idle_since < args.idle:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            idle_since = time.monotonic()
            try:
                alert = decode_alert_message(msg.value())
            except (DecodeError, Exception) as exc:  # never stop on one bad record
                print(f"skipping undecodable record at {msg.partition()}@{msg.offset()}: {exc}", file=sys.stderr)
                continue
            print(alert.to_json(indent=None) if args.json else format_alert(alert) + "\n", flush=True)
            shown += 1
            if args.limit and shown >= args.limit:
                break
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


def cmd_search(args) -> int:
    from app.reindex import resolve_search_target
    from app.store.base import StoreError

    s = _settings(args)
    try:
        # the collection the alias points to, encoded with that collection's model
        enc, store = resolve_search_target(s)
    except (StoreError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"no index to search in the {s.store} store "
              f"({s.data_dir if s.store == 'lancedb' else s.weaviate_url}): {exc}", file=sys.stderr)
        return 1
    hits = search_docs(store, enc.encode([args.query])[0], args.k, per_doc=not args.chunks)
    if args.json:
        print(json.dumps([h.__dict__ for h in hits], default=dict, indent=2))
        return 0
    print_hits(args.query, hits)
    return 0


def search_docs(store, vector, k: int, per_doc: bool = True):
    """Top-k hits; with per_doc, only each document's best chunk."""
    if not per_doc:
        return store.search(vector, k=k)
    best = {}
    for h in store.search(vector, k=k * 8):
        best.setdefault(h.doc_id, h)
    return list(best.values())[:k]


def print_hits(query: str, hits) -> None:
    print(f'\nsearch: "{query}"')
    if not hits:
        print("  (no results)")
    for i, h in enumerate(hits, 1):
        title = h.metadata.get("title", "")
        snippet = " ".join(h.text.split())[:110]
        print(f"  {i}. {h.score:.3f}  {h.doc_id} #{h.chunk_index}  {title}")
        print(f"       {snippet}…")


# ----------------------------------------------------------------------------------------
def _spawn_worker(s: Settings, bootstrap: str, log_file: Path) -> subprocess.Popen:
    """The worker of `dev`/`demo`, on the embedded broker: its short session timeout (Tansu holds a
    JoinGroup for half of it) and no idempotent producer (Tansu cannot give out producer ids).

    It runs in its own session, so a Ctrl-C in the terminal reaches only the parent, which stops it
    with SIGTERM (bounded); on Linux it also gets SIGTERM if the parent dies without cleaning up."""
    env = {**os.environ, "EMBEDSTREAM_BOOTSTRAP_SERVERS": bootstrap, "EMBEDSTREAM_DATA_DIR": s.data_dir,
           "EMBEDSTREAM_STORE": s.store, "EMBEDSTREAM_METRICS_PORT": str(s.metrics_port),
           "EMBEDSTREAM_SESSION_TIMEOUT_S": "6", "EMBEDSTREAM_HEARTBEAT_INTERVAL_S": "1",
           "EMBEDSTREAM_PRODUCER_IDEMPOTENCE": "false"}
    if s.model_variant:
        env["EMBEDSTREAM_MODEL_VARIANT"] = s.model_variant
    out = open(log_file, "ab")
    return subprocess.Popen([sys.executable, "-m", "app", "worker"], env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=_die_with_parent())


def _die_with_parent():
    """A preexec_fn: SIGTERM to the child when the parent dies (Linux prctl PR_SET_PDEATHSIG). libc
    is loaded here, before the fork: the child only makes the one system call."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except OSError:
        return None
    return lambda: prctl(1, int(signal.SIGTERM))


def _exit_status(returncode: int) -> int:
    """A child's return code as a shell would report it (killed by signal N: 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


class _Terminated(Exception):
    """SIGTERM reached `embedstream dev`: stop the worker and the broker, then exit."""


def _raise_terminated(signum, frame):
    raise _Terminated()


def _stop(proc: subprocess.Popen, timeout: float = 40) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def cmd_dev(args) -> int:
    from app.broker import EmbeddedBroker
    from app.topics import create_topics

    s = _settings(args)
    setup_logging(s)
    data = Path(s.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    # SIGTERM (a supervisor, `kill`) stops like Ctrl-C does: worker and broker first, nothing orphaned.
    # Ctrl-C is handled whatever the disposition inherited (`replay` installs its own handler too): a
    # shell starts a background job (`&` without job control: scripts, CI runners) with SIGINT
    # ignored, and `dev` would then ignore an interrupt sent on purpose and leave its broker and
    # worker running.
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    broker = EmbeddedBroker(port=args.port, log_path=data / "broker.log")
    worker = None
    try:
        broker.start()
        s = s.replace(bootstrap_servers=broker.bootstrap)
        create_topics(s, replication_factor=1, echo=lambda m: log.info("topic %s", m))
        worker = _spawn_worker(s, broker.bootstrap, data / "worker.log")
        print(f"embedded broker: {broker.bootstrap} (memory only: lost on exit)\n"
              f"worker log:      {data / 'worker.log'}\nstore:           {s.store} in {data}\n"
              f"produce with:    EMBEDSTREAM_BOOTSTRAP_SERVERS={broker.bootstrap} embedstream produce FILE.jsonl\n"
              "Ctrl-C stops the worker and the broker.", flush=True)
        while worker.poll() is None:
            time.sleep(0.5)
        code = _exit_status(worker.returncode)
        print(f"worker exited with code {code}; see {data / 'worker.log'}", file=sys.stderr)
        return code or 1
    except KeyboardInterrupt:
        print("stopping the worker and the broker (Ctrl-C) ...", file=sys.stderr, flush=True)
        return 130
    except _Terminated:
        print("stopping the worker and the broker (SIGTERM) ...", file=sys.stderr, flush=True)
        return 0
    finally:
        # a second Ctrl-C or SIGTERM must not cut the clean-up short (each stop is bounded)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            if worker is not None:
                _stop(worker)
            broker.stop()
        finally:
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous)


def cmd_demo(args) -> int:
    from app.broker import EmbeddedBroker
    from app.components import build_encoder, open_store
    from app.topics import create_topics

    s = _settings(args)
    s = s.replace(data_dir=str(Path(s.data_dir) / "demo"), store="lancedb", metrics_port=0)
    setup_logging(s.replace(log_level="WARNING"))
    data = Path(s.data_dir)
    if data.exists():
        shutil.rmtree(data)  # the demo's own directory: start from an empty index
    data.mkdir(parents=True)
    corpus = Path(args.corpus)
    docs = [json.loads(x) for x in corpus.read_text(encoding="utf-8").splitlines() if x.strip()]
    steps = 6 if args.drift else 5
    if args.drift:  # the worker learns the drift reference on the first DEMO_DRIFT_WARMUP events
        os.environ["EMBEDSTREAM_DRIFT_WARMUP"] = str(DEMO_DRIFT_WARMUP)
        # that warm-up begins with the 60 demo documents (ten topics, whole documents) and goes on
        # with two-sentence events of two topics: a mix that changes within it, which the warm-up's
        # test of serial independence rightly flags (Ljung-Box p ~ 1e-142), leaving the collection
        # watched coarsely. The demo shows the detectors of a collection that passes it.
        os.environ["EMBEDSTREAM_DRIFT_SERIAL_ALPHA"] = "0"
    print(f"1/{steps} starting the embedded Kafka broker (Tansu) ...", flush=True)
    with EmbeddedBroker(log_path=data / "broker.log") as broker:
        s = s.replace(bootstrap_servers=broker.bootstrap)
        create_topics(s, replication_factor=1, echo=lambda m: print("    " + m))
        print(f"2/{steps} starting the worker (Faust + ONNX {s.model_variant or 'int8'} + LanceDB); "
              f"log: {data / 'worker.log'}", flush=True)
        worker = _spawn_worker(s, broker.bootstrap, data / "worker.log")
        try:
            print(f"3/{steps} producing {len(docs)} documents from {corpus.name} to {s.changes_topic}", flush=True)
            lines = "\n".join(json.dumps({**d, "version": 1}) for d in docs)
            rc = subprocess.run([sys.executable, "-m", "app", "produce", "-"], input=lines.encode(),
                                env={**os.environ, "EMBEDSTREAM_BOOTSTRAP_SERVERS": broker.bootstrap}).returncode
            if rc:
                return rc
            enc = build_encoder(s)
            print(f"4/{steps} waiting for the worker to index them (model {enc.fingerprint})", flush=True)
            started, store = time.monotonic(), None

            def count() -> int:  # the worker creates the collection: until then, none indexed
                nonlocal store
                try:
                    store = store or open_store(s, enc.fingerprint, enc.dim, create=False)
                    return store.count_documents()
                except Exception:
                    return 0

            if not _wait_indexed(worker, count, len(docs), args.timeout, data):
                return 1
            took = time.monotonic() - started
            print(f"    {len(docs)} documents, {store.count()} chunks searchable {took:.1f}s after producing",
                  flush=True)
            print(f"5/{steps} searching", flush=True)
            for q in args.query or ["how do black holes form", "best way to proof bread dough",
                                    "what happens in a TCP handshake", "when should I prune roses"]:
                print_hits(q, search_docs(store, enc.encode([q])[0], 3))
            print(f"\ndata: LanceDB tables in {data / 'lancedb'} (collection {store.collection}); "
                  f"logs: {data / 'worker.log'}, {data / 'broker.log'}")
            print(f"search again: EMBEDSTREAM_DATA_DIR={data} embedstream search \"your question\"")
            if args.drift:
                return _demo_drift(s, broker.bootstrap, docs, worker, data, args.timeout, store)
            return 0
        finally:
            _stop(worker)


def _wait_indexed(worker, count, want: int, timeout: float, data: Path, base: int = 0) -> bool:
    """Wait until ``count()`` reaches ``base + want`` documents, with progress (counted from ``base``).
    False, with the reason on stderr, when the demo's worker died or ``timeout`` passed."""
    started, indexed, last = time.monotonic(), base, -1
    while indexed < base + want:
        if worker.poll() is not None:
            print(f"worker died (code {worker.returncode}); see {data / 'worker.log'}", file=sys.stderr)
            return False
        if time.monotonic() - started > timeout:
            print(f"timed out after {timeout:.0f}s with {indexed - base}/{want} indexed; see {data / 'worker.log'}",
                  file=sys.stderr)
            return False
        indexed = count()
        if indexed != last:
            _progress(max(0, indexed - base), want, started, "    indexed")
            last = indexed
        time.sleep(0.25)
    return True


def topic_sentences(docs: list[dict], topics: set[str]) -> list[str]:
    """The sentences of six words or more of the ``docs`` whose ``metadata.topic`` is in ``topics``
    (the material of ``demo --drift``'s events, and of the drift end-to-end tests)."""
    import re

    out = []
    for d in docs:
        if d.get("metadata", {}).get("topic") in topics:
            out += [x.strip() for x in re.split(r"(?<=[.!?])\s+", d["text"]) if len(x.split()) >= 6]
    return out


#: warm-up of the drift monitor in ``demo --drift`` (the worker's default is larger)
DEMO_DRIFT_WARMUP = 1000


def _demo_drift(s: Settings, bootstrap: str, docs: list[dict], worker, data: Path, timeout: float, store) -> int:
    """``demo --drift``: a topic switch through Kafka, until the worker publishes a drift alert.

    Events are two sentences of the bundled corpus: first about astronomy and computer networking
    (the drift monitor learns its reference on the first DEMO_DRIFT_WARMUP events, one vector each,
    the 60 demo documents included), then about cooking and medieval history. The switched events are
    produced once the worker has indexed the others: the changes topic has 8 partitions, read side
    by side, so events produced together reach the monitor in another order than they were
    produced (a partition read ahead would bring switched events early). The worker's drift
    monitor fires a few dozen events after the switch; ``embedstream alerts`` prints the alert.
    """
    import random

    rng = random.Random(16)
    before = topic_sentences(docs, {"astronomy", "computer networking"})
    after = topic_sentences(docs, {"cooking", "medieval history"})
    stable, switched = DEMO_DRIFT_WARMUP + 100, 300
    lines = [json.dumps({"doc_id": f"drift-{i:04d}", "text": " ".join(rng.sample(before if i < stable else after, 2)),
                         "version": 1}) for i in range(stable + switched)]
    print(f"6/6 drift: producing {stable} events about astronomy and networking, then, once they are indexed, "
          f"{switched} about cooking and medieval history (the worker learns its drift reference on the first "
          f"{DEMO_DRIFT_WARMUP} events; its test of serial independence is off here, since that warm-up begins with "
          f"the {len(docs)} demo documents, unlike the events after them - DRIFT.md section 3)",
          flush=True)
    env = {**os.environ, "EMBEDSTREAM_BOOTSTRAP_SERVERS": bootstrap}

    def produce(part) -> int:
        return subprocess.run([sys.executable, "-m", "app", "produce", "-"], input="\n".join(part).encode(), env=env,
                              stdout=subprocess.DEVNULL).returncode

    if rc := produce(lines[:stable]):
        return rc
    # the stable part is through the monitor before the switch is produced
    if not _wait_indexed(worker, store.count_documents, stable, timeout, data, base=len(docs)):
        return 1
    if rc := produce(lines[stable:]):
        return rc
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if worker.poll() is not None:
            print(f"worker died (code {worker.returncode}); see {data / 'worker.log'}", file=sys.stderr)
            return 1
        got = subprocess.run([sys.executable, "-m", "app", "alerts", "--json", "--idle", "2"], env=env,
                             capture_output=True, text=True)
        if any(json.loads(x).get("kind") == "FIRED" for x in got.stdout.splitlines() if x.startswith("{")):
            break
        time.sleep(2)
    else:
        print(f"no drift alert within {timeout:.0f}s; see {data / 'worker.log'}", file=sys.stderr)
        return 1
    print("\n$ embedstream alerts", flush=True)
    return subprocess.run([sys.executable, "-m", "app", "alerts", "--idle", "2"], env=env).returncode


# ----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="embedstream", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", required=True)

    def common(sp, kafka=True, store=True):
        if kafka:
            sp.add_argument("--bootstrap-servers", metavar="HOST:PORT,...",
                            help="Kafka bootstrap servers (env EMBEDSTREAM_BOOTSTRAP_SERVERS)")
        if store:
            sp.add_argument("--data-dir", help="data directory for LanceDB etc. (env EMBEDSTREAM_DATA_DIR)")
            sp.add_argument("--store", choices=("lancedb", "weaviate"), help="vector store (env EMBEDSTREAM_STORE)")
            sp.add_argument("--model-variant", choices=("int8", "fp32"),
                            help="encoder variant (env EMBEDSTREAM_MODEL_VARIANT; default int8 on CPU)")
        return sp

    sp = common(sub.add_parser("worker", help="run the streaming worker against Kafka",
                               description="Consume change events, embed and write them to the store. "
                                           "Needs bootstrap servers and existing topics."))
    sp.set_defaults(func=cmd_worker)

    sp = common(sub.add_parser("dev", help="embedded broker + worker, for development",
                               description="Start the embedded Tansu broker on 127.0.0.1, create the topics "
                                           "and run a worker until Ctrl-C."), kafka=False)
    sp.add_argument("--port", type=int, help="broker port (default: a free one)")
    sp.set_defaults(func=cmd_dev)

    sp = common(sub.add_parser("demo", help="end-to-end demo on the embedded stack",
                               description="Embedded broker + worker + LanceDB: produce the bundled sample "
                                           "corpus through Kafka, wait until it is indexed, run searches."),
                kafka=False)
    sp.add_argument("--corpus", default=str(SAMPLE_CORPUS), help="JSON-lines corpus (default: bundled sample)")
    sp.add_argument("--query", action="append", help="query to run (repeatable)")
    sp.add_argument("--timeout", type=float, default=300, help="seconds to wait for indexing (default 300)")
    sp.add_argument("--drift", action="store_true",
                    help="then switch the topic of a stream of events and show the drift alert the worker "
                         f"publishes (drift warm-up {DEMO_DRIFT_WARMUP}; about a minute more)")
    sp.set_defaults(func=cmd_demo)

    sp = common(sub.add_parser(
        "produce", help="send change events from JSON lines",
        description="Read JSON lines and produce DocumentChange events keyed by doc_id.\n"
                    'Line format: {"doc_id": "a", "version": 3, "op": "UPSERT"|"DELETE", "text": "...", '
                    '"metadata": {...}, "event_time": ms|ISO}\n'
                    '{"doc_id": "a", "tombstone": true} sends a tombstone (null value).\n'
                    "Every line is checked first (what the worker would dead-letter is refused: exit 2, "
                    "nothing sent).\nSent with app.producer.DocumentProducer: key = doc_id, Java-compatible "
                    "partitioner (murmur2), idempotent.\nExit status: 0 all delivered, 1 some not delivered, "
                    "2 bad input or configuration.",
        formatter_class=argparse.RawDescriptionHelpFormatter), store=False)
    sp.add_argument("file", help="JSON-lines file, or - for stdin")
    sp.add_argument("--framing", default="auto", choices=("auto", "single-object", "confluent"),
                    help="wire framing (auto: confluent when a schema registry is configured)")
    sp.add_argument("--version", type=int, help="version for lines that have none")
    sp.set_defaults(func=cmd_produce)

    sp = common(sub.add_parser("search", help="nearest chunks for a query text"), kafka=False)
    sp.add_argument("query")
    sp.add_argument("-k", type=int, default=5, help="number of results (default 5)")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.add_argument("--chunks", action="store_true", help="list chunks, not only each document's best chunk")
    sp.set_defaults(func=cmd_search)

    sp = common(sub.add_parser("alerts", help="print drift alerts from the alerts topic",
                               description="Read drift alerts (Avro DriftAlert records) and print them "
                                           "readably, or as JSON lines with --json."), store=False)
    sp.add_argument("--follow", "-f", action="store_true", help="keep waiting for new alerts (default: "
                                                                 "print what is there and exit)")
    sp.add_argument("--from-beginning", action="store_true", help="with --follow: start at the oldest alert")
    sp.add_argument("--json", action="store_true", help="one JSON object per line")
    sp.add_argument("--limit", type=int, default=0, help="stop after N alerts")
    sp.add_argument("--idle", type=float, default=5.0, help="without --follow: exit after this many idle seconds")
    sp.set_defaults(func=cmd_alerts)

    tp = sub.add_parser("topics", help="create or list the topics from topics/topics.toml")
    tsub = tp.add_subparsers(dest="topics_cmd", required=True)
    sp = common(tsub.add_parser("create", help="create missing topics (idempotent)"), store=False)
    sp.add_argument("--replication-factor", type=int, help="override the spec (1 for a single broker)")
    sp.set_defaults(func=cmd_topics)
    sp = common(tsub.add_parser("list", help="show each topic and whether it exists"), store=False)
    sp.set_defaults(func=cmd_topics)

    sp = common(sub.add_parser("config", help="print every setting, its value and where it came from"))
    sp.add_argument("--markdown", action="store_true", help="print the defaults as the README's Markdown table")
    sp.set_defaults(func=cmd_config)
    from app import cli_ops  # replay, reindex, offsets, dlq
    cli_ops.register(sub, common)
    return p


#: commands that connect to the configured Kafka cluster (dev and demo run their own broker)
KAFKA_COMMANDS = frozenset({"worker", "topics", "produce", "alerts", "replay", "reindex", "offsets", "dlq"})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd in KAFKA_COMMANDS:
            from app.security import check_kafka_auth

            # a refused password or certificate: one line (exit 2), not librdkafka's retry log
            check_kafka_auth(_settings(args))
        return args.func(args) or 0
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from app.topics import TopicsMissing

        if isinstance(exc, TopicsMissing):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
