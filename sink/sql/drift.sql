-- Drift statistics of one model (optionally one version), per window, feature and metric,
-- oldest window first; breached = the value crossed its threshold.
SELECT
    model_name,
    model_version,
    feature,
    metric,
    window_start,
    window_end,
    value,
    JSONExtractFloat(payload, 'threshold')  AS threshold,
    breached,
    JSONExtract(payload, 'p_value', 'Nullable(Float64)') AS p_value,
    JSONExtractInt(payload, 'sample_size')  AS sample_size,
    JSONExtractString(payload, 'baseline_dataset') AS baseline_dataset,
    producer_name                           AS project
FROM drift_metrics FINAL
WHERE model_name = {model:String}
  AND ({version:String} = '' OR model_version = {version:String})
  AND window_end >= {since:DateTime64(6, 'UTC')} AND window_start < {until:DateTime64(6, 'UTC')}
  AND ({project:String} = '' OR producer_name = {project:String})
  AND (NOT {breached_only:Bool} OR breached)
ORDER BY window_start, feature, metric, model_version
LIMIT {limit:UInt32}
