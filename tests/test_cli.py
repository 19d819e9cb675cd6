"""The command line: help texts, produce -> worker -> search through the real broker."""
import json
import subprocess
import sys

import pytest

from app.cli import build_parser
from conftest import REPO, settings_env, wait_for


def run(args, env=None, input=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=REPO, env=env, input=input,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("cmd", [[], ["worker"], ["dev"], ["demo"], ["produce"], ["search"], ["topics", "create"],
                                 ["topics", "list"], ["config"]])
def test_every_command_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: embedstream" in out and len(out) > 200


def test_config_masks_secrets():
    env = {"PATH": "/usr/bin:/bin", "EMBEDSTREAM_WEAVIATE_API_KEY": "s3cr3t-key",
           "EMBEDSTREAM_SASL_PASSWORD": "hunter2", "EMBEDSTREAM_BATCH_MAX_EVENTS": "64"}
    out = run(["config"], env=env)
    assert out.returncode == 0, out.stderr
    assert "s3cr3t-key" not in out.stdout and "hunter2" not in out.stdout
    assert "EMBEDSTREAM_BATCH_MAX_EVENTS" in out.stdout and "64" in out.stdout and "env" in out.stdout


def test_invalid_setting_is_a_clear_error():
    out = run(["config"], env={"PATH": "/usr/bin:/bin", "EMBEDSTREAM_BATCH_MAX_EVENTS": "many"})
    assert out.returncode == 2 and "EMBEDSTREAM_BATCH_MAX_EVENTS='many'" in out.stderr
    out = run(["config"], env={"PATH": "/usr/bin:/bin", "EMBEDSTREAM_STORE": "redis"})
    assert out.returncode == 2 and "lancedb" in out.stderr


def test_topics_create_is_idempotent(settings):
    env = settings_env(settings)
    env["EMBEDSTREAM_DLQ_TOPIC"] = settings.dlq_topic + "-new"
    first = run(["topics", "create", "--replication-factor", "1"], env=env)
    assert first.returncode == 0, first.stderr
    assert "created  " + settings.dlq_topic + "-new" in first.stdout
    assert "exists   " + settings.changes_topic in first.stdout
    again = run(["topics", "create", "--replication-factor", "1"], env=env)
    assert again.returncode == 0 and "created" not in again.stdout
    listed = run(["topics", "list"], env=env)
    assert "MISSING" not in listed.stdout and "8 partitions" in listed.stdout


def test_produce_then_search(settings, worker_factory, tmp_path):
    env = settings_env(settings)
    docs = [{"doc_id": "rose", "version": 1, "text": "Prune roses in late winter before buds break.",
             "metadata": {"title": "Roses"}},
            {"doc_id": "dns", "version": 1, "text": "DNS resolvers turn names into IP addresses."},
            {"doc_id": "dns", "tombstone": True}]
    worker_factory(settings)
    out = run(["produce", "-"], env=env, input="\n".join(json.dumps(d) for d in docs))
    assert out.returncode == 0, out.stderr
    assert "delivered 3 events" in out.stderr

    def searched():
        r = run(["search", "when to cut back rose bushes", "--json", "-k", "3"], env=env)
        return r.returncode == 0 and json.loads(r.stdout)
    hits = wait_for(searched, 90, interval=1, what="search results")
    assert hits[0]["doc_id"] == "rose" and hits[0]["metadata"]["title"] == "Roses"
    assert all(h["doc_id"] != "dns" for h in hits)
    human = run(["search", "rose pruning"], env=env)
    assert "rose #0" in human.stdout and "Roses" in human.stdout


def test_produce_rejects_bad_lines(settings):
    out = run(["produce", "-"], env=settings_env(settings), input='{"doc_id": "a", "text": "no version"}\n')
    assert out.returncode == 2 and "line 1" in out.stderr and "version" in out.stderr


def test_search_without_index_says_so(tmp_path):
    out = run(["search", "anything"], env={"PATH": "/usr/bin:/bin", "EMBEDSTREAM_DATA_DIR": str(tmp_path)})
    assert out.returncode == 1 and "no index" in out.stderr, out.stderr
