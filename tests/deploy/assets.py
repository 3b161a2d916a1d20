"""What the deploy tests share: where the assets are, the compose file as docker-compose resolves it,
and the metric names provline's services really export."""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
GRAFANA_DIR = REPO / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))
# every provline metric starts so; a PromQL expression naming none is not about provline
METRIC_NAME = re.compile(r"\bprovline_[a-z0-9_]+\b")
_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum", "_created"),
             "summary": ("", "_count", "_sum", "_created"), "info": ("_info",), "unknown": ("",)}


def tool(name: str) -> str:
    """The path of a command `make deploy-tools` installs; fails (never skips) without it."""
    path = shutil.which(name)
    assert path is not None, f"{name} is not installed; run `make deploy-tools` (make test does it first)"
    return path


def compose_config(compose_file: Path = COMPOSE_FILE) -> subprocess.CompletedProcess[str]:
    """docker-compose's own validation (the Compose specification's JSON schema) and interpolation with
    the example .env: the resolved file on stdout."""
    return subprocess.run(
        [tool("docker-compose"), "--project-directory", str(COMPOSE_DIR), "-f", str(compose_file),
         "--env-file", str(ENV_EXAMPLE), "config"],
        capture_output=True, text=True, timeout=60,
    )


@cache
def resolved_compose() -> dict[str, Any]:
    result = compose_config()
    assert result.returncode == 0, f"docker-compose refuses {COMPOSE_FILE}:\n{result.stderr}"
    loaded: dict[str, Any] = yaml.safe_load(result.stdout)
    return loaded


def exported_metric_names() -> set[str]:
    """Every sample name the services' prometheus_client registries produce: the sink's and its monitor's,
    the sidecar's, the ingest service's and the producers' (the default registry) and a processors
    worker's (a registry of its own)."""
    from prometheus_client import REGISTRY

    import provline.producers.emitter
    import provline.producers.gaps
    import provline.producers.processor
    import provline.sidecar.ingest
    import provline.sidecar.metrics
    import provline.sink.metrics
    import provline.sink.monitor  # noqa: F401  (each module registers its metrics when imported)
    from provline.stream_processors.metrics import ProcessorMetrics

    names: set[str] = set()
    for registry in (REGISTRY, ProcessorMetrics().registry):
        for family in registry.collect():
            names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names


def unknown_metrics(expression: str, exported: set[str]) -> list[str]:
    """The provline metric names in a PromQL expression that no service exports."""
    return sorted(set(METRIC_NAME.findall(expression)) - exported)


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path of a service's bind mounts (docker-compose resolved them to absolute paths)."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict) and volume["type"] == "bind":
            found[volume["target"]] = volume["source"]
        elif isinstance(volume, str) and volume.startswith("/"):
            source, target = volume.split(":")[:2]
            found[target] = source
    return found


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())
