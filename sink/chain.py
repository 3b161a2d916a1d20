"""The complete trace: one prediction's chain of custody as nodes and edges, each record with its
verification status. Pure functions; the reads are ``sink.queries.chain_records`` and ``chain_ledger``.

Every node is built from its event's own stored bytes (``raw``, exactly as read from Kafka), decoded
and checked by the same :func:`provline.sink.verify.check_event` that ``provline verify`` runs, so
what the node says is what was signed. A record that fails a check is shown, never hidden, with
``verification.status`` ``"not_verified"`` and the reason in ``detail``. Per record:

- ``hash_chain``: the bytes decode and hash to the hash they claim; the row's envelope columns are the
  event's; the ledger recorded the id with this hash and these contents only (a payload column changed
  after insert, or an id re-published with other contents, fails); and the event it links to
  (``prev_hash``) is recorded in its session, or was dead-lettered and never stored (the detail names
  the dead letter; ``provline verify`` lists the gap), or it starts its chain.
- ``signature``: signed by a key trusted for its producer (``PROVLINE_EVIDENCE__TRUSTED_KEYS``); None
  when no keys are configured.
- ``anchor``: always None here: anchors are published outside the store, and ``provline verify
  --anchor`` checks them against the whole session (a deleted tail leaves no trace on one record).

Node ids, kinds and edges follow the contract of issue 18 (README, "The complete trace").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from provline.schemas import Catalog
from provline.sink.anchor import AnchorHead
from provline.sink.lineage import commit_node, model_node, node
from provline.sink.rows import to_jsonable, utc
from provline.sink.verify import ALTERED, BAD_SIGNATURE, COLUMNS, UNSIGNED, UNTRUSTED, Trust, check_event

VERIFIED, NOT_VERIFIED, UNCHECKED = "verified", "not_verified", "unchecked"
MAX_LABEL = 40
SIGNATURE_PROBLEMS = frozenset({UNSIGNED, UNTRUSTED, BAD_SIGNATURE})
NO_KEYS = "signatures not checked: no trusted keys configured (PROVLINE_EVIDENCE__TRUSTED_KEYS)"
NO_ANCHOR = "anchors are held outside the store: provline verify --anchor checks them"
# A record's anchor status (sink.chain.anchored), when provline serve reads anchors (PROVLINE_ANCHOR__DESTINATION).
ANCHORED, PENDING, UNANCHORED, HEAD_MISSING = "anchored", "pending", "unanchored", "head_missing"
ANCHOR_STATUSES = (ANCHORED, PENDING, UNANCHORED, HEAD_MISSING)  # best first: a node of several shows its worst
# Of chain_prediction.sql's rows, the column an answer reads (as payload_or_sha256) where it reads no payload.
STORED_COLUMNS = {"request": "body_sha256", "response": "body_sha256"}


@dataclass(frozen=True)
class LedgerEntry:
    """One ledger row of an event id: the hash and contents it was stored with (sink/sql/0005, 0007)."""

    hash: str
    content_digest: str = ""
    content_sha256: str = ""
    inserted: datetime | None = None  # when the sink stored it (the store's clock)


@dataclass
class Record:
    """One stored event of the chain, decoded from its bytes (``value`` None when they do not decode)."""

    kind: str
    event_id: str
    event_time: datetime
    value: dict[str, Any] | None
    verification: dict[str, Any]
    session: str = ""
    hash: str = ""
    ledgered: datetime | None = None  # when the ledger first recorded it as stored (None: not recorded)

    @property
    def fields(self) -> dict[str, Any]:
        return self.value or {}


def verification(hash_chain: bool | None, signature: bool | None, details: Sequence[str]) -> dict[str, Any]:
    """The ``verification`` object: not_verified when a check failed, verified when the chain held (and the
    signature, when checked), unchecked when nothing could be."""
    if hash_chain is False or signature is False:
        status = NOT_VERIFIED
    elif hash_chain is True:
        status = VERIFIED
    else:
        status = UNCHECKED
    return {"status": status, "hash_chain": hash_chain, "signature": signature, "anchor": None,
            "detail": "; ".join(details)}


@dataclass(frozen=True)
class Checked:
    """What a record's own bytes say (decoded, hashed, signature checked): the part of its verification
    that depends on nothing else stored, so it may be kept while the record's table is unchanged."""

    kind: str
    event_id: str
    event_time: datetime
    hash: str
    prev_hash: str | None
    session: str
    payload_digest: str
    value: dict[str, Any] | None
    chain_problems: tuple[str, ...]
    signature_problems: tuple[str, ...]


