"""Faust wiring: the worker's consumer as a :class:`~app.source.BatchSource` (``FaustSource``), run
by the Faust-free delivery loop (:mod:`app.delivery`). The only module that imports Faust.

What this layer does differently from a plain Faust agent, and why:

* **Acks are manual and in order.** ``stream.take()`` acks buffered events before the batch is
  processed. ``FaustSource`` buffers events itself without acking, and acks a batch's events only
  when the delivery loop says the store (and Kafka, for dead letters and alerts) acknowledged it -
  and only over a contiguous run of acked batches per partition (``OffsetTracker``). Faust's gap
  check is skipped on a partition that never committed, so an out-of-order ack there would commit
  past a batch that was never written; here an abandoned batch blocks its partition instead.
* **Rebalances are bounded.** Faust's ``stream_wait_empty`` makes a revocation wait until every
  event the stream started is acked - forever while the store is down, and for events sitting in
  our buffer (the group cannot finish its rebalance meanwhile; the other members wait in
  JoinGroup). It is off: on revocation the buffer is dropped (unacked), the delivery loop finishes
  or abandons its batches within ``rebalance_timeout_s / 2``, and what was acked is committed
  before the partitions go.
* **Failures end the process.** An exception in the agent would make Faust's supervisor restart
  the agent on the same stream, silently dropping the batches it held. The agent never raises:
  a :class:`~app.delivery.DeliveryFailed` stops the worker with exit status 70.
* **Shutdown is bounded.** SIGTERM drains the delivery loop (the batch being written gets
  ``SHUTDOWN_GRACE_S``), commits, then lets Faust stop; exit 75 when a batch had to be given up.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Iterable

import faust
from faust.transport.drivers import aiokafka as _aiokafka_driver
from faust.types import TP as FaustTP

from app.config import Settings
from app.deadletter import Record
from app.delivery import EXIT_BATCH_ABANDONED, EXIT_FAILED, Delivery, DeliveryConfig, DeliveryFailed
from app.dlq_limit import DeadLetterLimit, DeadLetterLimiter
from app.source import IDLE_TICK_S, TP, Batch, OffsetTracker, tp_of

log = logging.getLogger("embedstream.worker")
#: how long SIGTERM waits for the in-flight batch to finish before giving up on it
SHUTDOWN_GRACE_S = 30.0
__all__ = ["EXIT_BATCH_ABANDONED", "EXIT_FAILED", "SHUTDOWN_GRACE_S", "FaustSource", "create_app", "run_worker"]


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


def unknown_subscribed_topics(consumer) -> set[str]:
    """Topics the aiokafka ``consumer`` subscribes to that its cluster metadata has no partitions for."""
    cluster = consumer._client.cluster
    return {t for t in (consumer.subscription() or ()) if not cluster.partitions_for_topic(t)}


async def refresh_until_topics_known(consumer, *, first_s: float = 0.5, max_s: float = 5.0,
                                     warn_every_s: float = 60.0) -> None:
    """Refresh ``consumer``'s metadata (backing off up to ``max_s``) until every subscribed topic has
    partitions in it, then return: the group coordinator sees the change and rejoins the group.

    Why: the group leader assigns only the partitions its metadata knows. Right after a broker
    restart Kafka may answer metadata without the topic (its partitions are still loading), and the
    assignor then skips it ("Ignoring missing topic") - every member gets nothing. aiokafka would
    rejoin when the topic reappears in its metadata, but refreshes that only every
    ``metadata_max_age_ms`` (5 minutes): the worker sat idle, assigned nothing, while lag grew
    (seen in the broker-restart crash test on real Kafka).
    """
    delay, warned = first_s, -warn_every_s
    while not consumer._closed:
        missing = unknown_subscribed_topics(consumer)
        if not missing:
            if warned >= 0:
                log.warning("topic(s) back in the broker's metadata: %s; rejoining the group", ", ".join(sorted(
                    consumer.subscription() or ())))
            return
        now = time.monotonic()
        if now - warned >= warn_every_s:
            log.warning("subscribed topic(s) %s missing from the broker's metadata at the assignment "
                        "(a broker restarting, or the topic deleted); refreshing metadata until they are back",
                        ", ".join(sorted(missing)))
            warned = now
        await asyncio.sleep(delay)
        delay = min(max_s, delay * 2)
        try:
            await asyncio.wait_for(consumer._client.force_metadata_update(), timeout=max(10.0, max_s))
        except Exception as exc:  # unreachable broker: try again after the next delay
            log.debug("metadata refresh failed: %r", exc)


def _transport(fetch_max_wait_ms: int, idempotent: bool) -> type:
    """Faust's aiokafka transport with the worker consumer's ``fetch_max_wait_ms`` configurable and,
    optionally, an idempotent producer (dead letters and alerts: no duplicates from retries).

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

        async def on_partitions_assigned(self, assigned, generation_id: int = 0) -> None:
            # in the consumer thread's loop, inside aiokafka's rebalance callback
            consumer = self._ensure_consumer()
            task = getattr(self, "_embedstream_md_task", None)
            if (task is None or task.done()) and unknown_subscribed_topics(consumer):
                self._embedstream_md_task = asyncio.ensure_future(refresh_until_topics_known(consumer))
            await super().on_partitions_assigned(assigned, generation_id)

    class Consumer(_aiokafka_driver.Consumer):
        """Only acks the delivery loop made count (see :meth:`approve`).

        Faust acks by itself every message its stream *skips* - while flow control is suspended
        (a rebalance, the worker stopping) or when the message is of an earlier consumer
        generation - so that lag does not grow. For us those are records nobody processed: an ack
        would let the next commit pass them (seen in the crash harness with injected faults: the
        worker failed, Faust's shutdown skipped and acked the records behind the failed batch, and
        committed past three junk records that were never dead-lettered). Here an ack only counts
        for a message :class:`FaustSource` approved when the store acknowledged its batch.
        """

        def _new_consumer_thread(self):
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

        def approve(self, message) -> None:
            """``message`` was processed and may be acked (and so committed)."""
            self.__dict__.setdefault("_embedstream_approved", set()).add((message.tp, message.offset))

        def ack(self, message) -> bool:
            approved = self.__dict__.setdefault("_embedstream_approved", set())
            key = (message.tp, message.offset)
            if key not in approved:
                return False  # a skipped message: not processed, never committed
            approved.discard(key)
            return super().ack(message)

    class Producer(_aiokafka_driver.Producer):
        def _settings_extra(self):
            extra = dict(super()._settings_extra())
            if idempotent:
                extra.update(acks="all", enable_idempotence=True)
            return extra

    class Transport(_aiokafka_driver.Transport):
        pass

    Transport.Consumer = Consumer
    Transport.Producer = Producer
    return Transport


