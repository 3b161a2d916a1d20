"""The dead-letter topic: a message a processor cannot use goes there with the reason, and processing goes on.

A dead letter keeps the original key and value bytes; its headers follow the one convention of
:mod:`provline.schemas.dead_letters` (reason, error, source topic, partition and offset).
"""

from __future__ import annotations

import logging
from typing import Any

from faust.types import EventT, TopicT

from provline.schemas.dead_letters import Headers, dead_letter_headers

log = logging.getLogger(__name__)


class DeadLetters:
    """Sends messages a processor cannot use to the DLQ topic (a Faust topic with raw serializers).

    :meth:`send` never raises: a message that cannot be dead-lettered is logged and counted.
    """

    def __init__(self, topic: TopicT) -> None:
        self.topic = topic
        self.count = 0  # messages dead-lettered
        self.failed = 0  # of those, how many could not be sent

    @property
    def topic_name(self) -> str:
        return self.topic.get_topic_name()

    def letter(self, event: EventT[Any], reason: str, error: str) -> tuple[Any, Any, Headers]:
        """Log and count one dead letter; returns its key, value and headers for a caller that sends it.

        ``reason`` is short and stable (an error class), ``error`` the whole message.
        """
        message = event.message
        self.count += 1
        log.warning("dead-lettered %s[%s]@%s: %s", message.topic, message.partition, message.offset, error)
        headers = dead_letter_headers(reason, error, topic=message.topic, partition=message.partition,
                                      offset=message.offset)
        return message.key, message.value, headers

    async def send(self, event: EventT[Any], reason: str, error: str) -> None:
        key, value, headers = self.letter(event, reason, error)
        try:
            await self.topic.send(key=key, value=value, headers=headers)
        except Exception:  # the caller is an agent that must go on; the loss is logged and counted
            self.failed += 1
            message = event.message
            log.exception("could not dead-letter %s[%s]@%s", message.topic, message.partition, message.offset)
