"""The dead-letter topic's headers: why a message could not be used and where it came from.

One convention for every consumer (the sink, the processors): a dead letter keeps the message's
key and value bytes as they were, with these headers:

    provline-dlq-reason       short and stable, for metrics and filters: the error's class, e.g.
                              CorruptEventError, UnknownSchemaError, JoinFailed
    provline-dlq-error        the whole message, for people
    provline-source-topic     where the message was read
    provline-source-partition
    provline-source-offset
"""

from __future__ import annotations

REASON = "provline-dlq-reason"
ERROR = "provline-dlq-error"
SOURCE_TOPIC = "provline-source-topic"
SOURCE_PARTITION = "provline-source-partition"
SOURCE_OFFSET = "provline-source-offset"

Headers = list[tuple[str, str | bytes | None]]


def dead_letter_headers(reason: str, error: str, *, topic: str, partition: int, offset: int) -> Headers:
    return [
        (REASON, reason.encode()),
        (ERROR, error.encode()),
        (SOURCE_TOPIC, topic.encode()),
        (SOURCE_PARTITION, str(partition).encode()),
        (SOURCE_OFFSET, str(offset).encode()),
    ]