def check_row(catalog: Catalog, trust: Trust, row: Mapping[str, Any]) -> Checked:
    """One stored row (kind, event_id, event_time, hash, prev_hash, producer_session, producer_name, raw,
    payload_digest) checked against its own bytes by verify's :func:`check_event`."""
    findings, event = check_event(catalog, {**row, "raw": bytes(row["raw"])}, trust)
    chain_problems = [f.detail for f in findings if f.problem in (ALTERED, COLUMNS)]
    if event is not None and event.kind != row["kind"]:
        chain_problems.append(f"its bytes are a {event.kind}, not the {row['kind']} its table holds")
    column = STORED_COLUMNS.get(str(row.get("source", "")))
    if event is not None and column is not None and row.get("payload_or_sha256") != event.value.get(column):
        chain_problems.append(f"its stored {column} is not its bytes': the row was altered")
    return Checked(
        kind=str(row["kind"]), event_id=str(row["event_id"]), event_time=row["event_time"], hash=str(row["hash"]),
        prev_hash=row.get("prev_hash") or None, session=str(row["producer_session"]),
        payload_digest=str(row.get("payload_digest") or ""),
        value=to_jsonable(dict(event.value)) if event is not None else None,
        chain_problems=tuple(chain_problems),
        signature_problems=tuple(f.detail for f in findings if f.problem in SIGNATURE_PROBLEMS),
    )


def finish_record(checked: Checked, trust: Trust, ledger: Sequence[LedgerEntry], link_recorded: bool,
                  dead_letter: str | None = None) -> Record:
    """The record with its whole verification: its bytes' checks, and what the ledger says of it
    (``ledger``: its id's ledger rows; ``link_recorded``: the event its prev_hash names is recorded in its
    session; else ``dead_letter``: how the dead letter that held that event, never stored, names itself).
    A dead-lettered predecessor is not this record's problem: ``provline verify`` lists the gap."""
    chain_problems = list(checked.chain_problems) + ledger_problems(checked.hash, checked.payload_digest, ledger)
    if checked.prev_hash and not link_recorded and dead_letter is None:
        chain_problems.append(f"the event before it in its chain ({checked.prev_hash[:16]}…) is not recorded in "
                              "its session: it was deleted or this one was inserted")
    details = chain_problems + list(checked.signature_problems)
    if not chain_problems:
        link = ("starts its chain" if not checked.prev_hash else "linked to its predecessor" if link_recorded
                else f"linked to a predecessor ({checked.prev_hash[:16]}…) that was dead-lettered, never stored: "
                     f"{dead_letter}")
        details.insert(0, f"bytes hash to their hash; ledgered as stored; {link}")
    if trust.enabled:
        signature: bool | None = not checked.signature_problems
        if not checked.signature_problems:
            details.append("signed by a trusted key")
    else:
        signature = None
        details.append(NO_KEYS)
    details.append(NO_ANCHOR)
    stored = [entry.inserted for entry in ledger if entry.hash == checked.hash and entry.inserted is not None]
    return Record(checked.kind, checked.event_id, checked.event_time, checked.value,
                  verification(not chain_problems, signature, details), checked.session, checked.hash,
                  min(stored, default=None))


