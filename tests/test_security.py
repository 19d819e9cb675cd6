"""Kafka security against a real broker (issue 12, item 5): a SASL_SSL listener (SCRAM-SHA-512 and
PLAIN) and a mutual-TLS listener, with a throw-away CA made here with openssl.

The worker (Faust/aiokafka), `produce`, `replay`, `offsets`, `dlq` and `alerts` (librdkafka)
authenticate; a wrong password or certificate is one clear line and exit 2; no secret shows up in
logs, metrics, /readyz or `embedstream config`.
"""
from __future__ import annotations

import json
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from app.config import ConfigError, Settings
from conftest import REPO, settings_env, wait_for
from load.servers import free_port

SCRAM_USER, PLAIN_USER = "alice", "bob"


def _openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, f"openssl {' '.join(args)}: {r.stderr}"


def make_certs(d: Path, key_password: str) -> dict[str, str]:
    """A CA, a broker certificate for 127.0.0.1 (SAN IP:127.0.0.1) and a client certificate whose key
    is encrypted with ``key_password``. Returns the paths."""
    d.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=embedstream test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    for name, cn, eku in (("broker", "127.0.0.1", "serverAuth"), ("client", "embedstream-worker", "clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={cn}", cwd=d)
        (d / f"{name}.ext").write_text(f"subjectAltName=IP:127.0.0.1\nextendedKeyUsage={eku}\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    # the broker's PEM keystore: PKCS#8 key + certificate in one file
    (d / "broker-keystore.pem").write_text((d / "broker.key").read_text() + (d / "broker.pem").read_text())
    _openssl("pkcs8", "-topk8", "-in", "client.key", "-out", "client-encrypted.key", "-v2", "aes-256-cbc",
             "-passout", f"pass:{key_password}", cwd=d)
    return {"ca": str(d / "ca.pem"), "keystore": str(d / "broker-keystore.pem"),
            "client_cert": str(d / "client.pem"), "client_key": str(d / "client-encrypted.key")}


class SecureBroker:
    def __init__(self, server, certs, passwords):
        self.server, self.certs, self.passwords = server, certs, passwords

    @property
    def sasl_bootstrap(self) -> str:
        return self.server.listener_bootstrap("SASL_SSL")

    @property
    def mtls_bootstrap(self) -> str:
        return self.server.listener_bootstrap("MTLS")


@pytest.fixture(scope="session")
def secure_broker(tmp_path_factory):
    """A second Kafka: SASL_SSL (SCRAM-SHA-512 user alice, PLAIN user bob) and MTLS (SSL, client
    certificate required) listeners beside the PLAINTEXT one the broker itself uses."""
    from load.servers.kafka import KafkaServer

    pw = {SCRAM_USER: secrets.token_urlsafe(16), PLAIN_USER: secrets.token_urlsafe(16),
          "key": secrets.token_urlsafe(12)}
    certs = make_certs(tmp_path_factory.mktemp("tls"), pw["key"])
    config = {
        "ssl.keystore.type": "PEM", "ssl.keystore.location": certs["keystore"],
        "ssl.truststore.type": "PEM", "ssl.truststore.location": certs["ca"],
        "listener.name.sasl_ssl.sasl.enabled.mechanisms": "SCRAM-SHA-512,PLAIN",
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config":
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "listener.name.sasl_ssl.plain.sasl.jaas.config":
            f'org.apache.kafka.common.security.plain.PlainLoginModule required user_{PLAIN_USER}="{pw[PLAIN_USER]}";',
        "listener.name.mtls.ssl.client.auth": "required",
    }
    k = KafkaServer(tmp_path_factory.mktemp("secure-kafka"), config=config,
                    listeners={"SASL_SSL": ("SASL_SSL", 0), "MTLS": ("SSL", 0)},
                    format_args=["--add-scram", f"SCRAM-SHA-512=[name={SCRAM_USER},password={pw[SCRAM_USER]}]"])
    k.start()
    yield SecureBroker(k, certs, pw)
    k.stop()


def _settings(secure_broker, tmp_path, how: str, **over) -> Settings:
    """Settings for one test on the secured broker (topics created through the secured listener)."""
    from app.topics import create_topics

    tag = uuid.uuid4().hex[:8]
    b, c, pw = secure_broker, secure_broker.certs, secure_broker.passwords
    if how == "SCRAM-SHA-512":
        sec = dict(bootstrap_servers=b.sasl_bootstrap, security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                   sasl_username=SCRAM_USER, sasl_password=pw[SCRAM_USER], ssl_cafile=c["ca"])
    elif how == "PLAIN":
        sec = dict(bootstrap_servers=b.sasl_bootstrap, security_protocol="SASL_SSL", sasl_mechanism="PLAIN",
                   sasl_username=PLAIN_USER, sasl_password=pw[PLAIN_USER], ssl_cafile=c["ca"])
    else:  # mutual TLS
        sec = dict(bootstrap_servers=b.mtls_bootstrap, security_protocol="SSL", ssl_cafile=c["ca"],
                   ssl_certfile=c["client_cert"], ssl_keyfile=c["client_key"], ssl_key_password=pw["key"])
    base = dict(data_dir=str(tmp_path / "data"), app_id=f"es-sec-{tag}", changes_topic=f"changes-{tag}",
                alerts_topic=f"alerts-{tag}", dlq_topic=f"dlq-{tag}", batch_max_wait_s=0.2, metrics_port=0,
                session_timeout_s=6.0, heartbeat_interval_s=1.0)
    s = Settings.load(env={}, **{**base, **sec, **over})
    create_topics(s, replication_factor=1, echo=lambda m: None)
    return s


def run(args, env, input=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=REPO, env=env, input=input,
                          capture_output=True, text=True, timeout=timeout)


def _secrets(secure_broker) -> list[str]:
    return list(secure_broker.passwords.values())


def _assert_no_secret(text: str, secure_broker, where: str) -> None:
    for pw in _secrets(secure_broker):
        assert pw not in text, f"a secret appears in {where}"


# -- settings ---------------------------------------------------------------------------------------
def test_kafka_config_carries_sasl_and_mutual_tls(tmp_path):
    for name in ("ca.pem", "c.pem", "k.pem"):
        (tmp_path / name).write_text("-")
    s = Settings.load(env={}, bootstrap_servers="h:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                      sasl_username="u", sasl_password="p", ssl_cafile=str(tmp_path / "ca.pem"),
                      ssl_certfile=str(tmp_path / "c.pem"), ssl_keyfile=str(tmp_path / "k.pem"), ssl_key_password="kp")
    assert s.kafka_config() == {
        "bootstrap.servers": "h:9093", "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "u", "sasl.password": "p", "ssl.ca.location": str(tmp_path / "ca.pem"),
        "ssl.certificate.location": str(tmp_path / "c.pem"), "ssl.key.location": str(tmp_path / "k.pem"),
        "ssl.key.password": "kp"}
    assert s.producer_config()["partitioner"] == "murmur2_random"
    assert "sasl_password=***" in repr(s) and "ssl_key_password=***" in repr(s) and "kp" not in repr(s)


@pytest.mark.parametrize("over,needle", [
    (dict(security_protocol="SSL", ssl_certfile="{f}"), "SSL_KEYFILE go together"),
    (dict(security_protocol="PLAINTEXT", ssl_certfile="{f}", ssl_keyfile="{f}"), "needs EMBEDSTREAM_SECURITY_PROTOCOL"),
    (dict(security_protocol="SSL", ssl_cafile="/no/such/ca.pem"), "EMBEDSTREAM_SSL_CAFILE='/no/such/ca.pem': no such file"),
    (dict(security_protocol="SASL_SSL", sasl_mechanism="KERBEROS", sasl_username="u"), "EMBEDSTREAM_SASL_MECHANISM"),
])
def test_invalid_security_settings_name_the_setting(tmp_path, over, needle):
    f = tmp_path / "x.pem"
    f.write_text("-")
    with pytest.raises(ConfigError, match=needle):
        Settings.load(env={}, **{k: v.format(f=f) for k, v in over.items()})


def test_config_masks_the_sasl_and_key_passwords(tmp_path):
    for name in ("c.pem", "k.pem"):
        (tmp_path / name).write_text("-")
    env = {"PATH": "/usr/bin:/bin", "EMBEDSTREAM_SECURITY_PROTOCOL": "SASL_SSL", "EMBEDSTREAM_SASL_MECHANISM": "PLAIN",
           "EMBEDSTREAM_SASL_USERNAME": "bob", "EMBEDSTREAM_SASL_PASSWORD": "pw-sasl-8c1f",
           "EMBEDSTREAM_SSL_CERTFILE": str(tmp_path / "c.pem"), "EMBEDSTREAM_SSL_KEYFILE": str(tmp_path / "k.pem"),
           "EMBEDSTREAM_SSL_KEY_PASSWORD": "pw-key-77ad"}
    out = run(["config"], env)
    assert out.returncode == 0, out.stderr
    assert "pw-sasl-8c1f" not in out.stdout + out.stderr and "pw-key-77ad" not in out.stdout + out.stderr
    assert "EMBEDSTREAM_SSL_KEY_PASSWORD" in out.stdout and "EMBEDSTREAM_SSL_CERTFILE" in out.stdout


# -- the worker and the tools on the secured listeners ----------------------------------------------
def _open_store(settings, encoder):
    from app.store.lancedb import LanceDBStore

    try:
        return LanceDBStore(f"{settings.data_dir}/lancedb", encoder.fingerprint, encoder.dim, create=False)
    except Exception:
        return None


def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.read().decode()
    except urllib.error.HTTPError as e:
        return e.read().decode()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SCRAM-SHA-512", "PLAIN", "mTLS"])
def test_worker_and_tools_authenticate(secure_broker, worker_factory, encoder, tmp_path, how):
    from confluent_kafka import Producer

    port = free_port()
    s = _settings(secure_broker, tmp_path, how, metrics_port=port)
    env = settings_env(s)
    worker = worker_factory(s)
    docs = [{"doc_id": f"sec-{i}", "version": 1, "text": f"secured document number {i} about {how}"}
            for i in range(5)]
    out = run(["produce", "-"], env, input="\n".join(json.dumps(d) for d in docs))
    assert out.returncode == 0, out.stderr
    # a record the worker dead-letters, sent by a librdkafka producer on the same settings
    p = Producer(s.producer_config())
    p.produce(s.changes_topic, key=b"junk", value=b"\x09 not an event")
    assert p.flush(30) == 0

    store = wait_for(lambda: _open_store(s, encoder), 90, what="the worker's LanceDB tables")
    wait_for(lambda: store.count_documents() == 5, 120, interval=1, what="5 documents indexed over " + how)

    shown = run(["dlq", "show", "--json"], env)
    assert shown.returncode == 0, shown.stderr
    [letter] = [json.loads(line) for line in shown.stdout.splitlines()]
    assert letter["key"] == "junk" and letter["reason"] == "unknown-magic-byte"
    again = run(["dlq", "replay"], env)  # re-injected by librdkafka over the secured listener
    assert again.returncode == 0 and "re-injected 1" in again.stdout, again.stderr
    wait_for(lambda: len(run(["dlq", "show", "--json"], env).stdout.splitlines()) == 2, 60,
             what="the re-injected record dead-lettered again")

    offsets = run(["offsets", "show"], env)
    assert offsets.returncode == 0 and s.changes_topic in offsets.stdout, offsets.stderr
    alerts = run(["alerts", "--idle", "1"], env)
    assert alerts.returncode == 0, alerts.stderr
    dry = run(["replay", "--dry-run", "--idle", "1"], env)
    assert dry.returncode == 0, dry.stderr
    config = run(["config"], env)
    assert config.returncode == 0, config.stderr

    metrics, readyz = _get(f"http://127.0.0.1:{port}/metrics"), _get(f"http://127.0.0.1:{port}/readyz")
    assert "embedstream_" in metrics and json.loads(readyz)["checks"]
    assert worker.alive(), worker.log()[-3000:]
    assert worker.stop() == 0, worker.log()[-3000:]
    for where, text in [("the worker log", worker.log()), ("/metrics", metrics), ("/readyz", readyz),
                        ("`embedstream config`", config.stdout + config.stderr),
                        ("the tools' output", "".join(r.stdout + r.stderr for r in (out, shown, again, offsets,
                                                                                       alerts, dry)))]:
        _assert_no_secret(text, secure_broker, where)


# -- refused credentials: one line, exit 2 ----------------------------------------------------------
COMMANDS = [["worker"], ["produce", "-"], ["offsets", "show"], ["dlq", "show"], ["alerts", "--idle", "1"],
            ["replay", "--dry-run"], ["topics", "list"]]


def _one_clear_line(out, *needles) -> str:
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert len(lines) == 1, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and "%3|" not in out.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c[0])
def test_wrong_scram_password_is_one_clear_line(secure_broker, tmp_path, cmd):
    s = _settings(secure_broker, tmp_path, "SCRAM-SHA-512")
    env = {**settings_env(s), "EMBEDSTREAM_SASL_PASSWORD": "not-" + secure_broker.passwords[SCRAM_USER]}
    out = run(cmd, env, input='{"doc_id": "a", "version": 1, "text": "x"}\n', timeout=60)
    line = _one_clear_line(out, "Kafka authentication failed", "EMBEDSTREAM_SASL_PASSWORD", "SCRAM-SHA-512",
                           s.bootstrap_servers)
    _assert_no_secret(out.stdout + out.stderr, secure_broker, "the error")
    assert env["EMBEDSTREAM_SASL_PASSWORD"] not in line


def test_wrong_plain_password_is_one_clear_line(secure_broker, tmp_path):
    s = _settings(secure_broker, tmp_path, "PLAIN")
    out = run(["offsets", "show"], {**settings_env(s), "EMBEDSTREAM_SASL_PASSWORD": "wrong"}, timeout=60)
    _one_clear_line(out, "Kafka authentication failed", "PLAIN as 'bob'")


@pytest.mark.parametrize("change,needle", [
    ({"EMBEDSTREAM_SSL_CERTFILE": None, "EMBEDSTREAM_SSL_KEYFILE": None, "EMBEDSTREAM_SSL_KEY_PASSWORD": None},
     "Kafka TLS handshake failed"),
    ({"EMBEDSTREAM_SSL_KEY_PASSWORD": "wrong"}, "EMBEDSTREAM_SSL_KEY_PASSWORD"),
    ({"EMBEDSTREAM_SSL_CAFILE": "/etc/ssl/certs/ca-certificates.crt"}, "certificate verify failed"),
], ids=["no-client-certificate", "wrong-key-password", "unknown-ca"])
def test_refused_tls_is_one_clear_line(secure_broker, tmp_path, change, needle):
    s = _settings(secure_broker, tmp_path, "mTLS")
    env = settings_env(s)
    for k, v in change.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    if not Path(env.get("EMBEDSTREAM_SSL_CAFILE", "/")).is_file():
        pytest.skip("no system CA bundle on this machine")
    for cmd in (["offsets", "show"], ["worker"]):
        out = run(cmd, env, timeout=60)
        _one_clear_line(out, needle, s.bootstrap_servers)
        _assert_no_secret(out.stdout + out.stderr, secure_broker, "the error")
