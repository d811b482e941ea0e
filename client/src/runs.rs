//! Listing runs through the run index (stream `SLUICE_INDEX`, KV `sluice-active`, written
//! by the coordinator): the newest runs, of a workflow, of an origin or in a state, a page
//! at a time; a workflow's runs by window day; a run by the end of its id. Each costs what
//! it returns, not the history: a chain is walked from its newest entry backwards.
//!
//! Submissions no coordinator has taken yet are **pending**: a display state, not a run
//! state. They are read from the submission stream itself (a work queue: what is there was
//! not yet taken), the newest [`PENDING_READ_MAX`] at most, by direct get.

use std::collections::HashSet;

use async_nats::jetstream::{self, stream::DirectGetErrorKind};
use chrono::{DateTime, NaiveDate, Utc};
use futures::{StreamExt, TryStreamExt};
use sluice_proto::{RunId, RunIndexEntry, RunRecord, RunState, Submission, Window, decode, names};

use crate::error::{ClientError, NatsContext};
use crate::stores::{Stores, open_bucket};

/// Most runs one page may hold.
pub const PAGE_MAX: usize = 1_000;
/// Most index entries one page reads before it returns what it found (with a cursor), so a
/// filter that matches little never reads the whole history at once.
pub const SCAN_MAX_ENTRIES: usize = 10_000;
/// Most days one window-range listing covers.
pub const WINDOW_DAYS_MAX: i64 = 3_660;
/// Most pending submissions read (the newest), in submissions: what `runs`, `status`, an id
/// suffix and the coordinator's check of a pending cancel look at.
pub const PENDING_READ_MAX: usize = 1_000;

/// What to list; absent fields match every run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunFilter {
    pub workflow: Option<String>,
    pub state: Option<RunState>,
    /// `manual`, `schedule:<name>`, `backfill:<id>`.
    pub origin: Option<String>,
}

/// One page of runs, newest first, and where the next one starts.
#[derive(Clone, Debug, Default)]
pub struct Page {
    pub runs: Vec<RunRecord>,
    /// Opaque: pass it back for the next (older) page; `None` when this was the last.
    pub next: Option<String>,
}

/// The newest runs that match, `limit` at most, from `cursor` (a previous page's `next`).
pub async fn list(
    js: &jetstream::Context,
    filter: &RunFilter,
    limit: usize,
    cursor: Option<&str>,
) -> Result<Page, ClientError> {
    let Some(stores) = Stores::open(js).await? else { return Ok(Page::default()) };
    if filter.state == Some(RunState::Running) {
        return running(js, &stores, filter, limit, cursor).await;
    }
    let Ok(stream) = js.get_stream_no_info(names::INDEX_STREAM).await else { return Ok(Page::default()) };
    let chain = chain_of(filter);
    let mut next = match cursor {
        Some(text) => Some(parse_cursor(text)?),
        None => head(&stream, &chain).await?,
    };
    let limit = limit.clamp(1, PAGE_MAX);
    let mut seen = HashSet::new();
    let mut runs = Vec::new();
    let mut scanned = 0;
    while let Some(sequence) = next {
        if runs.len() == limit || scanned == SCAN_MAX_ENTRIES {
            return Ok(Page { runs, next: Some(sequence.to_string()) });
        }
        scanned += 1;
        let Some(entry) = entry(&stream, sequence).await? else { break };
        next = entry.previous;
        if !seen.insert(entry.run_id) {
            continue;
        }
        let Some(run) = stores.run(&entry.run_id).await? else { continue };
        if matches(&run, filter) && is_current(&entry, &run) {
            runs.push(run);
        }
    }
    Ok(Page { runs, next: None })
}

/// The chain that holds every run the filter may match, the narrowest first.
fn chain_of(filter: &RunFilter) -> String {
    match (&filter.workflow, &filter.origin, filter.state) {
        (_, Some(origin), _) => names::index_origin_subject(origin),
        (Some(workflow), _, _) => names::index_workflow_subject(workflow),
        (None, None, Some(state)) => names::index_state_subject(state.as_str()),
        (None, None, None) => names::INDEX_ALL_SUBJECT.to_owned(),
    }
}

