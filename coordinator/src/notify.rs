//! Notifications: which notices a change makes (pure, from the run and its effects), the
//! operator's targets (`--notify-targets FILE`), and the notifier that POSTs each notice
//! from the outbox stream `SLUICE_NOTIFY` to its target: at least once, with retries and
//! backoff, an `Idempotency-Key` per notice, its delivery recorded in KV
//! `sluice-notifications`.
//!
//! Nothing here blocks the engine: the loop only publishes notices (after the saves that
//! make them true); the notifier is a task of the leader's term with deliveries bounded in
//! number, in time and per target, so a slow or dead target delays no other.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer, kv};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use sluice_client::pipeline::{Outgoing, publish_all};
use sluice_proto::limits::{NOTIFY_TARGETS_FILE_MAX_BYTES, NOTIFY_TARGETS_MAX, NOTIFY_URL_MAX_BYTES};
use sluice_proto::notify::{Body, DeliveryState, Notice, NotifyEvent, NotifyStatus, targets_of, unknown_targets};
use sluice_proto::pod::{EnvValue, check_secret_name};
use sluice_proto::spec::check_name;
use sluice_proto::{DeadLetter, JobState, RunRecord, RunState, WorkflowSpec, decode, encode, names};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::engine::{Effect, Run};
use crate::error::{NatsContext, ServiceError};
use crate::metrics::Metrics;

/// Longest one POST may take, connecting included.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Most POSTs in flight at once, over all targets.
pub const DELIVERIES_IN_FLIGHT_MAX: usize = 32;
/// Most POSTs in flight to one target: a slow target holds at most these slots, and its
/// other notices wait their turn ([`TARGET_BUSY_DELAY`]) without holding any.
pub const TARGET_IN_FLIGHT_MAX: usize = 4;
/// How long a notice whose target is at [`TARGET_IN_FLIGHT_MAX`] waits before it is looked
/// at again (not an attempt: nothing was sent).
pub const TARGET_BUSY_DELAY: Duration = Duration::from_secs(1);
/// Attempts before a notice is given up: with [`retry_delay`], about an hour of retrying.
pub const ATTEMPTS_MAX: u32 = 15;
pub const RETRY_DELAY_INITIAL: Duration = Duration::from_secs(1);
pub const RETRY_DELAY_MAX: Duration = Duration::from_secs(10 * 60);
/// How long a notice may wait in the outbox (a target down for longer loses it).
pub const OUTBOX_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// The outbox's size in notices (a count, not bytes: a `max_bytes` would reserve store
/// space, [`crate::storage`]); when full, the oldest go first (the engine never waits on
/// it). A notice is at most a few tens of KiB (20 jobs, 1 KiB of error each).
pub const OUTBOX_MAX_NOTICES: i64 = 100_000;
/// How long delivery records are kept (what `sluice status` shows).
pub const STATUS_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Time a notice may be in the notifier's hands before JetStream hands it out again: longer
/// than a POST ([`DELIVERY_TIMEOUT`]) plus the wait for a free slot.
pub const NOTIFIER_ACK_WAIT: Duration = Duration::from_secs(60);
/// Notices handed out and not yet settled; those waiting out a retry delay count too, so
/// this is how many may be retrying at once before new ones wait.
pub const NOTIFIER_MAX_ACK_PENDING: i64 = 10_000;

/// Where a target's notices go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    Url(reqwest::Url),
    /// A file of `--secrets-dir` holding the URL (read at each delivery, so rotating it
    /// needs no restart).
    Secret(String),
}

/// The operator's targets: name → URL or `{secret: NAME}`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Targets {
    targets: BTreeMap<String, Destination>,
    secrets_dir: Option<PathBuf>,
}

/// Why a `--notify-targets` file cannot be used; the coordinator does not start with it.
#[derive(Debug, thiserror::Error)]
pub enum TargetsError {
    #[error("--notify-targets {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("--notify-targets {path}:{}", render(.problems))]
    Invalid { path: String, problems: Vec<String> },
}

fn render(problems: &[String]) -> String {
    problems.iter().map(|problem| format!("\n  - {problem}")).collect()
}

