-- prediction_index rows from prediction_traces rows (a materialized view of prediction_traces, and
-- the re-derivation of an interrupted batch: the FROM source is filled in by sink/ingest.py).
SELECT
    ifNull(model_name, '')    AS model_name,
    ifNull(model_version, '') AS model_version,
    event_time,
    prediction_id,
    event_id,
    endpoint,
    complete,
    training_run_id
FROM {source}