def anchored(record: Record, head: AnchorHead | None, head_stored: bool) -> Record:
    """The record with its anchor status, from the newest trusted anchor of its session (``head``; None: no
    anchor lists it) and whether the ledger still records that head in the session.

    An anchor vouches only for sessions whose chain was intact when it was taken, so a record of the
    session that was in the store then lies before the head it signed: deleting or rewriting the record
    shows against the anchor (``provline verify --anchor``). In the store then: ledgered no later than
    the anchor's ``stored_until`` for the session (the store's clock; anchors without it: its
    ``created``, the anchoring host's clock). A record stored later waits for the next anchor
    (``pending``)."""
    if head is None:
        anchor: dict[str, Any] = {"status": UNANCHORED, "anchor": None, "created": None}
        text = "no trusted anchor lists its session yet"
    else:
        anchor = {"status": ANCHORED, "anchor": head.name, "created": head.created, "root": head.root,
                  "head": head.head}
        until = datetime.fromisoformat(head.stored_until or head.created)
        if record.hash == head.head:
            text = f"its session's head in the anchor of {head.created}"
        elif not head_stored:
            anchor["status"] = HEAD_MISSING
            text = (f"the head ({head.head[:16]}…) its session's anchor of {head.created} signed is not in the "
                    "store: events of the session were deleted (provline verify --anchor says which)")
        elif record.ledgered is not None and utc(record.ledgered) <= utc(until):
            text = f"covered by the anchor of {head.created}: stored before it was taken"
        else:
            anchor["status"] = PENDING
            text = f"stored after its session's newest anchor ({head.created}): the next anchor covers it"
    details = [d for d in record.verification["detail"].split("; ") if d and d != NO_ANCHOR] + [text]
    return replace(record, verification={**record.verification, "anchor": anchor, "detail": "; ".join(details)})


def ledger_problems(row_hash: str, payload_digest: str, ledger: Sequence[LedgerEntry]) -> list[str]:
    """What the ledger says against a stored row: an id stored with other contents, or a payload that is not
    the one ledgered at insert. Rows ledgered before sink/sql/0007 have no content_digest to compare."""
    problems = []
    contents = {entry.content_digest for entry in ledger if entry.content_digest}
    legacy = {entry.content_sha256 for entry in ledger if entry.content_sha256}
    if len(contents) > 1 or len(legacy) > 1:
        problems.append("the ledger recorded this id with different contents: an event was re-published to "
                        "replace another")
    ours = {entry.content_digest for entry in ledger if entry.hash == row_hash and entry.content_digest}
    if ours and payload_digest and payload_digest not in ours:
        problems.append("its stored payload is not the one ledgered at insert: the row was altered")
    if ledger and not any(entry.hash == row_hash for entry in ledger):
        problems.append("the ledger recorded this id with another hash: the row was replaced")
    return problems


def combined(records: Iterable[Record]) -> dict[str, Any]:
    """One verification over several records (a node made of several): the worst of each check."""
    items = list(records)
    if not items:
        return verification(None, None, ["no stored record"])

    def worst(name: str) -> bool | None:
        values = [r.verification[name] for r in items]
        return False if False in values else (None if None in values else True)

    failing = [f"{r.kind} {r.event_id}: {r.verification['detail']}" for r in items
               if r.verification["status"] == NOT_VERIFIED]
    details = failing or [f"{len(items)} records: " + items[0].verification["detail"]]
    anchors = [r.verification["anchor"] for r in items if r.verification["anchor"] is not None]
    anchor = max(anchors, key=lambda a: ANCHOR_STATUSES.index(a["status"]), default=None)
    return {**verification(worst("hash_chain"), worst("signature"), details), "anchor": anchor}


# ---------------------------------------------------------------- shaping


def newest(records: Iterable[Record]) -> Record | None:
    return max(records, key=lambda r: (r.event_time, r.event_id), default=None)


def label(text: str) -> str:
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "…"


def pick(value: Mapping[str, Any], *names: str) -> dict[str, Any]:
    return {name: value.get(name) for name in names}


