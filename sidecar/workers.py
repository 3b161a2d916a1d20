"""Several sidecar worker processes behind one port, and one admin port reporting on all of them.

    run_sidecar(settings)   # uses supervise() when settings.sidecar.workers > 1

The supervisor binds the proxy socket once and starts ``workers`` processes (``python -m
provline.sidecar.worker``) that all accept on it; the kernel spreads connections over them. Each worker
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

from prometheus_client import CollectorRegistry, generate_latest, multiprocess

from provline.sidecar.admin import AdminApp
from provline.sidecar.errors import StartupError
from provline.sidecar.proxy import SidecarApp
from provline.sidecar.server import ServerWithoutSignals, http_limits, uvicorn_config
from provline.sidecar.settings import SidecarSettings

log = logging.getLogger("provline.sidecar")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
MONITOR_INTERVAL_S = 0.2
RESTART_DELAY_S = 1.0
STOP_GRACE_S = 10.0  # beyond the emitter's close_timeout_s, before a worker that does not stop is killed
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
        raise StartupError(f"cannot listen on {host}:{port}: {exc}; choose another PROVLINE_SIDECAR__PORT") from exc
    sock.listen(LISTEN_BACKLOG)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    """Starts, watches, restarts and stops the worker processes; the admin ASGI app reports on them."""

    def __init__(self, settings: SidecarSettings, sock: socket.socket, metrics_dir: str) -> None:
        self.settings = settings
        self.sock = sock
        self.metrics_dir = metrics_dir
        self.workers = [Worker(index) for index in range(settings.sidecar.workers)]
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
        deadline = time.monotonic() + self.settings.emitter.close_timeout_s + STOP_GRACE_S
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


    def readiness(self) -> tuple[bool, bytes]:
        """For the admin port's ``/readyz``: ready while every worker is."""
        ready = sum(w.ready for w in self.workers)
        body = (f'{{"status":"{"ready" if self.ready else "not ready"}",'
                f'"workers":{len(self.workers)},"ready_workers":{ready}}}').encode()
        return self.ready, body

    def metrics(self) -> bytes:
        """Every worker's metrics, summed (prometheus_client's multiprocess mode)."""
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.metrics_dir)
        return generate_latest(registry)


async def supervise(settings: SidecarSettings) -> None:
    """Run ``settings.sidecar.workers`` worker processes until SIGTERM/SIGINT; see the module docstring."""
    SidecarApp(settings)  # validates the policy and key here, once, instead of failing in every worker
    proxy = settings.sidecar
    sock = bind_proxy_socket(proxy.host, proxy.port)
    metrics_dir = tempfile.mkdtemp(prefix="provline-sidecar-metrics-")
    supervisor = Supervisor(settings, sock, metrics_dir)
    admin = ServerWithoutSignals(uvicorn_config(
        AdminApp(supervisor.readiness, metrics=supervisor.metrics), host=proxy.host, port=proxy.admin_port,
        lifespan="off", limits=http_limits(proxy),
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
        admin_port = await admin.bound_port(admin_task)
        log.info("provline sidecar: %d workers, proxy listening on http://%s:%d, /healthz /readyz /metrics "
                 "listening on http://%s:%s, forwarding to %s", proxy.workers, proxy.host, sock.getsockname()[1],
                 proxy.host, admin_port, proxy.upstream)
        watch_task = asyncio.create_task(supervisor.watch(stop))
        done, _ = await asyncio.wait({watch_task, admin_task}, return_when=asyncio.FIRST_COMPLETED)
        if watch_task in done and watch_task.exception() is not None:
            failure = watch_task.exception()
        elif admin_task in done:
            failure = StartupError(
                f"the admin server stopped on its own (is port {proxy.admin_port} taken?); "
                "check PROVLINE_SIDECAR__ADMIN_PORT"
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
