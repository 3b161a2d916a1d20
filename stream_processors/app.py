"""The Faust app of the stream processors: an app factory and the worker entry point.

``create_app(settings)`` builds a fresh app (nothing connects until a worker starts it);
``run_worker(settings)`` runs one worker until SIGTERM/SIGINT. Topics carry raw bytes: events
are decoded with the schemas catalog (schemas parsed once per process), so both wire formats and
old writer schemas are accepted. Agents: ``lineage`` (GlobalTable of deployments, models, runs
and dataset profiles), ``join`` (traces), ``drift`` (windowed drift metrics).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

import faust
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from faust.auth import Credentials
from faust.tables.recovery import Recovery
from faust.web import Request, Response, View

from provline.config import ConfigError, KafkaSettings, SigningSettings
from provline.kafka import check_connection
from provline.schemas.dead_letters import EVENT_HASH, EVENT_ID, EVENT_SESSION, Headers
from provline.schemas.errors import SchemaError
from provline.schemas.events import Topics
from provline.schemas.integrity import load_private_key
from provline.schemas.serde import Catalog, default_catalog
from provline.stream_processors.dead_letters import DeadLetters
from provline.stream_processors.drift import DriftAccumulator
from provline.stream_processors.drift_agent import partials_topic, register_drift_agent
from provline.stream_processors.join import Timing
from provline.stream_processors.join_agent import Joiner, register_join_agent
from provline.stream_processors.lineage_agent import register_lineage_agent
from provline.stream_processors.metrics import ProcessorMetrics, serve_metrics
from provline.stream_processors.producer import BatchProducer, DeliveryError
from provline.stream_processors.rewind import BrokerOffsets, log_end
from provline.stream_processors.settings import ProcessorSettings
from provline.stream_processors.traces import TraceEncoder
from provline.topics import BROKER_DEFAULT, DEFAULT_TIMEOUT_S, TopicSpec, create_missing, describe, ensure_at_start

DEFAULT_LOGLEVEL = "info"
LAG_INTERVAL_SECONDS = 5.0
WATCHDOG_INTERVAL_SECONDS = 1.0
CRASH_TIMEOUT_SECONDS = 10.0
EXIT_GRACE_SECONDS = 30.0  # after asking Faust to stop: the process ends even if its shutdown hangs
PRODUCER_MAX_BATCH_BYTES = 1_048_576
PRODUCER_LINGER_SECONDS = 0.005
PRODUCER_BUFFER_MESSAGES = 20_000
GC_YOUNG_THRESHOLD = 20_000  # allocations between young-generation collections (Python's default: 700)
log = logging.getLogger(__name__)


def _raw_topic(app: faust.App, name: str) -> faust.TopicT:
    return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")


def broker_credentials(kafka: KafkaSettings) -> Credentials | None:
    """The Kafka settings' security for aiokafka, as Faust takes it: SASL (over TLS or not) or TLS alone."""
    context = kafka.ssl_context()
    if kafka.security_protocol.startswith("SASL"):
        password = kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
        return faust.SASLCredentials(username=kafka.sasl_username, password=password,
                                     mechanism=kafka.sasl_mechanism, ssl_context=context)
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def signer_of(signing: SigningSettings) -> Ed25519PrivateKey | None:
    """The worker's signing key (PROVLINE_SIGNING__KEY), or None; ConfigError when it cannot be used."""
    if signing.key is None:
        return None
    try:
        return load_private_key(signing.key.get_secret_value())
    except (SchemaError, ValueError) as exc:
        raise ConfigError(f"PROVLINE_SIGNING__KEY cannot be used: {exc}") from exc


def faust_app(settings: ProcessorSettings) -> faust.App:
    """The Faust app every processors worker runs on, with no agents yet: broker, credentials, state
    store and the producer settings the join's throughput depends on (bench/processors.py measures its
    Faust ceiling on this same app). Faust's stream buffer and poll sizes stay at their defaults: raising
    them (131,072 / 10,000, batches of 1,000 and 5,000) changed neither the ceiling nor its CPU per message."""
    worker, kafka = settings.processors, settings.kafka
    return faust.App(
        worker.app_id,
        broker=[f"kafka://{server}" for server in kafka.servers()],
        broker_credentials=broker_credentials(kafka),
        autodiscover=False,
        store="memory://",
        datadir=worker.data_dir,
        topic_partitions=settings.topics.partitions,
        # the changelogs are the join's state: as many copies as the topics they mirror (Faust's default: 1)
        topic_replication_factor=max(settings.topics.replication_factor, 1),
        web_port=worker.web_port,
        # traces are ~1 KB: aiokafka's default 16 KB batches make the producer wait on a round trip
        # every dozen traces, and Faust's buffer then stalls the consumer
        producer_max_batch_size=PRODUCER_MAX_BATCH_BYTES,
        producer_linger=PRODUCER_LINGER_SECONDS,
        broker_session_timeout=kafka.session_timeout_s,
        broker_heartbeat_interval=min(3.0, kafka.session_timeout_s / 3),
        # aiokafka ignores a topic missing at start until its next metadata refresh (5 min by default)
        consumer_metadata_max_age_ms=int(settings.topics.metadata_refresh_s * 1000),
    )


