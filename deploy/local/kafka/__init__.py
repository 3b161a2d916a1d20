"""Local Apache Kafka broker harness (KRaft, from Maven artifacts)."""

from deploy.local.kafka.broker import BrokerError, LocalKafka, create_topics, ensure_artifacts

__all__ = ["BrokerError", "LocalKafka", "create_topics", "ensure_artifacts"]
