"""Finding 6: the processors never signed their PredictionTrace and DriftMetric events, so with signing
required every processors session failed verify. A real worker, given PROVLINE_SIGNING__KEY, signs
every trace, drift metric and seal; verify, trusting that key for the processors' producer name only,
finds its sessions intact, sealed at shutdown, and signed (finding 8: their ids, derived from request
and window times, are not in chain order, which no longer matters).
"""

from __future__ import annotations

import base64
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from provline.schemas import Topics, default_catalog
from provline.schemas.frames import events_in
from provline.sink.store import migrate, open_store
from provline.sink.verifier import verify_store
from provline.sink.verify import Trust
from provline.stream_processors.traces import PRODUCER_NAME
from tests.integration.test_processors_join import Events
from tests.integration.test_processors_stream import baseline_profiles, halves_of, lineage_events, produce
from tests.security.test_tamper import store_messages

pytestmark = pytest.mark.integration

PREDICTIONS = 300  # per model version
WINDOW_S = 5
DEADLINE_S = 90


def read_topics(bootstrap: str, topics: list[str], quiet_s: float = 3.0) -> list[bytes]:
    """Every message on ``topics``, read until none arrives for ``quiet_s``."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"signing-{time.time_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe(topics)
    values: list[bytes] = []
    quiet_until = time.monotonic() + quiet_s + 10  # the first assignment takes a while
    try:
        while time.monotonic() < quiet_until:
            batch = [m for m in consumer.consume(1000, 0.5) if m.error() is None]
            if batch:
                values += [event for m in batch for event in events_in(default_catalog(), m.value())]
                quiet_until = time.monotonic() + quiet_s
    finally:
        consumer.close()
    return values


def test_a_signing_worker_signs_traces_drift_and_seals_and_verify_trusts_only_its_key(
    kafka_bootstrap: str, topics: Topics, worker_factory: Any, chdb_path: str,
) -> None:
    key = Ed25519PrivateKey.generate()
    worker = worker_factory("signing", PROVLINE_SIGNING__KEY=base64.b64encode(
        key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())).decode(),
        PROVLINE_DRIFT__WINDOW_S=str(WINDOW_S), PROVLINE_DRIFT__LATENESS_S="1")
    events = Events()
    start = (int(time.time()) // WINDOW_S + 1) * WINDOW_S  # every request in the next window
    at = datetime.fromtimestamp(start, UTC)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 20})
    produce(producer, topics.lineage, lineage_events(events, at - timedelta(minutes=1), baseline_profiles()))
    rng = np.random.default_rng(5)
    requests, responses = halves_of(
        events, at, PREDICTIONS, spacing_ms=1,
        features=lambda i: ({"x": float(rng.normal()), "plan": "basic"}, {"score": float(rng.uniform())}))
    messages = requests + responses
    random.Random(2).shuffle(messages)
    produce(producer, topics.inference, messages)

    catalog = default_catalog()
    deadline = time.monotonic() + DEADLINE_S
    drift: list[bytes] = []
    while not drift and time.monotonic() < deadline:
        worker.check_alive()
        drift = read_topics(kafka_bootstrap, [topics.drift], quiet_s=1.0)
    assert drift, "no drift metric within the deadline"
    worker.stop()  # SIGTERM: the worker seals its session

    produced = [raw for raw in read_topics(kafka_bootstrap, [topics.traces, topics.drift, topics.lineage])
                if catalog.decode(raw).value["producer"]["name"] == PRODUCER_NAME]
    kinds = [catalog.decode(raw).record for raw in produced]
    assert kinds.count("PredictionTrace") >= PREDICTIONS and "DriftMetric" in kinds and "SessionSeal" in kinds
    assert all(catalog.decode(raw).value["signature"] for raw in produced)

    client = open_store(chdb_path)
    try:
        migrate(client)
        store_messages(client, produced)
        public = base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
        report = verify_store(client, catalog, Trust.from_config({PRODUCER_NAME: [public]}))
        assert report.findings == [] and report.unsealed == [] and report.events == len(produced)
        other = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        wrong = verify_store(client, catalog, Trust.from_config({PRODUCER_NAME: [base64.b64encode(other).decode()]}))
        assert {f.problem for f in wrong.findings} == {"bad-signature"}
        assert len(wrong.findings) == len(produced)
    finally:
        client.close()
