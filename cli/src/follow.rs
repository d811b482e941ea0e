//! Following runs until they finish: prints each job's state changes as they happen.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream;
use sluice_proto::{JobState, Rejection, RunId};

use crate::output::{CliError, Format};
use sluice_client::{Lookup, RunView, lookup};

/// How often the stored state is read while following.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Polls before saying that no coordinator has taken the submission yet.
const QUIET_POLLS: u32 = 8;
/// Failed reads in a row before following gives up.
const LOOKUP_RETRIES: u32 = 5;

/// How a followed run ended.
pub enum Finished {
    Run(Box<RunView>),
    Rejected(RunId, Rejection),
}

impl Finished {
    pub fn succeeded(&self) -> bool {
        matches!(self, Self::Run(view) if view.record.state == sluice_proto::RunState::Succeeded)
    }
}

/// Follows one run to its end, as `submit --wait` does: JSON prints the final status; exit
/// 0 if it succeeded, 1 if not; a rejected run is an error that says why.
pub async fn follow_one(
    js: &jetstream::Context,
    id: RunId,
    format: Format,
) -> Result<std::process::ExitCode, CliError> {
    let finished = follow(js, &[id], format).await?;
    let Some(result) = finished.into_iter().next() else {
        return Err(CliError::failed("the run could not be followed"));
    };
    match &result {
        Finished::Rejected(id, rejection) => {
            return Err(CliError::failed(format!("run {id} was rejected: {}", rejection.reason)));
        }
        Finished::Run(view) if format == Format::Json => {
            crate::output::print_json(&crate::commands::status::view_json(view))?
        }
        Finished::Run(_) => {}
    }
    Ok(if result.succeeded() { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::from(1) })
}

/// Waits until every run in `ids` is finished (or rejected), printing progress in human
/// format. Results come back in the order of `ids`.
pub async fn follow(js: &jetstream::Context, ids: &[RunId], format: Format) -> Result<Vec<Finished>, CliError> {
    let label_runs = ids.len() > 1;
    let mut seen: HashMap<(RunId, String), (JobState, u32)> = HashMap::new();
    let mut finished: HashMap<RunId, Finished> = HashMap::new();
    let mut waiting_said = false;
    let mut polls = 0u32;
    let mut failures = 0u32;
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    while finished.len() < ids.len() {
        ticker.tick().await;
        polls += 1;
        for id in ids {
            if finished.contains_key(id) {
                continue;
            }
            let found = match lookup(js, id).await {
                Ok(found) => {
                    failures = 0;
                    found
                }
                // A read that failed once (a stalled consumer, a reconnect) is tried again.
                Err(error) if failures < LOOKUP_RETRIES => {
                    failures += 1;
                    tracing::warn!(%error, "reading the run failed; trying again");
                    continue;
                }
                Err(error) => return Err(error.into()),
            };
            match found {
                Lookup::Unknown => {
                    if !waiting_said && polls > QUIET_POLLS && format == Format::Human {
                        crate::output::errln("waiting for a coordinator to accept the submission…");
                        waiting_said = true;
                    }
                }
                Lookup::Rejected(rejection) => {
                    finished.insert(*id, Finished::Rejected(*id, rejection));
                }
                Lookup::Found(view) => {
                    if format == Format::Human {
                        print_changes(&view, &mut seen, label_runs)?;
                    }
                    if view.record.state.is_terminal() {
                        if format == Format::Human {
                            let prefix = if label_runs { format!("{} ", view.record.workflow) } else { String::new() };
                            outln!("{prefix}run {} {}", view.record.id, view.record.state.as_str())?;
                        }
                        finished.insert(*id, Finished::Run(view));
                    }
                }
            }
        }
    }
    Ok(ids.iter().filter_map(|id| finished.remove(id)).collect())
}

fn print_changes(
    view: &RunView,
    seen: &mut HashMap<(RunId, String), (JobState, u32)>,
    label_runs: bool,
) -> Result<(), CliError> {
    for job in &view.jobs {
        let key = (view.record.id, job.name.clone());
        let now = (job.state, job.attempts);
        if seen.get(&key) == Some(&now) {
            continue;
        }
        let first_sight_of_blocked = !seen.contains_key(&key) && job.state == JobState::Blocked;
        seen.insert(key, now);
        if first_sight_of_blocked {
            continue;
        }
        let clock = chrono::Local::now().format("%H:%M:%S");
        let prefix = if label_runs { format!("{}  ", view.record.workflow) } else { String::new() };
        let attempt = if job.attempts > 0 { format!("  attempt {}", job.attempts) } else { String::new() };
        let error = match (job.state, &job.error) {
            (JobState::Failed | JobState::Retrying | JobState::Skipped, Some(error)) => {
                format!("  {}", crate::output::error_line(error))
            }
            _ => String::new(),
        };
        outln!("{clock}  {prefix}{:<24} {:<10}{attempt}{error}", job.name, job.state.as_str())?;
    }
    Ok(())
}
