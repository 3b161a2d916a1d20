"""``provline verify`` against the store: feeds the pure checks of :mod:`provline.sink.verify`. Blocks.

    report = verify_store(client, catalog, trust)                 # every session, table and derived row
    report = verify_store(client, catalog, trust, sessions=["s"])  # one session's events and chain only
    report = verify_store(client, catalog, trust, anchors=[...])   # and against published anchors

Memory stays bounded for any store: events are read a page at a time, a session's chain shape is
computed by ClickHouse set-wise (who links to whom), and stored columns are re-derived a page at a
time through the sink's own ingest SQL over the raw events, compared inside ClickHouse. What is held
whole is the list of copies that another sending of the same event replaced (a crashed worker's batch).

The client must not be used by another thread meanwhile; give verification a connection of its own.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from clickhouse_connect.driver.client import Client

from provline.schemas import Catalog, SchemaError
from provline.sink.ingest import (
    JSON_SETTINGS,
    LEDGER_CONTENTS,
    LEDGER_TABLE,
    current_body,
    derived_select,
    event_view_select,
    ingest_format,
)
from provline.sink.lineage import LINEAGE_KINDS, edges_for
from provline.sink.queries import dead_lettered, stored_events_sql
from provline.sink.rows import TABLES, utc
from provline.sink.verify import (
    AnchoredSession,
    Finding,
    Links,
    Seals,
    Trust,
    anchor_findings,
    check_event,
    column_findings,
    deleted_findings,
    derived_findings,
    link_findings,
    replaced_findings,
)

PAGE_EVENTS = 2000
SAMPLES = 100  # of a kind of problem, listed per session or table (all are counted)
COMPARED_AWAY = frozenset({"raw", "kafka_topic", "kafka_partition", "kafka_offset"})  # not in the raw event
DERIVED_KEYS = {
    "prediction_index": "model_name, model_version, event_time, prediction_id, event_id, endpoint, complete, "
                        "training_run_id",
    "lineage_edges": "from_node, to_node, edge",
}

Progress = Callable[[str, int], None]  # (what, how many more done)


@dataclass
class Report:
    sessions: int = 0
    events: int = 0
    signatures: bool = False
    findings: list[Finding] = field(default_factory=list)
    unsealed: list[str] = field(default_factory=list)  # sessions with no final seal: running, crashed or cut
    heads: list[dict[str, Any]] = field(default_factory=list)  # per session: events, head, as an anchor takes them

    def as_dict(self) -> dict[str, Any]:
        return {"sessions": self.sessions, "events": self.events, "signatures": self.signatures,
                "findings": [f.as_dict() for f in self.findings], "unsealed": self.unsealed}


def _nothing(what: str, done: int) -> None:
    return None


def verify_store(
    client: Client, catalog: Catalog, trust: Trust, *, sessions: Sequence[str] | None = None,
    anchors: Iterable[tuple[str, Sequence[AnchoredSession]]] = (), retention_days: Mapping[str, int] | None = None,
    progress: Progress = _nothing,
) -> Report:
    """Everything ``provline verify`` checks (see :mod:`provline.sink.verify`); ``anchors`` are
    (anchor name, its sessions) whose signatures the caller has checked; ``retention_days`` the
    store's (what expired is not missing)."""
    retention_days = retention_days or {}
    report = Report(signatures=trust.enabled)
    names, copies = sessions_to_check(client, sessions)
    report.sessions = len(names)
    lineage_edges: set[tuple[str, str, str]] = set()
    for name in names:
        verify_session(client, catalog, trust, name, copies.get(name, Copies()), report, lineage_edges, progress)
    tables_filter = list(sessions) if sessions is not None else None
    report.findings += deleted_findings(deleted_events(client, tables_filter, retention_days))
    for kind, spec in TABLES.items():
        report.findings += column_findings(spec.table, rederived_differences(client, catalog, kind, tables_filter,
                                                                             progress))
    if sessions is None:
        report.findings += replaced_findings(replaced_events(client))
        report.findings += derived_differences(client, lineage_edges)
    stored = {head["session"]: head for head in report.heads}
    for anchor_name, anchored in anchors:
        anchored = list(anchored)
        counts = {item.session: stored[item.session]["events"] if item.session in stored else
                  session_event_count(client, item.session) for item in anchored}
        has_head = heads_present(client, anchored)
        report.findings += anchor_findings(anchored, counts, has_head, anchor_name)
    return report


