"""Kafka connection security: the TLS context of the worker's aiokafka clients, and a fast check
that the configured credentials work, so a wrong password or certificate is one clear line.

Settings (``app/config.py``): ``EMBEDSTREAM_SECURITY_PROTOCOL`` (PLAINTEXT, SSL, SASL_PLAINTEXT,
SASL_SSL), ``EMBEDSTREAM_SASL_MECHANISM`` / ``_USERNAME`` / ``_PASSWORD`` (PLAIN, SCRAM-SHA-256,
SCRAM-SHA-512), ``EMBEDSTREAM_SSL_CAFILE`` (the CA that signed the brokers' certificates; empty:
the system's), and for mutual TLS ``EMBEDSTREAM_SSL_CERTFILE`` / ``EMBEDSTREAM_SSL_KEYFILE`` (PEM)
with ``EMBEDSTREAM_SSL_KEY_PASSWORD`` when the key is encrypted. librdkafka (confluent-kafka: the
CLI tools, the DLQ/replay producers) gets them from ``Settings.kafka_config()``; the worker's
Faust/aiokafka consumer and producer from :func:`ssl_context` (app/agents.py).

Why a check: on a failed SASL handshake or TLS verification librdkafka keeps retrying, logs a line
to stderr every few hundred milliseconds and reports only a transport timeout to the call that
was waiting. :func:`check_kafka_auth` connects once with the command's settings, swallowing those
logs, and raises :class:`KafkaAuthError` (a ConfigError: the CLI prints it as one line and exits 2)
naming what failed and which settings to check. An unreachable broker is not its business: it
returns and the command handles that as it always did (the worker waits for the broker).
No secret is ever part of a message.
"""
from __future__ import annotations

import logging
import re
import ssl
import time

from app.config import ConfigError, Settings

_PREFIX = re.compile(r"^\S+://\S+?/(?:bootstrap|\d+): ")
_AFTER = re.compile(r" \(after \d+ms in state \w+\)$")


class KafkaAuthError(ConfigError):
    """The Kafka cluster refused our credentials or TLS; the message names the settings to check."""


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for aiokafka (SSL and SASL_SSL): the CA, and the client certificate for
    mutual TLS. Hostname verification stays on (certificates for an IP need it as a SAN)."""
    if settings.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    try:
        ctx = ssl.create_default_context(cafile=settings.ssl_cafile or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"EMBEDSTREAM_SSL_CAFILE={settings.ssl_cafile!r}: cannot load the CA certificates "
                          f"({exc})") from None
    if settings.ssl_certfile:
        try:
            ctx.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile or None,
                                password=settings.ssl_key_password or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"EMBEDSTREAM_SSL_CERTFILE={settings.ssl_certfile!r} / EMBEDSTREAM_SSL_KEYFILE="
                              f"{settings.ssl_keyfile!r}: cannot load the client certificate and key (wrong "
                              f"EMBEDSTREAM_SSL_KEY_PASSWORD, or not PEM?): {exc}") from None
    return ctx


def _clean(msg: str) -> str:
    return _AFTER.sub("", _PREFIX.sub("", msg.strip()))


def _hint(settings: Settings, kind: str) -> str:
    if kind == "sasl":
        return (f"SASL {settings.sasl_mechanism} as {settings.sasl_username!r} - check EMBEDSTREAM_SASL_USERNAME, "
                "EMBEDSTREAM_SASL_PASSWORD and EMBEDSTREAM_SASL_MECHANISM")
    names = ["EMBEDSTREAM_SECURITY_PROTOCOL", "EMBEDSTREAM_SSL_CAFILE"]
    if settings.ssl_certfile or "certificate" in kind:
        names += ["EMBEDSTREAM_SSL_CERTFILE", "EMBEDSTREAM_SSL_KEYFILE"]
    return "TLS - check " + ", ".join(names)


def check_kafka_auth(settings: Settings, timeout: float = 15.0) -> None:
    """Connect once with ``settings``; raise :class:`KafkaAuthError` if the cluster refuses the
    credentials or the TLS handshake. PLAINTEXT: nothing to check, returns at once."""
    if settings.security_protocol == "PLAINTEXT":
        return
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    conf = settings.kafka_config()
    errors: list = []
    quiet = logging.Logger("embedstream.kafka-auth-check")  # not registered: librdkafka's retries stay here
    quiet.addHandler(logging.NullHandler())
    where = f"{settings.bootstrap_servers} ({settings.security_protocol})"
    try:
        # errors come through error_cb; librdkafka's own log (a line per retry) is not wanted here
        admin = AdminClient({**conf, "error_cb": errors.append, "logger": quiet, "log_level": 2})
    except KafkaException as exc:
        err = exc.args[0]
        text = err.str() if isinstance(err, KafkaError) else str(err)
        raise KafkaAuthError(f"Kafka client settings refused for {where}: {_clean(text)} - check "
                             "EMBEDSTREAM_SSL_CAFILE, EMBEDSTREAM_SSL_CERTFILE, EMBEDSTREAM_SSL_KEYFILE, "
                             "EMBEDSTREAM_SSL_KEY_PASSWORD") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=0.5)
            return
        except KafkaException:
            pass
        admin.poll(0)
        for e in errors:
            code, text = e.code(), e.str()
            if code == KafkaError._AUTHENTICATION:
                raise KafkaAuthError(f"Kafka authentication failed on {where}: {_clean(text)} "
                                     f"({_hint(settings, 'sasl')})")
            if code == KafkaError._SSL or (code == KafkaError._TRANSPORT and ("SSL" in text or "ssl/tls" in text)):
                kind = "certificate" if "certificate" in text else "tls"
                raise KafkaAuthError(f"Kafka TLS handshake failed on {where}: {_clean(text)} ({_hint(settings, kind)})")
        if any(e.code() == KafkaError._ALL_BROKERS_DOWN for e in errors):
            return  # unreachable, not refused: the command deals with it
    return
