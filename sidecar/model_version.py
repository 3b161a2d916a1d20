"""Which model version served a prediction.

Resolved from, in order: the model server's ``X-Model-Version`` response header; KServe V2
information (the version named in the request path, the reply's own ``model_version``, then the
model's metadata, ``GET /v2/models/{name}``, fetched once and cached); the latest Deployment
event for this endpoint; the static ``PROVLINE_SIDECAR__MODEL_VERSION``.

:class:`DeploymentIndex` and :func:`kserve_target` are pure; :class:`ModelVersionResolver` only
awaits the metadata fetch it is given, so it can be tested without a server.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

log = logging.getLogger("provline.sidecar")

_KSERVE_V2 = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?(?:/[a-z_]+)?/?")
DEFAULT_METADATA_TTL_S = 60.0
METADATA_TIMEOUT_S = 2.0


def kserve_target(path: str) -> tuple[str, str | None] | None:
    """(model name, version or None) of a KServe V2 / Open Inference Protocol path, else None."""
    match = _KSERVE_V2.fullmatch(path)
    return (match.group(1), match.group(2)) if match else None


def version_from_metadata(metadata: Any) -> str | None:
    """The version a KServe V2 model metadata document names, when it names exactly one."""
    if not isinstance(metadata, dict):
        return None
    versions = metadata.get("versions")
    if isinstance(versions, list) and len(versions) == 1 and isinstance(versions[0], str | int):
        return str(versions[0])
    return None


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
        self._cache: dict[str, tuple[float, str | None]] = {}
        self._pending: dict[str, asyncio.Task[str | None]] = {}

    def known(self, *, header: str | None, path: str, endpoint: str) -> str | None:
        """The version as far as it is known without waiting: for the client's ``X-Model-Version``."""
        return header or self._kserve_cached(path) or self._deployed(endpoint) or self.static

    async def resolve(self, *, header: str | None, reply_version: str | None, path: str, endpoint: str) -> str | None:
        """The version to record; may wait (at most the metadata timeout) for a first metadata fetch."""
        if header:
            return header
        target = kserve_target(path)
        if target is not None:
            name, path_version = target
            found = path_version or reply_version or await self._metadata_version(name)
            if found:
                return found
        return self._deployed(endpoint) or self.static

    def model_name(self, path: str, endpoint: str) -> str | None:
        target = kserve_target(path)
        if target is not None:
            return target[0]
        deployed = self._deployments.latest(endpoint) if self._deployments else None
        return deployed[0] if deployed else None

    def _kserve_cached(self, path: str) -> str | None:
        target = kserve_target(path)
        if target is None:
            return None
        if target[1]:
            return target[1]
        cached = self._cache.get(target[0])
        return cached[1] if cached else None

    def _deployed(self, endpoint: str) -> str | None:
        deployed = self._deployments.latest(endpoint) if self._deployments else None
        return deployed[1] if deployed else None

    async def _metadata_version(self, name: str) -> str | None:
        if self._fetch is None:
            return None
        cached = self._cache.get(name)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        task = self._pending.get(name)
        if task is None:  # one fetch per model, however many requests wait for it
            task = asyncio.ensure_future(self._refresh(name))
            self._pending[name] = task
        if cached is not None:  # expired: the last version stands while it is refreshed; the recorder never waits
            return cached[1]
        return await asyncio.shield(task)

    async def _refresh(self, name: str) -> str | None:
        version: str | None = None
        try:
            version = version_from_metadata(await asyncio.wait_for(self._fetch(name), METADATA_TIMEOUT_S))  # type: ignore[misc]
        except Exception as exc:  # metadata is best effort: the other sources still apply
            log.info("provline sidecar: no KServe V2 metadata for model %s: %s", name, exc or type(exc).__name__)
        finally:
            self._pending.pop(name, None)
        self._cache[name] = (time.monotonic() + self._ttl_s, version)
        return version
