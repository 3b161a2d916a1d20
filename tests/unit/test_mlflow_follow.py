"""`provline mlflow follow`'s pure parts: round scheduling and backoff, the guard's events, and the
guard's decisions over a fake tracking server and store (the real ones: tests/real_servers/test_mlflow_follow.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import queue
import threading
import time
from typing import Any

import httpx
import pytest

from provline.producers.mlflow_bridge import mapping
from provline.producers.mlflow_bridge.follow import (
    MAX_BACKOFF_S,
    MIN_RETRY_S,
    Follower,
    GuardUnavailable,
    parse_guard,
    round_delay,
)
from provline.producers.mlflow_bridge.importer import ImportState
from provline.producers.mlflow_bridge.webhooks import (
    DELIVERY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    TOLERANCE_S,
    DeliveryRefused,
    WebhookListener,
    parse_listen,
    signature,
    verify_delivery,
)
from provline.sink.promotion import LineageFacts, PromotionPolicy, missing_requirements
from tests.helpers import decoded, memory_emitter


def test_a_round_that_worked_waits_the_interval_and_failures_back_off_doubling_to_a_cap() -> None:
    assert round_delay(30.0, 0) == 30.0
    assert [round_delay(0.5, n) for n in range(1, 5)] == [MIN_RETRY_S, 2 * MIN_RETRY_S, 4 * MIN_RETRY_S,
                                                          8 * MIN_RETRY_S]
    assert [round_delay(5.0, n) for n in range(1, 4)] == [5.0, 10.0, 20.0]
    assert round_delay(5.0, 40) == MAX_BACKOFF_S and round_delay(5.0, 10_000) == MAX_BACKOFF_S
    assert round_delay(600.0, 3) == 600.0, "a retry never waits longer than a long interval asks"


def test_guard_rules_are_alias_equals_environment() -> None:
    assert parse_guard("champion=production") == ("champion", "production")
    assert parse_guard(" champion = production ") == ("champion", "production")
    for wrong in ("champion", "=production", "champion=", ""):
        with pytest.raises(ValueError, match="ALIAS=ENV"):
            parse_guard(wrong)


def _move(version: str, previous: str | None, *, visit: int = 0) -> dict[str, Any]:
    return mapping.alias_deployment("m", "champion", version, previous_version=previous,
                                    endpoint=mapping.alias_endpoint("m", "champion"), environment="champion",
                                    at_millis=1_700_000_000_000, visit=visit)[1]


def test_a_rejection_is_a_decision_on_the_version_naming_what_is_missing_and_the_move() -> None:
    move = _move("3", "1")
    kind, decision = mapping.guard_rejection(move, environment="production", missing=["no approval by role x"])
    assert kind == "Decision" and decision["outcome"] == "REJECTED" and decision["subject"] == "model:m@3"
    assert decision["transition"] == "registered->production" and decision["role"] == mapping.GUARD_ROLE
    assert "no approval by role x" in decision["rationale"] and move["event_id"] in decision["rationale"]
    assert decision["alternatives"] == ["1"]
    again = mapping.guard_rejection(move, environment="production", missing=["something else"])[1]
    assert again["event_id"] == decision["event_id"], "checking the same move again gives the same Decision"
    recorded = mapping.rejected_deployment(move, decision, environment="production")
    assert recorded["event_id"] == move["event_id"] and recorded["action"] == "PROMOTE"
    assert decision["event_id"] in recorded["reason"] and recorded["reason"].startswith(move["reason"])


def test_the_guards_rejection_is_not_an_approval_nor_hides_a_later_one() -> None:
    policy = PromotionPolicy(require_training_run=False, require_commit=False, require_environment=False,
                             require_dataset_digests=False, require_passing_evaluation=False,
                             required_roles={"production": ["risk-officer"]})
    rejection = mapping.guard_rejection(_move("3", "1"), environment="production", missing=["x"])[1]
    approval = {"subject": "model:m@3", "transition": "registered->production", "outcome": "APPROVED",
                "role": "risk-officer", "actor": "ada"}
    facts = LineageFacts("m", "3", model={"run_id": None}, decisions=[rejection])
    assert missing_requirements(facts, policy, "production") == [
        "no approval by role risk-officer for model:m@3 -> production"]
    facts.decisions = [approval, rejection]
    assert missing_requirements(facts, policy, "production") == []


def test_a_rollback_has_the_id_the_next_import_gives_the_alias_standing_there_again() -> None:
    times = {"1": 1_700_000_000_000, "3": 1_700_000_300_000}
    rollback, history = mapping.alias_rollback("m", "champion", ["1", "3"], version_times=times, reason="guard")
    assert (rollback["model_version"], rollback["action"], rollback["previous_version"]) == ("1", "ROLLBACK", "3")
    assert history == ["1", "3", "1"] and rollback["reason"] == "guard"
    [(_, next_import, remembered)] = mapping.alias_moves("m", {"champion": "1"}, {"champion": {"history": history}},
                                                         version_times=times)
    assert next_import["event_id"] == rollback["event_id"] and remembered == history
    first = mapping.alias_moves("m", {"champion": "1"}, {}, version_times=times)[0][1]
    assert first["event_id"] != rollback["event_id"], "going back to a version is a new event"
    with pytest.raises(ValueError, match="no earlier version"):
        mapping.alias_rollback("m", "champion", ["1"], version_times=times, reason="guard")


class FakeServer:
    """A tracking server's answers: one registered model ``m`` (versions 1..3, no runs) and its aliases."""

    def __init__(self, aliases: dict[str, str]) -> None:
        self.aliases = dict(aliases)
        self.moved_back: list[tuple[str, str]] = []
        self.down = False

    def _up(self) -> None:
        if self.down:
            from provline.producers.mlflow_bridge.client import MlflowError

            raise MlflowError("MLflow tracking server http://fake did not answer")

    def experiments(self, names: list[str] | None = None) -> list[dict[str, Any]]:
        self._up()
        return [{"experiment_id": "0"}]

    def runs(self, experiment_ids: list[str], *, since_millis: int | None = None) -> list[dict[str, Any]]:
        return []

    def registered_models(self) -> list[dict[str, Any]]:
        return [{"name": "m", "aliases": [{"alias": a, "version": v} for a, v in self.aliases.items()]}]

    def model_versions(self, name: str) -> list[dict[str, Any]]:
        return [{"name": "m", "version": str(n), "creation_timestamp": 1_700_000_000_000 + n, "status": "READY"}
                for n in (1, 2, 3)]

    def download_uri(self, name: str, version: str) -> str:
        from provline.producers.mlflow_bridge.client import ArtifactsUnavailable

        raise ArtifactsUnavailable("not in this fake")

    def logged_model(self, model_id: str) -> None:
        return None

    def alias_version(self, name: str, alias: str) -> str | None:
        return self.aliases.get(alias)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self._up()
        self.aliases[alias] = version
        self.moved_back.append((alias, version))


