"""The drift monitor: window summaries of emitted traces, merged per model version, closed into DriftMetrics.

The join agent counts each emitted trace's features and outputs into per-window summaries
(:class:`~provline.stream_processors.drift.DriftAccumulator`) and, after each batch, sends them as partials
to an internal topic keyed by model version, so all of one model version's partials meet on one
partition whatever worker joined them. The drift agent merges partials into a Table keyed by
``model@version|window_start`` (one write per partial) and a timer closes windows once the wall
clock is ``drift_lateness_seconds`` past their end: it sends one DriftMetric per feature and
metric, with an event id derived from what it measures, and leaves a closed marker, so a partial
arriving later is counted as late and dropped rather than opening the window again. Closed markers
are forgotten after another window length.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faust
from faust.types import TP, EventT

from provline.schemas.events import stable_event_id
from provline.stream_processors.drift import (
    BaselineCache,
    DriftAccumulator,
    Thresholds,
    Window,
    drift_event_subject,
    drift_metric_fields,
    merge_window,
    window_due,
    window_key,
)
from provline.stream_processors.lineage import LineageIndex
from provline.stream_processors.metrics import ProcessorMetrics
from provline.stream_processors.traces import DRIFT_KIND, TraceEncoder

log = logging.getLogger(__name__)
WINDOWS_TABLE = "drift-windows"
PARTIALS_TOPIC_SUFFIX = "drift-partials"
CLOSE_CHECK_MAX_SECONDS = 5.0


def partials_topic(app_id: str) -> str:
    """The internal topic the join's drift partials go through (Faust's name for an app's topic)."""
    return f"{app_id}-{PARTIALS_TOPIC_SUFFIX}"


def register_drift_agent(
    app: faust.App, *, lineage: LineageIndex, accumulator: DriftAccumulator, encoder: TraceEncoder,
    drift_topic: faust.TopicT, thresholds: Thresholds, lateness_seconds: float, partitions: int,
    metrics: ProcessorMetrics,
) -> Any:
    """Add the partials topic, windows table, drift agent and closing timer; returns ``send_partials()``.

    ``send_partials`` drains the accumulator into the partials topic; the join agent awaits it
    after every batch.
    """
    window_us = accumulator.window_us
    lateness_us = int(lateness_seconds * 1_000_000)
    partials = app.topic(
        partials_topic(app.conf.id), key_type=str, value_type=None, key_serializer="raw",
        value_serializer="json", partitions=partitions, internal=True,
    )
    windows = app.Table(WINDOWS_TABLE, partitions=partitions, help="open drift windows per model version")
    baselines = BaselineCache(lineage.profile)

    async def send_partials() -> None:
        for partial in accumulator.drain():
            await partials.send(key=f"{partial['m']}@{partial['v']}".encode(), value=partial)
        unprofiled, accumulator.unprofiled = accumulator.unprofiled, 0
        metrics.drift_unprofiled.inc(unprofiled)

    def write(key: str, value: Window | None, partition: int) -> None:
        if value is None:
            windows.data.pop(key, None)
            windows.send_changelog(partition, key, None, value_serializer="raw")
        else:
            windows.data[key] = value
            windows.send_changelog(partition, key, value)

    @app.agent(partials, name="drift")
    async def drift(stream: faust.StreamT[Any]) -> None:
        async for events in stream.take_events(100, within=0.5):
            for event in events:
                _merge(event)

    def _merge(event: EventT[Any]) -> None:
        partial: Window = event.value
        try:
            key = window_key(partial)
            window = windows.data.get(key)
            if window is not None and "closed" in window:
                metrics.drift_late.inc()
                return
            merged = merge_window(window, partial)
            merged["p"] = event.message.partition
            write(key, merged, event.message.partition)
        except Exception:  # a malformed partial must not stop drift for everyone
            log.exception("could not merge the drift partial at %s[%s]@%s", event.message.topic,
                          event.message.partition, event.message.offset)

    @app.timer(min(CLOSE_CHECK_MAX_SECONDS, max(window_us / 1e6 / 10, 0.2)), name="drift-close")
    async def close_windows() -> None:
        now = time.time()
        now_us = int(now * 1_000_000)
        assigned = app.consumer.assignment()
        topic_name = partials.get_topic_name()
        for key, window in list(windows.data.items()):
            if TP(topic_name, window["p"]) not in assigned:
                continue
            if "closed" in window:
                if now - window["closed"] >= window_us / 1e6 + lateness_seconds:
                    write(key, None, window["p"])
                continue
            if not window_due(window, now_us=now_us, window_us=window_us, lateness_us=lateness_us):
                continue
            try:
                fields = drift_metric_fields(window, baselines, thresholds, window_us=window_us)
                for metric in fields:
                    event_id = stable_event_id("provline-drift", drift_event_subject(metric), metric["window_start"])
                    value = encoder.encode(metric, kind=DRIFT_KIND, event_id=event_id)
                    await drift_topic.send(
                        key=f"{metric['model_name']}@{metric['model_version']}/{metric['feature']}".encode(),
                        value=value,
                    )
                    metrics.drift_metrics.labels(str(metric["breached"]).lower()).inc()
                log.info("closed drift window %s: %d metrics, %d breached", key, len(fields),
                         sum(m["breached"] for m in fields))
            except Exception:
                log.exception("could not close the drift window %s; dropping it", key)
            write(key, {"m": window["m"], "v": window["v"], "w": window["w"], "p": window["p"], "closed": now},
                  window["p"])

    return send_partials
