"""The MLflow bridge's I/O shell: an MLflow tracking server's REST API 2.0, read with httpx.

    with MlflowReader("http://mlflow:5000") as reader:
        for experiment in reader.experiments(["churn"]):
            for run in reader.runs([experiment["experiment_id"]], since_millis=0):
                ...
        for model in reader.registered_models():
            for version in reader.model_versions(model["name"]):
                uri = reader.download_uri(model["name"], version["version"])
                files = reader.download_artifacts(uri, Path("/tmp/model"))

Every call blocks on the server, each request for at most ``timeout_s`` seconds; paginated lists
are read to their end. The one write is :meth:`MlflowReader.set_alias` (the promotion guard's
rollback). Nothing here maps MLflow entities to provline events
(:mod:`.mapping` does). Artifacts are read through the tracking server's artifact proxy
(``mlflow server`` serves ``mlflow-artifacts:`` URIs; the default since MLflow 2), or from the
local disk for ``file:`` URIs; other stores (S3, GCS...) are not read: :class:`ArtifactsUnavailable`.
An instance is not thread-safe.
"""

from __future__ import annotations

import posixpath
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlparse

import httpx

from provline.producers.errors import ProducerError

DEFAULT_TIMEOUT_S = 30.0
PAGE_SIZE = 500  # runs/search and model-versions/search take up to 1000 and 10000
MAX_ARTIFACT_FILES = 10_000  # a model directory with more is refused rather than downloaded
API = "/api/2.0/mlflow"
ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts"


class MlflowError(ProducerError):
    """The tracking server could not be read; the message names the URL, the answer and what to do."""


class ArtifactsUnavailable(MlflowError):
    """A model's artifacts are in a store this bridge does not read (only the server's proxy and local files)."""


