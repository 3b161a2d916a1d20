"""provline sidecar: an ASGI reverse proxy in front of a model server that records every prediction.

    from provline.sidecar import SidecarSettings, run_sidecar
    run_sidecar(SidecarSettings(upstream="http://127.0.0.1:8000"))   # blocks until SIGTERM/SIGINT
"""

from provline.sidecar.app import AdminApp, SidecarApp, create_admin_app, create_app, run_sidecar, serve_sidecar
from provline.sidecar.settings import SidecarSettings

__all__ = [
    "AdminApp", "SidecarApp", "SidecarSettings", "create_admin_app", "create_app", "run_sidecar",
    "serve_sidecar",
]
