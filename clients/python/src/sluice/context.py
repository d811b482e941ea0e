"""What a running job sees: `Context` (run id, job, attempt, window, params, inputs, a logger,
progress, cancellation, spawn and fan_out) and `current_context()`."""

from __future__ import annotations

import contextvars
import dataclasses
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from ._wire import ChildSpec, Window, format_time
from .errors import SluiceError

#: A job's output, as JSON text, at most (bytes; proto spawn::OUTPUT_MAX_BYTES).
OUTPUT_MAX_BYTES = 64 * 1024
#: Children one job may spawn, at most (proto spawn::CHILDREN_MAX).
CHILDREN_MAX = 100_000
#: The longest log line shipped; longer ones are cut (bytes; proto limits::LOG_LINE_MAX_BYTES).
LOG_LINE_MAX_BYTES = 16 * 1024

#: The config key under which a fan-out child carries its call's arguments.
CALL_KEY = "__sluice_call__"

_current: contextvars.ContextVar[Context] = contextvars.ContextVar("sluice_context")


def uuid7() -> str:
    """A UUIDv7 (48-bit Unix milliseconds, then random bits): what run and request ids are."""
    ms = time.time_ns() // 1_000_000
    raw = bytearray(ms.to_bytes(6, "big") + os.urandom(10))
    raw[6] = (raw[6] & 0x0F) | 0x70
    raw[8] = (raw[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(raw)))


def placeholder_lookup(
    window: Window, run_id: str, job: str, attempt: int, params: Mapping[str, str]
) -> Callable[[str], str | None]:
    """The value of each placeholder name for one attempt (the worker's one table)."""

    def lookup(name: str) -> str | None:
        match name:
            case "start":
                return format_time(window.start)
            case "end":
                return format_time(window.end)
            case "run_id":
                return run_id
            case "job":
                return job
            case "attempt":
                return str(attempt)
        if name.startswith("params."):
            return params.get(name[len("params.") :])
        return None

    return lookup


class LogLines(logging.Handler):
    """Collects a job's log records as lines for the logs stream (the worker ships them)."""

    def __init__(self, sink: Callable[[str, str], None]) -> None:
        super().__init__(logging.INFO)
        self._sink = sink
        self.setFormatter(logging.Formatter("%(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._sink("log", self.format(record))
        except Exception:  # a log line must never fail a job
            self.handleError(record)


@dataclasses.dataclass
class Context:
    """One attempt of one job. `perform` may take it as a fourth parameter; inside a job,
    `sluice.current_context()` returns the same object."""

    run_id: str
    workflow: str
    job: str
    attempt: int
    window: Window
    params: dict[str, str] = dataclasses.field(default_factory=dict)
    #: The outputs of the jobs this one needs, by job name.
    inputs: dict[str, Any] = dataclasses.field(default_factory=dict)
    config: Any = None
    generation: int = 0
    pool: str = "local"
    worker_id: str = "local"
    #: The run's W3C trace context (the job message's headers), for spans that nest under it.
    traceparent: str | None = None
    tracestate: str | None = None
    #: Called with (stream, text) for each log line; the worker batches them to the logs stream.
    log_sink: Callable[[str, str], None] | None = None
    _cancel: threading.Event = dataclasses.field(default_factory=threading.Event)
    _children: list[ChildSpec] = dataclasses.field(default_factory=list)
    _logger: logging.Logger | None = None

    @property
    def start(self) -> datetime:
        return self.window.start

    @property
    def end(self) -> datetime:
        return self.window.end

    @property
    def logger(self) -> logging.Logger:
        """A logger whose lines reach `sluice logs` (and stderr in a local run)."""
        if self._logger is None:
            # Not logging.getLogger: that keeps every logger for ever, one per attempt.
            logger = logging.Logger(f"sluice.job.{self.job}", logging.INFO)
            logger.propagate = False
            logger.addHandler(LogLines(self._ship))
            self._logger = logger
        return self._logger

    def _ship(self, stream: str, text: str) -> None:
        text = text.encode()[:LOG_LINE_MAX_BYTES].decode(errors="ignore")
        if self.log_sink is not None:
            self.log_sink(stream, text)

    def log(self, text: str) -> None:
        """Writes one line to the job's log."""
        self._ship("log", text)

    def progress(self, done: float, total: float | None = None, message: str = "") -> None:
        """Reports how far the job is, as a log line (`progress 3/10 files`)."""
        amount = f"{done:g}/{total:g}" if total is not None else f"{done:g}"
        self._ship("log", f"progress {amount} {message}".rstrip())

    @property
    def cancelled(self) -> bool:
        """True once the job should stop: its run was cancelled, it timed out, or the worker
        drains. Long jobs check it (threads cannot be killed)."""
        return self._cancel.is_set()

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Sleeps until cancelled or `timeout` seconds pass; returns whether cancelled."""
        return self._cancel.wait(timeout)

    def cancel(self) -> None:
        self._cancel.set()

    def spawn(self, name: str, run: str, config: Any = None, **fields: Any) -> None:
        """Adds a child job (started once this attempt succeeds; children of a failed attempt
        never run). `fields` are the other fields of a YAML job: command, pool, retry,
        timeout, permanent_exit_codes, max_parallel, max_child_failures, description."""
        if len(self._children) >= CHILDREN_MAX:
            raise SluiceError(f"a job may spawn at most {CHILDREN_MAX} children")
        if config is not None:
            _check_json(config, f"child `{name}`'s config")
        self._children.append(ChildSpec(name=name, run=run, config=config, **fields))

    def fan_out(
        self,
        function: Callable[..., Any],
        items: Iterable[Any],
        max_parallel: int | None = None,
        name: str | None = None,
        retry: Mapping[str, Any] | None = None,
    ) -> None:
        """Runs `function(item)` for each item as a child job of this one, on any worker of the
        pool, each retried and dead-lettered on its own. `function` is a module-level
        `@sluice.job` function; items must be JSON values. Children run after this attempt
        succeeds; their results reach what needs this job as `inputs[job]["children"]`.
        How many run at once is the parent's `max_parallel:` in the workflow (a child cannot
        change it); `max_parallel` here is accepted for symmetry with the YAML and unused."""
        del max_parallel
        from ._wire import MSG, RetryPolicy
        from .job import job_name_of

        # `retry`: each child's policy, as in YAML ({max_attempts, backoff, initial, max, jitter}).
        policy = MSG(RetryPolicy)[0](dict(retry), "retry") if retry is not None else None

        kind = job_name_of(function)
        prefix = name or kind
        for index, item in enumerate(items):
            _check_json(item, f"fan_out item {index}")
            # On this pool: the function is a Python job (a child without `pool` would go to
            # the workflow's default pool).
            self.spawn(
                f"{prefix}-{index}", kind, config={CALL_KEY: {"args": [item]}}, pool=self.pool, retry=policy
            )

    def take_children(self) -> list[ChildSpec]:
        children, self._children = self._children, []
        return children


def _check_json(value: Any, what: str) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as error:
        raise SluiceError(f"{what} is not a JSON value: {error}") from None


def current_context() -> Context:
    """The `Context` of the job running in this thread (or process); outside a job, an error."""
    try:
        return _current.get()
    except LookupError:
        raise SluiceError("sluice.current_context() called outside a running job") from None


def _enter(context: Context) -> contextvars.Token[Context]:
    return _current.set(context)


def _leave(token: contextvars.Token[Context]) -> None:
    _current.reset(token)
