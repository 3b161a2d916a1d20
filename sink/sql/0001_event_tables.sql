-- One table per event kind. Column order matches sink/rows.py (common, key columns, trailing).
--
-- ReplacingMergeTree with ORDER BY ending in event_id: a redelivered event (same subject, same
-- event_id) collapses into one row at merge time. Queries that must not see duplicates read
-- with FINAL, argMax(...) or LIMIT 1 BY event_id.

-- One row per run state change (STARTED, COMPLETED, FAILED) of a pipeline run.
CREATE TABLE IF NOT EXISTS run_events
(
    event_id         String,
    event_time       DateTime64(6, 'UTC'),
    producer_name    LowCardinality(String),
    producer_session String,
    hash             String,
    prev_hash        Nullable(String),
    run_id           String,
    name             String,
    state            LowCardinality(String),
    stage            Nullable(String),
    parent_run_id    Nullable(String),
    code_repo        Nullable(String),
    code_commit      Nullable(String),
    payload          String,
    raw              String,
    kafka_topic      LowCardinality(String),
    kafka_partition  Int32,
    kafka_offset     Int64
)
ENGINE = ReplacingMergeTree
ORDER BY (run_id, event_time, event_id);

-- Dataset snapshots, keyed by content digest.
CREATE TABLE IF NOT EXISTS dataset_versions
(
    event_id         String,
    event_time       DateTime64(6, 'UTC'),
    producer_name    LowCardinality(String),
    producer_session String,
    hash             String,
    prev_hash        Nullable(String),
    digest           String,
    name             String,
    run_id           Nullable(String),
    row_count        Nullable(Int64),
    payload          String,
    raw              String,
    kafka_topic      LowCardinality(String),
    kafka_partition  Int32,
    kafka_offset     Int64
)
ENGINE = ReplacingMergeTree
ORDER BY (digest, event_id);

-- Feature set versions, keyed by digest.
CREATE TABLE IF NOT EXISTS feature_set_versions
(
    event_id         String,
    event_time       DateTime64(6, 'UTC'),
    producer_name    LowCardinality(String),
    producer_session String,
    hash             String,
    prev_hash        Nullable(String),
    digest           String,
    name             String,
    run_id           Nullable(String),
    payload          String,
    raw              String,
    kafka_topic      LowCardinality(String),
    kafka_partition  Int32,
    kafka_offset     Int64
)
ENGINE = ReplacingMergeTree
ORDER BY (digest, event_id);

-- Registered model versions with their artifact digest and training run.
CREATE TABLE IF NOT EXISTS model_versions
(
    event_id         String,
    event_time       DateTime64(6, 'UTC'),
    producer_name    LowCardinality(String),
    producer_session String,
    hash             String,
    prev_hash        Nullable(String),
    model_name       String,
    model_version    String,
    artifact_uri     String,
    artifact_sha256  String,
    run_id           Nullable(String),
    datasets         Array(String),
    payload          String,
    raw              String,
    kafka_topic      LowCardinality(String),
    kafka_partition  Int32,
    kafka_offset     Int64
)
ENGINE = ReplacingMergeTree
ORDER BY (model_name, model_version, event_id);

-- Model evaluations.
CREATE TABLE IF NOT EXISTS evaluations
(
    event_id         String,
    event_time       DateTime64(6, 'UTC'),
    producer_name    LowCardinality(String),
    producer_session String,
    hash             String,
    prev_hash        Nullable(String),
    model_name       String,
    model_version    String,
    dataset          Nullable(String),
    passed           Bool,
    run_id           Nullable(String),
    payload          String,
    raw              String,
    kafka_topic      LowCardinality(String),
    kafka_partition  Int32,
    kafka_offset     Int64
)
ENGINE = ReplacingMergeTree
ORDER BY (model_name, model_version, event_id);

-- Approvals and rejections of stage transitions.
CREATE TABLE IF NOT EXISTS decisions
(
    event_id         String,
    event_time       DateTime64(6, 'UTC'),
    producer_name    LowCardinality(String),
    producer_session String,
    hash             String,
    prev_hash        Nullable(String),
    subject          String,
    transition       String,
    outcome          LowCardinality(String),
    actor            String,
    role             String,
    payload          String,
    raw              String,
    kafka_topic      LowCardinality(String),
    kafka_partition  Int32,
    kafka_offset     Int64
)
ENGINE = ReplacingMergeTree
ORDER BY (subject, event_id);

-- Deployments, promotions, rollbacks and retirements of model versions.
CREATE TABLE IF NOT EXISTS deployments
(
    event_id         String,
    event_time       DateTime64(6, 'UTC'),
    producer_name    LowCardinality(String),
    producer_session String,
    hash             String,
    prev_hash        Nullable(String),
    model_name       String,
    model_version    String,
    environment      LowCardinality(String),
    endpoint         String,
    action           LowCardinality(String),
    payload          String,
    raw              String,
    kafka_topic      LowCardinality(String),
    kafka_partition  Int32,
    kafka_offset     Int64
)
ENGINE = ReplacingMergeTree
ORDER BY (model_name, model_version, event_id);