fn matches(run: &RunRecord, filter: &RunFilter) -> bool {
    filter.workflow.as_ref().is_none_or(|workflow| &run.workflow == workflow)
        && filter.state.is_none_or(|state| run.state == state)
        && filter.origin.as_ref().is_none_or(|origin| &run.origin == origin)
}

/// An entry of a state chain stands for the run only while the run is still in that end
/// (a run retried and ended again has a newer entry).
fn is_current(entry: &RunIndexEntry, run: &RunRecord) -> bool {
    entry.state.is_none() || (entry.state == Some(run.state) && entry.finished_at == run.finished_at)
}

/// The running runs (KV `sluice-active`), newest first; the cursor is the last run id shown.
async fn running(
    js: &jetstream::Context,
    stores: &Stores,
    filter: &RunFilter,
    limit: usize,
    cursor: Option<&str>,
) -> Result<Page, ClientError> {
    let after: Option<RunId> = cursor.map(|text| text.parse().map_err(|_| bad_cursor(text))).transpose()?;
    let mut ids = running_ids(js).await?;
    // UUIDv7 ids sort by creation time.
    ids.sort_unstable_by(|a, b| b.cmp(a));
    let mut runs = Vec::new();
    let limit = limit.clamp(1, PAGE_MAX);
    for id in ids.into_iter().filter(|id| after.is_none_or(|after| *id < after)) {
        if runs.len() == limit {
            let last = runs.last().map(|run: &RunRecord| run.id.to_string());
            return Ok(Page { runs, next: last });
        }
        if let Some(run) = stores.run(&id).await?
            && matches(&run, filter)
        {
            runs.push(run);
        }
    }
    Ok(Page { runs, next: None })
}

/// The ids in KV `sluice-active`: every running run (and, briefly, some that just ended).
pub async fn running_ids(js: &jetstream::Context) -> Result<Vec<RunId>, ClientError> {
    let Some(active) = open_bucket(js, names::ACTIVE_BUCKET).await? else { return Ok(Vec::new()) };
    let keys: Vec<String> = match active.keys().await {
        Ok(keys) => keys.try_collect().await.context("listing the running runs")?,
        Err(error) => return Err(error).context("listing the running runs"),
    };
    Ok(keys.iter().filter_map(|key| key.parse().ok()).collect())
}

/// A workflow's runs whose window starts on the days `from` to `to` (UTC, both included),
/// newest first.
pub async fn by_window_days(
    js: &jetstream::Context,
    workflow: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<RunRecord>, ClientError> {
    let days = (to - from).num_days();
    if !(0..=WINDOW_DAYS_MAX).contains(&days) {
        return Err(ClientError::Invalid(format!(
            "a window range covers 1 to {WINDOW_DAYS_MAX} days, not {from}..{to}"
        )));
    }
    let (Some(stores), Ok(stream)) = (Stores::open(js).await?, js.get_stream_no_info(names::INDEX_STREAM).await) else {
        return Ok(Vec::new());
    };
    // Direct gets by subject, many in flight at once: a consumer filtered to a year of
    // days would make the server scan the whole index to count what it holds.
    let subjects: Vec<String> =
        from.iter_days().take(days as usize + 1).map(|day| names::index_window_subject(workflow, day)).collect();
    // Owned inputs: the futures must be `Send` for any caller (the server's handlers).
    let chains: Vec<Vec<RunIndexEntry>> = futures::stream::iter(subjects.into_iter().map(|subject| {
        let stream = stream.clone();
        async move { entries_of(&stream, &subject).await }
    }))
    .buffered(GETS_IN_FLIGHT)
    .try_collect()
    .await?;
    let mut seen = HashSet::new();
    let ids: Vec<RunId> =
        chains.into_iter().flatten().map(|entry| entry.run_id).filter(|id| seen.insert(*id)).collect();
    let records: Vec<Option<RunRecord>> = futures::stream::iter(ids.into_iter().map(|id| {
        let stores = stores.clone();
        async move { stores.run(&id).await }
    }))
    .buffered(GETS_IN_FLIGHT)
    .try_collect()
    .await?;
    let mut runs: Vec<RunRecord> = records.into_iter().flatten().collect();
    runs.sort_by_key(|run| std::cmp::Reverse((run.created_at, run.id)));
    Ok(runs)
}

/// Direct gets a read keeps in flight at once (one connection pipelines them).
pub const GETS_IN_FLIGHT: usize = 32;

/// How a window range's runs are ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Order {
    /// Newest created first (every listing's order).
    #[default]
    Newest,
    /// Newest window first, then newest created.
    Window,
}

