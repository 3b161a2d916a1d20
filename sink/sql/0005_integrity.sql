-- Integrity of the record (issue 13): producers' session seals, and a ledger of every event ever inserted.
--
-- session_seals: a producer session's signed statement of its own chain (how many events it has
-- sealed; final at close). `provline verify` checks the chain against them and `provline anchor`
-- publishes them outside the store.
CREATE TABLE IF NOT EXISTS session_seals
(
    event_id         String,
    event_time       DateTime64(6, 'UTC'),
    producer_name    LowCardinality(String),
    producer_session String,
    hash             String,
    prev_hash        Nullable(String),
    sealed_count     Int64,
    is_final         Bool,
    payload          String,
    raw              String,
    kafka_topic      LowCardinality(String),
    kafka_partition  Int32,
    kafka_offset     Int64
)
ENGINE = ReplacingMergeTree
ORDER BY (producer_session, event_id)
SETTINGS non_replicated_deduplication_window = 1000;

ALTER TABLE session_seals ADD INDEX IF NOT EXISTS kafka_offset_minmax (kafka_partition, kafka_offset) TYPE minmax GRANULARITY 1;

-- event_ledger: one row per event inserted into any event table, never replaced (plain MergeTree),
-- filled by a materialized view per table (sink/store.py). The event tables collapse rows by
-- event_id, so an event re-published under an existing id replaces the stored one there; here both
-- stay. `provline verify` names an id stored with different contents (content_sha256: the event
-- without its envelope) as replaced, and resolves chain links to a copy a re-emission replaced
-- (a processors worker that crashed mid-batch sends its traces again from another session).
-- Retention: rows of a table with retention_days expire with it (by event_time).
CREATE TABLE IF NOT EXISTS event_ledger
(
    event_id         String,
    hash             String,
    content_sha256   String,
    event_table      LowCardinality(String),
    producer_session String,
    event_time       DateTime64(6, 'UTC'),
    kafka_topic      LowCardinality(String),
    kafka_partition  Int32,
    kafka_offset     Int64,
    inserted         DateTime64(6, 'UTC')
)
ENGINE = MergeTree
ORDER BY (event_id, hash)
SETTINGS non_replicated_deduplication_window = 1000;

