//! OTLP trace export for `sluice coordinator`, `sluice worker` and `sluice dev`, set up
//! from the standard OpenTelemetry variables; off when no endpoint is set.
//!
//! The libraries hand finished spans (plain data, [`sluice_proto::trace::Span`]) to a
//! [`SpanSink`]; here the sink is a bounded queue read by one thread that sends batches
//! with `opentelemetry-otlp` (OTLP/HTTP protobuf, blocking client: the job path never
//! waits for it). A full queue drops the span and counts it
//! (`sluice_span_export_dropped_total`), as does a batch the endpoint refused.

use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use sluice_proto::trace::{AttributeValue, Span, SpanSink};

use crate::output::CliError;

/// Spans waiting to be sent, at most; more are dropped (and counted).
pub const SPAN_QUEUE_MAX: usize = 8192;
/// Spans sent in one request, at most.
pub const SPAN_BATCH_MAX: usize = 512;
/// How long a span may wait for its batch to fill before it is sent.
pub const SPAN_BATCH_WAIT: Duration = Duration::from_secs(1);
/// How long one export request may take.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopping process waits for the last spans to be sent.
pub const FLUSH_AT_EXIT_MAX: Duration = Duration::from_secs(5);
/// Longest `OTEL_RESOURCE_ATTRIBUTES`, in bytes.
pub const RESOURCE_ATTRIBUTES_MAX_BYTES: usize = 4096;

/// Which traces are exported (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`). Every
/// process decides from the trace id alone, so a trace is exported whole or not at all. A
/// run whose submitter sent an unsampled `traceparent` is never exported, whatever the
/// sampler (the `parentbased_` samplers and the plain ones behave alike).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    /// Traces whose id falls in this share (0 to 1).
    Ratio(f64),
}

/// What `OTEL_*` says about traces.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceConfig {
    /// The URL spans are POSTed to (`…/v1/traces`).
    pub endpoint: String,
    pub service_name: String,
    pub resource: Vec<(String, String)>,
    pub sampler: Sampler,
}

fn bad(variable: &str, why: String) -> CliError {
    CliError::usage(format!("{variable}: {why}"))
}

/// Reads the OpenTelemetry variables through `var`; `None`: tracing is off (no endpoint, or
/// `OTEL_SDK_DISABLED=true`). A value that cannot be used is an error naming the variable.
pub fn config_from(
    var: impl Fn(&str) -> Option<String>,
    default_service: &str,
) -> Result<Option<TraceConfig>, CliError> {
    let var = |name: &str| var(name).map(|value| value.trim().to_owned()).filter(|value| !value.is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|value| value.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let endpoint = match (var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), var("OTEL_EXPORTER_OTLP_ENDPOINT")) {
        (Some(traces), _) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces),
        (None, Some(base)) => ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("{}/v1/traces", base.trim_end_matches('/'))),
        (None, None) => return Ok(None),
    };
    if !(endpoint.1.starts_with("http://") || endpoint.1.starts_with("https://")) {
        return Err(bad(endpoint.0, format!("must be an http:// or https:// URL, not `{}`", endpoint.1)));
    }
    let mut resource = Vec::new();
    if let Some(text) = var("OTEL_RESOURCE_ATTRIBUTES") {
        if text.len() > RESOURCE_ATTRIBUTES_MAX_BYTES {
            return Err(bad("OTEL_RESOURCE_ATTRIBUTES", format!("longer than {RESOURCE_ATTRIBUTES_MAX_BYTES} bytes")));
        }
        for pair in text.split(',').map(str::trim).filter(|pair| !pair.is_empty()) {
            match pair.split_once('=') {
                Some((key, value)) if !key.trim().is_empty() => {
                    resource.push((key.trim().to_owned(), value.trim().to_owned()))
                }
                _ => return Err(bad("OTEL_RESOURCE_ATTRIBUTES", format!("`{pair}` is not key=value"))),
            }
        }
    }
    let service_name = var("OTEL_SERVICE_NAME")
        .or_else(|| resource.iter().find(|(key, _)| key == "service.name").map(|(_, value)| value.clone()))
        .unwrap_or_else(|| default_service.to_owned());
    let ratio =
        || -> Result<f64, CliError> {
            match var("OTEL_TRACES_SAMPLER_ARG") {
                None => Ok(1.0),
                Some(text) => text.parse::<f64>().ok().filter(|ratio| (0.0..=1.0).contains(ratio)).ok_or_else(|| {
                    bad("OTEL_TRACES_SAMPLER_ARG", format!("must be a ratio from 0 to 1, not `{text}`"))
                }),
            }
        };
    let sampler_name = var("OTEL_TRACES_SAMPLER").unwrap_or_else(|| "parentbased_always_on".to_owned());
    let sampler = match sampler_name.as_str() {
        "always_on" | "parentbased_always_on" => Sampler::AlwaysOn,
        "always_off" | "parentbased_always_off" => Sampler::AlwaysOff,
        "traceidratio" | "parentbased_traceidratio" => Sampler::Ratio(ratio()?),
        other => {
            return Err(bad(
                "OTEL_TRACES_SAMPLER",
                format!(
                    "`{other}` is not one of always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio"
                ),
            ));
        }
    };
    Ok(Some(TraceConfig { endpoint: endpoint.1, service_name, resource, sampler }))
}