impl Order {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "newest" => Some(Self::Newest),
            "window" => Some(Self::Window),
            _ => None,
        }
    }
}

/// What a listing's window range and order are called where they come from: the API's
/// `window_from`, `window_to`, `sort`, `workflow`, or the CLI's `--window-from`, ….
pub struct RangeNames {
    pub from: &'static str,
    pub to: &'static str,
    pub sort: &'static str,
    pub workflow: &'static str,
}

/// A listing's window range (both days or neither) and order, checked: every problem names
/// its parameter. A range needs a workflow; `window` order needs a range.
pub fn range_and_order(
    from: Option<&str>,
    to: Option<&str>,
    sort: Option<&str>,
    has_workflow: bool,
    names: &RangeNames,
) -> Result<(Option<(NaiveDate, NaiveDate)>, Order), ClientError> {
    let day = |name: &str, text: Option<&str>| -> Result<Option<NaiveDate>, ClientError> {
        text.map(|text| {
            NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .map_err(|_| ClientError::Invalid(format!("{name} must be a day such as 2024-03-01, not `{text}`")))
        })
        .transpose()
    };
    let range = match (day(names.from, from)?, day(names.to, to)?) {
        (None, None) => None,
        (Some(from), Some(to)) if from <= to => Some((from, to)),
        (Some(from), Some(to)) => {
            return Err(ClientError::Invalid(format!("{} {from} is after {} {to}", names.from, names.to)));
        }
        _ => {
            return Err(ClientError::Invalid(format!("{} and {} go together: give both days", names.from, names.to)));
        }
    };
    if range.is_some() && !has_workflow {
        return Err(ClientError::Invalid(format!(
            "{} and {} list a workflow's runs: give {}",
            names.from, names.to, names.workflow
        )));
    }
    let order = match sort {
        None => Order::default(),
        Some(text) => Order::parse(text)
            .ok_or_else(|| ClientError::Invalid(format!("{} must be newest or window, not `{text}`", names.sort)))?,
    };
    if order == Order::Window && range.is_none() {
        return Err(ClientError::Invalid(format!(
            "{}=window orders a window range: give {} and {}",
            names.sort, names.from, names.to
        )));
    }
    Ok((range, order))
}

/// What a window range's cursor starts with (the rest: how many runs came before).
const RANGE_CURSOR_PREFIX: char = 'w';

/// A workflow's runs (`filter.workflow`, required) whose window starts on the local days
/// `from` to `to` (in the zone the window was computed in), that match `filter`, in `order`,
/// `limit` at most from `cursor`. Read from the index's window-day chains: bounded by the
/// range's days, however many runs the history holds.
pub async fn in_window_range(
    js: &jetstream::Context,
    filter: &RunFilter,
    (from, to): (NaiveDate, NaiveDate),
    order: Order,
    limit: usize,
    cursor: Option<&str>,
) -> Result<Page, ClientError> {
    let Some(workflow) = &filter.workflow else {
        return Err(ClientError::Invalid("a window range is a workflow's: give workflow too".into()));
    };
    let skip = match cursor {
        None => 0,
        Some(text) => text
            .strip_prefix(RANGE_CURSOR_PREFIX)
            .and_then(|rest| rest.parse::<usize>().ok())
            .ok_or_else(|| bad_cursor(text))?,
    };
    let mut runs: Vec<RunRecord> = by_local_days(js, workflow, from, to)
        .await?
        .into_iter()
        .filter(|run| matches(run, filter))
        .filter(|run| (from..=to).contains(&run.window.start.date_naive()))
        .collect();
    if order == Order::Window {
        runs.sort_by_key(|run| std::cmp::Reverse((run.window.start, run.created_at, run.id)));
    }
    let limit = limit.clamp(1, PAGE_MAX);
    let next = (runs.len() > skip + limit).then(|| format!("{RANGE_CURSOR_PREFIX}{}", skip + limit));
    Ok(Page { runs: runs.into_iter().skip(skip).take(limit).collect(), next })
}

