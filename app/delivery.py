"""The delivery loop: batches from a :class:`~app.source.BatchSource` through the Processor, acked
only after the store (and Kafka, for dead letters and alerts) acknowledged them. No Faust here.

Per batch: ``prepare`` (decode, plan, encode) runs in the encode thread while the previous batch's
``commit`` (the store writes, then the drift monitor) runs in the store thread. Settling a batch
publishes its drift alerts, checks the dead-letter limit, sends its dead letters and waits for
Kafka's acknowledgement, and only then acks its records to the source.

What can go wrong, and what happens (README, "Guarantees"):

* **Transient store errors** are retried inside ``commit`` with backoff, for as long as it takes;
  while retrying, no new batch is taken (at most one more is prepared), so the consumer pauses.
* **Revocation** (a rebalance): batches not written yet are abandoned at once; the batch being
  written gets ``revoke_grace_s`` to finish (it is acked and committed if it does), else it is
  abandoned: its remaining store calls are not made, it is never acked, and the partition's new
  owner reads it again from the committed offset. The rebalance therefore finishes within the
  rebalance timeout even while the store is down.
* **Anything else** (a bug, a plugin raising, a permanent store error without per-object errors, a
  dead letter or alert that Kafka did not acknowledge, the drift stage failing): the worker **fails
  closed**. The failed batch and everything after it is abandoned (documents held by a prepared
  batch are released), nothing of it is acked, ``/readyz`` turns 503, and :class:`DeliveryFailed`
  ends the loop; the worker then exits with :data:`EXIT_FAILED` after committing what was acked
  before. The orchestrator restarts it and Kafka redelivers the batch. A restart clears every
  in-process state the failure may have left behind; redoing the batch in-process would retry a
  deterministic bug forever while looking alive.
* **Dead-letter limit** (:mod:`app.dlq_limit`): a partition whose dead letters cross the limit
  stops being consumed; the crossing batch is not acked there; readiness says why.
* **Shutdown** (:meth:`Delivery.drain`): no new batch; the batch being written gets
  ``shutdown_grace_s``; then it is abandoned (exit :data:`EXIT_BATCH_ABANDONED`).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from dataclasses import dataclass

from app.dlq_limit import Breach, DeadLetterLimiter
from app.pipeline import Interrupted
from app.source import TP, Batch, BatchSource, tp_of

log = logging.getLogger("embedstream.worker")

#: exit status after a failure the worker cannot handle (EX_SOFTWARE): nothing past it was acked
EXIT_FAILED = 70
#: exit status when shutdown had to give up an in-flight batch (store unavailable); nothing of it
#: was acked, so it is redelivered to the next worker
EXIT_BATCH_ABANDONED = 75


class DeliveryFailed(Exception):
    """A failure the worker cannot handle: stop without acking (exit :data:`EXIT_FAILED`)."""


@dataclass
class DeliveryConfig:
    app_id: str
    dlq_topic: str
    alerts_topic: str
    max_events: int = 256
    linger_s: float = 0.01
    #: how long a revocation waits for the batch being written before abandoning it
    revoke_grace_s: float = 20.0
    #: how long a shutdown waits for the batch being written
    shutdown_grace_s: float = 30.0
    #: how often lag and progress are exported
    health_interval_s: float = 5.0


class _InFlight:
    __slots__ = ("batch", "commit", "t0", "done")

    def __init__(self, batch: Batch, commit: asyncio.Future, t0: float):
        self.batch, self.commit, self.t0 = batch, commit, t0
        self.done = asyncio.Event()


class Delivery:
    """One worker's loop over a source. ``run()`` returns when the source stops."""

    def __init__(self, source: BatchSource, processor, config: DeliveryConfig, *, drift=None, metrics=None,
                 health=None, limiter: DeadLetterLimiter | None = None, on_batch=None,
                 encode_pool: concurrent.futures.Executor | None = None,
                 store_pool: concurrent.futures.Executor | None = None):
        self.source, self.processor, self.config = source, processor, config
        self.drift, self.metrics, self.health, self.on_batch = drift, metrics, health, on_batch
        self.limiter = limiter or DeadLetterLimiter()
        # two stages, one thread each: while batch N is written (and fed to the drift monitor),
        # batch N+1 is decoded, planned and encoded - the encoder does not wait for the store
        self.encode_pool = encode_pool or concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="embed")
        self.store_pool = store_pool or concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store")
        self._in_flight: _InFlight | None = None
        self._preparing: tuple[Batch, asyncio.Future] | None = None
        self._stopping = False
        self._failure: BaseException | None = None
        #: partitions stopped by the dead-letter limit (kept across rebalances)
        self.tripped: dict[TP, Breach] = {}
        self.last_progress = time.monotonic()
        self._lag_labels: set[TP] = set()
        source.listener = self

    # -- the loop -------------------------------------------------------------------------
    async def run(self) -> None:
        """Process batches until the source stops; raises :class:`DeliveryFailed` on a failure."""
        loop = asyncio.get_running_loop()
        watcher = asyncio.ensure_future(self._watch())
        try:
            async for batch in self.source.batches(self.config.max_events, self.config.linger_s,
                                                   on_idle=self._idle):
                if self._stopping:
                    break
                batch = self._admit(batch)
                if not batch.records:
                    continue
                t0 = time.perf_counter()
                prepare = loop.run_in_executor(self.encode_pool, self._prepare, batch)
                self._preparing = (batch, prepare)
                try:
                    await self._settle()  # batch N's write, while batch N+1 is prepared
                    prepared = await asyncio.shield(prepare)
                except Interrupted:
                    if not batch.abandoned or self._failure is not None:
                        self._discard(batch, prepare)
                        raise
                    self._abandoned(batch, "revoked")  # while it waited for the previous batch
                    continue
                except BaseException:
                    self._discard(batch, prepare)
                    raise
                finally:
                    self._preparing = None
                if batch.abandoned or self._stopping:
                    # revoked or shutting down meanwhile: a prepared batch has written nothing
                    self.processor.abandon(prepared)
                    self._abandoned(batch, "revoked" if not self._stopping else "shutdown")
                    continue
                commit = loop.run_in_executor(self.store_pool, self._commit, prepared)
                self._in_flight = _InFlight(batch, commit, t0)
            await self._settle()
        except DeliveryFailed:
            raise
        except Interrupted:
            if self._stopping:
                return
            raise self._fail(RuntimeError("processing was interrupted outside a shutdown"))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - anything else fails closed
            raise self._fail(exc) from exc
        finally:
            watcher.cancel()

    def _prepare(self, batch: Batch):
        if batch.abandoned:
            raise Interrupted("batch abandoned before it was prepared")
        return self.processor.prepare(batch.records, cancel=batch.cancel)

    def _commit(self, prepared):
        """Store thread: write the batch, then feed its vectors to the drift monitor."""
        result = self.processor.commit(prepared)
        alerts = self.drift.observe(result) if self.drift is not None else []
        return result, alerts

    def _admit(self, batch: Batch) -> Batch:
        """Drop records of partitions the dead-letter limit stopped (never acked, never processed)."""
        stopped = [tp for tp in batch.partitions if tp in self.tripped]
        if stopped:
            self.source.abandon(batch, stopped)
            batch = batch.without(stopped)
        return batch

    def _discard(self, batch: Batch, prepare: asyncio.Future) -> None:
        """A batch being prepared will not be written: release its documents when prepare ends."""
        batch.cancel.set()
        self.source.abandon(batch)

        def release(fut: asyncio.Future) -> None:
            if not fut.cancelled() and fut.exception() is None:
                self.processor.abandon(fut.result())
        prepare.add_done_callback(release)

    # -- settling a written batch -----------------------------------------------------------
    async def _idle(self) -> None:
        """Nothing buffered: settle the batch being written, then publish what the drift stage
        still holds - events its micro-batching kept back, a canary alert from start-up - so a
        quiet stream does not delay them until the next event. In the store thread, where the
        drift stage always runs (it is not thread-safe)."""
        await self._settle()
        flush = getattr(self.drift, "flush", None)
        if flush is not None and self._in_flight is None and not self._stopping:
            alerts = await asyncio.get_running_loop().run_in_executor(self.store_pool, flush)
            await self._publish_alerts(alerts)

    async def _settle(self) -> None:
        """Wait for the batch being written; publish its alerts and dead letters; ack it."""
        f = self._in_flight
        if f is None:
            return
        try:
            try:
                result, alerts = await asyncio.shield(f.commit)
            except Interrupted:
                if f.batch.abandoned:
                    self._abandoned(f.batch, "store retries given up")
                    return
                raise
            await self._publish_alerts(alerts)
            if f.batch.abandoned:  # written, but revoked meanwhile: the new owner redoes it
                self._abandoned(f.batch, "written after revocation")
                return
            acked = await self._finish(f.batch, result)
            elapsed = time.perf_counter() - f.t0
            self._observe(f.batch, result, elapsed, acked)
            if self.on_batch is not None:
                await self.on_batch(result)
        finally:
            self._in_flight = None
            f.done.set()

    async def _finish(self, batch: Batch, result) -> set[TP]:
        """Dead-letter limit, dead letters acknowledged by Kafka, then ack. Returns the acked partitions."""
        dead = {(d.record.topic, d.record.partition, d.record.offset): d.reason for d in result.dead_letters}
        # a partition stopped while this batch was prepared: its records are not counted again
        # (nor dead-lettered, nor acked: abandoned below)
        counted = [r for r in batch.records if tp_of(r) not in self.tripped]
        breaches = self.limiter.check_batch(counted, dead)
        for tp, breach in breaches.items():
            self._trip(breach)
        ok = set(batch.partitions) - set(self.tripped)
        letters = [d for d in result.dead_letters if tp_of(d.record) in ok]
        if letters:
            await self.source.send(self.config.dlq_topic, [(d.record.key, d.record.value, d.headers(self.config.app_id))
                                                           for d in letters])
            for d in letters:
                log.warning("dead letter %s:%d@%d reason=%s %s", d.record.topic, d.record.partition,
                            d.record.offset, d.reason, d.detail[:200])
        if ok != set(batch.partitions):
            self.source.abandon(batch, set(batch.partitions) - ok)
        if ok:
            await self.source.ack(batch, ok)
            self.last_progress = time.monotonic()
            if self.health is not None:
                self.health.progress()
        return ok

    async def _publish_alerts(self, alerts) -> None:
        """Publish drift alerts and wait for Kafka's acknowledgement (before the batch is acked)."""
        if not alerts:
            return
        from app.alerts import encode_alert_message

        await self.source.send(self.config.alerts_topic, [(a.kafka_key, encode_alert_message(a), ()) for a in alerts])
        for a in alerts:
            log.warning("drift alert %s %s %s on %s: %s", a.kind.value, a.severity.value, a.collection,
                        ",".join(a.signals), a.message)
            if self.metrics is not None:
                self.metrics.drift_alerts.labels(a.kind.value, a.severity.value).inc()
                if a.kind.value in ("FIRED", "CLEARED"):  # an episode opens or closes (not ENCODER_CHANGED)
                    self.metrics.drift_active.set(1 if a.kind.value == "FIRED" else 0)

    def _observe(self, batch: Batch, result, elapsed: float, acked: set[TP]) -> None:
        m = self.metrics
        if m is not None:
            m.observe_batch(result, elapsed, int(time.time() * 1000))
            if self.drift is not None:
                m.drift_warming_up.set(1 if self.drift.monitor.warming_up else 0)
                m.drift_serially_dependent.set(1 if self.drift.monitor.serially_dependent else 0)
                m.drift_observed.set(self.drift.monitor.n_seen)
        c = result.counts
        log.info("batch events=%d written=%d deleted=%d stale=%d duplicate=%d dead_lettered=%d "
                 "chunks_encoded=%d chunks_written=%d encode_ms=%.0f store_ms=%.0f total_ms=%.0f",
                 result.records, c["written"], c["deleted"], c["stale"], c["duplicate"],
                 c["dead_lettered"], result.chunks_encoded, result.chunks_written,
                 result.encode_s * 1e3, result.store_s * 1e3, elapsed * 1e3)

    def _abandoned(self, batch: Batch, why: str) -> None:
        batch.cancel.set()
        self.source.abandon(batch)
        log.warning("abandoned %r unacked (%s): it will be redelivered", batch, why)
        if self.metrics is not None:
            self.metrics.batches_abandoned.labels(why.split(" ")[0]).inc()

    def _trip(self, breach: Breach) -> None:
        topic, partition = breach.tp
        self.tripped[breach.tp] = breach
        self.source.pause([breach.tp])
        reasons = ", ".join(f"{r} x{n}" for r, n in breach.reasons.items())
        lim = self.limiter.limit
        msg = (f"dead-letter limit reached on {topic}[{partition}] at offset {breach.offset}: {breach.detail}"
               f"{' (' + reasons + ')' if reasons else ''}")
        log.error("%s. Consumption of %s[%d] is stopped and nothing from this batch on is committed there. "
                  "This looks like a systematic fault, not bad input: check the dead letters "
                  "(`embedstream dlq show --json`), fix the cause and restart the worker. If the records really "
                  "are bad, raise EMBEDSTREAM_DLQ_MAX_CONSECUTIVE (now %d) / EMBEDSTREAM_DLQ_MAX_SHARE (now %.2f) "
                  "and restart.", msg, topic, partition, lim.max_consecutive, lim.max_share)
        if self.health is not None:
            self.health.block(f"dead-letter-limit {topic}[{partition}]", msg)
        if self.metrics is not None:
            self.metrics.dlq_limit_stopped.labels(topic, str(partition)).set(1)

    def _fail(self, exc: BaseException) -> DeliveryFailed:
        """Fail closed: abandon everything not acked, report not ready, end the loop."""
        if self._failure is None:
            self._failure = exc
            detail = f"{type(exc).__name__}: {exc}"
            log.error("worker failed: %s. Nothing from the failed batch on is acked; the worker stops (exit %d) "
                      "so the orchestrator restarts it and Kafka redelivers the batch. If it fails again on the "
                      "same records, the log above names the cause (a plugin, the store, the drift stage).",
                      detail, EXIT_FAILED, exc_info=exc)
            if self._preparing is not None:
                self._discard(*self._preparing)
            if self._in_flight is not None:
                self._in_flight.batch.cancel.set()
                self.source.abandon(self._in_flight.batch)
            if self.health is not None:
                self.health.set("delivery", False, f"failed: {detail}")
        return exc if isinstance(exc, DeliveryFailed) else DeliveryFailed(str(exc))

    # -- rebalance and shutdown ---------------------------------------------------------------
    async def on_revoked(self, tps: set[TP]) -> None:
        """Bounded: batches of ``tps`` not written yet are abandoned; the one being written gets
        ``revoke_grace_s`` to finish and be acked, then it is abandoned too."""
        t0 = time.monotonic()
        if self._preparing is not None and set(self._preparing[0].partitions) & tps:
            batch, _ = self._preparing
            batch.cancel.set()
            self.source.abandon(batch)
        f = self._in_flight
        if f is not None and set(f.batch.partitions) & tps:
            try:
                await asyncio.wait_for(asyncio.shield(f.done.wait()), self.config.revoke_grace_s)
            except asyncio.TimeoutError:
                f.batch.cancel.set()
                self.source.abandon(f.batch)
                log.warning("rebalance: %r was not written within %.0fs (store unavailable?); abandoning it "
                            "unacked so the rebalance can finish", f.batch, self.config.revoke_grace_s)
        self.limiter.forget(tps)
        log.info("partitions revoked: %s (%.1fs)", _fmt(tps), time.monotonic() - t0)

    async def on_assigned(self, tps: set[TP]) -> None:
        again = [tp for tp in tps if tp in self.tripped]
        if again:
            self.source.pause(again)
        self.last_progress = time.monotonic()  # a new assignment starts its own progress clock
        if self.health is not None:
            self.health.progress()
        log.info("partitions assigned: %s", _fmt(tps))

    async def drain(self, grace_s: float | None = None) -> bool:
        """Stop taking batches; give the batch being written ``grace_s``. True when it settled."""
        self._stopping = True
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        if self._preparing is not None:
            self._preparing[0].cancel.set()
            self.source.abandon(self._preparing[0])
        f = self._in_flight
        if f is None:
            return True
        try:
            await asyncio.wait_for(asyncio.shield(f.done.wait()), grace)
            return True
        except asyncio.TimeoutError:
            f.batch.cancel.set()
            self.source.abandon(f.batch)
            self.processor.stop()
            log.error("shutdown: %r did not finish within %.0fs (store unavailable?); exiting without acking "
                      "it - it will be redelivered", f.batch, grace)
            return False

    # -- lag and progress -----------------------------------------------------------------------
    async def _watch(self) -> None:
        while True:
            try:
                await self.export_lag()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the exporter take the loop down
                log.debug("lag export failed: %s", exc)
            await asyncio.sleep(self.config.health_interval_s)

    async def export_lag(self) -> int | None:
        """Lag of every assigned partition (committed or acked position to the high-watermark)."""
        positions = await self.source.positions()
        total, known = 0, False
        for tp, (committed, hw) in positions.items():
            if hw is None:
                continue
            acked = self.source.acked_position(tp)
            base = max(p for p in (committed, acked, 0) if p is not None)
            lag = max(0, hw - base)
            total += lag
            known = True
            if self.metrics is not None:
                self.metrics.lag.labels(tp[0], str(tp[1])).set(lag)
        if self.metrics is not None:
            for tp in self._lag_labels - set(positions):
                try:
                    self.metrics.lag.remove(tp[0], str(tp[1]))
                except KeyError:
                    pass
        self._lag_labels = set(positions)
        if self.health is not None and known:
            self.health.lag(total)
        return total if known else None


def _fmt(tps) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in sorted(tps)) or "(none)"
