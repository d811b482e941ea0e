//! `sluice dlq list|show|replay|purge`: the dead-letter stream. A dead letter is a job whose
//! attempts are over (or that failed permanently, named an unknown kind, or could not be
//! read), with every attempt's error. Replay queues the job again in a fresh series of
//! attempts, and its run resumes.

use std::process::ExitCode;

use async_nats::jetstream;
use serde_json::json;
use sluice_client::dead_letters::{self, DeadLetterEntry as Letter};
use sluice_proto::{ControlAction, ControlRequest, Outcome};

use crate::output::{self, CliError, Format, applied, ask, print_json, table, time};

#[derive(clap::Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first.
    List(Filters),
    /// Show one dead letter: the job, its headers and every attempt.
    Show { id: u64 },
    /// Queue dead-lettered jobs again (fresh attempts); their runs resume.
    Replay {
        /// The dead letter to replay (ID from `dlq list`).
        id: Option<u64>,
        /// Replay every dead letter that matches the filters.
        #[arg(long, conflicts_with = "id")]
        all: bool,
        #[command(flatten)]
        filters: Filters,
        /// Take the definitions of the jobs that run again from this workflow file, as
        /// `retry --spec` does (`--workflow` stays a filter).
        #[arg(long, value_name = "FILE")]
        spec: Option<std::path::PathBuf>,
    },
    /// Delete dead letters that match the filters (all of them without filters).
    Purge(Filters),
}

#[derive(clap::Args, Clone, Default)]
pub struct Filters {
    /// Only dead letters of this workflow.
    #[arg(long)]
    workflow: Option<String>,
    /// Only dead letters of this pool.
    #[arg(long)]
    pool: Option<String>,
}

impl Filters {
    fn matches(&self, letter: &Letter) -> bool {
        letter.matches(self.workflow.as_deref(), self.pool.as_deref())
    }
}

pub async fn run(url: &str, command: DlqCommand, format: Format) -> Result<ExitCode, CliError> {
    let client = output::connect(url).await?;
    let js = jetstream::new(client);
    match command {
        DlqCommand::List(filters) => list(&js, &filters, format).await,
        DlqCommand::Show { id } => show(&js, id, format).await,
        DlqCommand::Replay { id: Some(_), filters, .. } if filters.workflow.is_some() || filters.pool.is_some() => {
            Err(CliError::usage("--workflow and --pool go with --all, not with a dead letter ID"))
        }
        DlqCommand::Replay { id: Some(id), spec, .. } => {
            replay(&js, Some(id), &Filters::default(), spec_of(spec.as_deref())?, format).await
        }
        DlqCommand::Replay { id: None, all: true, filters, spec } => {
            replay(&js, None, &filters, spec_of(spec.as_deref())?, format).await
        }
        DlqCommand::Replay { .. } => Err(CliError::usage("name a dead letter (`sluice dlq replay ID`) or use --all")),
        DlqCommand::Purge(filters) => purge(&js, &filters, format).await,
    }
}

async fn load(js: &jetstream::Context) -> Result<Vec<Letter>, CliError> {
    Ok(dead_letters::load(js).await?)
}

/// One dead letter, or exit 2 when there is none with that id.
async fn one(js: &jetstream::Context, id: u64) -> Result<Letter, CliError> {
    dead_letters::one(js, id)
        .await?
        .ok_or_else(|| CliError::usage(format!("no dead letter {id} (see `sluice dlq list`)")))
}

