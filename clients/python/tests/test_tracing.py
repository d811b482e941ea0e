"""Attempt spans: under the job's span, naming it to the job, ended with the outcome; off
without the variables (and with OTEL_SDK_DISABLED)."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from sluice._tracing import AttemptSpans, attempt_spans, enabled

JOB_SPAN = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def spans() -> tuple[AttemptSpans, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return AttemptSpans(provider.get_tracer("test"), provider), exporter


def test_an_attempt_span_is_a_child_of_the_job_span_and_the_job_sees_it() -> None:
    tracing, exporter = spans()
    span, traceparent, _ = tracing.start(JOB_SPAN, None, "attempt 2 of load", {"sluice.attempt": 2})
    assert traceparent is not None
    version, trace_id, span_id, flags = traceparent.split("-")
    assert (version, trace_id, flags) == ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01")
    assert span_id != "00f067aa0ba902b7", "the job is told its attempt's span, not the job's"
    tracing.end(span, "retrying", "ValueError: boom")
    (finished,) = exporter.get_finished_spans()
    assert finished.name == "attempt 2 of load"
    assert finished.parent is not None and f"{finished.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert f"{finished.context.span_id:016x}" == span_id
    assert finished.attributes is not None
    assert finished.attributes["sluice.outcome"] == "retrying"
    assert finished.attributes["sluice.attempt"] == 2
    assert finished.status.status_code is StatusCode.ERROR


def test_a_success_is_not_an_error_and_no_job_span_means_no_attempt_span() -> None:
    tracing, exporter = spans()
    span, _, _ = tracing.start(JOB_SPAN, "vendor=1", "attempt 1 of a", {})
    tracing.end(span, "succeeded", None)
    (finished,) = exporter.get_finished_spans()
    assert finished.status.status_code is StatusCode.UNSET
    none, traceparent, _ = tracing.start(None, None, "attempt 1 of b", {})
    assert none is None and traceparent is None
    tracing.end(none, "succeeded", None)
    assert len(exporter.get_finished_spans()) == 1


def test_spans_are_exported_only_when_the_variables_ask() -> None:
    assert not enabled({})
    assert enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert enabled({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"})
    assert not enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"})
    assert attempt_spans({}) is None
    exporting = attempt_spans({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert exporting is not None
    exporting.shutdown()
