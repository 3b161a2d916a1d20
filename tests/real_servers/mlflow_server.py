"""A real ``mlflow server`` (full MLflow, build/venvs/mlflow-server): SQLite backend and the artifact
proxy over a local folder, both under one directory, so a server stopped and started again on the
same port finds everything it had. Shared by test_mlflow_bridge.py and test_mlflow_follow.py."""

from __future__ import annotations

import os
from pathlib import Path

from deploy.demo.stack import Service
from deploy.local.model_servers import venv_tool

START_TIMEOUT_S = 120.0


def clean_env() -> dict[str, str]:
    """This process's environment without PROVLINE_ and MLFLOW_ settings."""
    return {name: value for name, value in os.environ.items() if not name.startswith(("PROVLINE_", "MLFLOW_"))}


def server_env() -> dict[str, str]:
    """The environment of MLflow's own processes (the server, a job in its virtualenv)."""
    mlflow = venv_tool("mlflow-server", "mlflow")
    return {**clean_env(), "PATH": f"{mlflow.parent}{os.pathsep}{os.environ.get('PATH', '')}"}


# what lets the server deliver webhooks to a listener on this machine over http, without a minute's
# wait for its cache of each event's webhooks (MLflow's defaults: https only, public addresses only, 60 s)
LOCAL_WEBHOOKS = {"MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https", "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
                  "MLFLOW_WEBHOOK_CACHE_TTL": "1"}


def mlflow_server(folder: Path, port: int, *, local_webhooks: bool = False) -> Service:
    """The (not yet started) tracking server on ``port`` keeping its data in ``folder``; with
    ``local_webhooks``, delivering webhooks to http://127.0.0.1 too."""
    url = f"http://127.0.0.1:{port}"
    return Service("mlflow-server", [
        str(venv_tool("mlflow-server", "mlflow")), "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",
    ], {**server_env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no job runner: its workers take a core
        **(LOCAL_WEBHOOKS if local_webhooks else {})},
        folder / "mlflow-server.log", f"{url}/health")
