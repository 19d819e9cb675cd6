import pytest

from app.config import ConfigError, Settings


def test_defaults_and_env_precedence(tmp_path):
    cfg = tmp_path / "es.toml"
    cfg.write_text('batch_max_events = 32\nstore = "weaviate"\n')
    s = Settings.load(env={"EMBEDSTREAM_CONFIG": str(cfg), "EMBEDSTREAM_BATCH_MAX_EVENTS": "64"})
    assert s.batch_max_events == 64 and s.store == "weaviate"
    assert s.sources["batch_max_events"].startswith("env") and s.sources["store"].startswith("file")
    assert Settings.load(env={}, batch_max_events=7).batch_max_events == 7


@pytest.mark.parametrize("env,msg", [
    ({"EMBEDSTREAM_CHUNK_TOKENS": "512"}, "CHUNK_TOKENS"),
    ({"EMBEDSTREAM_SESSION_TIMEOUT_S": "3"}, "SESSION_TIMEOUT_S"),
    ({"EMBEDSTREAM_LOG_JSON": "maybe"}, "LOG_JSON"),
    ({"EMBEDSTREAM_SECURITY_PROTOCOL": "SASL_SSL"}, "SASL"),
    ({"EMBEDSTREAM_DRIFT_SERIAL_ALPHA": "1.5"}, "DRIFT_SERIAL_ALPHA"),
])
def test_validation_errors_name_the_setting(env, msg):
    with pytest.raises(ConfigError, match=msg):
        Settings.load(env=env)


def test_unknown_key_in_file(tmp_path):
    cfg = tmp_path / "es.toml"
    cfg.write_text("batch_size = 3\n")
    with pytest.raises(ConfigError, match="batch_size"):
        Settings.load(env={"EMBEDSTREAM_CONFIG": str(cfg)})


def test_secrets_never_in_repr():
    s = Settings.load(env={"EMBEDSTREAM_WEAVIATE_API_KEY": "k-123", "EMBEDSTREAM_SASL_PASSWORD": "pw-456"})
    assert "k-123" not in repr(s) and "pw-456" not in repr(s)
    assert "k-123" not in str(s.describe())


def test_kafka_config_requires_servers():
    with pytest.raises(ConfigError, match="BOOTSTRAP_SERVERS"):
        Settings.load(env={}).kafka_config()
    conf = Settings.load(env={}, bootstrap_servers="k:9092", security_protocol="SASL_SSL",
                         sasl_mechanism="SCRAM-SHA-512", sasl_username="u", sasl_password="p").kafka_config()
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512" and conf["bootstrap.servers"] == "k:9092"


def test_readme_lists_every_setting_with_its_default():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for name, value, _, _ in Settings.load(env={}).describe():
        shown = "(empty)" if value in ("''", "") else f"`{value}`"
        assert f"| `{name}` | {shown} |" in readme, f"{name} (default {value}) missing from the README table"
