"""The Python worker (`sluice-py worker --pool P --concurrency N [--isolation thread|process]
MODULE`): imports MODULE once and runs its jobs as the pool's consumer delivers them, speaking
the protocol of the Rust worker (docs/protocol.md "Jobs", docs/python.md "The worker"):

- it fetches as many jobs as it has free slots, and while jobs are short up to three per slot
  more, held until a slot frees (a held job that waits a second for one goes back);
- a first delivery's `started` event is published with the work; a redelivery first looks
  for a stored outcome of that attempt and stores its `started` before running;
- in-progress acks every third of the pool's ack wait keep a running job's message;
- the outcome event (and the attempt's log lines and children before it) is stored before the
  message is settled, in an event batch with other outcomes when the job's message allows it
  and the message is removed after it (`_batcher.py`); then it is settled: ack, NAK with the
  retry delay, ack with a coordinator-scheduled retry beyond 30 s, or TERM (the coordinator
  dead-letters the job);
- an undecodable job is reported from its headers, or dead-lettered raw; a job of a newer
  schema goes back untouched after 5 s;
- `sluice cancel` (core subject `sluice.stop.<run>`) and timeouts set `ctx.cancelled`; in
  `process` mode the job's child process is killed instead;
- SIGTERM drains: no more fetches, running jobs finish, the registry entry is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import random
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any, TypeVar

from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import KeyNotFoundError, NotFoundError

from . import _names as names
from ._batcher import Batcher
from ._threads import JobThreads
from ._tracing import attempt_spans
from ._wire import (
    PROTOCOL_VERSIONS,
    SCHEMA_VERSION,
    ChildSpec,
    EventKind,
    JobEvent,
    JobMessage,
    JobRecord,
    JobState,
    LogBatch,
    LogLine,
    LogStream,
    NewerSchemaError,
    PoolRecord,
    SpawnBatch,
    WorkerRecord,
    utc_now,
)
from .children import Children
from .connection import ConnectionOptions
from .context import Context
from .errors import ConfigError, PermanentError, SluiceError, WireError
from .job import Runnable, import_module, registry_of
from .retry import NAK_DELAY_MAX_MS, Ending, Kind, Settlement, settle

T = TypeVar("T")

log = logging.getLogger("sluice.worker")

#: The oldest nats-server Sluice runs on (proto version::MIN_NATS_SERVER).
MIN_NATS_SERVER = (2, 14, 0)
#: Registry entries expire this long after their last renewal (ms).
WORKER_ENTRY_TTL_MS = 15_000
#: A redelivered job waits this long while the worker of its open attempt has an event batch
#: the coordinator has not applied (ms; worker::limits::BATCH_WAITING_RECHECK_MS).
BATCH_WAITING_RECHECK_MS = 1_000
#: A worker renews its registry entry this often (ms).
WORKER_ANNOUNCE_INTERVAL_MS = 5_000
#: An error text an event carries, at most (bytes; its tail is kept).
ERROR_TEXT_MAX_BYTES = 4096
#: Log lines are batched for this long before they are published (s).
LOG_BATCH_S = 0.1
#: A log batch holds at most this many bytes of text.
LOG_BATCH_MAX_BYTES = 256 * 1024
#: A spawn batch holds at most this much JSON (bytes; half proto SPAWN_BATCH_MAX_BYTES).
SPAWN_BATCH_MAX_BYTES = 128 * 1024
#: How long one fetch waits for jobs (s): also how fast a drain notices.
FETCH_WAIT_S = 1.0
#: While jobs are short, jobs held per slot beyond the slots (Celery's default prefetch
#: multiplier, as the Rust worker's --prefetch).
PREFETCH_PER_SLOT = 3
#: A job that ran under this long is short (s).
SHORT_JOB_S = 0.1
#: A held job that waits this long for a slot goes back to the pool, the same attempt (s).
HELD_WAIT_S = 1.0
#: Runs stopped recently, remembered so a job fetched just before the stop does not start.
STOPPED_RUNS_REMEMBERED = 4096
#: A killed `process`-mode child gets this long to exit after SIGTERM before SIGKILL (s).
KILL_GRACE_S = 2.0
#: How long reading a page of children (or their names) may take (s).
CHILDREN_READ_TIMEOUT_S = 30.0
#: Child records read concurrently.
CHILD_READS_AT_ONCE = 100
#: How long closing the connection may take at shutdown (s).
CLOSE_WAIT_S = 5.0
#: Pauses between tries to store an event double from this up to EVENT_RETRY_MAX_S (s).
EVENT_RETRY_FIRST_S = 0.1
EVENT_RETRY_MAX_S = 5.0


# ------------------------------------------------------------------ pure decisions


def check_server_version(version: str) -> str | None:
    """Why this nats-server is too old for Sluice, or None."""
    core = version.strip().lstrip("v").split("-")[0].split("+")[0]
    parts = core.split(".")
    try:
        found = (int(parts[0]), int(parts[1]), int(parts[2]) if len(parts) > 2 else 0)
    except (ValueError, IndexError):
        found = (0, 0, 0)
    if found >= MIN_NATS_SERVER:
        return None
    wanted = ".".join(map(str, MIN_NATS_SERVER))
    return (
        f"nats-server {version} is too old: Sluice needs {wanted} or newer "
        "(JetStream schedules, TTLs, priority groups); run scripts/install-tools.sh for a pinned one"
    )


def check_kinds(pool: str, worker_id: str, kinds: list[str], live: list[WorkerRecord]) -> str | None:
    """Why this worker may not join `pool` (its live workers serve other kinds), or None."""
    own = sorted(set(kinds))
    for worker in live:
        if worker.pool != pool or worker.worker_id == worker_id:
            continue
        theirs = sorted(set(worker.kinds))
        if theirs != own:
            return (
                f"pool `{pool}` is served by workers with kinds [{', '.join(theirs)}]; this worker has "
                f"[{', '.join(own)}]: give workers with other kinds their own pool (`pool:` in the workflow)"
            )
    return None


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a redelivered job is: an attempt to run (`open`: the worker whose attempt it was,
    if that attempt has no outcome), or ended already (`why`)."""

    attempt: int | None = None
    open: str | None = None
    why: str | None = None


