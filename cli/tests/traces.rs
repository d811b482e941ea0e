//! A run is one trace: an in-test OTLP/HTTP receiver (`POST /v1/traces`, protobuf decoded
//! with `opentelemetry-proto`) gets the spans of a diamond with a retried job, a Python exec
//! job's own span (the OpenTelemetry SDK, from `TRACEPARENT`) and a fan-out, through real
//! coordinator and worker processes, across a coordinator SIGKILL; every span has the run's
//! trace id and the parent the design says.
// Progress goes to the test runner's output (clippy.toml bans these macros in `sluice`).
#![allow(clippy::disallowed_macros)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;

/// A span as the receiver got it.
#[derive(Clone, Debug)]
struct Got {
    service: String,
    trace: String,
    span: String,
    parent: String,
    name: String,
    attributes: BTreeMap<String, String>,
    error: bool,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// An OTLP/HTTP receiver on loopback (`sluice_testkit::http`, answering 200): the spans of
/// every request, decoded, and the paths asked.
struct Receiver {
    http: sluice_testkit::http::Receiver,
}

impl Receiver {
    fn start() -> (Self, String) {
        let http = sluice_testkit::http::Receiver::start(|_, _| sluice_testkit::http::Reply::status(200)).unwrap();
        let address = http.address.clone();
        (Self { http }, address)
    }

    fn paths(&self) -> Vec<String> {
        self.http.requests().into_iter().map(|request| request.path).collect()
    }

    fn spans(&self) -> Vec<Got> {
        let mut spans = Vec::new();
        for request in self.http.requests() {
            if let Ok(request) = ExportTraceServiceRequest::decode(request.body.as_slice()) {
                keep(request, &mut spans);
            }
        }
        spans
    }

    fn named(&self, name: &str) -> Vec<Got> {
        self.spans().into_iter().filter(|span| span.name == name).collect()
    }
}

/// The spans of one export request, with their service's name.
fn keep(request: ExportTraceServiceRequest, spans: &mut Vec<Got>) {
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|resource| &resource.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| value_text(kv.value.as_ref()))
            .unwrap_or_default();
        for span in resource.scope_spans.into_iter().flat_map(|scope| scope.spans) {
            spans.push(Got {
                service: service.clone(),
                trace: hex(&span.trace_id),
                span: hex(&span.span_id),
                parent: hex(&span.parent_span_id),
                name: span.name,
                attributes: span.attributes.iter().map(|kv| (kv.key.clone(), value_text(kv.value.as_ref()))).collect(),
                error: span.status.is_some_and(|status| status.code == 2),
            });
        }
    }
}

fn value_text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        Some(any_value::Value::StringValue(text)) => text.clone(),
        Some(any_value::Value::IntValue(number)) => number.to_string(),
        Some(any_value::Value::BoolValue(flag)) => flag.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// A Python job that opens a span of its own under the attempt (`TRACEPARENT`) and exports
/// it with the OpenTelemetry SDK to the worker's `OTEL_EXPORTER_OTLP_ENDPOINT`.
const PYTHON_JOB: &str = r#"
import os
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

parent = TraceContextTextMapPropagator().extract({"traceparent": os.environ["TRACEPARENT"]})
provider = TracerProvider(resource=Resource.create({"service.name": "python-job"}))
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
with provider.get_tracer("etl").start_as_current_span("transform rows", context=parent):
    print("transformed")
provider.shutdown()
"#;

fn workflow(python: &str, job: &str) -> String {
    format!(
        r#"name: traced
jobs:
  a: {{ run: noop }}
  b:
    needs: [a]
    run: fail
    config: {{ succeed_on_attempt: 3 }}
    retry: {{ max_attempts: 3, initial: 2s, max: 2s, jitter: false }}
  c:
    needs: [a]
    run: exec
    command: [{python}, {job}]
  d: {{ run: noop, needs: [b, c] }}
  fan:
    run: exec
    command: [sh, -c, 'for i in 1 2 3; do echo "{{\"name\": \"part-$i\", \"run\": \"noop\"}}"; done > "$SLUICE_SPAWN_FILE"']
"#
    )
}

fn one<'a>(spans: &'a [Got], name: &str) -> &'a Got {
    let found: Vec<&Got> = spans.iter().filter(|span| span.name == name).collect();
    assert_eq!(found.len(), 1, "one span `{name}` in {spans:#?}");
    found[0]
}