class FakeStore:
    """The store as the guard asks it: it holds everything at once; ``approved`` versions meet the policy."""

    def __init__(self, approved: set[str]) -> None:
        self.approved = approved
        self.answering = True

    def stored(self, event_ids: list[str]) -> set[str]:
        if not self.answering:
            raise GuardUnavailable("audit API down")
        return set(event_ids)

    def missing(self, model_name: str, version: str, environment: str) -> list[str]:
        return [] if version in self.approved else [f"no approval of {model_name}@{version} for {environment}"]


def _follower(server: FakeServer, store: FakeStore, *, enforce: bool) -> Follower:
    emitter, _ = memory_emitter("provline-mlflow-import")
    return Follower(server, emitter, ImportState(None, key="k"),  # type: ignore[arg-type]
                    guards={"champion": "production"}, check=store, enforce=enforce, store_wait_s=1.0)


def _moves(follower: Follower, alias: str = "champion") -> list[tuple[str, str, str | None]]:
    return [(v["model_version"], v["action"], v["previous_version"]) for k, v in decoded(follower.emitter)
            if k == "Deployment" and v["endpoint"].endswith(f"@{alias}")]


def _decisions(follower: Follower) -> list[tuple[str, str]]:
    return [(v["subject"], v["outcome"]) for k, v in decoded(follower.emitter) if k == "Decision"]


