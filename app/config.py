"""Settings: environment variables ``EMBEDSTREAM_<NAME>`` (upper case), optionally a TOML
file named by ``EMBEDSTREAM_CONFIG`` (keys are the lower-case names), validated at start-up.

Precedence: defaults < config file < environment < command-line flags.
``embedstream config`` prints every setting with its value (secrets masked) and source.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

PREFIX = "EMBEDSTREAM_"
#: librdkafka's Java-compatible partitioner (murmur2 of the key, made positive, modulo the partition
#: count; null keys random), the Java client's and aiokafka's default. librdkafka's own default
#: (consistent_random, CRC32) puts many keys elsewhere: a document's upsert and its tombstone from
#: two kinds of producers would land in two partitions and could be applied out of order.
PRODUCER_PARTITIONER = "murmur2_random"


class ConfigError(ValueError):
    """A setting is missing or invalid; the message says which and how to fix it."""


def _s(default: Any, doc: str, secret: bool = False, choices: tuple | None = None):
    return field(default=default, metadata={"doc": doc, "secret": secret, "choices": choices})


@dataclass
class Settings:
    # --- Kafka -------------------------------------------------------------------------
    bootstrap_servers: str = _s("", "Kafka bootstrap servers (host:port,...). Empty: `dev`/`demo` start the "
                                    "embedded Tansu broker; `worker` requires it.")
    app_id: str = _s("embedstream", "Consumer group / Faust app id of the worker.")
    changes_topic: str = _s("embedstream.changes", "Topic of document-change events (keyed by doc_id).")
    alerts_topic: str = _s("embedstream.drift-alerts", "Topic drift alerts are published to.")
    dlq_topic: str = _s("embedstream.changes.dlq", "Dead-letter topic (original bytes + x-dlq-* headers).")
    inputs: str = _s("", "TOML file of further input topics and their mappings (document_change, debezium, "
                         "mapped: [[input]] tables, see README 'Input mappings'). Empty: the changes topic only.")
    schema_registry_url: str = _s("", "Confluent Schema Registry URL. Empty: Avro single-object encoding.")
    broker_flavour: str = _s("auto", "Which broker the offsets tools talk to: auto (detect), kafka, or tansu (the "
                                     "embedded dev broker, whose ListOffsets/offsets_for_times/DescribeGroups "
                                     "need workarounds).", choices=("auto", "kafka", "tansu"))
    session_timeout_s: float = _s(45.0, "Consumer group session timeout: how long a silent member keeps its "
                                        "partitions. 45 s rides out a GC pause or a broker failover; `dev`/`demo` "
                                        "run the embedded broker with 6 s (Kafka's minimum).")
    heartbeat_interval_s: float = _s(1.0, "Consumer heartbeat interval.")
    rebalance_timeout_s: float = _s(60.0, "How long a rebalance may take. The batch being written when a "
                                          "partition is revoked gets half of it to finish, then it is abandoned "
                                          "unacked (redelivered to the new owner).")
    group_instance_id: str = _s("", "Static group membership (Kafka group.instance.id): a restart within the "
                                    "session timeout keeps the partitions without a rebalance. Unique per "
                                    "worker (e.g. the pod name). Empty: dynamic membership.")
    producer_idempotence: bool = _s(True, "Idempotent producer for dead letters and alerts (no duplicates from "
                                          "producer retries). `dev`/`demo` turn it off: the embedded broker "
                                          "cannot give out producer ids.")
    security_protocol: str = _s("PLAINTEXT", "Kafka security protocol.",
                                choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"))
    sasl_mechanism: str = _s("", "SASL mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512).")
    sasl_username: str = _s("", "SASL user name.")
    sasl_password: str = _s("", "SASL password.", secret=True)
    ssl_cafile: str = _s("", "CA bundle (PEM) that signed the Kafka brokers' certificates (SSL, SASL_SSL). "
                             "Empty: the system's CAs.")
    ssl_certfile: str = _s("", "Client certificate (PEM) for mutual TLS with Kafka (SSL, SASL_SSL); with "
                               "EMBEDSTREAM_SSL_KEYFILE.")
    ssl_keyfile: str = _s("", "Private key (PEM) of EMBEDSTREAM_SSL_CERTFILE.")
    ssl_key_password: str = _s("", "Password of an encrypted EMBEDSTREAM_SSL_KEYFILE.", secret=True)
    # --- batching ----------------------------------------------------------------------
    batch_max_events: int = _s(256, "Largest micro-batch (events).")
    batch_max_wait_s: float = _s(0.01, "After a batch's first event arrives on an idle worker, how long to wait "
                                       "for more (seconds). Events that queued up while the previous batch "
                                       "was processed are taken at once, so batches grow with the load.")
    fetch_max_wait_ms: int = _s(50, "Longest time the broker may hold a consumer fetch when no data is ready "
                                     "(Kafka fetch.max.wait.ms). Kafka answers as soon as data arrives; "
                                     "the embedded broker waits this long, so it bounds its latency.")
    # --- encoder -----------------------------------------------------------------------
    model_variant: str = _s("", "Model variant: int8 or fp32. Empty: int8 on CPU, fp32 on GPU.",
                            choices=("", "int8", "fp32"))
    device: str = _s("auto", "Execution device: auto (CUDA when usable), cpu or cuda.",
                     choices=("auto", "cpu", "cuda"))
    encoder_threads: int = _s(0, "ONNX Runtime intra-op threads (0: all cores).")
    max_batch_tokens: int = _s(8192, "Token budget of one encoder call (rows x padded length).")
    chunk_tokens: int = _s(256, "Maximum tokens per chunk, special tokens included (<= 256).")
    chunk_overlap: int = _s(32, "Tokens shared by consecutive chunks of a document.")
    embedding_cache_entries: int = _s(20_000, "Chunk embeddings kept in the LRU cache (0: off; ~1.6 kB each).")
    scrubber: str = _s("none", "Personal-data scrubbing before embedding: none, regex (e-mail, phone, card) "
                              "or package.module:factory.")
    max_text_bytes: int = _s(1_000_000, "Largest accepted document text; larger events are dead-lettered.")
    dlq_max_consecutive: int = _s(100, "Dead-letter limit: more dead letters in a row than this on one partition "
                                       "stops consuming it (not ready, nothing past it committed). 0: no limit.")
    dlq_max_share: float = _s(0.5, "Dead-letter limit: a higher share of dead letters among a partition's last "
                                   "EMBEDSTREAM_DLQ_WINDOW records stops consuming it. 1: no limit.")
    dlq_window: int = _s(1000, "Records per partition the dead-letter share is measured over (judged once a "
                               "tenth of them, at least 100, were seen).")
    # --- drift ---------------------------------------------------------------------------
    drift_enabled: bool = _s(True, "Watch the produced vectors for drift and publish alerts.")
    drift_warmup: int = _s(2000, "Events used to learn the drift reference and its thresholds (one vector each, the "
                                 "mean of its chunks; no alerts before; 3/4 fit it, 1/4 is the collection's own "
                                 "null sample; >= 1000 advised; a collection found fed in bursts warms up to "
                                 "at least 4000).")
    drift_canary_every: int = _s(64, "Run the encoder canary every N batches (and at start-up); 0: never.")
    drift_serial_alpha: float = _s(0.001, "Level of the drift warm-up's test of serial independence: a collection that "
                                          "fails it is fed in bursts (same-topic runs of documents) and watched more "
                                          "coarsely (wider PageHinkley thresholds, the shift scan unwatched; DRIFT.md "
                                          "section 3). 0: never.")
    # --- store -------------------------------------------------------------------------
    store: str = _s("lancedb", "Vector store: lancedb (embedded) or weaviate.", choices=("lancedb", "weaviate"))
    data_dir: str = _s("./data", "Directory for LanceDB files, drift state and the embedded broker's log.")
    store_optimize_every: int = _s(50, "Compact the store (LanceDB optimize) every N batches (0: never).")
    allow_alias_mismatch: bool = _s(False, "Let a worker consume although the alias points at another model's "
                                           "collection: only for the old workers of a reindex between swap and "
                                           "finish, when the reindex state is not in this worker's data dir.")
    collection_prefix: str = _s("embedstream", "Collection name prefix (Weaviate: the alias users query).")
    weaviate_url: str = _s("http://localhost:8080", "Weaviate REST URL.")
    weaviate_grpc_port: int = _s(50051, "Weaviate gRPC port.")
    weaviate_api_key: str = _s("", "Weaviate API key.", secret=True)
    weaviate_timeout_s: float = _s(30.0, "Weaviate request timeout.")
    # --- operations --------------------------------------------------------------------
    log_level: str = _s("INFO", "Log level.", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    log_json: bool = _s(False, "Structured JSON logs.")
    metrics_port: int = _s(9464, "Port of /metrics, /livez, /readyz on the worker (0: off).")
    metrics_host: str = _s("0.0.0.0", "Interface the metrics/health server binds to.")
    unready_after_s: float = _s(30.0, "/readyz answers 503 once the store (or the schema registry) has kept "
                                      "failing this long.")
    stall_after_s: float = _s(120.0, "/readyz answers 503 when the worker has lag but acked no batch for this long.")
    health_interval_s: float = _s(5.0, "How often consumer lag and progress are refreshed (seconds).")

    sources: dict[str, str] = field(default_factory=dict, repr=False, compare=False,
                                    metadata={"internal": True})

    # ----------------------------------------------------------------------------------
    @classmethod
    def load(cls, env: dict[str, str] | None = None, **overrides: Any) -> "Settings":
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        cfg_file = env.get(PREFIX + "CONFIG")
        if cfg_file:
            try:
                data = tomllib.loads(Path(cfg_file).read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"{PREFIX}CONFIG={cfg_file}: cannot read TOML: {exc}") from exc
            known = {f.name for f in cls._settings_fields()}
            unknown = sorted(set(data) - known)
            if unknown:
                raise ConfigError(f"{cfg_file}: unknown setting(s) {', '.join(unknown)}")
            for k, v in data.items():
                values[k], sources[k] = v, f"file {cfg_file}"
        for f in cls._settings_fields():
            name = PREFIX + f.name.upper()
            if name in env:
                values[f.name], sources[f.name] = env[name], f"env {name}"
        for k, v in overrides.items():
            if v is not None:
                values[k], sources[k] = v, "command line"
        s = cls(**{k: cls._coerce(k, v) for k, v in values.items()})
        s.sources = sources
        s.validate()
        return s

    @classmethod
    def _settings_fields(cls):
        return [f for f in fields(cls) if not f.metadata.get("internal")]

    @classmethod
    def _coerce(cls, name: str, value: Any) -> Any:
        f = {f.name: f for f in cls._settings_fields()}.get(name)
        if f is None:
            raise ConfigError(f"unknown setting {name!r}")
        typ = type(f.default)
        try:
            if typ is bool and isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes", "on")
            return typ(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{PREFIX}{name.upper()}={value!r}: expected {typ.__name__}") from None

    def validate(self) -> None:
        errors = []
        for f in self._settings_fields():
            choices = f.metadata.get("choices")
            v = getattr(self, f.name)
            if choices and v not in choices:
                errors.append(f"{PREFIX}{f.name.upper()}={v!r}: must be one of {', '.join(map(repr, choices))}")
        if not 8 <= self.chunk_tokens <= 256:
            errors.append(f"{PREFIX}CHUNK_TOKENS={self.chunk_tokens}: must be 8..256 (the model's max length)")
        if not 0 <= self.chunk_overlap < self.chunk_tokens - 2:
            errors.append(f"{PREFIX}CHUNK_OVERLAP={self.chunk_overlap}: must be 0..CHUNK_TOKENS-3")
        if self.batch_max_events < 1 or self.batch_max_wait_s < 0:
            errors.append(f"{PREFIX}BATCH_MAX_EVENTS={self.batch_max_events}, {PREFIX}BATCH_MAX_WAIT_S="
                          f"{self.batch_max_wait_s}: need >= 1 event and a wait >= 0 s")
        if not 1 <= self.fetch_max_wait_ms <= 60_000:
            errors.append(f"{PREFIX}FETCH_MAX_WAIT_MS={self.fetch_max_wait_ms}: must be 1..60000")
        if self.session_timeout_s < 6:
            errors.append(f"{PREFIX}SESSION_TIMEOUT_S={self.session_timeout_s}: Kafka rejects < 6 s by default")
        if self.heartbeat_interval_s * 3 > self.session_timeout_s:
            errors.append("heartbeat_interval_s must be at most a third of session_timeout_s")
        if self.rebalance_timeout_s < 2:
            errors.append(f"{PREFIX}REBALANCE_TIMEOUT_S={self.rebalance_timeout_s}: must be >= 2 s")
        if self.dlq_max_consecutive < 0 or not 0 < self.dlq_max_share <= 1 or self.dlq_window < 1:
            errors.append(f"{PREFIX}DLQ_MAX_CONSECUTIVE={self.dlq_max_consecutive} (>= 0), {PREFIX}DLQ_MAX_SHARE="
                          f"{self.dlq_max_share} (0 < share <= 1), {PREFIX}DLQ_WINDOW={self.dlq_window} (>= 1)")
        if not 0 <= self.drift_serial_alpha < 1:
            errors.append(f"{PREFIX}DRIFT_SERIAL_ALPHA={self.drift_serial_alpha}: must be in [0, 1)")
        if self.unready_after_s <= 0 or self.stall_after_s <= 0 or self.health_interval_s <= 0:
            errors.append(f"{PREFIX}UNREADY_AFTER_S, {PREFIX}STALL_AFTER_S and {PREFIX}HEALTH_INTERVAL_S must be > 0")
        if self.security_protocol.startswith("SASL") and self.sasl_mechanism.upper() not in (
                "", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            errors.append(f"{PREFIX}SASL_MECHANISM={self.sasl_mechanism!r}: must be PLAIN, SCRAM-SHA-256 or "
                          "SCRAM-SHA-512")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            errors.append(f"{PREFIX}SSL_CERTFILE and {PREFIX}SSL_KEYFILE go together (mutual TLS)")
        if self.ssl_certfile and self.security_protocol not in ("SSL", "SASL_SSL"):
            errors.append(f"{PREFIX}SSL_CERTFILE (mutual TLS) needs {PREFIX}SECURITY_PROTOCOL=SSL or SASL_SSL "
                          f"(it is {self.security_protocol})")
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                errors.append(f"{PREFIX}{name.upper()}={path!r}: no such file")
        if self.security_protocol.startswith("SASL") and not (self.sasl_mechanism and self.sasl_username):
            errors.append("SASL needs EMBEDSTREAM_SASL_MECHANISM and EMBEDSTREAM_SASL_USERNAME")
        if self.inputs:
            try:
                specs = self.input_specs()
            except ConfigError as exc:
                errors.append(str(exc))
            else:
                for spec in specs:
                    if spec.topic in (self.dlq_topic, self.alerts_topic):
                        errors.append(f"{PREFIX}INPUTS={self.inputs}: topic {spec.topic!r} is the DLQ/alerts topic")
                    if spec.format == "avro" and not self.schema_registry_url:
                        errors.append(f"{PREFIX}INPUTS={self.inputs}: topic {spec.topic!r} has format = \"avro\": "
                                      f"set {PREFIX}SCHEMA_REGISTRY_URL")
        if errors:
            raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))

    # ----------------------------------------------------------------------------------
    def replace(self, **kw: Any) -> "Settings":
        new = dataclasses.replace(self, **kw)
        new.sources = {**self.sources, **{k: "override" for k in kw}}
        new.validate()
        return new

    def input_specs(self) -> list:
        """The entries of the inputs file (``EMBEDSTREAM_INPUTS``), checked; [] when none is set."""
        if not self.inputs:
            return []
        from app.inputs import MappingConfigError, load_inputs

        try:
            return load_inputs(self.inputs)
        except MappingConfigError as exc:
            raise ConfigError(f"{PREFIX}INPUTS={self.inputs}: {exc}") from None

    def input_topics(self) -> list[str]:
        """Every topic the worker consumes: the changes topic, then those of the inputs file."""
        topics = [self.changes_topic]
        topics += [s.topic for s in self.input_specs() if s.topic != self.changes_topic]
        return topics

    def kafka_config(self) -> dict[str, Any]:
        """librdkafka (confluent-kafka) connection settings."""
        if not self.bootstrap_servers:
            raise ConfigError("no Kafka bootstrap servers: set EMBEDSTREAM_BOOTSTRAP_SERVERS "
                              "(or use `embedstream dev`, which starts an embedded broker)")
        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers,
                                "security.protocol": self.security_protocol}
        if self.sasl_mechanism:
            conf.update({"sasl.mechanism": self.sasl_mechanism, "sasl.username": self.sasl_username,
                         "sasl.password": self.sasl_password})
        if self.ssl_cafile:
            conf["ssl.ca.location"] = self.ssl_cafile
        if self.ssl_certfile:  # mutual TLS
            conf.update({"ssl.certificate.location": self.ssl_certfile, "ssl.key.location": self.ssl_keyfile})
            if self.ssl_key_password:
                conf["ssl.key.password"] = self.ssl_key_password
        return conf

    def producer_config(self, **extra: Any) -> dict[str, Any]:
        """librdkafka producer settings: the connection, plus the Java-compatible partitioner."""
        return {**self.kafka_config(), "partitioner": PRODUCER_PARTITIONER, **extra}

    def describe(self) -> list[tuple[str, str, str, str]]:
        """(ENV NAME, value shown, source, doc) for every setting; secrets masked."""
        rows = []
        for f in self._settings_fields():
            v = getattr(self, f.name)
            shown = ("***" if v else "") if f.metadata.get("secret") else repr(v)
            rows.append((PREFIX + f.name.upper(), shown, self.sources.get(f.name, "default"), f.metadata["doc"]))
        return rows

    def __repr__(self) -> str:  # never print secrets
        parts = [f"{n.removeprefix(PREFIX).lower()}={v}" for n, v, _, _ in self.describe()]
        return "Settings(" + ", ".join(parts) + ")"
