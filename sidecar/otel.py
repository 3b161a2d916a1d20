"""Optional OTLP export: one OpenTelemetry span per recorded exchange, so provline's prediction id
appears in the user's tracing backend beside the caller's own spans.

    PROVLINE_OTEL__ENDPOINT=http://collector:4318/v1/traces   OTLP/HTTP (protobuf) traces URL; unset: no export
    PROVLINE_OTEL__HEADERS='{"authorization": "Bearer ..."}'  sent with every export (e.g. a vendor's API key)
    PROVLINE_OTEL__SERVICE_NAME=provline-sidecar               the spans' service.name
    PROVLINE_OTEL__SAMPLING=parent                             parent: only where the caller's traceparent is
                                                               sampled (or absent); always: every exchange

:class:`SpanExport` takes the recorded exchange's fields (:class:`ExchangeSpan`), not the sidecar's
internals, so any service that records exchanges (the sidecar, the CloudEvents ingest) can use it.
It needs the ``otel`` extra (``pip install 'provline[otel]'``); the SDK is imported only when an
export is built, so importing this module costs nothing.

Export never blocks or fails serving: spans go to opentelemetry-sdk's BatchSpanProcessor (a
bounded queue and a worker thread; a full queue drops, which the SDK counts), and exporter
failures are counted (``provline_otel_export_failures_total``) and logged once per outage.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from prometheus_client import Counter
from pydantic import Field, HttpUrl, SecretStr

from provline.config import Section
from provline.schemas.tracecontext import parse_traceparent

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

log = logging.getLogger("provline.otel")

DEFAULT_SERVICE_NAME = "provline-sidecar"
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_QUEUE_SIZE = 2048
DEFAULT_SCHEDULE_DELAY_S = 1.0
SPAN_NAME = "provline.exchange"
INSTRUMENTATION_SCOPE = "provline"

Sampling = Literal["parent", "always"]

EXPORTED = Counter("provline_otel_spans_exported_total", "Spans the OTLP receiver accepted")
EXPORT_FAILURES = Counter(
    "provline_otel_export_failures_total",
    "Spans the OTLP export could not deliver (receiver down, refused, or the exporter raised)",
)
NOT_SAMPLED = Counter(
    "provline_otel_spans_not_sampled_total",
    "Exchanges not exported because the caller's traceparent was not sampled (PROVLINE_OTEL__SAMPLING=parent)",
)


class OtelUnavailableError(RuntimeError):
    """The OTLP export is configured but the ``otel`` extra is not installed."""


class OtelSettings(Section):
    """OTLP export of one span per recorded exchange (section ``otel``); off unless ``endpoint`` is set."""

    endpoint: HttpUrl | None = Field(
        None, description="OTLP/HTTP protobuf traces URL, e.g. http://collector:4318/v1/traces; unset: no export",
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="HTTP headers sent with every export, e.g. an API key (secret)",
    )
    service_name: str = Field(DEFAULT_SERVICE_NAME, min_length=1, description="the spans' service.name")
    sampling: Sampling = Field(
        "parent", description="parent: export where the caller's traceparent is sampled or absent; always: every "
        "recorded exchange",
    )
    timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0, description="one export request, retries included")
    max_queue_size: int = Field(DEFAULT_MAX_QUEUE_SIZE, ge=1, description="spans waiting for export; beyond, "
                                                                           "new ones are dropped")
    schedule_delay_s: float = Field(DEFAULT_SCHEDULE_DELAY_S, gt=0, description="longest wait before an export")

    @property
    def enabled(self) -> bool:
        return self.endpoint is not None


@dataclass(frozen=True, slots=True)
class ExchangeSpan:
    """What a span says of one recorded exchange: the recorded event fields and two wall-clock times."""

    prediction_id: str
    endpoint: str
    start_ns: int  # request received (Unix epoch nanoseconds)
    end_ns: int  # reply sent
    traceparent: str | None = None  # the caller's; None (or invalid): the span starts a new trace
    # When the service began the trace itself (no caller traceparent) and sent this one upstream: the
    # new trace's span takes its trace and span ids, so the model server's spans are the span's children.
    began: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    status: int | None = None  # HTTP status of the reply; None or 0 when there was none
    input_sha256: str | None = None  # as recorded (plain or keyed hex digest)
    error: str | None = None


def span_attributes(span: ExchangeSpan) -> dict[str, str | int]:
    """The span's attributes: provline's ids under ``provline.*``, the status under the HTTP convention."""
    attributes: dict[str, str | int] = {"provline.prediction_id": span.prediction_id,
                                        "provline.endpoint": span.endpoint}
    optional: dict[str, str | int | None] = {
        "provline.model_name": span.model_name, "provline.model_version": span.model_version,
        "provline.input_sha256": span.input_sha256, "http.response.status_code": span.status or None,
        "provline.error": span.error,
    }
    attributes.update({name: value for name, value in optional.items() if value is not None})
    return attributes


def is_failure(span: ExchangeSpan) -> bool:
    return bool(span.error) or not span.status or span.status >= 500


class SpanExport:
    """Exports :class:`ExchangeSpan` records over OTLP/HTTP; thread-safe.

    Raises OtelUnavailableError at construction when the ``otel`` extra is missing.
    """

    def __init__(self, settings: OtelSettings) -> None:
        if settings.endpoint is None:
            raise ValueError("SpanExport needs PROVLINE_OTEL__ENDPOINT; check OtelSettings.enabled first")
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
            from opentelemetry.sdk.trace.sampling import ALWAYS_ON
        except ImportError as exc:
            raise OtelUnavailableError(
                f"PROVLINE_OTEL__ENDPOINT is set ({settings.endpoint}) but the OpenTelemetry SDK is not installed "
                f"({exc.name} is missing); install provline with the otel extra (pip install 'provline[otel]') "
                "or unset PROVLINE_OTEL__ENDPOINT") from exc
        self._sampling = settings.sampling
        exporter = OTLPSpanExporter(
            endpoint=str(settings.endpoint), timeout=settings.timeout_s,
            headers={name: value.get_secret_value() for name, value in settings.headers.items()},
        )
        preset = threading.local()

        class _PresetIds(RandomIdGenerator):
            """Random ids, except the ones :meth:`SpanExport._export` sets for the span it starts."""

            def generate_trace_id(self) -> int:
                ids = getattr(preset, "ids", None)
                return ids[0] if ids else super().generate_trace_id()

            def generate_span_id(self) -> int:
                ids = getattr(preset, "ids", None)
                return ids[1] if ids else super().generate_span_id()

        self._preset = preset
        self._provider: TracerProvider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name}), id_generator=_PresetIds(),
            sampler=ALWAYS_ON)  # sampling is decided in _export (PROVLINE_OTEL__SAMPLING), not by the SDK
        self._provider.add_span_processor(BatchSpanProcessor(
            _counting(exporter, str(settings.endpoint)), max_queue_size=settings.max_queue_size,
            schedule_delay_millis=settings.schedule_delay_s * 1000,
            export_timeout_millis=settings.timeout_s * 1000,
        ))
        self._tracer = self._provider.get_tracer(INSTRUMENTATION_SCOPE)

    def export(self, span: ExchangeSpan) -> None:
        """Queue one span for export; never blocks on the network and never raises (failures are logged)."""
        try:
            self._export(span)
        except Exception:
            EXPORT_FAILURES.inc()
            log.exception("provline could not build the OpenTelemetry span of prediction %s", span.prediction_id)

    def _export(self, span: ExchangeSpan) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

        parent = parse_traceparent(span.traceparent)
        context = None
        began = parse_traceparent(span.began) if parent is None else None
        if parent is not None:
            if self._sampling == "parent" and not parent.sampled:
                NOT_SAMPLED.inc()
                return
            remote = SpanContext(int(parent.trace_id, 16), int(parent.span_id, 16), is_remote=True,
                                 trace_flags=TraceFlags(parent.flags))
            context = trace.set_span_in_context(NonRecordingSpan(remote))
        self._preset.ids = (int(began.trace_id, 16), int(began.span_id, 16)) if began is not None else None
        try:
            started = self._tracer.start_span(SPAN_NAME, context=context, kind=SpanKind.SERVER,
                                              attributes=span_attributes(span), start_time=span.start_ns)
        finally:
            self._preset.ids = None
        if is_failure(span):
            started.set_status(Status(StatusCode.ERROR, span.error or f"HTTP status {span.status or 'none'}"))
        started.end(end_time=max(span.end_ns, span.start_ns))

    def shutdown(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        """Export what is queued and stop the worker thread; blocks up to about ``timeout_s``."""
        self._provider.force_flush(int(timeout_s * 1000))
        self._provider.shutdown()


def build_export(settings: OtelSettings) -> SpanExport | None:
    """The export the settings ask for, or None when PROVLINE_OTEL__ENDPOINT is unset; a start-up call
    (raises OtelUnavailableError without the ``otel`` extra)."""
    return SpanExport(settings) if settings.enabled else None


def _counting(exporter: SpanExporter, endpoint: str) -> SpanExporter:
    """``exporter``, with its failures counted and logged once per outage (the next success re-arms the log)."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class _Counting(SpanExporter):
        def __init__(self) -> None:
            self._failing = False
            self._lock = threading.Lock()

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            try:
                result = exporter.export(spans)
            except Exception as exc:
                self._failed(len(spans), repr(exc))
                return SpanExportResult.FAILURE
            if result is SpanExportResult.SUCCESS:
                EXPORTED.inc(len(spans))
                with self._lock:
                    self._failing = False
            else:
                self._failed(len(spans), "the exporter reported failure")
            return result

        def _failed(self, count: int, why: str) -> None:
            EXPORT_FAILURES.inc(count)
            with self._lock:
                first, self._failing = not self._failing, True
            if first:
                log.warning("provline could not export %d OpenTelemetry span(s) to %s (%s); serving goes on, "
                            "failures are counted in provline_otel_export_failures_total and not logged again "
                            "until an export succeeds", count, endpoint, why)

        def shutdown(self) -> None:
            exporter.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return exporter.force_flush(timeout_millis)

    return _Counting()


__all__ = ["ExchangeSpan", "OtelSettings", "OtelUnavailableError", "SpanExport", "build_export", "span_attributes"]
