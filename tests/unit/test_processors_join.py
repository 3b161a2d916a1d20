from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from provline.schemas.serde import default_catalog
from provline.stream_processors.join import (
    REQUEST,
    RESPONSE,
    Step,
    Timing,
    absorb,
    build_trace,
    deadline,
    halves,
    hold,
    is_done,
    is_held,
    mark_done,
    next_step,
    summarize,
    trace_event_id,
)
from provline.stream_processors.lineage import LineageIndex, to_micros
from provline.stream_processors.traces import TraceEncoder
from tests.helpers import chain_findings

T0 = datetime(2025, 1, 1, tzinfo=UTC)
# build_trace gives every field of the trace after the envelope, but the ground truth (label_fields)
TRACE_FIELDS = [
    field["name"]
    for field in json.loads((Path("schemas/avsc/PredictionTrace.v3.avsc")).read_text())["fields"]
][6:]
TRACE_FIELDS = [name for name in TRACE_FIELDS if not name.startswith("feedback_") and name not in ("label", "outcome")]


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


TIMING = Timing(ttl=30, lineage_wait=10, retention=300)


@pytest.mark.parametrize("order", [(REQUEST, RESPONSE), (RESPONSE, REQUEST)])
def test_pending_entry_joins_halves_in_either_order(order: tuple[str, str]) -> None:
    half = {REQUEST: summarize(REQUEST, request()), RESPONSE: summarize(RESPONSE, response())}
    first = absorb(None, order[0], half[order[0]], partition=3, now=100)
    assert first is not None and first["p"] == 3 and first["s"] == 100
    assert next_step(first, {"complete": False}, now=101, timing=TIMING) is Step.WAIT
    assert deadline(first, TIMING) == 130  # the time-to-live of a lone half
    assert absorb(first, order[0], half[order[0]], partition=3, now=101) is None  # duplicate first half
    both = absorb(first, order[1], half[order[1]], partition=3, now=102)
    assert both is not None and halves(both) == (half[REQUEST], half[RESPONSE])
    assert next_step(both, {"complete": True}, now=102, timing=TIMING) is Step.EMIT
    done = mark_done(both, {"model_name": "churn", "model_version": "2"}, now=102)
    assert is_done(done) and halves(done) == (None, None) and (done["m"], done["v"]) == ("churn", "2")
    assert deadline(done, TIMING) == 402  # forgotten after the retention
    for kind in order:  # duplicates after the trace was emitted
        assert absorb(done, kind, half[kind], partition=3, now=103) is None
    assert next_step(done, {"complete": True}, now=500, timing=TIMING) is Step.WAIT


def test_summaries_keep_what_a_trace_needs_and_drop_the_body() -> None:
    half = summarize(REQUEST, {**request(), "body": b"x" * 1000})
    assert "body" not in half and half["event_time"] == to_micros(at(100))
    json.dumps(half)  # the table stores it as JSON
    trace = build_trace(half, summarize(RESPONSE, response()), lineage())
    assert trace["model_version"] == "2" and trace["features"] == {"age": 41.0, "plan": "gold"}
    assert trace["request_time"] == to_micros(at(100)) and trace["outputs"] == {"score": 0.7}


@pytest.mark.parametrize(("present", "missing"), [(REQUEST, "response"), (RESPONSE, "request")])
def test_a_lone_half_emits_a_partial_trace_when_its_time_to_live_ends(present: str, missing: str) -> None:
    value = request() if present == REQUEST else response()
    entry = absorb(None, present, summarize(present, value), partition=0, now=100)
    assert entry is not None
    assert next_step(entry, {}, now=129.9, timing=TIMING) is Step.WAIT
    assert next_step(entry, {}, now=130, timing=TIMING) is Step.EMIT
    assert hold(entry, now=130) == entry  # a lone half is never "held for lineage"
    trace = build_trace(*halves(entry), lineage())
    assert trace["complete"] is False and trace["missing"] == missing and trace["model_version"] == "2"


def test_incomplete_lineage_is_held_until_the_wait_is_over() -> None:
    entry = absorb(absorb(None, REQUEST, summarize(REQUEST, request()), partition=0, now=99), RESPONSE,
                   summarize(RESPONSE, response()), partition=0, now=100)
    assert entry is not None and not is_held(entry)
    incomplete = {"complete": False}
    assert next_step(entry, incomplete, now=100, timing=TIMING) is Step.WAIT
    held = hold(entry, now=100)
    assert is_held(held) and hold(held, now=105) == held  # held from the first time
    assert deadline(held, TIMING) == 110
    assert next_step(held, incomplete, now=109.9, timing=TIMING) is Step.WAIT
    assert next_step(held, incomplete, now=110, timing=TIMING) is Step.EMIT
    assert next_step(held, {"complete": True}, now=101, timing=TIMING) is Step.EMIT
    assert not is_held(mark_done(held, {}, now=110))


