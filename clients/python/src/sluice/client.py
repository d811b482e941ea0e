"""`sluice.Client`: submit workflows and follow, list, cancel and retry runs, read dead letters
and logs, with the meanings of the `sluice` CLI. Like every client it publishes only
submissions and control requests, and reads the rest (decision 1): the coordinator is the one
writer. `AsyncClient` is the same for asyncio code; `Client` runs it on a private event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from nats.aio.client import Client as NatsClient
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import DeliverPolicy
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError

from . import _names as names
from ._wire import (
    SCHEMA_VERSION,
    ControlAction,
    ControlOutcome,
    ControlRequest,
    DeadLetter,
    JobRecord,
    LogBatch,
    LogLine,
    Outcome,
    Rejection,
    RunIndexEntry,
    RunRecord,
    RunState,
    Submission,
    Window,
    utc_now,
)
from .connection import ConnectionOptions
from .context import uuid7
from .errors import ConfigError, NoAnswer, NotFound, Refused, Rejected, SluiceError, WireError
from .windows import new_window, parse_window, parse_zone

#: The largest workflow YAML (bytes; proto limits::WORKFLOW_YAML_MAX_BYTES).
WORKFLOW_YAML_MAX_BYTES = 512 * 1024
#: The longest idempotency key (bytes).
IDEMPOTENCY_KEY_MAX_BYTES = 128
#: How long a submission waits to be accepted or rejected, and a control request for its
#: answer, by default (seconds; the CLI waits 30 s for answers).
ANSWER_TIMEOUT_S = 30.0
#: How long a call waits for a coordinator to have set Sluice up (seconds).
SETUP_WAIT_S = 10.0
#: How often a wait looks again (seconds).
POLL_S = 0.1
#: How often a submit, and a wait, look for a rejection while the run has no record (s).
ACCEPT_REJECTION_CHECK_S = 0.1
WAIT_REJECTION_CHECK_S = 1.0
#: Most runs one `runs` call returns.
RUNS_PAGE_MAX = 1000
#: Most index entries one `runs` call reads before it returns what it found.
RUNS_SCAN_MAX = 10_000
#: Most dead letters `dlq` reads (the newest).
DEAD_LETTERS_READ_MAX = 100_000
#: Most log batches `logs` reads.
LOG_BATCHES_READ_MAX = 100_000

_ZONE_LINE = re.compile(r"^timezone:\s*['\"]?([A-Za-z0-9_+\-/]+)['\"]?\s*(?:#.*)?$", re.MULTILINE)


@dataclasses.dataclass
class RunStatus:
    """What `sluice status` shows: the run and every job's record (children included), by path."""

    run: RunRecord
    jobs: dict[str, JobRecord]

    @property
    def state(self) -> RunState:
        return self.run.state


@dataclasses.dataclass
class DeadLetterEntry:
    """One entry of the dead-letter stream: its id (`sluice dlq replay ID`), and the letter, or
    the reason of a job message nobody could read."""

    id: int
    subject: str
    letter: DeadLetter | None
    reason: str


@dataclasses.dataclass
class LogEntry:
    job: str
    attempt: int
    line: LogLine


T = TypeVar("T")


def _workflow_text(workflow: str | os.PathLike[str]) -> str:
    if isinstance(workflow, os.PathLike) or ("\n" not in workflow and Path(workflow).is_file()):
        path = Path(workflow)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise ConfigError(f"{path}: {error.strerror or error}") from None
    else:
        data = workflow.encode()
    if len(data) > WORKFLOW_YAML_MAX_BYTES:
        raise ConfigError(f"the workflow is {len(data)} bytes; the limit is {WORKFLOW_YAML_MAX_BYTES}")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise ConfigError("the workflow is not UTF-8 text") from None


