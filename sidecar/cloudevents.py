"""CloudEvents from model-server payload loggers, parsed into one half of an exchange. Pure; no I/O.

Two senders are understood, each over HTTP in binary mode (``ce-*`` headers, the body is the
payload) and structured mode (``Content-Type: application/cloudevents+json``, the payload in
``data`` or ``data_base64``):

=========  =============================================  =================================================
sender     ``type``                                       attributes read
=========  =============================================  =================================================
KServe     ``org.kubeflow.serving.inference.request``     ``id`` (the request id: the request's ``Ce-Id``
           ``org.kubeflow.serving.inference.response``    header or a UUID), ``source``,
                                                          ``inferenceservicename``, ``namespace``,
                                                          ``component``, ``endpoint`` (default / canary),
                                                          ``metadata`` (JSON: the ``metadataHeaders`` of the
                                                          logger spec, name -> list of values)
Seldon     ``io.seldon.serving.inference.request``        ``id``, ``requestid`` (the puid), ``modelid``,
           ``io.seldon.serving.inference.response``       ``inferenceservicename``, ``namespace``, ``endpoint``
                                                          (the predictor's name); executor/logger/worker.go
=========  =============================================  =================================================

``traceparent`` is read from the HTTP header (or the ``traceparent`` extension of a structured
event), else from a forwarded ``traceparent`` metadata header; an invalid one is not recorded.

Request and response arrive as two events sharing ``id`` (Seldon: ``requestid``); :func:`prediction_id`
derives one UUID from the sender, source, namespace, service, component, model id and that id, so both
halves (and every retry of either) get the same prediction id without the service keeping any state.
Seldon's executor also sends a ``protocol`` extension, which is not needed here.

What is hashed: the payload bytes as received. In binary mode and for ``data_base64`` those are
exactly the logger's bytes. For ``data`` that is a JSON string, its UTF-8 bytes; for ``data`` that
is any other JSON value, the logger's original bytes are not in the envelope, so the digest is over
the value's compact JSON serialisation (``orjson.dumps``: no spaces, keys in the order received).
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from provline.sidecar.headers import Header, is_valid_traceparent

Sender = Literal["kserve", "seldon"]
Half = Literal["request", "response"]
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
EVENT_TYPES: dict[str, tuple[Sender, Half]] = {
    "org.kubeflow.serving.inference.request": ("kserve", "request"),
    "org.kubeflow.serving.inference.response": ("kserve", "response"),
    "io.seldon.serving.inference.request": ("seldon", "request"),
    "io.seldon.serving.inference.response": ("seldon", "response"),
}
# The namespace of prediction ids derived from CloudEvents (uuid5): fixed, so every ingest replica agrees.
PREDICTION_ID_NAMESPACE = uuid.UUID("6f1c3a52-8d0e-4f7b-9a41-2c5e7d9b0a13")
MAX_ATTRIBUTE_CHARS = 1024
_CE_PREFIX = b"ce-"
_KNOWN_HELP = ("send the payload logger's CloudEvent: binary mode (ce-id, ce-type, ce-source, ce-specversion "
               "headers) or structured mode (Content-Type: application/cloudevents+json)")


class CloudEventError(Exception):
    """An HTTP request that is not an event provline can record; ``reason`` labels the refused metric."""

    def __init__(self, reason: str, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class LoggedHalf:
    """One half of an exchange as a payload logger reported it."""

    sender: Sender
    half: Half
    event_id: str  # the CloudEvent id: the request id both halves share
    event_type: str
    source: str
    spec_version: str
    data: bytes  # the payload, as hashed (see the module docstring)
    content_type: str | None
    service: str | None = None  # inferenceservicename
    namespace: str | None = None
    component: str | None = None  # KServe: predictor, transformer, explainer
    endpoint: str | None = None  # KServe and Seldon: default or canary
    model_id: str | None = None  # Seldon: the graph node's model
    request_id: str | None = None  # Seldon: requestid
    time: str | None = None  # the CloudEvent time, RFC 3339, as sent
    traceparent: str | None = None
    metadata: dict[str, list[str]] = field(default_factory=dict)  # KServe metadata headers, lower-case names

    @property
    def prediction_id(self) -> str:
        return prediction_id(self)

    @property
    def model_name(self) -> str | None:
        """Seldon's model id, else the inference service's name."""
        return self.model_id or self.service

    def header(self, name: str) -> str | None:
        """The first value of a forwarded metadata header (any case), or None."""
        values = self.metadata.get(name.lower())
        return values[0] if values else None


def prediction_id(event: LoggedHalf) -> str:
    """The prediction id of both halves of one exchange: a UUID (version 5) of what identifies it.

    The exchange's id is the event id, except for Seldon, whose executor gives both halves its request's
    ``requestid`` (the puid) and may give each event an id of its own.
    """
    exchange = event.request_id if event.sender == "seldon" and event.request_id else event.event_id
    name = "\x1f".join([event.sender, event.source, event.namespace or "", event.service or "",
                        event.component or "", event.model_id or "", exchange])
    return str(uuid.uuid5(PREDICTION_ID_NAMESPACE, name))


def parse_event(headers: Iterable[Header], body: bytes) -> LoggedHalf:
    """The half an HTTP request's CloudEvent reports; CloudEventError says what is wrong and what to do."""
    seen: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1").lower()
        if name not in seen:
            seen[name] = raw_value.decode("latin-1").strip()
    content_type = seen.get("content-type")
    if content_type is not None and content_type.split(";")[0].strip().lower() == STRUCTURED_CONTENT_TYPE:
        attributes, data = _structured(body)
        header_traceparent = seen.get("traceparent")
        if header_traceparent and "traceparent" not in attributes:
            attributes["traceparent"] = header_traceparent
        return _half(attributes, data, attributes.get("datacontenttype"))
    attributes = {name[len("ce-"):]: value for name, value in seen.items() if name.encode().startswith(_CE_PREFIX)}
    if not attributes:
        raise CloudEventError("not_a_cloudevent", f"the request has no ce-* headers and is not "
                              f"{STRUCTURED_CONTENT_TYPE}; {_KNOWN_HELP}")
    if "traceparent" in seen:
        attributes.setdefault("traceparent", seen["traceparent"])
    return _half(attributes, body, content_type)


