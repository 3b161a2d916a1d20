-- The latest PredictionTrace of one prediction, joined with the stored records an audit needs:
-- the sidecar's InferenceRequest, the registered ModelVersion and the training RunEvent.
-- Each side is deduplicated (FINAL / argMax) so redelivered events never multiply rows.
SELECT
    t.prediction_id                                    AS prediction_id,
    t.event_id                                         AS trace_event_id,
    t.event_time                                       AS trace_event_time,
    t.payload                                          AS trace_payload,
    req.request_event_id,
    req.request_body_sha256,
    mv.model_version_event_id,
    mv.model_artifact_uri,
    mv.model_artifact_sha256,
    mv.model_run_id,
    mv.model_datasets,
    run.run_event_id,
    run.run_code_repo,
    run.run_code_commit
FROM
(
    SELECT *
    FROM prediction_traces FINAL
    WHERE prediction_id = {prediction_id:String}
    ORDER BY event_time DESC, event_id DESC
    LIMIT 1
) AS t
LEFT JOIN
(
    SELECT
        prediction_id,
        argMax(event_id, event_time)    AS request_event_id,
        argMax(body_sha256, event_time) AS request_body_sha256
    FROM inference_requests FINAL
    WHERE prediction_id = {prediction_id:String}
    GROUP BY prediction_id
) AS req ON req.prediction_id = t.prediction_id
LEFT JOIN
(
    SELECT
        model_name,
        model_version,
        argMax(event_id, event_time)        AS model_version_event_id,
        argMax(artifact_uri, event_time)    AS model_artifact_uri,
        argMax(artifact_sha256, event_time) AS model_artifact_sha256,
        argMax(run_id, event_time)          AS model_run_id,
        argMax(datasets, event_time)        AS model_datasets
    FROM model_versions FINAL
    GROUP BY model_name, model_version
) AS mv ON mv.model_name = t.model_name AND mv.model_version = t.model_version
LEFT JOIN
(
    -- a run has one event per state change; the code reference is on whichever carried it
    SELECT
        run_id,
        argMaxIf(event_id, event_time, code_commit IS NOT NULL)    AS run_event_id,
        argMaxIf(code_repo, event_time, code_commit IS NOT NULL)   AS run_code_repo,
        argMaxIf(code_commit, event_time, code_commit IS NOT NULL) AS run_code_commit
    FROM run_events FINAL
    GROUP BY run_id
) AS run ON run.run_id = coalesce(t.training_run_id, mv.model_run_id)