def verify_session(client: Client, catalog: Catalog, trust: Trust, session: str, copies: Copies, report: Report,
                   lineage_edges: set[tuple[str, str, str]], progress: Progress) -> None:
    """One session: every event from its bytes, then its chain's shape and seals."""
    for page in session_pages(client, session):
        for row in page:
            findings, event = check_event(catalog, row, trust)
            report.findings += findings
            if event is not None and event.kind in LINEAGE_KINDS:
                lineage_edges.update((e.from_node, e.to_node, e.edge) for e in edges_for(event.kind, event.value))
        report.events += len(page)
        progress("events", len(page))
    links = session_links(client, session, copies)
    seals = session_seals(client, session)
    never_stored = dead_lettered(client, [(session, prev_hash) for _, prev_hash in links.dangling])
    report.findings += link_findings(session, links, seals, {h: letter for (_, h), letter in never_stored.items()})
    if seals.final_hash is None:
        report.unsealed.append(session)
    if len(links.heads) == 1:
        report.heads.append({"session": session, "events": links.events, "head": links.heads[0][1]})


def all_sessions(client: Client) -> list[str]:
    parts = [f"SELECT DISTINCT producer_session AS s FROM {spec.table}" for spec in TABLES.values()]
    result = client.query(f"SELECT DISTINCT s FROM ({' UNION ALL '.join(parts)}) ORDER BY s")
    return [row[0] for row in result.result_rows]


def session_pages(client: Client, session: str) -> Iterator[list[dict[str, Any]]]:
    """A session's stored events, a page at a time (by event id: any order does, the chain has its links)."""
    after = ""
    where = "producer_session = {session:String} AND event_id > {after:String}"
    while True:
        result = client.query(
            f"SELECT * FROM ({stored_events_sql(where)}) ORDER BY event_id LIMIT {{limit:UInt32}}",
            parameters={"session": session, "after": after, "limit": PAGE_EVENTS}, column_formats={"raw": "bytes"},
        )
        page = list(result.named_results())
        if page:
            yield page
        if len(page) < PAGE_EVENTS:
            return
        after = page[-1]["event_id"]


@dataclass(frozen=True)
class Copies:
    """A session's copies of events whose stored copy came from another sending: same id and contents,
    sent again (a processors worker taking over a crashed one's batch, from its own session). The event
    tables keep one copy; the ledger keeps them all, with the link each was sent with (sink/sql/0012)."""

    linked: list[tuple[str, str, str]] = field(default_factory=list)  # (event id, hash, prev_hash; '' starts)
    unlinked: frozenset[str] = frozenset()  # hashes of copies ledgered before 0012, whose link is unknown


def sessions_to_check(client: Client, sessions: Sequence[str] | None) -> tuple[list[str], dict[str, Copies]]:
    """``sessions`` (None: every stored session, and every session the ledger saw replaced) with the
    replaced copies of each (:func:`replaced_copies`)."""
    copies = replaced_copies(client, sessions)
    names = list(sessions) if sessions is not None else sorted(set(all_sessions(client)) | copies.keys())
    return names, copies


def replaced_copies(client: Client, sessions: Sequence[str] | None) -> dict[str, Copies]:
    """Per session (of ``sessions``, or every one), its ledgered copies that another copy of the same
    event replaced in the event tables. An id stored with other contents is no copy: verify names it
    replaced."""
    of_sessions = "producer_session IN {sessions:Array(String)}" if sessions is not None else "1"
    ids_of_sessions = (f"WHERE event_id IN (SELECT event_id FROM {LEDGER_TABLE} WHERE {of_sessions})"
                       if sessions is not None else "")
    stored = stored_events_sql("event_id IN (SELECT event_id FROM sent_again)",
                               columns="event_id, producer_session, hash")
    rows = client.query(
        f"WITH sent_again AS (SELECT event_id FROM {LEDGER_TABLE} {ids_of_sessions}\n"
        f"    GROUP BY event_id HAVING uniqExact(hash) > 1 AND {LEDGER_CONTENTS} = 1),\n"
        f"stored AS (SELECT event_id, producer_session, hash FROM ({stored}))\n"
        f"SELECT DISTINCT producer_session, event_id, hash, prev_hash FROM {LEDGER_TABLE}\n"
        f"WHERE {of_sessions} AND event_id IN (SELECT event_id FROM stored)\n"
        "    AND (producer_session, hash) NOT IN (SELECT producer_session, hash FROM stored)",
        parameters={"sessions": list(sessions or [])},
    ).result_rows
    linked: dict[str, list[tuple[str, str, str]]] = {}
    unlinked: dict[str, set[str]] = {}
    for session, event_id, digest, prev_hash in rows:
        if prev_hash is None:
            unlinked.setdefault(session, set()).add(digest)
        else:
            linked.setdefault(session, []).append((event_id, digest, prev_hash))
    return {session: Copies(sorted(linked.get(session, [])), frozenset(unlinked.get(session, ())))
            for session in linked.keys() | unlinked.keys()}


