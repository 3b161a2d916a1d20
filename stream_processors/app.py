"""The Faust app of the stream processors: an app factory and the worker entry point.

``create_app(settings)`` builds a fresh app (nothing connects until a worker starts it);
``run_worker(settings)`` runs one worker until SIGTERM/SIGINT. Topics carry raw bytes: events
are decoded with the schemas catalog, so both wire formats and old writer schemas are accepted.
"""

from __future__ import annotations

import uuid

import faust

from schemas.events import Topics
from schemas.serde import default_catalog
from stream_processors.dead_letters import DeadLetters
from stream_processors.join_agent import Joiner, register_join_agent
from stream_processors.lineage_agent import register_lineage_agent
from stream_processors.settings import ProcessorSettings
from stream_processors.traces import TraceEncoder

DEFAULT_LOGLEVEL = "info"


def _raw_topic(app: faust.App, name: str) -> faust.TopicT:
    return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")


def create_app(settings: ProcessorSettings) -> faust.App:
    """A new Faust app with the lineage and join agents, configured by ``settings``.

    Does not block or connect. The topics under ``settings.topic_prefix`` must exist with
    ``settings.topic_partitions`` partitions; Faust creates its own changelog topics.
    """
    topics = Topics(settings.topic_prefix)
    catalog = default_catalog()
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in settings.bootstrap_servers()],
        autodiscover=False,
        store="memory://",
        datadir=settings.data_dir,
        topic_partitions=settings.topic_partitions,
        web_port=settings.web_port,
    )
    dead_letters = DeadLetters(_raw_topic(app, topics.dlq))
    lineage = register_lineage_agent(
        app, topic=_raw_topic(app, topics.lineage), catalog=catalog, dead_letters=dead_letters
    )
    joiner = Joiner(
        catalog=catalog,
        lineage=lineage,
        encoder=TraceEncoder(catalog, session_id=str(uuid.uuid4())),
        traces=_raw_topic(app, topics.traces),
        wait_seconds=settings.lineage_wait_seconds,
    )
    register_join_agent(
        app, topic=_raw_topic(app, topics.inference), joiner=joiner, catalog=catalog,
        dead_letters=dead_letters, partitions=settings.topic_partitions,
    )
    return app


def run_worker(settings: ProcessorSettings, *, loglevel: str = DEFAULT_LOGLEVEL) -> None:
    """Run one worker of the processors; blocks until SIGTERM or SIGINT, then exits the process.

    ``loglevel`` is one of crit, error, warn, info, debug. Ends with :class:`SystemExit`, as
    Faust's worker does.
    """
    app = create_app(settings)
    faust.Worker(app, loglevel=loglevel).execute_from_commandline()