def test_the_guard_passes_approved_moves_rejects_others_and_with_enforce_moves_them_back_once() -> None:
    server, store = FakeServer({"champion": "1", "challenger": "1"}), FakeStore({"1", "2"})
    follower = _follower(server, store, enforce=True)
    first = follower.round()
    assert [v.passed for v in first.verdicts] == [True] and first.error is None
    server.aliases["champion"] = "3"
    rejected = follower.round()
    [verdict] = rejected.verdicts
    assert not verdict.passed and verdict.rolled_back and verdict.previous_version == "1"
    assert server.aliases["champion"] == "1" and server.moved_back == [("champion", "1")]
    server.aliases["champion"] = "2"
    assert [v.passed for v in follower.round().verdicts] == [True]
    for _ in range(3):
        assert follower.round().sent == 0, "nothing is sent again"
    assert _moves(follower) == [("1", "DEPLOY", None), ("3", "PROMOTE", "1"), ("1", "ROLLBACK", "3"),
                                ("2", "PROMOTE", "1")]
    assert _moves(follower, "challenger") == [("1", "DEPLOY", None)], "an alias not guarded is not held"
    assert _decisions(follower) == [("model:m@3", "REJECTED")]


def test_without_enforce_a_rejected_move_stays_and_a_first_seen_alias_is_never_moved() -> None:
    server, store = FakeServer({"champion": "3"}), FakeStore({"1"})
    follower = _follower(server, store, enforce=True)
    [verdict] = follower.round().verdicts
    assert not verdict.passed and not verdict.rolled_back and verdict.not_rolled_back
    server.aliases["champion"] = "2"
    follower.enforce = False
    [verdict] = follower.round().verdicts
    assert not verdict.passed and not verdict.rolled_back and server.aliases["champion"] == "2"
    assert server.moved_back == []


def test_a_move_the_store_cannot_judge_yet_is_held_and_judged_next_round() -> None:
    server, store = FakeServer({"champion": "1"}), FakeStore({"1"})
    follower = _follower(server, store, enforce=True)
    store.answering = False
    held = follower.round()
    assert held.verdicts == [] and held.deferred and "audit API down" in held.deferred[0]
    assert _moves(follower) == [], "not emitted before the guard judged it"
    first_seen = held.report.held[0].moved_at if held.report else None
    store.answering = True
    assert [v.passed for v in follower.round().verdicts] == [True]
    assert _moves(follower) == [("1", "DEPLOY", None)]
    [(_, deployment)] = [(k, v) for k, v in decoded(follower.emitter) if k == "Deployment"]
    assert deployment["event_time"] == first_seen, "dated by the round that first saw the move"


def test_a_rollback_mlflow_refused_is_tried_again_next_round() -> None:
    server, store = FakeServer({"champion": "1"}), FakeStore({"1"})
    follower = _follower(server, store, enforce=True)
    follower.round()
    server.aliases["champion"] = "3"
    real_set = server.set_alias

    def refuse(name: str, alias: str, version: str) -> None:
        from provline.producers.mlflow_bridge.client import MlflowError

        raise MlflowError("refused")

    server.set_alias = refuse  # type: ignore[method-assign]
    failed = follower.round()
    assert failed.error == "refused" and server.aliases["champion"] == "3"
    server.set_alias = real_set  # type: ignore[method-assign]
    [retried] = follower.round().verdicts
    assert retried.rolled_back and server.aliases["champion"] == "1"
    assert _moves(follower) == [("1", "DEPLOY", None), ("3", "PROMOTE", "1"), ("1", "ROLLBACK", "3")]
    assert follower.round().sent == 0


# ---------------------------------------------------------------- webhook deliveries

SECRET = "s3cret"
BODY = b'{"entity": "model_version_alias", "action": "created", "timestamp": "2026-01-01T00:00:00+00:00", "data": {}}'


def _signed(delivery_id: str = "d-1", timestamp: int = 1_700_000_000, body: bytes = BODY,
            secret: str = SECRET) -> dict[str, str]:
    return {DELIVERY_ID_HEADER: delivery_id, TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: signature(secret, delivery_id, str(timestamp), body)}


def test_the_signature_is_mlflows_hmac_of_id_timestamp_and_body() -> None:
    # MLflow 3.x: "v1," + base64(HMAC-SHA256(secret, f"{delivery_id}.{timestamp}.{payload}"))
    expected = base64.b64encode(hmac.new(b"k", b"id.17.{}", hashlib.sha256).digest()).decode()
    assert signature("k", "id", "17", b"{}") == f"v1,{expected}"