-- Events producers had to drop, so that missing audit data is itself recorded.
CREATE TABLE IF NOT EXISTS delivery_gaps
(
    event_id         String,
    event_time       DateTime64(6, 'UTC'),
    producer_name    LowCardinality(String),
    producer_session String,
    hash             String,
    prev_hash        Nullable(String),
    dropped          Int64,
    reason           String,
    first_time       DateTime64(6, 'UTC'),
    last_time        DateTime64(6, 'UTC'),
    payload          String,
    raw              String,
    kafka_topic      LowCardinality(String),
    kafka_partition  Int32,
    kafka_offset     Int64
)
ENGINE = ReplacingMergeTree
ORDER BY (producer_session, event_id);

-- Inference requests as seen by the sidecar.
CREATE TABLE IF NOT EXISTS inference_requests
(
    event_id         String,
    event_time       DateTime64(6, 'UTC'),
    producer_name    LowCardinality(String),
    producer_session String,
    hash             String,
    prev_hash        Nullable(String),
    prediction_id    String,
    endpoint         String,
    model_name       Nullable(String),
    model_version    Nullable(String),
    body_sha256      String,
    client_id        Nullable(String),
    payload          String,
    raw              String,
    kafka_topic      LowCardinality(String),
    kafka_partition  Int32,
    kafka_offset     Int64
)
ENGINE = ReplacingMergeTree
ORDER BY (prediction_id, event_id);

-- Inference responses as seen by the sidecar.
CREATE TABLE IF NOT EXISTS inference_responses
(
    event_id         String,
    event_time       DateTime64(6, 'UTC'),
    producer_name    LowCardinality(String),
    producer_session String,
    hash             String,
    prev_hash        Nullable(String),
    prediction_id    String,
    endpoint         String,
    status           Int32,
    model_name       Nullable(String),
    model_version    Nullable(String),
    body_sha256      String,
    latency_us       Int64,
    payload          String,
    raw              String,
    kafka_topic      LowCardinality(String),
    kafka_partition  Int32,
    kafka_offset     Int64
)
ENGINE = ReplacingMergeTree
ORDER BY (prediction_id, event_id);

-- Derived prediction-to-input traces; ORDER BY starts with prediction_id for point lookups.
CREATE TABLE IF NOT EXISTS prediction_traces
(
    event_id         String,
    event_time       DateTime64(6, 'UTC'),
    producer_name    LowCardinality(String),
    producer_session String,
    hash             String,
    prev_hash        Nullable(String),
    prediction_id    String,
    endpoint         String,
    complete         Bool,
    model_name       Nullable(String),
    model_version    Nullable(String),
    request_sha256   Nullable(String),
    artifact_sha256  Nullable(String),
    training_run_id  Nullable(String),
    dataset_digests  Array(String),
    payload          String,
    raw              String,
    kafka_topic      LowCardinality(String),
    kafka_partition  Int32,
    kafka_offset     Int64
)
ENGINE = ReplacingMergeTree
ORDER BY (prediction_id, event_id);

-- Ground truth arriving after the prediction.
CREATE TABLE IF NOT EXISTS feedback
(
    event_id         String,
    event_time       DateTime64(6, 'UTC'),
    producer_name    LowCardinality(String),
    producer_session String,
    hash             String,
    prev_hash        Nullable(String),
    prediction_id    String,
    label            Nullable(String),
    outcome          Nullable(Float64),
    source           String,
    payload          String,
    raw              String,
    kafka_topic      LowCardinality(String),
    kafka_partition  Int32,
    kafka_offset     Int64
)
ENGINE = ReplacingMergeTree
ORDER BY (prediction_id, event_id);

-- Derived drift statistics per model version, feature and window.
CREATE TABLE IF NOT EXISTS drift_metrics
(
    event_id         String,
    event_time       DateTime64(6, 'UTC'),
    producer_name    LowCardinality(String),
    producer_session String,
    hash             String,
    prev_hash        Nullable(String),
    model_name       String,
    model_version    String,
    feature          String,
    metric           LowCardinality(String),
    window_start     DateTime64(6, 'UTC'),
    window_end       DateTime64(6, 'UTC'),
    value            Float64,
    breached         Bool,
    payload          String,
    raw              String,
    kafka_topic      LowCardinality(String),
    kafka_partition  Int32,
    kafka_offset     Int64
)
ENGINE = ReplacingMergeTree
ORDER BY (model_name, model_version, feature, event_id);
