"""Frames: more than one event in one Kafka message.

An ``InferenceExchange`` message carries one prediction's InferenceRequest and InferenceResponse,
each byte for byte what it would have been as a message of its own (so its hash chain, signature
and ``raw`` column are unchanged). Producers that have both halves at once send it: the join then
decides a prediction from one message without keeping it in its table, and the broker, the sink
and the sidecar handle one message instead of two. Every consumer of the inference topic unpacks
messages with :func:`events_in` and handles the events as if they had arrived one after the other.

Pure functions.
"""

from __future__ import annotations

from provline.schemas.errors import TOMBSTONE, CorruptEventError, InvalidEventError, SchemaError
from provline.schemas.serde import Catalog

EXCHANGE = "InferenceExchange"
HEADER_SIZE = 10  # single-object encoding: c3 01 + 8-byte fingerprint
FRAMES = frozenset({EXCHANGE})  # the schemas that are frames, not events (they have no envelope)
_HALVES = (("request", "InferenceRequest"), ("response", "InferenceResponse"))


def exchange_frame(catalog: Catalog, prediction_id: str, request: bytes, response: bytes) -> bytes:
    """The InferenceExchange message holding two encoded events (request first)."""
    return catalog.encode(EXCHANGE, {"prediction_id": prediction_id, "request": request, "response": response})


def is_frame(catalog: Catalog, message: bytes) -> bool:
    try:
        return catalog.writer_for(message)[0].record == EXCHANGE
    except SchemaError:  # not an event at all: whoever decodes it says why
        return False


def events_in(catalog: Catalog, message: bytes | None) -> list[bytes]:
    """The encoded events a message carries: the two halves of an exchange frame, else the message itself.

    Only the frame is decoded here; the events are checked by whoever decodes them. SchemaError
    for a tombstone (None or empty), or when a frame does not decode or its halves are not a request and a
    response, in that order.
    """
    if not message:
        raise CorruptEventError(TOMBSTONE)
    if not is_frame(catalog, message):
        return [message]
    halves = []
    for (field, kind), event in zip(_HALVES, _frame_fields(message)[1:], strict=True):
        found = catalog.writer_for(event)[0].record
        if found != kind:
            raise InvalidEventError(f"the {field} of an {EXCHANGE} frame must be an {kind} event, not {found}; "
                                    "build frames with provline.schemas.frames.exchange_frame")
        halves.append(event)
    return halves


def _frame_fields(message: bytes) -> list[bytes]:
    """The three length-prefixed fields of an InferenceExchange body (prediction id, request, response),
    read directly: the frame's schema is three strings/bytes, and this runs for every message."""
    fields, at = [], HEADER_SIZE
    for _ in range(3):
        size, at = _read_long(message, at)
        if size < 0 or at + size > len(message):
            raise CorruptEventError(f"{EXCHANGE} frame is truncated: a field of {size} bytes at byte {at} "
                                    f"of {len(message)}")
        fields.append(message[at:at + size])
        at += size
    if at != len(message):
        raise CorruptEventError(f"{EXCHANGE} frame has {len(message) - at} bytes after its body")
    return fields


def _read_long(data: bytes, at: int) -> tuple[int, int]:
    """Avro's zigzag varint at ``at``: (value, where the next field starts)."""
    shift = result = 0
    while True:
        if at >= len(data) or shift > 63:
            raise CorruptEventError(f"{EXCHANGE} frame ends inside a length")
        byte = data[at]
        at += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), at
        shift += 7
