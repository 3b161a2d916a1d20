"""Pure logic of the audit store: lineage edges, DDL rendering, crash recovery planning, chain checks, auth."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

import provline.sink
from provline.schemas import default_catalog, new_envelope, producer_identity
from provline.schemas.integrity import HashChain
from provline.sink.api import Reader, authenticate
from provline.sink.errors import MigrationError
from provline.sink.evidence import MANIFEST, build_bundle, parse_subject, verify_bundle
from provline.sink.ingest import CONTENT_OF_PAYLOAD, ENVELOPE_FIELDS, ledger_rows_of
from provline.sink.lineage import Edge, edges_for, parse_node
from provline.sink.rows import TABLES
from provline.sink.settings import ServeSettings
from provline.sink.store import render_ddl, ttl_statements
from provline.sink.verify import Links, Seals, Trust, check_event, link_findings
from provline.sink.writer import (
    commit_metadata,
    dedup_token,
    in_flight_metadata,
    in_flight_ranges,
    parse_in_flight,
    plan_batch,
    validate,
)
from tests.helpers import StoredMessage, seal

WHEN = datetime(2025, 3, 1, tzinfo=UTC)


def sealed(chain: HashChain, kind: str, **fields: Any) -> dict[str, Any]:
    return seal(chain, kind, {**new_envelope(producer_identity("t", "s1"), event_time=WHEN), **fields})


def test_run_event_edges_inputs_outputs_models_and_code() -> None:
    value = {"run_id": "r1", "inputs": ["sha256:a", "base@1"], "outputs": ["sha256:b", "churn@3"],
             "code": {"repo": "git@x:y.git", "commit": "c0"}}
    assert edges_for("RunEvent", value) == [
        Edge("dataset:sha256:a", "run:r1", "input"),
        Edge("model:base@1", "run:r1", "input"),
        Edge("run:r1", "dataset:sha256:b", "output"),
        Edge("run:r1", "model:churn@3", "trained"),
        Edge("commit:git@x:y.git@c0", "run:r1", "code"),
    ]


def test_dataset_model_deployment_and_trace_edges() -> None:
    assert edges_for("DatasetVersion", {"digest": "d2", "parents": ["d1", "d1"], "run_id": "r1"}) == [
        Edge("dataset:d1", "dataset:d2", "parent"), Edge("run:r1", "dataset:d2", "output"),
    ]
    assert edges_for("ModelVersion", {"model_name": "m", "version": "1", "run_id": None, "datasets": ["d"],
                                      "feature_sets": ["f"]}) == [
        Edge("dataset:d", "model:m@1", "trained_on"), Edge("feature_set:f", "model:m@1", "features"),
    ]
    assert edges_for("Deployment", {"model_name": "m", "model_version": "1", "environment": "prod",
                                    "endpoint": "/p"}) == [Edge("model:m@1", "deployment:prod:/p", "deployed")]
    assert edges_for("PredictionTrace", {"prediction_id": "p", "model_name": "m", "model_version": "1"}) == []
    assert edges_for("InferenceRequest", {"prediction_id": "p"}) == []  # served edges: derive_served_edges.sql


def test_parse_node_names_the_kinds() -> None:
    assert parse_node("dataset:sha256:ab") == ("dataset", "sha256:ab")
    for bad in ("churn@3", "thing:x", "model:"):
        with pytest.raises(ValueError, match="not a lineage node"):
            parse_node(bad)


def test_render_ddl_for_a_cluster() -> None:
    create = "CREATE TABLE IF NOT EXISTS t\n(\n    a String\n)\nENGINE = ReplacingMergeTree(ts)\nORDER BY a"
    assert render_ddl(create, None) == create
    clustered = render_ddl(create, "prod")
    assert clustered.startswith("CREATE TABLE IF NOT EXISTS t ON CLUSTER 'prod'\n")
    assert "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', " \
           "'{replica}', ts)" in clustered
    plain = render_ddl("CREATE TABLE IF NOT EXISTS l (a String) ENGINE = MergeTree ORDER BY a", "c")
    assert "ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')" in plain
    assert render_ddl("ALTER TABLE t MODIFY SETTING x = 1", "c") == "ALTER TABLE t ON CLUSTER 'c' MODIFY SETTING x = 1"
    ingest = render_ddl("CREATE TABLE IF NOT EXISTS ingest_t_v1\n(\n    `a` String\n)\nENGINE = Null", "c")
    assert ingest.startswith("CREATE TABLE IF NOT EXISTS ingest_t_v1 ON CLUSTER 'c'\n")
    assert ingest.endswith("ENGINE = Null")
    view = render_ddl("CREATE MATERIALIZED VIEW IF NOT EXISTS v_1 TO t AS\nSELECT a FROM ingest_t_v1", "c")
    assert view.startswith("CREATE MATERIALIZED VIEW IF NOT EXISTS v_1 ON CLUSTER 'c' TO t AS")
    assert render_ddl("DROP VIEW IF EXISTS v_0", "c") == "DROP VIEW IF EXISTS v_0 ON CLUSTER 'c'"


def test_ttl_statements_per_table_and_unknown_tables_refused() -> None:
    tables = {"inference_requests", "access_log"}
    assert ttl_statements({"inference_requests": 90, "access_log": 365}, tables, None) == [
        "ALTER TABLE access_log MODIFY TTL toDateTime(time) + INTERVAL 365 DAY",
        "ALTER TABLE inference_requests MODIFY TTL toDateTime(event_time) + INTERVAL 90 DAY",
        # the ledger's copies expire with their table, or verify would find them deleted
        "ALTER TABLE event_ledger MODIFY TTL toDateTime(event_time) + INTERVAL 90 DAY DELETE WHERE "
        "event_table = 'inference_requests'",
    ]
    with pytest.raises(MigrationError, match="unknown table"):
        ttl_statements({"inference_request": 9}, tables, None)
    with pytest.raises(MigrationError, match="expire with their event tables"):
        ttl_statements({"event_ledger": 9}, tables | {"event_ledger"}, None)


def test_the_ledger_backfill_digests_contents_as_the_sink_restores_them() -> None:
    """The content digests of 0007's backfill are those the sink writes for rows it restores (the
    views' own agree with them: tests/integration/test_sink_ledger.py)."""
    migration = (Path(provline.sink.__file__).parent / "sql" / "0007_ledger_content_digest.sql").read_text()
    backfills = [line for line in migration.splitlines() if line.startswith("INSERT INTO event_ledger")]
    restored = {spec.table: ledger_rows_of(spec.table, "1") for spec in TABLES.values()}
    assert all(CONTENT_OF_PAYLOAD in select for select in restored.values())
    assert sorted(line.split(" FROM ")[-1].split()[0] for line in backfills) == sorted(restored)  # session_seals too
    assert all(line.count(CONTENT_OF_PAYLOAD) == 1 for line in backfills)


