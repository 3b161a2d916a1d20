"""The API ML jobs call to record their lineage.

    lineage = Lineage(producer_name="train-churn")        # settings from PROVLINE_* variables
    with lineage.run("train", stage="training", params={"C": 1.0}, seed=7) as run:
        digest = run.use_dataset("data/train.csv", name="churn-train")
        ...
        run.register_model("model.pkl", name="churn", version="3")
    lineage.deploy("churn", "3", endpoint="/predict", environment="production")
    lineage.close()

Every call emits its event at once, without waiting on the broker; ``close`` flushes.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from producers.capture import code_version, environment
from producers.digest import file_sha256, manifest, merkle_root
from producers.emitter import DEFAULT_CLOSE_TIMEOUT_S, Emitter, build_emitter
from producers.settings import EmitterSettings
from schemas.events import model_key


def _json_values(params: dict[str, Any] | None) -> dict[str, str]:
    return {name: json.dumps(value, sort_keys=True, default=str) for name, value in (params or {}).items()}


class Run:
    """One pipeline run; created by :meth:`Lineage.run`. Not thread-safe."""

    def __init__(
        self, lineage: Lineage, name: str, *, stage: str | None, params: dict[str, Any] | None,
        seed: int | None, parent_run_id: str | None,
    ) -> None:
        self.lineage = lineage
        self.run_id = str(uuid.uuid4())
        self.name = name
        self.stage = stage
        self.parent_run_id = parent_run_id
        self.hyperparameters = _json_values(params)
        self.seeds = {"seed": seed} if seed is not None else {}
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.metrics: dict[str, float] = {}
        self.code = code_version()
        self.environment = environment()
        self._started = time.monotonic()

    def _emit_state(self, state: str, *, error: BaseException | None = None) -> dict[str, Any]:
        finished = state != "STARTED"
        return self.lineage.emitter.emit("RunEvent", {
            "run_id": self.run_id, "name": self.name, "state": state, "stage": self.stage,
            "parent_run_id": self.parent_run_id, "inputs": self.inputs, "outputs": self.outputs,
            "code": self.code, "environment": self.environment,
            "hyperparameters": self.hyperparameters, "seeds": self.seeds, "metrics": self.metrics,
            "error": {"type": type(error).__name__, "message": str(error)} if error else None,
            "duration_ms": int((time.monotonic() - self._started) * 1000) if finished else None,
        })

    def _dataset(self, path: str | Path, *, name: str, **details: Any) -> str:
        entries = manifest(Path(path))
        digest = merkle_root(entries)
        self.lineage.emitter.emit("DatasetVersion", {
            "name": name, "digest": digest, "files": entries, "sources": [str(path)], **details,
        })
        return digest

    def use_dataset(self, path: str | Path, *, name: str, **details: Any) -> str:
        """Record a dataset this run reads (a file or directory); returns its digest."""
        digest = self._dataset(path, name=name, **details)
        self.inputs.append(digest)
        return digest

    def produce_dataset(self, path: str | Path, *, name: str, **details: Any) -> str:
        """Record a dataset this run writes; returns its digest."""
        digest = self._dataset(path, name=name, run_id=self.run_id, **details)
        self.outputs.append(digest)
        return digest

    def log_metric(self, name: str, value: float) -> None:
        self.metrics[name] = float(value)

    def register_model(
        self, artifact_path: str | Path, *, name: str, version: str, framework: str | None = None,
        artifact_uri: str | None = None,
    ) -> dict[str, Any]:
        """Record a model artifact trained by this run, with the datasets the run used."""
        path = Path(artifact_path)
        event = self.lineage.emitter.emit("ModelVersion", {
            "model_name": name, "version": version,
            "artifact_uri": artifact_uri or path.resolve().as_uri(),
            "artifact_sha256": file_sha256(path), "framework": framework, "run_id": self.run_id,
            "datasets": [d for d in self.inputs if d.startswith("sha256:")],
        })
        self.outputs.append(model_key(name, version))
        return event


class Lineage:
    """Entry point of the producers library; thread-safe through its emitter."""

    def __init__(
        self, emitter: Emitter | None = None, *, settings: EmitterSettings | None = None,
        producer_name: str = "provline-job",
    ) -> None:
        self.emitter = emitter or build_emitter(settings, producer_name=producer_name)
        self._active: list[Run] = []

    @contextmanager
    def run(
        self, name: str, *, stage: str | None = None, params: dict[str, Any] | None = None,
        seed: int | None = None,
    ) -> Iterator[Run]:
        """Emit RunEvent STARTED now and COMPLETED or FAILED at exit; exceptions are re-raised."""
        parent = self._active[-1].run_id if self._active else None
        run = Run(self, name, stage=stage, params=params, seed=seed, parent_run_id=parent)
        run._emit_state("STARTED")
        self._active.append(run)
        try:
            yield run
        except BaseException as error:
            run._emit_state("FAILED", error=error)
            raise
        else:
            run._emit_state("COMPLETED")
        finally:
            self._active.pop()

    def deploy(
        self, model_name: str, version: str, *, endpoint: str, environment: str = "production",
        action: str = "DEPLOY", reason: str | None = None, previous_version: str | None = None,
    ) -> dict[str, Any]:
        """Record that ``model_name@version`` now serves ``endpoint`` (or was rolled back, retired...)."""
        return self.emitter.emit("Deployment", {
            "model_name": model_name, "model_version": version, "environment": environment,
            "endpoint": endpoint, "action": action.upper(), "reason": reason, "previous_version": previous_version,
        })

    def close(self, timeout: float = DEFAULT_CLOSE_TIMEOUT_S) -> bool:
        return self.emitter.close(timeout)

    def __enter__(self) -> Lineage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
