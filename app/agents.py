"""Faust wiring (thin): changes topic -> micro-batches -> Processor -> ack.

Acking: ``stream.take()`` acks each buffered event as soon as the next one is read,
i.e. before the batch is processed - a crash mid-batch would then commit offsets of
events that never reached the store. We take batches without acking (``take_batches``) and ack every
event of a batch only after the store acknowledged its writes and its dead letters
(if any) were acknowledged by Kafka. Faust commits acked offsets periodically and on
rebalance/shutdown, so a crash re-delivers at most the unacked batches (at least once;
writes are idempotent).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time

import faust
from faust.transport.drivers import aiokafka as _aiokafka_driver

from app.config import Settings
from app.deadletter import Record
from app.pipeline import Interrupted

log = logging.getLogger("embedstream.worker")
#: how long SIGTERM waits for the in-flight batch to finish before giving up on it
SHUTDOWN_GRACE_S = 30.0


def _broker_url(servers: str) -> str:
    return ";".join(f"kafka://{s.strip()}" for s in servers.split(",") if s.strip())


def _headers(msg) -> tuple[tuple[str, bytes], ...]:
    h = msg.headers or ()
    items = h.items() if isinstance(h, dict) else h
    return tuple((k, v if isinstance(v, bytes) else str(v).encode()) for k, v in items)


def to_record(event) -> Record:
    m = event.message
    return Record(topic=m.topic, partition=m.partition, offset=m.offset, key=m.key, value=m.value,
                  headers=_headers(m), timestamp_ms=int((m.timestamp or 0) * 1000))


def _transport_with_fetch_wait(fetch_max_wait_ms: int) -> type:
    """Faust's aiokafka transport, with the worker consumer's ``fetch_max_wait_ms`` configurable.

    Faust builds its consumer with a fixed ``fetch_max_wait_ms=1500``. On Kafka that is only how
    long an idle fetch waits (a fetch returns as soon as data arrives); brokers that do hold a
    fetch for the whole wait (the embedded Tansu) add up to that much latency to every event.
    """

    class ConsumerThread(_aiokafka_driver.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport):
            consumer = super()._create_worker_consumer(transport)
            # AIOKafkaConsumer.start() hands this to its Fetcher (checked in tests/test_agents.py)
            consumer._fetch_max_wait_ms = fetch_max_wait_ms
            return consumer

    class Consumer(_aiokafka_driver.Consumer):
        def _new_consumer_thread(self):
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    class Transport(_aiokafka_driver.Transport):
        pass

    Transport.Consumer = Consumer
    return Transport


class _App(faust.App):
    def __init__(self, *args, fetch_max_wait_ms: int = 1500, **kwargs):
        self.fetch_max_wait_ms = fetch_max_wait_ms
        super().__init__(*args, **kwargs)

    def _new_transport(self):
        transport = super()._new_transport()
        if type(transport) is _aiokafka_driver.Transport:
            transport = _transport_with_fetch_wait(self.fetch_max_wait_ms)(self.conf.broker_consumer, self)
        return transport


async def take_batches(stream, max_events: int, linger_s: float, on_idle=None):
    """Micro-batches of a Faust stream, unacked (the caller acks after the store acknowledged).

    Unlike ``stream.noack_take(max, within)`` - which after every batch waits ``within`` seconds
    again unless ``max`` events are buffered - this batches naturally: events that arrived while
    the previous batch was being processed are taken at once (so batches grow with the load and
    the encoder never idles on a timer), and on an idle worker the first event is followed by at
    most ``linger_s`` of waiting for more. At most ``max_events`` per batch. ``on_idle`` (async)
    runs whenever nothing is buffered, before waiting for the next event.
    """
    buffer: list = []
    arrived = asyncio.Event()
    full = asyncio.Event()
    drained = asyncio.Event()

    async def add_to_buffer(value):
        try:
            event = stream.current_event
            if event is None:
                raise RuntimeError("take_batches: stream has no current event")
            buffer.append(event)
            arrived.set()
            if len(buffer) >= max_events:
                full.set()
                drained.clear()
                await stream.wait(drained)  # back-pressure: the stream stops reading until we take them
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            stream.log.exception("Error adding to the batch buffer: %r", exc)
            await stream.crash(exc)
        return value

    enable_acks = stream.enable_acks
    stream.enable_acks = False  # acks are manual (after the store acknowledged)
    stream.add_processor(add_to_buffer)
    stream._enable_passive(aiter(stream.channel))
    try:
        while not stream.should_stop:
            if not buffer and on_idle is not None:
                await on_idle()
            if not buffer:  # idle: wait for an event, then linger briefly for company
                await stream.wait_for_stopped(arrived)
                if linger_s > 0 and len(buffer) < max_events and not stream.should_stop:
                    await stream.wait_for_stopped(full, timeout=linger_s)
            if not buffer:
                continue
            batch = buffer[:max_events]
            del buffer[:len(batch)]
            if not buffer:
                arrived.clear()
            full.clear()
            drained.set()
            yield batch
    finally:
        stream.enable_acks = enable_acks
        stream._processors.remove(add_to_buffer)


def create_app(settings: Settings, processor, metrics=None, on_batch=None, drift=None) -> faust.App:
    """Build the Faust app around a ready Processor (model loaded, store open)."""
    app = _App(
        settings.app_id,
        broker=_broker_url(settings.bootstrap_servers),
        broker_credentials=_credentials(settings),
        key_serializer="raw", value_serializer="raw",
        processing_guarantee="at_least_once",
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=False,   # topics come from topics/ (embedstream topics create)
        topic_disable_leader=True,   # no internal leader topic: nothing to pre-create but ours
        web_enabled=False,
        broker_commit_interval=1.0,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
    )
    changes = app.topic(settings.changes_topic, key_type=bytes, value_type=bytes, allow_empty=True)
    dlq = app.topic(settings.dlq_topic, key_type=bytes, value_type=bytes)
    alerts_topic = app.topic(settings.alerts_topic, key_type=bytes, value_type=bytes)
    # two stages, one thread each: while batch N is written (and fed to the drift monitor),
    # batch N+1 is decoded, planned and encoded - the encoder does not wait for the store
    encode_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="embed")
    store_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store")

    @app.agent(changes, name="embed")
    async def embed(stream):
        loop = asyncio.get_running_loop()
        in_flight: list[_InFlight] = []  # at most one batch being written

        async def settle() -> None:
            """Wait for the batch being written, then publish its alerts and dead letters and ack it."""
            if not in_flight:
                return
            batch = in_flight.pop()
            try:
                result, alerts = await asyncio.shield(batch.commit)
            except asyncio.CancelledError:
                # shutting down: let the write finish (bounded), ack it, then stop
                try:
                    result, alerts = await asyncio.wait_for(asyncio.shield(batch.commit), SHUTDOWN_GRACE_S)
                except (asyncio.TimeoutError, Interrupted):
                    processor.stop()
                    raise
                await _complete(batch, result, alerts)
                raise
            await _complete(batch, result, alerts)

        async def _complete(batch: _InFlight, result, alerts) -> None:
            await _publish_alerts(alerts_topic, alerts, metrics)
            await _finish(stream, dlq, batch.events, result, settings)
            elapsed = time.perf_counter() - batch.t0
            if metrics is not None:
                metrics.observe_batch(result, elapsed, int(time.time() * 1000))
                _update_lag(app, metrics, batch.events)
                if drift is not None:
                    metrics.drift_warming_up.set(1 if drift.monitor.warming_up else 0)
                    metrics.drift_observed.set(drift.monitor.n_seen)
            c = result.counts
            log.info("batch events=%d written=%d deleted=%d stale=%d duplicate=%d dead_lettered=%d "
                     "chunks_encoded=%d chunks_written=%d encode_ms=%.0f store_ms=%.0f total_ms=%.0f",
                     result.records, c["written"], c["deleted"], c["stale"], c["duplicate"],
                     c["dead_lettered"], result.chunks_encoded, result.chunks_written,
                     result.encode_s * 1e3, result.store_s * 1e3, elapsed * 1e3)
            if on_batch is not None:
                await on_batch(result)

        try:
            async for events in take_batches(stream, settings.batch_max_events, settings.batch_max_wait_s,
                                             on_idle=settle):
                t0 = time.perf_counter()
                records = [to_record(e) for e in events]
                prepare = loop.run_in_executor(encode_pool, processor.prepare, records)
                await settle()  # batch N's write, while batch N+1 is prepared
                # a prepared batch holds no writes: if we stop now it is simply redelivered
                prepared = await asyncio.shield(prepare)
                commit = loop.run_in_executor(store_pool, _commit, processor, drift, prepared)
                in_flight.append(_InFlight(events, commit, t0))
            await settle()
        except Interrupted:
            log.warning("batch interrupted before the store acknowledged it; not committing")
            return

    return app


class _InFlight:
    __slots__ = ("events", "commit", "t0")

    def __init__(self, events, commit, t0: float):
        self.events, self.commit, self.t0 = events, commit, t0


def _commit(processor, drift, prepared):
    """Store thread: write the batch, then feed its vectors to the drift monitor."""
    result = processor.commit(prepared)
    alerts = drift.observe(result) if drift is not None else []
    return result, alerts


async def _publish_alerts(topic, alerts, metrics) -> None:
    """Publish drift alerts and wait for Kafka's acknowledgement (before the batch is acked)."""
    if not alerts:
        return
    from app.alerts import encode_alert_message

    futures = [await topic.send(key=a.kafka_key, value=encode_alert_message(a)) for a in alerts]
    await asyncio.gather(*futures)
    for a in alerts:
        log.warning("drift alert %s %s %s on %s: %s", a.kind.value, a.severity.value, a.collection,
                    ",".join(a.signals), a.message)
        if metrics is not None:
            metrics.drift_alerts.labels(a.kind.value, a.severity.value).inc()
            metrics.drift_active.set(1 if a.kind.value == "FIRED" else 0)


