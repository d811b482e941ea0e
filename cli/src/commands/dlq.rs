//! `sluice dlq list|show|replay|purge`: the dead-letter stream. A dead letter is a job whose
//! attempts are over (or that failed permanently, named an unknown kind, or could not be
//! read), with every attempt's error. Replay queues the job again in a fresh series of
//! attempts, and its run resumes.

use std::process::ExitCode;
use std::time::Duration;

use async_nats::jetstream::{self, stream::DirectGetErrorKind};
use serde_json::json;
use sluice_proto::{ControlAction, DeadLetter, decode, names};

use crate::commands::control::send;
use crate::output::{self, CliError, Format, print_json, table, time};

/// Dead letters read at most by one command.
const LETTERS_MAX: usize = 100_000;
const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);

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

/// One entry of the stream: a dead letter, or raw bytes nobody could read.
struct Letter {
    id: u64,
    subject: String,
    letter: Option<DeadLetter>,
    reason: String,
}

impl Letter {
    fn pool(&self) -> &str {
        self.subject.strip_prefix("sluice.dlq.").unwrap_or(&self.subject)
    }

    fn matches(&self, filters: &Filters) -> bool {
        let workflow_ok = filters
            .workflow
            .as_ref()
            .is_none_or(|workflow| self.letter.as_ref().is_some_and(|letter| &letter.job.workflow == workflow));
        workflow_ok && filters.pool.as_ref().is_none_or(|pool| pool == self.pool())
    }

    fn summary_json(&self) -> serde_json::Value {
        match &self.letter {
            Some(letter) => json!({
                "id": self.id,
                "run_id": letter.job.run_id.to_string(),
                "workflow": letter.job.workflow,
                "job": letter.job.job,
                "pool": letter.job.pool,
                "attempts": letter.attempts.len(),
                "reason": letter.reason,
                "dead_at": time(Some(letter.dead_at)),
            }),
            None => json!({"id": self.id, "pool": self.pool(), "raw": true, "reason": self.reason}),
        }
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
        DlqCommand::Replay { id: Some(id), .. } => replay(&js, Some(id), &Filters::default(), format).await,
        DlqCommand::Replay { id: None, all: true, filters } => replay(&js, None, &filters, format).await,
        DlqCommand::Replay { .. } => Err(CliError::usage("name a dead letter (`sluice dlq replay ID`) or use --all")),
        DlqCommand::Purge(filters) => purge(&js, &filters, format).await,
    }
}

async fn load(js: &jetstream::Context) -> Result<Vec<Letter>, CliError> {
    let Ok(stream) = js.get_stream(names::DLQ_STREAM).await else { return Ok(Vec::new()) };
    let info =
        stream.get_info().await.map_err(|error| CliError::nats(format!("reading the dead-letter stream: {error}")))?;
    if info.state.messages == 0 {
        return Ok(Vec::new());
    }
    let first = info.state.first_sequence.max(info.state.last_sequence.saturating_sub(LETTERS_MAX as u64 - 1));
    let mut letters = Vec::new();
    for id in first..=info.state.last_sequence {
        match stream.direct_get(id).await {
            Ok(message) => {
                let reason_header = message.headers.get(names::HEADER_REASON).map(|value| value.as_str().to_owned());
                let letter = decode::<DeadLetter>(&message.payload).ok();
                let reason = letter
                    .as_ref()
                    .map(|letter| letter.reason.clone())
                    .or(reason_header)
                    .unwrap_or_else(|| "unreadable dead letter".into());
                letters.push(Letter { id, subject: message.subject.to_string(), letter, reason });
            }
            Err(error) if error.kind() == DirectGetErrorKind::NotFound => {}
            Err(error) => return Err(CliError::nats(format!("reading dead letter {id}: {error}"))),
        }
    }
    Ok(letters)
}