def plan_redelivery(job: JobMessage, last: JobEvent | None, record: JobRecord | None) -> Plan:
    """The attempt a redelivery runs, from what is on record (decision 8), as the Rust worker's
    `redelivery::plan`."""
    generations = [
        g for g in (last.generation if last else None, record.generation if record else None) if g is not None
    ]
    newer = max(generations) if generations else None
    if newer is not None and newer > job.generation:
        return Plan(
            why=f"the job was dispatched again (generation {newer}) "
            f"since this message (generation {job.generation})"
        )
    last = last if last is not None and last.generation == job.generation else None
    record = record if record is not None and record.generation == job.generation else None
    if last is not None and (
        last.kind is EventKind.SUCCEEDED or (last.kind is EventKind.FAILED and last.retry_at is None)
    ):
        return Plan(why=f"attempt {last.attempt} already {last.kind.value}")
    terminal = {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.SKIPPED, JobState.WAITING}
    if record is not None and record.state in terminal:
        return Plan(why=f"the job is already {record.state.value}")
    on_record = [
        n for n in (last.attempt if last else None, record.attempts if record else None) if n is not None
    ]
    before = max([*on_record, job.attempt_offset]) if on_record else job.attempt_offset
    open_worker: str | None = None
    if last is not None and last.kind is EventKind.STARTED and last.attempt == before:
        open_worker = last.worker
    elif record is not None and record.attempt_history:
        latest = record.attempt_history[-1]
        if (
            latest.attempt == before
            and latest.finished_at is None
            and (last is None or last.attempt < before)
        ):
            open_worker = latest.worker
    return Plan(attempt=before + 1, open=open_worker)


def error_text(text: str) -> str:
    """An error as an event carries it: a long one keeps its tail."""
    data = text.encode()
    if len(data) <= ERROR_TEXT_MAX_BYTES:
        return text
    return "…" + data[-ERROR_TEXT_MAX_BYTES:].decode(errors="ignore")


def fetch_count(free_slots: int, held: int, prefetch: int, short: bool, draining: bool) -> int:
    """How many jobs to fetch now (as the Rust worker): none while draining; while jobs are
    short (the last finished within SHORT_JOB_S), enough to fill the free slots and hold
    `prefetch` more, refilled only once half of those are used up, so fetches are batches;
    once jobs run long, one per free slot and none held (another worker may be idle)."""
    if draining:
        return 0
    if not short or prefetch == 0:
        return max(free_slots - held, 0)
    if held > prefetch // 2:
        return 0
    return max(free_slots + prefetch - held, 0)


# ------------------------------------------------------------------ running an attempt


@dataclasses.dataclass
class Result:
    """How the job's code ended."""

    output: Any = None
    error: str | None = None
    permanent: bool = False
    children: list[ChildSpec] = dataclasses.field(default_factory=list)


def _run_in_thread(runnable: Runnable, ctx: Context) -> Result:
    try:
        output = runnable.run(ctx)
    except PermanentError as error:
        return Result(error=str(error) or "permanent error", permanent=True)
    except Exception as error:
        return Result(error=f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=8)}".rstrip())
    return Result(output=output, children=ctx.take_children())


def _child_main(
    module: str, name: str, ctx: Context, connection: multiprocessing.connection.Connection
) -> None:  # pragma: no cover - runs in the child process
    """`process` isolation: one attempt in a child process; lines and the result go back on a pipe."""
    # The worker's signal handling is not the child's: SIGTERM and SIGINT end it.
    signal.set_wakeup_fd(-1)
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, signal.SIG_DFL)
    ctx.log_sink = lambda stream, text: connection.send(("line", stream, text))
    # As the Rust worker gives exec jobs: libraries that read the environment nest their spans.
    for variable, value in (("TRACEPARENT", ctx.traceparent), ("TRACESTATE", ctx.tracestate)):
        if value:
            os.environ[variable] = value
    try:
        runnable = registry_of(import_module(module))[name]
        result = _run_in_thread(runnable, ctx)
    except Exception as error:
        result = Result(error=f"{type(error).__name__}: {error}")
    connection.send(("result", result))
    connection.close()