def _update_lag(app, metrics, events) -> None:
    """Lag per partition from the fetch responses' high-watermarks (not ListOffsets)."""
    last: dict = {}
    for e in events:
        last[e.message.tp] = max(last.get(e.message.tp, -1), e.message.offset)
    for tp, offset in last.items():
        try:
            hw = app.consumer.highwater(tp)
        except Exception:  # consumer not ready / partition revoked meanwhile
            continue
        if hw is not None:
            metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, hw - offset - 1))


async def _finish(stream, dlq, events, result, settings: Settings) -> None:
    """Dead letters acknowledged by Kafka first, then ack the batch's events."""
    if result.dead_letters:
        futures = [await dlq.send(key=d.record.key, value=d.record.value, headers=d.headers(settings.app_id))
                   for d in result.dead_letters]
        await asyncio.gather(*futures)
        for d in result.dead_letters:
            log.warning("dead letter %s:%d@%d reason=%s %s", d.record.topic, d.record.partition,
                        d.record.offset, d.reason, d.detail[:200])
    for e in events:
        await stream.ack(e)


def _credentials(settings: Settings):
    if settings.security_protocol.startswith("SASL"):
        ssl_ctx = None
        if settings.security_protocol == "SASL_SSL":
            import ssl

            ssl_ctx = ssl.create_default_context(cafile=settings.ssl_cafile or None)
        # PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 (faust.types.auth.SASLMechanism)
        return faust.SASLCredentials(username=settings.sasl_username, password=settings.sasl_password,
                                     mechanism=settings.sasl_mechanism.upper(), ssl_context=ssl_ctx)
    if settings.security_protocol == "SSL":
        import ssl

        return faust.SSLCredentials(ssl.create_default_context(cafile=settings.ssl_cafile or None))
    return None