def test_every_event_starts_with_the_envelope_the_payload_digest_skips() -> None:
    """CONTENT_OF_PAYLOAD takes an event's contents as the payload members after the envelope's signature."""
    catalog = default_catalog()
    for kind in TABLES:
        fields = [field["name"] for field in catalog.current(kind).parsed["fields"]]
        assert tuple(fields[:len(ENVELOPE_FIELDS)]) == ENVELOPE_FIELDS, kind
        assert "signature" not in fields[len(ENVELOPE_FIELDS):], kind


def test_settings_parse_tokens_and_refuse_shared_tokens_and_bad_retention(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVLINE_API__TOKENS", '{"ann": {"token": "' + "a" * 20 + '", "role": "auditor"}}')
    settings = ServeSettings()
    assert settings.api.tokens["ann"].role == "auditor"
    assert "a" * 20 not in repr(settings)  # secrets stay secret
    with pytest.raises(ValidationError, match="share one token"):
        ServeSettings(api={"tokens": {"a": {"token": "x" * 16, "role": "viewer"},
                                      "b": {"token": "x" * 16, "role": "admin"}}})
    with pytest.raises(ValidationError, match="at least 1 day"):
        ServeSettings(store={"retention_days": {"feedback": 0}})
    with pytest.raises(ValidationError, match="role"):
        ServeSettings(api={"tokens": {"a": {"token": "x" * 16, "role": "root"}}})


def test_authenticate_maps_tokens_to_readers() -> None:
    settings = ServeSettings(api={"tokens": {"vic": {"token": "v" * 16, "role": "viewer"},
                                             "root": {"token": "r" * 16, "role": "admin"}}})
    assert authenticate(settings, "v" * 16) == Reader("vic", "viewer")
    assert authenticate(settings, "r" * 16) == Reader("root", "admin")
    assert authenticate(settings, "x" * 16) is None and authenticate(settings, None) is None
    assert Reader("root", "admin").may("auditor") and not Reader("vic", "viewer").may("auditor")


def test_plan_frames_traces_and_validate_finds_the_unsealed_one() -> None:
    catalog = default_catalog()
    chain = HashChain(catalog)
    trace = sealed(chain, "PredictionTrace", prediction_id="p", endpoint="/p", complete=True, model_name="m",
                   model_version="1")
    unsealed = {**new_envelope(producer_identity("t", "s1")), "prediction_id": "q", "endpoint": "/p",
                "complete": True}
    encoded = [catalog.encode("PredictionTrace", value) for value in (trace, trace, unsealed)]
    messages = [StoredMessage("t", 0, offset, value) for offset, value in enumerate(encoded)]
    plan = plan_batch(messages, catalog)
    assert plan.events["prediction_traces"].positions == [("t", 0, 0), ("t", 0, 1), ("t", 0, 2)]
    assert plan.edges == [] and plan.dead_letters == []  # traces are not decoded here: ClickHouse checks them

    letters = validate(messages, catalog)
    assert [(d.origin.offset, d.reason) for d in letters] == [(2, "InvalidEventError")]
    assert "never sealed" in letters[0].error

    without = plan.without({("t", 0, 1), ("t", 0, 2)})
    assert without.events["prediction_traces"].positions == [("t", 0, 0)]
    assert without.events["prediction_traces"].raws == plan.events["prediction_traces"].raws[:1]


def test_in_flight_metadata_and_which_offsets_need_a_store_check() -> None:
    assert parse_in_flight(in_flight_metadata(120)) == 120
    assert parse_in_flight("") is None and parse_in_flight("something else") is None
    positions = [("t", 0, 5), ("t", 0, 12), ("t", 0, 7), ("t", 1, 3)]
    assert in_flight_ranges(positions, {("t", 0): 10}) == {("t", 0): (5, 10)}
    assert in_flight_ranges(positions, {}) == {}


def test_an_in_flight_marker_is_never_moved_back() -> None:
    """A sink that took over at offset 100 from one that may have stored up to 300, and read only up to
    150 when it commits, must leave 300 for the next (it was once cleared, and 150..300 stored twice)."""
    predecessor = {("t", 0): 300}
    assert commit_metadata({("t", 0): 150, ("t", 1): 40}, predecessor, inserting=True) == {
        ("t", 0): in_flight_metadata(300), ("t", 1): in_flight_metadata(40)}
    assert commit_metadata({("t", 0): 150, ("t", 1): 40}, predecessor, inserting=False) == {
        ("t", 0): in_flight_metadata(300)}
    assert commit_metadata({("t", 0): 300}, predecessor, inserting=False) == {}
    assert commit_metadata({("t", 0): 500}, predecessor, inserting=True) == {("t", 0): in_flight_metadata(500)}


def test_dedup_token_depends_on_table_and_messages() -> None:
    first, second = ("t", 0, 1), ("t", 0, 2)
    assert dedup_token("a", [first, second]) == dedup_token("a", [first, second])
    assert dedup_token("a", [first, second]) != dedup_token("b", [first, second])
    assert dedup_token("a", [first, second]) != dedup_token("a", [("t", 0, 12)])
    assert dedup_token("a", [("t", 1, 2)]) != dedup_token("a", [("t", 12, 2)])

def session_rows(events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    catalog = default_catalog()
    return [{"table": kind, "event_id": value["event_id"], "hash": value["hash"],
             "raw": catalog.encode(kind, value)} for kind, value in events]


def chain_of(count: int, signer: Ed25519PrivateKey | None = None) -> list[tuple[str, dict[str, Any]]]:
    chain = HashChain(default_catalog(), signer=signer)
    return [("Feedback", sealed(chain, "Feedback", prediction_id=f"p{i}", source="s", observed_time=WHEN))
            for i in range(count)]


def test_check_event_judges_one_event_by_its_own_bytes() -> None:
    catalog = default_catalog()
    [row] = session_rows(chain_of(1))
    assert check_event(catalog, row, Trust())[0] == []
    altered = {**row, "raw": row["raw"][:-1] + b"x"}
    assert [f.problem for f in check_event(catalog, altered, Trust())[0]] == ["altered"]
    cut = {**row, "raw": row["raw"][:5]}
    assert "not an intact event" in check_event(catalog, cut, Trust())[0][0].detail
    moved = {**row, "event_id": "someone-else"}
    assert "event_id disagree" in check_event(catalog, moved, Trust())[0][0].detail


def test_chain_shape_findings_name_every_problem() -> None:
    intact = Links(events=3, roots=["e1"], dangling=[], forks=[], heads=[("e3", "h3")])
    assert link_findings("s", intact, Seals()) == []
    broken = Links(events=5, roots=["e1", "x1"], dangling=[("e4", "h9")], forks=[("h2", ["e3", "y3"])],
                   heads=[("e5", "h5"), ("y3", "hy")])
    assert sorted(f.problem for f in link_findings("s", broken, Seals())) == ["fork", "missing", "start", "start"]
    after_final = Links(events=4, roots=["e1"], dangling=[], forks=[], heads=[("e4", "h4")])
    assert [f.problem for f in link_findings("s", after_final, Seals(2, "e3", "h3", ["e4"]))] == ["after-final"]
    assert [f.problem for f in link_findings("s", intact, Seals(sealed_count=7))] == ["truncated"]


def test_signatures_are_checked_with_keys_trusted_per_producer() -> None:
    catalog = default_catalog()
    key = Ed25519PrivateKey.generate()
    [signed] = session_rows(chain_of(1, signer=key))
    assert check_event(catalog, signed, Trust({"t": (key.public_key(),)}))[0] == []
    wrong_key = Trust({"t": (Ed25519PrivateKey.generate().public_key(),)})
    assert [f.problem for f in check_event(catalog, signed, wrong_key)[0]] == ["bad-signature"]
    other_producer = Trust({"sidecar": (key.public_key(),)})
    assert [f.problem for f in check_event(catalog, signed, other_producer)[0]] == ["untrusted"]
    [unsigned] = session_rows(chain_of(1))
    assert [f.problem for f in check_event(catalog, unsigned, Trust({"t": (key.public_key(),)}))[0]] == ["unsigned"]


def test_bundles_unsigned_missing_and_extra_files() -> None:
    catalog = default_catalog()
    evidence = {"subject": {"kind": "prediction", "id": "p"}, "trace": None,
                "lineage": {"nodes": [], "edges": []}, "evaluations": [], "decisions": [], "deployments": [],
                "events": []}
    files = build_bundle(evidence, "json", catalog)
    assert verify_bundle(files, catalog) == []
    assert verify_bundle(files, catalog, public_key=Ed25519PrivateKey.generate().public_key()) == [
        "the bundle is not signed, but a public key was given"
    ]
    assert verify_bundle({**files, "extra.txt": b"x"}, catalog) == ["extra.txt is not listed in the manifest"]
    assert verify_bundle({MANIFEST: files[MANIFEST]}, catalog)[0].endswith("missing")
    assert parse_subject("churn@3") == ("model", "churn@3") and parse_subject("p-1") == ("prediction", "p-1")
