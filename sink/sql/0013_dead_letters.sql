-- Every message of the dead-letter topic, as the sink read it (sink.dead_letters.dead_letter_row): what could
-- not be stored, why, and where it came from. An event dead-lettered after it was chained (a trace the
-- broker refused for its size, an event ClickHouse refused) leaves a gap in its session's chain;
-- provline verify and the complete trace name the gap dead-lettered, with its reason, instead of
-- deleted, unless the ledger recorded the event as stored (then it was deleted after all).
-- event_id, hash and producer_session: the event's own when the message's bytes decode, else the
-- dead letter's headers' (provline.schemas.dead_letters), else ''. One row per dead-letter position.
CREATE TABLE IF NOT EXISTS dead_letters
(
    kafka_topic      String,
    kafka_partition  Int32,
    kafka_offset     Int64,
    reason           LowCardinality(String),
    error            String,
    source_topic     String,
    source_partition Int32,
    source_offset    Int64,
    event_id         String,
    hash             String,
    producer_session String,
    kind             LowCardinality(String),
    raw              String,
    stored           DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(stored)
ORDER BY (kafka_topic, kafka_partition, kafka_offset)
SETTINGS non_replicated_deduplication_window = 1000;
