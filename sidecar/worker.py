"""Entry point of one worker process started by :mod:`provline.sidecar.workers`; not for direct use.

Reads ``(settings, worker number, listening socket fd, ready pipe fd)`` pickled on stdin from
the supervisor that started it (its parent, so the pickle is trusted).
"""

from __future__ import annotations

import asyncio
import pickle
import socket
import sys

from provline.sidecar.app import loop_factory, serve_worker
from provline.sidecar.logs import configure_logging


def main() -> None:
    settings, worker, sock_fd, ready_fd = pickle.load(sys.stdin.buffer)
    configure_logging(settings.log_format, worker=worker)
    sock = socket.socket(fileno=sock_fd)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve_worker(settings, worker=worker, sock=sock, ready_fd=ready_fd))


if __name__ == "__main__":
    main()
