"""Header rules of the proxy: hop-by-hop filtering, forwarding headers, prediction ids, traceparent.

Pure functions over ASGI-style header lists (``(name, value)`` byte pairs, any name case); no I/O.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence

from provline.schemas.events import new_event_id
from provline.schemas.tracecontext import parse_traceparent

Header = tuple[bytes, bytes]

# RFC 9110 section 7.6.1, plus the non-standard ones proxies have always removed.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"transfer-encoding", b"upgrade",
    b"proxy-authorization", b"proxy-authenticate", b"trailer",
})
PREDICTION_ID_HEADER = b"x-prediction-id"
MODEL_VERSION_HEADER = b"x-model-version"
REQUEST_ID_HEADER = b"x-request-id"
CLIENT_ID_HEADER = b"x-client-id"
TRACEPARENT_HEADER = b"traceparent"
CONTENT_ENCODING_HEADER = b"content-encoding"
# Where a reply names its request id: MLServer's CloudEvents headers, then a plain X-Request-ID.
REPLY_REQUEST_ID_HEADERS = (b"ce-requestid", b"ce-id", REQUEST_ID_HEADER)

# The proxy computes these itself from the bytes it forwards, or has already acted on them:
# the body was read in full, so an ``Expect: 100-continue`` handshake with the upstream is moot.
_RECOMPUTED_ON_REQUEST = frozenset({
    b"host", b"content-length", b"expect", TRACEPARENT_HEADER, PREDICTION_ID_HEADER,
})

_NOT_FORWARDED_ON_REQUEST = HOP_BY_HOP | _RECOMPUTED_ON_REQUEST
_NOT_FORWARDED_ON_RESPONSE = HOP_BY_HOP | {PREDICTION_ID_HEADER}

_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,128}")


def values(headers: Iterable[Header], name: bytes) -> list[bytes]:
    """Every value of header ``name`` (lower case), in order."""
    return [value for key, value in headers if key.lower() == name]


def first(headers: Iterable[Header], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def firsts(headers: Iterable[Header], names: frozenset[bytes]) -> dict[bytes, str]:
    """The first value of each of ``names`` (lower case) that ``headers`` has, as text; one pass."""
    found: dict[bytes, str] = {}
    for key, value in headers:
        name = key.lower()
        if name in names and name not in found:
            found[name] = value.decode("latin-1")
    return found


def connection_options(headers: Iterable[Header]) -> frozenset[bytes]:
    """Header names listed in ``Connection`` headers, lower case: they are hop-by-hop too."""
    names: set[bytes] = set()
    for value in values(headers, b"connection"):
        names.update(token.strip().lower() for token in value.split(b","))
    names.discard(b"")
    return frozenset(names)


def strip_hop_by_hop(headers: Sequence[Header]) -> list[Header]:
    """``headers`` without hop-by-hop headers (fixed ones and those named by ``Connection``); order kept."""
    drop = HOP_BY_HOP | connection_options(headers)
    return [(key, value) for key, value in headers if key.lower() not in drop]


def host_header(host: str, port: int | None, scheme: str) -> str:
    """The ``Host`` value for a URL: the port only when it is not the scheme's default."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    default = 443 if scheme == "https" else 80
    return host if port is None or port == default else f"{host}:{port}"


