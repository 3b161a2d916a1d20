"""Local Apache Kafka broker and multi-broker cluster harness (KRaft, from Maven artifacts)."""

from deploy.local.kafka.broker import (
    BrokerError,
    KafkaNode,
    LocalKafka,
    LocalKafkaCluster,
    create_topics,
    ensure_artifacts,
)

__all__ = ["BrokerError", "KafkaNode", "LocalKafka", "LocalKafkaCluster", "create_topics", "ensure_artifacts"]
