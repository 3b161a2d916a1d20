"""The promotion guardrail: is a model version's lineage complete enough to promote it?

Pure logic. :class:`LineageFacts` is what the store knows about one model version;
:func:`missing_requirements` lists, in plain sentences, everything a :class:`PromotionPolicy`
requires that is not there. An empty list means the promotion may be recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class PromotionPolicy(BaseModel):
    """What a model version needs before ``provline promote`` records its Deployment.

    Loaded from a JSON or YAML file (``--policy``); ``required_roles`` maps a target environment
    to the roles that must each have approved the transition to it (``*`` applies to any).
    """

    model_config = ConfigDict(extra="forbid")

    require_training_run: bool = True
    require_commit: bool = True
    require_clean_tree: bool = False
    require_environment: bool = True
    require_dataset_digests: bool = True
    require_passing_evaluation: bool = True
    required_roles: dict[str, list[str]] = Field(default_factory=lambda: {"production": ["risk-officer"]})

    def roles_for(self, environment: str) -> list[str]:
        return sorted(set(self.required_roles.get(environment, [])) | set(self.required_roles.get("*", [])))

    @classmethod
    def load(cls, path: Path | None) -> PromotionPolicy:
        if path is None:
            return cls()
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            return cls.model_validate(yaml.safe_load(text) or {})
        return cls.model_validate_json(text)


@dataclass
class LineageFacts:
    """What the store holds about one model version (event payloads as JSON-able dicts)."""

    model_name: str
    version: str
    model: dict[str, Any] | None = None
    training_run: dict[str, Any] | None = None  # the run's latest state
    datasets: list[dict[str, Any]] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)  # in time order

    @property
    def subject(self) -> str:
        return f"model:{self.model_name}@{self.version}"


def _approvals(facts: LineageFacts, environment: str) -> dict[str, dict[str, Any]]:
    """The latest decision per role on moving this model version to ``environment``."""
    latest: dict[str, dict[str, Any]] = {}
    for decision in facts.decisions:
        target = str(decision.get("transition", "")).rsplit("->", 1)[-1].strip()
        if decision.get("subject") == facts.subject and target == environment:
            latest[str(decision["role"])] = decision
    return latest


def missing_requirements(facts: LineageFacts, policy: PromotionPolicy, environment: str) -> list[str]:
    name = f"{facts.model_name}@{facts.version}"
    if facts.model is None:
        return [f"model version {name} is not registered (no ModelVersion event)"]
    missing = []
    run = facts.training_run
    run_id = facts.model.get("run_id")
    if policy.require_training_run and (run is None or run.get("state") != "COMPLETED"):
        missing.append(f"training run {run_id or '(none recorded)'} of {name} has not completed"
                       if run_id else f"{name} names no training run")
    code = (run or {}).get("code") or {}
    if policy.require_commit and run is not None and not code.get("commit"):
        missing.append(f"training run {run_id} records no git commit")
    if policy.require_clean_tree and code.get("dirty"):
        missing.append(f"training run {run_id} ran from a working tree with uncommitted changes")
    if policy.require_environment and run is not None and not (run.get("environment") or {}).get("packages"):
        missing.append(f"training run {run_id} records no environment (Python packages)")
    if policy.require_dataset_digests:
        wanted = list(facts.model.get("datasets") or [])
        if not wanted:
            missing.append(f"{name} names no training dataset digests")
        known = {d.get("digest") for d in facts.datasets}
        missing += [f"dataset {digest} used by {name} was never recorded" for digest in wanted if digest not in known]
    if policy.require_passing_evaluation and not any(e.get("passed") for e in facts.evaluations):
        missing.append(f"no passing evaluation of {name}" + (
            f" ({len(facts.evaluations)} failed)" if facts.evaluations else ""))
    approvals = _approvals(facts, environment)
    for role in policy.roles_for(environment):
        decision = approvals.get(role)
        if decision is None:
            missing.append(f"no approval by role {role} for {facts.subject} -> {environment}")
        elif decision.get("outcome") != "APPROVED":
            missing.append(f"role {role} rejected {facts.subject} -> {environment} ({decision.get('actor')})")
    return missing
