-- Step 2 of a trace (sink.queries.trace): the registry records behind the newest trace, the
-- ModelVersion by its ORDER BY prefix (model_name, model_version) and the training RunEvents
-- by run_id. A NULL parameter skips its branch (NULL never equals anything).
--
-- A run has one event per state change; the code reference is on whichever carried it, so
-- only those are read. As in step 1, the caller keeps the newest row of each source.
SELECT
    'model_version' AS source,
    event_id,
    event_time,
    artifact_uri    AS uri_or_repo,
    artifact_sha256 AS sha256_or_commit,
    run_id,
    datasets
FROM model_versions
WHERE model_name = {model_name:Nullable(String)} AND model_version = {model_version:Nullable(String)}
UNION ALL
SELECT 'run', event_id, event_time, code_repo, code_commit, run_id, []
FROM run_events
WHERE run_id = {run_id:Nullable(String)} AND code_commit IS NOT NULL
