-- Everything downstream of one node: what it fed, and what those fed, up to max_depth hops.
-- Example: downstream of dataset:<digest>, kinds ['prediction'] = every prediction served by a
-- model trained on that dataset (the answer to a data-deletion request).
-- Nodes are '<kind>:<id>' (sink/lineage.py); an empty kinds array means every kind.
WITH RECURSIVE walk AS
(
    SELECT {node:String} AS node, toUInt32(0) AS d, '' AS via_node, '' AS via_edge
    UNION ALL
    SELECT e.to_node, w.d + 1, e.from_node, toString(e.edge)
    FROM walk AS w
    INNER JOIN lineage_edges AS e ON e.from_node = w.node
    WHERE w.d < {max_depth:UInt32}
)
SELECT
    node,
    splitByChar(':', node)[1] AS kind,
    min(d)                    AS depth,
    argMin(via_edge, d)       AS edge,
    argMin(via_node, d)       AS via
FROM walk
WHERE d > 0
  AND (empty({kinds:Array(String)}) OR splitByChar(':', node)[1] IN {kinds:Array(String)})
GROUP BY node
ORDER BY depth, node
LIMIT {limit:UInt32}
