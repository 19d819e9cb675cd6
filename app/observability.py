"""Metrics (Prometheus) and health endpoints of the worker.

The HTTP server starts before the model is loaded, so orchestrators see a live but
not-ready worker while it loads:

* ``GET /metrics`` - Prometheus text format;
* ``GET /livez``   - 200 while the process serves requests;
* ``GET /readyz``  - 200 only when every check passes (JSON body lists each check), 503 otherwise.

Readiness (:class:`Health`) is not only "it started": it answers 503 when

* a start-up check (broker, topics, store, model) has not passed, or a check was set failed
  (``health.set(name, False, detail)``, e.g. ``delivery`` after a failure the worker cannot handle);
* a dependency **keeps failing**: ``health.failing(name, detail)`` marks each failed attempt and
  ``health.succeeded(name)`` the next success; the check fails once the failures have lasted
  ``failing_after_s`` (``EMBEDSTREAM_UNREADY_AFTER_S``) without a success in between. The
  pipeline reports the store this way (every retried store call); the schema registry can too;
* something **blocks** consumption (``health.block(key, detail)``, e.g. the dead-letter limit);
* the worker **has lag but makes no progress**: the delivery loop reports each acked batch
  (``health.progress()``) and the lag of its partitions on a timer (``health.lag(total)``); with
  lag > 0 and no acked batch for ``stall_after_s`` (``EMBEDSTREAM_STALL_AFTER_S``) the
  ``progress`` check fails.

Gauges ``embedstream_ready`` and ``embedstream_seconds_since_progress`` are computed when scraped.

Metric names start with ``embedstream_``; histograms expose p50/p95 through
``histogram_quantile`` in Prometheus/Grafana. Label values never contain secrets.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
FRESHNESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60, 300, 1800, 3600)


class Metrics:
    """All worker metrics in one registry (a fresh registry per instance keeps tests isolated)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        r = self.registry = registry or CollectorRegistry()
        self.events = Counter("embedstream_events", "Change events by op and outcome "
                              "(written, deleted, stale, duplicate, superseded, noop, dead_lettered)",
                              ["op", "outcome"], registry=r)
        self.dead_letters = Counter("embedstream_dead_letters", "Dead letters by reason", ["reason"], registry=r)
        self.unchanged_reused = Counter("embedstream_unchanged_reused", "Documents whose stored vectors were "
                                        "reused because the content did not change", registry=r)
        self.chunks_encoded = Counter("embedstream_chunks_encoded", "Chunks embedded by the encoder", registry=r)
        self.chunks_written = Counter("embedstream_chunks_written", "Chunk objects written to the store", registry=r)
        self.cache_hits = Counter("embedstream_embedding_cache_hits", "Chunks whose vector came from the "
                                  "embedding cache (hit rate = hits / (hits + chunks_encoded))", registry=r)
        self.scrubbed = Counter("embedstream_scrubbed", "Personal data replaced before embedding, by kind",
                                ["kind"], registry=r)
        self.store_retries = Counter("embedstream_store_retries", "Transient store failures retried", registry=r)
        self.batch_size = Histogram("embedstream_batch_size_events", "Events per micro-batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=r)
        self.encode_seconds = Histogram("embedstream_encode_seconds", "Encoder time per batch",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.store_seconds = Histogram("embedstream_store_write_seconds", "Store write time per batch "
                                       "(until acknowledged)", buckets=LATENCY_BUCKETS, registry=r)
        self.batch_seconds = Histogram("embedstream_batch_seconds", "Total processing time per batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.freshness = Histogram("embedstream_freshness_seconds", "Event time to store acknowledgement "
                                   "(event -> searchable)", buckets=FRESHNESS_BUCKETS, registry=r)
        self.record_freshness = Histogram("embedstream_record_freshness_seconds", "Kafka record timestamp to "
                                          "store acknowledgement", buckets=FRESHNESS_BUCKETS, registry=r)
        self.drift_alerts = Counter("embedstream_drift_alerts", "Drift alerts published", ["kind", "severity"],
                                    registry=r)
        self.drift_active = Gauge("embedstream_drift_active", "1 while a drift episode is open", registry=r)
        self.drift_warming_up = Gauge("embedstream_drift_warming_up", "1 while the drift reference is being "
                                      "learned", registry=r)
        self.drift_serially_dependent = Gauge("embedstream_drift_serially_dependent", "1 when the drift "
                                              "warm-up found the collection fed in bursts (serially dependent): "
                                              "wider PageHinkley thresholds, the shift scan not watched "
                                              "(DRIFT.md section 3)", registry=r)
        self.drift_observed = Gauge("embedstream_drift_vectors_observed", "Vectors seen by the drift monitor "
                                    "(one per event: the mean of its chunks)", registry=r)
        self.lag = Gauge("embedstream_consumer_lag", "Records between the committed (or acked) position and "
                         "the fetch high-watermark, per assigned partition (refreshed on a timer)",
                         ["topic", "partition"], registry=r)
        self.seconds_since_progress = Gauge("embedstream_seconds_since_progress", "Seconds since the "
                                            "worker last acked a batch (or got an assignment)", registry=r)
        self.batches_abandoned = Counter("embedstream_batches_abandoned", "Batches given up unacked (revoked, "
                                         "store retries given up, shutdown); they are redelivered", ["why"],
                                         registry=r)
        self.dlq_limit_stopped = Gauge("embedstream_dlq_limit_stopped", "1 for a partition whose consumption "
                                       "the dead-letter limit stopped", ["topic", "partition"], registry=r)
        self.ready = Gauge("embedstream_ready", "1 when the worker is ready", registry=r)
        self.info = Info("embedstream", "Model fingerprint, execution provider and versions", registry=r)

    def observe_batch(self, result, batch_seconds: float, now_ms: int) -> None:
        """Record one processed batch (a pipeline.BatchResult)."""
        for (op, outcome), n in result.outcomes.items():
            self.events.labels(op, outcome).inc(n)
        for d in result.dead_letters:
            self.dead_letters.labels(d.reason).inc()
        self.unchanged_reused.inc(result.counts.get("unchanged_reused", 0))
        self.chunks_encoded.inc(result.chunks_encoded)
        self.cache_hits.inc(result.cache_hits)
        for kind, n in result.scrubbed.items():
            self.scrubbed.labels(kind).inc(n)
        self.chunks_written.inc(result.chunks_written)
        self.store_retries.inc(result.store_retries)
        self.batch_size.observe(result.records)
        if result.chunks_encoded:
            self.encode_seconds.observe(result.encode_s)
        self.store_seconds.observe(result.store_s)
        self.batch_seconds.observe(batch_seconds)
        for event_ms, record_ms in result.applied_times:
            if event_ms > 0:
                self.freshness.observe(max(0.0, (now_ms - event_ms) / 1000))
            if record_ms > 0:
                self.record_freshness.observe(max(0.0, (now_ms - record_ms) / 1000))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Health:
    """Readiness of the worker: named checks plus time-based rules (see the module docstring).

    Thread-safe; every method is cheap (the store thread reports each retried call).
    """

    CHECKS = ("broker", "topics", "store", "model")

    def __init__(self, metrics: Metrics | None = None, *, failing_after_s: float = 30.0,
                 stall_after_s: float = 120.0, clock=time.monotonic):
        self._state = {c: False for c in self.CHECKS}
        self._detail: dict[str, str] = {}
        self._failing: dict[str, tuple[float, str]] = {}  # check -> (failing since, last detail)
        self._blocks: dict[str, str] = {}
        self._lock = threading.Lock()
        self._metrics = metrics
        self.failing_after_s = failing_after_s
        self.stall_after_s = stall_after_s
        self._clock = clock
        self._last_progress = clock()
        self._lag: int | None = None
        if metrics is not None:
            metrics.ready.set_function(lambda: 1 if self.ready else 0)
            metrics.seconds_since_progress.set_function(self.seconds_since_progress)

    # -- reporting ------------------------------------------------------------------------
    def set(self, check: str, ok: bool, detail: str = "") -> None:
        """A check's state, effective at once (any name; new names become checks)."""
        with self._lock:
            self._state[check] = ok
            self._detail[check] = detail

    def failing(self, check: str, detail: str) -> None:
        """One more failed attempt of ``check`` (it fails once failures last ``failing_after_s``)."""
        with self._lock:
            since = self._failing.get(check, (self._clock(), ""))[0]
            self._failing[check] = (since, detail)

    def succeeded(self, check: str) -> None:
        """``check`` worked again: its failing streak ends."""
        if check in self._failing:  # unlocked fast path: the store thread calls this per store call
            with self._lock:
                self._failing.pop(check, None)

    def block(self, key: str, detail: str) -> None:
        """Not ready until :meth:`unblock` (e.g. consumption stopped by the dead-letter limit)."""
        with self._lock:
            self._blocks[key] = detail

    def unblock(self, key: str) -> None:
        with self._lock:
            self._blocks.pop(key, None)

    def progress(self) -> None:
        """A batch was acked (or partitions were assigned): the stall clock restarts."""
        self._last_progress = self._clock()

    def lag(self, total: int | None) -> None:
        """Total lag of the assigned partitions (None: unknown)."""
        self._lag = total

    def seconds_since_progress(self) -> float:
        return max(0.0, self._clock() - self._last_progress)

    # -- reading --------------------------------------------------------------------------
    def _evaluate(self) -> dict[str, tuple[bool, str]]:
        now = self._clock()
        out = {c: (ok, self._detail.get(c, "")) for c, ok in self._state.items()}
        for check, (since, detail) in self._failing.items():
            lasted = now - since
            if lasted >= self.failing_after_s:
                out[check] = (False, f"failing for {lasted:.0f}s: {detail}")
        for key, detail in self._blocks.items():
            out[key] = (False, detail)
        idle = now - self._last_progress
        if self._lag is not None and self._lag > 0 and idle >= self.stall_after_s:
            out["progress"] = (False, f"lag {self._lag} records and no batch acked for {idle:.0f}s "
                                      f"(limit {self.stall_after_s:.0f}s)")
        else:
            lag = "unknown" if self._lag is None else str(self._lag)
            out["progress"] = (True, f"lag {lag}, last progress {idle:.0f}s ago")
        return out

    @property
    def ready(self) -> bool:
        with self._lock:
            return all(ok for ok, _ in self._evaluate().values())

    def report(self) -> dict:
        with self._lock:
            checks = self._evaluate()
        return {"ready": all(ok for ok, _ in checks.values()),
                "checks": {c: {"ok": ok, "detail": d} for c, (ok, d) in checks.items()}}


def serve(metrics: Metrics, health: Health, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Start the /metrics, /livez, /readyz server on a daemon thread; returns the server."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, metrics.render(), CONTENT_TYPE_LATEST)
            elif path == "/livez":
                self._send(200, b'{"live": true}\n', "application/json")
            elif path == "/readyz":
                rep = health.report()
                self._send(200 if rep["ready"] else 503, (json.dumps(rep) + "\n").encode(), "application/json")
            else:
                self._send(404, b"not found: try /metrics, /livez, /readyz\n", "text/plain")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # keep scrapes out of the logs
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    log.info("metrics and health on http://%s:%d (/metrics /livez /readyz)", host, server.server_address[1])
    return server
