"""MLflow model-registry webhooks for ``provline mlflow follow``: a delivery starts the next round at once.

    listener = WebhookListener(("127.0.0.1", 8765), secret, on_delivery=follower_wake.set)
    listener.start()                       # serves in a daemon thread
    ...
    listener.close()

MLflow (3.3 and later, with a database backend) POSTs a JSON body to the webhook's URL with three
headers: ``X-MLflow-Delivery-Id``, ``X-MLflow-Timestamp`` (Unix seconds) and ``X-MLflow-Signature``,
``v1,`` and the base64 HMAC-SHA256, keyed by the webhook's secret, of
``"<delivery id>.<timestamp>.<body>"``. :func:`verify_delivery` checks all three (pure); a delivery
that fails is answered 401 and wakes nothing. The body itself is not read for what changed: the
round that follows asks MLflow, as a polling round would, so a lost or refused delivery costs only
the wait until the next poll.

MLflow refuses webhook URLs that are not https, or that resolve to a private address, unless the
server runs with ``MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https`` and
``MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true``; it also caches the webhooks of each event for
``MLFLOW_WEBHOOK_CACHE_TTL`` seconds (60), so a webhook just registered may miss the first minute.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from provline.producers.errors import ProducerError

log = logging.getLogger("provline.mlflow")

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"
TOLERANCE_S = 300.0  # a delivery signed longer ago (or further ahead) than this is refused as a replay
REMEMBERED_DELIVERIES = 10_000  # delivery ids kept to refuse a second delivery of the same one
MAX_BODY_BYTES = 1 << 20
# what changes an alias, a version or what the import reads of one (MLflow's entity.action names)
EVENTS = (("model_version", "created"), ("model_version_tag", "set"), ("model_version_tag", "deleted"),
          ("model_version_alias", "created"), ("model_version_alias", "deleted"))


class DeliveryRefused(ProducerError):
    """A webhook delivery whose signature, timestamp or delivery id does not hold; the text says which."""


def signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The ``X-MLflow-Signature`` MLflow sends for this delivery. Pure."""
    signed = delivery_id.encode() + b"." + timestamp.encode() + b"." + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def verify_delivery(secret: str, headers: Mapping[str, str], body: bytes, *, now: float,
                    tolerance_s: float = TOLERANCE_S) -> str:
    """The delivery id of a delivery signed with ``secret`` within ``tolerance_s`` of ``now`` (Unix
    seconds); DeliveryRefused otherwise. ``headers`` is keyed with MLflow's spelling of the names. Pure."""
    delivery_id, timestamp, given = (headers.get(h) for h in (DELIVERY_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER))
    if not delivery_id or not timestamp or not given:
        raise DeliveryRefused(f"a delivery needs the headers {DELIVERY_ID_HEADER}, {TIMESTAMP_HEADER} and "
                              f"{SIGNATURE_HEADER}; is the webhook registered with a secret?")
    try:
        sent_at = int(timestamp)
    except ValueError as exc:
        raise DeliveryRefused(f"{TIMESTAMP_HEADER} {timestamp!r} is not Unix seconds") from exc
    if abs(now - sent_at) > tolerance_s:
        raise DeliveryRefused(f"{TIMESTAMP_HEADER} {sent_at} is {now - sent_at:.0f} s from now, more than "
                              f"{tolerance_s:.0f} s: a replay, or a clock off")
    expected = signature(secret, delivery_id, timestamp, body)
    if not any(hmac.compare_digest(expected, part.strip()) for part in given.split(" ")):
        raise DeliveryRefused(f"{SIGNATURE_HEADER} does not match the body signed with the webhook's secret")
    return delivery_id


class _Seen:
    """Delivery ids already accepted, the most recent ``limit``; thread-safe."""

    def __init__(self, limit: int = REMEMBERED_DELIVERIES) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def first_time(self, delivery_id: str) -> bool:
        with self._lock:
            if delivery_id in self._ids:
                return False
            self._ids[delivery_id] = None
            if len(self._ids) > self._limit:
                self._ids.popitem(last=False)
            return True


class WebhookListener:
    """A small HTTP server (stdlib, a daemon thread, one thread per request) that calls ``on_delivery``
    for each verified delivery: 204 then; 401 for a refused one, 413 for a body over 1 MB.
    ``on_delivery`` runs on the request's thread and must not block. ``start`` raises OSError when
    the address cannot be bound; ``close`` blocks until the server thread ended."""

    def __init__(self, address: tuple[str, int], secret: str, *, on_delivery: Callable[[], None],
                 tolerance_s: float = TOLERANCE_S) -> None:
        self.secret, self.on_delivery, self.tolerance_s = secret, on_delivery, tolerance_s
        self.accepted = 0
        self.refused = 0
        self._address = address
        self._seen = _Seen()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server is not None else self._address[1]

    def start(self) -> WebhookListener:
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    self._answer(413, b"body too large")
                    return
                body = self.rfile.read(length)
                try:
                    headers = {name: value for name in (DELIVERY_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)
                               if (value := self.headers.get(name)) is not None}  # a case-blind lookup
                    delivery = verify_delivery(listener.secret, headers, body, now=time.time(),
                                               tolerance_s=listener.tolerance_s)
                    if not listener._seen.first_time(delivery):
                        raise DeliveryRefused(f"delivery {delivery} was delivered before: a replay")
                except DeliveryRefused as exc:
                    listener.refused += 1
                    log.warning("MLflow webhook delivery refused: %s", exc)
                    self._answer(401, str(exc).encode())
                    return
                listener.accepted += 1
                listener.on_delivery()
                self._answer(204, b"")

            def _answer(self, status: int, text: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's name)
                log.debug("webhook listener: " + format, *args)

        self._server = ThreadingHTTPServer(self._address, Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="mlflow-webhooks", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join()


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``127.0.0.1:8765``, ``[::1]:8765``) as ``(host, port)``; ValueError naming the form."""
    host, colon, port = text.rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--webhook-listen {text!r} is not HOST:PORT, e.g. 127.0.0.1:8765")
    return host, int(port)
