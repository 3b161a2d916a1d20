"""provline sidecar: a reverse proxy in front of a model server that records every prediction.

    from provline.sidecar import SidecarSettings, run_sidecar
    run_sidecar(SidecarSettings(sidecar={"upstream": "http://127.0.0.1:8000"}))   # blocks until SIGTERM/SIGINT

Modules: :mod:`~provline.sidecar.proxy` (the ASGI proxy), :mod:`~provline.sidecar.recorder` (exchanges
into events), :mod:`~provline.sidecar.admin` (health and metrics), :mod:`~provline.sidecar.serve` and
:mod:`~provline.sidecar.workers` (serving one process or several), and the pure logic they use.
"""

from provline.sidecar.admin import AdminApp
from provline.sidecar.proxy import SidecarApp
from provline.sidecar.serve import run_sidecar, serve_sidecar
from provline.sidecar.settings import SidecarSettings

__all__ = ["AdminApp", "SidecarApp", "SidecarSettings", "run_sidecar", "serve_sidecar"]