#: exit status when shutdown had to give up an in-flight batch (store unavailable); nothing of it
#: was acked, so it is redelivered to the next worker
EXIT_BATCH_ABANDONED = 75


class _Worker(faust.Worker):
    """Faust's worker with a bounded shutdown.

    On SIGTERM/SIGINT Faust waits until every started event is acked before it stops. While
    the store is down the in-flight batch can never be acked, so that wait would be forever.
    A watchdog gives the batch ``SHUTDOWN_GRACE_S`` seconds; then it stops the processor's
    retry loop and ends the process without acking the batch (at-least-once: it is redelivered).
    """

    def __init__(self, *args, processor=None, cleanup=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._processor = processor
        self._cleanup = cleanup
        self._watchdog: threading.Thread | None = None

    def _schedule_shutdown(self, signal_num) -> None:
        if self._watchdog is None:
            self._watchdog = threading.Thread(target=self._give_up_after_grace, name="shutdown-watchdog",
                                              daemon=True)
            self._watchdog.start()
        super()._schedule_shutdown(signal_num)

    def _give_up_after_grace(self) -> None:
        time.sleep(SHUTDOWN_GRACE_S)
        log.error("shutdown: the in-flight batch did not finish within %.0fs (store unavailable?); "
                  "exiting without acking it - it will be redelivered", SHUTDOWN_GRACE_S)
        if self._processor is not None:
            self._processor.stop()
        time.sleep(2)
        if self._cleanup is not None:
            try:
                self._cleanup()
            except Exception:
                log.exception("cleanup failed during forced shutdown")
        logging.shutdown()
        os._exit(EXIT_BATCH_ABANDONED)


def run_worker(settings: Settings, processor, metrics=None, on_batch=None, drift=None) -> None:
    """Run the Faust worker until SIGTERM/SIGINT (Faust installs the signal handlers)."""
    app = create_app(settings, processor, metrics, on_batch, drift)
    # override_logging=False keeps our handlers (plain or JSON, see cli.setup_logging)
    worker = _Worker(app, loglevel=settings.log_level.lower(), quiet=True, redirect_stdouts=False,
                     override_logging=False, processor=processor,
                     cleanup=drift.close if drift is not None else None)
    worker.spinner = None  # Faust's progress spinner writes terminal escapes into non-TTY logs
    worker.execute_from_commandline()
