"""The dead-letter topic: a message a processor cannot use goes there with the reason, and processing goes on.

A dead letter keeps the original key and value bytes; its headers follow the one convention of
:mod:`provline.schemas.dead_letters` (reason, error, source topic, partition and offset).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from faust.types import EventT

from provline.schemas.dead_letters import Headers, dead_letter_headers

log = logging.getLogger(__name__)


class Producing(Protocol):
    """What dead letters are sent through (a BatchProducer)."""

    def produce(self, topic: str, key: bytes | None, value: bytes | None, *, partition: int | None = None,
                headers: Headers | None = None) -> None: ...

    async def flush(self) -> None: ...


class DeadLetters:
    """Sends messages a processor cannot use to the DLQ topic, through the worker's one
    :class:`~provline.stream_processors.producer.BatchProducer` (every agent's one dead-letter path).

    A dead letter is delivered with the producer's next ``flush``, which the agent awaits before
    its position passes the message. :meth:`send` never raises: a message that cannot be queued
    is logged and counted.
    """

    def __init__(self, producer: Producing, topic_name: str) -> None:
        self.producer = producer
        self.topic_name = topic_name
        self.count = 0  # messages dead-lettered
        self.failed = 0  # of those, how many could not be queued

    def send(self, event: EventT[Any], reason: str, error: str) -> None:
        """Queue one dead letter with its key and value as they came; ``reason`` is short and stable
        (an error class), ``error`` the whole message."""
        message = event.message
        self.count += 1
        log.warning("dead-lettered %s[%s]@%s: %s", message.topic, message.partition, message.offset, error)
        headers = dead_letter_headers(reason, error, topic=message.topic, partition=message.partition,
                                      offset=message.offset)
        try:
            self.producer.produce(self.topic_name, message.key, message.value, headers=headers)
        except Exception:  # the caller is an agent that must go on; the loss is logged and counted
            self.failed += 1
            log.exception("could not dead-letter %s[%s]@%s", message.topic, message.partition, message.offset)