@dataclass
class Graph:
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    edges: list[dict[str, str]] = field(default_factory=list)

    def add(self, ident: str, kind: str, text: str, record: Record | None, fields: dict[str, Any],
            checked: dict[str, Any] | None = None) -> str:
        if ident not in self.nodes:
            self.nodes[ident] = {
                "id": ident, "kind": kind, "label": label(text), "event_id": record.event_id if record else None,
                "fields": fields, "verification": checked or (record.verification if record else combined([])),
            }
        return ident

    def link(self, source: str, target: str, relation: str) -> None:
        edge = {"from": source, "to": target, "relation": relation}
        if source in self.nodes and target in self.nodes and edge not in self.edges:
            self.edges.append(edge)

    def as_dict(self) -> dict[str, Any]:
        return {"nodes": list(self.nodes.values()), "edges": self.edges}


def payload_text(body: Any) -> str | None:
    """A stored body as the JSON answer carries it: base64 text (``to_jsonable``), or None."""
    return body if isinstance(body, str) else None


def build_chain(prediction_id: str, records: Sequence[Record], *, payloads: bool) -> dict[str, Any]:
    """The ``chain`` of a trace answer from the chain's checked records; ``payloads``: include the raw request
    and response bodies (roles that may see payloads). A record not stored gives no node."""
    by_kind: dict[str, list[Record]] = {}
    for record in records:
        by_kind.setdefault(record.kind, []).append(record)
    graph = Graph()
    trace = newest(by_kind.get("PredictionTrace", []))
    if trace is None:
        return graph.as_dict()
    t = trace.fields
    request, response = newest(by_kind.get("InferenceRequest", [])), newest(by_kind.get("InferenceResponse", []))
    prediction = graph.add(node("prediction", prediction_id), "prediction", prediction_id, trace,
                           _prediction_fields(t, request, response, payloads),
                           combined(r for r in (trace, request, response) if r is not None))
    graph.nodes[prediction]["event_id"] = trace.event_id

    name, version = t.get("model_name"), t.get("model_version")
    model_record = newest(r for r in by_kind.get("ModelVersion", [])
                          if (r.fields.get("model_name"), r.fields.get("version")) == (name, version))
    model = None
    if model_record is not None and name and version:
        m = model_record.fields
        model = graph.add(model_node(name, version), "model", f"{name}@{version}", model_record, {
            **pick(m, "model_name", "version", "artifact_uri", "artifact_sha256", "framework", "run_id",
                   "feature_sets", "datasets", "flavors", "io_signature"),
            "registered_at": m.get("event_time"),
        })
        graph.link(prediction, model, "served_by")

    run_id = t.get("training_run_id") or (model_record.fields.get("run_id") if model_record else None)
    run_records = [r for r in by_kind.get("RunEvent", []) if r.fields.get("run_id") == run_id] if run_id else []
    run = _add_run(graph, str(run_id), run_records) if run_records else None
    if model and run:
        graph.link(model, run, "trained_by")

    digests = list(dict.fromkeys([*(t.get("dataset_digests") or []),
                                  *((model_record.fields.get("datasets") or []) if model_record else [])]))
    datasets = {}
    for digest in digests:
        stored = newest(r for r in by_kind.get("DatasetVersion", []) if r.fields.get("digest") == digest)
        if stored is not None:
            datasets[digest] = graph.add(node("dataset", digest), "dataset", f"{stored.fields.get('name')} {digest}",
                                         stored, _dataset_fields(stored.fields))
            graph.link(run or model or prediction, datasets[digest], "trained_on")

    feature_digests = list(dict.fromkeys([*(t.get("feature_sets") or []),
                                          *((model_record.fields.get("feature_sets") or []) if model_record else [])]))
    for digest in feature_digests:
        stored = newest(r for r in by_kind.get("FeatureSetVersion", []) if r.fields.get("digest") == digest)
        if stored is not None:
            f = stored.fields
            ident = graph.add(node("feature_set", digest), "feature_set",  # the lineage graph's id
                              str(f.get("name")), stored, {
                                  **pick(f, "name", "digest", "input_datasets", "run_id"),
                                  "features": [pick(x, "name", "dtype", "code", "parameters")
                                               for x in f.get("features") or []],
                              })
            graph.link(model or prediction, ident, "features")
            for source in f.get("input_datasets") or []:
                if source in datasets:
                    graph.link(ident, datasets[source], "input")

    if model is not None:
        for record in sorted(by_kind.get("Evaluation", []), key=lambda r: (r.event_time, r.event_id)):
            e = record.fields
            if (e.get("model_name"), e.get("model_version")) != (name, version):
                continue
            ident = graph.add(node("evaluation", record.event_id), "evaluation",
                              f"{'passed' if e.get('passed') else 'failed'} {e.get('slice') or ''}".strip(),
                              record, {**pick(e, "dataset", "slice", "metrics", "passed", "tests", "run_id"),
                                       "event_time": e.get("event_time")})
            graph.link(model, ident, "evaluated")
        for record in sorted(by_kind.get("Decision", []), key=lambda r: (r.event_time, r.event_id)):
            d = record.fields
            if d.get("subject") != model:
                continue
            ident = graph.add(node("approval", record.event_id), "approval",
                              f"{str(d.get('outcome', '')).lower()} by {d.get('actor')} ({d.get('role')})", record,
                              {**pick(d, "subject", "transition", "outcome", "actor", "role", "rationale",
                                      "alternatives", "risk_refs"), "event_time": d.get("event_time")})
            graph.link(model, ident, "approved")
        in_force, before = deployments_at(by_kind.get("Deployment", []), t)
        if in_force is not None:
            current = graph.add(node("deployment", in_force.event_id), "deployment",
                                _deployment_label(in_force.fields), in_force, _deployment_fields(in_force, True))
            graph.link(model, current, "deployed")
            if before is not None:
                previous = graph.add(node("deployment", before.event_id), "deployment",
                                     _deployment_label(before.fields), before, _deployment_fields(before, False))
                graph.link(current, previous, "replaced")

    feedback = newest(r for r in by_kind.get("Feedback", []) if r.fields.get("prediction_id") in (None, prediction_id))
    if feedback is not None:
        g = feedback.fields
        text = g.get("label") if g.get("label") is not None else g.get("outcome")
        ident = graph.add(node("ground_truth", feedback.event_id), "ground_truth", str(text), feedback,
                          {**pick(g, "label", "outcome", "source", "observed_time", "client_request_id"),
                           "arrived": g.get("event_time")})
        graph.link(prediction, ident, "labelled")
    return graph.as_dict()


