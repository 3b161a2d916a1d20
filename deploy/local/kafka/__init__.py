"""Local Apache Kafka broker harness (KRaft, from Maven artifacts)."""

from deploy.local.kafka.broker import BrokerError, LocalKafka, ensure_artifacts

__all__ = ["BrokerError", "LocalKafka", "ensure_artifacts"]
