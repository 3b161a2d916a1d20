"""Which model version served a prediction, and what the model's metadata names.

Resolved from, in order: the model server's ``X-Model-Version`` response header; the version
named in the request path (KServe V2 ``/versions/{v}``, TF Serving ``/versions/{v}``, see
:mod:`provline.sidecar.routes`); for KServe V2, the reply's own ``model_version``, then the
model's metadata (``GET /v2/models/{name}``, fetched once and cached); the latest Deployment
event for this endpoint; the static ``PROVLINE_SIDECAR__MODEL_VERSION``.

The same metadata names the model's inputs and outputs (:class:`ModelMetadata`), which give the
positional columns of a single 2-D tensor their names (:func:`provline.sidecar.payload.metadata_columns`).

:class:`DeploymentIndex` and :func:`model_metadata` are pure; :class:`ModelVersionResolver` only
awaits the metadata fetch it is given, so it can be tested without a server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from provline.sidecar.routes import Route

log = logging.getLogger("provline.sidecar")

DEFAULT_METADATA_TTL_S = 60.0
METADATA_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class ModelMetadata:
    """What a KServe V2 model metadata document says: its one version (None when it names none or
    several), and the names of its inputs and outputs, in order."""

    version: str | None = None
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()


def model_metadata(document: Any) -> ModelMetadata:
    """:class:`ModelMetadata` of a KServe V2 model metadata document; an unexpected document gives an empty one."""
    if not isinstance(document, dict):
        return ModelMetadata()
    versions = document.get("versions")
    version = None
    if isinstance(versions, list) and len(versions) == 1 and isinstance(versions[0], str | int):
        version = str(versions[0])
    return ModelMetadata(version, _tensor_names(document.get("inputs")), _tensor_names(document.get("outputs")))


def _tensor_names(tensors: Any) -> tuple[str, ...]:
    if not isinstance(tensors, list) or not all(isinstance(t, dict) and isinstance(t.get("name"), str)
                                                for t in tensors):
        return ()
    return tuple(t["name"] for t in tensors)


@dataclass
class DeploymentIndex:
    """The model version currently deployed on each endpoint, from Deployment events; not thread-safe."""

    current: dict[str, tuple[datetime, str, str]] = field(default_factory=dict)  # endpoint -> time, name, version

    def observe(self, event: dict[str, Any]) -> None:
        endpoint, when = event["endpoint"], event["event_time"]
        known = self.current.get(endpoint)
        if known is not None and known[0] > when:
            return  # an older event read late changes nothing
        if event["action"] == "RETIRE":
            if known is not None and known[2] == event["model_version"]:
                del self.current[endpoint]
            return
        self.current[endpoint] = (when, event["model_name"], event["model_version"])

    def latest(self, endpoint: str) -> tuple[str, str] | None:
        known = self.current.get(endpoint)
        return None if known is None else (known[1], known[2])


Fetch = Callable[[str], Awaitable[Any]]
_NOTHING_KNOWN = ModelMetadata()


class ModelVersionResolver:
    """Applies the resolution order; holds the KServe metadata cache. Use from one event loop."""

    def __init__(
        self, *, static: str | None, fetch_metadata: Fetch | None, deployments: DeploymentIndex | None,
        ttl_s: float = DEFAULT_METADATA_TTL_S,
    ) -> None:
        self.static = static
        self._fetch = fetch_metadata
        self._deployments = deployments
        self._ttl_s = ttl_s
        self._cache: dict[str, tuple[float, ModelMetadata]] = {}
        self._pending: dict[str, asyncio.Task[ModelMetadata]] = {}

    def known(self, *, header: str | None, route: Route, endpoint: str) -> str | None:
        """The version as far as it is known without waiting: for the client's ``X-Model-Version``."""
        return (header or route.model_version or self._cached(route).version or self._deployed(endpoint)
                or self.static)

    async def resolve(self, *, header: str | None, reply_version: str | None, route: Route,
                      endpoint: str) -> str | None:
        """The version to record; may wait (at most the metadata timeout) for a first metadata fetch."""
        if header or route.model_version:
            return header or route.model_version
        if route.protocol == "kserve_v2" and route.model_name:
            found = reply_version or (await self.metadata(route)).version
            if found:
                return found
        return self._deployed(endpoint) or self.static

    async def metadata(self, route: Route) -> ModelMetadata:
        """The KServe V2 metadata of the route's model (empty for other routes, or when none can be had);
        waits (at most the metadata timeout) only for a model's first fetch: an expired entry is
        answered at once and refreshed in the background."""
        name = route.model_name
        if self._fetch is None or route.protocol != "kserve_v2" or not name:
            return _NOTHING_KNOWN
        cached = self._cache.get(name)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        task = self._pending.get(name)
        if task is None:  # one fetch per model, however many requests wait for it
            task = asyncio.ensure_future(self._refresh(name))
            self._pending[name] = task
        if cached is not None:  # expired: the last metadata stands while it is refreshed; the recorder never waits
            return cached[1]
        return await asyncio.shield(task)

    def model_name(self, route: Route, endpoint: str) -> str | None:
        if route.model_name:
            return route.model_name
        deployed = self._deployments.latest(endpoint) if self._deployments else None
        return deployed[0] if deployed else None

    def _cached(self, route: Route) -> ModelMetadata:
        cached = self._cache.get(route.model_name) if route.protocol == "kserve_v2" and route.model_name else None
        return cached[1] if cached else _NOTHING_KNOWN

    def _deployed(self, endpoint: str) -> str | None:
        deployed = self._deployments.latest(endpoint) if self._deployments else None
        return deployed[1] if deployed else None

    async def _refresh(self, name: str) -> ModelMetadata:
        metadata = _NOTHING_KNOWN
        try:
            metadata = model_metadata(await asyncio.wait_for(self._fetch(name), METADATA_TIMEOUT_S))  # type: ignore[misc]
        except Exception as exc:  # metadata is best effort: the other sources still apply
            log.info("provline sidecar: no KServe V2 metadata for model %s: %s", name, exc or type(exc).__name__)
        finally:
            self._pending.pop(name, None)
        self._cache[name] = (time.monotonic() + self._ttl_s, metadata)
        return metadata