def create_app(settings: ProcessorSettings) -> faust.App:
    """A new Faust app with the lineage and join agents, configured by ``settings``.

    Does not block or connect. The topics under ``settings.topics.prefix`` must exist with
    ``settings.topics.partitions`` partitions; Faust creates its own changelog topics.
    """
    worker, kafka = settings.processors, settings.kafka
    topics = Topics(settings.topics.prefix)
    partitions = settings.topics.partitions
    catalog = default_catalog()
    app = faust_app(settings)

    @app.task(on_leader=False)
    async def _raise_producer_buffer() -> None:
        # Faust stalls the consumer whenever more than 100 messages wait in its producer buffer;
        # one batch of ours puts up to three per prediction there (trace + two table writes)
        app.producer.buffer.max_messages = PRODUCER_BUFFER_MESSAGES

    metrics = ProcessorMetrics()

    def too_large(value: bytes | None) -> Headers:
        metrics.too_large.inc()
        return refused_event_headers(catalog, value)

    producer = BatchProducer(kafka, client_id=f"{worker.app_id}-join", dead_letter_topic=topics.dlq,
                             on_too_large=too_large)
    dead_letters = DeadLetters(producer, topics.dlq)
    app.provline_metrics = metrics
    offsets = BrokerOffsets(kafka, client_id=f"{worker.app_id}-offsets")
    lineage_agent = register_lineage_agent(
        app, topic=_raw_topic(app, topics.lineage), catalog=catalog, dead_letters=dead_letters, metrics=metrics,
        offsets=offsets,
    )
    lineage = lineage_agent.index
    encoder = TraceEncoder(catalog, signer=signer_of(settings.signing))
    accumulator = DriftAccumulator(
        lineage.baseline_of, window_us=int(settings.drift.window_s * 1_000_000),
        output_columns=settings.drift.output_columns,
    )
    send_partials = register_drift_agent(
        app, lineage=lineage, accumulator=accumulator, encoder=encoder, drift_topic=_raw_topic(app, topics.drift),
        thresholds=settings.drift.thresholds(), lateness_seconds=settings.drift.lateness_s,
        partitions=partitions, metrics=metrics,
    )
    joiner = Joiner(
        catalog=catalog, lineage=lineage, encoder=encoder, metrics=metrics, drift=accumulator,
        producer=producer, traces_topic=topics.traces, dead_letters=dead_letters, lineage_topic=topics.lineage,
        timing=Timing(ttl=worker.pending_ttl_s, lineage_wait=worker.lineage_wait_s,
                      retention=worker.dedup_retention_s, feedback_retention=worker.feedback_retention_s),
    )
    inference = _raw_topic(app, topics.inference)
    register_join_agent(
        app, topic=inference, joiner=joiner, lineage=lineage_agent, catalog=catalog, offsets=offsets,
        partitions=partitions, batch_size=worker.batch_size,
        batch_within=worker.batch_within_s, after_batch=send_partials,
    )

    app.provline_watchdog = Watchdog(app, producer, rebalance_limit_s=worker.rebalance_limit_s)

    @app.on_before_shutdown.connect
    def _close_producer(app: faust.App, **_: object) -> None:
        joiner.send_seal(now=time.monotonic(), final=True)
        producer.close()

    reported: dict[int, int | None] = {}  # partition -> last decided offset at the previous report

    @app.timer(LAG_INTERVAL_SECONDS, name="consumer-lag")
    async def report_lag() -> None:  # behind the join's own decided offsets, not Faust's read position
        name = inference.get_topic_name()
        for tp in app.consumer.assignment():
            if tp.topic != name:
                continue
            end = log_end(app, tp)
            if end is None:  # not fetched yet, or being revoked: next time
                continue
            decided = joiner.positions.decided.get(tp.partition)
            lag = end - (decided + 1 if decided is not None else 0)
            metrics.lag.labels(tp.topic, str(tp.partition)).set(max(lag, 0))
            if lag > 0 and tp.partition in reported and reported[tp.partition] == decided:
                log.warning("%s[%d]: %d events unread after offset %s and none decided for %.0f s "
                            "(rebalancing: %s, gap waiting for a rewind: %s)", tp.topic, tp.partition, lag, decided,
                            LAG_INTERVAL_SECONDS, bool(app.rebalancing), joiner.positions.gaps.get(tp.partition))
            reported[tp.partition] = decided

    register_health_pages(app)
    return app


