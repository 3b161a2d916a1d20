"""Finding 6 (bundles): verify_bundle trusted the key the bundle's own manifest named, so anyone could
alter a bundle and sign it again with a key of their own. A bundle is checked against the key the
verifier trusts, and its events against keys trusted per producer, never against what it carries.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from provline.schemas import default_catalog
from provline.sink.evidence import EVENTS, MANIFEST, build_bundle, verify_bundle
from provline.sink.verify import Trust
from tests.helpers import events_sent, memory_emitter

SERVE_KEY = Ed25519PrivateKey.generate()
JOB_KEY = Ed25519PrivateKey.generate()


def evidence_of(raws: list[bytes]) -> dict[str, Any]:
    catalog = default_catalog()
    events = [{"event_id": catalog.decode(raw).value["event_id"], "kind": catalog.decode(raw).record,
               "raw": base64.b64encode(raw).decode()} for raw in raws]
    return {"subject": {"kind": "model", "id": "churn@3"}, "trace": None, "lineage": {"nodes": [], "edges": []},
            "evaluations": [], "decisions": [], "deployments": [], "events": events}


def job_decision(actor: str, key: Ed25519PrivateKey) -> list[bytes]:
    text = base64.b64encode(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())).decode()
    emitter, transport = memory_emitter("train-churn", signing={"key": text})
    emitter.emit("Decision", {"subject": "model:churn@3", "transition": "staging->production",
                              "outcome": "APPROVED", "actor": actor, "role": "risk"})
    assert emitter.close(10)
    return events_sent(transport)


def test_a_bundle_signed_again_by_its_forger_does_not_verify() -> None:
    catalog = default_catalog()
    genuine = build_bundle(evidence_of(job_decision("rita", JOB_KEY)), "json", catalog, signer=SERVE_KEY)
    assert verify_bundle(genuine, catalog, public_key=SERVE_KEY.public_key()) == []

    forger = Ed25519PrivateKey.generate()
    forged = build_bundle(evidence_of(job_decision("mallory", forger)), "json", catalog, signer=forger)
    assert json.loads(forged[MANIFEST])["signature"]["public_key"]  # it names the forger's key...
    problems = verify_bundle(forged, catalog)  # ...which proves nothing: no trusted key, no verdict
    assert any("no trusted key was given" in p for p in problems)
    assert any("does not verify" in p for p in verify_bundle(forged, catalog, public_key=SERVE_KEY.public_key()))


def test_a_bundles_events_are_checked_with_the_keys_trusted_per_producer() -> None:
    catalog = default_catalog()
    trust = Trust({"train-churn": (JOB_KEY.public_key(),)})
    genuine = build_bundle(evidence_of(job_decision("rita", JOB_KEY)), "json", catalog, signer=SERVE_KEY)
    assert verify_bundle(genuine, catalog, public_key=SERVE_KEY.public_key(), trust=trust) == []

    # the serving side's key signs a bundle of events a forger made and signed: the events betray it
    forged = build_bundle(evidence_of(job_decision("mallory", Ed25519PrivateKey.generate())), "json", catalog,
                          signer=SERVE_KEY)
    problems = verify_bundle(forged, catalog, public_key=SERVE_KEY.public_key(), trust=trust)
    assert problems and all(p.startswith(f"{EVENTS} line") and "bad-signature" in p for p in problems)
