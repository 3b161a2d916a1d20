"""Fail-open delivery: the broker is away while the sidecar serves; every event arrives later, once,
or, when the spool is full and events are dropped, a DeliveryGap says how many and when."""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import REGISTRY

from deploy.local.kafka import LocalKafka
from provline.schemas import Topics
from provline.schemas.events import utcnow
from provline.sidecar import SidecarApp, SidecarSettings
from provline.sink.settings import ServeSettings
from provline.sink.store import migrate, open_store
from provline.sink.writer import SinkWriter
from tests import helpers
from tests.helpers import LoopThread, consume_events
from tests.integration.test_sidecar_proxy import Upstream, start_server, stop_server

pytestmark = pytest.mark.integration

REQUESTS = 2000
CONCURRENCY = 32
DEADLINE_S = 120.0


async def send_all(url: str, ids: list[str]) -> list[int]:
    statuses: list[int] = []
    queue = list(reversed(ids))
    async with aiohttp.ClientSession() as session:
        async def worker() -> None:
            while queue:
                prediction_id = queue.pop()
                async with session.post(f"{url}/predict", data=b'{"age": 41, "city": "Oslo"}',
                                        headers={"X-Request-ID": prediction_id,
                                                 "Content-Type": "application/json"}) as reply:
                    await reply.read()
                    statuses.append(reply.status)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return statuses




def dropped() -> float:
    return sum(sample.value for metric in REGISTRY.collect() if metric.name == "provline_events_dropped"
               for sample in metric.samples if sample.name.endswith("_total"))


def stoppable(local_kafka: LocalKafka | None) -> LocalKafka:
    if local_kafka is None:
        pytest.fail("this test stops and restarts the broker: run it with the local broker, "
                    "not TEST_KAFKA_BOOTSTRAP")
    return local_kafka


def test_with_the_broker_down_every_request_succeeds_and_every_event_is_stored_once_later(
    local_kafka: LocalKafka | None, topics: Topics, chdb_path: str, tmp_path: Path
) -> None:
    local_kafka = stoppable(local_kafka)
    loop = LoopThread()
    upstream = Upstream()
    runner = loop.run(upstream.start())
    settings = SidecarSettings(
        sidecar={"upstream": f"http://127.0.0.1:{upstream.port}", "kserve_metadata": False},
        kafka={"bootstrap": local_kafka.bootstrap}, topics={"prefix": topics.prefix},
        emitter={"spool_dir": tmp_path / "spool", "producer_name": "sidecar-fault"},
    )
    app = SidecarApp(settings)  # builds and owns its emitter: on_full=drop, spool <spool_dir>/worker-0
    ids = [f"fault-{i}-{uuid.uuid4().hex[:8]}" for i in range(REQUESTS)]
    drops_before = dropped()
    server, task, url = loop.run(start_server(app))
    try:
        local_kafka.stop()
        try:
            statuses = loop.run(send_all(url, ids), timeout=DEADLINE_S)
            assert statuses == [200] * REQUESTS
            backlog = wait_until(lambda: app.emitter.backlog == REQUESTS,  # one message per exchange
                                 "every event to be queued or spooled")
            assert backlog and (tmp_path / "spool" / "worker-0").is_dir()
        finally:
            local_kafka.start()
        wait_until(lambda: app.emitter.backlog == 0, "the spool to drain into the broker")
    finally:
        loop.run(stop_server(server, task), timeout=60)
        loop.run(runner.cleanup())
        loop.close()
    assert dropped() == drops_before

    store = open_store(chdb_path)
    migrate(store)
    sink = ServeSettings(kafka={"bootstrap": local_kafka.bootstrap}, topics={"prefix": topics.prefix},
                         store={"url": chdb_path}, sink={"consumer_group": f"sink-{uuid.uuid4().hex[:8]}",
                                                         "batch_max_s": 0.2})
    writer_client = open_store(chdb_path)
    writer = SinkWriter(sink, writer_client)
    stop = threading.Event()
    thread = threading.Thread(target=writer.run, args=(stop,))
    thread.start()

    def stored(table: str) -> list[tuple[str, int, int]]:
        return store.query(f"SELECT prediction_id, count(), uniqExact(event_id) FROM {table} "
                           "GROUP BY prediction_id").result_rows

    try:
        wait_until(lambda: sum(n for _, n, _ in stored("inference_requests")) >= REQUESTS
                   and sum(n for _, n, _ in stored("inference_responses")) >= REQUESTS,
                   f"{2 * REQUESTS} events in the store")
    finally:
        stop.set()
        thread.join(30)
        writer_client.close()
    try:
        for table in ("inference_requests", "inference_responses"):
            rows = stored(table)
            assert sorted(prediction_id for prediction_id, _, _ in rows) == sorted(ids), table
            assert all(count == 1 and unique == 1 for _, count, unique in rows), table  # each stored once
    finally:
        store.close()