def test_a_delivery_signed_with_the_secret_within_the_tolerance_is_accepted() -> None:
    assert verify_delivery(SECRET, _signed(), BODY, now=1_700_000_000) == "d-1"
    assert verify_delivery(SECRET, _signed(), BODY, now=1_700_000_000 + TOLERANCE_S) == "d-1"
    assert verify_delivery(SECRET, _signed(), BODY, now=1_700_000_000 - 10) == "d-1", "a clock a little behind"


@pytest.mark.parametrize(("headers", "body", "now", "why"), [
    (_signed(secret="another"), BODY, 1_700_000_000, "does not match"),
    (_signed(), BODY + b" ", 1_700_000_000, "does not match"),
    (_signed(delivery_id="d-2") | {DELIVERY_ID_HEADER: "d-3"}, BODY, 1_700_000_000, "does not match"),
    (_signed() | {TIMESTAMP_HEADER: "1700000001"}, BODY, 1_700_000_000, "does not match"),
    (_signed() | {SIGNATURE_HEADER: "v1,"}, BODY, 1_700_000_000, "does not match"),
    (_signed(), BODY, 1_700_000_000 + TOLERANCE_S + 1, "a replay"),
    (_signed(), BODY, 1_700_000_000 - TOLERANCE_S - 1, "a replay"),
    (_signed() | {TIMESTAMP_HEADER: "yesterday"}, BODY, 1_700_000_000, "not Unix seconds"),
    ({DELIVERY_ID_HEADER: "d-1", TIMESTAMP_HEADER: "1700000000"}, BODY, 1_700_000_000, "with a secret"),
    ({}, BODY, 1_700_000_000, "needs the headers"),
])
def test_a_delivery_that_does_not_hold_is_refused_saying_why(headers: dict[str, str], body: bytes, now: float,
                                                              why: str) -> None:
    with pytest.raises(DeliveryRefused, match=why):
        verify_delivery(SECRET, headers, body, now=now)


def test_webhook_listen_is_host_colon_port() -> None:
    assert parse_listen("127.0.0.1:8765") == ("127.0.0.1", 8765)
    assert parse_listen("[::1]:8765") == ("::1", 8765)
    for wrong in ("8765", "127.0.0.1", "127.0.0.1:", ":8765", "host:http", "host:70000", "host:0"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_listen(wrong)


def test_a_wake_starts_the_next_round_at_once_and_stop_with_a_wake_ends_the_wait() -> None:
    server = FakeServer({"champion": "1"})
    follower = _follower(server, FakeStore({"1", "2"}), enforce=False)
    stop, wake, rounds = threading.Event(), threading.Event(), queue.Queue[Any]()
    runner = threading.Thread(target=follower.run, args=(stop,), daemon=True,
                              kwargs={"interval_s": 600.0, "on_round": rounds.put, "wake": wake})
    runner.start()
    assert rounds.get(timeout=10).number == 1
    server.aliases["champion"] = "2"
    wake.set()
    assert rounds.get(timeout=10).number == 2, "a wake does not wait out the 600 s interval"
    assert _moves(follower) == [("1", "DEPLOY", None), ("2", "PROMOTE", "1")]
    stop.set()
    wake.set()
    runner.join(timeout=10)
    assert not runner.is_alive() and rounds.empty()


def test_the_listener_wakes_on_a_signed_delivery_only_and_once_per_delivery_id() -> None:
    woken = threading.Event()
    listener = WebhookListener(("127.0.0.1", 0), SECRET, on_delivery=woken.set).start()
    try:
        url = f"http://127.0.0.1:{listener.port}/"
        now = int(time.time())
        assert httpx.post(url, content=BODY, headers=_signed(secret="x", timestamp=now)).status_code == 401
        assert not woken.is_set()
        assert httpx.post(url, content=BODY, headers=_signed(timestamp=now)).status_code == 204
        assert woken.is_set()
        again = httpx.post(url, content=BODY, headers=_signed(timestamp=now))
        assert again.status_code == 401 and "delivered before" in again.text
        assert (listener.accepted, listener.refused) == (1, 2)
    finally:
        listener.close()