impl Targets {
    /// Reads and checks a targets file (every secret it names must be readable now).
    pub fn load(path: &Path, secrets_dir: Option<&Path>) -> Result<Self, TargetsError> {
        let shown = path.display().to_string();
        let bytes = std::fs::metadata(path).map_err(|source| TargetsError::Read { path: shown.clone(), source })?.len();
        if bytes > NOTIFY_TARGETS_FILE_MAX_BYTES as u64 {
            let problem = format!("the file is {bytes} bytes; the limit is {NOTIFY_TARGETS_FILE_MAX_BYTES}");
            return Err(TargetsError::Invalid { path: shown, problems: vec![problem] });
        }
        let text =
            std::fs::read_to_string(path).map_err(|source| TargetsError::Read { path: shown.clone(), source })?;
        Self::parse(&text, secrets_dir).map_err(|problems| TargetsError::Invalid { path: shown, problems })
    }

    /// A YAML map of target name to a URL (`http` or `https`) or `{secret: NAME}`; every
    /// problem at once.
    pub fn parse(text: &str, secrets_dir: Option<&Path>) -> Result<Self, Vec<String>> {
        let entries: BTreeMap<String, EnvValue> = if text.trim().is_empty() {
            BTreeMap::new()
        } else {
            serde_saphyr::from_str(text)
                .map_err(|error| vec![format!("not a map of target names to a URL or {{secret: NAME}}: {error}")])?
        };
        let mut problems = Vec::new();
        if entries.len() > NOTIFY_TARGETS_MAX {
            problems.push(format!("{} targets; the limit is {NOTIFY_TARGETS_MAX}", entries.len()));
        }
        let mut targets = BTreeMap::new();
        for (name, value) in entries {
            if let Err(problem) = check_name("target", &name) {
                problems.push(problem);
                continue;
            }
            let destination = match value {
                EnvValue::Value(url) => check_url(&url).map(Destination::Url),
                EnvValue::Secret { secret } => check_secret_name(&secret)
                    .and_then(|()| read_secret(secrets_dir, &secret).map(|_| Destination::Secret(secret))),
            };
            match destination {
                Ok(destination) => {
                    targets.insert(name, destination);
                }
                Err(problem) => problems.push(format!("target `{name}`: {problem}")),
            }
        }
        if problems.is_empty() {
            Ok(Self { targets, secrets_dir: secrets_dir.map(Path::to_owned) })
        } else {
            Err(problems)
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.targets.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.targets.keys().map(String::as_str)
    }

    /// Where `name`'s notices go now.
    pub fn url(&self, name: &str) -> Result<reqwest::Url, String> {
        match self.targets.get(name) {
            None => Err(format!("target `{name}` is not in --notify-targets (any more)")),
            Some(Destination::Url(url)) => Ok(url.clone()),
            Some(Destination::Secret(secret)) => read_secret(self.secrets_dir.as_deref(), secret),
        }
    }

    /// The refusal of a workflow naming targets that are not here, listing those that are.
    pub fn check_workflow(&self, spec: &WorkflowSpec) -> Result<(), String> {
        let unknown = unknown_targets(&spec.notify, &|name| self.contains(name));
        if unknown.is_empty() {
            return Ok(());
        }
        let known: Vec<&str> = self.names().collect();
        let known = if known.is_empty() {
            "none: the coordinator has no --notify-targets".to_owned()
        } else {
            known.join(", ")
        };
        Err(format!("notify: unknown target(s) {} (targets: {known})", unknown.join(", ")))
    }
}

/// An http:// or https:// URL with a host, at most [`NOTIFY_URL_MAX_BYTES`].
pub fn check_url(text: &str) -> Result<reqwest::Url, String> {
    if text.len() > NOTIFY_URL_MAX_BYTES {
        return Err(format!("the URL is {} bytes; the limit is {NOTIFY_URL_MAX_BYTES}", text.len()));
    }
    let url = reqwest::Url::parse(text.trim()).map_err(|error| format!("`{text}` is not a URL: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{url}` is not an http:// or https:// URL with a host"));
    }
    Ok(url)
}

/// The URL in secret `name` (a file of `dir`), checked; the error never shows the value.
fn read_secret(dir: Option<&Path>, name: &str) -> Result<reqwest::Url, String> {
    let Some(dir) = dir else {
        return Err(format!("secret `{name}` needs --secrets-dir (the directory of the coordinator's secrets)"));
    };
    let path = dir.join(name);
    let text =
        std::fs::read_to_string(&path).map_err(|error| format!("secret `{name}` ({}): {error}", path.display()))?;
    check_url(text.trim()).map_err(|_| format!("secret `{name}` does not hold an http:// or https:// URL"))
}

