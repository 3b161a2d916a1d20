-- The audit store around the event tables: lineage graph, prediction scan index, access log,
-- and insert deduplication on every event table.
--
-- Layout of predictions: prediction_traces (0001) holds the full record keyed by prediction id,
-- so the hot audit question "where did prediction P come from" reads one granule in one query;
-- prediction_index below is the slim companion keyed by model and day for scans ("every
-- prediction of churn@3 last week", downstream lineage walks), the reverse of the OpenTelemetry
-- exporter's split, because here the point lookup is the hot path and the scan needs only ids.

-- Lineage graph: one row per distinct (from, to, edge); re-stated edges collapse on merge.
-- Walks go downstream by from_node (the sort key) and upstream by to_node (the projection).
CREATE TABLE IF NOT EXISTS lineage_edges
(
    from_node  String,
    to_node    String,
    edge       LowCardinality(String),
    event_time DateTime64(6, 'UTC'),
    event_id   String,
    event_kind LowCardinality(String),
    PROJECTION by_to_node (SELECT * ORDER BY to_node, from_node, edge)
)
ENGINE = ReplacingMergeTree(event_time)
ORDER BY (from_node, to_node, edge)
SETTINGS deduplicate_merge_projection_mode = 'rebuild', non_replicated_deduplication_window = 1000;

-- Scan index of predictions per model version and day (see the head of this file).
CREATE TABLE IF NOT EXISTS prediction_index
(
    model_name      String,
    model_version   String,
    event_time      DateTime64(6, 'UTC'),
    prediction_id   String,
    event_id        String,
    endpoint        String,
    complete        Bool,
    training_run_id Nullable(String)
)
ENGINE = ReplacingMergeTree
ORDER BY (model_name, model_version, toDate(event_time), prediction_id, event_id)
SETTINGS non_replicated_deduplication_window = 1000;

-- Every audit API request, allowed or denied: who, what, when, and the answer's size.
CREATE TABLE IF NOT EXISTS access_log
(
    time           DateTime64(6, 'UTC'),
    request_id     String,
    reader         String,
    role           LowCardinality(String),
    method         LowCardinality(String),
    path           String,
    query          String,
    status         UInt16,
    allowed        Bool,
    response_bytes UInt64,
    client         String
)
ENGINE = MergeTree
ORDER BY (toDate(time), reader, time);

-- Insert deduplication tokens (one per insert, over its event ids) need a window on MergeTree.
ALTER TABLE run_events MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE dataset_versions MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE feature_set_versions MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE model_versions MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE evaluations MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE decisions MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE deployments MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE delivery_gaps MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE inference_requests MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE inference_responses MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE prediction_traces MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE feedback MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE drift_metrics MODIFY SETTING non_replicated_deduplication_window = 1000;
