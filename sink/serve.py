"""``provline serve``: the sink writer, the audit API and the feedback resolver in one process (the owner of
an embedded store). Feedback that serve publishes (``POST /v1/feedback``, resolved client request ids) goes
through the producers' emitter with serve's ``emitter``, ``signing``, ``kafka`` and ``topics`` settings."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import uvicorn

from provline.kafka import check_connection
from provline.producers.emitter import build_emitter
from provline.sink.api import create_api
from provline.sink.errors import SinkError
from provline.sink.feedback import FeedbackResolver
from provline.sink.monitor import Monitor
from provline.sink.settings import ServeSettings
from provline.sink.store import migrate, open_store
from provline.sink.writer import SinkWriter
from provline.topics import ensure_at_start

log = logging.getLogger(__name__)

WRITER_JOIN_TIMEOUT_SECONDS = 30.0
PRODUCER_NAME = "provline-serve"  # the producer name of the Feedback serve publishes (trust its key under it)


def run_serve(settings: ServeSettings) -> None:
    """Open the store, migrate, run the writer in a thread and serve the API until SIGTERM/SIGINT.

    Blocks; call from the main thread. A thread of its own runs the monitor (performance and alert rounds
    every ``PROVLINE_MONITORING__INTERVAL_S``, :mod:`provline.sink.monitor`).
    On a signal the API stops accepting requests, then the writer
    inserts and commits the batch in hand and stops; nothing un-inserted is committed. Raises
    :class:`provline.config.ConfigError` at once when Kafka refuses the configured credentials or
    TLS, and :class:`provline.sink.errors.SinkError` when the writer died (the API is then shut down too).
    """
    check_connection(settings.kafka, service="provline serve")
    ensure_at_start(settings.kafka, settings.topics, service="provline serve")
    writer_client = open_store(settings.store.url)
    # A second client on the same store (for chDB: the same engine) so API queries never run
    # on the writer's connection.
    api_client = open_store(settings.store.url)
    insert_clients = [open_store(settings.store.url) for _ in range(settings.sink.insert_threads - 1)]
    resolver_client = open_store(settings.store.url)
    emitter = build_emitter(settings.publishing(), producer_name=PRODUCER_NAME)
    # The monitor (performance, alerts) on a client of its own: it never holds up the writer or the API.
    monitor_client = open_store(settings.store.url)
    stop = threading.Event()
    failures: list[BaseException] = []
    try:
        migrate(writer_client, cluster=settings.store.cluster, retention_days=settings.store.retention_days)
        writer = SinkWriter(settings, writer_client, insert_clients=insert_clients)
        resolver = FeedbackResolver(resolver_client, emitter, retention_s=settings.feedback.resolve_retention_s,
                                    interval_s=settings.feedback.resolve_interval_s)
        resolving = threading.Thread(target=resolver.run, args=(stop,), name="provline-feedback-resolver",
                                     daemon=True)
        resolving.start()
        config = uvicorn.Config(
            create_api(settings, api_client, emitter=emitter), host=settings.api.host, port=settings.api.port,
            log_level="info",
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=_run_writer, args=(writer, stop, server, failures), name="provline-sink-writer"
        )
        monitor = Monitor(settings.monitoring, monitor_client)
        monitor_thread = threading.Thread(target=monitor.run, args=(stop,), name="provline-monitor", daemon=True)
        thread.start()
        monitor_thread.start()
        _install_stop_handlers(stop)
        try:
            server.run()
        finally:
            stop.set()
            thread.join(WRITER_JOIN_TIMEOUT_SECONDS)
            if thread.is_alive():
                log.error("sink writer did not stop within %.0f s", WRITER_JOIN_TIMEOUT_SECONDS)
            resolving.join(WRITER_JOIN_TIMEOUT_SECONDS)
            monitor_thread.join(WRITER_JOIN_TIMEOUT_SECONDS)
            monitor.close()
    finally:
        emitter.close()
        for client in (api_client, writer_client, resolver_client, monitor_client, *insert_clients):
            client.close()
    if failures:
        raise SinkError(f"the sink writer stopped on {failures[0]!r}; see the log above") from failures[0]


def _run_writer(
    writer: SinkWriter, stop: threading.Event, server: uvicorn.Server, failures: list[BaseException]
) -> None:
    try:
        writer.run(stop)
    except Exception as exc:
        # A process that serves but no longer writes would hide the outage: stop the whole process.
        log.exception("sink writer stopped on an error; shutting down")
        failures.append(exc)
        server.should_exit = True


def _install_stop_handlers(stop: threading.Event) -> None:
    # uvicorn swaps in its own handlers while serving, then restores these and re-raises the signal
    # it caught; these turn that re-raise into a clean stop instead of KeyboardInterrupt or death.
    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
