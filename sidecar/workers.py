"""Several sidecar worker processes behind one port, and one admin port reporting on all of them.

    run_sidecar(SidecarSettings(upstream=..., workers=4))   # uses supervise() when workers > 1

The supervisor binds the proxy socket once and starts ``workers`` processes (``python -m
sidecar.worker``) that all accept on it; the kernel spreads connections over them. Each worker
runs the proxy with its own emitter, hash chain and spool (``<spool_dir>/worker-<n>``). The
supervisor serves the admin port itself: ``/readyz`` is 200 only while every worker is ready,
``/metrics`` sums the workers' metrics (prometheus_client multiprocess mode). A worker that
dies is restarted with the same number, so it replays its predecessor's spool. SIGTERM or
SIGINT stops the workers (each flushes its events) and then the admin server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

from provline.sidecar.errors import StartupError
from provline.sidecar.settings import SidecarSettings

log = logging.getLogger("provline.sidecar")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
MONITOR_INTERVAL_S = 0.2
RESTART_DELAY_S = 1.0
STOP_GRACE_S = 10.0  # beyond flush_timeout_s, before a worker that does not stop is killed
MAX_EARLY_DEATHS = 3  # consecutive deaths before ever becoming ready: the configuration is broken
LISTEN_BACKLOG = 2048


@dataclass
class Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    ready: bool = False
    early_deaths: int = 0
    ready_task: asyncio.Task[None] | None = field(default=None, repr=False)


def bind_proxy_socket(host: str, port: int) -> socket.socket:
    """The listening socket every worker accepts on; inheritable so the workers get it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc}; choose another PROVLINE_SIDECAR_PORT") from exc
    sock.listen(LISTEN_BACKLOG)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    """Starts, watches, restarts and stops the worker processes; the admin ASGI app reports on them."""

    def __init__(self, settings: SidecarSettings, sock: socket.socket, metrics_dir: str) -> None:
        self.settings = settings
        self.sock = sock
        self.metrics_dir = metrics_dir
        self.workers = [Worker(index) for index in range(settings.workers)]
        self.stopping = False

    @property
    def ready(self) -> bool:
        return not self.stopping and all(w.ready for w in self.workers)

    async def start(self, worker: Worker) -> None:
        read_fd, write_fd = os.pipe()
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir}
        try:
            worker.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "provline.sidecar.worker",
                stdin=asyncio.subprocess.PIPE, env=env, pass_fds=(self.sock.fileno(), write_fd),
            )
        finally:
            os.close(write_fd)
        assert worker.process.stdin is not None
        worker.process.stdin.write(pickle.dumps((self.settings, worker.index, self.sock.fileno(), write_fd)))
        await worker.process.stdin.drain()
        worker.process.stdin.close()
        worker.ready = False
        worker.ready_task = asyncio.create_task(self._await_ready(worker, read_fd))

    async def _await_ready(self, worker: Worker, read_fd: int) -> None:
        """The worker writes one byte to its pipe once it accepts requests."""
        with os.fdopen(read_fd, "rb", buffering=0) as pipe:
            signalled = await asyncio.to_thread(pipe.read, 1)
        if signalled:
            worker.ready, worker.early_deaths = True, 0
            log.info("provline sidecar worker %d ready (pid %d)", worker.index, worker.process.pid)  # type: ignore[union-attr]

    async def watch(self, stop: asyncio.Event) -> None:
        """Restart workers that die until ``stop`` is set; raises StartupError when one cannot start at all."""
        while not stop.is_set():
            for worker in self.workers:
                process = worker.process
                if process is None or process.returncode is None:
                    continue
                if not worker.ready:
                    worker.early_deaths += 1
                worker.ready = False
                multiprocess.mark_process_dead(process.pid, self.metrics_dir)
                if worker.early_deaths >= MAX_EARLY_DEATHS:
                    raise StartupError(
                        f"sidecar worker {worker.index} exited with code {process.returncode} "
                        f"{worker.early_deaths} times before becoming ready; see its log above"
                    )
                log.error("provline sidecar worker %d (pid %d) exited with code %d; restarting it",
                          worker.index, process.pid, process.returncode)
                worker.process = None
                await asyncio.sleep(RESTART_DELAY_S)
                await self.start(worker)
            try:
                await asyncio.wait_for(stop.wait(), MONITOR_INTERVAL_S)
            except TimeoutError:
                pass

    async def stop_all(self) -> None:
        """SIGTERM every worker, wait for them to flush and exit, kill those that do not."""
        self.stopping = True
        running = [w.process for w in self.workers if w.process is not None and w.process.returncode is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.flush_timeout_s + STOP_GRACE_S
        for process in running:
            try:
                await asyncio.wait_for(process.wait(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                log.error("provline sidecar worker pid %d did not stop in time; killing it", process.pid)
                process.kill()
                await process.wait()
        for worker in self.workers:
            if worker.ready_task is not None:
                worker.ready_task.cancel()


class SupervisorAdmin:
    """``/healthz``, ``/readyz`` (every worker ready) and ``/metrics`` (summed over workers)."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    async def __call__(self, scope: dict, receive: object, send: object) -> None:
        from provline.sidecar.app import reply

        if scope["type"] != "http":
            return
        path, supervisor = scope["path"], self.supervisor
        if path == "/healthz":
            await reply(send, 200, b'{"status":"ok"}')  # type: ignore[arg-type]
        elif path == "/readyz":
            ready = sum(w.ready for w in supervisor.workers)
            body = (f'{{"status":"{"ready" if supervisor.ready else "not ready"}",'
                    f'"workers":{len(supervisor.workers)},"ready_workers":{ready}}}').encode()
            await reply(send, 200 if supervisor.ready else 503, body)  # type: ignore[arg-type]
        elif path == "/metrics":
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=supervisor.metrics_dir)
            await reply(send, 200, generate_latest(registry), content_type=CONTENT_TYPE_LATEST)  # type: ignore[arg-type]
        else:
            await reply(send, 404, b'{"error":"not found; try /healthz, /readyz or /metrics"}')  # type: ignore[arg-type]


async def supervise(settings: SidecarSettings) -> None:
    """Run ``settings.workers`` worker processes until SIGTERM/SIGINT; see the module docstring."""
    import uvicorn

    from provline.sidecar.app import ServerWithoutSignals, create_app, uvicorn_config

    create_app(settings)  # validates the policy and key here, once, instead of failing in every worker
    sock = bind_proxy_socket(settings.host, settings.port)
    metrics_dir = tempfile.mkdtemp(prefix="provline-sidecar-metrics-")
    supervisor = Supervisor(settings, sock, metrics_dir)
    admin: uvicorn.Server = ServerWithoutSignals(uvicorn_config(
        SupervisorAdmin(supervisor), host=settings.host, port=settings.admin_port, lifespan="off"
    ))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    admin_task = asyncio.create_task(admin.serve(), name="provline-sidecar-admin")
    failure: BaseException | None = None
    try:
        for worker in supervisor.workers:
            await supervisor.start(worker)
        log.info("provline sidecar: %d workers on %s:%d forwarding to %s",
                 settings.workers, settings.host, settings.port, settings.upstream)
        watch_task = asyncio.create_task(supervisor.watch(stop))
        done, _ = await asyncio.wait({watch_task, admin_task}, return_when=asyncio.FIRST_COMPLETED)
        if watch_task in done and watch_task.exception() is not None:
            failure = watch_task.exception()
        elif admin_task in done:
            failure = StartupError(
                f"the admin server stopped on its own (is port {settings.admin_port} taken?); "
                "check PROVLINE_SIDECAR_ADMIN_PORT"
            )
        stop.set()
        if not watch_task.done():
            await watch_task
    finally:
        log.info("provline sidecar stopping")
        await supervisor.stop_all()
        admin.should_exit = True
        await admin_task
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    if failure is not None:
        raise failure
