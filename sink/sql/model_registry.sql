-- The model page (sink.modelpage.overview), step 1: one model's registry records. Every branch
-- reads its table by the ORDER BY prefix: model_versions, evaluations and deployments by
-- model_name, decisions by the start of subject ('model:<name>@', the subject Lineage.decide and
-- provline promote write; the rest of the subject is the version, which has no '@').
--
-- Each branch answers its newest {limit} events (the caller asks for one more than it shows, to
-- tell that a section was cut), one row per event_id: a redelivered copy not yet merged away is
-- the same event again. Model versions carry their columns only (their payload lists every
-- artifact file); the others their payload, which the caller reads.
(
    SELECT 'version' AS source, event_id, event_time, model_version AS version, artifact_sha256,
        ifNull(run_id, '') AS run_id, '' AS payload
    FROM model_versions
    WHERE model_name = {model:String}
    ORDER BY event_time DESC, event_id DESC
    LIMIT 1 BY event_id
    LIMIT {limit:UInt32}
)
UNION ALL
(
    SELECT 'evaluation', event_id, event_time, model_version, '', '', payload
    FROM evaluations
    WHERE model_name = {model:String}
    ORDER BY event_time DESC, event_id DESC
    LIMIT 1 BY event_id
    LIMIT {limit:UInt32}
)
UNION ALL
(
    SELECT 'approval', event_id, event_time, substring(subject, length({subject_prefix:String}) + 1), '', '',
        payload
    FROM decisions
    WHERE startsWith(subject, {subject_prefix:String})
      AND length(subject) > length({subject_prefix:String})
      AND position(substring(subject, length({subject_prefix:String}) + 1), '@') = 0
    ORDER BY event_time DESC, event_id DESC
    LIMIT 1 BY event_id
    LIMIT {limit:UInt32}
)
UNION ALL
(
    SELECT 'deployment', event_id, event_time, model_version, '', '', payload
    FROM deployments
    WHERE model_name = {model:String}
    ORDER BY event_time DESC, event_id DESC
    LIMIT 1 BY event_id
    LIMIT {limit:UInt32}
)