class _KeepAlive:
    """A job's in-progress acks: a timer that re-arms itself (no task per job: short jobs
    never reach it); `cancel()` stops them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, message: Any, interval: float) -> None:
        self._loop = loop
        self._message = message
        self._interval = interval
        self._sending: set[asyncio.Task[None]] = set()
        self._next = loop.call_later(interval, self._tick)

    def cancel(self) -> None:
        self._next.cancel()

    def _tick(self) -> None:
        task = self._loop.create_task(self._send())
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)
        self._next = self._loop.call_later(self._interval, self._tick)

    async def _send(self) -> None:
        with contextlib.suppress(Exception):
            await self._message.in_progress()


class Slot:
    """A worker slot taken by one delivery; freed once (a timed-out thread keeps it)."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release = release
        self._freed = False
        self.held_by_thread = False

    def free(self) -> None:
        if not self._freed:
            self._freed = True
            self._release()


class Attempt:
    """One attempt in progress: its context, log lines, and how to stop it."""

    def __init__(self, worker: Worker, job: JobMessage, attempt: int) -> None:
        self.worker = worker
        self.job = job
        self.attempt = attempt
        self.began = utc_now()
        self.lines: list[LogLine] = []
        self.lines_lock = threading.Lock()
        self.stopped = False  # its run was cancelled
        self.ctx = Context(
            run_id=job.run_id,
            workflow=job.workflow,
            job=job.job,
            attempt=attempt,
            window=job.window,
            params=dict(job.params),
            config=job.config,
            generation=job.generation,
            pool=job.pool,
            worker_id=worker.worker_id,
            log_sink=self.line,
        )
        self.process: multiprocessing.process.BaseProcess | None = None
        #: Its span, when attempt spans are exported (`_tracing`).
        self.span: Any = None

    def line(self, stream: str, text: str) -> None:
        with self.lines_lock:
            self.lines.append(LogLine(at=utc_now(), stream=LogStream(stream), text=text))

    def take_lines(self) -> list[LogLine]:
        with self.lines_lock:
            lines, self.lines = self.lines, []
        return lines

    def stop(self) -> None:
        """Asks the job to stop: cooperative in a thread, a kill in a child process."""
        self.ctx.cancel()
        if self.process is not None and self.process.is_alive():
            self.process.kill()


# ------------------------------------------------------------------ the worker


