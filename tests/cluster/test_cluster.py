"""provline's guarantees on a three-broker KRaft cluster (deploy/local/kafka's LocalKafkaCluster).

(a) a broker SIGKILLed while 10,000 predictions flow through the sidecar, the processors and the
    sink: every prediction stored exactly once, request, response and trace;
(b) two processors workers sharing the partitions, one SIGKILLed mid-flow: the survivor takes its
    partitions, and the store holds every trace exactly once (a trace re-sent after the kill carries
    the same event id, and the store keeps one per event id: see :func:`exactly_once_stored`);
(c) the sink killed mid-batch again and again, each time replaced by a sink of another host identity
    on the same store directory moved to it (as a volume is re-attached): every event stored once.

All processes are real, started as deploy/demo/stack.py starts them; each test has topics of its own
under one cluster the module shares. Counts are physical rows (no FINAL), except for re-published
traces (:func:`exactly_once_stored`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from deploy.demo.stack import ENDPOINT, DemoStack
from deploy.local.kafka import LocalKafkaCluster
from provline.config import KafkaSettings, TopicSettings
from provline.schemas import Topics
from provline.schemas.frames import exchange_frame
from provline.sink.writer import IN_FLIGHT_PREFIX
from provline.topics import describe, ensure_topics
from tests.integration.test_processors_join import Events, WorkerProcess, start_worker
from tests.integration.test_processors_stream import TraceReader, expected_version, halves_of, lineage_events
from tests.integration.test_sink_crash import (
    COUNT,
    SINK,
    committed,
    end_offsets,
    make_events,
    produce_steadily,
    run_sink_until_caught_up,
)

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
BROKERS = 3
PREDICTIONS = 10_000
KILL_AT_SHARE = 0.3
SENDERS = 8  # client threads in front of the sidecar
STORE_DEADLINE_S = 240.0  # a loaded 2-core machine: polled, the test goes on as soon as all is there
DRAIN_S = 3.0  # after everything is stored, how long a late duplicate may still show up
SESSION_TIMEOUT_S = "8"  # a killed group member's partitions are handed over after this long
HANDOVER_LINEAGE_WAIT_S = "40"  # longer than a hand-over on a loaded machine: 8 s + rebalance + recovery
SINK_EVENTS = 20_000
SINK_HANDOVERS = 4


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafkaCluster]:
    nodes = LocalKafkaCluster(tmp_path_factory.mktemp("cluster"), brokers=BROKERS)
    nodes.start()
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
def cluster_up(cluster: LocalKafkaCluster) -> LocalKafkaCluster:
    """The cluster with every node running (a test before may have left one killed)."""
    return cluster.start()


def replicated_topics(cluster: LocalKafkaCluster, name: str) -> Topics:
    """provline's topics of one test, made by provline's own ensure_topics with 3 replicas and min ISR 2."""
    settings = TopicSettings(prefix=f"{name}-{uuid.uuid4().hex[:8]}", replication_factor=3, min_insync_replicas=2)
    kafka = KafkaSettings(bootstrap=cluster.bootstrap)
    reports = ensure_topics(kafka, settings, service="cluster test")
    assert {report.status for report in reports} == {"created"}, reports
    states = describe(AdminClient(kafka.librdkafka(log_level=0)), [r.name for r in reports], timeout_s=10)
    for state in states.values():
        assert (state.replication_factor, state.config.get("min.insync.replicas")) == (3, "2"), state
    return Topics(settings.prefix)


def first(ids: Any, count: int = 5) -> list[Any]:
    return sorted(ids)[:count]


def exactly_once(what: str, expected: set[str], stored: Counter[str], details: Any = None) -> None:
    """Every id of ``expected`` stored once, and nothing else; the message lists the first offenders
    (and ``details(ids)`` of the first duplicated ones, when given)."""
    missing = expected - set(stored)
    duplicated = {key: n for key, n in stored.items() if n > 1}
    unexpected = set(stored) - expected
    assert not (missing or duplicated or unexpected), (
        f"{what}: {len(missing)} missing (first: {first(missing)}), {len(duplicated)} stored more than once "
        f"(first: {first(duplicated.items())}), {len(unexpected)} unexpected (first: {first(unexpected)})"
        + (f"\nrows of the first duplicated: {details(first(duplicated, 2))}" if details and duplicated else ""))


def stored_counts(stack: DemoStack, table: str, *, final: bool = False) -> Counter[str]:
    rows = stack.sql(f"SELECT prediction_id, count() AS n FROM {table}{' FINAL' if final else ''} "
                     "GROUP BY prediction_id")
    return Counter({row["prediction_id"]: int(row["n"]) for row in rows})


def exactly_once_stored(stack: DemoStack, table: str, ids: set[str]) -> int:
    """Every prediction of ``ids`` once in ``table``; returns how many physical copies a merge will collapse.

    Requests and responses are published once, and a redelivered message is never inserted twice:
    physical rows. A trace may be *published* twice: a processors worker killed after sending a trace
    but before recording it as sent has its successor send it again, under the same event id
    (stream_processors/join.py), and the event tables are ReplacingMergeTrees by event id
    (sink/sql/0005_integrity.sql: the re-published copy replaces the stored one; the ledger keeps
    both for `provline verify`). So traces count as every audit query reads them, with FINAL, and
    the physical copies must all share their prediction's one event id.
    """
    def rows_of(pids: list[str]) -> list[dict[str, Any]]:
        listed = ", ".join(f"'{pid}'" for pid in pids)
        return stack.sql(f"SELECT * EXCEPT (payload, raw) FROM {table} WHERE prediction_id IN ({listed})")

    if table != "prediction_traces":
        exactly_once(table, ids, stored_counts(stack, table), rows_of)
        return 0
    exactly_once(table, ids, stored_counts(stack, table, final=True), rows_of)
    different = stack.sql(f"SELECT prediction_id FROM {table} GROUP BY prediction_id "
                          "HAVING uniqExact(event_id) > 1 LIMIT 5")
    assert not different, f"predictions with two different traces stored: {different}: {rows_of(different[:2])}"
    physical = stack.sql(f"SELECT count() AS n FROM {table}")[0]["n"]
    return int(physical) - len(ids)


def wait_until_stored(stack: DemoStack, tables: list[str], expected: int) -> None:
    """Poll the store until every table has ``expected`` prediction ids, then let a late duplicate arrive."""
    deadline = time.monotonic() + STORE_DEADLINE_S
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        for service in stack.services:
            assert service.process is not None and service.process.poll() is None, (
                f"{service.name} exited:\n{service.log_tail()}")
        counts = {table: int(stack.sql(f"SELECT uniqExact(prediction_id) AS n FROM {table}")[0]["n"])
                  for table in tables}
        if all(count >= expected for count in counts.values()):
            time.sleep(DRAIN_S)  # not an assertion: the window in which a duplicate would still land
            return
        time.sleep(1.0)  # polling interval
    logs = "\n".join(f"--- {s.name}\n{s.log_tail(15)}" for s in stack.services)
    pytest.fail(f"after {STORE_DEADLINE_S:.0f}s the store has {counts} of {expected} predictions\n{logs}")


def changelog_replicas(cluster: LocalKafkaCluster, app_id: str) -> dict[str, int]:
    metadata = AdminClient({**cluster.client_config(), "log_level": 0}).list_topics(timeout=10)
    return {name: len(next(iter(topic.partitions.values())).replicas)
            for name, topic in metadata.topics.items() if name.startswith(f"{app_id}-") and topic.partitions}


def send_predictions(stack: DemoStack, count: int, sent: list[tuple[str, int]], failures: list[BaseException]) -> None:
    """``count`` predictions through the sidecar from SENDERS threads; (prediction id, status) into ``sent``."""
    lock = threading.Lock()

    def sender(numbers: range) -> None:
        try:
            with httpx.Client(base_url=stack.sidecar_url, timeout=30.0) as client:
                for number in numbers:
                    body = json.dumps({"tenure_months": number % 72 + 1, "monthly_charges": 20.0 + number % 100,
                                       "support_calls": number % 5})
                    response = client.post(ENDPOINT, content=body, headers={"Content-Type": "application/json"})
                    with lock:
                        sent.append((response.headers.get("X-Prediction-ID", ""), response.status_code))
        except BaseException as exc:  # surfaced by the test thread
            failures.append(exc)

    threads = [threading.Thread(target=sender, args=(range(n, count, SENDERS),)) for n in range(SENDERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_a_broker_killed_mid_flow_loses_and_duplicates_no_prediction(
    cluster_up: LocalKafkaCluster, tmp_path: Path
) -> None:
    cluster = cluster_up
    topics = replicated_topics(cluster, "broker-kill")
    with DemoStack(tmp_path, kafka_bootstrap=cluster.bootstrap, topics=topics) as stack:
        stack.start_platform(processors_env={"PROVLINE_KAFKA__SESSION_TIMEOUT_S": SESSION_TIMEOUT_S})
        facts = stack.train()
        stack.start_serving(facts.model_path)

        sent: list[tuple[str, int]] = []
        failures: list[BaseException] = []
        sending = threading.Thread(target=send_predictions, args=(stack, PREDICTIONS, sent, failures))
        sending.start()
        deadline = time.monotonic() + STORE_DEADLINE_S
        while len(sent) < PREDICTIONS * KILL_AT_SHARE and sending.is_alive():
            assert time.monotonic() < deadline, f"only {len(sent)} predictions sent"
            time.sleep(0.05)  # polling interval
        leaders = cluster.leaders(topics.inference)
        victim = leaders[0]
        cluster.kill(victim)  # SIGKILL the leader of inference partition 0 while requests are in flight
        killed_at = len(sent)
        sending.join(STORE_DEADLINE_S)
        assert not failures, failures
        cluster.start(victim)  # back with its data: it rejoins as a follower and catches up

        assert len(sent) == PREDICTIONS
        refused = [(pid, status) for pid, status in sent if status != 200]
        assert not refused, f"{len(refused)} predictions not served (first: {refused[:5]})"
        ids = {pid for pid, _ in sent}
        assert len(ids) == PREDICTIONS, "the sidecar gave two exchanges one prediction id"
        tables = ["inference_requests", "inference_responses", "prediction_traces"]
        wait_until_stored(stack, tables, PREDICTIONS)
        copies = {table: exactly_once_stored(stack, table, ids) for table in tables}
        incomplete = stack.sql("SELECT prediction_id FROM prediction_traces WHERE NOT complete LIMIT 5")
        assert not incomplete, f"traces missing their lineage: {incomplete}"
        # nothing was dropped: a broker loss is no reason to drop by policy, so no DeliveryGap at all
        assert stack.sql("SELECT count() AS n FROM delivery_gaps")[0]["n"] == 0, stack.sql(
            "SELECT payload FROM delivery_gaps LIMIT 3")
        # the changelogs survived the loss because they are replicated like the inference topic
        replicas = changelog_replicas(cluster, f"{topics.prefix}-processors")
        assert replicas and set(replicas.values()) == {3}, replicas
    print(f"killed node {victim} (leaders of {topics.inference}: {leaders}) after {killed_at} predictions; "
          f"re-published copies awaiting a merge: {copies}")


def missing_ranges(missing: set[str], placed: dict[str, tuple[int, int]]) -> dict[int, str]:
    """Inference partition -> how many of ``missing`` it held and their lowest and highest offsets."""
    offsets: dict[int, list[int]] = {}
    for pid in missing:
        partition, offset = placed.get(pid, (-1, -1))
        offsets.setdefault(partition, []).append(offset)
    return {partition: f"{len(found)} in offsets {min(found)}..{max(found)}"
            for partition, found in sorted(offsets.items())}


def group_assignment(cluster: LocalKafkaCluster, group: str, topic: str) -> dict[str, list[int]]:
    """Member id -> partitions of ``topic`` it holds, as the group coordinator has them."""
    admin = AdminClient({**cluster.client_config(), "log_level": 0})
    [description] = [future.result(10) for future in admin.describe_consumer_groups([group]).values()]
    return {member.member_id: sorted(tp.partition for tp in member.assignment.topic_partitions if tp.topic == topic)
            for member in description.members}


def test_a_processors_worker_killed_mid_flow_hands_its_partitions_over_and_no_trace_is_lost_or_doubled(
    cluster_up: LocalKafkaCluster, tmp_path: Path
) -> None:
    cluster = cluster_up
    topics = replicated_topics(cluster, "worker-kill")
    app_id = f"{topics.prefix}-processors"
    with DemoStack(tmp_path, kafka_bootstrap=cluster.bootstrap, topics=topics) as stack:
        # traces wait for lineage across a hand-over (session timeout, rebalance, table recovery) rather
        # than go out incomplete and be revised: the setting README's "Processors" section gives for that
        worker_env = {"PROVLINE_KAFKA__SESSION_TIMEOUT_S": SESSION_TIMEOUT_S,
                      "PROVLINE_PROCESSORS__LINEAGE_WAIT_S": HANDOVER_LINEAGE_WAIT_S}
        stack.start_platform(processors_env=worker_env)
        survivor = start_worker(cluster.bootstrap, topics, tmp_path / "survivor", tmp_path / "survivor.log",
                                extra_env=worker_env)
        try:
            run_worker_kill(cluster, stack, topics, app_id, survivor)
        finally:
            survivor.stop()


def run_worker_kill(cluster: LocalKafkaCluster, stack: DemoStack, topics: Topics, app_id: str,
                    survivor: WorkerProcess) -> None:
    deadline = time.monotonic() + STORE_DEADLINE_S
    assignment: dict[str, list[int]] = {}
    while len(assignment) != 2 or not all(assignment.values()):  # both workers hold inference partitions
        survivor.check_alive()
        assert time.monotonic() < deadline, f"the two workers never shared the partitions: {assignment}"
        assignment = group_assignment(cluster, app_id, topics.inference)
        time.sleep(0.5)  # polling interval

    events = Events()
    base = datetime.now(UTC) - timedelta(minutes=2)
    producer = Producer({**cluster.client_config(), "acks": "all", "enable.idempotence": True, "linger.ms": 20})
    for key, value in lineage_events(events, base):
        producer.produce(topics.lineage, key=key.encode(), value=value)
    requests, responses = halves_of(events, base, PREDICTIONS)
    frames = [(key, exchange_frame(events.catalog, key, request, response))
              for (key, request), (_, response) in zip(requests, responses, strict=True)]
    half = len(frames) // 2
    placed: dict[str, tuple[int, int]] = {}  # prediction id -> (inference partition, offset)

    def delivered(error: Any, message: Any) -> None:
        if error is None:
            placed[message.key().decode()] = (message.partition(), message.offset())

    for key, frame in frames[:half]:
        producer.produce(topics.inference, key=key.encode(), value=frame, on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(30) == 0

    reader = TraceReader(cluster.bootstrap, [topics.traces])
    traces: dict[str, list[dict[str, Any]]] = {}
    try:
        while len(traces) < PREDICTIONS * KILL_AT_SHARE / 2:  # mid-flow: some of the first half traced
            survivor.check_alive()
            assert time.monotonic() < deadline, f"only {len(traces)} traces before the kill"
            for _, value in reader.poll():
                traces.setdefault(value["prediction_id"], []).append(value)
        [victim] = [service for service in stack.services if service.name == "processors"]
        assert victim.process is not None
        os.killpg(victim.process.pid, signal.SIGKILL)  # no shutdown, no commit, no flush
        victim.process.wait()
        stack.services.remove(victim)
        for key, frame in frames[half:]:
            producer.produce(topics.inference, key=key.encode(), value=frame, on_delivery=delivered)
            producer.poll(0)
        assert producer.flush(30) == 0

        while sorted(sum(assignment.values(), [])) != list(range(4)) or len(assignment) != 1:
            survivor.check_alive()
            assert time.monotonic() < deadline, f"the survivor did not take every partition: {assignment}"
            assignment = group_assignment(cluster, app_id, topics.inference)
            time.sleep(0.5)  # polling interval
        ids = {key for key, _ in frames}
        # the survivor's traces first (where a loss is the join's), then the store (where it is the sink's)
        while set(traces) != ids and time.monotonic() < deadline:
            survivor.check_alive()
            for _, value in reader.poll():
                traces.setdefault(value["prediction_id"], []).append(value)
        assert set(traces) == ids, (
            f"{len(ids - set(traces))} predictions have no trace in {topics.traces}; "
            f"missing per inference partition: {missing_ranges(ids - set(traces), placed)}\n"
            f"--- survivor\n{survivor.log_path.read_text()[-4000:]}")
        wait_until_stored(stack, ["prediction_traces"], PREDICTIONS)
        for _, value in reader.poll(DRAIN_S):
            traces.setdefault(value["prediction_id"], []).append(value)
    finally:
        reader.close()

    copies = exactly_once_stored(stack, "prediction_traces", ids)
    # the traces topic: any trace sent again after the kill has the same event id
    different = {pid: len({t["event_id"] for t in found}) for pid, found in traces.items()
                 if len({t["event_id"] for t in found}) > 1}
    assert not different, f"predictions with different traces: {first(different.items())}"
    wrong = [pid for pid, found in traces.items()
             if not all(t["complete"] and t["model_version"] == expected_version(int(pid.split("-")[1]))
                        for t in found)]
    shown = {pid: (expected_version(int(pid.split("-")[1])), placed.get(pid),
                   [(t["complete"], t["missing"], t["model_version"], t["event_id"], t["event_time"])
                    for t in traces[pid]]) for pid in first(wrong)}
    assert not wrong, (f"traces with the wrong model version or incomplete (expected version, (partition, offset), "
                       f"traces): {shown}\n--- survivor\n{survivor.log_path.read_text()[-4000:]}")
    resent = sum(len(found) - 1 for found in traces.values())
    print(f"survivor holds {assignment}; {resent} traces re-sent with their first event id, "
          f"{copies} stored copies awaiting a merge")


def test_a_sink_killed_mid_batch_and_taken_over_by_another_host_stores_every_event_once(
    cluster_up: LocalKafkaCluster, tmp_path: Path
) -> None:
    cluster = cluster_up
    topics = replicated_topics(cluster, "sink-handover")
    rng = random.Random(16)
    events = make_events(SINK_EVENTS)
    group = f"{topics.prefix}-sink"
    volume = tmp_path / "volume"  # the store directory, moved from one host to the next

    def sink_env(host: str) -> dict[str, str]:
        return {**os.environ, "PROVLINE_KAFKA__BOOTSTRAP": cluster.bootstrap, "PROVLINE_TOPICS__PREFIX": topics.prefix,
                "PROVLINE_STORE__URL": f"chdb://{tmp_path / host / 'store'}", "PROVLINE_SINK__CONSUMER_GROUP": group,
                "PROVLINE_SINK__BATCH_MAX_EVENTS": "1000", "PROVLINE_SINK__BATCH_MAX_S": "0.2",
                "PROVLINE_KAFKA__SESSION_TIMEOUT_S": SESSION_TIMEOUT_S,
                "PROVLINE_KAFKA__CLIENT": json.dumps({"client.id": f"sink-{host}"})}

    def attach(host: str) -> None:
        (tmp_path / host).mkdir(exist_ok=True)
        if volume.exists():
            shutil.move(volume, tmp_path / host / "store")

    def detach(host: str) -> None:
        if (tmp_path / host / "store").exists():
            shutil.move(tmp_path / host / "store", volume)

    done, failures = threading.Event(), []
    producing = threading.Thread(target=produce_steadily,
                                 args=(cluster.bootstrap, topics, events, 15.0, done, failures))
    producing.start()
    deadline = time.monotonic() + STORE_DEADLINE_S
    in_flight_seen = 0
    hosts = ["host-a", "host-b"]
    try:
        for handover in range(SINK_HANDOVERS):
            host = hosts[handover % 2]
            attach(host)
            before = sum(max(o, 0) for o, _ in committed(cluster.bootstrap, group, topics).values())
            sink = subprocess.Popen([sys.executable, "-c", SINK], env=sink_env(host), cwd=ROOT)
            try:
                while sum(max(o, 0) for o, _ in committed(cluster.bootstrap, group, topics).values()) <= before:
                    assert sink.poll() is None, f"the sink on {host} exited on its own"
                    assert time.monotonic() < deadline, f"the sink on {host} made no progress"
                    time.sleep(0.05)  # polling interval
                time.sleep(rng.uniform(0.0, 0.5))  # a random moment after its first commit: mid-batch
            finally:
                sink.send_signal(signal.SIGKILL)
                sink.wait(30)
            detach(host)
            in_flight_seen += any(meta.startswith(IN_FLIGHT_PREFIX)
                                  for _, meta in committed(cluster.bootstrap, group, topics).values())
        producing.join(STORE_DEADLINE_S)
        assert not failures, failures
        target = end_offsets(cluster.bootstrap, topics)
        last = hosts[SINK_HANDOVERS % 2]
        attach(last)
        run_sink_until_caught_up(sink_env(last), cluster.bootstrap, group, topics, target, deadline)
    finally:
        producing.join(STORE_DEADLINE_S)

    counted = subprocess.run([sys.executable, "-c", COUNT, f"chdb://{tmp_path / last / 'store'}"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120, check=True)
    stored = json.loads(counted.stdout)
    tables = {"InferenceRequest": "inference_requests", "PredictionTrace": "prediction_traces",
              "ModelVersion": "model_versions"}
    for kind, table in tables.items():
        expected = {event_id for event_kind, event_id, _, _ in events if event_kind == kind}
        exactly_once(table, expected, Counter(stored[table]))
    print(f"{SINK_HANDOVERS} handovers; {in_flight_seen} landed between an insert and its commit")
