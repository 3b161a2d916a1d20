from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from schemas.integrity import first_break
from schemas.serde import default_catalog
from stream_processors.join import (
    Step,
    absorb,
    build_trace,
    halves,
    hold,
    is_held,
    mark_done,
    next_step,
)
from stream_processors.lineage import LineageIndex
from stream_processors.traces import TraceEncoder

T0 = datetime(2025, 1, 1, tzinfo=UTC)
TRACE_FIELDS = [
    field["name"]
    for field in json.loads((Path("schemas/avsc/PredictionTrace.v1.avsc")).read_text())["fields"]
][6:]  # after the envelope


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def request(when: float = 100, *, pid: str = "p1", **extra: Any) -> dict[str, Any]:
    return {
        "event_id": f"req-{pid}", "event_time": at(when), "prediction_id": pid, "endpoint": "/predict",
        "method": "POST", "path": "/predict", "model_name": None, "model_version": None,
        "body_size": 3, "body_sha256": f"reqsha-{pid}", "features": {"age": 41.0, "plan": "gold"}, **extra,
    }


def response(when: float = 100.2, *, pid: str = "p1", **extra: Any) -> dict[str, Any]:
    return {
        "event_id": f"resp-{pid}", "event_time": at(when), "prediction_id": pid, "endpoint": "/predict",
        "status": 200, "model_name": None, "model_version": None, "body_size": 5,
        "body_sha256": f"respsha-{pid}", "outputs": {"score": 0.7}, "latency_us": 1500, **extra,
    }


def lineage(*, with_code: bool = True) -> LineageIndex:
    index = LineageIndex()
    for version, when, action in (("1", 10, "DEPLOY"), ("2", 50, "PROMOTE"), ("1", 150, "ROLLBACK")):
        index.ingest("Deployment", {
            "event_id": f"dep-{version}-{when}", "event_time": at(when), "model_name": "churn",
            "model_version": version, "environment": "prod", "endpoint": "/predict", "action": action,
        })
    for version in ("1", "2"):
        index.ingest("ModelVersion", {
            "model_name": "churn", "version": version, "artifact_uri": f"s3://m/{version}",
            "artifact_sha256": f"art-{version}", "run_id": f"run-{version}", "datasets": [f"ds-{version}"],
            "feature_sets": ["fs"],
        })
        if with_code:
            index.ingest("RunEvent", {
                "event_time": at(0), "run_id": f"run-{version}", "code": {"repo": "git@r", "commit": f"c{version}"},
            })
    return index


def test_complete_trace_names_the_version_deployed_at_request_time() -> None:
    trace = build_trace(request(100), response(100.2), lineage())
    assert list(trace) == TRACE_FIELDS
    assert trace["complete"] is True and trace["missing"] is None
    assert (trace["model_name"], trace["model_version"]) == ("churn", "2")
    assert trace["artifact_uri"] == "s3://m/2" and trace["artifact_sha256"] == "art-2"
    assert trace["training_run_id"] == "run-2"
    assert (trace["code_repo"], trace["code_commit"]) == ("git@r", "c2")
    assert trace["dataset_digests"] == ["ds-2"] and trace["feature_sets"] == ["fs"]
    assert trace["deployment_event_id"] == "dep-2-50"
    assert trace["request_sha256"] == "reqsha-p1" and trace["response_sha256"] == "respsha-p1"
    assert (trace["request_event_id"], trace["response_event_id"]) == ("req-p1", "resp-p1")
    assert trace["request_time"] == at(100) and trace["response_time"] == at(100.2)
    assert (trace["status"], trace["latency_us"]) == (200, 1500)
    assert trace["features"] == {"age": 41.0, "plan": "gold"} and trace["outputs"] == {"score": 0.7}


@pytest.mark.parametrize(("when", "version", "deployment"), [
    (10, "1", "dep-1-10"), (49.9, "1", "dep-1-10"), (50, "2", "dep-2-50"), (151, "1", "dep-1-150"),
])
def test_rollout_and_rollback_pick_the_version_by_request_time(when: float, version: str, deployment: str) -> None:
    # the response arrives after the next rollout: the request time decides
    trace = build_trace(request(when), response(when + 200), lineage())
    assert trace["model_version"] == version and trace["deployment_event_id"] == deployment
    assert trace["artifact_sha256"] == f"art-{version}" and trace["code_commit"] == f"c{version}"


