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


def test_compose_file_is_valid_against_the_compose_spec():
    schema = json.loads((REPO / "tests" / "fixtures" / "compose-spec.json").read_text())
    jsonschema.validate(COMPOSE, schema, cls=jsonschema.Draft202012Validator)


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
    assert {"kafka", "weaviate", "topics", "worker", "worker-gpu", "prometheus", "grafana"} <= set(svc)
    assert svc["kafka"]["image"].startswith("apache/kafka:")
    major, minor = (int(x) for x in svc["weaviate"]["image"].rsplit(":", 1)[1].split(".")[:2])
    assert (major, minor) >= (1, 32)  # aliases
    env = svc["worker"]["environment"]
    assert env["EMBEDSTREAM_STORE"] == "weaviate" and env["EMBEDSTREAM_BOOTSTRAP_SERVERS"] == "kafka:9092"
    known = {n for n, *_ in Settings.load(env={}).describe()}
    for name in ("worker", "worker-gpu", "topics"):
        for var in svc[name]["environment"]:
            assert var in known, f"{name}: unknown setting {var}"
    assert svc["worker"]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    gpu = svc["worker-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
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