class Worker:
    def __init__(
        self,
        options: ConnectionOptions,
        pool: str,
        concurrency: int,
        module: str,
        isolation: str = "thread",
        worker_id: str | None = None,
        nak_delay_max_ms: int = NAK_DELAY_MAX_MS,
    ) -> None:
        if concurrency < 1:
            raise ConfigError(f"--concurrency must be at least 1, not {concurrency}")
        if isolation not in ("thread", "process"):
            raise ConfigError(f"--isolation must be thread or process, not `{isolation}`")
        self.options = options
        self.pool = pool
        self.concurrency = concurrency
        self.module = module
        self.isolation = isolation
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-py"
        self.nak_delay_max_ms = nak_delay_max_ms
        self.registry = registry_of(import_module(module))
        if not self.registry:
            raise ConfigError(
                f"module `{module}` defines no jobs (sluice.Job subclasses or @sluice.job functions)"
            )
        self.kinds = sorted(self.registry)
        self.threads = concurrent.futures.ThreadPoolExecutor(max_workers=concurrency * 2)
        self.busy = 0
        #: Jobs fetched and waiting for a slot.
        self.held = 0
        #: Whether the last job finished within SHORT_JOB_S (then jobs are fetched ahead).
        self.short = False
        #: Set when a slot frees, a held job takes one, or the worker drains.
        self.changed = asyncio.Event()
        self.running: dict[str, list[Attempt]] = {}
        self.stopped_runs: deque[str] = deque(maxlen=STOPPED_RUNS_REMEMBERED)
        self.draining = asyncio.Event()
        self.started_at = utc_now()
        self.progress_interval_s = 10.0
        self.js: Any = None
        self.nc: Any = None
        self.spans = attempt_spans()

    # ---------------------------------------------------------------- set-up

    async def open(self) -> None:
        self.nc = await self.options.connect(f"sluice-py worker {self.worker_id}")
        version = str(self.nc._server_info.get("version", "unknown"))  # the INFO the server sent
        problem = check_server_version(version)
        if problem is not None:
            raise SluiceError(problem)
        self.js = self.nc.jetstream()
        try:
            pools = await self.js.key_value(names.POOLS_BUCKET)
            entry = await pools.get(self.pool)
            pool = PoolRecord.decode(entry.value)
        except (KeyNotFoundError, NotFoundError):
            raise ConfigError(
                f"pool `{self.pool}` is not declared: `sluice pool apply {self.pool}` first "
                "(or Sluice is not set up here: start a coordinator)"
            ) from None
        self.progress_interval_s = max(pool.ack_wait_ms / 3000.0, 0.2)
        self.workers_kv = await self.js.key_value(names.WORKERS_BUCKET)
        self.jobs_kv = await self.js.key_value(names.JOBS_BUCKET)
        self.batcher = Batcher(
            self.js.publish, names.event_batch_subject(self.pool, self.worker_id), self.worker_id
        )
        problem = check_kinds(self.pool, self.worker_id, self.kinds, await self.live_workers())
        if problem is not None:
            raise ConfigError(problem)
        await self.announce()
        self.stops = await self.nc.subscribe(names.STOP_SUBJECTS, cb=self.on_stop)
        self.subscription = await self.js.pull_subscribe_bind(
            durable=names.pool_consumer(self.pool), stream=names.JOBS_STREAM
        )

    async def live_workers(self) -> list[WorkerRecord]:
        try:
            keys = await self.workers_kv.keys()
        except Exception:  # nats-py raises NoKeysError for an empty bucket
            return []
        found = []
        for key in keys:
            if not key.startswith(f"{self.pool}."):
                continue
            try:
                found.append(WorkerRecord.decode((await self.workers_kv.get(key)).value))
            except (KeyNotFoundError, WireError):
                continue
        return found

    @property
    def registry_key(self) -> str:
        token = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in self.worker_id)
        return names.worker_key(self.pool, token or "_")

    async def announce(self) -> None:
        record = WorkerRecord(
            schema_version=SCHEMA_VERSION,
            worker_id=self.worker_id,
            pool=self.pool,
            kinds=self.kinds,
            protocol_versions=list(PROTOCOL_VERSIONS),
            version=f"sluice-sdk {__import__('sluice').__version__}",
            slots=self.concurrency,
            busy=self.busy,
            started_at=self.started_at,
        )
        await self.workers_kv.put(self.registry_key, record.encode())

    async def announce_loop(self) -> None:
        while not self.draining.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.draining.wait(), WORKER_ANNOUNCE_INTERVAL_MS / 1000)
            if self.draining.is_set():
                break
            try:
                await self.announce()
            except Exception as error:
                log.warning("announcing this worker failed (%s); trying again at the next renewal", error)

    async def on_stop(self, message: Any) -> None:
        run_id = message.subject.rsplit(".", 1)[-1]
        if run_id not in self.stopped_runs:
            self.stopped_runs.append(run_id)
        for attempt in self.running.get(run_id, []):
            log.info("stopping job %s of cancelled run %s", attempt.job.job, run_id)
            attempt.stopped = True
            attempt.stop()

    # ---------------------------------------------------------------- the loop

    async def run(self) -> None:
        await self.open()
        # One per slot: a timed-out job keeps its slot, and its thread, until it returns.
        self.job_threads = JobThreads(asyncio.get_running_loop(), self.concurrency)
        log.info(
            "worker %s serves pool %s with %d slots (%s isolation), kinds: %s",
            self.worker_id,
            self.pool,
            self.concurrency,
            self.isolation,
            ", ".join(self.kinds),
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.drain)
        announcer = asyncio.create_task(self.announce_loop())
        tasks: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(self.concurrency)
        prefetch = self.concurrency * PREFETCH_PER_SLOT
        try:
            while not self.draining.is_set():
                free = self.concurrency - self.busy
                count = fetch_count(free, self.held, prefetch, self.short, self.draining.is_set())
                if count == 0:
                    # Until a slot frees or a held job takes one.
                    self.changed.clear()
                    await self.changed.wait()
                    continue
                try:
                    messages = await self.subscription.fetch(count, timeout=FETCH_WAIT_S)
                except NatsTimeout:
                    continue
                except Exception as error:
                    log.warning("fetching jobs failed (%s); trying again", error)
                    await asyncio.sleep(FETCH_WAIT_S)
                    continue
                for message in messages:
                    self.held += 1
                    task = asyncio.create_task(self.handle(message, slots))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            log.info("draining: %d jobs running; no more fetches", len(tasks))
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self.draining.set()
            await announcer
            with contextlib.suppress(Exception):
                await self.workers_kv.delete(self.registry_key)
            # Not drain(): it waits on the pull subscription's open fetch.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), CLOSE_WAIT_S)
            self.threads.shutdown(wait=False, cancel_futures=True)
            self.job_threads.shutdown()
            if self.spans is not None:
                self.spans.shutdown()
            log.info("worker %s stopped", self.worker_id)

    def drain(self) -> None:
        if not self.draining.is_set():
            log.info("SIGTERM: draining")
            self.draining.set()
            self.changed.set()

    def free_slot(self, slots: asyncio.Semaphore) -> None:
        self.busy -= 1
        slots.release()
        self.changed.set()

    # ---------------------------------------------------------------- one message

    async def handle(self, message: Any, slots: asyncio.Semaphore) -> None:
        acquired = True
        if slots.locked():
            # Held: wait for a slot, a second at most (no timer, no task, when one is free).
            try:
                await asyncio.wait_for(slots.acquire(), HELD_WAIT_S)
            except TimeoutError:
                acquired = False
        else:
            await slots.acquire()
        self.held -= 1
        self.changed.set()
        if not acquired or self.draining.is_set():
            # Back to the pool at once, not started: the same attempt for whoever takes it.
            if acquired:
                slots.release()
            with contextlib.suppress(Exception):
                await message.nak()
            return
        self.busy += 1
        slot = Slot(lambda: self.free_slot(slots))
        try:
            await self._handle(message, slot)
        except Exception:
            log.exception("handling a job failed; it will be delivered again")
        finally:
            if not slot.held_by_thread:
                slot.free()

    async def _handle(self, message: Any, slot: Slot) -> None:
        delivered = message.metadata.num_delivered
        try:
            job = JobMessage.decode(message.data)
        except NewerSchemaError as error:
            log.warning("%s: handing it back untouched (upgrade sluice-sdk)", error)
            await message.nak(delay=(settle(None, 0, Ending.NEWER_SCHEMA).delay_ms or 0) / 1000)
            return
        except WireError as error:
            await self.undecodable(message, delivered, str(error))
            return
        if job.run_id in self.stopped_runs:
            await message.ack()
            return
        runnable = self.registry.get(job.kind)
        if delivered <= 1:
            attempt_number = job.attempt_offset + 1
            opened: asyncio.Task[None] | None = asyncio.create_task(
                self.store_event(message, self.event(job, attempt_number, EventKind.STARTED))
            )
        else:
            last, record = await self.on_record(job)
            plan = plan_redelivery(job, last, record)
            if plan.attempt is None:
                log.info("job %s redelivered after it ended (%s): acknowledged", job.job, plan.why)
                await message.ack()
                return
            if plan.open is not None and plan.open != self.worker_id and await self.is_live(plan.open):
                await message.nak(delay=WORKER_ENTRY_TTL_MS / 1000)
                return
            if plan.open is not None and await self.batch_waiting(plan.open):
                # The open attempt's outcome may be in a batch the coordinator has not
                # applied yet (a Rust worker's): wait for it, as the Rust worker does.
                await message.nak(delay=BATCH_WAITING_RECHECK_MS / 1000)
                return
            attempt_number = plan.attempt
            await self.store_event(message, self.event(job, attempt_number, EventKind.STARTED))
            opened = None
        attempt = Attempt(self, job, attempt_number)
        headers = message.headers or {}
        attempt.ctx.traceparent = headers.get(names.HEADER_TRACEPARENT)
        attempt.ctx.tracestate = headers.get(names.HEADER_TRACESTATE)
        if self.spans is not None:
            # The job sees its attempt's span, as an exec job of the Rust worker does.
            attempt.span, attempt.ctx.traceparent, attempt.ctx.tracestate = self.spans.start(
                attempt.ctx.traceparent,
                attempt.ctx.tracestate,
                f"attempt {attempt_number} of {job.job}",
                {
                    "sluice.run_id": job.run_id,
                    "sluice.job": job.job,
                    "sluice.pool": job.pool,
                    "sluice.kind": job.kind,
                    "sluice.attempt": attempt_number,
                    "sluice.worker": self.worker_id,
                },
            )
        if runnable is None:
            result = Result(error=f"unknown job kind `{job.kind}`: this worker runs {', '.join(self.kinds)}")
            ending = Ending.UNKNOWN_KIND
        else:
            self.running.setdefault(job.run_id, []).append(attempt)
            keep_alive = self.keep_alive(message)
            try:
                try:
                    attempt.ctx.inputs = await self.inputs(job)
                except PermanentError as error:
                    result = Result(error=str(error), permanent=True)
                else:
                    result = await self.perform(runnable, attempt, slot)
            finally:
                keep_alive.cancel()
                attempts = self.running.get(job.run_id, [])
                if attempt in attempts:
                    attempts.remove(attempt)
                if not attempts:
                    self.running.pop(job.run_id, None)
            if attempt.stopped:
                if opened is not None:
                    await opened
                if self.spans is not None:
                    self.spans.end(attempt.span, "stopped", None)
                log.info("job %s stopped: its run was cancelled", job.job)
                await message.ack()
                return
            ending = (
                Ending.SUCCEEDED
                if result.error is None
                else (Ending.PERMANENT if result.permanent else Ending.RETRYABLE)
            )
        if not slot.held_by_thread:
            slot.free()
        await self.complete(message, attempt, result, ending, opened)

    async def perform(self, runnable: Runnable, attempt: Attempt, slot: Slot) -> Result:
        timeout = attempt.job.timeout_ms / 1000 if attempt.job.timeout_ms else None
        if self.isolation == "process":
            return await self.perform_in_process(runnable, attempt, timeout)
        future: asyncio.Future[Result] = self.job_threads.submit(_run_in_thread, runnable, attempt.ctx)
        if timeout is None:
            return await future
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            attempt.stop()
            log.warning(
                "job %s timed out after %ss; its slot stays busy until its thread returns (threads cannot be "
                "killed; use --isolation process for jobs that must be)",
                attempt.job.job,
                timeout,
            )
            loop = asyncio.get_running_loop()
            slot.held_by_thread = True
            future.add_done_callback(lambda _: loop.call_soon_threadsafe(slot.free))
            return Result(error=f"timed out after {timeout:g}s")

    async def perform_in_process(self, runnable: Runnable, attempt: Attempt, timeout: float | None) -> Result:
        context = multiprocessing.get_context("fork")
        parent, child = context.Pipe(duplex=False)
        attempt.ctx.log_sink = None  # the child ships lines through the pipe
        process = context.Process(
            target=_child_main, args=(self.module, runnable.name, attempt.ctx, child), daemon=True
        )
        process.start()
        child.close()
        attempt.process = process
        deadline = None if timeout is None else time.monotonic() + timeout

        def read() -> Result | None:
            # Lines as they come; the result last. A child killed mid-way ends the pipe.
            while True:
                left = None if deadline is None else max(deadline - time.monotonic(), 0)
                if not parent.poll(left if left is not None else 0.5):
                    if deadline is not None and time.monotonic() >= deadline:
                        return None
                    continue
                try:
                    item = parent.recv()
                except EOFError:
                    return Result(error=f"the job's process died (exit code {process.exitcode})")
                if item[0] == "line":
                    attempt.line(item[1], item[2])
                else:
                    result: Result = item[1]
                    return result

        result = await asyncio.get_running_loop().run_in_executor(self.threads, read)
        if result is None:
            log.warning("job %s timed out after %ss: killing its process", attempt.job.job, timeout)
            await self.kill(process)
            return Result(error=f"timed out after {timeout:g}s")
        await asyncio.get_running_loop().run_in_executor(self.threads, process.join, KILL_GRACE_S)
        if process.is_alive():
            await self.kill(process)
        return result

    async def kill(self, process: multiprocessing.process.BaseProcess) -> None:
        process.terminate()
        await asyncio.get_running_loop().run_in_executor(self.threads, process.join, KILL_GRACE_S)
        if process.is_alive():
            process.kill()
            await asyncio.get_running_loop().run_in_executor(self.threads, process.join, KILL_GRACE_S)

    def keep_alive(self, message: Any) -> _KeepAlive:
        """In-progress acks every `progress_interval_s` while the job runs."""
        return _KeepAlive(asyncio.get_running_loop(), message, self.progress_interval_s)

    async def inputs(self, job: JobMessage) -> dict[str, Any]:
        """The outputs of the jobs it needs; a job that spawned children gives
        `{"output": …, "children": Children}` (read a page at a time, bounded)."""
        found: dict[str, Any] = {}
        for need in job.needs:
            try:
                record = JobRecord.decode((await self.jobs_kv.get(names.job_key(job.run_id, need))).value)
            except KeyNotFoundError:
                continue
            if record.children:
                found[need] = {"output": record.output, "children": await self.children(job.run_id, need)}
            elif record.output is not None:
                found[need] = record.output
        return found

    async def children(self, run_id: str, parent: str) -> Children:
        """The direct children of `parent` with their results: read lazily from the job's
        thread; for a `process`-mode job (whose child process has no connection) read here,
        all of them, within the same bound."""
        prefix = f"{names.job_key(run_id, parent)}."
        if self.isolation == "process":
            return Children.loaded(parent, await self.child_results(await self.child_keys(prefix)))
        loop = asyncio.get_running_loop()

        def wait(coroutine: Coroutine[Any, Any, T]) -> T:
            try:
                asyncio.get_running_loop()
            except RuntimeError:  # the job's thread, as it should be
                return asyncio.run_coroutine_threadsafe(coroutine, loop).result(CHILDREN_READ_TIMEOUT_S)
            coroutine.close()
            raise SluiceError("a job's children are read from the job's thread, not the event loop")

        return Children(
            parent, lambda: wait(self.child_keys(prefix)), lambda keys: wait(self.child_results(keys))
        )

    async def child_keys(self, prefix: str) -> list[str]:
        """The KV keys of the children under `prefix` (keys only, no records)."""
        watcher = await self.jobs_kv.watch(f"{prefix}*", ignore_deletes=True, meta_only=True)
        keys: list[str] = []
        try:
            while True:
                entry = await watcher.updates(timeout=CHILDREN_READ_TIMEOUT_S)
                if entry is None:
                    break
                keys.append(entry.key)
                if entry.delta == 0:
                    break
        finally:
            await watcher.stop()
        return keys

    async def child_results(self, keys: list[str]) -> list[dict[str, Any]]:
        """`{"name", "state", "output"}` of each child, in the order of `keys`."""
        results: list[dict[str, Any]] = []
        for start in range(0, len(keys), CHILD_READS_AT_ONCE):
            entries = await asyncio.gather(
                *(self.jobs_kv.get(key) for key in keys[start : start + CHILD_READS_AT_ONCE])
            )
            for entry in entries:
                record = JobRecord.decode(entry.value)
                results.append({"name": record.name, "state": record.state.value, "output": record.output})
        return results

    async def on_record(self, job: JobMessage) -> tuple[JobEvent | None, JobRecord | None]:
        last: JobEvent | None = None
        record: JobRecord | None = None
        with contextlib.suppress(NotFoundError, WireError):
            message = await self.js.get_last_msg(
                names.EVENTS_STREAM, names.event_subject(job.pool, job.run_id, job.job), direct=True
            )
            last = JobEvent.decode(message.data)
        with contextlib.suppress(KeyNotFoundError, WireError):
            record = JobRecord.decode((await self.jobs_kv.get(names.job_key(job.run_id, job.job))).value)
        return last, record

    async def batch_waiting(self, worker_id: str) -> bool:
        """Whether `worker_id` has an event batch the coordinator has not applied (an error
        counts as yes: the job waits rather than risk charging an attempt twice)."""
        try:
            await self.js.get_last_msg(
                names.EVENTS_STREAM, names.event_batch_subject(self.pool, worker_id), direct=True
            )
        except NotFoundError:
            return False
        except Exception as error:  # any failure to read means "cannot tell"
            log.warning(
                "cannot tell whether worker %s has an event batch waiting (%s); the job waits",
                worker_id,
                error,
            )
        return True

    async def is_live(self, worker_id: str) -> bool:
        return any(worker.worker_id == worker_id for worker in await self.live_workers())

    # ---------------------------------------------------------------- reporting

    def event(self, job: JobMessage, attempt: int, kind: EventKind) -> JobEvent:
        return JobEvent(
            schema_version=SCHEMA_VERSION,
            run_id=job.run_id,
            job=job.job,
            attempt=attempt,
            generation=job.generation,
            kind=kind,
            at=utc_now(),
            worker=self.worker_id,
        )

    async def store_event(self, message: Any, event: JobEvent) -> None:
        """Publishes until JetStream stores it (the message id makes a repeat harmless),
        keeping the job's message alive meanwhile."""
        if event.kind is EventKind.STARTED:
            msg_id = names.start_event_id(
                event.run_id, event.job, event.attempt, event.generation, event.worker
            )
        else:
            msg_id = names.event_id(
                event.run_id, event.job, event.attempt, event.generation, event.kind.value
            )
        subject = names.event_subject(self.pool, event.run_id, event.job)
        delay = EVENT_RETRY_FIRST_S
        while True:
            try:
                await self.js.publish(subject, event.encode(), headers={names.HEADER_MSG_ID: msg_id})
                return
            except Exception as error:
                log.warning(
                    "storing a %s event of %s failed (%s); trying again", event.kind.value, event.job, error
                )
                with contextlib.suppress(Exception):
                    await message.in_progress()
                await asyncio.sleep(delay)
                delay = min(delay * 2, EVENT_RETRY_MAX_S)

    async def store_lines(self, attempt: Attempt) -> None:
        lines = attempt.take_lines()
        subject = names.log_subject(self.pool, attempt.job.run_id, attempt.attempt, attempt.job.job)
        batch: list[LogLine] = []
        size = 0
        for index, line in enumerate(lines):
            batch.append(line)
            size += len(line.text)
            if size >= LOG_BATCH_MAX_BYTES or index + 1 == len(lines):
                payload = LogBatch(
                    schema_version=SCHEMA_VERSION,
                    run_id=attempt.job.run_id,
                    job=attempt.job.job,
                    attempt=attempt.attempt,
                    lines=batch,
                ).encode()
                try:
                    await self.js.publish(subject, payload)
                except Exception as error:
                    log.warning("storing log lines of %s failed (%s); they are lost", attempt.job.job, error)
                batch, size = [], 0

    async def store_children(self, attempt: Attempt, children: list[ChildSpec]) -> None:
        job = attempt.job
        subject = names.spawn_subject(self.pool, job.run_id, job.job, job.generation, attempt.attempt)
        batch: list[ChildSpec] = []
        size = 0
        index = 0
        for position, child in enumerate(children):
            batch.append(child)
            size += len(json.dumps(dataclasses.asdict(child), default=str))
            if size >= SPAWN_BATCH_MAX_BYTES or position + 1 == len(children):
                payload = SpawnBatch(
                    schema_version=SCHEMA_VERSION,
                    run_id=job.run_id,
                    job=job.job,
                    attempt=attempt.attempt,
                    generation=job.generation,
                    children=batch,
                ).encode()
                await self.js.publish(subject, payload, headers={names.HEADER_MSG_ID: f"{subject}.{index}"})
                index += 1
                batch, size = [], 0

    async def complete(
        self,
        message: Any,
        attempt: Attempt,
        result: Result,
        ending: Ending,
        opened: asyncio.Task[None] | None,
    ) -> None:
        job = attempt.job
        self.short = (utc_now() - attempt.began).total_seconds() < SHORT_JOB_S
        spawned = 0
        if ending is Ending.SUCCEEDED and result.children:
            try:
                await self.store_children(attempt, result.children)
                spawned = len(result.children)
            except Exception as error:
                result = Result(error=f"storing the children: {error}")
                ending = Ending.RETRYABLE
        series = attempt.attempt - job.retry_base_or_offset()
        settlement: Settlement = settle(job.retry, series, ending, self.nak_delay_max_ms, random.random())
        event = self.event(
            job, attempt.attempt, EventKind.SUCCEEDED if ending is Ending.SUCCEEDED else EventKind.FAILED
        )
        event.started_at = attempt.began
        if ending is Ending.SUCCEEDED:
            event.output = result.output
            event.spawned = spawned
        else:
            event.error = error_text(result.error or "failed")
            if settlement.retries and settlement.delay_ms is not None:
                event.retry_at = utc_now() + timedelta(milliseconds=settlement.delay_ms)
                event.schedule_retry = settlement.kind is Kind.SCHEDULE_RETRY
        await self.store_lines(attempt)
        if opened is not None:
            await opened
        if job.batch_events and settlement.kind is not Kind.NAK:
            # Its message is removed after this outcome: it may travel in a batch (a NAKed
            # job's is read from its own subject by whoever takes the job again).
            await self.batcher.store(event, lambda: self.store_event(message, event))
        else:
            await self.store_event(message, event)
        log.info(
            "job %s attempt %d %s%s",
            job.job,
            attempt.attempt,
            event.kind.value,
            f": {result.error.splitlines()[0]}" if result.error else "",
        )
        if self.spans is not None:
            failed = "retrying" if settlement.retries else "failed"
            self.spans.end(attempt.span, "succeeded" if ending is Ending.SUCCEEDED else failed, event.error)
        await self.settle_message(message, settlement)

    async def settle_message(self, message: Any, settlement: Settlement) -> None:
        try:
            if settlement.kind in (Kind.ACK, Kind.SCHEDULE_RETRY):
                await message.ack()
            elif settlement.kind is Kind.NAK:
                await message.nak(delay=(settlement.delay_ms or 0) / 1000 or None)
            else:
                await message.term()
        except Exception as error:
            log.warning("settling a job failed (%s); it may be delivered again", error)

    async def undecodable(self, message: Any, delivered: int, reason: str) -> None:
        """Reports a job nobody can read against the run and job its headers name, or keeps
        its bytes in the dead-letter stream; then TERMs it."""
        headers = message.headers or {}
        run_id = headers.get(names.HEADER_RUN_ID)
        job = headers.get(names.HEADER_JOB)
        text = f"job message cannot be decoded: {reason}"
        log.error("%s (subject %s)", text, message.subject)
        valid_job = job is not None and all(
            part and part.replace("-", "").replace("_", "").isalnum() for part in job.split(".")
        )
        if run_id and valid_job:

            def number(name: str) -> int:
                try:
                    return int(headers.get(name, "0"))
                except ValueError:
                    return 0

            event = JobEvent(
                schema_version=SCHEMA_VERSION,
                run_id=run_id,
                job=job or "",
                attempt=number(names.HEADER_ATTEMPT_OFFSET) + delivered,
                generation=number(names.HEADER_GENERATION),
                kind=EventKind.FAILED,
                at=utc_now(),
                worker=self.worker_id,
                error=error_text(text),
            )
            await self.store_event(message, event)
        else:
            dlq_headers = {names.HEADER_REASON: text, names.HEADER_ORIGINAL_SUBJECT: message.subject}
            await self.js.publish(
                names.dlq_subject(self.pool, run_id, job if valid_job else None),
                message.data,
                headers=dlq_headers,
            )
        await message.term()


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("module", help="the Python module whose jobs this worker runs, e.g. myteam.jobs")
    parser.add_argument("--pool", default=os.environ.get("SLUICE_POOL", "default"), help="the pool to serve")
    parser.add_argument("--concurrency", type=int, default=4, help="jobs run at once (default 4)")
    parser.add_argument(
        "--isolation",
        choices=("thread", "process"),
        default="thread",
        help="thread (default; cooperative cancellation) or process (a killable child per job)",
    )
    parser.add_argument("--worker-id", help="this worker's id (default host-pid-py)")
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        default=os.environ.get("SLUICE_LOG_LEVEL", "INFO").upper(),
        help="what the worker logs: INFO (default; a line per attempt), WARNING, … (SLUICE_LOG_LEVEL)",
    )
    parser.add_argument(
        "--max-nak-delay",
        type=float,
        default=NAK_DELAY_MAX_MS / 1000,
        help="longest retry delay waited out with a NAK, in seconds (default 30)",
    )
    for flag, help_text in (
        ("--nats-url", "NATS URL (SLUICE_NATS_URL)"),
        ("--nats-user", "NATS user (SLUICE_NATS_USER)"),
        ("--nats-password-file", "file holding the password (or SLUICE_NATS_PASSWORD)"),
        ("--nats-token-file", "file holding a token (or SLUICE_NATS_TOKEN)"),
        ("--nats-nkey", "nkey seed file (SLUICE_NATS_NKEY)"),
        ("--nats-creds", ".creds file (SLUICE_NATS_CREDS)"),
        ("--nats-tls-ca", "CA certificates (SLUICE_NATS_TLS_CA)"),
        ("--nats-tls-cert", "client certificate (SLUICE_NATS_TLS_CERT)"),
        ("--nats-tls-key", "client key (SLUICE_NATS_TLS_KEY)"),
        ("--nats-inbox-prefix", "inbox prefix (SLUICE_NATS_INBOX_PREFIX)"),
    ):
        parser.add_argument(flag, help=help_text)
    parser.set_defaults(handler=run_worker)


def run_worker(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    options = ConnectionOptions.resolve(
        url=args.nats_url,
        user=args.nats_user,
        password_file=args.nats_password_file,
        token_file=args.nats_token_file,
        nkey=args.nats_nkey,
        creds=args.nats_creds,
        tls_ca=args.nats_tls_ca,
        tls_cert=args.nats_tls_cert,
        tls_key=args.nats_tls_key,
        inbox_prefix=args.nats_inbox_prefix,
    )
    worker = Worker(
        options,
        args.pool,
        args.concurrency,
        args.module,
        args.isolation,
        args.worker_id,
        int(args.max_nak_delay * 1000),
    )
    asyncio.run(worker.run())
    return 0


__all__ = ["Plan", "Worker", "check_kinds", "check_server_version", "plan_redelivery"]