-- Events stored before the ledger existed: what their tables still hold (copies a merge already
-- collapsed are gone, so a replacement older than this migration is found by its chain only).
INSERT INTO event_ledger SELECT event_id, hash, hex(SHA256(toString(arrayFilter(kv -> kv.1 NOT IN ('event_id', 'event_time', 'producer', 'prev_hash', 'hash', 'signature'), JSONExtractKeysAndValuesRaw(payload))))), 'run_events', producer_session, event_time, kafka_topic, kafka_partition, kafka_offset, now64(6) FROM run_events WHERE 1;
INSERT INTO event_ledger SELECT event_id, hash, hex(SHA256(toString(arrayFilter(kv -> kv.1 NOT IN ('event_id', 'event_time', 'producer', 'prev_hash', 'hash', 'signature'), JSONExtractKeysAndValuesRaw(payload))))), 'dataset_versions', producer_session, event_time, kafka_topic, kafka_partition, kafka_offset, now64(6) FROM dataset_versions WHERE 1;
INSERT INTO event_ledger SELECT event_id, hash, hex(SHA256(toString(arrayFilter(kv -> kv.1 NOT IN ('event_id', 'event_time', 'producer', 'prev_hash', 'hash', 'signature'), JSONExtractKeysAndValuesRaw(payload))))), 'feature_set_versions', producer_session, event_time, kafka_topic, kafka_partition, kafka_offset, now64(6) FROM feature_set_versions WHERE 1;
INSERT INTO event_ledger SELECT event_id, hash, hex(SHA256(toString(arrayFilter(kv -> kv.1 NOT IN ('event_id', 'event_time', 'producer', 'prev_hash', 'hash', 'signature'), JSONExtractKeysAndValuesRaw(payload))))), 'model_versions', producer_session, event_time, kafka_topic, kafka_partition, kafka_offset, now64(6) FROM model_versions WHERE 1;
INSERT INTO event_ledger SELECT event_id, hash, hex(SHA256(toString(arrayFilter(kv -> kv.1 NOT IN ('event_id', 'event_time', 'producer', 'prev_hash', 'hash', 'signature'), JSONExtractKeysAndValuesRaw(payload))))), 'evaluations', producer_session, event_time, kafka_topic, kafka_partition, kafka_offset, now64(6) FROM evaluations WHERE 1;
INSERT INTO event_ledger SELECT event_id, hash, hex(SHA256(toString(arrayFilter(kv -> kv.1 NOT IN ('event_id', 'event_time', 'producer', 'prev_hash', 'hash', 'signature'), JSONExtractKeysAndValuesRaw(payload))))), 'decisions', producer_session, event_time, kafka_topic, kafka_partition, kafka_offset, now64(6) FROM decisions WHERE 1;
INSERT INTO event_ledger SELECT event_id, hash, hex(SHA256(toString(arrayFilter(kv -> kv.1 NOT IN ('event_id', 'event_time', 'producer', 'prev_hash', 'hash', 'signature'), JSONExtractKeysAndValuesRaw(payload))))), 'deployments', producer_session, event_time, kafka_topic, kafka_partition, kafka_offset, now64(6) FROM deployments WHERE 1;
INSERT INTO event_ledger SELECT event_id, hash, hex(SHA256(toString(arrayFilter(kv -> kv.1 NOT IN ('event_id', 'event_time', 'producer', 'prev_hash', 'hash', 'signature'), JSONExtractKeysAndValuesRaw(payload))))), 'delivery_gaps', producer_session, event_time, kafka_topic, kafka_partition, kafka_offset, now64(6) FROM delivery_gaps WHERE 1;
INSERT INTO event_ledger SELECT event_id, hash, hex(SHA256(toString(arrayFilter(kv -> kv.1 NOT IN ('event_id', 'event_time', 'producer', 'prev_hash', 'hash', 'signature'), JSONExtractKeysAndValuesRaw(payload))))), 'inference_requests', producer_session, event_time, kafka_topic, kafka_partition, kafka_offset, now64(6) FROM inference_requests WHERE 1;
INSERT INTO event_ledger SELECT event_id, hash, hex(SHA256(toString(arrayFilter(kv -> kv.1 NOT IN ('event_id', 'event_time', 'producer', 'prev_hash', 'hash', 'signature'), JSONExtractKeysAndValuesRaw(payload))))), 'inference_responses', producer_session, event_time, kafka_topic, kafka_partition, kafka_offset, now64(6) FROM inference_responses WHERE 1;
INSERT INTO event_ledger SELECT event_id, hash, hex(SHA256(toString(arrayFilter(kv -> kv.1 NOT IN ('event_id', 'event_time', 'producer', 'prev_hash', 'hash', 'signature'), JSONExtractKeysAndValuesRaw(payload))))), 'prediction_traces', producer_session, event_time, kafka_topic, kafka_partition, kafka_offset, now64(6) FROM prediction_traces WHERE 1;
INSERT INTO event_ledger SELECT event_id, hash, hex(SHA256(toString(arrayFilter(kv -> kv.1 NOT IN ('event_id', 'event_time', 'producer', 'prev_hash', 'hash', 'signature'), JSONExtractKeysAndValuesRaw(payload))))), 'feedback', producer_session, event_time, kafka_topic, kafka_partition, kafka_offset, now64(6) FROM feedback WHERE 1;
INSERT INTO event_ledger SELECT event_id, hash, hex(SHA256(toString(arrayFilter(kv -> kv.1 NOT IN ('event_id', 'event_time', 'producer', 'prev_hash', 'hash', 'signature'), JSONExtractKeysAndValuesRaw(payload))))), 'drift_metrics', producer_session, event_time, kafka_topic, kafka_partition, kafka_offset, now64(6) FROM drift_metrics WHERE 1;
