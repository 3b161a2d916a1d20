"""``provline ingest`` when the broker is away or slower than the load: a 200 means the event is on disk and
is delivered later, once; beyond the spool's bound the excess gets 503 with Retry-After, and memory stays bounded."""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path

import aiohttp
import pytest
from cloudevents.conversion import to_binary
from prometheus_client import REGISTRY

from deploy.local.kafka import LocalKafka
from provline.schemas import Topics
from provline.sidecar.settings import IngestSettings
from tests.helpers import LoopThread
from tests.integration.test_ingest import PREDICTION, REQUEST, consume, ingest, kafka_settings, kserve, wait_until

pytestmark = pytest.mark.integration

CONCURRENCY = 16


def stoppable(local_kafka: LocalKafka | None) -> LocalKafka:
    if local_kafka is None:
        pytest.fail("this test stops and restarts the broker: run it with the local broker, not TEST_KAFKA_BOOTSTRAP")
    return local_kafka


def exchanges(count: int) -> list[tuple[dict[str, str], bytes]]:
    """``count`` exchanges as KServe's logger sends them: a request event and a response event each."""
    events = []
    for index in range(count):
        event_id = f"load-{index}-{uuid.uuid4().hex[:6]}"
        events += [to_binary(kserve("request", event_id, REQUEST)), to_binary(kserve("response", event_id, PREDICTION))]
    return events


async def send_all(url: str, events: list[tuple[dict[str, str], bytes]]) -> list[tuple[int, str | None, str]]:
    """(status, Retry-After, prediction id or reason) of every event, sent by CONCURRENCY loggers at once."""
    results: list[tuple[int, str | None, str]] = []
    queue = list(reversed(events))
    async with aiohttp.ClientSession() as session:
        async def logger() -> None:
            while queue:
                headers, body = queue.pop()
                async with session.post(url, data=body, headers=headers) as reply:
                    answer = await reply.json()
                    results.append((reply.status, reply.headers.get("Retry-After"),
                                    answer.get("prediction_id") or answer["reason"]))

        await asyncio.gather(*(logger() for _ in range(CONCURRENCY)))
    return results


def dropped(name: str, reason: str) -> float:
    return REGISTRY.get_sample_value(name, {"reason": reason}) or 0.0


def test_a_broker_outage_loses_no_event_answered_200(
    local_kafka: LocalKafka | None, topics: Topics, tmp_path: Path
) -> None:
    local_kafka = stoppable(local_kafka)
    loop = LoopThread()
    events = exchanges(150)
    settings = kafka_settings(local_kafka.bootstrap, topics, tmp_path / "spool")
    try:
        with ingest(loop, settings) as (url, app):
            assert app.emitter is not None
            local_kafka.stop()
            try:
                results = loop.run(send_all(url, events), timeout=120)
                assert [status for status, _, _ in results] == [200] * len(events)  # durable on disk, broker away
                assert app.emitter.backlog == len(events)
            finally:
                local_kafka.start()
            wait_until(lambda: app.emitter is not None and app.emitter.backlog == 0,
                       "the spool to drain into the broker", timeout=120)
        ids = {pid for _, _, pid in results}
        delivered = consume(local_kafka.bootstrap, topics.inference, lambda found: sum(
            v.get("prediction_id") in ids for _, v in found) >= len(events))
    finally:
        loop.close()
    mine = [(kind, v["prediction_id"], v["event_id"]) for kind, v in delivered if v.get("prediction_id") in ids]
    assert len({event_id for *_, event_id in mine}) == len(mine) == len(events)  # each once
    assert sorted((kind, pid) for kind, pid, _ in mine) == sorted(
        (kind, pid) for pid in ids for kind in ("InferenceRequest", "InferenceResponse"))


def test_a_load_beyond_what_the_broker_takes_gets_503_and_memory_stays_bounded(tmp_path: Path) -> None:
    loop = LoopThread()
    queue_max = 20
    # No broker listens on port 1: nothing is ever delivered, so the spool fills to its bound and then the queue.
    settings = IngestSettings(
        kafka={"bootstrap": "127.0.0.1:1"}, topics={"prefix": f"unreachable-{uuid.uuid4().hex[:6]}"},
        emitter={"spool_dir": tmp_path / "spool", "spool_max_bytes": 24 * 1024, "queue_max_messages": queue_max,
                 "close_timeout_s": 0.5},
        ingest={"durable_timeout_s": 0.5, "retry_after_s": 3},
    )
    events = exchanges(300)
    reasons = ("queue_full", "spool_timeout")
    before = {reason: dropped("provline_ingest_events_dropped_total", reason) for reason in reasons}
    gaps_before = dropped("provline_events_dropped_total", "queue_full")
    most_in_memory = 0
    stop = threading.Event()
    try:
        with ingest(loop, settings) as (url, app):
            processor = app.emitter.processor if app.emitter is not None else None
            assert processor is not None

            def watch() -> None:
                nonlocal most_in_memory
                while not stop.is_set():
                    most_in_memory = max(most_in_memory, processor.queued)
                    stop.wait(0.001)

            watcher = threading.Thread(target=watch)
            watcher.start()
            try:
                results = loop.run(send_all(url, events), timeout=120)
            finally:
                stop.set()
                watcher.join()
            accepted = [r for r in results if r[0] == 200]
            refused = [r for r in results if r[0] == 503]
            assert len(accepted) + len(refused) == len(events)
            assert accepted and refused
            assert all(retry == "3" and reason in ("queue_full", "spool_timeout") for _, retry, reason in refused)
            # Every 200 is on disk or (for an event that timed out but was spooled later) memory; none was lost.
            assert processor.backlog >= len(accepted)
            assert processor.spool_full
            ready = loop.run(_get(f"{url}/readyz"))
            assert ready == 503  # not ready while the spool is full: the load balancer sends loggers elsewhere
            # The queue_full ones are counted as the emitter's drops too: a DeliveryGap once delivery resumes
            # (measured before closing, whose final SessionSeal cannot be queued either).
            queue_full = sum(1 for _, _, reason in refused if reason == "queue_full")
            assert dropped("provline_events_dropped_total", "queue_full") - gaps_before == queue_full
    finally:
        loop.close()
    assert most_in_memory <= queue_max + 1
    counted = sum(dropped("provline_ingest_events_dropped_total", reason) - before[reason] for reason in before)
    assert counted == len(refused)


async def _get(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(url) as reply:
        return reply.status