/// What the coordinator's notifications need: the targets and where the UI is.
#[derive(Clone, Debug, Default)]
pub struct NotifySettings {
    pub targets: Targets,
    /// The UI's base URL (`--ui-url`): notices link to `<ui_url>/runs/<run_id>`.
    pub ui_url: Option<String>,
}

// ---- Which notices a change makes (pure) ----

/// The notices the effects of one round make: a run that ended `failed` or `succeeded`
/// (its final save), a job dead-lettered. `active` holds the runs the effects came from.
pub fn of_effects(effects: &[Effect], active: &HashMap<sluice_proto::RunId, Run>) -> Vec<Notice> {
    let mut notices = Vec::new();
    for effect in effects {
        match effect {
            Effect::SaveRun(record) => {
                if let Some(run) = active.get(&record.id) {
                    notices.extend(run_finished(run, record));
                }
            }
            Effect::DeadLetter(letter) => {
                if let Some(run) = active.get(&letter.job.run_id) {
                    notices.extend(dead_lettered(run, letter));
                }
            }
            _ => {}
        }
    }
    notices
}

/// The notices a crash may have kept from the outbox, for a run loaded at takeover: its end,
/// if it ended, and every dead letter of it. Their ids are those first made, so a target
/// that got one is not sent it again (the notifier checks the delivery record).
pub fn of_restored(run: &Run) -> Vec<Notice> {
    let mut notices = run_finished(run, run.record());
    if targets_of(&run.spec().notify, NotifyEvent::DeadLetter).next().is_some() {
        for job in run.jobs_in(JobState::Failed) {
            notices.extend(dead_letter_notices(
                run,
                &job.name,
                job.generation,
                job.error.as_deref(),
                job.attempts,
                job.finished_at,
            ));
        }
    }
    notices
}

fn run_finished(run: &Run, record: &RunRecord) -> Vec<Notice> {
    let event = match record.state {
        RunState::Failed => NotifyEvent::Failed,
        RunState::Succeeded => NotifyEvent::Succeeded,
        RunState::Running | RunState::Cancelled => return Vec::new(),
    };
    let Some(finished_at) = record.finished_at else { return Vec::new() };
    let targets: Vec<&str> = targets_of(&run.spec().notify, event).collect();
    if targets.is_empty() {
        return Vec::new();
    }
    let (failed_jobs, failed_jobs_omitted) = if event == NotifyEvent::Failed {
        Notice::failed_jobs(
            run.jobs_in(JobState::Failed)
                .map(|job| (job.name.as_str(), job.error.as_deref().unwrap_or(""), job.attempts)),
        )
    } else {
        (Vec::new(), 0)
    };
    targets
        .into_iter()
        .map(|target| {
            let id = Notice::run_finished_id(&record.id, target, event, finished_at);
            Notice {
                failed_jobs: failed_jobs.clone(),
                failed_jobs_omitted,
                ..Notice::new(id, event, target, &record.workflow, finished_at).of_run(record)
            }
        })
        .collect()
}

fn dead_lettered(run: &Run, letter: &DeadLetter) -> Vec<Notice> {
    let job = &letter.job;
    let attempts = run.job(&job.job).map_or(letter.attempts.len() as u32, |record| record.attempts);
    dead_letter_notices(run, &job.job, job.generation, Some(&letter.reason), attempts, Some(letter.dead_at))
}

fn dead_letter_notices(
    run: &Run,
    path: &str,
    generation: u32,
    error: Option<&str>,
    attempts: u32,
    at: Option<DateTime<Utc>>,
) -> Vec<Notice> {
    let record = run.record();
    let (failed_jobs, _) = Notice::failed_jobs(std::iter::once((path, error.unwrap_or(""), attempts)));
    targets_of(&run.spec().notify, NotifyEvent::DeadLetter)
        .map(|target| {
            let id = Notice::dead_letter_id(&record.id, target, path, generation);
            let at = at.unwrap_or(record.created_at);
            Notice {
                failed_jobs: failed_jobs.clone(),
                pool: Some(run.pool_of(path)),
                ..Notice::new(id, NotifyEvent::DeadLetter, target, &record.workflow, at).of_run(record)
            }
        })
        .collect()
}

