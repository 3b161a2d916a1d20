-- The lineage explorer (sink.lineagegraph.graph): the recorded names of a graph's datasets, runs
-- and feature sets (their labels), and whether the node asked about is stored at all: as a record
-- of its own (a dataset, run, feature set, model version or prediction) or as an end of an edge
-- (a commit or deployment has no record of its own). Each branch reads its table's ORDER BY
-- prefix, or lineage_edges' sort key and its by_to_node projection.
SELECT node, anyIf(name, name != '') AS name
FROM
(
    SELECT concat('dataset:', digest) AS node, name
    FROM dataset_versions WHERE digest IN {datasets:Array(String)}
    UNION ALL
    SELECT concat('feature_set:', digest), name
    FROM feature_set_versions WHERE digest IN {feature_sets:Array(String)}
    UNION ALL
    SELECT concat('run:', run_id), name
    FROM run_events WHERE run_id IN {runs:Array(String)}
    UNION ALL
    SELECT {root:String}, ''
    FROM model_versions WHERE model_name = {model_name:String} AND model_version = {model_version:String}
    UNION ALL
    SELECT {root:String}, ''
    FROM prediction_traces WHERE prediction_id = {prediction_id:String}
    UNION ALL
    SELECT {root:String}, ''
    FROM (SELECT 1 FROM lineage_edges WHERE from_node = {root:String} LIMIT 1)
    UNION ALL
    SELECT {root:String}, ''
    FROM (SELECT 1 FROM lineage_edges WHERE to_node = {root:String} LIMIT 1)
)
GROUP BY node
