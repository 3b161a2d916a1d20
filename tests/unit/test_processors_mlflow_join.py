"""The serve-side join of issue 19: an exchange naming an MLflow model uuid (the sidecar read it from the
model directory ``mlflow models serve`` loads) is traced to the registered version whose ModelVersion
names that uuid, whenever that version is imported, and never to the one a Deployment claims."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from provline.stream_processors.join import REQUEST, RESPONSE, build_trace, complete_late, mark_done, summarize
from provline.stream_processors.lineage import LineageIndex

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ENDPOINT = "models:/iris@champion"
UUID_1, UUID_2 = "a" * 32, "b" * 32


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def exchange(uuid: str | None, *, when: float = 100) -> tuple[dict[str, Any], dict[str, Any]]:
    common = {"prediction_id": "p1", "endpoint": ENDPOINT, "model_name": None, "model_version": None,
              "mlflow_model_uuid": uuid}
    return (
        {**common, "event_id": "req", "event_time": at(when), "body_sha256": "r" * 64, "features": {"x": 1.0}},
        {**common, "event_id": "resp", "event_time": at(when + 0.1), "body_sha256": "s" * 64, "status": 200,
         "latency_us": 900, "outputs": {"predictions": 0}},
    )


def model_version(index: LineageIndex, name: str, version: str, uuid: str | None, *, run: str = "run-1",
                  when: float = 0) -> None:
    index.ingest("ModelVersion", {
        "event_time": at(when), "model_name": name, "version": version, "artifact_uri": f"mlflow-artifacts:/{version}",
        "artifact_sha256": f"sha256:{version}", "run_id": run, "datasets": [f"mlflow:iris:{run}"], "feature_sets": [],
        "mlflow_model_uuid": uuid,
    })


def run_code(index: LineageIndex, run: str = "run-1") -> None:
    index.ingest("RunEvent", {"event_time": at(0), "run_id": run, "code": {"repo": None, "commit": f"commit-{run}"}})


def deploy(index: LineageIndex, version: str, *, when: float, name: str = "iris") -> None:
    index.ingest("Deployment", {
        "event_id": f"dep-{name}-{version}-{when}", "event_time": at(when), "model_name": name,
        "model_version": version, "environment": "champion", "endpoint": ENDPOINT, "action": "PROMOTE",
    })


def test_two_versions_of_one_run_are_told_apart_by_their_uuids() -> None:
    index = LineageIndex()
    model_version(index, "iris", "1", UUID_1)
    model_version(index, "iris", "2", UUID_2)  # same run, another saved model
    assert index.mlflow_model(UUID_1, endpoint=ENDPOINT, at=at(1)).version == "1"  # type: ignore[union-attr]
    assert index.mlflow_model(UUID_2, endpoint=ENDPOINT, at=at(1)).version == "2"  # type: ignore[union-attr]
    assert index.mlflow_model("c" * 32, endpoint=ENDPOINT, at=at(1)) is None


def test_one_saved_model_registered_twice_resolves_to_the_deployed_version_else_the_first() -> None:
    index = LineageIndex()
    model_version(index, "iris", "2", UUID_1, when=20)
    model_version(index, "iris", "1", UUID_1, when=10)
    assert index.mlflow_model(UUID_1, endpoint=ENDPOINT, at=at(100)).version == "1"  # type: ignore[union-attr]
    deploy(index, "2", when=50)
    assert index.mlflow_model(UUID_1, endpoint=ENDPOINT, at=at(100)).version == "2"  # type: ignore[union-attr]
    assert index.mlflow_model(UUID_1, endpoint=ENDPOINT, at=at(40)).version == "1"  # type: ignore[union-attr]


def test_a_model_version_revised_without_the_uuid_no_longer_answers_for_it() -> None:
    index = LineageIndex()
    model_version(index, "iris", "1", UUID_1)
    model_version(index, "iris", "1", None)
    assert index.mlflow_model(UUID_1, endpoint=ENDPOINT, at=at(1)) is None
    model_version(index, "iris", "1", UUID_2)
    assert index.mlflow_model(UUID_2, endpoint=ENDPOINT, at=at(1)).version == "1"  # type: ignore[union-attr]


def test_the_uuid_names_the_model_not_the_version_the_alias_points_at() -> None:
    index = LineageIndex()
    for version, uuid in (("1", UUID_1), ("2", UUID_2)):
        model_version(index, "iris", version, uuid, run=f"run-{version}")
        run_code(index, f"run-{version}")
    deploy(index, "2", when=10)
    deploy(index, "1", when=50)  # the alias moved back to 1; the server still serves 2's directory
    request, response = exchange(UUID_2)
    trace = build_trace(request, response, index)
    assert trace["complete"], trace["missing"]
    assert (trace["model_name"], trace["model_version"], trace["training_run_id"], trace["code_commit"]) == \
        ("iris", "2", "run-2", "commit-run-2")
    assert trace["dataset_digests"] == ["mlflow:iris:run-2"]
    assert trace["deployment_event_id"] == "dep-iris-2-10", "the alias move that put version 2 there"
    assert trace["served_version"] is None


def test_an_unknown_uuid_misses_lineage_and_names_no_version_even_where_one_is_deployed() -> None:
    index = LineageIndex()
    model_version(index, "iris", "1", UUID_1)
    run_code(index)
    deploy(index, "1", when=10)
    trace = build_trace(*exchange(UUID_2), index)
    assert not trace["complete"] and trace["missing"] == "lineage"
    assert trace["model_name"] is None and trace["model_version"] is None and trace["training_run_id"] is None


def test_a_version_imported_after_the_trace_went_out_completes_it() -> None:
    index = LineageIndex()
    request, response = exchange(UUID_1)
    halves = summarize(REQUEST, request), summarize(RESPONSE, response)  # as the join table keeps them
    first = build_trace(*halves, index)
    assert first["missing"] == "lineage"
    marker = mark_done({"p": 0, "s": 1.0, "q": halves[0], "r": halves[1]}, first, now=2.0)
    assert complete_late(marker, index)[1] is None, "nothing known yet: nothing to send"
    model_version(index, "iris", "1", UUID_1)  # provline mlflow import, later
    run_code(index)
    deploy(index, "1", when=10)
    _, completed = complete_late(marker, index)
    assert completed is not None and completed["complete"]
    assert (completed["model_name"], completed["model_version"], completed["code_commit"]) == \
        ("iris", "1", "commit-run-1")