/// The notices of a schedule pass that dropped `skipped` ticks, from the pass that began
/// at `handled_until`.
pub fn schedule_missed(
    spec: &WorkflowSpec,
    skipped: usize,
    handled_until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Vec<Notice> {
    if skipped == 0 {
        return Vec::new();
    }
    targets_of(&spec.notify, NotifyEvent::ScheduleMissed)
        .map(|target| {
            let id = Notice::schedule_missed_id(&spec.name, target, handled_until);
            Notice {
                skipped_ticks: Some(skipped as u64),
                ..Notice::new(id, NotifyEvent::ScheduleMissed, target, &spec.name, now)
            }
        })
        .collect()
}

/// Puts notices in the outbox stream (deduplicated by id within its window).
pub async fn publish(js: &jetstream::Context, notices: &[Notice]) -> Result<(), ServiceError> {
    if notices.is_empty() {
        return Ok(());
    }
    let mut outgoing = Vec::with_capacity(notices.len());
    for notice in notices {
        let mut headers = HeaderMap::new();
        headers.insert(names::HEADER_MSG_ID, notice.id.as_str());
        outgoing.push(Outgoing {
            subject: names::notify_subject(&notice.target, notice.run_id.as_ref()),
            headers,
            payload: encode(notice)?.into(),
            what: format!("the {} notice for target {}", notice.event, notice.target),
        });
    }
    publish_all(js, outgoing).await?;
    Ok(())
}

// ---- Delivery ----

/// How one POST went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The target answered with this HTTP status.
    Status(u16),
    /// No answer: it could not be reached, or it took longer than [`DELIVERY_TIMEOUT`], or
    /// its URL cannot be had now (a secret unreadable, the target removed).
    Unreachable(String),
    /// The target is not configured any more: no attempt can succeed.
    Unknown(String),
}

/// What follows an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Delivered,
    /// Try again after this delay.
    Retry(Duration),
    /// No attempt follows.
    GiveUp,
}

/// Decides after attempt `attempts` (1-based): a 2xx delivered it; 408, 429, 5xx and no
/// answer are retried with backoff until [`ATTEMPTS_MAX`]; any other answer (a 3xx is not
/// followed, a 4xx says the request is wrong) gives up at once.
pub fn next_step(answer: &Answer, attempts: u32) -> Next {
    let retryable = match answer {
        Answer::Status(code) if (200..300).contains(code) => return Next::Delivered,
        Answer::Status(code) => matches!(code, 408 | 429 | 500..=599),
        Answer::Unreachable(_) => true,
        Answer::Unknown(_) => false,
    };
    if retryable && attempts < ATTEMPTS_MAX { Next::Retry(retry_delay(attempts)) } else { Next::GiveUp }
}

/// The wait after attempt `attempts`: 1 s, doubling, at most [`RETRY_DELAY_MAX`].
pub fn retry_delay(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(20);
    (RETRY_DELAY_INITIAL * 2u32.pow(doublings)).min(RETRY_DELAY_MAX)
}

/// The delivery record after an attempt that got `answer`.
pub fn after_attempt(previous: NotifyStatus, answer: &Answer, next: Next, at: DateTime<Utc>) -> NotifyStatus {
    let (status_code, error) = match answer {
        Answer::Status(code) if (200..300).contains(code) => (Some(*code), None),
        Answer::Status(code) => (Some(*code), Some(format!("the target answered HTTP {code}"))),
        Answer::Unreachable(reason) | Answer::Unknown(reason) => (None, Some(reason.clone())),
    };
    let state = match next {
        Next::Delivered => DeliveryState::Delivered,
        Next::Retry(_) => DeliveryState::Pending,
        Next::GiveUp => DeliveryState::Failed,
    };
    NotifyStatus { state, status_code, error, attempts: previous.attempts.saturating_add(1), last_at: at, ..previous }
}

/// The outbox's consumer, created afresh each term (like the loop's: notices a dead
/// leader held are handed out at once).
pub fn consumer_config() -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(names::NOTIFIER_CONSUMER.to_owned()),
        filter_subject: names::NOTIFY_SUBJECTS.to_owned(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: NOTIFIER_ACK_WAIT,
        max_deliver: -1,
        max_ack_pending: NOTIFIER_MAX_ACK_PENDING,
        deliver_policy: consumer::DeliverPolicy::All,
        ..Default::default()
    }
}