/// The configuration from the process's environment.
pub fn config_from_env(default_service: &str) -> Result<Option<TraceConfig>, CliError> {
    config_from(|name| std::env::var(name).ok(), default_service)
}

/// Whether a trace is exported: the OpenTelemetry `TraceIdRatioBased` rule (the trace id's
/// low 8 bytes against the ratio), the same in every process.
pub fn samples(sampler: Sampler, trace_id: &[u8; 16]) -> bool {
    match sampler {
        Sampler::AlwaysOn => true,
        Sampler::AlwaysOff => false,
        Sampler::Ratio(ratio) if ratio >= 1.0 => true,
        Sampler::Ratio(ratio) => {
            let mut low = [0u8; 8];
            low.copy_from_slice(&trace_id[8..]);
            let bound = (ratio * (1u64 << 63) as f64) as u64;
            (u64::from_be_bytes(low) >> 1) < bound
        }
    }
}

/// The counters of the export, registered with the process's metrics.
#[derive(Clone, Debug, Default)]
struct Counts {
    exported: Counter,
    dropped: Counter,
}

/// The sink the libraries emit to: a bounded queue, never waited on.
#[derive(Debug)]
pub struct OtlpSink {
    queue: Queue,
    sampler: Sampler,
    counts: Counts,
}

/// Spans waiting for the export thread, at most [`SPAN_QUEUE_MAX`]. The thread is woken
/// only when a batch is full (or closing): a wake-up per span (a channel's) costs a futex
/// call on the job path for every job and attempt.
#[derive(Debug, Default)]
struct Queue {
    pending: Mutex<Pending>,
    ready: Condvar,
}

#[derive(Debug, Default)]
struct Pending {
    spans: Vec<Span>,
    closed: bool,
}

impl Queue {
    /// Queues `span`; `false` when full or closed (the span is dropped).
    fn push(&self, span: Span) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.closed || pending.spans.len() >= SPAN_QUEUE_MAX {
            return false;
        }
        pending.spans.push(span);
        if pending.spans.len() == SPAN_BATCH_MAX {
            self.ready.notify_one();
        }
        true
    }

    /// The next batch: up to [`SPAN_BATCH_MAX`] spans, as soon as that many wait or
    /// [`SPAN_BATCH_WAIT`] has passed; `None` once closed and empty.
    fn next_batch(&self) -> Option<Vec<Span>> {
        let deadline = Instant::now() + SPAN_BATCH_WAIT;
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        while !pending.closed && pending.spans.len() < SPAN_BATCH_MAX {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            pending = self.ready.wait_timeout(pending, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        if pending.closed && pending.spans.is_empty() {
            return None;
        }
        let take = pending.spans.len().min(SPAN_BATCH_MAX);
        Some(pending.spans.drain(..take).collect())
    }

    fn close(&self) {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).closed = true;
        self.ready.notify_one();
    }
}