def _prediction_fields(t: Mapping[str, Any], request: Record | None, response: Record | None,
                       payloads: bool) -> dict[str, Any]:
    q = request.fields if request else {}
    r = response.fields if response else {}
    fields = {
        **pick(t, "endpoint", "request_time", "response_time", "status", "latency_us", "request_sha256",
               "response_sha256", "model_name", "model_version", "served_version", "artifact_sha256",
               "request_id", "complete", "missing"),
        "request_body_sha256": q.get("body_sha256"),
        "response_body_sha256": r.get("body_sha256"),
        "content_type": q.get("content_type"),
        "client_id": q.get("client_id"),
        "features": t.get("features") or q.get("features") or {},
        "outputs": t.get("outputs") or r.get("outputs") or {},
        "row_count": t.get("row_count"),
        "records": [{"kind": x.kind, "event_id": x.event_id, "status": x.verification["status"]}
                    for x in (request, response) if x is not None],
    }
    if payloads:
        fields["request_body"] = payload_text(q.get("body"))
        fields["request_body_truncated"] = q.get("body_truncated")
        fields["response_body"] = payload_text(r.get("body"))
        fields["response_body_truncated"] = r.get("body_truncated")
    return fields


def _add_run(graph: Graph, run_id: str, records: list[Record]) -> str:
    """The run node (its newest state change; the code and environment from the newest that carries them),
    and its commit and environment nodes."""
    records = sorted(records, key=lambda r: (r.event_time, r.event_id))
    latest = records[-1]
    v = latest.fields

    def carried(name: str) -> Record | None:
        return next((r for r in reversed(records) if r.fields.get(name)), None)

    hyper = carried("hyperparameters")
    seeds = carried("seeds")
    text = f"{v['name']} ({run_id})" if v.get("name") and v.get("name") != run_id else run_id
    run = graph.add(node("run", run_id), "run", text, latest, {
        **pick(v, "run_id", "name", "state", "stage", "parent_run_id", "inputs", "outputs", "metrics", "error",
               "exit_code", "duration_ms"),
        "hyperparameters": hyper.fields["hyperparameters"] if hyper else {},
        "seeds": seeds.fields["seeds"] if seeds else {},
        "started": records[0].fields.get("event_time"),
        "states": [{"state": r.fields.get("state"), "event_id": r.event_id, "event_time": r.fields.get("event_time"),
                    "status": r.verification["status"]} for r in records],
    }, combined(records))
    code_record = next((r for r in reversed(records) if (r.fields.get("code") or {}).get("commit")), None)
    if code_record is not None:
        code = code_record.fields["code"]
        ident = graph.add(commit_node(code.get("repo"), code["commit"]), "commit",
                          f"{code.get('repo') or 'unknown-repo'}@{str(code['commit'])[:12]}", code_record,
                          {**pick(code, "repo", "commit", "branch", "dirty", "diff_sha256", "entrypoint", "argv")})
        graph.link(run, ident, "code")
    env_record = carried("environment")
    if env_record is not None:
        env = env_record.fields["environment"]
        ident = graph.add(node("environment", run_id), "environment",
                          f"python {env.get('python')} {env.get('container_image') or ''}".strip(), env_record, {
                              **pick(env, "python", "packages_sha256", "container_image", "container_digest", "os",
                                     "kernel", "cpu", "cpu_count", "memory_bytes", "gpus", "accelerator_drivers",
                                     "env_vars", "packages"),
                              "package_count": len(env.get("packages") or {}),
                          })
        graph.link(run, ident, "environment")
    return run


