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
    schema_registry_url: str = _s("", "Confluent Schema Registry URL. Empty: Avro single-object encoding.")
    broker_flavour: str = _s("auto", "Which broker the offsets tools talk to: auto (detect), kafka, or tansu (the "
                                     "embedded dev broker, whose ListOffsets/offsets_for_times/DescribeGroups "
                                     "need workarounds).", choices=("auto", "kafka", "tansu"))
    session_timeout_s: float = _s(6.0, "Consumer group session timeout (>= 6 s on real Kafka; short joins).")
    heartbeat_interval_s: float = _s(1.0, "Consumer heartbeat interval.")
    security_protocol: str = _s("PLAINTEXT", "Kafka security protocol.",
                                choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"))
    sasl_mechanism: str = _s("", "SASL mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512).")
    sasl_username: str = _s("", "SASL user name.")
    sasl_password: str = _s("", "SASL password.", secret=True)
    ssl_cafile: str = _s("", "CA bundle for SSL connections to Kafka.")
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
    # --- drift ---------------------------------------------------------------------------
    drift_enabled: bool = _s(True, "Watch the produced vectors for drift and publish alerts.")
    drift_warmup: int = _s(2000, "Vectors used to learn the drift reference and its thresholds (no alerts before; "
                                 "3/4 fit it, 1/4 is the collection's own null sample; >= 1000 advised).")
    drift_canary_every: int = _s(64, "Run the encoder canary every N batches (and at start-up); 0: never.")
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
        if self.security_protocol.startswith("SASL") and not (self.sasl_mechanism and self.sasl_username):
            errors.append("SASL needs EMBEDSTREAM_SASL_MECHANISM and EMBEDSTREAM_SASL_USERNAME")
        if errors:
            raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))

    # ----------------------------------------------------------------------------------
    def replace(self, **kw: Any) -> "Settings":
        new = dataclasses.replace(self, **kw)
        new.sources = {**self.sources, **{k: "override" for k in kw}}
        new.validate()
        return new

    def input_topics(self) -> list[str]:
        """Every topic the worker consumes (today the changes topic; input mappings add more)."""
        return [self.changes_topic]

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
        return conf

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
