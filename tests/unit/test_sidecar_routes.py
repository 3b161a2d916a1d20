"""Known routes of KServe V2, TF Serving and MLflow (issue 14, items 8 and 9)."""

from __future__ import annotations

import pytest

from provline.sidecar.routes import Route, classify

PREDICTIONS = [
    ("/v2/models/iris/infer", Route("inference", "/v2/models/iris/infer", "kserve_v2", "iris", None)),
    ("/v2/models/iris/versions/v1/infer", Route("inference", "/v2/models/iris/infer", "kserve_v2", "iris", "v1")),
    ("/v2/models/llm/generate", Route("inference", "/v2/models/llm/generate", "kserve_v2", "llm", None)),
    ("/v1/models/x:predict", Route("inference", "/v1/models/x:predict", "tf_serving", "x", None)),
    ("/v1/models/x/versions/3:predict", Route("inference", "/v1/models/x:predict", "tf_serving", "x", "3")),
    ("/v1/models/x/labels/stable:classify", Route("inference", "/v1/models/x:classify", "tf_serving", "x", None)),
    ("/v1/models/x:regress", Route("inference", "/v1/models/x:regress", "tf_serving", "x", None)),
    ("/invocations", Route("inference", "/invocations", "mlflow")),
]
CALLS = {
    "/v2/health/ready": "health", "/v2/health/live": "health", "/v2/models/iris/ready": "health",
    "/v2/models/iris/versions/v1/ready": "health", "/v1/models/x": "health", "/v1/models/x/versions/3": "health",
    "/ping": "health", "/health": "health",
    "/v2": "metadata", "/v2/": "metadata", "/v2/models/iris": "metadata", "/v2/models/iris/versions/v1": "metadata",
    "/v2/docs": "metadata", "/v2/models/iris/docs/dataplane.json": "metadata", "/v1/models/x/metadata": "metadata",
    "/v1/models/x/versions/3/metadata": "metadata", "/version": "metadata",
    "/metrics": "metrics", "/monitoring/prometheus/metrics": "metrics",
}


@pytest.mark.parametrize(("path", "route"), PREDICTIONS)
def test_predictions_have_their_canonical_endpoint_and_the_model_from_the_path(path: str, route: Route) -> None:
    assert classify("POST", path) == route and route.recorded


@pytest.mark.parametrize(("path", "kind"), sorted(CALLS.items()))
def test_health_and_metadata_reads_are_known_non_inference_calls(path: str, kind: str) -> None:
    for method in ("GET", "HEAD"):
        route = classify(method, path)
        assert (route.kind, route.endpoint, route.recorded) == (kind, path, False)


def test_model_repository_calls_are_not_predictions() -> None:
    for path in ("/v2/repository/index", "/v2/repository/models/iris/load", "/v2/repository/models/iris/unload"):
        assert classify("POST", path).kind == "repository"


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/predict"), ("POST", "/"), ("GET", "/gzip"), ("POST", "/v2/health/ready"), ("PUT", "/v2/models/iris"),
    ("GET", "/v2/models/iris/infer"), ("POST", "/v2/models/iris/versions/v1/explain"), ("GET", "/invocations"),
])
def test_anything_else_is_recorded_as_before(method: str, path: str) -> None:
    route = classify(method, path)
    assert (route.kind, route.endpoint, route.recorded) == ("other", path, True)
