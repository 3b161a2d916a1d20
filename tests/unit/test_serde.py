from __future__ import annotations

import io
import json
import struct
from datetime import UTC, datetime
from pathlib import Path

import fastavro
import pytest

from provline.schemas import Catalog, CorruptEventError, InvalidEventError, UnknownSchemaError, default_catalog
from provline.schemas.events import Topics, key_for, new_envelope, producer_identity
from provline.schemas.frames import FRAMES
from provline.schemas.integrity import HashChain, body_digest
from provline.schemas.serde import AVSC_DIR, SINGLE_OBJECT_MAGIC
from tests.helpers import chain_findings

ENVELOPE_FIELDS = ["event_id", "event_time", "producer", "prev_hash", "hash", "signature"]


def deployment(**overrides: object) -> dict:
    value = {
        **new_envelope(producer_identity("test", "session-1"), event_time=datetime(2026, 1, 2, 3, 4, 5, 6, UTC)),
        "model_name": "churn", "model_version": "3", "environment": "production",
        "endpoint": "/predict", "action": "DEPLOY", "reason": None, "previous_version": "2", "served_versions": [],
    }
    value.update(overrides)
    return value


def test_every_event_schema_starts_with_the_same_envelope() -> None:
    envelopes = set()
    for path in AVSC_DIR.glob("*.avsc"):
        schema = json.loads(path.read_text())
        assert schema["namespace"] == "provline.v1", path.name
        if schema["name"] in FRAMES:  # frames carry events, which have the envelope
            continue
        fields = schema["fields"][: len(ENVELOPE_FIELDS)]
        assert [f["name"] for f in fields] == ENVELOPE_FIELDS, path.name
        envelopes.add(json.dumps(fields, sort_keys=True))
    assert len(envelopes) == 1


def test_catalog_has_every_event_kind_of_the_design() -> None:
    assert set(default_catalog().records) - FRAMES == {
        "DatasetVersion", "FeatureSetVersion", "RunEvent", "ModelVersion", "Evaluation", "Decision",
        "Deployment", "InferenceRequest", "InferenceResponse", "PredictionTrace", "Feedback",
        "DeliveryGap", "DriftMetric", "SessionSeal",
    }


def test_single_object_round_trip() -> None:
    catalog = default_catalog()
    value = deployment()
    data = catalog.encode("Deployment", value)
    assert data[:2] == SINGLE_OBJECT_MAGIC
    assert data[2:10] == catalog.current("Deployment").fingerprint
    decoded = catalog.decode(data)
    assert decoded.record == "Deployment"
    assert decoded.value == value


def test_confluent_registry_framing_is_refused_with_the_reason() -> None:
    body = default_catalog().encode_body("Deployment", deployment())
    with pytest.raises(UnknownSchemaError, match="Confluent schema-registry framing .schema id 7.*single-object"):
        default_catalog().decode(b"\x00" + struct.pack(">I", 7) + body)


def _write_schema(directory: Path, revision: int, extra_fields: list[dict]) -> None:
    schema = {
        "type": "record", "name": "Thing", "namespace": "provline.v1",
        "fields": [{"name": "id", "type": "string"}, *extra_fields],
    }
    (directory / f"Thing.v{revision}.avsc").write_text(json.dumps(schema))


def test_old_writer_schema_is_resolved_against_the_current_reader(tmp_path: Path) -> None:
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    old_dir.mkdir()
    new_dir.mkdir()
    _write_schema(old_dir, 1, [{"name": "dropped_later", "type": "int"}])
    _write_schema(new_dir, 1, [{"name": "dropped_later", "type": "int"}])
    _write_schema(new_dir, 2, [{"name": "added", "type": "string", "default": "none yet"}])

    old_bytes = Catalog(old_dir).encode("Thing", {"id": "x", "dropped_later": 5})
    decoded = Catalog(new_dir).decode(old_bytes)

    assert decoded.writer.revision == 1
    assert decoded.value == {"id": "x", "added": "none yet"}


def test_unknown_fingerprint_names_the_problem_and_the_fix() -> None:
    data = SINGLE_OBJECT_MAGIC + bytes.fromhex("0011223344556677") + b"\x02"
    with pytest.raises(UnknownSchemaError, match="fingerprint 0011223344556677 not found in schemas/; upgrade"):
        default_catalog().decode(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "starts with nothing"),
        (b"{\"json\": true}", "starts with 7b22, not Avro single-object encoding"),
        (SINGLE_OBJECT_MAGIC + b"\x01\x02", "shorter than its 10-byte header"),
        (b"\x00\x01", "starts with 0001, not Avro single-object encoding"),
    ],
)
def test_corrupt_headers_are_named(data: bytes, message: str) -> None:
    with pytest.raises(CorruptEventError, match=message):
        default_catalog().decode(data)


def test_truncated_and_padded_bodies_are_corrupt() -> None:
    data = default_catalog().encode("Deployment", deployment())
    with pytest.raises(CorruptEventError, match="Deployment event .* does not decode"):
        default_catalog().decode(data[:-5])
    with pytest.raises(CorruptEventError, match="3 bytes after its body"):
        default_catalog().decode(data + b"abc")


def test_encoding_a_record_that_does_not_fit_names_the_schema() -> None:
    with pytest.raises(InvalidEventError, match="Deployment does not match schema provline.v1.Deployment"):
        default_catalog().encode("Deployment", deployment(action="EXPLODE"))