/// Every workflow with runs in the index, by name (at most [`WORKFLOWS_LISTED_MAX`]): the
/// server counts each workflow's chain, no entry is read.
pub async fn workflows(js: &jetstream::Context) -> Result<Vec<String>, ClientError> {
    let Ok(stream) = js.get_stream(names::INDEX_STREAM).await else { return Ok(Vec::new()) };
    let mut subjects = stream.info_with_subjects(names::index_workflows_filter()).await.context("listing workflows")?;
    let mut workflows = Vec::new();
    while let Some(entry) = subjects.try_next().await.transpose() {
        let (subject, _) = entry.context("listing workflows")?;
        if let Some(name) = subject.strip_prefix(names::INDEX_WORKFLOWS_FILTER_PREFIX) {
            workflows.push(name.to_owned());
        }
        if workflows.len() >= WORKFLOWS_LISTED_MAX {
            break;
        }
    }
    workflows.sort();
    Ok(workflows)
}

/// Workflows [`workflows`] lists at most.
pub const WORKFLOWS_LISTED_MAX: usize = 1_000;

/// A workflow's runs whose window starts on the local days `from` to `to` in any zone
/// (the UTC days one either side are read too: zones are within 14 hours of UTC), newest
/// first. Callers match windows exactly.
pub async fn by_local_days(
    js: &jetstream::Context,
    workflow: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<RunRecord>, ClientError> {
    let before = from.pred_opt().unwrap_or(from);
    let after = to.succ_opt().unwrap_or(to);
    by_window_days(js, workflow, before, after).await
}

/// The runs whose id ends with `suffix` (hex digits, at least
/// [`names::INDEX_SUFFIX_DIGITS`] of them; hyphens are ignored), pending ones included.
pub async fn by_suffix(js: &jetstream::Context, suffix: &str) -> Result<Vec<RunId>, ClientError> {
    let digits: String = suffix.chars().filter(|c| *c != '-').collect::<String>().to_ascii_lowercase();
    if digits.len() < names::INDEX_SUFFIX_DIGITS || !digits.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(ClientError::Invalid(format!(
            "`{suffix}` is not the end of a run id: give at least {} hex digits",
            names::INDEX_SUFFIX_DIGITS
        )));
    }
    let ends = |id: &RunId| id.to_string().replace('-', "").ends_with(&digits);
    let mut ids: Vec<RunId> = match js.get_stream_no_info(names::INDEX_STREAM).await {
        Ok(stream) => entries_of(&stream, &names::index_suffix_subject(&digits))
            .await?
            .into_iter()
            .map(|entry| entry.run_id)
            .filter(ends)
            .collect(),
        Err(_) => Vec::new(),
    };
    // A pending run is not indexed yet.
    ids.extend(pending(js, PENDING_READ_MAX).await?.into_iter().map(|run| run.id).filter(ends));
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Every entry stored on one subject, oldest first.
async fn entries_of(stream: &jetstream::stream::Stream<()>, subject: &str) -> Result<Vec<RunIndexEntry>, ClientError> {
    let mut entries = Vec::new();
    let mut next = 1;
    loop {
        match stream.direct_get_next_for_subject(subject, Some(next)).await {
            Ok(message) => {
                next = message.sequence + 1;
                match decode::<RunIndexEntry>(&message.payload) {
                    Ok(entry) => entries.push(entry),
                    Err(error) => tracing::warn!(%error, subject, "an index entry cannot be read; skipped"),
                }
            }
            Err(error) if error.kind() == DirectGetErrorKind::NotFound => return Ok(entries),
            Err(error) => return Err(error).context(format!("reading the run index ({subject})")),
        }
    }
}

async fn head(stream: &jetstream::stream::Stream<()>, subject: &str) -> Result<Option<u64>, ClientError> {
    match stream.direct_get_last_for_subject(subject).await {
        Ok(message) => Ok(Some(message.sequence)),
        Err(error) if error.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).context(format!("reading the run index ({subject})")),
    }
}

async fn entry(stream: &jetstream::stream::Stream<()>, sequence: u64) -> Result<Option<RunIndexEntry>, ClientError> {
    match stream.direct_get(sequence).await {
        Ok(message) => Ok(Some(decode(&message.payload)?)),
        Err(error) if error.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).context("reading the run index"),
    }
}