def test_absorb_rejects_other_kinds() -> None:
    with pytest.raises(ValueError, match="Feedback is not a half"):
        absorb(None, "Feedback", {}, partition=0, now=0)
    with pytest.raises(ValueError, match="Feedback is not a half"):
        summarize("Feedback", {})


def test_trace_event_ids_are_stable_uuid7_per_prediction() -> None:
    first = trace_event_id("p1", to_micros(at(100)))
    assert first == trace_event_id("p1", to_micros(at(100)))  # a re-emitted trace collapses downstream
    assert first != trace_event_id("p2", to_micros(at(100)))
    parsed = uuid.UUID(first)
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert parsed.int >> 80 == to_micros(at(100)) // 1000  # time-ordered like every event id
    assert trace_event_id("p1", to_micros(at(100))) < trace_event_id("p0", to_micros(at(101)))


def test_encoded_traces_decode_and_chain() -> None:
    catalog = default_catalog()
    encoder = TraceEncoder(catalog, session_id="s1")
    index = lineage()
    chain = []
    for pid in ("p1", "p2"):
        event_id = trace_event_id(pid, to_micros(at(100)))
        data = encoder.encode(build_trace(request(pid=pid), response(pid=pid), index), event_id=event_id)
        decoded = catalog.decode(data)
        assert decoded.record == "PredictionTrace" and decoded.value["event_id"] == event_id
        assert decoded.value["prediction_id"] == pid and decoded.value["model_version"] == "2"
        assert decoded.value["producer"]["name"] == "stream_processors"
        chain.append(data)
    assert chain_findings(chain) == []


def test_a_trace_whose_model_is_known_but_whose_deployment_is_not_is_missing_its_deployment() -> None:
    index = LineageIndex()
    index.ingest("ModelVersion", {"model_name": "churn", "version": "2", "artifact_uri": "u", "artifact_sha256": "s",
                                  "run_id": None, "datasets": [], "feature_sets": []})
    trace = build_trace(request(100), response(100.2, model_name="churn", model_version="2"), index)
    assert trace["model_version"] == "2" and trace["deployment_event_id"] is None
    assert trace["complete"] is False and trace["missing"] == "deployment"


def test_a_served_version_resolves_to_the_registered_one_and_positional_columns_take_signature_names() -> None:
    """Issue 14, items 11 and 6: MLServer reports "v1" for the registered "1", and a single V2 tensor
    gives input-0[0]..input-0[3], which never matched the training columns."""
    index = LineageIndex()
    index.ingest("RunEvent", {"event_time": at(0), "run_id": "run-1", "code": {"repo": "r", "commit": "c"}})
    index.ingest("ModelVersion", {"event_time": at(0), "model_name": "iris", "version": "1", "artifact_uri": "u",
                                  "artifact_sha256": "s", "run_id": "run-1", "datasets": ["d"], "feature_sets": [],
                                  "served_versions": ["v1"], "input_names": ["sl", "sw", "pl", "pw"],
                                  "output_names": ["species"]})
    index.ingest("Deployment", {"event_id": "dep-1", "event_time": at(1), "model_name": "iris", "model_version": "1",
                                "environment": "prod", "endpoint": "/v2/models/iris/infer", "action": "DEPLOY"})
    rows = [{f"input-0[{i}]": float(i + row) for i in range(4)} for row in range(2)]
    trace = build_trace(
        request(100, endpoint="/v2/models/iris/infer", features=rows[0], feature_rows=rows, row_count=2),
        response(100.2, endpoint="/v2/models/iris/infer", model_name="iris", model_version="v1",
                 outputs={"predict": 0.0}, output_rows=[{"predict": 0.0}, {"predict": 2.0}]),
        index,
    )
    assert (trace["model_version"], trace["served_version"], trace["complete"]) == ("1", "v1", True)
    assert trace["deployment_event_id"] == "dep-1" and trace["training_run_id"] == "run-1"
    assert trace["features"] == {"sl": 0.0, "sw": 1.0, "pl": 2.0, "pw": 3.0}
    assert trace["feature_rows"][1] == {"sl": 1.0, "sw": 2.0, "pl": 3.0, "pw": 4.0} and trace["row_count"] == 2
    assert trace["outputs"] == {"species": 0.0} and trace["output_rows"][1] == {"species": 2.0}
