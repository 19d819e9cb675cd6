"""Deployment files: the compose file is validated against the Compose Specification
JSON schema (vendored in tests/fixtures, Apache-2.0; no Docker engine or compose plugin
can run here), and its wiring is checked against the code's settings and metrics."""
import json
import re
from pathlib import Path

import jsonschema
import yaml

from app.config import Settings
from app.observability import Metrics

REPO = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
GPU_OVERRIDE = yaml.safe_load((REPO / "deploy" / "compose.gpu.yml").read_text())


def merged(base: dict, override: dict) -> dict:
    """Compose's merge of an override file (-f a -f b): mappings merged key by key, the rest replaced."""
    out = dict(base)
    for k, v in override.items():
        out[k] = merged(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def test_compose_file_is_valid_against_the_compose_spec():
    schema = json.loads((REPO / "tests" / "fixtures" / "compose-spec.json").read_text())
    jsonschema.validate(COMPOSE, schema, cls=jsonschema.Draft202012Validator)
    jsonschema.validate(GPU_OVERRIDE, schema, cls=jsonschema.Draft202012Validator)
    jsonschema.validate(merged(COMPOSE, GPU_OVERRIDE), schema, cls=jsonschema.Draft202012Validator)


def test_the_schema_check_catches_mistakes():
    schema = json.loads((REPO / "tests" / "fixtures" / "compose-spec.json").read_text())
    bad = {"services": {"worker": {"image": "x", "enviroment": {"A": "1"}}}}  # misspelt key
    try:
        jsonschema.validate(bad, schema, cls=jsonschema.Draft202012Validator)
    except jsonschema.ValidationError as exc:
        assert "enviroment" in str(exc)
    else:
        raise AssertionError("a misspelt service key passed the compose schema")


def test_compose_services_and_wiring():
    svc = COMPOSE["services"]
    assert {"kafka", "weaviate", "topics", "worker", "prometheus", "grafana"} <= set(svc)
    assert svc["kafka"]["image"].startswith("apache/kafka:")
    major, minor = (int(x) for x in svc["weaviate"]["image"].rsplit(":", 1)[1].split(".")[:2])
    assert (major, minor) >= (1, 32)  # aliases
    env = svc["worker"]["environment"]
    assert env["EMBEDSTREAM_STORE"] == "weaviate" and env["EMBEDSTREAM_BOOTSTRAP_SERVERS"] == "kafka:9092"
    known = {n for n, *_ in Settings.load(env={}).describe()}
    for name in ("worker", "topics"):
        for var in svc[name]["environment"]:
            assert var in known, f"{name}: unknown setting {var}"
    for var in GPU_OVERRIDE["services"]["worker"]["environment"]:
        assert var in known, f"compose.gpu.yml: unknown setting {var}"
    assert svc["worker"]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    for vol in svc["prometheus"]["volumes"] + svc["grafana"]["volumes"]:
        src = vol.split(":")[0]
        if src.startswith("./"):
            assert (REPO / src).exists(), src


def test_prometheus_scrapes_the_worker_metrics_port():
    prom = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = [t for sc in prom["scrape_configs"] for c in sc["static_configs"] for t in c["targets"]]
    assert "worker:9464" in targets and Settings.load(env={}).metrics_port == 9464


def test_dashboard_queries_only_metrics_the_worker_exports():
    dash = json.loads((REPO / "deploy" / "grafana" / "dashboards" / "embedstream.json").read_text())
    exported = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",),
                "info": ("_info",)}
    for family in Metrics().registry.collect():
        exported.update(family.name + sfx for sfx in suffixes.get(family.type, ("",)))
    exported |= {"embedstream_drift_alerts_total", "embedstream_drift_active"}  # app.drift metrics
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for word in ("throughput", "freshness", "lag", "dead letters", "drift"):
        assert word in titles
    for panel in dash["panels"]:
        for t in panel["targets"]:
            for name in re.findall(r"embedstream_[a-z_]+", t["expr"]):
                assert name in exported, f"{panel['title']}: {name} is not exported"


def test_images_install_exactly_one_onnx_runtime():
    cpu = (REPO / "Dockerfile").read_text()
    gpu = (REPO / "deploy" / "Dockerfile.gpu").read_text()
    assert '".[cpu]"' in cpu and "gpu" not in cpu.split("RUN pip", 1)[1].split("\n")[0]
    assert '".[gpu]"' in gpu and "[cpu" not in gpu


def test_gpu_worker_replaces_the_cpu_worker():
    """One worker service in either stack: the GPU override changes `worker`, it adds no second
    member of the consumer group (which would write another model's collection)."""
    assert not any("gpu" in name for name in COMPOSE["services"])
    assert set(GPU_OVERRIDE["services"]) == {"worker"}
    gpu = merged(COMPOSE, GPU_OVERRIDE)["services"]
    assert [n for n, sv in gpu.items() if sv.get("command") == ["worker"]] == ["worker"]
    w = gpu["worker"]
    assert w["image"] == "embedstream:gpu" and w["build"]["dockerfile"] == "deploy/Dockerfile.gpu"
    assert w["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    env = w["environment"]
    assert env["EMBEDSTREAM_DEVICE"] == "cuda" and env["EMBEDSTREAM_MODEL_VARIANT"] == "fp32"
    assert env["EMBEDSTREAM_STORE"] == "weaviate"  # the CPU worker's settings are kept


def test_kafka_service_keeps_its_log_and_matches_the_test_broker():
    from load.servers.kafka import BROKER_SETTINGS, KAFKA_VERSION

    kafka = COMPOSE["services"]["kafka"]
    assert kafka["image"] == f"apache/kafka:{KAFKA_VERSION}"
    env = kafka["environment"]
    log_dir = env["KAFKA_LOG_DIRS"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in kafka["volumes"]}
    assert log_dir in mounts and mounts[log_dir] in COMPOSE["volumes"], "the Kafka log is not in a volume"
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"])  # fixed, base64 UUID
    for key, value in BROKER_SETTINGS.items():
        var = "KAFKA_" + key.upper().replace(".", "_")
        assert env.get(var) == value, f"compose kafka {var}={env.get(var)!r}, tests run with {value!r}"
