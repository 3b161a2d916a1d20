-- The lineage explorer (sink.lineagegraph.graph): every stored edge between the nodes a lineage walk
-- reached (lineage_downstream.sql or lineage_upstream.sql; the walk keeps one edge per node, the
-- graph shows them all). Read by the sort key, from_node; a re-stated edge not yet merged away is
-- grouped into one.
SELECT from_node, to_node, toString(edge) AS relation
FROM lineage_edges
WHERE from_node IN {nodes:Array(String)} AND to_node IN {nodes:Array(String)}
GROUP BY from_node, to_node, edge
ORDER BY from_node, to_node, relation
LIMIT {limit:UInt32}