async fn list(js: &jetstream::Context, filters: &Filters, format: Format) -> Result<ExitCode, CliError> {
    let letters: Vec<Letter> = load(js).await?.into_iter().filter(|letter| letter.matches(filters)).collect();
    match format {
        Format::Json => {
            print_json(&json!({"dead_letters": letters.iter().map(Letter::summary_json).collect::<Vec<_>>()}))
        }
        Format::Human if letters.is_empty() => println!("no dead letters"),
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
                        letter.attempts.len().to_string(),
                        entry.reason.lines().next().unwrap_or_default().to_owned(),
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
            println!("{}", table(&["ID", "RUN", "WORKFLOW", "JOB", "POOL", "ATTEMPTS", "REASON"], &rows));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(js: &jetstream::Context, id: u64, format: Format) -> Result<ExitCode, CliError> {
    let letters = load(js).await?;
    let entry = letters
        .iter()
        .find(|letter| letter.id == id)
        .ok_or_else(|| CliError::usage(format!("no dead letter {id} (see `sluice dlq list`)")))?;
    let Some(letter) = &entry.letter else {
        let value = json!({"id": id, "subject": entry.subject, "raw": true, "reason": entry.reason});
        match format {
            Format::Json => print_json(&value),
            Format::Human => {
                println!("dead letter {id} on {} (raw, unreadable)\nreason: {}", entry.subject, entry.reason)
            }
        }
        return Ok(ExitCode::SUCCESS);
    };
    let attempts: Vec<serde_json::Value> = letter
        .attempts
        .iter()
        .map(|attempt| json!({"attempt": attempt.attempt, "started_at": time(Some(attempt.started_at)), "finished_at": time(attempt.finished_at), "error": attempt.error, "worker": attempt.worker}))
        .collect();
    let job = &letter.job;
    let value = json!({
        "id": id,
        "subject": entry.subject,
        "reason": letter.reason,
        "dead_at": time(Some(letter.dead_at)),
        "headers": {
            names::HEADER_MSG_ID: names::dead_letter_id(&job.run_id, &job.job, job.generation),
            names::HEADER_RUN_ID: job.run_id.to_string(),
            names::HEADER_JOB: job.job,
        },
        "job": {
            "run_id": job.run_id.to_string(), "workflow": job.workflow, "job": job.job, "kind": job.kind,
            "command": job.command, "config": job.config, "pool": job.pool,
            "window": {"start": job.window.start_rfc3339(), "end": job.window.end_rfc3339()},
            "params": job.params, "generation": job.generation, "attempt_offset": job.attempt_offset,
            "max_attempts": job.retry.max_attempts, "timeout_ms": job.timeout_ms,
        },
        "attempts": attempts,
    });
    match format {
        Format::Json => print_json(&value),
        Format::Human => {
            println!(
                "dead letter {id}\nrun       {}\nworkflow  {}\njob       {} (kind {}, pool {})\nreason    {}\n",
                job.run_id, job.workflow, job.job, job.kind, job.pool, letter.reason
            );
            for attempt in &letter.attempts {
                println!(
                    "attempt {} on {} at {}: {}",
                    attempt.attempt,
                    attempt.worker,
                    time(Some(attempt.started_at)).as_str().unwrap_or_default(),
                    attempt.error.as_deref().unwrap_or("-")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn replay(
    js: &jetstream::Context,
    id: Option<u64>,
    filters: &Filters,
    format: Format,
) -> Result<ExitCode, CliError> {
    let letters = load(js).await?;
    let chosen: Vec<&Letter> = match id {
        Some(id) => vec![
            letters
                .iter()
                .find(|letter| letter.id == id)
                .ok_or_else(|| CliError::usage(format!("no dead letter {id} (see `sluice dlq list`)")))?,
        ],
        None => letters.iter().filter(|letter| letter.matches(filters)).collect(),
    };
    let mut replayed = Vec::new();
    for entry in chosen {
        let Some(letter) = &entry.letter else {
            if id.is_some() {
                return Err(CliError::usage(format!(
                    "dead letter {} could not be read, so it cannot be replayed: {}",
                    entry.id, entry.reason
                )));
            }
            continue;
        };
        send(js, letter.job.run_id, ControlAction::Retry, Some(letter.job.job.clone()), Some(entry.id)).await?;
        replayed.push((entry.id, letter));
    }
    // The coordinator removes each dead letter once its job is queued again.
    let stream = js.get_stream(names::DLQ_STREAM).await.map_err(|error| CliError::nats(error.to_string()))?;
    let deadline = tokio::time::Instant::now() + REPLAY_TIMEOUT;
    for (id, _) in &replayed {
        loop {
            match stream.direct_get(*id).await {
                Err(error) if error.kind() == DirectGetErrorKind::NotFound => break,
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(CliError::failed(format!(
                        "dead letter {id} is still there after {}s: is a coordinator running? (its log says why a replay was refused)",
                        REPLAY_TIMEOUT.as_secs()
                    )));
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    match format {
        Format::Json => print_json(
            &json!({"replayed": replayed.iter().map(|(id, letter)| json!({"id": id, "run_id": letter.job.run_id.to_string(), "job": letter.job.job})).collect::<Vec<_>>()}),
        ),
        Format::Human => {
            for (id, letter) in &replayed {
                println!(
                    "replayed dead letter {id}: job {} of run {} is queued again",
                    letter.job.job, letter.job.run_id
                );
            }
            if replayed.is_empty() {
                println!("no dead letters to replay");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn purge(js: &jetstream::Context, filters: &Filters, format: Format) -> Result<ExitCode, CliError> {
    let letters = load(js).await?;
    let Ok(stream) = js.get_stream(names::DLQ_STREAM).await else { return Ok(ExitCode::SUCCESS) };
    let mut purged = 0usize;
    for letter in letters.iter().filter(|letter| letter.matches(filters)) {
        stream
            .delete_message(letter.id)
            .await
            .map_err(|error| CliError::nats(format!("deleting dead letter {}: {error}", letter.id)))?;
        purged += 1;
    }
    match format {
        Format::Json => print_json(&json!({"purged": purged})),
        Format::Human => println!("purged {purged} dead letters"),
    }
    Ok(ExitCode::SUCCESS)
}