def _dataset_fields(d: Mapping[str, Any]) -> dict[str, Any]:
    return {**pick(d, "name", "digest", "license", "consent", "pii_tags", "sources", "row_count", "owner", "parents",
                   "run_id", "collection_start", "collection_end", "schema_fingerprint", "quality_checks"),
            "file_count": len(d.get("files") or [])}


def deployments_at(deployments: Sequence[Record], trace: Mapping[str, Any]) -> tuple[Record | None, Record | None]:
    """The deployment in force when the prediction was requested, and the one it replaced on the same
    environment and endpoint. In force: the one the trace names (``deployment_event_id``), else the newest
    of the served model version at the endpoint no later than the request."""
    by_id = {r.event_id: r for r in deployments}
    in_force = by_id.get(str(trace.get("deployment_event_id") or ""))
    at = str(trace.get("request_time") or "")
    if in_force is None:
        version = (trace.get("model_name"), trace.get("model_version"))
        candidates = [r for r in deployments if (r.fields.get("model_name"), r.fields.get("model_version")) == version
                      and (not at or str(r.fields.get("event_time")) <= at)]
        at_endpoint = [r for r in candidates if r.fields.get("endpoint") == trace.get("endpoint")]
        in_force = newest(at_endpoint or candidates)
    if in_force is None:
        return None, None
    place = (in_force.fields.get("environment"), in_force.fields.get("endpoint"))
    before = newest(r for r in deployments if r.event_id != in_force.event_id
                    and (r.fields.get("environment"), r.fields.get("endpoint")) == place
                    and (r.event_time, r.event_id) < (in_force.event_time, in_force.event_id))
    return in_force, before


def _deployment_label(d: Mapping[str, Any]) -> str:
    return f"{str(d.get('action', '')).lower()} {d.get('model_name')}@{d.get('model_version')} {d.get('environment')}"


def _deployment_fields(record: Record, in_force: bool) -> dict[str, Any]:
    d = record.fields
    return {**pick(d, "model_name", "model_version", "environment", "endpoint", "action", "reason",
                   "previous_version", "served_versions", "event_time"), "in_force": in_force}