/// A submission stored in the submission stream that no coordinator has taken yet: shown
/// as `pending`. Nothing about it is checked yet (intake may still reject it).
#[derive(Clone, Debug, PartialEq)]
pub struct PendingRun {
    pub id: RunId,
    /// The workflow's `name:`; `None` when its YAML cannot be read (intake will reject it).
    pub workflow: Option<String>,
    /// `submitted_at` of the submission, or when JetStream stored it.
    pub submitted_at: DateTime<Utc>,
    /// The window asked for; `None`: the previous day in the workflow's zone, decided by the
    /// coordinator that takes it.
    pub window: Option<Window>,
    pub origin: String,
    /// Its sequence in the submission stream.
    pub sequence: u64,
}

impl PendingRun {
    fn matches(&self, filter: &RunFilter) -> bool {
        filter.state.is_none()
            && filter.workflow.as_ref().is_none_or(|workflow| self.workflow.as_ref() == Some(workflow))
            && filter.origin.as_ref().is_none_or(|origin| &self.origin == origin)
    }
}

/// The newest pending submissions, newest first, `limit` at most (and at most
/// [`PENDING_READ_MAX`]). A submission a coordinator took but has not acknowledged yet is
/// still in the stream: the caller drops those whose run exists ([`pending_runs`] does).
pub async fn pending(js: &jetstream::Context, limit: usize) -> Result<Vec<PendingRun>, ClientError> {
    let messages =
        newest_waiting(js, names::SUBMIT_STREAM, names::SUBMIT_SUBJECT, limit.min(PENDING_READ_MAX), pending_of)
            .await
            .context("reading the submission stream")?;
    Ok(messages)
}

/// The newest messages of a work queue (`subject` may be a wildcard) that `keep` makes
/// something of, newest first, `limit` at most: what waits for a coordinator.
pub(crate) async fn newest_waiting<T>(
    js: &jetstream::Context,
    stream: &str,
    subject: &str,
    limit: usize,
    keep: impl Fn(&jetstream::message::StreamMessage) -> Option<T>,
) -> Result<Vec<T>, async_nats::Error> {
    let Ok(mut stream) = js.get_stream(stream).await else { return Ok(Vec::new()) };
    let state = stream.info().await?.state.clone();
    if state.messages == 0 || limit == 0 {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    // Backwards a window of sequences at a time, each read forwards by "next message at or
    // after" (which skips taken messages server-side), the window doubling: the stream may
    // hold old stragglers far behind its last sequence, and reading one sequence at a time
    // would cost a round trip per message ever taken in between.
    let mut end = state.last_sequence + 1;
    let mut width = limit as u64;
    while found.len() < limit && end > state.first_sequence {
        let start = end.saturating_sub(width).max(state.first_sequence);
        let mut window = Vec::new();
        let mut next = start;
        while next < end {
            match stream.direct_get_next_for_subject(subject, Some(next)).await {
                Ok(message) if message.sequence < end => {
                    next = message.sequence + 1;
                    window.push(message);
                }
                Ok(_) => break,
                Err(error) if error.kind() == DirectGetErrorKind::NotFound => break,
                Err(error) => return Err(error.into()),
            }
        }
        for message in window.into_iter().rev() {
            if found.len() == limit {
                break;
            }
            if let Some(kept) = keep(&message) {
                found.push(kept);
            }
        }
        end = start;
        width = width.saturating_mul(2);
    }
    Ok(found)
}

/// What a stored submission shows; `None` for one that cannot be decoded (intake rejects it).
fn pending_of(message: &jetstream::message::StreamMessage) -> Option<PendingRun> {
    let submission: Submission = match decode(&message.payload) {
        Ok(submission) => submission,
        Err(error) => {
            tracing::debug!(%error, sequence = message.sequence, "a pending submission cannot be read; not listed");
            return None;
        }
    };
    let stored = DateTime::from_timestamp_nanos(i64::try_from(message.time.unix_timestamp_nanos()).unwrap_or(0));
    Some(PendingRun {
        id: submission.run_id,
        workflow: sluice_proto::spec::workflow_name(&submission.workflow),
        submitted_at: submission.submitted_at.unwrap_or(stored),
        window: submission.window,
        origin: submission.origin.unwrap_or_else(|| sluice_proto::messages::ORIGIN_MANUAL.to_owned()),
        sequence: message.sequence,
    })
}

/// The pending runs that match `filter`, newest first, `limit` at most: [`pending`] without
/// the submissions whose run exists already (taken, not yet acknowledged).
pub async fn pending_runs(
    js: &jetstream::Context,
    filter: &RunFilter,
    limit: usize,
) -> Result<Vec<PendingRun>, ClientError> {
    if filter.state.is_some() {
        return Ok(Vec::new());
    }
    let mut runs = Vec::new();
    let stores = Stores::open(js).await?;
    for run in pending(js, PENDING_READ_MAX).await? {
        if runs.len() == limit {
            break;
        }
        if !run.matches(filter) {
            continue;
        }
        if let Some(stores) = &stores
            && stores.run(&run.id).await?.is_some()
        {
            continue;
        }
        runs.push(run);
    }
    Ok(runs)
}

/// The pending submission of run `id`, among the newest [`PENDING_READ_MAX`]; `None` when
/// there is none (or its run exists already).
pub async fn find_pending(js: &jetstream::Context, id: &RunId) -> Result<Option<PendingRun>, ClientError> {
    let Some(found) = pending(js, PENDING_READ_MAX).await?.into_iter().find(|run| run.id == *id) else {
        return Ok(None);
    };
    if let Some(stores) = Stores::open(js).await?
        && stores.run(id).await?.is_some()
    {
        return Ok(None);
    }
    Ok(Some(found))
}

/// One page of `sluice runs`: the pending submissions first (only on a first page, and only
/// when no run state is asked for), then stored runs.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    pub pending: Vec<PendingRun>,
    pub runs: Vec<RunRecord>,
    /// As [`Page::next`]: where the stored runs go on.
    pub next: Option<String>,
}

