-- Step 2 of the complete trace (sink.queries.complete_trace): the registry records behind the newest
-- trace, with their bytes. Every branch is a point lookup on its table's ORDER BY prefix, by keys
-- the trace names; the model version's own datasets and feature sets (which the trace may not
-- copy) come from one granule of model_versions. The same for every prediction of a model version:
-- sink.queries.ChainCache keeps the checked rows while these tables are unchanged.
SELECT 'ModelVersion' AS kind, event_id, event_time, hash, prev_hash, producer_session, producer_name, raw,
       {content} AS payload_digest
FROM model_versions WHERE model_name = {model_name:String} AND model_version = {model_version:String}
UNION ALL
SELECT 'Evaluation', event_id, event_time, hash, prev_hash, producer_session, producer_name, raw, {content}
FROM evaluations WHERE model_name = {model_name:String} AND model_version = {model_version:String}
UNION ALL
SELECT 'Decision', event_id, event_time, hash, prev_hash, producer_session, producer_name, raw, {content}
FROM decisions WHERE subject = {subject:String}
UNION ALL
-- every version's: the deployment replaced may be of another version
SELECT 'Deployment', event_id, event_time, hash, prev_hash, producer_session, producer_name, raw, {content}
FROM deployments WHERE model_name = {model_name:String}
UNION ALL
SELECT 'RunEvent', event_id, event_time, hash, prev_hash, producer_session, producer_name, raw, {content}
FROM run_events WHERE run_id IN (
    SELECT arrayJoin({run_ids:Array(String)})
    UNION ALL
    SELECT assumeNotNull(run_id) FROM model_versions
    WHERE model_name = {model_name:String} AND model_version = {model_version:String} AND run_id IS NOT NULL)
UNION ALL
SELECT 'DatasetVersion', event_id, event_time, hash, prev_hash, producer_session, producer_name, raw, {content}
FROM dataset_versions WHERE digest IN (
    SELECT arrayJoin({digests:Array(String)})
    UNION ALL
    SELECT arrayJoin(datasets) FROM model_versions
    WHERE model_name = {model_name:String} AND model_version = {model_version:String})
UNION ALL
SELECT 'FeatureSetVersion', event_id, event_time, hash, prev_hash, producer_session, producer_name, raw, {content}
FROM feature_set_versions WHERE digest IN (
    SELECT arrayJoin({feature_sets:Array(String)})
    UNION ALL
    SELECT arrayJoin(JSONExtract(payload, 'feature_sets', 'Array(String)')) FROM model_versions
    WHERE model_name = {model_name:String} AND model_version = {model_version:String})