def test_the_version_the_response_names_wins() -> None:
    trace = build_trace(request(100), response(100.2, model_name="churn", model_version="1"), lineage())
    assert trace["model_version"] == "1" and trace["artifact_sha256"] == "art-1"
    assert trace["deployment_event_id"] == "dep-1-10"  # the deployment that put version 1 there


def test_a_request_before_any_deployment_lacks_lineage() -> None:
    trace = build_trace(request(1), response(1.1), lineage())
    assert trace["complete"] is False and trace["missing"] == "lineage"
    assert trace["model_version"] is None and trace["deployment_event_id"] is None


def test_unknown_lineage() -> None:
    trace = build_trace(request(), response(), LineageIndex())
    assert trace["complete"] is False and trace["missing"] == "lineage"
    assert trace["artifact_sha256"] is None and trace["dataset_digests"] == [] and trace["feature_sets"] == []
    assert trace["request_sha256"] == "reqsha-p1"  # the halves are still reported


def test_unknown_run_code_is_missing_lineage() -> None:
    trace = build_trace(request(), response(), lineage(with_code=False))
    assert trace["missing"] == "lineage" and trace["artifact_sha256"] == "art-2" and trace["code_commit"] is None


def test_missing_halves() -> None:
    only_request = build_trace(request(), None, lineage())
    assert only_request["missing"] == "response" and only_request["status"] is None
    assert only_request["model_version"] == "2"
    only_response = build_trace(None, response(), lineage())
    assert only_response["missing"] == "request" and only_response["request_time"] is None
    assert only_response["model_version"] == "2" and only_response["features"] == {}
    with pytest.raises(ValueError, match="neither"):
        build_trace(None, None, lineage())


@pytest.mark.parametrize(
    "order", [("InferenceRequest", "InferenceResponse"), ("InferenceResponse", "InferenceRequest")]
)
def test_pending_entry_joins_halves_in_either_order(order: tuple[str, str]) -> None:
    raw = {"InferenceRequest": b"req-bytes", "InferenceResponse": b"resp-bytes"}
    first = absorb(None, order[0], raw[order[0]], partition=3)
    assert first is not None and first["partition"] == 3
    assert next_step(first, {"complete": False}, now=0, wait_seconds=1) is Step.WAIT
    assert absorb(first, order[0], b"other", partition=3) is None  # duplicate first half
    both = absorb(first, order[1], raw[order[1]], partition=3)
    assert both is not None and halves(both) == (b"req-bytes", b"resp-bytes")
    assert next_step(both, {"complete": True}, now=0, wait_seconds=1) is Step.EMIT
    done = mark_done(both)
    assert halves(done) == (None, None)
    for kind in order:  # duplicates after the trace was emitted
        assert absorb(done, kind, raw[kind], partition=3) is None
    assert next_step(done, {"complete": True}, now=0, wait_seconds=1) is Step.WAIT


def test_incomplete_lineage_is_held_until_the_wait_is_over() -> None:
    entry = absorb(absorb(None, "InferenceRequest", b"a", partition=0), "InferenceResponse", b"b", partition=0)
    assert entry is not None and not is_held(entry)
    incomplete = {"complete": False}
    assert next_step(entry, incomplete, now=100, wait_seconds=10) is Step.WAIT
    held = hold(entry, now=100)
    assert is_held(held) and hold(held, now=105) == held  # held from the first time
    assert next_step(held, incomplete, now=109.9, wait_seconds=10) is Step.WAIT
    assert next_step(held, incomplete, now=110, wait_seconds=10) is Step.EMIT
    assert next_step(held, {"complete": True}, now=101, wait_seconds=10) is Step.EMIT
    assert not is_held(mark_done(held))


def test_absorb_rejects_other_kinds() -> None:
    with pytest.raises(ValueError, match="Feedback is not a half"):
        absorb(None, "Feedback", b"x", partition=0)


def test_encoded_traces_decode_and_chain() -> None:
    catalog = default_catalog()
    encoder = TraceEncoder(catalog, session_id="s1")
    index = lineage()
    chain = []
    for pid in ("p1", "p2"):
        data = encoder.encode(build_trace(request(pid=pid), response(pid=pid), index))
        decoded = catalog.decode(data)
        assert decoded.record == "PredictionTrace"
        assert decoded.value["prediction_id"] == pid and decoded.value["model_version"] == "2"
        assert decoded.value["producer"]["name"] == "stream_processors"
        chain.append(("PredictionTrace", decoded.value))
    assert first_break(catalog, chain) is None
