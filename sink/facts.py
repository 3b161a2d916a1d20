"""Lineage facts read from the store, for commands that decide or export on their basis.

Every read goes through a ``query`` callable (SQL text -> rows as dicts): the audit API's
``/v1/sql`` for the CLI, a direct ClickHouse client in tests. Event payloads are JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from provline.sink.promotion import LineageFacts, PromotionPolicy, missing_requirements

Query = Callable[[str], list[dict[str, Any]]]


def sql_literal(text: str) -> str:
    """A ClickHouse string literal: backslashes and quotes escaped."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _payloads(query: Query, sql: str) -> list[dict[str, Any]]:
    return [json.loads(row["payload"]) for row in query(sql)]


def run_states(query: Query, run_id: str) -> list[dict[str, Any]]:
    """A run's RunEvent payloads (STARTED, then COMPLETED or FAILED), oldest first."""
    return _payloads(query, f"SELECT payload FROM run_events FINAL WHERE run_id = {sql_literal(run_id)} "
                            "ORDER BY event_time, event_id")


def datasets(query: Query, digests: list[str]) -> dict[str, dict[str, Any]]:
    if not digests:
        return {}
    wanted = ", ".join(sql_literal(d) for d in digests)
    rows = _payloads(query, f"SELECT payload FROM dataset_versions FINAL WHERE digest IN ({wanted}) "
                            "ORDER BY event_time")
    return {row["digest"]: row for row in rows}


def models_of_run(query: Query, run_id: str) -> list[dict[str, Any]]:
    return _payloads(query, "SELECT payload FROM model_versions FINAL "
                            f"WHERE JSONExtractString(payload, 'run_id') = {sql_literal(run_id)} ORDER BY event_time")


def evaluations_of_run(query: Query, run_id: str, models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Evaluation payloads of the models ``run_id`` registered (``models``: their ModelVersion payloads), and
    those the run itself performed, oldest first."""
    wanted = [f"JSONExtractString(payload, 'run_id') = {sql_literal(run_id)}"]
    wanted += [f"(model_name = {sql_literal(str(m['model_name']))} "
               f"AND model_version = {sql_literal(str(m['version']))})" for m in models]
    return _payloads(query, f"SELECT payload FROM evaluations FINAL WHERE {' OR '.join(wanted)} "
                            "ORDER BY event_time, event_id")


def model_deployments(query: Query, model_name: str) -> list[dict[str, Any]]:
    """Every Deployment payload of ``model_name`` (any version, any endpoint), oldest first."""
    return _payloads(query, f"SELECT payload FROM deployments FINAL WHERE model_name = {sql_literal(model_name)} "
                            "ORDER BY event_time, event_id")


def model_facts(query: Query, model_name: str, version: str) -> LineageFacts:
    """Everything the promotion policy looks at for ``model_name@version``."""
    facts = LineageFacts(model_name=model_name, version=version)
    where = f"model_name = {sql_literal(model_name)} AND model_version = {sql_literal(version)}"
    models = _payloads(query, f"SELECT payload FROM model_versions FINAL WHERE {where} ORDER BY event_time")
    if not models:
        return facts
    facts.model = models[-1]
    if run_id := facts.model.get("run_id"):
        states = run_states(query, run_id)
        facts.training_run = states[-1] if states else None
    facts.datasets = list(datasets(query, list(facts.model.get("datasets") or [])).values())
    facts.evaluations = _payloads(query, f"SELECT payload FROM evaluations FINAL WHERE {where} ORDER BY event_time")
    facts.decisions = _payloads(query, "SELECT payload FROM decisions FINAL "
                                       f"WHERE subject = {sql_literal(facts.subject)} ORDER BY event_time, event_id")
    return facts


def promotion_gaps(query: Query, model_name: str, version: str, policy: PromotionPolicy,
                   environment: str) -> list[str]:
    """What ``policy`` requires of ``model_name@version`` before a promotion to ``environment`` that the
    store does not hold, in sentences; empty when it may be promoted. ``provline promote`` and the
    promotion guard of ``provline mlflow follow`` both decide on this."""
    return missing_requirements(model_facts(query, model_name, version), policy, environment)


def stored_event_ids(query: Query, event_ids: list[str]) -> set[str]:
    """Which of ``event_ids`` the store holds (in any event table: the ledger has every stored event)."""
    if not event_ids:
        return set()
    wanted = ", ".join(sql_literal(i) for i in event_ids)
    return {str(row["event_id"]) for row in query(f"SELECT DISTINCT event_id FROM event_ledger "
                                                  f"WHERE event_id IN ({wanted})")}


def current_deployment(query: Query, endpoint: str, environment: str) -> dict[str, Any] | None:
    rows = _payloads(query, "SELECT payload FROM deployments FINAL "
                            f"WHERE endpoint = {sql_literal(endpoint)} "
                            f"AND JSONExtractString(payload, 'environment') = {sql_literal(environment)} "
                            "ORDER BY event_time DESC, event_id DESC LIMIT 1")
    return rows[0] if rows else None