/// Delivers the outbox while this coordinator leads: a task of the term. A failure of NATS
/// is logged and the notifier starts again after a pause; it never ends the term.
pub async fn deliver(
    js: jetstream::Context,
    statuses: kv::Store,
    settings: Arc<NotifySettings>,
    metrics: Metrics,
    term: CancellationToken,
) {
    let client = match http_client() {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "notifications cannot be sent: no HTTP client");
            return;
        }
    };
    let notifier = Notifier {
        client,
        statuses,
        settings,
        metrics,
        slots: Arc::new(Semaphore::new(DELIVERIES_IN_FLIGHT_MAX)),
        busy: Arc::new(Mutex::new(HashMap::new())),
    };
    loop {
        let served = tokio::select! {
            () = term.cancelled() => return,
            served = notifier.serve(&js) => served,
        };
        if let Err(error) = served {
            tracing::warn!(%error, "notifier failed; starting it again");
        }
        tokio::select! {
            () = term.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Makes ring the process's TLS crypto provider: reqwest is built without one (so that
/// aws-lc stays out), and building any reqwest client fails until one is installed. A
/// process calls it before its first client; calling it again changes nothing.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    install_tls_provider();
    reqwest::Client::builder()
        .timeout(DELIVERY_TIMEOUT)
        .connect_timeout(DELIVERY_TIMEOUT)
        // A redirect could lead anywhere the coordinator can reach; targets give the URL.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
        .build()
}

#[derive(Clone)]
struct Notifier {
    client: reqwest::Client,
    statuses: kv::Store,
    settings: Arc<NotifySettings>,
    metrics: Metrics,
    slots: Arc<Semaphore>,
    /// POSTs in flight per target.
    busy: Arc<Mutex<HashMap<String, usize>>>,
}

/// Holds one of a target's in-flight places until dropped.
struct Busy {
    busy: Arc<Mutex<HashMap<String, usize>>>,
    target: String,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = busy.get_mut(&self.target) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                busy.remove(&self.target);
            }
        }
    }
}

impl Notifier {
    async fn serve(&self, js: &jetstream::Context) -> Result<(), ServiceError> {
        let stream = js.get_stream(names::NOTIFY_STREAM).await.context("opening the notification outbox")?;
        if let Err(error) = stream.delete_consumer(names::NOTIFIER_CONSUMER).await {
            tracing::debug!(%error, "no notifier consumer to replace");
        }
        let consumer = stream.create_consumer(consumer_config()).await.context("creating the notifier's consumer")?;
        let mut messages = consumer.messages().await.context("reading the notification outbox")?;
        while let Some(message) = messages.next().await {
            let message = message.context("reading the notification outbox")?;
            self.take(message).await?;
        }
        Ok(())
    }

    /// Starts the delivery of one notice, or settles it when it needs none.
    async fn take(&self, message: jetstream::Message) -> Result<(), ServiceError> {
        let notice = match decode::<Notice>(&message.payload) {
            Ok(notice) => notice,
            Err(error) => {
                tracing::error!(%error, subject = %message.subject, "a notice that cannot be read is dropped");
                return ack(&message, AckKind::Term).await;
            }
        };
        let previous = match self.statuses.get(&notice.id).await {
            Ok(Some(bytes)) => decode::<NotifyStatus>(&bytes).ok(),
            Ok(None) => None,
            Err(error) => return Err(error).context(format!("reading the delivery of notice {}", notice.id)),
        };
        if let Some(status) = &previous
            && status.state != DeliveryState::Pending
        {
            // Announced again after a restart: it was delivered (or given up) already.
            return ack(&message, AckKind::Ack).await;
        }
        let Some(busy) = self.claim(&notice.target) else {
            return ack(&message, AckKind::Nak(Some(TARGET_BUSY_DELAY))).await;
        };
        let slot = self.slots.clone().acquire_owned().await.map_err(|_| ServiceError::Stalled("notifier".into()))?;
        let previous = previous.unwrap_or_else(|| NotifyStatus::pending(&notice, Utc::now()));
        let notifier = self.clone();
        tokio::spawn(async move {
            notifier.attempt(message, notice, previous).await;
            drop((busy, slot));
        });
        Ok(())
    }

    fn claim(&self, target: &str) -> Option<Busy> {
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        let count = busy.entry(target.to_owned()).or_default();
        if *count >= TARGET_IN_FLIGHT_MAX {
            return None;
        }
        *count += 1;
        Some(Busy { busy: self.busy.clone(), target: target.to_owned() })
    }