def upstream_request_headers(
    client_headers: Sequence[Header],
    *,
    upstream_host: str,
    client_ip: str | None,
    scheme: str,
    traceparent: str,
    prediction_id: str | None,
    content_length: bytes | None = None,
) -> list[Header]:
    """Headers the upstream receives: the client's end-to-end headers and the proxy's own
    (``X-Prediction-ID`` only with a ``prediction_id``).

    ``content_length``: the client's declared length, for a body streamed on to the upstream
    (a body held whole gets its length from the HTTP client).

    ``X-Forwarded-For`` gets the client's address appended; ``X-Forwarded-Proto`` and
    ``X-Forwarded-Host`` are kept when an outer proxy set them (it saw the original request),
    otherwise set from this request.
    """
    drop = _NOT_FORWARDED_ON_REQUEST
    if first(client_headers, b"connection") is not None:
        drop = drop | connection_options(client_headers)
    out: list[Header] = [(b"host", upstream_host.encode("latin-1"))]
    forwarded_for: list[bytes] = []
    original_host: bytes | None = None
    has_proto = has_host = False
    for key, value in client_headers:  # one pass: this runs for every request
        name = key.lower()
        if name == b"host" and original_host is None:
            original_host = value
        if name in drop:
            continue
        if name == b"x-forwarded-for":
            forwarded_for.append(value)
            continue
        has_proto = has_proto or name == b"x-forwarded-proto"
        has_host = has_host or name == b"x-forwarded-host"
        out.append((key, value))
    if client_ip:
        forwarded_for.append(client_ip.encode("latin-1"))
    if forwarded_for:
        out.append((b"x-forwarded-for", b", ".join(forwarded_for)))
    if not has_proto:
        out.append((b"x-forwarded-proto", scheme.encode("latin-1")))
    if not has_host and original_host:
        out.append((b"x-forwarded-host", original_host))
    out.append((TRACEPARENT_HEADER, traceparent.encode("ascii")))
    if prediction_id is not None:
        out.append((PREDICTION_ID_HEADER, prediction_id.encode("ascii")))
    if content_length is not None:
        out.append((b"content-length", content_length))
    return out


def downstream_response_headers(
    upstream_headers: Sequence[Header], *, prediction_id: str | None, model_version: str | None
) -> list[Header]:
    """Headers the client receives: the upstream's end-to-end headers plus prediction id (when there is
    one) and model version."""
    drop = _NOT_FORWARDED_ON_RESPONSE
    if first(upstream_headers, b"connection") is not None:
        drop = drop | connection_options(upstream_headers)
    out = [(k, v) for k, v in upstream_headers if k.lower() not in drop]
    add_version = model_version and first(out, MODEL_VERSION_HEADER) is None
    if prediction_id is not None:
        out.append((PREDICTION_ID_HEADER, prediction_id.encode("ascii")))
    if add_version:
        out.append((MODEL_VERSION_HEADER, model_version.encode("latin-1")))  # type: ignore[union-attr]
    return out


def usable_request_id(request_id: bytes | None) -> str | None:
    """The client's ``X-Request-ID`` when it is a usable key (1-128 visible ASCII characters), else None."""
    if request_id is not None:
        request_id = request_id.strip()
        if _REQUEST_ID.fullmatch(request_id):
            return request_id.decode("ascii")
    return None


def choose_prediction_id(request_id: bytes | None) -> str:
    """The client's ``X-Request-ID`` when it is a usable key (:func:`usable_request_id`), else a UUIDv7."""
    return usable_request_id(request_id) or new_event_id()


def is_valid_traceparent(value: str) -> bool:
    """W3C Trace Context rules: lower-case hex, version not ff, non-zero ids; version 00 has no extra fields."""
    return parse_traceparent(value) is not None


def new_traceparent() -> str:
    """A new sampled trace: random 16-byte trace id and 8-byte parent id (all-zero ids are invalid).

    Trace ids need to be unique, not secret (W3C Trace Context; OpenTelemetry's SDK does the same),
    so the fast non-cryptographic generator is used: ``secrets`` costs a system call per id.
    """
    trace_id = parent_id = 0
    while not trace_id or not parent_id:
        trace_id, parent_id = random.getrandbits(128), random.getrandbits(64)
    return f"00-{trace_id:032x}-{parent_id:016x}-01"


def caller_traceparent(incoming: Sequence[bytes]) -> str | None:
    """The client's traceparent when there is exactly one valid one, else None."""
    if len(incoming) == 1:
        try:
            value = incoming[0].decode("ascii").strip()
        except UnicodeDecodeError:
            value = ""
        if is_valid_traceparent(value):
            return value
    return None


def traceparent_for_upstream(incoming: Sequence[bytes]) -> str:
    """The client's traceparent, unchanged, when there is exactly one valid one; otherwise a new trace."""
    return caller_traceparent(incoming) or new_traceparent()
