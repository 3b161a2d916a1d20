from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from provline.producers import Lineage
from provline.producers.command import run_command
from provline.schemas import default_catalog
from provline.sink.promotion import LineageFacts, PromotionPolicy, missing_requirements
from tests.helpers import memory_lineage, sent


def complete_facts() -> LineageFacts:
    return LineageFacts(
        model_name="churn", version="3",
        model={"run_id": "r1", "datasets": ["sha256:d1"]},
        training_run={"state": "COMPLETED", "code": {"commit": "abc", "dirty": False},
                      "environment": {"packages": {"numpy": "2.0"}}},
        datasets=[{"digest": "sha256:d1"}],
        evaluations=[{"passed": False}, {"passed": True}],
        decisions=[{"subject": "model:churn@3", "transition": "staging->production", "outcome": "APPROVED",
                    "role": "risk-officer", "actor": "ada"}],
    )


def test_complete_lineage_may_be_promoted() -> None:
    assert missing_requirements(complete_facts(), PromotionPolicy(), "production") == []


def test_every_missing_piece_is_named() -> None:
    facts = complete_facts()
    facts.training_run = {"state": "STARTED", "code": {"commit": None}, "environment": {}}
    facts.datasets = []
    facts.evaluations = [{"passed": False}]
    facts.decisions = []
    policy = PromotionPolicy(required_roles={"production": ["risk-officer", "model-owner"]})
    assert missing_requirements(facts, policy, "production") == [
        "training run r1 of churn@3 has not completed",
        "training run r1 records no git commit",
        "training run r1 records no environment (Python packages)",
        "dataset sha256:d1 used by churn@3 was never recorded",
        "no passing evaluation of churn@3 (1 failed)",
        "no approval by role model-owner for model:churn@3 -> production",
        "no approval by role risk-officer for model:churn@3 -> production",
    ]


def test_a_later_rejection_overrides_an_approval_and_other_environments_do_not_count() -> None:
    facts = complete_facts()
    facts.decisions.append({**facts.decisions[0], "outcome": "REJECTED", "actor": "bob"})
    assert missing_requirements(facts, PromotionPolicy(), "production") == [
        "role risk-officer rejected model:churn@3 -> production (bob)"]
    facts.decisions = [{**complete_facts().decisions[0], "transition": "dev->staging"}]
    assert missing_requirements(facts, PromotionPolicy(), "production") == [
        "no approval by role risk-officer for model:churn@3 -> production"]
    assert missing_requirements(facts, PromotionPolicy(), "staging") == []


def test_an_unregistered_model_is_refused_outright() -> None:
    facts = LineageFacts(model_name="churn", version="9")
    assert missing_requirements(facts, PromotionPolicy(), "production") == [
        "model version churn@9 is not registered (no ModelVersion event)"]


def test_policy_files_in_json_and_yaml_and_a_misspelt_key_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("require_clean_tree: true\nrequired_roles:\n  '*': [owner]\n")
    policy = PromotionPolicy.load(tmp_path / "p.yaml")
    assert policy.require_clean_tree and policy.roles_for("staging") == ["owner"]
    (tmp_path / "p.json").write_text(json.dumps({"require_comit": True}))
    with pytest.raises(ValueError, match="require_comit"):
        PromotionPolicy.load(tmp_path / "p.json")


def run_events(lineage: Lineage) -> list[dict]:
    decoded = (default_catalog().decode(m) for m in sent(lineage.emitter))
    return [d.value for d in decoded if d.record == "RunEvent"]


@pytest.mark.parametrize(("code", "state"), [(0, "COMPLETED"), (3, "FAILED")])
def test_a_wrapped_command_is_recorded_with_argv_exit_code_and_duration(code: int, state: str) -> None:
    lineage = memory_lineage()
    argv = [sys.executable, "-c", f"import sys; sys.exit({code})"]
    assert run_command(argv, lineage, name="job") == code
    started, finished = run_events(lineage)
    assert started["state"] == "STARTED" and finished["state"] == state
    assert finished["exit_code"] == code and finished["code"]["argv"] == argv
    assert finished["duration_ms"] is not None and finished["stage"] == "command"
    assert (finished["error"] is None) == (code == 0)


def test_a_command_that_cannot_start_is_recorded_as_failed() -> None:
    lineage = memory_lineage()
    with pytest.raises(SystemExit, match="cannot start"):
        run_command(["/nonexistent/tool"], lineage)
    assert run_events(lineage)[-1]["exit_code"] == 127
