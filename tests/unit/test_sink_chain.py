"""The complete trace's pure parts: shaping records into the chain, each record's verification, and the
CLI's human output of it in an 80-column terminal."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from rich.console import Console

from provline import cli
from provline.sink.anchor import AnchorHead
from provline.sink.chain import (
    MAX_LABEL,
    Checked,
    LedgerEntry,
    Record,
    anchored,
    build_chain,
    combined,
    deployments_at,
    finish_record,
    ledger_problems,
    verification,
)
from provline.sink.verify import Trust

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
OK = verification(True, True, ["fine"])


def record(kind: str, event_id: str, minutes: int = 0, checked: dict[str, Any] | None = None,
           **fields: Any) -> Record:
    at = T0 + timedelta(minutes=minutes)
    return Record(kind, event_id, at, {"event_id": event_id, "event_time": at.isoformat(), **fields}, checked or OK)


LONG = "a-model-name-that-goes-on-and-on-and-on-forever"


def records(**overrides: Any) -> list[Record]:
    code = {"repo": "git@x:ml.git", "commit": "c0ffee12", "branch": "main", "dirty": False}
    environment = {"python": "3.11.9", "packages_sha256": "9" * 64, "container_image": "img:1"}
    return [
        record("PredictionTrace", "t1", 30, prediction_id="p1", endpoint="/predict", model_name="churn",
               model_version="3", training_run_id="run-1", dataset_digests=["d1"], feature_sets=["fs1"],
               deployment_event_id=overrides.get("deployment_event_id", "dep3"),
               request_time=(T0 + timedelta(minutes=29)).isoformat(), features={"age": 41.0},
               outputs={"churn": 0.7}),
        record("PredictionTrace", "t0", 29, prediction_id="p1", endpoint="/predict", model_name="old",
               model_version="1"),  # an older revision of the trace: the newest counts
        record("InferenceRequest", "q1", 29, prediction_id="p1", body_sha256="b" * 64, body="e30=",
               body_truncated=False),
        record("InferenceResponse", "r1", 29, prediction_id="p1", body_sha256="c" * 64, body="e30=",
               body_truncated=False),
        record("ModelVersion", "m3", 5, model_name="churn", version="3", artifact_uri="s3://m/3",
               artifact_sha256="a" * 64, run_id="run-1", datasets=["d1"], feature_sets=["fs1"]),
        record("RunEvent", "run-a", 1, run_id="run-1", name="train", state="STARTED", code=code,
               environment=environment, hyperparameters={"lr": "0.1"}, seeds={"numpy": 7}),
        record("RunEvent", "run-b", 2, run_id="run-1", name="train", state="COMPLETED", hyperparameters={},
               seeds={}),
        record("DatasetVersion", "ds1", 0, name="clean", digest="d1", license="CC-BY-4.0", pii_tags=["email"]),
        record("FeatureSetVersion", "fs", 0, name="churn-features", digest="fs1", input_datasets=["d1"],
               features=[{"name": "age", "dtype": "float", "parameters": {},
                          "code": {"repo": "git@x:ml.git", "commit": "c0ffee12", "path": "f.py", "symbol": "age"}}]),
        record("Evaluation", "ev", 6, model_name="churn", model_version="3", passed=True,
               metrics=[{"name": "auc", "value": 0.91, "threshold": 0.85, "passed": True}]),
        record("Evaluation", "ev-other", 6, model_name="churn", model_version="2", passed=True, metrics=[]),
        record("Decision", "ap", 7, subject="model:churn@3", outcome="APPROVED", actor="rita", role="risk",
               rationale="good", transition="staging->production"),
        record("Deployment", "dep2", 3, model_name="churn", model_version="2", environment="prod",
               endpoint="/predict", action="DEPLOY"),
        record("Deployment", "dep-staging", 4, model_name="churn", model_version="2", environment="staging",
               endpoint="/predict", action="DEPLOY"),
        record("Deployment", "dep3", 8, model_name="churn", model_version="3", environment="prod",
               endpoint="/predict", action="PROMOTE"),
        record("Deployment", "dep4", 40, model_name="churn", model_version="4", environment="prod",
               endpoint="/predict", action="PROMOTE"),  # after the request: not in force then
        record("Feedback", "fb", 60, prediction_id="p1", label="churned", source="crm"),
    ]


def edges(chain: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(e["from"], e["to"], e["relation"]) for e in chain["edges"]}


def test_records_shape_into_the_contracts_nodes_and_edges() -> None:
    chain = build_chain("p1", records(), payloads=False)
    ids = [n["id"] for n in chain["nodes"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {"prediction:p1", "model:churn@3", "run:run-1", "commit:git@x:ml.git@c0ffee12",
                        "environment:run-1", "dataset:d1", "feature_set:fs1", "evaluation:ev",
                        "approval:ap", "deployment:dep3", "deployment:dep2", "ground_truth:fb"}
    assert edges(chain) == {
        ("prediction:p1", "model:churn@3", "served_by"), ("model:churn@3", "run:run-1", "trained_by"),
        ("run:run-1", "commit:git@x:ml.git@c0ffee12", "code"), ("run:run-1", "environment:run-1", "environment"),
        ("run:run-1", "dataset:d1", "trained_on"), ("model:churn@3", "feature_set:fs1", "features"),
        ("feature_set:fs1", "dataset:d1", "input"), ("model:churn@3", "evaluation:ev", "evaluated"),
        ("model:churn@3", "approval:ap", "approved"), ("model:churn@3", "deployment:dep3", "deployed"),
        ("deployment:dep3", "deployment:dep2", "replaced"), ("prediction:p1", "ground_truth:fb", "labelled"),
    }
    nodes = {n["id"]: n for n in chain["nodes"]}
    assert nodes["prediction:p1"]["event_id"] == "t1"  # the newest trace
    run = nodes["run:run-1"]
    assert run["event_id"] == "run-b" and run["fields"]["state"] == "COMPLETED"
    assert (run["fields"]["hyperparameters"], run["fields"]["seeds"]) == ({"lr": "0.1"}, {"numpy": 7})
    assert nodes["commit:git@x:ml.git@c0ffee12"]["event_id"] == "run-a"  # the state change that carried it
    assert (nodes["deployment:dep3"]["fields"]["in_force"], nodes["deployment:dep2"]["fields"]["in_force"]) == (
        True, False)
    assert all(len(n["label"]) <= MAX_LABEL for n in chain["nodes"])


def test_payloads_only_when_asked() -> None:
    hidden = build_chain("p1", records(), payloads=False)["nodes"][0]["fields"]
    shown = build_chain("p1", records(), payloads=True)["nodes"][0]["fields"]
    assert "request_body" not in hidden and "response_body" not in hidden
    assert (shown["request_body"], shown["response_body"]) == ("e30=", "e30=")
    assert hidden["features"] == {"age": 41.0} and hidden["request_body_sha256"] == "b" * 64


def test_a_record_not_stored_gives_no_node_and_no_edge() -> None:
    kept = [r for r in records() if r.kind not in ("ModelVersion", "Feedback")]
    chain = build_chain("p1", kept, payloads=False)
    ids = {n["id"] for n in chain["nodes"]}
    assert "model:churn@3" not in ids and "ground_truth:fb" not in ids
    # without the model version, what hangs from it has nothing to hang from
    assert not any("evaluation:" in i or "approval:" in i or "deployment:" in i for i in ids)
    assert all(e["from"] in ids and e["to"] in ids for e in chain["edges"])
    assert build_chain("p1", [r for r in records() if r.kind != "PredictionTrace"], payloads=False) == {
        "nodes": [], "edges": []}


def test_the_deployment_in_force_without_the_traces_id_is_the_newest_at_the_endpoint_before_the_request() -> None:
    deployments = [r for r in records() if r.kind == "Deployment"]
    trace = records(deployment_event_id=None)[0].fields
    in_force, before = deployments_at(deployments, trace)
    assert (in_force and in_force.event_id, before and before.event_id) == ("dep3", "dep2")
    in_force, before = deployments_at(deployments, {**trace, "model_version": "9"})
    assert (in_force, before) == (None, None)


def test_a_long_label_is_cut() -> None:
    chain = build_chain(LONG, records(), payloads=False)
    assert chain["nodes"][0]["label"].endswith("…") and len(chain["nodes"][0]["label"]) == MAX_LABEL


def checked(**overrides: Any) -> Checked:
    values: dict[str, Any] = {"kind": "Decision", "event_id": "e1", "event_time": T0, "hash": "h1", "prev_hash": "h0",
                              "session": "s", "payload_digest": "c1", "value": {"actor": "rita"},
                              "chain_problems": (), "signature_problems": ()}
    return Checked(**{**values, **overrides})


SIGNED = Trust({"job": ()})  # enabled: signatures are checked (check_event found none failing here)


def test_a_record_verifies_only_when_bytes_ledger_and_link_hold() -> None:
    ledger = [LedgerEntry("h1", "c1")]
    ok = finish_record(checked(), SIGNED, ledger, link_recorded=True).verification
    assert (ok["status"], ok["hash_chain"], ok["signature"], ok["anchor"]) == ("verified", True, True, None)
    unlinked = finish_record(checked(), SIGNED, ledger, link_recorded=False).verification
    assert unlinked["status"] == "not_verified" and "not recorded" in unlinked["detail"]
    dead_lettered = finish_record(checked(), SIGNED, ledger, False, "TooLarge: big (made for traces)").verification
    assert dead_lettered["status"] == "verified" and "not recorded" not in dead_lettered["detail"]
    assert "linked to a predecessor (h0…) that was dead-lettered, never stored: TooLarge: big" in (
        dead_lettered["detail"])
    start = finish_record(checked(prev_hash=None), SIGNED, ledger, link_recorded=False).verification
    assert start["status"] == "verified" and "starts its chain" in start["detail"]
    altered = finish_record(checked(chain_problems=("the bytes hash to x",)), SIGNED, ledger, True).verification
    assert (altered["status"], altered["hash_chain"]) == ("not_verified", False)
    forged = finish_record(checked(signature_problems=("bad",)), SIGNED, ledger, True).verification
    assert (forged["status"], forged["hash_chain"], forged["signature"]) == ("not_verified", True, False)
    keyless = finish_record(checked(), Trust(), ledger, True).verification
    assert (keyless["status"], keyless["signature"]) == ("verified", None)
    assert "PROVLINE_EVIDENCE__TRUSTED_KEYS" in keyless["detail"]


def test_the_ledger_names_replaced_ids_and_altered_payloads() -> None:
    assert ledger_problems("h1", "c1", [LedgerEntry("h1", "c1")]) == []
    assert ledger_problems("h1", "c1", []) == []  # not ledgered (stored before the ledger): nothing to compare
    assert ledger_problems("h1", "c1", [LedgerEntry("h1", "", "legacy")]) == []  # ledgered before 0007
    assert "altered" in ledger_problems("h1", "c2", [LedgerEntry("h1", "c1")])[0]
    assert any("re-published" in p for p in ledger_problems("h1", "c1", [LedgerEntry("h1", "c1"),
                                                                          LedgerEntry("h9", "c9")]))
    assert any("another hash" in p for p in ledger_problems("h1", "c1", [LedgerEntry("h9", "c1")]))


def test_statuses_and_their_combination() -> None:
    assert verification(True, None, [])["status"] == "verified"
    assert verification(None, None, [])["status"] == "unchecked"
    assert verification(True, False, [])["status"] == "not_verified"
    assert combined([])["status"] == "unchecked"
    bad = record("RunEvent", "x", checked=verification(False, True, ["altered"]))
    both = combined([record("RunEvent", "y"), bad])
    assert (both["status"], both["hash_chain"], both["signature"]) == ("not_verified", False, True)
    assert "RunEvent x: altered" in both["detail"]


# ---------------------------------------------------------------- the CLI's human output


def rendered(monkeypatch: pytest.MonkeyPatch, trace: dict[str, Any]) -> str:
    out = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=out, width=80, force_terminal=False))
    cli.print_trace(trace)
    return out.getvalue()


def test_the_chain_reads_well_in_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    items = records()
    tampered = verification(False, True, ["the bytes hash to 0a1b… but claim 9f8e…: the event was altered"])
    items[11] = record("Decision", "ap", 7, checked=tampered, subject="model:churn@3", outcome="APPROVED",
                       actor="rita", role="risk", rationale="a rationale " * 12, transition="staging->production")
    chain = build_chain("p1", items, payloads=True)
    text = rendered(monkeypatch, {"prediction_id": "p1", "chain": chain, "model_name": "churn"})
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "12 records (1 not verified, 11 verified)" in text
    assert text.count("✓ verified") == 11 and text.count("✗ NOT VERIFIED") == 1
    assert "the event was altered" in text
    for expected in ("s3://m/3", "aaaaaaaaaaaa", "CC-BY-4.0", "email", "age <- f.py:age@c0ffee12",
                     "auc 0.91 (threshold 0.85, passed)", "rita", "churned", "lr=0.1", "numpy=7",
                     "yes, at request time", "no: the one it replaced", "python", "3.11.9"):
        assert expected in text, expected
    assert "a" * 64 not in text  # digests cut


def test_each_records_anchor_status_reads_well_in_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    head = AnchorHead("s1", "h9", 9, "2026-03-01T10:00:00+00:00", "/mnt/worm/anchor-1.json", "r" * 64,
                      "2026-03-01T09:30:00+00:00")
    items = [anchored(replace(r, session="s1", hash=f"h{n}", ledgered=T0 + timedelta(minutes=n * 5)), head, True)
             for n, r in enumerate(records())]
    chain = build_chain("p1", items, payloads=True)
    shown = [n["verification"]["anchor"]["status"] for n in chain["nodes"]]
    assert 0 < shown.count("anchored") < len(shown)  # ledgered by 09:30, or after: pending
    text = rendered(monkeypatch, {"prediction_id": "p1", "chain": chain})
    assert max(len(line) for line in text.splitlines()) <= 80
    assert text.count("anchored (2026-03-01 10:00:00)") == shown.count("anchored")
    assert text.count("pending: stored after the newest anchor (2026-03-01 10:00:00)") == shown.count("pending")
    assert (f"anchors: {shown.count('anchored')} anchored, {shown.count('pending')} pending; `provline verify "
            "--anchor` checks") in text.replace("\n", "")


def test_an_answer_without_a_chain_prints_its_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    text = rendered(monkeypatch, {"prediction_id": "p1", "model_name": "churn", "model_version": "3"})
    assert "churn" in text and "model_version" in text