def test_events_dropped_while_the_spool_is_full_are_counted_in_delivery_gaps_once_delivery_resumes(
    local_kafka: LocalKafka | None, topics: Topics, tmp_path: Path
) -> None:
    local_kafka = stoppable(local_kafka)
    requests = 300
    loop = LoopThread()
    upstream = Upstream()
    runner = loop.run(upstream.start())
    settings = SidecarSettings(
        sidecar={"upstream": f"http://127.0.0.1:{upstream.port}", "kserve_metadata": False},
        kafka={"bootstrap": local_kafka.bootstrap}, topics={"prefix": topics.prefix},
        emitter={"spool_dir": tmp_path / "spool", "producer_name": "sidecar-gap",
                 # room for a few dozen events on disk and a few in memory: the rest is dropped
                 "spool_max_bytes": 16 * 1024, "queue_max_messages": 8},
    )
    app = SidecarApp(settings)
    ids = [f"gap-{i}-{uuid.uuid4().hex[:8]}" for i in range(requests)]
    last_id = f"gap-after-{uuid.uuid4().hex[:8]}"
    drops_before = dropped()
    server, task, url = loop.run(start_server(app))
    try:
        local_kafka.stop()
        try:
            outage_began = utcnow()
            statuses = loop.run(send_all(url, ids), timeout=DEADLINE_S)
            assert statuses == [200] * requests  # dropping events never fails a request
        finally:
            local_kafka.start()
        wait_until(lambda: app.emitter.backlog == 0, "the spool to drain into the broker")
        recovered = utcnow()
        lost = int(dropped() - drops_before)
        assert 0 < lost < 2 * requests
        # The gap is reported with the first event accepted after the drops.
        assert loop.run(send_all(url, [last_id]), timeout=DEADLINE_S) == [200]
        gaps = consume(local_kafka.bootstrap, topics.lineage,
                       lambda events: sum(value["dropped"] for kind, value in events if kind == "DeliveryGap") >= lost)
        inference = consume(local_kafka.bootstrap, topics.inference,
                            lambda events: sum(value["prediction_id"] == last_id for _, value in events) == 2)
    finally:
        loop.run(stop_server(server, task), timeout=60)
        loop.run(runner.cleanup())
        loop.close()

    # Every drop is counted in a DeliveryGap record, with when it happened; a gap record that was
    # dropped itself is sent again later, so no count is lost.
    records = [value for kind, value in gaps if kind == "DeliveryGap"]
    assert sum(record["dropped"] for record in records) == lost
    for record in records:
        assert record["producer"]["name"] == "sidecar-gap" and record["reason"] == "queue_full"
        assert outage_began <= record["first_time"] <= record["last_time"] <= recovered
    # The events not dropped are delivered, each once.
    event_ids = [value["event_id"] for _, value in inference]
    assert len(set(event_ids)) == len(event_ids)
    assert 2 * (requests + 1) - lost <= len(event_ids) < 2 * (requests + 1)


def consume(bootstrap: str, topic: str, done, timeout: float = DEADLINE_S) -> list[tuple[str, dict]]:  # type: ignore[no-untyped-def]
    return consume_events(bootstrap, topic, done, timeout)


def wait_until(condition, what: str, timeout: float = DEADLINE_S):  # type: ignore[no-untyped-def]
    return helpers.wait_until(condition, what, timeout)