def session_links(client: Client, session: str, copies: Copies) -> Links:
    """The chain's shape: starts, links to absent events, events sharing a predecessor, and heads.

    One pass over the session's stored events and its ``copies`` another sending replaced: each gives
    its hash and its link, grouped by hash. A copy whose link the ledger does not know only fills the
    gap a stored event links across."""
    stored = stored_events_sql("producer_session = {session:String}", columns="event_id, hash, prev_hash")
    chain = (f"{stored}\nUNION ALL\nSELECT '' AS kind, '' AS table, c.1 AS event_id, c.2 AS hash, c.3 AS prev_hash "
             "FROM (SELECT arrayJoin({copies:Array(Tuple(String, String, String))}) AS c)")
    row = client.query(
        "WITH links AS (\n"
        "    SELECT tupleElement(pair, 1) AS link, countIf(tupleElement(pair, 2) = 0) AS owners,\n"
        "        countIf(tupleElement(pair, 2) = 1) AS followed, anyIf(event_id, tupleElement(pair, 2) = 0) AS owner,\n"
        f"        groupArrayIf({SAMPLES})(event_id, tupleElement(pair, 2) = 1) AS followers\n"
        f"    FROM ({chain})\n"
        "    ARRAY JOIN [tuple(hash, 0), tuple(ifNull(prev_hash, ''), 1)] AS pair\n"
        "    GROUP BY link)\n"
        "SELECT sum(owners), arrayFlatten(groupArrayIf(followers, link = '')),\n"
        "    groupArrayIf((link, followers), link != '' AND owners = 0),\n"
        f"    groupArrayIf({SAMPLES})((link, followers), link != '' AND followed > 1),\n"
        f"    groupArrayIf({SAMPLES})((owner, link), owners > 0 AND followed = 0)\n"
        "FROM links",
        parameters={"session": session, "copies": copies.linked},
    ).result_rows[0]
    gaps = {str(link): list(followers) for link, followers in row[2]}
    filled = copies.unlinked & gaps.keys()
    dangling = [(event_id, link) for link, followers in gaps.items() if link not in filled
                for event_id in followers][:SAMPLES]
    return Links(events=int(row[0] or 0) + len(filled), roots=list(row[1])[:SAMPLES], dangling=dangling,
                 forks=[(p, list(ids)) for p, ids in row[3]], heads=[tuple(x) for x in row[4]])


def session_seals(client: Client, session: str) -> Seals:
    row = client.query(
        "SELECT max(sealed_count), argMaxIf(event_id, event_time, is_final), argMaxIf(hash, event_time, is_final), "
        "countIf(is_final) FROM session_seals FINAL WHERE producer_session = {session:String}",
        parameters={"session": session},
    ).result_rows[0]
    if row[0] is None:
        return Seals()
    if row[3] == 0:
        return Seals(sealed_count=int(row[0]))
    chain = stored_events_sql("producer_session = {session:String} AND prev_hash = {hash:String}",
                              columns="event_id")
    after = client.query(f"SELECT event_id FROM ({chain}) ORDER BY event_id LIMIT {SAMPLES}",
                         parameters={"session": session, "hash": row[2]}).result_rows
    return Seals(sealed_count=int(row[0]), final_event_id=row[1], final_hash=row[2],
                 after_final=[event_id for (event_id,) in after])


def session_event_count(client: Client, session: str) -> int:
    chain = stored_events_sql("producer_session = {session:String}", columns="event_id")
    return int(client.query(f"SELECT count() FROM ({chain})", parameters={"session": session}).result_rows[0][0])


