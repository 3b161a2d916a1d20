-- Model performance once labels arrive (sink/performance.py), computed by provline serve: one row per
-- model version, window of prediction time and metric; a recomputation replaces the row (newest computed_at).
CREATE TABLE IF NOT EXISTS model_performance
(
    model_name       String,
    model_version    String,
    window_start     DateTime64(6, 'UTC'),
    window_end       DateTime64(6, 'UTC'),
    metric           LowCardinality(String),
    value            Float64,
    sample_count     UInt64,
    ci_low           Nullable(Float64),
    ci_high          Nullable(Float64),
    ci_method        LowCardinality(String),
    baseline         Nullable(Float64),
    baseline_ci_low  Nullable(Float64),
    baseline_ci_high Nullable(Float64),
    computed_at      DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(computed_at)
ORDER BY (model_name, model_version, window_start, metric);

-- Alerts sent (sink/alerts.py), one row per key rule|subject|window; the newest row says whether it is
-- firing or resolved, so a restarted serve sends neither twice.
CREATE TABLE IF NOT EXISTS alert_state
(
    alert_key        String,
    rule             LowCardinality(String),
    status           LowCardinality(String),
    alert            String,
    updated_at       DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY alert_key;

-- Outcomes of provline verify runs through the API (clean / findings), for the verify-failure alert.
CREATE TABLE IF NOT EXISTS verify_runs
(
    run_id           String,
    time             DateTime64(6, 'UTC'),
    outcome          LowCardinality(String),
    problems         UInt64,
    reader           String
)
ENGINE = MergeTree
ORDER BY (time, run_id);
