"""Attempt spans of the Python worker, as the Rust worker makes them: one per attempt, a child
of the job's span (the job message's ``traceparent``), named ``attempt N of JOB`` with the same
``sluice.*`` attributes, and the job's ``TRACEPARENT`` naming it, so the job's own spans nest
inside its attempt.

They are exported with the OpenTelemetry SDK (``pip install 'sluice-sdk[otel]'``) when it is
installed and ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set,
and ``OTEL_SDK_DISABLED`` is not ``true``; off otherwise. The SDK's batch processor keeps a
bounded queue and drops what does not fit: exporting never waits on the job path. The SDK
reads the other ``OTEL_*`` variables itself (service name, resource attributes, sampler)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("sluice.worker")

#: The service name when ``OTEL_SERVICE_NAME`` is not set.
SERVICE_NAME = "sluice-py-worker"


def enabled(environ: Mapping[str, str]) -> bool:
    """Whether the variables ask for spans to be exported."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return any(environ.get(name, "").strip() for name in endpoints)


class AttemptSpans:
    """Starts and ends attempt spans on ``tracer`` (an OpenTelemetry ``Tracer``)."""

    def __init__(self, tracer: Any, provider: Any = None) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.tracer = tracer
        self.provider = provider
        self.propagator = TraceContextTextMapPropagator()

    def start(
        self, traceparent: str | None, tracestate: str | None, name: str, attributes: dict[str, Any]
    ) -> tuple[Any, str | None, str | None]:
        """The attempt's span (``None`` without a job span to nest under) and the
        ``traceparent``/``tracestate`` that name it."""
        if not traceparent:
            return None, traceparent, tracestate
        from opentelemetry import trace

        carrier = {"traceparent": traceparent}
        if tracestate:
            carrier["tracestate"] = tracestate
        parent = self.propagator.extract(carrier)
        span = self.tracer.start_span(name, context=parent, attributes=attributes)
        out: dict[str, str] = {}
        self.propagator.inject(out, context=trace.set_span_in_context(span))
        return span, out.get("traceparent", traceparent), out.get("tracestate", tracestate)

    def end(self, span: Any, outcome: str, error: str | None) -> None:
        """Ends ``span`` with the attempt's outcome (``failed`` and ``retrying`` are errors)."""
        if span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("sluice.outcome", outcome)
        if error:
            span.set_attribute("sluice.error", error)
        if outcome in ("failed", "retrying"):
            span.set_status(Status(StatusCode.ERROR, error or "failed"))
        span.end()

    def shutdown(self) -> None:
        """Sends what is queued (the SDK bounds how long that takes)."""
        if self.provider is not None:
            self.provider.shutdown()


def attempt_spans(environ: Mapping[str, str] | None = None) -> AttemptSpans | None:
    """Attempt spans exported over OTLP/HTTP when the variables ask for them and the SDK is
    installed; ``None`` otherwise (a worker asked to export without the SDK says so once)."""
    environ = os.environ if environ is None else environ
    if not enabled(environ):
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME as SERVICE_NAME_KEY
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but the OpenTelemetry SDK is not installed "
            "(pip install 'sluice-sdk[otel]'): attempt spans are not exported"
        )
        return None
    service = environ.get("OTEL_SERVICE_NAME", "").strip() or SERVICE_NAME
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME_KEY: service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return AttemptSpans(provider.get_tracer("sluice"), provider)
