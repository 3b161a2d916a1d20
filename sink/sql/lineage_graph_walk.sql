-- The lineage explorer (sink.lineagegraph.graph), step 1: one walk, lineage_downstream.sql or
-- lineage_upstream.sql (filled in below, with every kind and no limit), read once for both
-- the graph's nodes and the count of the predictions among them. A walk answers each node once,
-- so counting its prediction nodes counts distinct predictions. Predictions are counted, not
-- listed: below a dataset there may be millions. The nodes, nearest first as the walk orders
-- them, are cut at {nodes}; reached says how many there were.
SELECT
    countIf(kind = 'prediction')                                             AS predictions,
    countIf(kind != 'prediction' AND node != {node:String})                  AS reached,
    arraySlice(
        arraySort(n -> (n.2, n.1), groupArrayIf((node, depth), kind != 'prediction' AND node != {node:String})),
        1, {nodes:UInt32})                                                   AS nodes
FROM
(
{walk}
)