def heads_present(client: Client, anchored: Sequence[AnchoredSession]) -> dict[str, bool]:
    """Per anchored session, whether its anchored head is still there: stored in the session, or the
    session's copy of an event another session emitted again (still stored under its id)."""
    pairs = [(item.session, item.head) for item in anchored]
    in_session = stored_events_sql("(producer_session, hash) IN {pairs:Array(Tuple(String, String))}",
                                   columns="producer_session, hash")
    copies = stored_events_sql("event_id IN (SELECT event_id FROM copies)", columns="event_id")
    rows = client.query(
        f"WITH copies AS (SELECT producer_session, hash, event_id FROM {LEDGER_TABLE}\n"
        "    WHERE (producer_session, hash) IN {pairs:Array(Tuple(String, String))})\n"
        f"SELECT producer_session FROM ({in_session})\n"
        "UNION DISTINCT\n"
        f"SELECT producer_session FROM copies WHERE event_id IN (SELECT event_id FROM ({copies}))",
        parameters={"pairs": pairs},
    ).result_rows
    present = {str(session) for (session,) in rows}
    return {item.session: item.session in present for item in anchored}


def replaced_events(client: Client) -> list[tuple[str, str, int]]:
    """(event id, table, how many different contents) of ids the ledger saw stored with other contents."""
    rows = client.query(
        f"SELECT event_id, any(event_table), {LEDGER_CONTENTS} AS contents FROM {LEDGER_TABLE} "
        f"GROUP BY event_id HAVING contents > 1 ORDER BY event_id LIMIT {SAMPLES * 10}"
    ).result_rows
    return [(str(event_id), str(table), int(contents)) for event_id, table, contents in rows]


def deleted_events(client: Client, sessions: list[str] | None,
                   retention_days: Mapping[str, int]) -> list[tuple[str, str, str]]:
    """(event id, table, session) of events the ledger saw stored that no table holds now; those a
    table's retention expired are left out."""
    expired = " OR ".join(f"(event_table = '{table}' AND event_time < now64(6) - INTERVAL {int(days)} DAY)"
                          for table, days in sorted(retention_days.items()))
    where = "producer_session IN {sessions:Array(String)}" if sessions is not None else "1"
    stored = stored_events_sql("event_id IN (SELECT event_id FROM recorded)", columns="event_id")
    rows = client.query(
        f"WITH recorded AS (SELECT DISTINCT event_id FROM {LEDGER_TABLE} WHERE {where}"
        f"{f' AND NOT ({expired})' if expired else ''})\n"
        f"SELECT event_id, any(event_table), any(producer_session) FROM {LEDGER_TABLE}\n"
        f"WHERE event_id IN (SELECT event_id FROM recorded) AND event_id NOT IN (SELECT event_id FROM ({stored}))\n"
        f"GROUP BY event_id ORDER BY event_id LIMIT {SAMPLES * 10}",
        parameters={"sessions": sessions or []},
    ).result_rows
    return [(str(event_id), str(table), str(session)) for event_id, table, session in rows]


