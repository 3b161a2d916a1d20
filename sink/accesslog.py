"""Rows of the access log: who asked what, when, the answer's status and size, and for SQL the statement
and the tables it read. Pure: the API's middleware writes what these build.

Query strings are stored with the value of every parameter whose name looks like a secret (token, key,
password, ...) replaced, so a token sent as ``?token=`` by mistake is not kept in the log.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

ACCESS_LOG_COLUMNS = (
    "time", "request_id", "reader", "role", "method", "path", "query", "status", "allowed", "response_bytes",
    "client", "statement", "statement_sha256", "tables",
)
REDACTED = "[redacted]"
# Stored whole up to this (longer statements are refused before they run); the digest covers the whole body.
MAX_STORED_STATEMENT_CHARS = 100_000
_SECRET_NAME = re.compile(r"token|secret|passw|pwd|auth|credential|signature|cookie|private|key$", re.IGNORECASE)


def redact_query(query: str) -> str:
    """``query`` (a query string as sent) with the values of secret-looking parameters replaced; the rest as sent."""
    parts = []
    for part in query.split("&"):
        name, equals, _ = part.partition("=")
        parts.append(f"{name}={REDACTED}" if equals and _SECRET_NAME.search(unquote_plus(name)) else part)
    return "&".join(parts)


def sql_statement(body: bytes) -> str:
    """The statement a ``/v1/sql`` body carries: its ``sql`` field, or the body itself when it is not such JSON."""
    try:
        value = json.loads(body)
    except ValueError:
        value = None
    if isinstance(value, dict) and isinstance(value.get("sql"), str):
        return str(value["sql"])
    return body.decode("utf-8", errors="replace")


def access_row(
    *, time: datetime, request_id: str, reader: str, role: str, method: str, path: str, query: str, status: int,
    size: int, client: str, statement: str | None = None, tables: Sequence[str] = (),
) -> list[Any]:
    """One row in the order of :data:`ACCESS_LOG_COLUMNS`; a refusal (401, 403) is stored as not allowed."""
    text = statement or ""
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest() if statement is not None else ""
    return [
        time, request_id, reader, role, method, path, redact_query(query), status, status not in (401, 403), size,
        client, text[:MAX_STORED_STATEMENT_CHARS], digest, list(tables),
    ]
