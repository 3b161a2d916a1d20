"""The lineage explorer's data: everything up- or downstream of one node as a graph of nodes and
edges, with how many predictions lie downstream (``GET /v1/lineage/graph``).

The walk is the one ``/v1/lineage/{direction}`` runs (``sink/sql/lineage_*.sql``), read once by
``lineage_graph_walk.sql`` for both the nodes reached and the count of distinct predictions among
them, which the engine counts: the answer to a data-deletion request. This module adds every
stored edge between the nodes reached (``lineage_graph_edges.sql``) and their recorded names
(``lineage_graph_names.sql``). Individual predictions are not graph nodes (a dataset may lie under
millions; the node asked about may be one): ``predictions_downstream`` counts them, and
``/v1/lineage/downstream?kinds=prediction`` lists them.

Answers are bounded: at most ``limit`` nodes besides the one asked about (:data:`DEFAULT_NODES`,
at most :data:`MAX_NODES`), nearest first, and :data:`EDGES_PER_NODE` times as many edges;
``truncated`` says when either was cut. Walks go at most ``max_depth`` hops, the count too.
"""

from __future__ import annotations

from typing import Any

from clickhouse_connect.driver.client import Client

from provline.sink import queries
from provline.sink.lineage import parse_node

DEFAULT_NODES = 500
MAX_NODES = 5000
EDGES_PER_NODE = 4
MAX_DEPTH = 50
LABEL_CHARS = 40
SHORT_DIGEST = 12
_ALL_ROWS = 2**32 - 1  # the walk's own LIMIT: the graph's is applied over it


def check(node: str, direction: str, max_depth: int, limit: int) -> tuple[str, str]:
    """``(kind, id)`` of ``node``, or ValueError saying which argument is wrong and what would do. Pure."""
    if direction not in queries.DIRECTIONS:
        raise ValueError(f"direction {direction!r} is neither 'upstream' nor 'downstream'")
    if not 1 <= max_depth <= MAX_DEPTH:
        raise ValueError(f"max_depth={max_depth} is outside 1..{MAX_DEPTH} hops")
    if not 1 <= limit <= MAX_NODES:
        raise ValueError(f"limit={limit} is outside 1..{MAX_NODES} nodes")
    return parse_node(node)


def graph(client: Client, node: str, direction: str, *, max_depth: int = queries.DEFAULT_MAX_DEPTH,
          limit: int = DEFAULT_NODES) -> dict[str, Any] | None:
    """The graph up- or downstream of ``node`` (``kind:id``); None when the store knows no such node.

    Raises ValueError for a malformed node, an unknown direction or a bound out of range (:func:`check`).
    Blocks on three queries; not thread-safe on a shared client (hold its lock).
    """
    kind, ident = check(node, direction, max_depth, limit)
    walk = queries.sql_file(f"lineage_{direction}.sql")
    [(predictions, reached, walked)] = client.query(
        queries.sql_file("lineage_graph_walk.sql").replace("{walk}", walk.strip()), parameters={
            "node": node, "kinds": [], "max_depth": max_depth, "limit": _ALL_ROWS, "nodes": limit,
        }).result_rows
    ids = [node, *(one for one, _ in walked)]
    edge_limit = EDGES_PER_NODE * len(ids)
    edges = list(client.query(queries.sql_file("lineage_graph_edges.sql"), parameters={
        "nodes": ids, "limit": edge_limit + 1,
    }).named_results())
    names = {row["node"]: row["name"] for row in client.query(
        queries.sql_file("lineage_graph_names.sql"), parameters=_name_parameters(kind, ident, node, ids),
    ).named_results()}
    if not walked and not predictions and node not in names:
        return None
    return {
        "node": node,
        "direction": direction,
        "nodes": [{"id": one, "kind": one.partition(":")[0], "label": label(one, names.get(one)), "depth": depth}
                  for one, depth in [(node, 0), *walked]],
        "edges": [{"from": row["from_node"], "to": row["to_node"], "relation": row["relation"]}
                  for row in edges[:edge_limit]],
        "predictions_downstream": int(predictions) if direction == "downstream" else 0,
        "truncated": reached > limit or len(edges) > edge_limit,
    }


def _name_parameters(kind: str, ident: str, node: str, ids: list[str]) -> dict[str, Any]:
    of_kind: dict[str, list[str]] = {"dataset": [], "feature_set": [], "run": []}
    for one in ids:
        one_kind, _, one_ident = one.partition(":")
        if one_kind in of_kind:
            of_kind[one_kind].append(one_ident)
    model_name, _, model_version = ident.rpartition("@") if kind == "model" else ("", "", "")
    return {
        "datasets": of_kind["dataset"], "feature_sets": of_kind["feature_set"], "runs": of_kind["run"],
        "root": node, "model_name": model_name, "model_version": model_version,
        "prediction_id": ident if kind == "prediction" else "",
    }


def label(node: str, name: str | None = None) -> str:
    """Short text for a node, at most :data:`LABEL_CHARS` characters: a dataset, run or feature set by its
    recorded name (and a short digest), a commit by repository and short hash, others by their id. Pure."""
    kind, _, ident = node.partition(":")
    if kind in ("dataset", "feature_set"):
        short = _short_digest(ident)
        text = f"{name} {short}" if name else short
    elif kind == "run":
        text = f"{name} ({ident})" if name else ident
    elif kind == "commit":
        repo, _, commit = ident.rpartition("@")
        text = f"{repo.rstrip('/').rsplit('/', 1)[-1].rsplit(':', 1)[-1].removesuffix('.git')}@{commit[:10]}"
    else:
        text = ident
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def _short_digest(ident: str) -> str:
    algorithm, sep, digest = ident.partition(":")
    if sep and len(digest) > SHORT_DIGEST:
        return f"{algorithm}:{digest[:SHORT_DIGEST]}"
    return ident