def rederived_differences(client: Client, catalog: Catalog, kind: str, sessions: list[str] | None,
                          progress: Progress) -> list[tuple[str, str, list[str]]]:
    """(event id, session, differing columns) of ``kind``'s stored rows against the same rows made again from
    their raw events by the sink's ingest view SQL. Events whose bytes are not an event are left out (the
    per-event check names them)."""
    spec = TABLES[kind]
    fmt = ingest_format(catalog, kind)
    compared = [name for name in spec.columns if name not in COMPARED_AWAY]
    differs = ", ".join(f"if(s.`{name}` <=> r.`{name}`, '', '{name}')" for name in compared)
    where = "producer_session IN {sessions:Array(String)}" if sessions is not None else "1"
    found: list[tuple[str, str, list[str]]] = []
    after = ""
    while True:
        rows = client.query(
            f"SELECT event_id, raw, kafka_topic, kafka_partition, kafka_offset FROM {spec.table} FINAL "
            f"WHERE event_id > {{after:String}} AND {where} ORDER BY event_id LIMIT {PAGE_EVENTS}",
            parameters={"after": after, "sessions": sessions or []}, column_formats={"raw": "bytes"},
        ).result_rows
        if not rows:
            return found
        after = rows[-1][0]
        raws, bodies, positions, ids = [], [], [], []
        for event_id, raw, topic, partition, offset in rows:
            try:
                record, body = current_body(catalog, bytes(raw))
            except (SchemaError, ValueError):
                continue
            if record != kind:
                continue  # an event of another kind in this table: check_event's columns finding names it
            raws.append(bytes(raw))
            bodies.append(body)
            positions.append((topic, partition, offset))
            ids.append(event_id)
        if ids:
            container = base64.b64encode(fmt.container(raws, bodies, positions)).decode("ascii")
            rederived = event_view_select(fmt, source="format(Avro, base64Decode({container:String}))")
            result = client.query(
                f"SELECT s.event_id, s.producer_session, arrayFilter(x -> x != '', [{differs}])\n"
                f"FROM (SELECT * FROM {spec.table} FINAL WHERE event_id IN {{ids:Array(String)}}) AS s\n"
                f"LEFT JOIN ({rederived}) AS r ON s.event_id = r.event_id\n"
                "WHERE length(arrayFilter(x -> x != '', "
                f"[{differs}])) > 0",
                parameters={"container": container, "ids": ids}, settings=_json_settings(),
            )
            found += [(str(e), str(s), list(columns)) for e, s, columns in result.result_rows]
        progress("rederived", len(rows))
        if len(rows) < PAGE_EVENTS:
            return found


def _json_settings() -> dict[str, Any]:
    """JSON_SETTINGS as query settings (the view's SELECT also carries them)."""
    settings: dict[str, Any] = {}
    for part in JSON_SETTINGS.split(","):
        name, _, value = part.partition("=")
        settings[name.strip()] = value.strip().strip("'")
    return settings


def derived_differences(client: Client, lineage_edges: set[tuple[str, str, str]]) -> list[Finding]:
    """prediction_index and the served edges against what the stored traces give; the other lineage edges
    against what the verified lineage events give (``lineage_edges``)."""
    findings = []
    traces = "(SELECT * FROM prediction_traces FINAL)"
    for table in ("prediction_index", "lineage_edges"):
        keys = DERIVED_KEYS[table]
        derived = f"SELECT {keys} FROM ({derived_select(table, traces)})"
        stored = f"SELECT {keys} FROM {table} FINAL" + (" WHERE edge = 'served'" if table == "lineage_edges" else "")
        # DISTINCT: ClickHouse's EXCEPT is EXCEPT ALL by default, and a prediction with a labelled revision
        # (two traces, one served edge) derives its edge twice.
        missing = client.query(f"SELECT * FROM ({derived} EXCEPT DISTINCT {stored}) LIMIT {SAMPLES}").result_rows
        extra = client.query(f"SELECT * FROM ({stored} EXCEPT DISTINCT {derived}) LIMIT {SAMPLES}").result_rows
        findings += derived_findings(table, map(_row_text, missing), map(_row_text, extra))
    stored_edges = {tuple(row) for row in client.query(
        "SELECT from_node, to_node, edge FROM lineage_edges FINAL WHERE edge != 'served'").result_rows}
    findings += derived_findings("lineage_edges", map(_row_text, sorted(lineage_edges - stored_edges)),
                                 map(_row_text, sorted(stored_edges - lineage_edges)))
    return findings


def _row_text(row: Iterable[Any]) -> str:
    return "(" + ", ".join(str(value) for value in row) + ")"


def anchor_heads(client: Client) -> list[dict[str, Any]]:
    """Every session's event count and chain head, as an anchor records them, and when (the store's
    clock) its last event then was ledgered; ``intact`` is False for a session whose chain is already
    broken (verify says why; an anchor should not vouch for it)."""
    heads = []
    # read first: what was ledgered by then, the scans below see (sink.chain.anchored relies on it)
    stored_until = {str(session): utc(until).isoformat() for session, until in client.query(
        "SELECT producer_session, max(inserted) FROM event_ledger GROUP BY producer_session").result_rows}
    names, copies = sessions_to_check(client, None)
    for session in names:
        links = session_links(client, session, copies.get(session, Copies()))
        intact = len(links.roots) == 1 and not links.dangling and not links.forks and len(links.heads) == 1
        heads.append({"session": session, "events": links.events, "intact": intact,
                      "head": links.heads[0][1] if len(links.heads) == 1 else None,
                      "stored_until": stored_until.get(session)})
    return heads
