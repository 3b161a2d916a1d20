"""Audit queries: the joined trace of one prediction, and read-only SQL.

The SQL text lives in ``sink/sql/*.sql``; the guard and the shaping of results are pure functions.
Calls block on the store; a client is not thread-safe, so callers serialise use of a shared one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from clickhouse_connect.driver.client import Client

from sink.errors import ReadOnlySqlError
from sink.rows import to_jsonable

READ_STATEMENTS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN"})
MAX_SQL_CHARS = 100_000
# Engine-side backstop: refuses writes, DDL, setting changes and file/url/executable table functions.
READONLY_SETTINGS = {"readonly": 1}
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INTO_OUTFILE = re.compile(r"\bINTO\s+OUTFILE\b", re.IGNORECASE)


@cache
def sql_file(name: str) -> str:
    return (resources.files("sink") / "sql" / name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class CheckedSql:
    sql: str  # what is sent: the statement without trailing semicolons
    keyword: str


def _blank_literals(sql: str) -> str:
    """``sql`` with string literals and quoted identifiers replaced by ``x`` and comments by spaces.

    Keeps positions so that what remains is only code the guard may inspect for ``;`` and keywords;
    literals stay non-blank so that a statement ending in one is not cut short.
    """
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"`":
            j = i + 1
            while j < n and sql[j] != ch:
                j += 2 if sql[j] == "\\" else 1
            if j >= n:
                raise ReadOnlySqlError(f"unterminated {ch} quote starting at character {i}")
            out.append("x" * (j + 1 - i))
            i = j + 1
        elif sql.startswith("--", i) or ch == "#":
            j = sql.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            if j < 0:
                raise ReadOnlySqlError(f"unterminated /* comment starting at character {i}")
            out.append(" " * (j + 2 - i))
            i = j + 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def check_readonly_sql(sql: str) -> CheckedSql:
    """Accept one SELECT/WITH/SHOW/DESCRIBE/EXPLAIN statement; raise :class:`ReadOnlySqlError` otherwise."""
    if len(sql) > MAX_SQL_CHARS:
        raise ReadOnlySqlError(f"statement of {len(sql)} characters exceeds the limit of {MAX_SQL_CHARS}")
    code = _blank_literals(sql).rstrip()
    while code.endswith(";"):
        code = code[:-1].rstrip()
    if not code.strip():
        raise ReadOnlySqlError("empty statement; send one SELECT, WITH, SHOW, DESCRIBE or EXPLAIN statement")
    if ";" in code:
        raise ReadOnlySqlError("several statements separated by ';'; send exactly one statement per request")
    first = _WORD.match(code.lstrip(" \t\r\n("))
    keyword = first.group(0).upper() if first else code.split()[0]
    if keyword not in READ_STATEMENTS:
        raise ReadOnlySqlError(
            f"{keyword!r} statements are not allowed; this endpoint is read-only and accepts "
            "SELECT, WITH, SHOW, DESCRIBE and EXPLAIN"
        )
    if _INTO_OUTFILE.search(code):
        raise ReadOnlySqlError("INTO OUTFILE writes files on the server; remove it, results come back in the reply")
    return CheckedSql(sql=sql[: len(code)], keyword=keyword)


def run_readonly_sql(client: Client, sql: str) -> dict[str, Any]:
    """Run one read statement with ``readonly=1``; ``{"columns": [...], "rows": [[...], ...]}``, JSON-able."""
    checked = check_readonly_sql(sql)
    result = client.query(checked.sql, settings=READONLY_SETTINGS)
    return {
        "columns": list(result.column_names),
        "rows": [to_jsonable(list(row)) for row in result.result_rows],
    }


def shape_trace(row: dict[str, Any]) -> dict[str, Any]:
    """The audit view of one joined ``trace.sql`` row: registry records win over the trace's copies."""
    trace = json.loads(row["trace_payload"])
    model_found = row.get("model_version_event_id") is not None
    datasets = trace.get("dataset_digests") or (row.get("model_datasets") if model_found else None) or []
    return {
        "prediction_id": row["prediction_id"],
        "trace_event_id": row["trace_event_id"],
        "event_time": trace["event_time"],
        "endpoint": trace["endpoint"],
        "complete": trace["complete"],
        "missing": trace.get("missing"),
        "status": trace.get("status"),
        "latency_us": trace.get("latency_us"),
        "request_sha256": trace.get("request_sha256"),
        "request_body_sha256": row.get("request_body_sha256"),
        "response_sha256": trace.get("response_sha256"),
        "model_name": trace.get("model_name"),
        "model_version": trace.get("model_version"),
        "artifact_uri": row.get("model_artifact_uri") or trace.get("artifact_uri"),
        "artifact_sha256": row.get("model_artifact_sha256") or trace.get("artifact_sha256"),
        "training_run_id": trace.get("training_run_id") or row.get("model_run_id"),
        "code_repo": row.get("run_code_repo") or trace.get("code_repo"),
        "code_commit": row.get("run_code_commit") or trace.get("code_commit"),
        "dataset_digests": list(datasets),
        "feature_sets": trace.get("feature_sets") or [],
        "sources": {
            "trace": row["trace_event_id"],
            "request": row.get("request_event_id") or None,
            "model_version": row.get("model_version_event_id") or None,
            "run": row.get("run_event_id") or None,
        },
    }


def trace(client: Client, prediction_id: str) -> dict[str, Any] | None:
    """The latest stored PredictionTrace of ``prediction_id`` joined with its request, model and run.

    None when no trace is stored. Blocks on one query; not thread-safe on a shared client.
    """
    result = client.query(
        sql_file("trace.sql"), parameters={"prediction_id": prediction_id}, settings={"join_use_nulls": 1}
    )
    rows = list(result.named_results())
    if not rows:
        return None
    return shape_trace(rows[0])
