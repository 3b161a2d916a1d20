"""Evidence bundles: everything behind one prediction or model version, self-contained and verifiable.

A bundle is a set of files: the evidence in one format (``evidence.json``, ``evidence.prov.json``
(W3C PROV-JSON, built with the ``prov`` library) or ``evidence.openlineage.json`` (OpenLineage
RunEvents)), ``events.jsonl`` (every stored event it rests on, as the exact Kafka bytes),
``manifest.json`` (SHA-256 of every file) and, when a signing key is configured, ``manifest.sig``
(Ed25519 over the manifest's bytes). :func:`gather` reads the store; everything else is pure.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from clickhouse_connect.driver.client import Client
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from provline.schemas import Catalog
from provline.sink import queries
from provline.sink.errors import BundleError
from provline.sink.lineage import model_node, node
from provline.sink.openlineage import run_to_openlineage
from provline.sink.verify import Trust, check_event, raw_bytes

FORMATS = {"json": "evidence.json", "prov": "evidence.prov.json", "openlineage": "evidence.openlineage.json"}
MANIFEST, SIGNATURE, EVENTS = "manifest.json", "manifest.sig", "events.jsonl"
PROV_NAMESPACE = "https://provline.dev/ns/prov#"
OPENLINEAGE_NAMESPACE = "provline"


def parse_subject(subject: str) -> tuple[str, str]:
    """``("model", "name@version")`` for ``MODEL@VERSION``, else ``("prediction", id)``."""
    if "@" in subject:
        name, _, version = subject.rpartition("@")
        if not name or not version:
            raise BundleError(f"{subject!r}: write MODEL@VERSION, e.g. churn@3, or a prediction id")
        return "model", subject
    return "prediction", subject


# ---------------------------------------------------------------- gathering (I/O)

def _payloads(client: Client, sql: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
    rows = client.query(sql, parameters=parameters).result_rows
    return [{"event_id": row[0], **json.loads(row[1])} for row in rows]


def gather(client: Client, subject: str) -> dict[str, Any]:
    """The evidence of ``subject`` (prediction id or MODEL@VERSION) from the store. Blocks on a few queries.

    Raises :class:`BundleError` when the store holds nothing about it.
    """
    kind, ident = parse_subject(subject)
    trace = None
    if kind == "prediction":
        trace = queries.trace(client, ident)
        if trace is None:
            raise BundleError(f"no trace stored for prediction {ident!r}; nothing to export")
        start = node("prediction", ident)
        model = (trace.get("model_name"), trace.get("model_version"))
    else:
        name, _, version = ident.rpartition("@")
        start = model_node(name, version)
        model = (name, version)
    upstream = queries.lineage(client, "upstream", start, max_depth=queries.DEFAULT_MAX_DEPTH,
                               limit=queries.MAX_LIMIT)
    nodes = sorted({start, *(row["node"] for row in upstream)})
    edge_rows = client.query(
        "SELECT from_node, to_node, edge, event_id FROM lineage_edges FINAL "
        "WHERE to_node IN {nodes:Array(String)} ORDER BY from_node, to_node, edge",
        parameters={"nodes": nodes},
    ).result_rows
    if kind == "model" and not edge_rows:
        found = client.query(
            "SELECT count() FROM model_versions WHERE model_name = {n:String} AND model_version = {v:String}",
            parameters={"n": model[0], "v": model[1]},
        ).result_rows[0][0]
        if not found:
            raise BundleError(f"no model version {ident!r} is stored; check `provline models`")
    edges = [{"from": f, "to": t, "edge": e, "event_id": i} for f, t, e, i in edge_rows]
    by_model = {"n": model[0] or "", "v": model[1] or ""}
    evaluations = _payloads(client, "SELECT event_id, payload FROM evaluations FINAL WHERE model_name = {n:String} "
                            "AND model_version = {v:String} ORDER BY event_id", by_model)
    deployments = _payloads(client, "SELECT event_id, payload FROM deployments FINAL WHERE model_name = {n:String} "
                            "AND model_version = {v:String} ORDER BY event_id", by_model)
    decisions = _payloads(client, "SELECT event_id, payload FROM decisions FINAL WHERE subject = {s:String} "
                          "ORDER BY event_id", {"s": model_node(*by_model.values())})
    event_ids = {e["event_id"] for e in edges} | {x["event_id"] for x in evaluations + deployments + decisions}
    if trace is not None:
        event_ids |= {value for value in trace["sources"].values() if value}
        event_ids |= {row[0] for row in client.query(
            "SELECT event_id FROM inference_responses FINAL WHERE prediction_id = {p:String}",
            parameters={"p": ident}).result_rows}
    stored = queries.events_by_id(client, sorted(event_ids))
    return {
        "subject": {"kind": kind, "id": ident},
        "trace": trace,
        "lineage": {"nodes": nodes, "edges": edges},
        "evaluations": evaluations,
        "decisions": decisions,
        "deployments": deployments,
        "events": [
            {"kind": row["kind"], "table": row["table"], "event_id": row["event_id"],
             "raw": base64.b64encode(bytes(row["raw"])).decode("ascii")}
            for row in stored
        ],
    }


# ---------------------------------------------------------------- formats (pure)

def to_prov(evidence: Mapping[str, Any]) -> str:
    """W3C PROV-JSON: datasets, models, feature sets, commits and predictions as entities, runs as
    activities, the recording producers and decision actors as agents."""
    import prov.model as pm

    doc = pm.ProvDocument()
    doc.add_namespace("pl", PROV_NAMESPACE)

    def qname(text: str) -> str:
        kind, _, ident = text.partition(":")
        return f"pl:{kind}/{quote(ident, safe='')}"

    for item in evidence["lineage"]["nodes"]:
        kind = item.partition(":")[0]
        attributes = _attributes({"pl:kind": kind, "pl:node": item})
        if kind == "run":
            doc.activity(qname(item), other_attributes=attributes)
        else:
            doc.entity(qname(item), attributes)
    for edge in evidence["lineage"]["edges"]:
        source, target, kind = edge["from"], edge["to"], edge["edge"]
        source_is_run, target_is_run = source.startswith("run:"), target.startswith("run:")
        if target_is_run and not source_is_run:
            doc.used(qname(target), qname(source), other_attributes=_attributes({"pl:edge": kind}))
        elif source_is_run and not target_is_run:
            doc.wasGeneratedBy(qname(target), qname(source), other_attributes=_attributes({"pl:edge": kind}))
        elif not source_is_run and not target_is_run:
            doc.wasDerivedFrom(qname(target), qname(source), other_attributes=_attributes({"pl:edge": kind}))
    for decision in evidence["decisions"]:
        actor = doc.agent(f"pl:actor/{quote(decision['actor'], safe='')}", _attributes({"pl:role": decision["role"]}))
        subject = decision["subject"]
        if subject in evidence["lineage"]["nodes"]:
            doc.wasAttributedTo(qname(subject), actor, other_attributes=_attributes({
                "pl:transition": decision["transition"], "pl:outcome": decision["outcome"],
            }))
    return str(doc.serialize(format="json", indent=2))


def _attributes(values: dict[str, Any]) -> list[tuple[str, Any]]:
    """PROV attributes as the prov library types them (pairs of qualified-name text and value)."""
    return list(values.items())


def to_openlineage(evidence: Mapping[str, Any], catalog: Catalog) -> str:
    """OpenLineage RunEvents of every run whose RunEvents the bundle holds (:mod:`provline.sink.openlineage`),
    with the datasets, models and evaluations of the bundle."""
    decoded = [catalog.decode(base64.b64decode(event["raw"])) for event in evidence["events"]
               if event["kind"] in ("RunEvent", "DatasetVersion", "ModelVersion", "Evaluation")]
    datasets = {d.value["digest"]: d.value for d in decoded if d.record == "DatasetVersion"}
    runs: dict[str, list[dict[str, Any]]] = {}
    for item in decoded:
        if item.record == "RunEvent":
            runs.setdefault(str(item.value["run_id"]), []).append(item.value)
    out = []
    for run_id, states in sorted(runs.items()):
        models = [d.value for d in decoded if d.record == "ModelVersion" and d.value.get("run_id") == run_id]
        registered = {(m["model_name"], m["version"]) for m in models}
        evaluations = [d.value for d in decoded if d.record == "Evaluation" and (
            d.value.get("run_id") == run_id or (d.value["model_name"], d.value["model_version"]) in registered)]
        out += run_to_openlineage(states, datasets=datasets, models=models, evaluations=evaluations,
                                  namespace=OPENLINEAGE_NAMESPACE)
    return json.dumps(out, indent=2, sort_keys=True)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_bundle(
    evidence: Mapping[str, Any], fmt: str, catalog: Catalog, *, signer: Ed25519PrivateKey | None = None,
    created: datetime | None = None,
) -> dict[str, bytes]:
    """The bundle's files (name -> bytes). Raises :class:`BundleError` for an unknown format."""
    if fmt not in FORMATS:
        raise BundleError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    body = {key: value for key, value in evidence.items() if key != "events"}
    if fmt == "json":
        main = json.dumps(body, indent=2, sort_keys=True, default=str)
    elif fmt == "prov":
        main = to_prov(evidence)
    else:
        main = to_openlineage(evidence, catalog)
    events = "".join(json.dumps(e, sort_keys=True) + "\n" for e in evidence["events"])
    files = {FORMATS[fmt]: main.encode(), EVENTS: events.encode()}
    manifest: dict[str, Any] = {
        "subject": evidence["subject"],
        "format": fmt,
        "created": (created or datetime.now(UTC)).isoformat(),
        "files": {name: _sha256(data) for name, data in sorted(files.items())},
    }
    if signer is not None:
        public = signer.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        manifest["signature"] = {"algorithm": "Ed25519", "public_key": base64.b64encode(public).decode()}
    files[MANIFEST] = json.dumps(manifest, indent=2, sort_keys=True).encode()
    if signer is not None:
        files[SIGNATURE] = base64.b64encode(signer.sign(files[MANIFEST]))
    return files


