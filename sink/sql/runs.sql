-- Pipeline runs, newest first: latest state, stage, code commit, and when they started and last
-- reported. project = the producer (job or service name) that recorded the run; owner = the run's
-- PROVLINE_RUN__OWNER setting (PROVLINE_OWNER in runs recorded before it), else its USER variable.
SELECT
    run_id,
    argMax(r_name, r_time)                                         AS name,
    argMax(r_state, r_time)                                        AS state,
    argMax(r_stage, r_time)                                        AS stage,
    any(r_producer)                                                AS project,
    anyIf(r_owner, r_owner != '')                                  AS owner,
    argMaxIf(r_repo, r_time, r_commit IS NOT NULL)                 AS code_repo,
    argMaxIf(r_commit, r_time, r_commit IS NOT NULL)               AS code_commit,
    min(r_time)                                                    AS started,
    max(r_time)                                                    AS last_event
FROM
(
    SELECT run_id, name AS r_name, state AS r_state, stage AS r_stage, producer_name AS r_producer,
        code_repo AS r_repo, code_commit AS r_commit, event_time AS r_time,
        coalesce(
            nullIf(JSONExtractString(payload, 'environment', 'env_vars', 'PROVLINE_RUN__OWNER'), ''),
            nullIf(JSONExtractString(payload, 'environment', 'env_vars', 'PROVLINE_OWNER'), ''),
            JSONExtractString(payload, 'environment', 'env_vars', 'USER')
        ) AS r_owner
    FROM run_events FINAL
)
GROUP BY run_id
HAVING started >= {since:DateTime64(6, 'UTC')} AND started < {until:DateTime64(6, 'UTC')}
   AND ({project:String} = '' OR project = {project:String})
   AND ({owner:String} = '' OR owner = {owner:String})
ORDER BY started DESC, run_id
LIMIT {limit:UInt32}