def _structured(body: bytes) -> tuple[dict[str, str], bytes]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise CloudEventError("invalid_json", f"the structured CloudEvent is not valid JSON ({exc}); send a JSON "
                              "object with specversion, id, type, source and data or data_base64") from exc
    if not isinstance(document, dict):
        raise CloudEventError("invalid_json", f"the structured CloudEvent is a JSON {type(document).__name__}, not "
                              "an object; send a JSON object with specversion, id, type, source and data")
    attributes = {str(k).lower(): v if isinstance(v, str) else orjson.dumps(v).decode()
                  for k, v in document.items() if k not in ("data", "data_base64") and v is not None}
    if "data_base64" in document and document["data_base64"] is not None:
        encoded = document["data_base64"]
        if not isinstance(encoded, str):
            raise CloudEventError("invalid_base64", "data_base64 must be a base64 string; encode the payload "
                                  "bytes with standard base64")
        try:
            return attributes, base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise CloudEventError("invalid_base64", f"data_base64 is not valid base64 ({exc}); encode the "
                                  "payload bytes with standard base64 (RFC 4648, with padding)") from exc
    data = document.get("data")
    if data is None:
        return attributes, b""
    if isinstance(data, str):
        return attributes, data.encode("utf-8", "surrogatepass")
    return attributes, orjson.dumps(data)


def _half(attributes: dict[str, str], data: bytes, content_type: str | None) -> LoggedHalf:
    for name, value in attributes.items():
        if len(value) > MAX_ATTRIBUTE_CHARS:
            raise CloudEventError("attribute_too_long", f"CloudEvent attribute {name} has {len(value)} characters, "
                                  f"more than {MAX_ATTRIBUTE_CHARS}; send ids and names, not payloads, as attributes")
    missing = [name for name in ("id", "type") if not attributes.get(name)]
    if missing:
        raise CloudEventError("missing_attribute", f"the CloudEvent has no {' or '.join(missing)} (ce-"
                              f"{', ce-'.join(missing)} in binary mode); {_KNOWN_HELP}")
    event_type = attributes["type"]
    known = EVENT_TYPES.get(event_type)
    if known is None:
        raise CloudEventError("unknown_type", f"CloudEvent type {event_type[:100]!r} is not an inference log; "
                              f"provline records {', '.join(sorted(EVENT_TYPES))}")
    sender, half = known
    traceparent = attributes.get("traceparent")
    metadata = _metadata(attributes.get("metadata"))
    if not traceparent and metadata.get("traceparent"):
        traceparent = metadata["traceparent"][0]
    if traceparent is not None and not is_valid_traceparent(traceparent):
        traceparent = None
    return LoggedHalf(
        sender=sender, half=half, event_id=attributes["id"], event_type=event_type,
        source=attributes.get("source", ""), spec_version=attributes.get("specversion", ""), data=data,
        content_type=content_type, service=attributes.get("inferenceservicename") or None,
        namespace=attributes.get("namespace") or None, component=attributes.get("component") or None,
        endpoint=attributes.get("endpoint") or None, model_id=attributes.get("modelid") or None,
        request_id=attributes.get("requestid") or None, time=attributes.get("time") or None,
        traceparent=traceparent, metadata=metadata,
    )


def _metadata(text: str | None) -> dict[str, list[str]]:
    """KServe's ``metadata`` extension (JSON: header name -> list of values); anything else is ignored."""
    if not text:
        return {}
    try:
        document: Any = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(document, dict):
        return {}
    found: dict[str, list[str]] = {}
    for name, values in document.items():
        if isinstance(values, str):
            values = [values]
        if isinstance(name, str) and isinstance(values, list):
            found[name.lower()] = [v for v in values if isinstance(v, str)]
    return found