impl SpanSink for OtlpSink {
    fn emit(&self, span: Span) {
        if !samples(self.sampler, &span.trace_id) {
            return;
        }
        if !self.queue.push(span) {
            self.counts.dropped.inc();
        }
    }
}

/// Sends what is queued when dropped (up to [`FLUSH_AT_EXIT_MAX`]): hold it for as long as
/// the process emits spans.
pub struct Exporting {
    sink: Arc<OtlpSink>,
    done: Receiver<()>,
}

impl Drop for Exporting {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has sent what was in it.
        self.sink.queue.close();
        let _ = self.done.recv_timeout(FLUSH_AT_EXIT_MAX);
    }
}

/// Registers the export's counters in `registry` (whether or not tracing is on, so the
/// metric is always there) and, with a configuration, starts the export thread.
pub fn start(
    config: Option<TraceConfig>,
    registry: &mut Registry,
) -> Result<Option<(Arc<OtlpSink>, Exporting)>, CliError> {
    let counts = Counts::default();
    registry.register(
        "sluice_span_export_dropped",
        "Spans not exported: the export queue was full, or the endpoint refused or did not answer",
        counts.dropped.clone(),
    );
    registry.register("sluice_spans_exported", "Spans the OTLP endpoint accepted", counts.exported.clone());
    let Some(config) = config else { return Ok(None) };
    let (finished, done) = mpsc::sync_channel(1);
    let sink = Arc::new(OtlpSink { queue: Queue::default(), sampler: config.sampler, counts: counts.clone() });
    let spans = sink.clone();
    tracing::info!(endpoint = %config.endpoint, service = %config.service_name, "exporting traces over OTLP/HTTP");
    std::thread::Builder::new()
        .name("sluice-otlp".to_owned())
        .spawn(move || {
            export_loop(&config, &spans.queue, &counts);
            let _ = finished.send(());
        })
        .map_err(|error| CliError::failed(format!("cannot start the trace exporter: {error}")))?;
    Ok(Some((sink.clone(), Exporting { sink, done })))
}