def refused_event_headers(catalog: Catalog, value: bytes | None) -> Headers:
    """The dead-letter headers naming the event a refused message held (none when it holds no event)."""
    try:
        event = catalog.decode(value or b"").value
    except SchemaError:
        return []
    return [(EVENT_ID, str(event["event_id"]).encode()), (EVENT_HASH, str(event.get("hash") or "").encode()),
            (EVENT_SESSION, str(event["producer"]["session_id"]).encode())]


def create_internal_topics(settings: ProcessorSettings) -> None:
    """Create the drift partials topic the agents read before the worker subscribes. Faust creates it only
    after its first assignment, and the topic appearing then starts a second rebalance of a worker
    that had just started; in CI one such rebalance hung in a commit, and the worker never computed
    drift again (stop 26)."""
    spec = TopicSpec(partials_topic(settings.processors.app_id), settings.topics.partitions,
                     settings.topics.replication_factor)
    try:
        create_missing(settings.kafka, [spec])
    except (KafkaException, ConfigError) as exc:  # Faust creates it later, as it would have
        log.warning("could not create %s before starting (%s); Faust creates it after its first assignment",
                    spec.name, exc)


def readiness(*, rebalancing: bool, recovering: bool) -> str | None:
    """Why a worker cannot take its share of the traffic now, or None when it can. Pure."""
    if rebalancing:
        return "rebalancing: the group is handing out partitions"
    if recovering:
        return "recovering: rebuilding the join and lineage tables from their changelogs"
    return None


class StuckRebalanceError(RuntimeError):
    """A rebalance outlasted ``rebalance_limit_s``; the worker exits so that it is restarted."""


@dataclass
class RebalanceWatch:
    """How long the worker has been in its current rebalance, outside table recovery. Pure: the caller
    passes Faust's state and the time. Faust can hang for good in a rebalance (stop 26: its revoke
    waited for a commit that never ended); a rebalance that recovers tables may rightly take long."""

    limit_s: float
    # (rebalance number, when first seen outside recovery)
    _started: tuple[int, float] | None = field(default=None, init=False)

    def stuck(self, *, rebalancing: bool, recovering: bool, number: int, now: float) -> float | None:
        """Seconds the current rebalance has lasted once that is more than the limit; None until then."""
        if not rebalancing or recovering:
            self._started = None
            return None
        if self._started is None or self._started[0] != number:
            self._started = (number, now)
        lasted = now - self._started[1]
        return lasted if lasted > self.limit_s else None