async fn list(js: &jetstream::Context, filters: &Filters, format: Format) -> Result<ExitCode, CliError> {
    let letters: Vec<Letter> = load(js).await?.into_iter().filter(|letter| filters.matches(letter)).collect();
    match format {
        Format::Json => print_json(
            &json!({"dead_letters": letters.iter().map(sluice_client::json::dead_letter_row).collect::<Vec<_>>()}),
        ),
        Format::Human if letters.is_empty() => outln!("no dead letters"),
        Format::Human => {
            let rows: Vec<Vec<String>> = letters
                .iter()
                .map(|entry| match &entry.letter {
                    Some(letter) => vec![
                        entry.id.to_string(),
                        letter.job.run_id.to_string(),
                        letter.job.workflow.clone(),
                        letter.job.job.clone(),
                        letter.job.pool.clone(),
                        (letter.attempts.len() + letter.attempts_omitted as usize).to_string(),
                        crate::output::error_line(&entry.reason),
                    ],
                    None => vec![
                        entry.id.to_string(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        entry.pool().to_owned(),
                        "-".into(),
                        entry.reason.clone(),
                    ],
                })
                .collect();
            outln!("{}", table(&["ID", "RUN", "WORKFLOW", "JOB", "POOL", "ATTEMPTS", "REASON"], &rows))
        }
    }?;
    Ok(ExitCode::SUCCESS)
}

async fn show(js: &jetstream::Context, id: u64, format: Format) -> Result<ExitCode, CliError> {
    let entry = one(js, id).await?;
    let value = sluice_client::json::dead_letter_json(&entry);
    let Some(letter) = &entry.letter else {
        match format {
            Format::Json => print_json(&value),
            Format::Human => {
                outln!("dead letter {id} on {} (raw, unreadable)\nreason: {}", entry.subject, entry.reason)
            }
        }?;
        return Ok(ExitCode::SUCCESS);
    };
    let job = &letter.job;
    match format {
        Format::Json => print_json(&value)?,
        Format::Human => {
            outln!(
                "dead letter {id}\nrun       {}\nworkflow  {}\njob       {} (kind {}, pool {})\nreason    {}\n",
                job.run_id,
                job.workflow,
                job.job,
                job.kind,
                job.pool,
                letter.reason
            )?;
            for attempt in &letter.attempts {
                outln!(
                    "attempt {} on {} at {}: {}",
                    attempt.attempt,
                    attempt.worker,
                    time(Some(attempt.started_at)).as_str().unwrap_or_default(),
                    attempt.error.as_deref().unwrap_or("-")
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The YAML of a `--spec` file, checked as `validate` would.
fn spec_of(file: Option<&std::path::Path>) -> Result<Option<String>, CliError> {
    Ok(file.map(super::read_workflow).transpose()?.map(|(_, yaml)| yaml))
}

async fn replay(
    js: &jetstream::Context,
    id: Option<u64>,
    filters: &Filters,
    spec: Option<String>,
    format: Format,
) -> Result<ExitCode, CliError> {
    let chosen: Vec<Letter> = match id {
        Some(id) => vec![one(js, id).await?],
        None => load(js).await?.into_iter().filter(|letter| filters.matches(letter)).collect(),
    };
    let mut answers = Vec::new();
    for entry in &chosen {
        let Some(letter) = &entry.letter else {
            if id.is_some() {
                return Err(CliError::usage(format!(
                    "dead letter {} could not be read, so it cannot be replayed: {}",
                    entry.id, entry.reason
                )));
            }
            continue;
        };
        let Some(request) = entry.replay_request(spec.clone()) else { continue };
        let outcome = ask(js, request).await?;
        if id.is_some() {
            applied(outcome.clone())?;
        }
        answers.push((entry.id, letter, outcome));
    }
    let refused = answers.iter().filter(|(_, _, outcome)| outcome.outcome == Outcome::Refused).count();
    match format {
        Format::Json => print_json(&json!({
            "replayed": answers.iter().filter(|(_, _, outcome)| outcome.outcome == Outcome::Applied)
                .map(|(id, letter, _)| json!({"id": id, "run_id": letter.job.run_id.to_string(), "job": letter.job.job}))
                .collect::<Vec<_>>(),
            "refused": answers.iter().filter(|(_, _, outcome)| outcome.outcome == Outcome::Refused)
                .map(|(id, _, outcome)| json!({"id": id, "kind": outcome.kind.map(|kind| kind.as_str()), "reason": outcome.reason}))
                .collect::<Vec<_>>(),
        }))?,
        Format::Human => {
            for (id, letter, outcome) in &answers {
                match outcome.outcome {
                    Outcome::Applied => outln!(
                        "replayed dead letter {id}: job {} of run {} is queued again",
                        letter.job.job,
                        letter.job.run_id
                    ),
                    Outcome::Refused => outln!("dead letter {id} not replayed: {}", outcome.reason),
                }?;
            }
            if answers.is_empty() {
                outln!("no dead letters to replay")?;
            }
        }
    }
    Ok(if refused > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

async fn purge(js: &jetstream::Context, filters: &Filters, format: Format) -> Result<ExitCode, CliError> {
    let action = ControlAction::DlqPurge { workflow: filters.workflow.clone(), pool: filters.pool.clone() };
    let outcome = applied(ask(js, ControlRequest::new(action, None, "")).await?)?;
    match format {
        Format::Json => print_json(&json!({"purged": outcome.changed_total})),
        Format::Human => outln!("purged {} dead letters", outcome.changed_total),
    }?;
    Ok(ExitCode::SUCCESS)
}
