"""Follows Deployment events on the lineage topic, so the sidecar knows what each endpoint serves.

A thin shell: a daemon thread reads the lineage topic from the beginning with a private consumer
group (nothing committed) and feeds :class:`~provline.sidecar.model_version.DeploymentIndex`.
"""

from __future__ import annotations

import logging
import threading
import uuid

from confluent_kafka import Consumer

from provline.config import KafkaSettings, TopicSettings
from provline.schemas import Topics, default_catalog
from provline.schemas.errors import SchemaError
from provline.sidecar.model_version import DeploymentIndex

log = logging.getLogger("provline.sidecar")
POLL_S = 0.2


class DeploymentFollower:
    """Keeps ``index`` up to date from the lineage topic until :meth:`stop`.

    Only this thread writes the index; the event loop reads it with single dict look-ups, which
    the GIL makes atomic, so no lock sits on the request path.
    """

    def __init__(self, kafka: KafkaSettings, topics: TopicSettings, index: DeploymentIndex) -> None:
        self._consumer = Consumer(kafka.librdkafka(**{
            "group.id": f"provline-sidecar-deployments-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }))
        self._consumer.subscribe([Topics(topics.prefix).lineage])
        self._index = index
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="provline-sidecar-deployments", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        catalog = default_catalog()
        try:
            while not self._stop.is_set():
                message = self._consumer.poll(POLL_S)
                value = message.value() if message is not None and message.error() is None else None
                if value is None:
                    continue
                try:
                    decoded = catalog.decode(value)
                except SchemaError:
                    continue  # not ours to judge: the sink dead-letters it
                if decoded.record == "Deployment":
                    self._index.observe(decoded.value)
        finally:
            self._consumer.close()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
