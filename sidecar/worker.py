"""One worker process started by :mod:`provline.sidecar.workers`; not for direct use.

Reads ``(settings, worker number, listening socket fd, ready pipe fd)`` pickled on stdin from
the supervisor that started it (its parent, so the pickle is trusted).
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import socket
import sys

from provline.sidecar.errors import StartupError
from provline.sidecar.logs import configure_logging
from provline.sidecar.proxy import SidecarApp
from provline.sidecar.server import ServerWithoutSignals, http_limits, loop_factory, uvicorn_config
from provline.sidecar.settings import SidecarSettings

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
READY_POLL_S = 0.01


async def serve_worker(settings: SidecarSettings, *, worker: int, sock: socket.socket, ready_fd: int) -> None:
    """The proxy on the shared socket.

    Writes one byte to ``ready_fd`` once it accepts requests; stops on SIGTERM or SIGINT,
    finishing in-flight requests and flushing its events like a single-process sidecar.
    """
    app = SidecarApp(settings, worker=worker)
    proxy = ServerWithoutSignals(uvicorn_config(app, host=settings.sidecar.host, port=settings.sidecar.port,
                                                lifespan="on", limits=http_limits(settings.sidecar)))
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, lambda: setattr(proxy, "should_exit", True))
    task = asyncio.create_task(proxy.serve(sockets=[sock]), name=f"provline-sidecar-worker-{worker}")
    while not proxy.started and not task.done():
        await asyncio.sleep(READY_POLL_S)
    if proxy.started:
        os.write(ready_fd, b"1")
    os.close(ready_fd)
    await task
    if not proxy.started:
        raise StartupError(f"sidecar worker {worker} failed to start; see the log above")


def main() -> None:
    settings, worker, sock_fd, ready_fd = pickle.load(sys.stdin.buffer)
    configure_logging(settings.sidecar.log_format, worker=worker)
    sock = socket.socket(fileno=sock_fd)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve_worker(settings, worker=worker, sock=sock, ready_fd=ready_fd))


if __name__ == "__main__":
    main()