#[test]
fn a_run_is_one_trace_with_job_attempt_child_and_python_spans_across_a_coordinator_kill() {
    let (receiver, address) = Receiver::start();
    let base = format!("http://{address}");
    let mut stack = Stack::start_from(sluice_testkit::Stack::builder(SLUICE).env("OTEL_EXPORTER_OTLP_ENDPOINT", &base));
    // The coordinators use the traces endpoint as given, the worker (and its Python job) the
    // base one with /v1/traces appended: both must reach the receiver.
    let traces_endpoint = format!("{base}/v1/traces");
    let coordinator_env = [("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces_endpoint.as_str())];
    let coordinator_args = ["coordinator", "--trace-child-spans", "2"];
    let first = stack.spawn("coordinator", &coordinator_args, &coordinator_env);
    wait_until_set_up(&stack);
    stack.worker(&["--concurrency", "4"]);
    let python = workspace_root().join(".tools/venv/bin/python");
    let job = stack.write("job.py", PYTHON_JOB);
    let file = stack.write("traced.yaml", &workflow(python.to_str().unwrap(), job.to_str().unwrap()));
    let submitted = stack.sluice_json(&["submit", file.to_str().unwrap()], 0);
    let run_id = submitted["id"].as_str().unwrap().to_owned();

    // Once `a` and the fan-out are on the receiver (b waits out its retry delays), the
    // coordinator is killed; another one finishes the run.
    wait_until(Duration::from_secs(30), "the spans of a and fan to arrive", || {
        !receiver.named("job a").is_empty() && !receiver.named("job fan").is_empty()
    });
    stack.kill(first);
    stack.spawn("coordinator", &coordinator_args, &coordinator_env);
    let status = stack.wait_for_run(&run_id, Duration::from_secs(60));
    assert_eq!(status["state"], "succeeded", "{status}");
    wait_until(Duration::from_secs(30), "the run's span to arrive", || !receiver.named("run traced").is_empty());

    let spans = receiver.spans();
    let run = one(&spans, "run traced");
    assert_eq!(run.parent, "", "the run is the trace's root without a submitter's span");
    assert_eq!(run.attributes["sluice.run_id"], run_id);
    assert_eq!(run.attributes["sluice.state"], "succeeded");
    assert!(run.attributes.contains_key("sluice.window.start"), "{run:?}");
    assert!(spans.iter().all(|span| span.trace == run.trace), "one trace id for all: {spans:#?}");
    for name in ["a", "b", "c", "d", "fan"] {
        let job = one(&spans, &format!("job {name}"));
        assert_eq!(job.parent, run.span, "job {name} is under the run");
        assert_eq!(job.attributes["sluice.state"], "completed", "{job:?}");
        assert!(job.attributes.contains_key("sluice.dispatch_latency_ms"), "{job:?}");
    }
    let b = one(&spans, "job b");
    assert_eq!(b.attributes["sluice.attempts"], "3");
    let outcomes: Vec<(String, bool)> = (1..=3)
        .map(|attempt| {
            let span = one(&spans, &format!("attempt {attempt} of b"));
            assert_eq!(span.parent, b.span, "attempt {attempt} of b is under its job");
            assert_eq!(span.service, "sluice-worker");
            assert!(!span.attributes["sluice.worker"].is_empty(), "{span:?}");
            (span.attributes["sluice.outcome"].clone(), span.error)
        })
        .collect();
    assert_eq!(
        outcomes,
        [("retrying".to_owned(), true), ("retrying".to_owned(), true), ("succeeded".to_owned(), false)]
    );
    let c_attempt = one(&spans, "attempt 1 of c");
    assert_eq!(c_attempt.parent, one(&spans, "job c").span);
    let python_span = one(&spans, "transform rows");
    assert_eq!(python_span.service, "python-job");
    assert_eq!(python_span.parent, c_attempt.span, "the Python job's span is inside its attempt");
    // Two of fan's three children have spans of their own; the third is counted in a summary.
    let fan = one(&spans, "job fan");
    let children: Vec<&Got> = spans.iter().filter(|span| span.name.starts_with("job fan.part-")).collect();
    assert_eq!(children.len(), 2, "{children:#?}");
    assert!(children.iter().all(|child| child.parent == fan.span));
    let summary = one(&spans, "1 more children of fan");
    assert_eq!(summary.parent, fan.span);
    assert_eq!(summary.attributes["sluice.children.completed"], "1");
    let paths = receiver.paths();
    assert!(paths.iter().all(|path| path == "/v1/traces"), "{paths:?}");
}

#[test]
fn a_submitters_traceparent_is_the_run_spans_parent_and_an_invalid_one_is_refused() {
    let (receiver, address) = Receiver::start();
    let mut stack = Stack::start_from(
        sluice_testkit::Stack::builder(SLUICE).env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{address}")),
    );
    stack.coordinator();
    wait_until_set_up(&stack);
    stack.worker(&[]);
    let file = stack.write("small.yaml", "name: small\njobs:\n  only: { run: noop }\n");
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let output = stack.sluice_with(&["submit", file.to_str().unwrap(), "--wait"], &[("TRACEPARENT", parent)]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    wait_until(Duration::from_secs(30), "the run's span", || !receiver.named("run small").is_empty());
    let spans = receiver.spans();
    let run = one(&spans, "run small");
    assert_eq!(run.trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(run.parent, "00f067aa0ba902b7");
    wait_until(Duration::from_secs(30), "the job's and attempt's spans", || {
        !receiver.named("attempt 1 of only").is_empty() && !receiver.named("job only").is_empty()
    });
    assert_eq!(one(&receiver.spans(), "job only").parent, run.span);

    let refused = stack.sluice_with(&["submit", file.to_str().unwrap()], &[("TRACEPARENT", "not-a-trace")]);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("TRACEPARENT") && stderr.contains("not-a-trace"), "{stderr}");
}