/// What to list besides a filter of stored runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PendingChoice {
    /// Stored runs, and pending ones first when no run state is asked for.
    #[default]
    Included,
    /// Only the pending ones (`runs --state pending`).
    Only,
}

/// The newest runs that match, pending ones included ([`PendingChoice`]), `limit` in all:
/// pending submissions are newer than the stored runs (a coordinator takes them in order),
/// so they come first; a page they fill leaves the stored runs to `next`.
pub async fn list_with_pending(
    js: &jetstream::Context,
    filter: &RunFilter,
    choice: PendingChoice,
    limit: usize,
    cursor: Option<&str>,
) -> Result<Listing, ClientError> {
    let limit = limit.clamp(1, PAGE_MAX);
    if choice == PendingChoice::Only {
        let pending = pending_runs(js, &RunFilter { state: None, ..filter.clone() }, limit).await?;
        return Ok(Listing { pending, runs: Vec::new(), next: None });
    }
    let pending = match cursor {
        None => pending_runs(js, filter, limit).await?,
        Some(_) => Vec::new(),
    };
    if pending.len() == limit {
        let next = match cursor {
            None => first_cursor(js, filter).await?,
            Some(cursor) => Some(cursor.to_owned()),
        };
        return Ok(Listing { pending, runs: Vec::new(), next });
    }
    let page = list(js, filter, limit - pending.len(), cursor).await?;
    // A submission taken between the two reads may show twice: its run wins.
    let pending = pending.into_iter().filter(|run| !page.runs.iter().any(|stored| stored.id == run.id)).collect();
    Ok(Listing { pending, runs: page.runs, next: page.next })
}

/// The cursor of a first page of stored runs (what [`list`] starts from without one).
async fn first_cursor(js: &jetstream::Context, filter: &RunFilter) -> Result<Option<String>, ClientError> {
    let Ok(stream) = js.get_stream_no_info(names::INDEX_STREAM).await else { return Ok(None) };
    Ok(head(&stream, &chain_of(filter)).await?.map(|sequence| sequence.to_string()))
}

fn parse_cursor(text: &str) -> Result<u64, ClientError> {
    text.parse().map_err(|_| bad_cursor(text))
}

fn bad_cursor(text: &str) -> ClientError {
    ClientError::Invalid(format!(
        "`{}` is not a cursor from an earlier page",
        text.chars().take(40).collect::<String>()
    ))
}