    /// One POST, its record, and the message settled by what follows.
    async fn attempt(&self, message: jetstream::Message, notice: Notice, previous: NotifyStatus) {
        let answer = self.post(&notice).await;
        let attempts = previous.attempts.saturating_add(1);
        let next = next_step(&answer, attempts);
        let status = after_attempt(previous, &answer, next, Utc::now());
        match next {
            Next::Delivered => tracing::debug!(id = notice.id, target = notice.target, attempts, "notice delivered"),
            Next::Retry(delay) => tracing::info!(
                id = notice.id,
                target = notice.target,
                attempts,
                error = status.error.as_deref().unwrap_or(""),
                retry_in_ms = delay.as_millis() as u64,
                "notice not delivered; trying again"
            ),
            Next::GiveUp => tracing::warn!(
                id = notice.id,
                target = notice.target,
                attempts,
                error = status.error.as_deref().unwrap_or(""),
                "notice given up"
            ),
        }
        self.metrics.notification_attempt(notice.event.as_str(), next);
        match encode(&status) {
            Ok(bytes) => {
                if let Err(error) = self.statuses.put(&notice.id, bytes.into()).await {
                    tracing::warn!(%error, id = notice.id, "the delivery record cannot be written");
                }
            }
            Err(error) => tracing::error!(%error, id = notice.id, "the delivery record cannot be encoded"),
        }
        let settle = match next {
            Next::Delivered | Next::GiveUp => AckKind::Ack,
            Next::Retry(delay) => AckKind::Nak(Some(delay)),
        };
        if let Err(error) = ack(&message, settle).await {
            // Unsettled, it is handed out again after the ack wait.
            tracing::warn!(%error, id = notice.id, "a notice could not be settled");
        }
    }

    async fn post(&self, notice: &Notice) -> Answer {
        let url = match self.settings.targets.url(&notice.target) {
            Ok(url) => url,
            Err(reason) if !self.settings.targets.contains(&notice.target) => return Answer::Unknown(reason),
            Err(reason) => return Answer::Unreachable(reason),
        };
        let body = match serde_json::to_vec(&Body::new(notice, self.settings.ui_url.as_deref())) {
            Ok(body) => body,
            Err(error) => return Answer::Unknown(format!("the notice cannot be written as JSON: {error}")),
        };
        let sent = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(names::HEADER_IDEMPOTENCY_KEY, notice.id.as_str())
            .body(body)
            .send()
            .await;
        match sent {
            Ok(response) => Answer::Status(response.status().as_u16()),
            // The URL may hold a token (Slack's do): the error names the target, not the URL.
            Err(error) => Answer::Unreachable(format!(
                "target `{}` could not be reached: {}",
                notice.target,
                describe(&error.without_url())
            )),
        }
    }
}

