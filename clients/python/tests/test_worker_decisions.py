"""The worker's pure decisions: redelivery plans, kinds, server versions, error texts."""

from __future__ import annotations

from datetime import UTC, datetime

from paths import GOLDEN

from sluice._wire import AttemptRecord, EventKind, JobEvent, JobMessage, JobRecord, JobState, WorkerRecord
from sluice.worker import (
    ERROR_TEXT_MAX_BYTES,
    check_kinds,
    check_server_version,
    error_text,
    fetch_count,
    plan_redelivery,
)

NOW = datetime(2024, 3, 2, tzinfo=UTC)


def job(generation: int = 0, attempt_offset: int = 0) -> JobMessage:
    message = JobMessage.decode((GOLDEN / "job_message.msgpack").read_bytes())
    message.generation, message.attempt_offset = generation, attempt_offset
    return message


def event(
    message: JobMessage, attempt: int, kind: EventKind, retry: bool = False, worker: str = "w1"
) -> JobEvent:
    return JobEvent(
        schema_version=2,
        run_id=message.run_id,
        job=message.job,
        attempt=attempt,
        generation=message.generation,
        kind=kind,
        at=NOW,
        worker=worker,
        retry_at=NOW if retry else None,
    )


def record(message: JobMessage, state: JobState, attempts: int, open_attempt: bool = False) -> JobRecord:
    history = [
        AttemptRecord(
            attempt=attempts, started_at=NOW, finished_at=None if open_attempt else NOW, worker="w2"
        )
    ]
    return JobRecord(
        schema_version=2,
        run_id=message.run_id,
        name=message.job,
        state=state,
        attempts=attempts,
        generation=message.generation,
        attempt_history=history if attempts else [],
    )


def test_a_redelivery_with_nothing_on_record_is_the_first_attempt_again() -> None:
    plan = plan_redelivery(job(), None, None)
    assert (plan.attempt, plan.open) == (1, None)
    assert plan_redelivery(job(attempt_offset=3), None, None).attempt == 4


def test_a_redelivery_after_a_started_attempt_is_the_next_attempt_and_names_the_open_one() -> None:
    message = job()
    plan = plan_redelivery(
        message, event(message, 1, EventKind.STARTED), record(message, JobState.RUNNING, 1, True)
    )
    assert (plan.attempt, plan.open) == (2, "w1")
    plan = plan_redelivery(message, None, record(message, JobState.RUNNING, 1, open_attempt=True))
    assert (plan.attempt, plan.open) == (2, "w2")


def test_a_redelivery_of_an_ended_attempt_runs_nothing() -> None:
    message = job()
    assert (
        plan_redelivery(message, event(message, 1, EventKind.SUCCEEDED), None).why
        == "attempt 1 already succeeded"
    )
    assert plan_redelivery(message, event(message, 2, EventKind.FAILED), None).attempt is None
    retrying = plan_redelivery(message, event(message, 2, EventKind.FAILED, retry=True), None)
    assert retrying.attempt == 3
    assert (
        plan_redelivery(message, None, record(message, JobState.COMPLETED, 1)).why
        == "the job is already completed"
    )
    newer = plan_redelivery(message, None, record(job(generation=1), JobState.QUEUED, 0))
    assert newer.why is not None and "dispatched again (generation 1)" in newer.why


def worker(worker_id: str, pool: str, kinds: list[str]) -> WorkerRecord:
    return WorkerRecord(
        schema_version=2, worker_id=worker_id, pool=pool, kinds=kinds, version="x", started_at=NOW
    )


def test_a_worker_joins_only_a_pool_of_the_same_kinds() -> None:
    assert check_kinds("py", "me", ["a", "b"], []) is None
    assert (
        check_kinds("py", "me", ["a", "b"], [worker("w1", "py", ["b", "a"]), worker("me", "py", ["z"])])
        is None
    )
    problem = check_kinds("py", "me", ["a"], [worker("w1", "py", ["exec", "noop"])])
    assert problem is not None and "served by workers with kinds [exec, noop]; this worker has [a]" in problem


def test_the_server_version_check() -> None:
    assert check_server_version("2.15.1") is None and check_server_version("v2.14.0") is None
    assert check_server_version("3.0.0-beta.1") is None
    old = check_server_version("2.9.10")
    assert old is not None and "2.9.10 is too old" in old and "2.14.0" in old
    assert check_server_version("garbage") is not None


def test_errors_keep_their_tail_and_fetches_follow_free_slots() -> None:
    long = "x" * ERROR_TEXT_MAX_BYTES + "the end"
    assert error_text(long).endswith("the end") and error_text(long).startswith("…")
    assert error_text("short") == "short"
    assert (fetch_count(3, 0, 12, False, False), fetch_count(0, 0, 12, False, False)) == (3, 0)
    assert fetch_count(3, 0, 12, True, True) == 0, "none while draining"


def test_short_jobs_are_fetched_ahead_in_batches_and_long_ones_one_per_free_slot() -> None:
    # Short jobs: the free slots and `prefetch` more, refilled once half is used up.
    assert fetch_count(4, 0, 12, True, False) == 16
    assert fetch_count(0, 7, 12, True, False) == 0, "more than half still held"
    assert fetch_count(1, 6, 12, True, False) == 7
    # Long jobs: one per free slot, what is held counted against them.
    assert fetch_count(2, 1, 12, False, False) == 1
    assert fetch_count(2, 0, 0, True, False) == 2, "prefetch 0 holds nothing"
