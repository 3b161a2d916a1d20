"""Whether a service can reach Kafka with its settings, checked once at start.

Credentials the brokers refuse and certificates that do not verify never fix themselves, so a
service that needs Kafka stops at once with the reason (:func:`check_connection` raises
:class:`~provline.config.ConfigError`). Brokers that are merely away are waited for: the clients
keep retrying, so the check only logs that.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from provline.config import ConfigError, KafkaSettings

log = logging.getLogger("provline.kafka")

DEFAULT_CHECK_TIMEOUT_S = 10.0
_REPORTS_S = 0.2  # how long the client gets to hand over the errors it logged


def _quiet_logger() -> logging.Logger:
    quiet = logging.getLogger("provline.kafka.check")
    quiet.propagate = False
    if not quiet.handlers:
        quiet.addHandler(logging.NullHandler())
    return quiet


def check_connection(kafka: KafkaSettings, *, service: str, timeout_s: float = DEFAULT_CHECK_TIMEOUT_S) -> None:
    """Ask the brokers for metadata; ConfigError when they refuse the credentials or the TLS handshake fails."""
    errors: list[KafkaError] = []
    admin = AdminClient(kafka.librdkafka(error_cb=errors.append, logger=_quiet_logger()))
    try:
        admin.list_topics(timeout=timeout_s)
        return
    except KafkaException:
        admin.poll(_REPORTS_S)
    problem = _refusal(kafka, errors)
    if problem is not None:
        raise ConfigError(f"{service}: {problem}")
    detail = "; ".join(dict.fromkeys(error.str() for error in errors)) or "no answer"
    log.warning("%s: no Kafka broker answered within %.0f s (%s); going on, the clients keep retrying",
                service, timeout_s, detail)


def _refusal(kafka: KafkaSettings, errors: list[Any]) -> str | None:
    for error in errors:
        if error.code() in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED):
            return (f"Kafka refused the credentials of user {kafka.sasl_username!r} ({kafka.sasl_mechanism}): "
                    f"{error.str()}; check PROVLINE_KAFKA__SASL_USERNAME and PROVLINE_KAFKA__SASL_PASSWORD")
        if error.code() == KafkaError._SSL:
            return (f"the TLS handshake with Kafka failed: {error.str()}; check PROVLINE_KAFKA__SSL_CA_FILE (the CA "
                    "that signed the brokers' certificates) and PROVLINE_KAFKA__SSL_CHECK_HOSTNAME")
    return None
