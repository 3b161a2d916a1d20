"""Structured logs for the sidecar process: one JSON object per line, or plain text.

Only :func:`configure_logging` touches logging, and only when the program has not configured it
(a program that calls ``logging.basicConfig`` first keeps its own format).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has (and uvicorn's ANSI-coloured copy of its message); anything else
# was passed with ``extra=`` and is logged as a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName", "color_message",
}


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", ...extra fields, "exception"}`` on one line."""

    def __init__(self, *, static: dict[str, Any] | None = None) -> None:
        super().__init__()
        self._static = static or {}

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **self._static,
        }
        for name, value in vars(record).items():
            if name not in _STANDARD:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(log_format: str, *, worker: int | None = None, level: int = logging.INFO) -> None:
    """Log to stderr as JSON lines or text, unless the root logger already has handlers."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    static = {} if worker is None else {"worker": worker}
    if log_format == "json":
        handler.setFormatter(JsonFormatter(static=static))
    else:
        prefix = "" if worker is None else f"[worker {worker}] "
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s %(name)s {prefix}%(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
