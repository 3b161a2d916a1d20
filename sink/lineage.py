"""Lineage edges derived from events at insert time. Pure functions, no I/O.

A node is ``<kind>:<id>``; an edge points downstream (from what was used to what it produced):

    dataset  -> run         input        RunEvent.inputs
    run      -> dataset     output       RunEvent.outputs, DatasetVersion.run_id
    commit   -> run         code         RunEvent.code (repo@commit)
    dataset  -> dataset     parent       DatasetVersion.parents (parent -> child)
    dataset  -> feature_set input        FeatureSetVersion.input_datasets
    run      -> model       trained      ModelVersion.run_id, RunEvent.outputs naming name@version
    dataset  -> model       trained_on   ModelVersion.datasets
    feature_set -> model    features     ModelVersion.feature_sets
    model    -> deployment  deployed     Deployment (deployment node: environment + endpoint)
    model    -> prediction  served       PredictionTrace.model_name/model_version (in SQL:
                                         sink/sql/derive_served_edges.sql, a view of the traces)

Walks over these edges (``sink/sql/lineage_*.sql``) answer "every prediction served by models
trained on dataset D" (downstream from ``dataset:D``) and "every dataset and commit behind model M"
(upstream from ``model:M@V``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

EDGE_COLUMNS: tuple[str, ...] = ("from_node", "to_node", "edge", "event_time", "event_id", "event_kind")
# The kinds that state edges here; the sink decodes these (they are few), and no others.
LINEAGE_KINDS = frozenset({"RunEvent", "DatasetVersion", "FeatureSetVersion", "ModelVersion", "Deployment"})
NODE_KINDS = frozenset({"dataset", "run", "commit", "feature_set", "model", "deployment", "prediction"})


@dataclass(frozen=True)
class Edge:
    from_node: str
    to_node: str
    edge: str

    def row(self, event_time: datetime, event_id: str, kind: str) -> tuple[Any, ...]:
        return (self.from_node, self.to_node, self.edge, event_time, event_id, kind)


def node(kind: str, ident: str) -> str:
    return f"{kind}:{ident}"


def model_node(name: str, version: str) -> str:
    return node("model", f"{name}@{version}")


def artefact_node(ident: str) -> str:
    """A run's input or output id: ``name@version`` names a model, anything else is a dataset digest."""
    if "@" in ident and not ident.startswith("sha256:"):
        return node("model", ident)
    return node("dataset", ident)


def commit_node(repo: str | None, commit: str) -> str:
    return node("commit", f"{repo or 'unknown-repo'}@{commit}")


def parse_node(text: str) -> tuple[str, str]:
    """``(kind, id)`` of ``kind:id``; raises ValueError naming the known kinds otherwise."""
    kind, sep, ident = text.partition(":")
    if not sep or kind not in NODE_KINDS or not ident:
        raise ValueError(
            f"{text!r} is not a lineage node; write <kind>:<id> with kind one of {', '.join(sorted(NODE_KINDS))}, "
            "e.g. dataset:sha256:ab12..., model:churn@3, run:<run id>, prediction:<id>"
        )
    return kind, ident


def edges_for(kind: str, value: Mapping[str, Any]) -> list[Edge]:
    """The lineage edges one event of :data:`LINEAGE_KINDS` states; empty for other kinds."""
    edges: list[Edge] = []
    if kind == "RunEvent":
        run = node("run", value["run_id"])
        edges += [Edge(artefact_node(i), run, "input") for i in value.get("inputs") or []]
        for out in value.get("outputs") or []:
            target = artefact_node(out)
            edges.append(Edge(run, target, "trained" if target.startswith("model:") else "output"))
        code = value.get("code") or {}
        if code.get("commit"):
            edges.append(Edge(commit_node(code.get("repo"), code["commit"]), run, "code"))
    elif kind == "DatasetVersion":
        dataset = node("dataset", value["digest"])
        edges += [Edge(node("dataset", p), dataset, "parent") for p in value.get("parents") or []]
        if value.get("run_id"):
            edges.append(Edge(node("run", value["run_id"]), dataset, "output"))
    elif kind == "FeatureSetVersion":
        feature_set = node("feature_set", value["digest"])
        edges += [Edge(node("dataset", d), feature_set, "input") for d in value.get("input_datasets") or []]
        if value.get("run_id"):
            edges.append(Edge(node("run", value["run_id"]), feature_set, "output"))
    elif kind == "ModelVersion":
        model = model_node(value["model_name"], value["version"])
        if value.get("run_id"):
            edges.append(Edge(node("run", value["run_id"]), model, "trained"))
        edges += [Edge(node("dataset", d), model, "trained_on") for d in value.get("datasets") or []]
        edges += [Edge(node("feature_set", f), model, "features") for f in value.get("feature_sets") or []]
    elif kind == "Deployment":
        deployment = node("deployment", f"{value['environment']}:{value['endpoint']}")
        edges.append(Edge(model_node(value["model_name"], value["model_version"]), deployment, "deployed"))
    return _unique(edges)


def _unique(edges: list[Edge]) -> list[Edge]:
    return list(dict.fromkeys(edges))


def edge_rows(kind: str, value: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """``lineage_edges`` rows (in :data:`EDGE_COLUMNS` order) of one event."""
    return [e.row(value["event_time"], value["event_id"], kind) for e in edges_for(kind, value)]