def _quote_filter(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


class MlflowReader:
    """Reads one tracking server; ``token`` is sent as a bearer token (Databricks, an auth proxy)."""

    def __init__(self, tracking_uri: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, token: str | None = None) -> None:
        self.tracking_uri = tracking_uri.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.tracking_uri, timeout=timeout_s, headers=headers)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> MlflowReader:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _call(self, method: str, path: str, *, params: dict[str, Any] | None = None,
              body: dict[str, Any] | None = None, missing_ok: bool = False) -> dict[str, Any] | None:
        url = f"{self.tracking_uri}{path}"
        try:
            response = self._http.request(method, path, params=params, json=body)
        except httpx.HTTPError as exc:
            raise MlflowError(f"MLflow tracking server {self.tracking_uri} did not answer {method} {path}: {exc}; "
                              "check --tracking-uri and that `mlflow server` is running") from exc
        if missing_ok and response.status_code == 404:
            return None
        if response.status_code != 200:
            raise MlflowError(f"{method} {url} answered {response.status_code}: {response.text[:300]}")
        try:
            answer = response.json()
        except ValueError as exc:
            raise MlflowError(f"{method} {url} answered with something that is not JSON: {response.text[:200]!r}; "
                              "is --tracking-uri the tracking server (not the UI behind a proxy)?") from exc
        return answer if isinstance(answer, dict) else {}

    def _get(self, endpoint: str, **params: Any) -> dict[str, Any]:
        return self._call("GET", endpoint, params=params) or {}

    def _pages(self, method: str, path: str, field: str, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every entry of a paginated list (``next_page_token``), page after page."""
        token: str | None = None
        while True:
            page = {**request, **({"page_token": token} if token else {})}
            answer = (self._call(method, path, body=page) if method == "POST" else
                      self._call(method, path, params=page)) or {}
            yield from answer.get(field) or []
            token = answer.get("next_page_token")
            if not token:
                return

    def experiments(self, names: list[str] | None = None) -> list[dict[str, Any]]:
        """The named experiments (MlflowError naming one that does not exist), or every active one."""
        if not names:
            return list(self._pages("POST", f"{API}/experiments/search", "experiments", {"max_results": PAGE_SIZE}))
        found = []
        for name in names:
            answer = self._call("GET", f"{API}/experiments/get-by-name", params={"experiment_name": name},
                                missing_ok=True)
            if not answer or "experiment" not in answer:
                raise MlflowError(f"no experiment named {name!r} on {self.tracking_uri}; "
                                  "`provline mlflow import` without --experiment imports every experiment")
            found.append(answer["experiment"])
        return found

    def runs(self, experiment_ids: list[str], *, since_millis: int | None = None) -> Iterator[dict[str, Any]]:
        """The runs of these experiments (params, metrics, tags, dataset inputs), oldest first;
        with ``since_millis`` only those started at or after it."""
        if not experiment_ids:
            return iter(())
        request: dict[str, Any] = {"experiment_ids": experiment_ids, "max_results": PAGE_SIZE,
                                   "order_by": ["attributes.start_time ASC"]}
        if since_millis is not None:
            request["filter"] = f"attributes.start_time >= {int(since_millis)}"
        return self._pages("POST", f"{API}/runs/search", "runs", request)

    def run(self, run_id: str) -> dict[str, Any] | None:
        """One run, or None when it does not exist (deleted, or on another server)."""
        answer = self._call("GET", f"{API}/runs/get", params={"run_id": run_id}, missing_ok=True)
        return answer.get("run") if answer else None

    def registered_models(self) -> Iterator[dict[str, Any]]:
        """Every registered model, with its ``aliases`` (alias -> version)."""
        return self._pages("GET", f"{API}/registered-models/search", "registered_models", {"max_results": PAGE_SIZE})

    def model_versions(self, name: str) -> Iterator[dict[str, Any]]:
        """Every version of one registered model (source, run id, tags, aliases, stage)."""
        return self._pages("GET", f"{API}/model-versions/search", "model_versions",
                           {"filter": f"name='{_quote_filter(name)}'", "max_results": PAGE_SIZE})

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version ``alias`` of registered model ``name`` points at now; None when it points at none."""
        answer = self._call("GET", f"{API}/registered-models/alias", params={"name": name, "alias": alias},
                            missing_ok=True)
        version = ((answer or {}).get("model_version") or {}).get("version")
        return str(version) if version is not None else None

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point ``alias`` of registered model ``name`` at ``version`` (the one write this bridge makes:
        ``provline mlflow follow --enforce`` moving a rejected alias back)."""
        self._call("POST", f"{API}/registered-models/alias", body={"name": name, "alias": alias, "version": version})

    def create_webhook(self, name: str, url: str, events: list[tuple[str, str]], secret: str) -> str | None:
        """Register an active webhook for ``events`` (MLflow's ``(entity, action)`` names) POSTing to ``url``
        signed with ``secret``; its id, or None when the server has no webhooks API (404: MLflow before
        3.3). MlflowError when the server refuses it (its answer says why, e.g. the URL's scheme)."""
        answer = self._call("POST", f"{API}/webhooks", body={
            "name": name, "url": url, "secret": secret, "status": "ACTIVE",
            "events": [{"entity": entity.upper(), "action": action.upper()} for entity, action in events]},
            missing_ok=True)
        if answer is None:
            return None
        webhook_id = (answer.get("webhook") or {}).get("webhook_id")
        if not webhook_id:
            raise MlflowError(f"POST {self.tracking_uri}{API}/webhooks answered without a webhook id: {answer}")
        return str(webhook_id)

    def delete_webhook(self, webhook_id: str) -> None:
        """Delete the webhook ``webhook_id``; one already gone is not an error."""
        self._call("DELETE", f"{API}/webhooks/{webhook_id}", missing_ok=True)

    def logged_model(self, model_id: str) -> dict[str, Any] | None:
        """An MLflow 3 LoggedModel (info, params, metrics with their datasets); None when the server has none
        (MLflow 2, or deleted)."""
        answer = self._call("GET", f"{API}/logged-models/{model_id}", missing_ok=True)
        return answer.get("model") if answer else None

    def download_uri(self, name: str, version: str) -> str:
        """Where a model version's artifacts are (a LoggedModel's storage location in MLflow 3)."""
        answer = self._get(f"{API}/model-versions/get-download-uri", name=name, version=version)
        uri = answer.get("artifact_uri")
        if not uri:
            raise MlflowError(f"{self.tracking_uri} gave no download URI for model {name!r} version {version}")
        return str(uri)

    def _proxy_path(self, artifact_uri: str) -> str | None:
        """The path under the server's artifact root of an ``mlflow-artifacts:`` URI; None for other schemes."""
        parsed = urlparse(artifact_uri)
        if parsed.scheme != "mlflow-artifacts":
            return None
        return unquote(parsed.path).strip("/")

    def _list(self, path: str) -> list[dict[str, Any]]:
        return list(self._get(ARTIFACTS_API, path=path).get("files") or [])

    def download_artifacts(self, artifact_uri: str, dest: Path) -> list[Path]:
        """Copy every file under ``artifact_uri`` into ``dest`` (same relative paths); the files, sorted.

        ArtifactsUnavailable for a store other than the server's proxy or the local disk."""
        dest.mkdir(parents=True, exist_ok=True)
        parsed = urlparse(artifact_uri)
        if parsed.scheme in ("file", ""):
            source = Path(unquote(parsed.path))
            if not source.is_dir():
                raise ArtifactsUnavailable(f"artifacts at {artifact_uri} are not a directory on this machine")
            shutil.copytree(source, dest, dirs_exist_ok=True)
            return sorted(p for p in dest.rglob("*") if p.is_file())
        root = self._proxy_path(artifact_uri)
        if root is None:
            raise ArtifactsUnavailable(
                f"artifacts at {artifact_uri} are not served by the tracking server (scheme {parsed.scheme!r}); "
                "run `mlflow server` with --artifacts-destination (its artifact proxy) to have them hashed")
        files: list[Path] = []
        pending = [""]
        while pending:
            relative = pending.pop()
            for entry in self._list(posixpath.join(root, relative) if relative else root):
                name = posixpath.basename(str(entry.get("path", "")))
                if not name or name in (".", ".."):
                    continue
                child = posixpath.join(relative, name) if relative else name
                if entry.get("is_dir"):
                    pending.append(child)
                    continue
                if len(files) >= MAX_ARTIFACT_FILES:
                    raise ArtifactsUnavailable(f"{artifact_uri} holds more than {MAX_ARTIFACT_FILES} files; "
                                               "not downloaded")
                target = dest / child
                target.parent.mkdir(parents=True, exist_ok=True)
                self._download(f"{ARTIFACTS_API}/{posixpath.join(root, child)}", target)
                files.append(target)
        return sorted(files)

    def _download(self, path: str, target: Path) -> None:
        try:
            with self._http.stream("GET", path) as response:
                if response.status_code != 200:
                    raise MlflowError(f"GET {self.tracking_uri}{path} answered {response.status_code}")
                with open(target, "wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
        except httpx.HTTPError as exc:
            raise MlflowError(f"downloading {self.tracking_uri}{path} failed: {exc}") from exc