def verify_bundle(
    files: Mapping[str, bytes], catalog: Catalog, *, public_key: Ed25519PublicKey | None = None,
    trust: Trust | None = None,
) -> list[str]:
    """Problems with a bundle (empty list: it verifies). Offline: needs no store.

    Checks every file against the manifest, the manifest's signature against ``public_key`` (the key
    the verifier trusts: a signed bundle without one is a problem, since the key a manifest names
    proves nothing), and every stored event against its own bytes (and, with ``trust``, its signature
    by a key trusted for its producer).
    """
    if MANIFEST not in files:
        return [f"no {MANIFEST}: this is not a provline evidence bundle"]
    try:
        manifest = json.loads(files[MANIFEST])
    except ValueError as exc:
        return [f"{MANIFEST} is not JSON: {exc}"]
    problems = []
    listed = manifest.get("files", {})
    for name, digest in sorted(listed.items()):
        if name not in files:
            problems.append(f"{name} is listed in the manifest but missing")
        elif _sha256(files[name]) != digest:
            problems.append(f"{name} does not match its SHA-256 in the manifest: it was altered")
    for name in sorted(set(files) - set(listed) - {MANIFEST, SIGNATURE}):
        problems.append(f"{name} is not listed in the manifest")
    problems += _signature_problems(files, public_key)
    if EVENTS in files and not any(p.startswith(EVENTS) for p in problems):
        for number, line in enumerate(files[EVENTS].decode().splitlines(), start=1):
            event = json.loads(line)
            try:
                raw = raw_bytes(event["raw"])
            except ValueError as exc:
                problems.append(f"{EVENTS} line {number}: raw {exc}")
                continue
            findings, checked = check_event(catalog, {"event_id": event["event_id"], "raw": raw}, trust or Trust())
            if checked is not None and checked.value["event_id"] != event["event_id"]:
                problems.append(f"{EVENTS} line {number}: listed as {event['event_id']} but the event is "
                                f"{checked.value['event_id']}")
            problems += [f"{EVENTS} line {number}: {f.problem}: {f.detail}" for f in findings]
    return problems


def _signature_problems(files: Mapping[str, bytes], public_key: Ed25519PublicKey | None) -> list[str]:
    if SIGNATURE not in files:
        return ["the bundle is not signed, but a public key was given"] if public_key is not None else []
    if public_key is None:
        return [f"{SIGNATURE} is present but no trusted key was given (--public-key): the key the manifest names "
                "proves nothing, anyone can sign with their own"]
    try:
        public_key.verify(base64.b64decode(files[SIGNATURE]), files[MANIFEST])
    except (InvalidSignature, ValueError):
        return [f"{SIGNATURE} does not verify the manifest with the given key"]
    return []