/// A reqwest error with its causes (its own text alone says only "error sending request").
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn ack(message: &jetstream::Message, kind: AckKind) -> Result<(), ServiceError> {
    message.ack_with(kind).await.map_err(|source| ServiceError::Nats { context: "settling a notice".into(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_2xx_delivers_and_5xx_408_429_and_silence_retry_with_backoff() {
        assert_eq!(next_step(&Answer::Status(204), 1), Next::Delivered);
        for answer in [Answer::Status(500), Answer::Status(503), Answer::Status(408), Answer::Status(429)] {
            assert_eq!(next_step(&answer, 1), Next::Retry(Duration::from_secs(1)), "{answer:?}");
        }
        assert_eq!(next_step(&Answer::Unreachable("refused".into()), 3), Next::Retry(Duration::from_secs(4)));
        assert_eq!(next_step(&Answer::Status(500), ATTEMPTS_MAX), Next::GiveUp);
        assert_eq!(retry_delay(1), RETRY_DELAY_INITIAL);
        assert_eq!(retry_delay(2), Duration::from_secs(2));
        assert_eq!(retry_delay(ATTEMPTS_MAX), RETRY_DELAY_MAX);
        assert_eq!(retry_delay(u32::MAX), RETRY_DELAY_MAX);
        let total: Duration = (1..ATTEMPTS_MAX).map(retry_delay).sum();
        assert!(total > Duration::from_secs(45 * 60) && total < Duration::from_secs(2 * 3600), "{total:?}");
    }

    #[test]
    fn a_4xx_a_3xx_or_an_unknown_target_gives_up_at_once() {
        for answer in [Answer::Status(400), Answer::Status(404), Answer::Status(301), Answer::Unknown("gone".into())] {
            assert_eq!(next_step(&answer, 1), Next::GiveUp, "{answer:?}");
        }
    }

    #[test]
    fn the_delivery_record_counts_attempts_and_keeps_the_last_answer() {
        let notice = Notice::new("x".into(), NotifyEvent::Failed, "t", "w", Utc::now());
        let first = after_attempt(
            NotifyStatus::pending(&notice, notice.at),
            &Answer::Status(500),
            Next::Retry(Duration::from_secs(1)),
            notice.at,
        );
        assert_eq!((first.state, first.status_code, first.attempts), (DeliveryState::Pending, Some(500), 1));
        assert_eq!(first.error.as_deref(), Some("the target answered HTTP 500"));
        let second = after_attempt(first, &Answer::Status(200), Next::Delivered, notice.at);
        assert_eq!(
            (second.state, second.status_code, second.attempts, second.error),
            (DeliveryState::Delivered, Some(200), 2, None)
        );
    }

    #[test]
    fn targets_are_urls_or_secrets_and_every_problem_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ops-hook"), "https://hooks.example.com/T000/B000/xyz\n").unwrap();
        std::fs::write(dir.path().join("garbage"), "not a url").unwrap();
        let targets =
            Targets::parse("data-team: http://127.0.0.1:9000/hook\nops: {secret: ops-hook}\n", Some(dir.path()))
                .unwrap();
        assert_eq!(targets.names().collect::<Vec<_>>(), ["data-team", "ops"]);
        assert_eq!(targets.url("ops").unwrap().as_str(), "https://hooks.example.com/T000/B000/xyz");
        assert!(targets.url("nobody").unwrap_err().contains("target `nobody` is not in --notify-targets"));
        let problems = Targets::parse(
            "'bad name': http://x\nftp: ftp://example.com/\nrel: /just/a/path\nleak: {secret: garbage}\nup: {secret: ../etc}\nnone: {secret: missing}\n",
            Some(dir.path()),
        )
        .unwrap_err();
        let all = problems.join("\n");
        assert!(all.contains("target name `bad name`"), "{all}");
        assert!(all.contains("target `ftp`: `ftp://example.com/` is not an http:// or https:// URL"), "{all}");
        assert!(all.contains("target `rel`: `/just/a/path` is not a URL"), "{all}");
        assert!(all.contains("target `leak`: secret `garbage` does not hold an http:// or https:// URL"), "{all}");
        assert!(!all.contains("not a url"), "a secret's value is never shown: {all}");
        assert!(all.contains("target `up`: secret name `../etc`"), "{all}");
        assert!(all.contains("target `none`: secret `missing`"), "{all}");
        let no_dir = Targets::parse("ops: {secret: ops-hook}\n", None).unwrap_err();
        assert!(no_dir[0].contains("needs --secrets-dir"), "{no_dir:?}");
        assert!(Targets::parse("[1, 2]", None).unwrap_err()[0].contains("not a map of target names"));
        assert_eq!(Targets::parse("", None).unwrap(), Targets::default());
    }

    #[test]
    fn a_workflow_naming_an_unknown_target_is_refused_with_the_targets_there_are() {
        let spec = WorkflowSpec::parse(
            "name: w\nnotify:\n  - {target: data-team, on: [failed]}\n  - {target: pager, on: [dead_letter]}\njobs:\n  a: {run: noop}\n",
        )
        .unwrap();
        let targets = Targets::parse("data-team: http://127.0.0.1:1/\nops: http://127.0.0.1:2/\n", None).unwrap();
        assert_eq!(
            targets.check_workflow(&spec).unwrap_err(),
            "notify: unknown target(s) pager (targets: data-team, ops)"
        );
        let none = Targets::default().check_workflow(&spec).unwrap_err();
        assert!(none.contains("none: the coordinator has no --notify-targets"), "{none}");
        let quiet = WorkflowSpec::parse("name: w\njobs:\n  a: {run: noop}\n").unwrap();
        assert_eq!(Targets::default().check_workflow(&quiet), Ok(()));
    }

    #[test]
    fn a_schedule_pass_that_dropped_ticks_tells_its_targets_once() {
        let spec = WorkflowSpec::parse(
            "name: nightly\nnotify:\n  - {target: t, on: [schedule_missed]}\n  - {target: u, on: [failed]}\njobs:\n  a: {run: noop}\n",
        )
        .unwrap();
        let from = Utc::now();
        let notices = schedule_missed(&spec, 3, from, from);
        assert_eq!(notices.len(), 1);
        assert_eq!((notices[0].target.as_str(), notices[0].skipped_ticks), ("t", Some(3)));
        assert_eq!(notices[0].id, Notice::schedule_missed_id("nightly", "t", from));
        assert!(schedule_missed(&spec, 0, from, from).is_empty());
    }

    fn run_of(yaml: &str) -> (Run, Vec<Effect>) {
        use chrono::TimeZone;
        let spec = WorkflowSpec::parse(yaml).unwrap();
        let now = Utc.with_ymd_and_hms(2024, 3, 1, 0, 0, 0).unwrap();
        let window =
            sluice_proto::Window::parse("2024-02-29", sluice_proto::window::parse_zone("UTC").unwrap(), now).unwrap();
        let new = crate::engine::NewRun {
            id: sluice_proto::RunId::new(),
            spec,
            spec_yaml: yaml.to_owned(),
            spec_hash: WorkflowSpec::hash(yaml),
            window,
            params: Default::default(),
            idempotency_key: None,
            origin: sluice_proto::messages::ORIGIN_MANUAL.into(),
            traceparent: None,
            tracestate: None,
        };
        Run::start(new, now)
    }

    fn fail(run: &mut Run, job: &str, second: i64) -> Vec<Effect> {
        use sluice_proto::{EventKind, JobEvent};
        let at = run.record().created_at + chrono::Duration::seconds(second);
        let mut started = JobEvent::new(run.id(), job, 1, 0, EventKind::Started, "w1", at);
        run.apply(crate::engine::Input::Event(started.clone()), at).unwrap();
        started.kind = EventKind::Failed;
        started.error = Some("exit status 3".into());
        run.apply(crate::engine::Input::Event(started), at).unwrap()
    }

    const FAILING: &str = "name: w\nnotify:\n  - {target: t, on: [failed, dead_letter]}\n  - {target: u, on: [succeeded]}\njobs:\n  a: {run: noop}\n  b: {run: noop, needs: [a]}\n";

    #[test]
    fn a_failed_job_makes_a_dead_letter_notice_and_the_failed_run_one_naming_it() {
        let (mut run, _) = run_of(FAILING);
        let effects = fail(&mut run, "a", 1);
        let active = HashMap::from([(run.id(), run.clone())]);
        let notices = of_effects(&effects, &active);
        let events: Vec<(NotifyEvent, &str)> = notices.iter().map(|n| (n.event, n.target.as_str())).collect();
        assert_eq!(events, [(NotifyEvent::DeadLetter, "t"), (NotifyEvent::Failed, "t")], "{notices:#?}");
        let failed = &notices[1];
        assert_eq!(failed.state, Some(RunState::Failed));
        assert_eq!(failed.failed_jobs.len(), 1);
        assert_eq!((failed.failed_jobs[0].job.as_str(), failed.failed_jobs[0].error.as_str()), ("a", "exit status 3"));
        let letter = &notices[0];
        assert_eq!(letter.id, Notice::dead_letter_id(&run.id(), "t", "a", run.job("a").unwrap().generation));
        assert_eq!(letter.pool.as_deref(), Some("default"));
        assert_eq!(letter.failed_jobs[0].attempts, 1);
        // A coordinator that takes over after a crash announces the same notices again.
        let mut again: Vec<String> = of_restored(&run).into_iter().map(|notice| notice.id).collect();
        let mut first: Vec<String> = notices.into_iter().map(|notice| notice.id).collect();
        again.sort();
        first.sort();
        assert_eq!(again, first);
    }

    #[test]
    fn a_run_without_rules_for_an_event_makes_no_notice() {
        let (mut run, _) = run_of("name: w\nnotify:\n  - {target: u, on: [succeeded]}\njobs:\n  a: {run: noop}\n");
        let effects = fail(&mut run, "a", 1);
        let active = HashMap::from([(run.id(), run.clone())]);
        assert!(of_effects(&effects, &active).is_empty());
        assert!(of_restored(&run).is_empty());
    }
}