class _App(faust.App):
    def __init__(self, *args, fetch_max_wait_ms: int = 1500, idempotent_producer: bool = False, **kwargs):
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.idempotent_producer = idempotent_producer
        super().__init__(*args, **kwargs)

    def _new_transport(self):
        transport = super()._new_transport()
        if type(transport) is _aiokafka_driver.Transport:
            transport = _transport(self.fetch_max_wait_ms, self.idempotent_producer)(self.conf.broker_consumer, self)
        return transport

    def _new_producer_transport(self):
        transport = super()._new_producer_transport()
        if type(transport) is _aiokafka_driver.Transport:
            transport = _transport(self.fetch_max_wait_ms, self.idempotent_producer)(self.conf.broker_producer, self)
        return transport


# ----------------------------------------------------------------------------------------
class FaustSource:
    """A :class:`~app.source.BatchSource` over the agent's Faust stream."""

    def __init__(self, app: faust.App, stream, topics: dict[str, faust.TopicT], settings: Settings):
        self.app, self.stream, self.topics, self.settings = app, stream, topics, settings
        self.listener = None
        self.tracker = OffsetTracker()
        self._seq = 0
        self._buffer: list = []
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._drained = asyncio.Event()
        self._handles: dict[int, tuple[Batch, set[TP]]] = {}  # seq -> (batch, partitions not yet acked)
        self._committed_reader = None

    # -- batches --------------------------------------------------------------------------
    async def batches(self, max_events: int, linger_s: float, on_idle=None):
        """Micro-batches of the stream, unacked (the delivery loop acks after the store acknowledged).

        Unlike ``stream.noack_take(max, within)`` - which after every batch waits ``within`` seconds
        again unless ``max`` events are buffered - this batches naturally: events that arrived while
        the previous batch was being processed are taken at once (so batches grow with the load and
        the encoder never idles on a timer), and on an idle worker the first event is followed by at
        most ``linger_s`` of waiting for more. At most ``max_events`` per batch.
        """
        stream = self.stream
        buffer = self._buffer

        async def add_to_buffer(value):
            try:
                event = stream.current_event
                if event is None:
                    raise RuntimeError("FaustSource: stream has no current event")
                buffer.append(event)
                self._arrived.set()
                if len(buffer) >= max_events:
                    self._full.set()
                    self._drained.clear()
                    await stream.wait(self._drained)  # back-pressure: the stream stops reading until taken
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                stream.log.exception("Error adding to the batch buffer: %r", exc)
                await stream.crash(exc)
            return value

        stream.enable_acks = False  # acks are manual (after the store acknowledged)
        stream.add_processor(add_to_buffer)
        stream._enable_passive(aiter(stream.channel))
        try:
            while not stream.should_stop:
                if not buffer and on_idle is not None:
                    await on_idle()
                if not buffer:  # idle: wait for an event, then linger briefly for company
                    # (on_idle runs again every IDLE_TICK_S while nothing arrives: what it does on
                    # a quiet stream - a drift relearn request - is not put off until the next event)
                    await stream.wait_for_stopped(self._arrived, timeout=IDLE_TICK_S if on_idle else None)
                    if not buffer:
                        continue
                    if linger_s > 0 and len(buffer) < max_events and not stream.should_stop:
                        await stream.wait_for_stopped(self._full, timeout=linger_s)
                events = self._take(max_events)
                if not events:
                    continue
                self._seq += 1
                batch = Batch(self._seq, [to_record(e) for e in events], events)
                self.tracker.handed_out(batch)
                self._handles[batch.seq] = (batch, set(batch.partitions))
                yield batch
        finally:
            # acks stay manual for good: Faust's passive iteration of the stream goes on after this
            # generator ends (a failure, shutdown) and would ack every event it passes
            stream._processors.remove(add_to_buffer)

    def _take(self, max_events: int) -> list:
        """The next events of the buffer, minus any from an earlier consumer generation (fetched
        before a rebalance: their partition was re-read from the committed offset since)."""
        buffer = self._buffer
        events = buffer[:max_events]
        del buffer[:len(events)]
        if not buffer:
            self._arrived.clear()
        self._full.clear()
        self._drained.set()
        gen = self.app.consumer_generation_id
        return [e for e in events if getattr(e.message, "generation_id", gen) == gen]

    def _drop_buffered(self, tps: set[TP]) -> int:
        keep = [e for e in self._buffer if (e.message.topic, e.message.partition) not in tps]
        dropped = len(self._buffer) - len(keep)
        self._buffer[:] = keep
        if not keep:
            self._arrived.clear()
        self._full.clear()
        self._drained.set()
        return dropped

    # -- acks -------------------------------------------------------------------------------
    async def ack(self, batch: Batch, tps: Iterable[TP] | None = None) -> None:
        for tp, seqs in self.tracker.acked(batch, tps).items():
            for seq in seqs:
                entry = self._handles.get(seq)
                if entry is None:
                    continue
                b, pending = entry
                for rec, event in zip(b.records, b.handles):
                    if tp_of(rec) == tp:
                        self.app.consumer.approve(event.message)
                        await self.stream.ack(event)
                pending.discard(tp)
                if not pending:
                    del self._handles[seq]

    def abandon(self, batch: Batch, tps: Iterable[TP] | None = None) -> None:
        self.tracker.abandon(batch, tps)

    def acked_position(self, tp: TP) -> int | None:
        return self.tracker.position(tp)

    async def commit(self) -> None:
        """Commit what is acked now. Faust runs one commit at a time and a call that finds one in
        progress only waits for it - and that one may predate our latest acks - so commit twice:
        the second call either commits itself or waits for a commit that started after the first."""
        try:
            await self.app.consumer.commit()
            await self.app.consumer.commit()
        except Exception as exc:  # a commit failing is redelivery, not loss
            log.warning("commit failed (%s); the records will be redelivered", exc)

    # -- producing ---------------------------------------------------------------------------
    async def send(self, topic: str, records) -> None:
        # each record is handed to the producer before the next (gather could reorder them: Faust's
        # send awaits before it enqueues), then all acknowledgements are awaited together
        futs = [await self.topics[topic].send(key=key, value=value, headers=list(headers) or None)
                for key, value, headers in records]
        await asyncio.gather(*futs)

    # -- assignment -----------------------------------------------------------------------------
    def assignment(self) -> set[TP]:
        try:
            return {(tp.topic, tp.partition) for tp in self.app.consumer.assignment()}
        except Exception:
            return set()

    def pause(self, tps: Iterable[TP]) -> None:
        try:
            self.app.consumer.pause_partitions({FaustTP(t, p) for t, p in tps})
        except Exception as exc:
            log.debug("pause failed: %s", exc)

    async def on_revoked(self, revoked) -> None:
        tps = {(tp.topic, tp.partition) for tp in revoked}
        dropped = self._drop_buffered(tps)
        if dropped:
            log.info("rebalance: dropped %d buffered events of revoked partitions (unacked, redelivered)", dropped)
        if self.listener is not None:
            await self.listener.on_revoked(tps)
        await self.commit()  # what finished is committed before the partitions go
        self.tracker.revoke(tps)
        for seq in [s for s, (b, pending) in self._handles.items() if pending & tps]:
            b, pending = self._handles[seq]
            pending -= tps
            if not pending:
                del self._handles[seq]

    async def on_assigned(self, assigned) -> None:
        tps = {(tp.topic, tp.partition) for tp in assigned}
        if self.listener is not None:
            await self.listener.on_assigned(tps)

    async def positions(self) -> dict[TP, tuple[int | None, int | None]]:
        tps = sorted(self.assignment())
        if not tps:
            return {}
        committed = await asyncio.get_running_loop().run_in_executor(None, self._read_committed, tps)
        out = {}
        for tp in tps:
            try:
                hw = self.app.consumer.highwater(FaustTP(*tp))
            except Exception:
                hw = None
            out[tp] = (committed.get(tp), hw)
        return out

    def _read_committed(self, tps: list[TP]) -> dict[TP, int]:
        """The group's committed offsets (what `embedstream offsets show` reads), without joining it."""
        from confluent_kafka import Consumer, TopicPartition

        if self._committed_reader is None:
            self._committed_reader = Consumer({**self.settings.kafka_config(), "group.id": self.settings.app_id,
                                               "enable.auto.commit": False})
        got = self._committed_reader.committed([TopicPartition(t, p) for t, p in tps], timeout=5)
        return {(tp.topic, tp.partition): tp.offset for tp in got if tp.offset >= 0}

    def close(self) -> None:
        if self._committed_reader is not None:
            self._committed_reader.close()
            self._committed_reader = None