/// Sends batches until the queue is closed and empty. Built here, off the async runtime:
/// the blocking HTTP client must not live on it.
fn export_loop(config: &TraceConfig, queue: &Queue, counts: &Counts) {
    let built = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(config.endpoint.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build();
    let mut exporter = match built {
        Ok(exporter) => exporter,
        Err(error) => {
            tracing::error!(%error, endpoint = %config.endpoint, "cannot build the OTLP exporter; spans are dropped");
            while let Some(batch) = queue.next_batch() {
                counts.dropped.inc_by(batch.len() as u64);
            }
            return;
        }
    };
    let resource = Resource::builder_empty()
        .with_service_name(config.service_name.clone())
        .with_attributes(config.resource.iter().map(|(key, value)| KeyValue::new(key.clone(), value.clone())))
        .build();
    exporter.set_resource(&resource);
    export_all(&exporter, queue, counts, &config.endpoint);
    let _ = exporter.shutdown();
}

/// Sends the queue's batches to `exporter` until it is closed and empty, counting what was
/// taken and what was not.
fn export_all(exporter: &impl SpanExporter, queue: &Queue, counts: &Counts, endpoint: &str) {
    let scope = InstrumentationScope::builder("sluice").with_version(env!("CARGO_PKG_VERSION")).build();
    while let Some(spans) = queue.next_batch() {
        if spans.is_empty() {
            continue;
        }
        let batch: Vec<SpanData> = spans.into_iter().map(|span| span_data(span, &scope)).collect();
        let count = batch.len() as u64;
        match futures::executor::block_on(exporter.export(batch)) {
            Ok(()) => {
                counts.exported.inc_by(count);
            }
            Err(error) => {
                counts.dropped.inc_by(count);
                tracing::warn!(%error, spans = count, %endpoint, "the OTLP endpoint did not take the spans");
            }
        }
    }
}

fn span_data(span: Span, scope: &InstrumentationScope) -> SpanData {
    let context = SpanContext::new(
        TraceId::from_bytes(span.trace_id),
        SpanId::from_bytes(span.span_id),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    );
    let attributes = span
        .attributes
        .into_iter()
        .map(|(key, value)| match value {
            AttributeValue::Text(text) => KeyValue::new(key, text),
            AttributeValue::Int(number) => KeyValue::new(key, number),
            AttributeValue::Bool(flag) => KeyValue::new(key, flag),
        })
        .collect();
    SpanData {
        span_context: context,
        parent_span_id: span.parent_span_id.map_or(SpanId::INVALID, SpanId::from_bytes),
        parent_span_is_remote: false,
        span_kind: SpanKind::Internal,
        name: span.name.into(),
        start_time: SystemTime::from(span.start),
        end_time: SystemTime::from(span.end),
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: match span.error {
            Some(error) => Status::error(error),
            None => Status::Unset,
        },
        instrumentation_scope: scope.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Option<TraceConfig>, CliError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        config_from(|name| vars.get(name).cloned(), "sluice-worker")
    }

    #[test]
    fn tracing_is_off_without_an_endpoint_or_when_disabled() {
        assert_eq!(config(&[]).unwrap(), None);
        assert_eq!(config(&[("OTEL_SERVICE_NAME", "x")]).unwrap(), None);
        let disabled = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"), ("OTEL_SDK_DISABLED", "true")];
        assert_eq!(config(&disabled).unwrap(), None);
    }

    #[test]
    fn the_base_endpoint_gets_v1_traces_and_the_traces_endpoint_is_used_as_given() {
        let base = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/")]).unwrap().unwrap();
        assert_eq!(base.endpoint, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(base.service_name, "sluice-worker");
        assert_eq!(base.sampler, Sampler::AlwaysOn);
        let both = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9999/custom"),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=etl-workers, deployment.environment=prod"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(both.endpoint, "http://127.0.0.1:9999/custom");
        assert_eq!(both.service_name, "etl-workers");
        assert_eq!(both.resource[1], ("deployment.environment".to_owned(), "prod".to_owned()));
        assert_eq!(both.sampler, Sampler::Ratio(0.25));
    }

    #[test]
    fn a_value_that_cannot_be_used_is_refused_naming_its_variable() {
        for (vars, variable) in [
            (vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "127.0.0.1:4318")], "OTEL_EXPORTER_OTLP_ENDPOINT"),
            (vec![("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "grpc://x")], "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://h"), ("OTEL_TRACES_SAMPLER", "sometimes")],
                "OTEL_TRACES_SAMPLER",
            ),
            (
                vec![
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://h"),
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "2"),
                ],
                "OTEL_TRACES_SAMPLER_ARG",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://h"), ("OTEL_RESOURCE_ATTRIBUTES", "novalue")],
                "OTEL_RESOURCE_ATTRIBUTES",
            ),
        ] {
            let error = config(&vars).unwrap_err();
            assert!(error.message.starts_with(variable), "{variable}: {}", error.message);
        }
    }

    #[test]
    fn a_ratio_samples_about_its_share_and_every_process_agrees() {
        let ids: Vec<[u8; 16]> = (0u64..10_000)
            .map(|i| {
                let mut id = [0u8; 16];
                id[8..].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
                id
            })
            .collect();
        let share = ids.iter().filter(|id| samples(Sampler::Ratio(0.25), id)).count();
        assert!((2_200..2_800).contains(&share), "{share} of 10000");
        assert!(ids.iter().all(|id| samples(Sampler::AlwaysOn, id) && !samples(Sampler::AlwaysOff, id)));
        let low_half =
            ids.iter().filter(|id| samples(Sampler::Ratio(0.1), id)).all(|id| samples(Sampler::Ratio(0.25), id));
        assert!(low_half, "a trace sampled at 10 % is sampled at 25 % too: processes with different ratios nest");
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let sink = OtlpSink { queue: Queue::default(), sampler: Sampler::AlwaysOn, counts: Counts::default() };
        let span = Span {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: None,
            name: "run".into(),
            start: chrono::Utc::now(),
            end: chrono::Utc::now(),
            attributes: Vec::new(),
            error: None,
        };
        for _ in 0..SPAN_QUEUE_MAX + 2 {
            sink.emit(span.clone());
        }
        assert_eq!(sink.counts.dropped.get(), 2);
        // Batches come out whole, then what is left once closed, then nothing.
        assert_eq!(sink.queue.next_batch().map(|batch| batch.len()), Some(SPAN_BATCH_MAX));
        sink.queue.close();
        sink.emit(span.clone());
        assert_eq!(sink.counts.dropped.get(), 3, "a closed queue drops");
        let mut left = 0;
        while let Some(batch) = sink.queue.next_batch() {
            assert!(batch.len() <= SPAN_BATCH_MAX);
            left += batch.len();
        }
        assert_eq!(left, SPAN_QUEUE_MAX - SPAN_BATCH_MAX);
    }

    #[test]
    fn spans_reach_an_exporter_with_their_ids_parents_attributes_and_errors() {
        let exporter = opentelemetry_sdk::trace::InMemorySpanExporterBuilder::new().build();
        let counts = Counts::default();
        let queue = Queue::default();
        let start = chrono::Utc::now();
        let span = |id: u8, parent: Option<u8>, name: &str, error: Option<&str>| Span {
            trace_id: [7; 16],
            span_id: [id; 8],
            parent_span_id: parent.map(|parent| [parent; 8]),
            name: name.into(),
            start,
            end: start + chrono::Duration::milliseconds(5),
            attributes: vec![
                ("sluice.attempt", AttributeValue::Int(i64::from(id))),
                ("sluice.pool", AttributeValue::Text("default".into())),
            ],
            error: error.map(str::to_owned),
        };
        assert!(queue.push(span(1, None, "run w", None)));
        assert!(queue.push(span(2, Some(1), "job a", None)));
        assert!(queue.push(span(3, Some(2), "attempt 1 of a", Some("exit status 3"))));
        queue.close();
        export_all(&exporter, &queue, &counts, "http://127.0.0.1:4318");
        let spans = exporter.get_finished_spans().unwrap();
        assert_eq!(counts.exported.get(), 3);
        assert_eq!(counts.dropped.get(), 0);
        let names: Vec<&str> = spans.iter().map(|span| span.name.as_ref()).collect();
        assert_eq!(names, ["run w", "job a", "attempt 1 of a"]);
        assert!(spans.iter().all(|span| span.span_context.trace_id() == TraceId::from_bytes([7; 16])));
        assert_eq!(spans[0].parent_span_id, SpanId::INVALID, "the run is the root");
        assert_eq!(spans[1].parent_span_id, SpanId::from_bytes([1; 8]));
        assert_eq!(spans[2].parent_span_id, SpanId::from_bytes([2; 8]));
        assert_eq!(spans[2].status, Status::error("exit status 3"));
        assert_eq!(spans[1].status, Status::Unset);
        assert!(spans[2].attributes.contains(&KeyValue::new("sluice.attempt", 3)));
        assert!(spans[2].attributes.contains(&KeyValue::new("sluice.pool", "default")));
        assert_eq!(spans[0].end_time.duration_since(spans[0].start_time).unwrap(), Duration::from_millis(5));
    }
}