def test_hash_chain_detects_altered_missing_and_swapped_events() -> None:
    catalog = default_catalog()
    chain = HashChain(catalog)
    header = catalog.header("Deployment")
    raws = [header + chain.seal_encode("Deployment", deployment(model_version=str(i))) for i in range(4)]
    assert chain_findings(raws) == []

    value = catalog.decode(raws[2]).value
    altered = [*raws[:2], catalog.encode("Deployment", {**value, "endpoint": "/other"}), raws[3]]
    assert [(f.event_id, f.problem) for f in chain_findings(altered)] == [
        (catalog.decode(altered[2]).value["event_id"], "altered")]
    missing = raws[:1] + raws[2:]
    assert [(f.event_id, f.problem) for f in chain_findings(missing)] == [
        (catalog.decode(missing[1]).value["event_id"], "missing")]


def test_topics_and_keys() -> None:
    topics = Topics("acme")
    assert topics.for_kind("InferenceRequest") == "acme.inference.v1"
    assert topics.for_kind("Feedback") == "acme.inference.v1"
    assert topics.for_kind("RunEvent") == "acme.lineage.v1"
    assert topics.for_kind("PredictionTrace") == "acme.traces.v1"
    assert key_for("Deployment", deployment()) == "churn@3"
    with pytest.raises(ValueError, match="no topic for event kind 'Nope'"):
        topics.for_kind("Nope")


def test_no_schema_declares_a_field_twice() -> None:
    for path in AVSC_DIR.glob("*.avsc"):
        names = [f["name"] for f in json.loads(path.read_text())["fields"]]
        assert len(names) == len(set(names)), f"{path.name} declares a field twice"


from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SIGNER = Ed25519PrivateKey.generate()


@settings(max_examples=200, deadline=None)
@given(
    name=st.text(max_size=300), host=st.text(max_size=80), endpoint=st.text(max_size=200),
    micros=st.integers(min_value=-62_135_596_800_000_000, max_value=253_402_300_799_999_999),  # datetime's range
    previous=st.none() | st.text(min_size=64, max_size=64),
    signed=st.booleans(),
)
def test_single_encoding_seal_gives_the_bytes_of_encoding_the_sealed_event(
    name: str, host: str, endpoint: str, micros: int, previous: str | None, signed: bool
) -> None:
    catalog = default_catalog()
    value = deployment(endpoint=endpoint, producer={"name": name, "host": host, "version": "1", "session_id": "s"})
    value["event_time"] = micros
    chain = HashChain(catalog, last_hash=previous, signer=SIGNER if signed else None)
    body = chain.seal_encode("Deployment", value)
    assert body == catalog.encode_body("Deployment", value)
    assert body_digest(body).computed_hash == value["hash"] and body_digest(body).intact
    assert catalog.decode(catalog.header("Deployment") + body).value["hash"] == value["hash"]


def _fastavro_body(record: str, value: dict) -> bytes | str:
    """The reference: fastavro's generic writer, or the name of the error it raises."""
    buffer = io.BytesIO()
    try:
        fastavro.schemaless_writer(buffer, default_catalog().current(record).parsed, value, strict_allow_default=True)
    except Exception as exc:
        return type(exc).__name__
    return buffer.getvalue()


_feature_values = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                   | st.floats(allow_nan=False) | st.text(max_size=70))
_odd_values = st.none() | st.booleans() | st.integers() | st.text(max_size=3) | st.binary(max_size=3) | st.floats()


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["InferenceRequest", "InferenceResponse", "DeliveryGap"]),
    event_time=st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.datetimes(timezones=st.just(UTC)) | st.datetimes(),
    previous=st.none() | st.text(min_size=64, max_size=64),
    features=st.dictionaries(st.text(max_size=70), _feature_values, max_size=6),
    body=st.none() | st.binary(max_size=9000),
    size=st.integers(min_value=-(2**64), max_value=2**64),
    status=st.integers(min_value=-(2**33), max_value=2**33),
    drop=st.sampled_from([None, "body", "features", "prediction_id", "outputs", "model_name"]),
    extra=st.none() | st.tuples(st.sampled_from(["unknown", "endpoint", "body_truncated"]), _odd_values),
)
def test_compiled_encoder_gives_fastavros_bytes_or_its_error(
    kind: str, event_time: object, previous: str | None, features: dict, body: bytes | None, size: int,
    status: int, drop: str | None, extra: tuple[str, object] | None,
) -> None:
    fields = {
        "InferenceRequest": {"prediction_id": "p-1", "endpoint": "/predict", "method": "POST", "path": "/predict",
                             "model_name": None, "model_version": "7", "content_type": "application/json",
                             "body_size": size, "body_sha256": "ab" * 32, "body": body, "body_truncated": False,
                             "features": features, "parse_error": None, "client_id": None, "traceparent": "t"},
        "InferenceResponse": {"prediction_id": "p-1", "endpoint": "/predict", "status": status, "model_name": "m",
                              "model_version": None, "body_size": size, "body_sha256": "ab" * 32, "body": body,
                              "body_truncated": True, "outputs": features, "latency_us": size, "error": None},
        "DeliveryGap": {"dropped": size, "reason": "queue_full", "first_time": event_time, "last_time": event_time},
    }[kind]
    value = {**new_envelope(producer_identity("sidecar", "s-1")), "event_time": event_time, "prev_hash": previous,
             **fields}
    value.pop(drop or "", None)
    if extra is not None:
        value[extra[0]] = extra[1]
    expected = _fastavro_body(kind, value)
    if isinstance(expected, bytes):
        assert default_catalog().encode_body(kind, value) == expected
    else:
        with pytest.raises(InvalidEventError):
            default_catalog().encode_body(kind, value)
