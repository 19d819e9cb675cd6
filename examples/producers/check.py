"""Run the README's producer examples against a real Kafka (and registry) and check what the worker sees.

    .venv/bin/python examples/producers/check.py java      # needs a JDK 17+ (Kafka and Avro jars from the test caches)
    .venv/bin/python examples/producers/check.py kafkajs   # needs node + `npm install kafkajs@2 @kafkajs/confluent-schema-registry@4`
                                                           # in examples/producers (NODE_PATH is set to its node_modules)

Starts Apache Kafka (load/servers/kafka.py) and, for kafkajs, the registry (load/servers/registry.py) on
127.0.0.1, runs the example, then reads the topic back: every record must sit in the partition the
Java client computes and decode with embedstream's codec. Exit status 0 when it all holds.
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from app.components import build_codec  # noqa: E402
from app.config import Settings  # noqa: E402
from app.topics import create_topics  # noqa: E402
from conftest import consume_all  # noqa: E402
from load.servers.kafka import KafkaServer  # noqa: E402
from test_producer_sdk import java_partition  # noqa: E402


def main(which: str) -> int:
    cache = Path(os.environ.get("EMBEDSTREAM_CACHE_DIR", Path.home() / ".cache" / "embedstream"))
    work = Path(tempfile.mkdtemp(prefix="producer-examples-"))
    kafka = KafkaServer(work / "kafka").start()
    registry = None
    try:
        over = {}
        if which == "kafkajs":
            from load.servers.registry import RegistryServer

            registry = RegistryServer(work / "registry")
            registry.start()
            over["schema_registry_url"] = registry.url
        s = Settings.load(env={}, bootstrap_servers=kafka.bootstrap, changes_topic=f"examples-{uuid.uuid4().hex[:6]}",
                          **over)
        create_topics(s, replication_factor=1, echo=lambda m: None)
        schema = str(REPO / "schemas" / "document_change.avsc")
        if which == "java":
            jars = glob.glob(str(cache / "kafka-*" / "lib" / "*.jar")) + \
                glob.glob(str(cache / "apicurio-registry-*" / "app" / "lib" / "main" / "org.apache.avro.avro-*.jar")) + \
                glob.glob(str(cache / "apicurio-registry-*" / "app" / "lib" / "main" / "*jackson-*.jar"))
            cmd = [shutil.which("java") or "java", "-cp", ":".join(jars), str(HERE / "Produce.java"), kafka.bootstrap,
                   s.changes_topic, schema]
            env = dict(os.environ)
        else:
            cmd = ["node", str(HERE / "produce.js")]
            env = {**os.environ, "BROKERS": kafka.bootstrap, "REGISTRY": registry.url, "TOPIC": s.changes_topic,
                   "SCHEMA": schema, "NODE_PATH": str(HERE / "node_modules")}
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        if out.returncode != 0:
            print(out.stdout[-2000:], out.stderr[-3000:], file=sys.stderr)
            return 1
        msgs = consume_all(s.bootstrap_servers, s.changes_topic, 41)
        codec = build_codec(s)
        wrong = [(m.key(), m.partition()) for m in msgs if m.partition() != java_partition(m.key(), 8)]
        events = [codec.decode(m.key(), m.value(), s.changes_topic) for m in msgs]
        print(f"{which}: {len(msgs)} records, {len(wrong)} in another partition than Java's; decoded "
              f"{sum(not e.is_tombstone for e in events)} upserts and {sum(e.is_tombstone for e in events)} tombstone(s)")
        return 0 if len(msgs) == 41 and not wrong else 1
    finally:
        if registry is not None:
            registry.stop()
        kafka.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "java"))
