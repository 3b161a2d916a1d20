-- The complete trace (sink.queries.chain_records): every stored record one prediction's chain of
-- custody rests on, with its bytes as read from Kafka, in one query. Each branch is a point lookup on
-- its table's ORDER BY prefix; the keys of the registry branches come from the prediction's own rows
-- (one granule of prediction_traces each), so nothing is scanned:
--   prediction_traces, inference_requests, inference_responses, feedback    by prediction_id
--   model_versions, evaluations                                             by (model_name, model_version)
--   decisions                                                               by subject model:<name>@<version>
--   deployments                                                             by model_name (every version:
--                                                                            the one before may be another)
--   run_events                                                              by run_id (the trace's, else
--                                                                            the model version's)
--   dataset_versions, feature_set_versions                                  by digest
-- payload_digest is the ledger's digest of the stored payload (sink.ingest.CONTENT_OF_PAYLOAD), to
-- compare with what the ledger recorded at insert. No FINAL, no ORDER BY: the caller keeps the newest
-- copy of each event id and of each source.
WITH
    traced AS (
        SELECT ifNull(model_name, '') AS name, ifNull(model_version, '') AS version, training_run_id,
               dataset_digests, JSONExtract(payload, 'feature_sets', 'Array(String)') AS feature_sets
        FROM prediction_traces
        WHERE prediction_id = {prediction_id:String} AND model_name IS NOT NULL AND model_version IS NOT NULL
    ),
    registered AS (
        SELECT run_id, datasets, JSONExtract(payload, 'feature_sets', 'Array(String)') AS feature_sets
        FROM model_versions
        WHERE (model_name, model_version) IN (SELECT name, version FROM traced)
    )
SELECT 'PredictionTrace' AS kind, event_id, event_time, hash, prev_hash, producer_session, producer_name, raw,
       {content} AS payload_digest
FROM prediction_traces WHERE prediction_id = {prediction_id:String}
UNION ALL
SELECT 'InferenceRequest', event_id, event_time, hash, prev_hash, producer_session, producer_name, raw, {content}
FROM inference_requests WHERE prediction_id = {prediction_id:String}
UNION ALL
SELECT 'InferenceResponse', event_id, event_time, hash, prev_hash, producer_session, producer_name, raw, {content}
FROM inference_responses WHERE prediction_id = {prediction_id:String}
UNION ALL
SELECT 'Feedback', event_id, event_time, hash, prev_hash, producer_session, producer_name, raw, {content}
FROM feedback WHERE prediction_id = {prediction_id:String}
UNION ALL
SELECT 'ModelVersion', event_id, event_time, hash, prev_hash, producer_session, producer_name, raw, {content}
FROM model_versions WHERE (model_name, model_version) IN (SELECT name, version FROM traced)
UNION ALL
SELECT 'Evaluation', event_id, event_time, hash, prev_hash, producer_session, producer_name, raw, {content}
FROM evaluations WHERE (model_name, model_version) IN (SELECT name, version FROM traced)
UNION ALL
SELECT 'Decision', event_id, event_time, hash, prev_hash, producer_session, producer_name, raw, {content}
FROM decisions WHERE subject IN (SELECT concat('model:', name, '@', version) FROM traced)
UNION ALL
SELECT 'Deployment', event_id, event_time, hash, prev_hash, producer_session, producer_name, raw, {content}
FROM deployments WHERE model_name IN (SELECT name FROM traced)
UNION ALL
SELECT 'RunEvent', event_id, event_time, hash, prev_hash, producer_session, producer_name, raw, {content}
FROM run_events WHERE run_id IN (
    SELECT assumeNotNull(training_run_id) FROM traced WHERE training_run_id IS NOT NULL
    UNION ALL
    SELECT assumeNotNull(run_id) FROM registered WHERE run_id IS NOT NULL)
UNION ALL
SELECT 'DatasetVersion', event_id, event_time, hash, prev_hash, producer_session, producer_name, raw, {content}
FROM dataset_versions WHERE digest IN (
    SELECT arrayJoin(dataset_digests) FROM traced UNION ALL SELECT arrayJoin(datasets) FROM registered)
UNION ALL
SELECT 'FeatureSetVersion', event_id, event_time, hash, prev_hash, producer_session, producer_name, raw, {content}
FROM feature_set_versions WHERE digest IN (
    SELECT arrayJoin(feature_sets) FROM traced UNION ALL SELECT arrayJoin(feature_sets) FROM registered)
