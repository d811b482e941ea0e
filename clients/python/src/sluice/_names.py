"""Subject, stream, bucket and header names: the SDK's copy of proto/src/names.rs, checked
against it through proto/tests/conformance/names.json by both sides' tests."""

from __future__ import annotations

SUBMIT_STREAM = "SLUICE_SUBMIT"
SUBMIT_SUBJECT = "sluice.submit"
JOBS_STREAM = "SLUICE_JOBS"
EVENTS_STREAM = "SLUICE_EVENTS"
REJECTED_STREAM = "SLUICE_REJECTED"
DLQ_STREAM = "SLUICE_DLQ"
CONTROL_STREAM = "SLUICE_CONTROL"
SPAWNS_STREAM = "SLUICE_SPAWNS"
LOGS_STREAM = "SLUICE_LOGS"
INDEX_STREAM = "SLUICE_INDEX"
INDEX_ALL_SUBJECT = "sluice.index.all"
RUNS_BUCKET = "sluice-runs"
JOBS_BUCKET = "sluice-jobs"
IDEMPOTENCY_BUCKET = "sluice-idempotency"
ACTIVE_BUCKET = "sluice-active"
POOLS_BUCKET = "sluice-pools"
WORKERS_BUCKET = "sluice-workers"
OUTCOMES_BUCKET = "sluice-outcomes"
SPECS_BUCKET = "sluice-specs"
HEADER_MSG_ID = "Nats-Msg-Id"
HEADER_TRACEPARENT = "traceparent"
HEADER_TRACESTATE = "tracestate"
HEADER_RUN_ID = "Sluice-Run-Id"
HEADER_JOB = "Sluice-Job"
HEADER_GENERATION = "Sluice-Generation"
HEADER_ATTEMPT_OFFSET = "Sluice-Attempt-Offset"
HEADER_REASON = "Sluice-Reason"
HEADER_ORIGINAL_SUBJECT = "Sluice-Original-Subject"
HEADER_REQUEST_ID = "Sluice-Request-Id"
# Set by the server on a KV delete or purge marker (absent on a put).
HEADER_KV_OPERATION = "KV-Operation"
ANONYMOUS_IDENTITY = "anonymous"
UNKNOWN_TOKEN = "_"
COORDINATOR_POOL_TOKEN = "_coordinator"
#: The pool every Sluice has; written last at set-up, so its record means all is in place.
DEFAULT_POOL = "default"


def pool_filter(pool: str) -> str:
    return f"sluice.jobs.{pool}.>"


def pool_consumer(pool: str) -> str:
    return f"pool-{pool}"


def event_subject(pool: str, run_id: str, job: str) -> str:
    return f"sluice.events.{pool}.{run_id}.{job}"


def spawn_subject(pool: str, run_id: str, job: str, generation: int, attempt: int) -> str:
    return f"sluice.spawns.{pool}.{run_id}.{generation}.{attempt}.{job}"


def log_subject(pool: str, run_id: str, attempt: int, job: str) -> str:
    return f"sluice.logs.{pool}.{run_id}.{attempt}.{job}"


def run_logs_filter(run_id: str) -> str:
    return f"sluice.logs.*.{run_id}.>"


def rejected_subject(run_id: str | None) -> str:
    return f"sluice.rejected.{run_id or 'unknown'}"


def dlq_subject(pool: str, run_id: str | None, job: str | None) -> str:
    return f"sluice.dlq.{pool}.{run_id or UNKNOWN_TOKEN}.{job or UNKNOWN_TOKEN}"


def control_subject(identity: str, run_id: str | None) -> str:
    return f"sluice.control.{identity}.{run_id or '_'}"


def stop_subject(run_id: str) -> str:
    return f"sluice.stop.{run_id}"


STOP_SUBJECTS = "sluice.stop.>"
DLQ_SUBJECTS = "sluice.dlq.>"


def index_workflow_subject(workflow: str) -> str:
    return f"sluice.index.workflow.{workflow}"


def index_origin_subject(origin: str) -> str:
    return f"sluice.index.origin.{origin}"


def index_state_subject(state: str) -> str:
    return f"sluice.index.state.{state}"


def dead_letter_id(run_id: str, job: str, generation: int) -> str:
    return f"dlq.{run_id}.{job}.{generation}"


def job_key(run_id: str, job: str) -> str:
    return f"{run_id}.{job}"


def kv_subject(bucket: str, key: str) -> str:
    return f"$KV.{bucket}.{key}"


def kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


def worker_key(pool: str, worker_id: str) -> str:
    return f"{pool}.{worker_id}"


def worker_token(worker_id: str) -> str:
    """A worker id as one subject or key token: every character other than
    `[A-Za-z0-9_-]` becomes `_`; an empty id is `_`."""
    token = "".join(c if (c.isascii() and c.isalnum()) or c in "-_" else "_" for c in worker_id)
    return token or "_"


def event_batch_subject(pool: str, worker_id: str) -> str:
    """Where a worker publishes its event batches (and what a redelivery's check reads)."""
    return f"sluice.events.{pool}.batch.{worker_token(worker_id)}"


def event_id(run_id: str, job: str, attempt: int, generation: int, kind: str) -> str:
    return f"{run_id}.{job}.{attempt}.{generation}.{kind}"


def start_event_id(run_id: str, job: str, attempt: int, generation: int, worker: str) -> str:
    return f"{run_id}.{job}.{attempt}.{generation}.started.{worker}"


def idempotency_kv_key(key: str) -> str:
    return "k-" + key.encode().hex()


def dlq_run_filter(run_id: str) -> str:
    return f"sluice.dlq.*.{run_id}.>"


def run_jobs_filter(run_id: str) -> str:
    return f"$KV.{JOBS_BUCKET}.{run_id}.>"
