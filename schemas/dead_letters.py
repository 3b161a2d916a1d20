"""The dead-letter topic's headers: why a message could not be used and where it came from.

One convention for every consumer (the sink, the processors): a dead letter keeps the message's
key and value bytes as they were, with these headers:

    provline-dlq-reason       short and stable, for metrics and filters: the error's class, e.g.
                              CorruptEventError, UnknownSchemaError, JoinFailed
    provline-dlq-error        the whole message, for people
    provline-source-topic     where the message was read
    provline-source-partition
    provline-source-offset

A message a processor made but the broker refused for its size (reason TooLarge) has no value and
no source position (-1); it names the event it held instead, so that the place ``provline verify``
finds missing in its producer's chain can be matched with it:

    provline-event-id         the refused event's id
    provline-event-hash       its hash (what the next event of its session links to)
    provline-event-session    its producer session

The sink stores every dead letter it reads from the topic (``dead_letters``, sink/sql/0013), so that
the gap such an event leaves in its chain is named dead-lettered, with its reason, not deleted.
"""

from __future__ import annotations

REASON = "provline-dlq-reason"
ERROR = "provline-dlq-error"
SOURCE_TOPIC = "provline-source-topic"
SOURCE_PARTITION = "provline-source-partition"
SOURCE_OFFSET = "provline-source-offset"
EVENT_ID = "provline-event-id"
EVENT_HASH = "provline-event-hash"
EVENT_SESSION = "provline-event-session"

Headers = list[tuple[str, str | bytes | None]]


def dead_letter_headers(reason: str, error: str, *, topic: str, partition: int, offset: int) -> Headers:
    return [
        (REASON, reason.encode()),
        (ERROR, error.encode()),
        (SOURCE_TOPIC, topic.encode()),
        (SOURCE_PARTITION, str(partition).encode()),
        (SOURCE_OFFSET, str(offset).encode()),
    ]
