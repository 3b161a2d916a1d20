-- The "served" lineage edges, model -> prediction, from prediction_traces rows (see
-- sink/lineage.py for the other edges; the FROM source is filled in by sink/ingest.py).
SELECT
    concat('model:', model_name, '@', model_version) AS from_node,
    concat('prediction:', prediction_id)              AS to_node,
    'served'                                          AS edge,
    event_time,
    event_id,
    'PredictionTrace'                                 AS event_kind
FROM {source}
WHERE ifNull(model_name, '') != '' AND ifNull(model_version, '') != ''