# ----------------------------------------------------------------------------------------
class _Control:
    """Shared between the agent and the worker: the running delivery loop and the exit status."""

    def __init__(self):
        self.delivery: Delivery | None = None
        self.source: FaustSource | None = None
        self.exit_code = 0
        self.stop_requested = None  # set by the worker: callable(exit_code)


def create_app(settings: Settings, processor, metrics=None, on_batch=None, drift=None, health=None,
               control: _Control | None = None) -> faust.App:
    """Build the Faust app around a ready Processor (model loaded, store open)."""
    control = control or _Control()
    faust_dir = Path(settings.data_dir) / "faust"
    faust_dir.parent.mkdir(parents=True, exist_ok=True)  # Faust makes only the last level (Weaviate: no data dir yet)
    app = _App(
        settings.app_id,
        broker=_broker_url(settings.bootstrap_servers),
        broker_credentials=_credentials(settings),
        key_serializer="raw", value_serializer="raw",
        processing_guarantee="at_least_once",
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        consumer_group_instance_id=settings.group_instance_id or None,
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=False,   # topics come from topics/ (embedstream topics create)
        topic_disable_leader=True,   # no internal leader topic: nothing to pre-create but ours
        web_enabled=False,
        # Faust's own directory (it keeps no tables here) under the data dir, not ./<app id>-data
        datadir=str(faust_dir),
        broker_commit_interval=1.0,
        # revocation and shutdown wait for in-flight batches in FaustSource/Delivery (bounded), not
        # in Faust (unbounded, and blind to our buffer)
        stream_wait_empty=False,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        idempotent_producer=settings.producer_idempotence,
    )
    changes = app.topic(*settings.input_topics(), key_type=bytes, value_type=bytes, allow_empty=True)
    topics = {settings.dlq_topic: app.topic(settings.dlq_topic, key_type=bytes, value_type=bytes),
              settings.alerts_topic: app.topic(settings.alerts_topic, key_type=bytes, value_type=bytes)}
    limit = DeadLetterLimit(max_consecutive=settings.dlq_max_consecutive, max_share=settings.dlq_max_share,
                            window=settings.dlq_window,
                            min_records=min(settings.dlq_window, max(100, settings.dlq_window // 10)))
    config = DeliveryConfig(app_id=settings.app_id, dlq_topic=settings.dlq_topic, alerts_topic=settings.alerts_topic,
                            max_events=settings.batch_max_events, linger_s=settings.batch_max_wait_s,
                            revoke_grace_s=settings.rebalance_timeout_s / 2, shutdown_grace_s=SHUTDOWN_GRACE_S,
                            health_interval_s=settings.health_interval_s)

    @app.on_partitions_revoked.connect
    async def _revoked(sender, revoked, **kwargs) -> None:  # inside Faust's rebalance callback
        if control.source is not None:
            await control.source.on_revoked(revoked)

    @app.on_partitions_assigned.connect
    async def _assigned(sender, assigned, **kwargs) -> None:
        if control.source is not None:
            await control.source.on_assigned(assigned)

    @app.agent(changes, name="embed")
    async def embed(stream):
        if control.delivery is not None:  # Faust restarted the agent: that is a failure already handled
            await asyncio.Event().wait()
        source = FaustSource(app, stream, topics, settings)
        delivery = Delivery(source, processor, config, drift=drift, metrics=metrics, health=health,
                            limiter=DeadLetterLimiter(limit), on_batch=on_batch)
        control.source, control.delivery = source, delivery
        try:
            await delivery.run()
        except DeliveryFailed:
            # fail closed: nothing past the failure is acked; commit what was, then stop the worker
            await source.commit()
            control.exit_code = EXIT_FAILED
            if control.stop_requested is not None:
                control.stop_requested(EXIT_FAILED)
        except asyncio.CancelledError:
            raise
        # never return or raise: Faust's supervisor would restart the agent on the same stream
        await asyncio.Event().wait()

    app.embedstream_control = control
    return app


def _credentials(settings: Settings):
    from app.security import ssl_context

    ssl_ctx = ssl_context(settings)  # SSL and SASL_SSL: the CA, and the client certificate (mutual TLS)
    if settings.security_protocol.startswith("SASL"):
        # PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 (faust.types.auth.SASLMechanism)
        return faust.SASLCredentials(username=settings.sasl_username, password=settings.sasl_password,
                                     mechanism=settings.sasl_mechanism.upper(), ssl_context=ssl_ctx)
    if settings.security_protocol == "SSL":
        return faust.SSLCredentials(ssl_ctx)
    return None


class _Worker(faust.Worker):
    """Faust's worker with a bounded, ordered shutdown and an exit status.

    On SIGTERM/SIGINT the delivery loop is drained first (no new batch; the batch being written
    gets ``SHUTDOWN_GRACE_S``, then it is abandoned unacked), what was acked is committed, and only
    then does Faust stop. A watchdog thread ends the process if stopping takes longer than that
    plus a margin. After a failure (:class:`~app.delivery.DeliveryFailed`) the worker stops the same
    way with exit status 70.
    """

    def __init__(self, *args, control: _Control, processor=None, cleanup=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._control = control
        self._processor = processor
        self._cleanup = cleanup
        self._watchdog: threading.Thread | None = None
        self._stopping = False
        control.stop_requested = self.request_stop

    def _schedule_shutdown(self, signal_num) -> None:
        self.request_stop(0, signal_num)

    def request_stop(self, exit_code: int, signal_num=None) -> None:
        if exit_code and not self._control.exit_code:
            self._control.exit_code = exit_code
        if self._stopping:
            if signal_num is not None:  # a second signal: stop now
                super()._schedule_shutdown(signal_num)
            return
        self._stopping = True
        self._start_watchdog()
        asyncio.ensure_future(self._drain_then_stop(signal_num or signal.SIGTERM), loop=self.loop)

    async def _drain_then_stop(self, signal_num) -> None:
        c = self._control
        try:
            if c.delivery is not None and not c.exit_code:
                if not await c.delivery.drain(SHUTDOWN_GRACE_S):
                    c.exit_code = EXIT_BATCH_ABANDONED
            if c.source is not None:
                await c.source.commit()
                c.source.close()
        except Exception:
            log.exception("error while draining for shutdown")
        super()._schedule_shutdown(signal_num)

    def _start_watchdog(self) -> None:
        if self._watchdog is None:
            self._watchdog = threading.Thread(target=self._give_up_after_grace, name="shutdown-watchdog",
                                              daemon=True)
            self._watchdog.start()

    def _give_up_after_grace(self) -> None:
        time.sleep(SHUTDOWN_GRACE_S + 15)
        log.error("shutdown did not complete within %.0fs; exiting without acking what is left - it will be "
                  "redelivered", SHUTDOWN_GRACE_S + 15)
        if self._processor is not None:
            self._processor.stop()
        time.sleep(2)
        if self._cleanup is not None:
            try:
                self._cleanup()
            except Exception:
                log.exception("cleanup failed during forced shutdown")
        logging.shutdown()
        os._exit(self._control.exit_code or EXIT_BATCH_ABANDONED)


def run_worker(settings: Settings, processor, metrics=None, on_batch=None, drift=None, health=None) -> int:
    """Run the Faust worker until SIGTERM/SIGINT or a failure; returns the exit status."""
    control = _Control()
    app = create_app(settings, processor, metrics, on_batch, drift, health=health, control=control)
    # override_logging=False keeps our handlers (plain or JSON, see cli.setup_logging)
    worker = _Worker(app, loglevel=settings.log_level.lower(), quiet=True, redirect_stdouts=False,
                     override_logging=False, processor=processor, control=control,
                     cleanup=drift.close if drift is not None else None)
    worker.spinner = None  # Faust's progress spinner writes terminal escapes into non-TTY logs
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        return control.exit_code or code
    return control.exit_code
