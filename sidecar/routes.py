"""What a request is, from its method and path: a prediction, or a known health or metadata call.

Pure; no I/O. :func:`classify` knows the routes of KServe V2 (the Open Inference Protocol, served
by MLServer, Triton, KServe), TF Serving (and KServe V1, which shares its paths) and
``mlflow models serve``:

==============  =========================================================================================
kind            routes (``{m}`` a model name, ``[...]`` optional)
==============  =========================================================================================
``inference``   ``POST /v2/models/{m}[/versions/{v}]/infer`` (and ``/generate``, ``/generate_stream``);
                ``POST /v1/models/{m}[/versions/{v}|/labels/{l}]:predict`` (``:classify``, ``:regress``,
                ``:explain``); ``POST /invocations``
``health``      ``GET /v2/health/live``, ``/v2/health/ready``, ``/v2/models/{m}[/versions/{v}]/ready``;
                ``GET /v1/models/{m}[/versions/{v}|/labels/{l}]`` (TF Serving's model status);
                ``GET /ping``, ``/health`` (MLflow)
``metadata``    ``GET /v2``, ``/v2/models/{m}[/versions/{v}]``, MLServer's ``/v2/docs``,
                ``/v2/models/{m}[/versions/{v}]/docs``; ``GET /v1/models/{m}[/versions/{v}]/metadata``;
                ``GET /version`` (MLflow)
``repository``  ``POST /v2/repository/index``, ``/v2/repository/models/{m}/load`` and ``/unload``
``metrics``     ``GET /metrics``, ``/monitoring/prometheus/metrics`` (TF Serving)
``other``       anything else: recorded like a prediction, as model servers unknown to provline need
==============  =========================================================================================

Health, metadata and metrics routes are these for GET and HEAD only; another method on their
paths is ``other``. The canonical ``endpoint`` of a prediction leaves the version out
(``/v2/models/iris/versions/v1/infer`` -> ``/v2/models/iris/infer``, ``/v1/models/x/versions/3:predict``
-> ``/v1/models/x:predict``), so a promoted version and the versioned path are one deployment;
``model_name`` and ``model_version`` come from the path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

RouteKind = Literal["inference", "health", "metadata", "repository", "metrics", "other"]
Protocol = Literal["kserve_v2", "tf_serving", "mlflow"]
RECORDED_KINDS: frozenset[RouteKind] = frozenset({"inference", "other"})
_READS = frozenset({"GET", "HEAD"})
_CACHED_ROUTES = 4096  # paths may be unbounded (ids in them); the common ones stay cached

_MODEL = r"/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?"
_V2_INFER = re.compile(rf"/v2{_MODEL}/(?P<verb>infer|generate|generate_stream)/?")
_V2_READY = re.compile(rf"/v2{_MODEL}/ready/?")
_V2_MODEL_METADATA = re.compile(rf"/v2{_MODEL}(?:/docs(?:/.*)?)?/?")
_V2_HEALTH = re.compile(r"/v2/health/(?:live|ready)/?")
_V2_SERVER_METADATA = re.compile(r"/v2(?:/docs(?:/.*)?)?/?")
_V2_REPOSITORY = re.compile(r"/v2/repository/(?:index|models/[^/]+/(?:load|unload))/?")
_TF_TARGET = r"/v1/models/(?P<model>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
_TF_PREDICT = re.compile(rf"{_TF_TARGET}:(?P<verb>predict|classify|regress|explain)")
_TF_STATUS = re.compile(rf"{_TF_TARGET}/?")
_TF_METADATA = re.compile(rf"{_TF_TARGET}/metadata/?")
_V2_READS: tuple[tuple[re.Pattern[str], RouteKind], ...] = (
    (_V2_HEALTH, "health"), (_V2_READY, "health"), (_V2_SERVER_METADATA, "metadata"), (_V2_MODEL_METADATA, "metadata"))
_TF_READS: tuple[tuple[re.Pattern[str], RouteKind], ...] = ((_TF_STATUS, "health"), (_TF_METADATA, "metadata"))
_MLFLOW_HEALTH = frozenset({"/ping", "/health"})
_METRICS = frozenset({"/metrics", "/monitoring/prometheus/metrics"})


@dataclass(frozen=True, slots=True)
class Route:
    """One request's route: what kind of call it is, and for a prediction its canonical endpoint and model."""

    kind: RouteKind
    endpoint: str  # the canonical endpoint (a prediction's without the version), else the path
    protocol: Protocol | None = None
    model_name: str | None = None
    model_version: str | None = None

    @property
    def recorded(self) -> bool:
        """Whether exchanges of this route are recorded by default: predictions and unknown routes."""
        return self.kind in RECORDED_KINDS


@lru_cache(maxsize=_CACHED_ROUTES)
def classify(method: str, path: str) -> Route:
    """The route of a request (see the module docstring); thread-safe, cached."""
    if method == "POST":
        return _prediction(path) or _repository(path) or Route("other", path)
    if method in _READS:
        return _read(path) or Route("other", path)
    return Route("other", path)


def _prediction(path: str) -> Route | None:
    if path == "/invocations":
        return Route("inference", path, "mlflow")
    if path.startswith("/v2/"):
        match = _V2_INFER.fullmatch(path)
        if match:
            model = match["model"]
            return Route("inference", f"/v2/models/{model}/{match['verb']}", "kserve_v2", model, match["version"])
    elif path.startswith("/v1/"):
        match = _TF_PREDICT.fullmatch(path)
        if match:
            model = match["model"]
            return Route("inference", f"/v1/models/{model}:{match['verb']}", "tf_serving", model, match["version"])
    return None


def _repository(path: str) -> Route | None:
    return Route("repository", path, "kserve_v2") if _V2_REPOSITORY.fullmatch(path) else None


def _read(path: str) -> Route | None:
    if path in _MLFLOW_HEALTH:
        return Route("health", path, "mlflow")
    if path == "/version":
        return Route("metadata", path, "mlflow")
    if path in _METRICS:
        return Route("metrics", path)
    protocol: Protocol
    if path == "/v2" or path.startswith("/v2/"):
        protocol, patterns = "kserve_v2", _V2_READS
    elif path.startswith("/v1/models/"):
        protocol, patterns = "tf_serving", _TF_READS
    else:
        return None
    for pattern, kind in patterns:
        match = pattern.fullmatch(path)
        if match:
            named = match.groupdict()
            return Route(kind, path, protocol, named.get("model"), named.get("version"))
    return None
