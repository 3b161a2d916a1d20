-- Registered model versions, newest first, with artifact digest, training run, datasets, the
-- latest deployment action and how many evaluations passed. project = the producer that
-- registered the version; owner = the owner of its training run (see runs.sql).
SELECT
    mv.model_name                 AS model_name,
    mv.model_version              AS model_version,
    mv.registered                 AS registered,
    mv.project                    AS project,
    mv.artifact_sha256            AS artifact_sha256,
    mv.run_id                     AS run_id,
    mv.datasets                   AS datasets,
    ifNull(run.owner, '')         AS owner,
    dep.environment               AS environment,
    dep.endpoint                  AS endpoint,
    dep.action                    AS last_action,
    ifNull(ev.evaluations, 0)     AS evaluations,
    ifNull(ev.passed, 0)          AS evaluations_passed
FROM
(
    SELECT model_name, model_version,
        argMax(artifact_sha256, event_time) AS artifact_sha256,
        argMax(run_id, event_time)          AS run_id,
        argMax(datasets, event_time)        AS datasets,
        any(producer_name)                  AS project,
        min(event_time)                     AS registered
    FROM model_versions FINAL
    GROUP BY model_name, model_version
) AS mv
LEFT JOIN
(
    SELECT run_id,
        anyIf(o, o != '') AS owner
    FROM
    (
        SELECT run_id, coalesce(
            nullIf(JSONExtractString(payload, 'environment', 'env_vars', 'PROVLINE_RUN__OWNER'), ''),
            nullIf(JSONExtractString(payload, 'environment', 'env_vars', 'PROVLINE_OWNER'), ''),
            JSONExtractString(payload, 'environment', 'env_vars', 'USER')) AS o
        FROM run_events FINAL
    )
    GROUP BY run_id
) AS run ON run.run_id = mv.run_id
LEFT JOIN
(
    SELECT model_name, model_version,
        argMax(environment, event_time) AS environment,
        argMax(endpoint, event_time)    AS endpoint,
        argMax(action, event_time)      AS action
    FROM deployments FINAL
    GROUP BY model_name, model_version
) AS dep ON dep.model_name = mv.model_name AND dep.model_version = mv.model_version
LEFT JOIN
(
    SELECT model_name, model_version, count() AS evaluations, countIf(passed) AS passed
    FROM evaluations FINAL
    GROUP BY model_name, model_version
) AS ev ON ev.model_name = mv.model_name AND ev.model_version = mv.model_version
WHERE mv.registered >= {since:DateTime64(6, 'UTC')} AND mv.registered < {until:DateTime64(6, 'UTC')}
  AND ({project:String} = '' OR mv.project = {project:String})
  AND ({owner:String} = '' OR ifNull(run.owner, '') = {owner:String})
  AND ({model:String} = '' OR mv.model_name = {model:String})
ORDER BY registered DESC, model_name, model_version
LIMIT {limit:UInt32}