def workflow_zone(yaml_text: str) -> str:
    """The workflow's top-level `timezone:` (UTC without one). The SDK parses no YAML: the
    coordinator validates the workflow; this one key says where a window text is computed."""
    match = _ZONE_LINE.search(yaml_text)
    return match.group(1) if match else "UTC"


class AsyncClient:
    """The client for asyncio code: `async with AsyncClient(url) as client: ...`."""

    def __init__(
        self,
        url: str | None = None,
        *,
        user: str | None = None,
        password_file: str | None = None,
        token_file: str | None = None,
        nkey: str | None = None,
        creds: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        inbox_prefix: str | None = None,
    ) -> None:
        self.options = ConnectionOptions.resolve(
            url=url,
            user=user,
            password_file=password_file,
            token_file=token_file,
            nkey=nkey,
            creds=creds,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            inbox_prefix=inbox_prefix,
        )
        self.options.check()
        self._nc: NatsClient | None = None

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        if self._nc is None:
            self._nc = await self.options.connect("sluice-py client")

    async def close(self) -> None:
        if self._nc is not None:
            await self._nc.close()
            self._nc = None

    @property
    def _js(self) -> Any:
        if self._nc is None:
            raise SluiceError("the client is not connected (use `async with` or connect())")
        return self._nc.jetstream()

    async def _kv(self, bucket: str) -> Any:
        try:
            return await self._js.key_value(bucket)
        except (BucketNotFoundError, NotFoundError):
            raise SluiceError(
                f"Sluice is not set up on {self.options.url} (no KV {bucket}): start a coordinator"
            ) from None

    async def wait_until_set_up(self, timeout: float = SETUP_WAIT_S) -> None:
        """Waits until a coordinator has created Sluice's streams and buckets (pool `default`
        is declared last)."""
        await self.connect()
        deadline = time.monotonic() + timeout
        while True:
            try:
                pools = await self._js.key_value(names.POOLS_BUCKET)
                await pools.get(names.DEFAULT_POOL)
                return
            except (BucketNotFoundError, NotFoundError, KeyNotFoundError):
                pass
            if time.monotonic() >= deadline:
                error = NoAnswer(f"Sluice is not set up on {self.options.url}: no coordinator has run there")
                raise error
            await asyncio.sleep(POLL_S)

    # ------------------------------------------------------------ submitting

    async def submit(
        self,
        workflow: str | os.PathLike[str],
        window: str | Window | tuple[datetime, datetime] | None = None,
        params: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        *,
        timezone: str | None = None,
        timeout: float = ANSWER_TIMEOUT_S,
    ) -> str:
        """Submits a workflow (a path, or the YAML text) and returns the run id once a
        coordinator accepted it; a refusal raises `Rejected` with the coordinator's reason.
        `window`: a text as `--window` takes (computed in `timezone`, default the workflow's
        `timezone:`), a `Window`, a (start, end) pair, or None for the previous full day.
        A key already used returns the run that holds it, as `sluice submit` does."""
        yaml_text = _workflow_text(workflow)
        if (
            idempotency_key is not None
            and not 1 <= len(idempotency_key.encode()) <= IDEMPOTENCY_KEY_MAX_BYTES
        ):
            raise ConfigError(
                f"idempotency_key must be 1 to {IDEMPOTENCY_KEY_MAX_BYTES} bytes, "
                f"not {len(idempotency_key.encode())}"
            )
        resolved: Window | None
        if window is None or isinstance(window, Window):
            resolved = window
        elif isinstance(window, tuple):
            resolved = new_window(*window)
        else:
            resolved = parse_window(window, parse_zone(timezone or workflow_zone(yaml_text)))
        await self.wait_until_set_up()
        if idempotency_key is not None:
            holder = await self._key_holder(idempotency_key)
            if holder is not None:
                return holder
        run_id = uuid7()
        submission = Submission(
            schema_version=SCHEMA_VERSION,
            run_id=run_id,
            workflow=yaml_text,
            window=resolved,
            params=dict(params or {}),
            idempotency_key=idempotency_key,
            submitted_at=utc_now(),
        )
        headers = {names.HEADER_MSG_ID: idempotency_key or run_id}
        # A traced caller's span (the W3C variable) becomes the run span's parent; without
        # one the coordinator starts the trace at the run.
        parent = os.environ.get("TRACEPARENT", "").strip()
        if parent:
            headers[names.HEADER_TRACEPARENT] = parent
        ack = await self._js.publish(names.SUBMIT_SUBJECT, submission.encode(), headers=headers)
        if getattr(ack, "duplicate", False) and idempotency_key is not None:
            holder = await self._wait_key_holder(idempotency_key, timeout)
            if holder is not None:
                return holder
        await self._wait_accepted(run_id, timeout)
        return run_id

    async def _key_holder(self, key: str) -> str | None:
        try:
            bucket = await self._js.key_value(names.IDEMPOTENCY_BUCKET)
            entry = await bucket.get(names.idempotency_kv_key(key))
        except (BucketNotFoundError, NotFoundError, KeyNotFoundError):
            return None
        return entry.value.decode() if entry.value else None

    async def _wait_key_holder(self, key: str, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            holder = await self._key_holder(key)
            if holder is not None:
                return holder
            await asyncio.sleep(POLL_S)
        return None

    async def _rejection(self, run_id: str) -> Rejection | None:
        try:
            message = await self._js.get_last_msg(names.REJECTED_STREAM, names.rejected_subject(run_id))
        except NotFoundError:
            return None
        return Rejection.decode(message.data)

    async def _wait_accepted(self, run_id: str, timeout: float) -> RunRecord:
        return await self._watch_run(
            run_id,
            lambda record: True,
            timeout,
            ACCEPT_REJECTION_CHECK_S,
            lambda: (
                f"run {run_id} was submitted (it is stored) but no coordinator took it within {timeout:g} s"
            ),
        )

    async def _watch_run(
        self,
        run_id: str,
        done: Callable[[RunRecord], bool],
        timeout: float | None,
        rejection_every: float,
        too_late: Callable[[], str],
    ) -> RunRecord:
        """Watches the run's record until `done` says so (no polling: the KV watch delivers
        each write); a rejected submission never makes a record, so the rejections are
        looked up while none has come, every `rejection_every` seconds."""
        runs = await self._kv(names.RUNS_BUCKET)
        deadline = None if timeout is None else time.monotonic() + timeout
        watcher = await runs.watch(run_id, ignore_deletes=True)
        seen = False
        try:
            while True:
                left = rejection_every if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    # None: the watch has delivered what was stored when it began.
                    entry = await watcher.updates(timeout=min(rejection_every, left))
                except NatsTimeout:
                    entry = None
                if entry is not None and entry.value:
                    seen = True
                    record = RunRecord.decode(entry.value)
                    if done(record):
                        return record
                    continue
                if not seen:
                    rejection = await self._rejection(run_id)
                    if rejection is not None:
                        raise Rejected(run_id, rejection.reason)
                if deadline is not None and time.monotonic() >= deadline:
                    raise NoAnswer(too_late())
        finally:
            await watcher.stop()

    # ------------------------------------------------------------ reading

    async def _run(self, runs: Any, run_id: str) -> RunRecord | None:
        try:
            entry = await runs.get(run_id)
        except KeyNotFoundError:
            return None
        return RunRecord.decode(entry.value)

    async def _jobs(self, run: RunRecord) -> dict[str, JobRecord]:
        """The run's job records, children included; a workflow job not yet written is in
        the state the run began with (`RunRecord.first_state`).

        Read through an ordered consumer (the last value per key), to the message after
        which none are pending. nats-py's KV watcher is not used: its "no more values"
        marker can come before values the server already sent, which returned no jobs. The
        read is empty only when the server has delivered nothing and has nothing pending."""
        run_id = run.id
        prefix = names.kv_subject(names.JOBS_BUCKET, f"{run_id}.")
        subscription = await self._js.subscribe(
            f"{prefix}>",
            stream=names.kv_stream(names.JOBS_BUCKET),
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        )
        jobs: dict[str, JobRecord] = {}
        try:
            info = await subscription.consumer_info()
            nothing = info.num_pending == 0 and not (info.delivered and info.delivered.consumer_seq)
            while not nothing:
                message = await subscription.next_msg(timeout=ANSWER_TIMEOUT_S)
                if message.data and not (message.headers or {}).get(names.HEADER_KV_OPERATION):
                    jobs[message.subject[len(prefix) :]] = JobRecord.decode(message.data)
                if message.metadata.num_pending == 0:
                    break
        finally:
            await subscription.unsubscribe()
        for index, name in enumerate(run.jobs):
            if name not in jobs and (first := run.first_state(index)) is not None:
                jobs[name] = first
        return jobs

    async def status(self, run_id: str) -> RunStatus:
        """The run and its jobs' records. An unknown run raises `NotFound`; a rejected
        submission raises `Rejected`."""
        await self.connect()
        record = await self._run(await self._kv(names.RUNS_BUCKET), run_id)
        if record is None:
            rejection = await self._rejection(run_id)
            if rejection is not None:
                raise Rejected(run_id, rejection.reason)
            raise NotFound(f"no run {run_id}")
        return RunStatus(record, await self._jobs(record))

    async def wait(self, run_id: str, timeout: float | None = None) -> RunStatus:
        """Waits until the run has ended (succeeded, failed or cancelled) and returns its
        status; `timeout` seconds (None: no limit) raises `NoAnswer`."""
        await self.connect()
        record = await self._watch_run(
            run_id,
            lambda record: record.state is not RunState.RUNNING,
            timeout,
            WAIT_REJECTION_CHECK_S,
            lambda: f"run {run_id} has not ended within {timeout:g} s",
        )
        return RunStatus(record, await self._jobs(record))

    async def runs(
        self,
        workflow: str | None = None,
        state: RunState | str | None = None,
        origin: str | None = None,
        limit: int = 20,
    ) -> list[RunRecord]:
        """The newest runs that match (as `sluice runs`), newest first, `limit` at most."""
        await self.connect()
        wanted = RunState(state) if state is not None else None
        limit = max(1, min(limit, RUNS_PAGE_MAX))
        runs_kv = await self._kv(names.RUNS_BUCKET)

        def matches(run: RunRecord) -> bool:
            return (
                (workflow is None or run.workflow == workflow)
                and (wanted is None or run.state is wanted)
                and (origin is None or run.origin == origin)
            )

        found: list[RunRecord] = []
        if wanted is RunState.RUNNING:
            active = await self._kv(names.ACTIVE_BUCKET)
            try:
                keys = await active.keys()
            except Exception:  # nats-py raises NoKeysError for an empty bucket
                keys = []
            for key in sorted((key for key in keys if not key.startswith("_")), reverse=True):
                record = await self._run(runs_kv, key)
                if record is not None and matches(record):
                    found.append(record)
                    if len(found) == limit:
                        break
            return found
        if origin is not None:
            chain = names.index_origin_subject(origin)
        elif workflow is not None:
            chain = names.index_workflow_subject(workflow)
        elif wanted is not None:
            chain = names.index_state_subject(wanted.value)
        else:
            chain = names.INDEX_ALL_SUBJECT
        try:
            head = await self._js.get_last_msg(names.INDEX_STREAM, chain, direct=True)
        except NotFoundError:
            return found
        sequence: int | None = head.seq
        seen: set[str] = set()
        scanned = 0
        while sequence is not None and len(found) < limit and scanned < RUNS_SCAN_MAX:
            scanned += 1
            try:
                message = await self._js.get_msg(names.INDEX_STREAM, seq=sequence, direct=True)
            except NotFoundError:
                break
            entry = RunIndexEntry.decode(message.data)
            sequence = entry.previous
            if entry.run_id in seen:
                continue
            seen.add(entry.run_id)
            record = await self._run(runs_kv, entry.run_id)
            current = entry.state is None or (
                entry.state is record.state and entry.finished_at == record.finished_at
                if record is not None
                else False
            )
            if record is not None and matches(record) and current:
                found.append(record)
        return found

    async def dlq(self, workflow: str | None = None, pool: str | None = None) -> list[DeadLetterEntry]:
        """The unresolved dead letters (as `sluice dlq list`), oldest first."""
        await self.connect()
        found: list[DeadLetterEntry] = []
        sequence = 1
        for _ in range(DEAD_LETTERS_READ_MAX):
            try:
                message = await self._js.get_msg(
                    names.DLQ_STREAM, seq=sequence, subject=names.DLQ_SUBJECTS, next=True, direct=True
                )
            except NotFoundError:
                break
            sequence = message.seq + 1
            entry_pool = message.subject.split(".")[2] if message.subject.count(".") >= 2 else ""
            letter: DeadLetter | None
            try:
                letter = DeadLetter.decode(message.data or b"")
                reason = letter.reason
            except WireError:
                letter = None
                reason = (message.headers or {}).get(names.HEADER_REASON, "unreadable dead letter")
            if pool is not None and entry_pool != pool:
                continue
            if workflow is not None and (letter is None or letter.job.workflow != workflow):
                continue
            found.append(DeadLetterEntry(message.seq, message.subject, letter, reason))
        return found

    async def logs(self, run_id: str, job: str | None = None) -> list[LogEntry]:
        """A run's log lines (or one job's, its children's included), in the order stored."""
        await self.connect()
        found: list[LogEntry] = []
        sequence = 1
        for _ in range(LOG_BATCHES_READ_MAX):
            try:
                message = await self._js.get_msg(
                    names.LOGS_STREAM,
                    seq=sequence,
                    subject=names.run_logs_filter(run_id),
                    next=True,
                    direct=True,
                )
            except NotFoundError:
                break
            sequence = message.seq + 1
            batch = LogBatch.decode(message.data or b"")
            if job is not None and batch.job != job and not batch.job.startswith(f"{job}."):
                continue
            found.extend(LogEntry(batch.job, batch.attempt, line) for line in batch.lines)
        return found

    # ------------------------------------------------------------ control requests

    async def _control(
        self,
        action: ControlAction,
        run_id: str | None,
        *,
        job: str | None = None,
        spec: str | None = None,
        dead_letter: int | None = None,
        timeout: float = ANSWER_TIMEOUT_S,
    ) -> ControlOutcome:
        await self.wait_until_set_up()
        request = ControlRequest(
            schema_version=SCHEMA_VERSION,
            request_id=uuid7(),
            requested_by="",
            run_id=run_id,
            action=action,
            job=job,
            requested_at=utc_now(),
            dead_letter=dead_letter,
            spec=spec,
        )
        assert request.request_id is not None
        outcomes = await self._kv(names.OUTCOMES_BUCKET)
        watcher = await outcomes.watch(request.request_id)
        try:
            headers = {names.HEADER_REQUEST_ID: request.request_id, names.HEADER_MSG_ID: request.request_id}
            subject = names.control_subject(self.options.identity, run_id)
            await self._js.publish(subject, request.encode(), headers=headers)
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NoAnswer(
                        f"no coordinator answered the {request.action_name()} request within {timeout:g} s "
                        "(it stays queued: a coordinator that starts later applies it)"
                    )
                try:
                    entry = await watcher.updates(timeout=left)
                except NatsTimeout:
                    continue
                if entry is not None and entry.value:
                    outcome = ControlOutcome.decode(entry.value)
                    break
        finally:
            await watcher.stop()
        if outcome.outcome is Outcome.REFUSED:
            kind = outcome.kind.value if outcome.kind is not None else "invalid"
            raise Refused(outcome.action, kind, outcome.reason)
        return outcome

    async def cancel(self, run_id: str) -> ControlOutcome:
        """Cancels a run (as `sluice cancel`): queued jobs never start, running ones are told
        to stop. A finished run raises `Refused` (conflict); an unknown one `Refused` (not_found)."""
        return await self._control(ControlAction(ControlAction.CANCEL), run_id)

    async def retry(self, run_id: str, job: str | None = None, spec: str | None = None) -> ControlOutcome:
        """Runs again what did not complete (or `job` and what depends on it), as `sluice retry`;
        `spec`: a new workflow YAML (path or text) for what runs again."""
        spec_text = _workflow_text(spec) if spec is not None else None
        return await self._control(ControlAction(ControlAction.RETRY), run_id, job=job, spec=spec_text)

    async def dlq_replay(self, dead_letter: int) -> ControlOutcome:
        """Replays one dead letter (`sluice dlq replay ID`): its job runs again, a new generation."""
        entries = [entry for entry in await self.dlq() if entry.id == dead_letter]
        if not entries or entries[0].letter is None:
            raise NotFound(f"no dead letter {dead_letter} that can be replayed")
        letter = entries[0].letter
        return await self._control(
            ControlAction(ControlAction.RETRY), letter.job.run_id, job=letter.job.job, dead_letter=dead_letter
        )


def _close(loop: asyncio.AbstractEventLoop, client: AsyncClient) -> None:
    if not loop.is_closed():
        loop.run_until_complete(client.close())
        loop.close()


class Client:
    """The client for ordinary code: each method blocks until done.

    client = sluice.Client("nats://127.0.0.1:4222")
    run_id = client.submit("etl.yaml", window="2024-03-01")
    print(client.wait(run_id).state)
    """

    def __init__(self, url: str | None = None, **options: str | None) -> None:
        self._async = AsyncClient(url, **options)
        self._loop = asyncio.new_event_loop()
        # Closed when collected or at exit, for callers that never call close().
        self._finalizer = weakref.finalize(self, _close, self._loop, self._async)

    def _run(self, call: Awaitable[T]) -> T:
        return self._loop.run_until_complete(call)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._finalizer()

    def submit(
        self,
        workflow: str | os.PathLike[str],
        window: str | Window | tuple[datetime, datetime] | None = None,
        params: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        *,
        timezone: str | None = None,
        timeout: float = ANSWER_TIMEOUT_S,
    ) -> str:
        return self._run(
            self._async.submit(workflow, window, params, idempotency_key, timezone=timezone, timeout=timeout)
        )

    def wait(self, run_id: str, timeout: float | None = None) -> RunStatus:
        return self._run(self._async.wait(run_id, timeout))

    def status(self, run_id: str) -> RunStatus:
        return self._run(self._async.status(run_id))

    def runs(
        self,
        workflow: str | None = None,
        state: RunState | str | None = None,
        origin: str | None = None,
        limit: int = 20,
    ) -> list[RunRecord]:
        return self._run(self._async.runs(workflow, state, origin, limit))

    def cancel(self, run_id: str) -> ControlOutcome:
        return self._run(self._async.cancel(run_id))

    def retry(self, run_id: str, job: str | None = None, spec: str | None = None) -> ControlOutcome:
        return self._run(self._async.retry(run_id, job, spec))

    def dlq(self, workflow: str | None = None, pool: str | None = None) -> list[DeadLetterEntry]:
        return self._run(self._async.dlq(workflow, pool))

    def dlq_replay(self, dead_letter: int) -> ControlOutcome:
        return self._run(self._async.dlq_replay(dead_letter))

    def logs(self, run_id: str, job: str | None = None) -> list[LogEntry]:
        return self._run(self._async.logs(run_id, job))