class Watchdog:
    """Stops the worker (exit code 1) so that its supervisor starts a new one, when this one cannot go on:
    a message was lost (every flush fails from then on, so no position passes it, and a new worker makes
    it again from the released positions), or a rebalance outlasted ``rebalance_limit_s``.

    A thread, not a Faust timer: Faust starts its timers only after the first table recovery, and a
    worker can hang before that. The process ends EXIT_GRACE_SECONDS later even if Faust's shutdown hangs.
    """

    def __init__(self, app: faust.App, producer: BatchProducer, *, rebalance_limit_s: float) -> None:
        self._app, self._producer = app, producer
        self._rebalance = RebalanceWatch(limit_s=rebalance_limit_s)
        self._thread = threading.Thread(target=self._watch, name="provline-watchdog", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None  # both taken by start(), on the loop's thread
        self._recovery: Recovery | None = None

    def start(self) -> None:
        """Call on the thread that runs the worker's event loop: Faust makes its loop-bound objects on first use."""
        self._loop, self._recovery = self._app.loop, self._app.tables.recovery
        self._thread.start()

    def reason_to_exit(self, now: float) -> Exception | None:
        if self._producer.lost is not None:
            return DeliveryError(f"a message was lost ({self._producer.lost}); exiting so that a restarted worker "
                                 "makes it again from the last released positions")
        app = self._app
        lasted = self._rebalance.stuck(rebalancing=bool(app.rebalancing),
                                       recovering=bool(self._recovery is not None and self._recovery.in_recovery),
                                       number=app.rebalancing_count, now=now)
        if lasted is not None:
            return StuckRebalanceError(
                f"rebalance {app.rebalancing_count} has lasted {lasted:.0f} s outside table recovery, more than "
                f"PROVLINE_PROCESSORS__REBALANCE_LIMIT_S={self._rebalance.limit_s:g}; exiting so that a restarted "
                "worker joins the group afresh from the last released positions")
        return None

    def _watch(self) -> None:
        while (error := self.reason_to_exit(time.monotonic())) is None:
            time.sleep(WATCHDOG_INTERVAL_SECONDS)
        hard_exit = threading.Timer(EXIT_GRACE_SECONDS, os._exit, args=(1,))
        hard_exit.daemon = True
        hard_exit.start()
        assert self._loop is not None, "the watch thread runs only after start() took the loop"
        crashed = asyncio.run_coroutine_threadsafe(self._app.crash(error), self._loop)
        try:  # the crash marks the worker (exit code 1); the signal then stops it
            crashed.result(timeout=CRASH_TIMEOUT_SECONDS)
        except Exception:  # noqa: BLE001 - whatever the loop did, the worker must stop
            log.critical("%s (the event loop did not take the crash)", error)
        os.kill(os.getpid(), signal.SIGTERM)


def register_health_pages(app: faust.App) -> None:
    """``/healthz`` (the worker's event loop answers) and ``/readyz`` (503 while it rebalances or
    recovers its tables) on Faust's web port, for Kubernetes probes and compose health checks; and
    Faust's ``/stats/assignment/``: the partitions this worker holds, for operators (and tests)."""
    app.web.blueprints.add("/stats/", "faust.web.apps.stats:blueprint")

    @app.page("/healthz")
    async def healthz(view: View, request: Request) -> Response:
        return view.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(view: View, request: Request) -> Response:
        problem = readiness(rebalancing=bool(app.rebalancing), recovering=bool(app.tables.recovery.in_recovery))
        if problem is not None:
            return view.json({"status": "not ready", "reason": problem}, status=503)
        return view.json({"status": "ready"})


def any_free_port() -> int:
    """A TCP port free on this host now (the OS's choice for port 0)."""
    with socket.socket() as probe:
        probe.bind(("", 0))
        return int(probe.getsockname()[1])


def inference_replicas(settings: ProcessorSettings) -> int:
    """How many replicas the inference topic has (so the changelogs get as many), 1 when the brokers do not say.

    For ``replication_factor`` -1 (the cluster's default): Faust creates its changelog topics with a
    count of its own, which must be a real one."""
    inference = Topics(settings.topics.prefix).inference
    try:
        found = describe(AdminClient(settings.kafka.librdkafka(log_level=0)), [inference],
                         timeout_s=DEFAULT_TIMEOUT_S)[inference].replication_factor
    except KafkaException as exc:
        found = 0
        log.warning("could not read the replication factor of %s (%s)", inference, exc)
    if found < 1:
        log.warning("Faust's changelog topics get one replica; set PROVLINE_TOPICS__REPLICATION_FACTOR to give "
                    "them as many as a broker loss needs")
        return 1
    return found


def run_worker(settings: ProcessorSettings, *, loglevel: str = DEFAULT_LOGLEVEL) -> None:
    """Run one worker of the processors; blocks until SIGTERM or SIGINT, then exits the process.

    ``loglevel`` is one of crit, error, warn, info, debug. Ends with :class:`SystemExit`, as
    Faust's worker does; raises :class:`provline.config.ConfigError` first when Kafka refuses the
    configured credentials or TLS.
    """
    check_connection(settings.kafka, service="provline processors")
    ensure_at_start(settings.kafka, settings.topics, service="provline processors")
    if settings.topics.replication_factor == BROKER_DEFAULT:
        settings = settings.model_copy(update={"topics": settings.topics.model_copy(
            update={"replication_factor": inference_replicas(settings)})})
    create_internal_topics(settings)
    if settings.processors.web_port == 0:  # Faust takes no port 0: choose a free one, and say which
        chosen = settings.processors.model_copy(update={"web_port": any_free_port()})
        settings = settings.model_copy(update={"processors": chosen})
    print(f"provline processors: Faust web (health) listening on http://0.0.0.0:{settings.processors.web_port}/",
          file=sys.stderr, flush=True)
    app = create_app(settings)
    # The join allocates a few dicts per event and keeps every prediction's entry for the dedup
    # retention; at the default threshold the collections that follow rescan those entries and
    # took about a tenth of the worker's time.
    gc.set_threshold(GC_YOUNG_THRESHOLD)
    port = serve_metrics(app.provline_metrics, settings.processors.metrics_port)
    print(f"provline processors: Prometheus metrics listening on http://0.0.0.0:{port}/metrics", file=sys.stderr,
          flush=True)  # before the Faust worker sets up logging
    app.provline_watchdog.start()
    faust.Worker(app, loglevel=loglevel).execute_from_commandline()
