"""Running the sidecar: one process serving the proxy and the admin port, or a supervisor of workers.

    run_sidecar(settings)   # blocks until SIGTERM/SIGINT
"""

from __future__ import annotations

import asyncio
import logging
import signal

from provline.producers.emitter import Emitter
from provline.schemas.events import Topics
from provline.sidecar.admin import AdminApp
from provline.sidecar.errors import StartupError
from provline.sidecar.logs import configure_logging
from provline.sidecar.proxy import SidecarApp
from provline.sidecar.server import ServerWithoutSignals, http_limits, loop_factory, uvicorn_config
from provline.sidecar.settings import SidecarSettings
from provline.sidecar.workers import supervise
from provline.topics import keep_ensuring

log = logging.getLogger("provline.sidecar")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def serve_sidecar(settings: SidecarSettings, *, emitter: Emitter | None = None) -> None:
    """Serve until SIGTERM or SIGINT (in the main thread) or until one server stops; then stop in order.

    Order: ``/readyz`` turns 503; the proxy stops accepting and finishes in-flight requests; its
    lifespan closes the upstream pool and flushes events (at most ``emitter.close_timeout_s``);
    then the admin server stops. Raises StartupError when a server stopped without a signal.
    """
    proxy_settings = settings.sidecar
    app = SidecarApp(settings, emitter)
    limits = http_limits(proxy_settings)
    proxy = ServerWithoutSignals(uvicorn_config(app, host=proxy_settings.host, port=proxy_settings.port,
                                                lifespan="on", limits=limits))
    admin = ServerWithoutSignals(uvicorn_config(
        AdminApp(app.readiness), host=proxy_settings.host, port=proxy_settings.admin_port, lifespan="off",
        limits=limits,
    ))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    proxy_task = asyncio.create_task(proxy.serve(), name="provline-sidecar-proxy")
    admin_task = asyncio.create_task(admin.serve(), name="provline-sidecar-admin")
    stop_task = asyncio.create_task(stop.wait())
    try:
        port, admin_port = await proxy.bound_port(proxy_task), await admin.bound_port(admin_task)
        if port is not None and admin_port is not None:
            log.info("provline sidecar: proxy listening on http://%s:%d, /healthz /readyz /metrics listening on "
                     "http://%s:%d", proxy_settings.host, port, proxy_settings.host, admin_port)
        done, _ = await asyncio.wait({stop_task, proxy_task, admin_task}, return_when=asyncio.FIRST_COMPLETED)
        log.info("provline sidecar stopping")
        app.ready = False
        proxy.should_exit = True
        await proxy_task
        admin.should_exit = True
        await admin_task
    finally:
        stop_task.cancel()
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
    if stop_task not in done:
        raise StartupError(
            "the sidecar's proxy or admin server stopped without being asked to (lifespan start-up failed "
            "or a port is taken); see the log above and check PROVLINE_SIDECAR__UPSTREAM, PROVLINE_SIDECAR__PORT "
            "and PROVLINE_SIDECAR__ADMIN_PORT"
        )


def run_sidecar(settings: SidecarSettings) -> None:
    """Run the sidecar until SIGTERM or SIGINT; blocks. Call from the main thread.

    With ``settings.sidecar.workers > 1`` this process supervises that many worker processes
    (see :mod:`provline.sidecar.workers`); otherwise it serves the proxy and admin port itself.
    Logging is set up (``settings.sidecar.log_format``) unless the program configured it already.
    """
    configure_logging(settings.sidecar.log_format)
    if settings.transport() == "kafka":  # in the background: serving never waits on Kafka
        topics = Topics(settings.topics.prefix)
        keep_ensuring(settings.kafka, settings.topics, service="provline sidecar",
                      names=[topics.inference, topics.lineage])
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        if settings.sidecar.workers > 1:
            runner.run(supervise(settings))
        else:
            runner.run(serve_sidecar(settings))
