"""Static checks of the deployment files (no Docker engine can run here)."""
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def test_compose_wires_the_worker_to_kafka_and_weaviate():
    spec = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    svc = spec["services"]
    assert {"kafka", "weaviate", "topics", "worker"} <= set(svc)
    env = svc["worker"]["environment"]
    assert env["EMBEDSTREAM_STORE"] == "weaviate" and env["EMBEDSTREAM_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert svc["worker"]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert svc["kafka"]["image"].startswith("apache/kafka:")
    major, minor = (int(x) for x in svc["weaviate"]["image"].rsplit(":", 1)[1].split(".")[:2])
    assert (major, minor) >= (1, 32)  # aliases


def test_dockerfile_installs_exactly_one_onnx_runtime():
    text = (REPO / "Dockerfile").read_text()
    assert 'pip install --no-cache-dir -e ".[${RUNTIME}]"' in text and "ARG RUNTIME=cpu" in text
