"""The wire layer: every Sluice message and record as a typed class, and their MessagePack codec.

This is the only module that knows how messages are laid out (docs/protocol.md is the
description; the golden vectors in proto/tests/golden/ pin the bytes). Each class lists its
fields in the order the Rust structs declare them, because rmp-serde writes named maps in that
order and the SDK re-encodes a decoded message byte for byte. A field's metadata says how its
value is converted (`codec`) and when it is left out (`omit`: "none" like
`skip_serializing_if = "Option::is_none"`, "falsy" like `is_empty`/`is_zero`/`is_false`).
Readers ignore fields they do not know; a newer `schema_version` is refused.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, ClassVar, TypeVar

import msgpack

from .errors import WireError

#: The schema version this SDK writes and the newest it reads (docs/protocol.md "Encoding").
SCHEMA_VERSION = 2
#: The schema versions this SDK reads (announced in the worker registry).
PROTOCOL_VERSIONS = (1, 2)


# ---------------------------------------------------------------- times

_TIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}:\d{2})$"
)


def parse_time(text: str) -> datetime:
    """Reads an RFC 3339 time (offset kept; fractions beyond microseconds are dropped)."""
    match = _TIME.match(text)
    if match is None:
        raise WireError(f"`{text[:60]}` is not an RFC 3339 time such as 2024-03-01T00:00:00Z")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    micros = int((fraction or "0").ljust(6, "0")[:6])
    if zone in ("Z", "z"):
        tz: timezone = UTC
    else:
        sign = -1 if zone[0] == "-" else 1
        tz = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    try:
        return datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micros, tzinfo=tz
        )
    except ValueError as error:
        raise WireError(f"`{text[:60]}` is not an RFC 3339 time: {error}") from None


def format_time(moment: datetime) -> str:
    """Writes a time as chrono's serde does: `Z` for a zero offset, fractions only when not zero
    (3 digits when whole milliseconds, else 6)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise WireError(f"time {moment.isoformat()} has no time zone; Sluice times are absolute")
    # By hand, not strftime: every event carries a time or two, and strftime is the slow part.
    text = (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )
    micros = moment.microsecond
    if micros:
        text += f".{micros // 1000:03d}" if micros % 1000 == 0 else f".{micros:06d}"
    offset = moment.utcoffset() or timedelta(0)
    if offset == timedelta(0):
        return text + "Z"
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return f"{text}{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def utc_now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------- codecs

Codec = tuple[Callable[[Any, str], Any], Callable[[Any], Any]]


def _expect(kind: type | tuple[type, ...], what: str) -> Codec:
    def decode(value: Any, where: str) -> Any:
        if isinstance(value, bool) and kind is not bool:
            raise WireError(f"field `{where}`: expected {what}, found a boolean")
        if not isinstance(value, kind):
            raise WireError(f"field `{where}`: expected {what}, found {type(value).__name__}")
        return value

    return decode, lambda value: value


INT = _expect(int, "an integer")
STR = _expect(str, "a string")
BOOL = _expect(bool, "a boolean")
BYTES = _expect(bytes, "bytes")
ANY: Codec = (lambda value, where: value, lambda value: value)


def _decode_time(value: Any, where: str) -> datetime:
    if not isinstance(value, str):
        raise WireError(f"field `{where}`: expected an RFC 3339 time, found {type(value).__name__}")
    try:
        return parse_time(value)
    except WireError as error:
        raise WireError(f"field `{where}`: {error}") from None


TIME: Codec = (_decode_time, format_time)


def OPT(inner: Codec) -> Codec:
    return (
        lambda value, where: None if value is None else inner[0](value, where),
        lambda value: None if value is None else inner[1](value),
    )


def LIST(inner: Codec) -> Codec:
    def decode(value: Any, where: str) -> list[Any]:
        if not isinstance(value, list | tuple):
            raise WireError(f"field `{where}`: expected a list, found {type(value).__name__}")
        return [inner[0](item, f"{where}[{index}]") for index, item in enumerate(value)]

    return decode, lambda value: [inner[1](item) for item in value]


def MAP(inner: Codec) -> Codec:
    def decode(value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise WireError(f"field `{where}`: expected a map, found {type(value).__name__}")
        return {str(key): inner[0](item, f"{where}.{key}") for key, item in value.items()}

    return decode, lambda value: {key: inner[1](item) for key, item in value.items()}


E = TypeVar("E", bound=enum.Enum)


def ENUM(kind: type[E]) -> Codec:
    def decode(value: Any, where: str) -> E:
        try:
            return kind(value)
        except ValueError:
            allowed = ", ".join(f"`{member.value}`" for member in kind)
            raise WireError(f"field `{where}`: `{value}` is not one of {allowed}") from None

    return decode, lambda value: value.value


def MSG(kind: type[Any]) -> Codec:
    return (lambda value, where: _from_map(kind, value, where), lambda value: _to_map(value))


def wire(codec: Codec, *, omit: str | None = None, default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its codec and omission rule (`None`, "none" or "falsy")."""
    metadata = {"codec": codec, "omit": omit}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=metadata)
    if isinstance(default, list | dict):
        factory = type(default)
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _wire_name(field: dataclasses.Field[Any]) -> str:
    return str(field.metadata.get("name", field.name.rstrip("_")))


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    """How one field of a class travels, worked out once per class (`_plan`)."""

    attribute: str
    name: str
    decode: Callable[[Any, str], Any]
    encode: Callable[[Any], Any]
    omit: str | None
    required: bool


_PLANS: dict[type[Any], tuple[_Field, ...]] = {}


def _plan(kind: type[Any]) -> tuple[_Field, ...]:
    """The fields of `kind` in wire order; cached, since reading `dataclasses.fields` and
    the metadata of every field again for each message costs more than the decoding."""
    plan = _PLANS.get(kind)
    if plan is None:
        plan = tuple(
            _Field(
                attribute=field.name,
                name=_wire_name(field),
                decode=field.metadata["codec"][0],
                encode=field.metadata["codec"][1],
                omit=field.metadata.get("omit"),
                required=field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING,
            )
            for field in dataclasses.fields(kind)
        )
        _PLANS[kind] = plan
    return plan


def _to_map(value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in _plan(type(value)):
        item = getattr(value, field.attribute)
        omit = field.omit
        if omit is not None and ((omit == "none" and item is None) or (omit == "falsy" and not item)):
            continue
        out[field.name] = field.encode(item)
    return out


T = TypeVar("T")


def _from_map(kind: type[T], value: Any, where: str) -> T:
    if not isinstance(value, dict):
        raise WireError(f"{where}: expected a map, found {type(value).__name__}")
    arguments: dict[str, Any] = {}
    for field in _plan(kind):
        name = field.name
        if name in value:
            arguments[field.attribute] = field.decode(value[name], f"{where}.{name}" if where else name)
        elif field.required:
            raise WireError(f"missing field `{f'{where}.{name}' if where else name}`")
    return kind(**arguments)


class Message:
    """A top-level message or record: it has a `schema_version` and a name for errors."""

    WHAT: ClassVar[str] = "message"
    # Declared here for type checkers; each dataclass below defines it as its first field.
    schema_version: int

    def encode(self) -> bytes:
        """The MessagePack bytes, as the Rust side writes them."""
        packed: bytes = msgpack.packb(_to_map(self), use_bin_type=True)
        return packed

    @classmethod
    def decode(cls: type[M], data: bytes) -> M:
        """Reads one message; a newer schema version or a wrong field is a `WireError`
        naming it."""
        try:
            value = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except (ValueError, msgpack.UnpackException) as error:
            raise WireError(f"{cls.WHAT}: not MessagePack ({error})") from None
        if isinstance(value, dict):
            version = value.get("schema_version")
            if isinstance(version, int) and version > SCHEMA_VERSION:
                raise NewerSchemaError(
                    f"{cls.WHAT} of schema version {version} is newer than this SDK reads "
                    f"({SCHEMA_VERSION}); upgrade sluice-sdk"
                )
        return _from_map(cls, value, cls.WHAT)


M = TypeVar("M", bound=Message)


class NewerSchemaError(WireError):
    """A message of a newer schema than this SDK reads (a worker hands such a job back)."""


# ---------------------------------------------------------------- enums


class RunState(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobState(enum.StrEnum):
    BLOCKED = "blocked"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


class EventKind(enum.StrEnum):
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Backoff(enum.StrEnum):
    EXPONENTIAL = "exponential"
    FIXED = "fixed"


class LogStream(enum.StrEnum):
    STDOUT = "stdout"
    STDERR = "stderr"
    LOG = "log"


class Outcome(enum.StrEnum):
    APPLIED = "applied"
    REFUSED = "refused"


class RefusalKind(enum.StrEnum):
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    INVALID = "invalid"


class Rerun(enum.StrEnum):
    MISSING = "missing"
    FAILED = "failed"
    ALL = "all"


class Catchup(enum.StrEnum):
    NONE = "none"
    LATEST = "latest"
    ALL = "all"


class MarkAs(enum.StrEnum):
    SUCCEEDED = "succeeded"
    SKIPPED = "skipped"


# ---------------------------------------------------------------- parts


@dataclasses.dataclass(kw_only=True)
class Window:
    """A half-open interval `[start, end)`; times keep their offset."""

    start: datetime = wire(TIME)
    end: datetime = wire(TIME)


@dataclasses.dataclass(kw_only=True)
class RetryPolicy:
    max_attempts: int = wire(INT, default=3)
    backoff: Backoff = wire(ENUM(Backoff), default=Backoff.EXPONENTIAL)
    initial: str = wire(STR, default="10s")
    max: str = wire(STR, default="10m")
    jitter: bool = wire(BOOL, default=True)


@dataclasses.dataclass(kw_only=True)
class AttemptRecord:
    attempt: int = wire(INT)
    started_at: datetime = wire(TIME)
    finished_at: datetime | None = wire(OPT(TIME), default=None)
    error: str | None = wire(OPT(STR), default=None)
    worker: str = wire(STR, default="")
    redelivered_to: list[str] = wire(LIST(STR), default=[])
    spec_hash: str | None = wire(OPT(STR), omit="none", default=None)
    #: What a later attempt found of this one (the pod kind reports a Job a lost worker left).
    found_later: str | None = wire(OPT(STR), omit="none", default=None)


@dataclasses.dataclass(kw_only=True)
class EarlierAttempt:
    """What a later attempt found of an earlier attempt of the same job."""

    attempt: int = wire(INT)
    found: str = wire(STR)


@dataclasses.dataclass(kw_only=True)
class Mark:
    as_: MarkAs = wire(ENUM(MarkAs))
    by: str = wire(STR)
    at: datetime = wire(TIME)
    request_id: str | None = wire(OPT(STR), default=None)


@dataclasses.dataclass(kw_only=True)
class ChildSpec:
    """One child a job spawns: the fields of a YAML job plus `name`, without `needs`."""

    name: str = wire(STR)
    run: str = wire(STR)
    description: str | None = wire(OPT(STR), omit="none", default=None)
    command: list[str] | None = wire(OPT(LIST(STR)), omit="none", default=None)
    config: Any = wire(ANY, omit="none", default=None)
    pool: str | None = wire(OPT(STR), omit="none", default=None)
    retry: RetryPolicy | None = wire(OPT(MSG(RetryPolicy)), omit="none", default=None)
    timeout: str | None = wire(OPT(STR), omit="none", default=None)
    permanent_exit_codes: list[int] = wire(LIST(INT), omit="falsy", default=[])
    max_parallel: int | None = wire(OPT(INT), omit="none", default=None)
    max_child_failures: int | None = wire(OPT(INT), omit="none", default=None)


@dataclasses.dataclass(kw_only=True)
class ScheduleSpec:
    cron: str = wire(STR)
    timezone: str | None = wire(OPT(STR), omit="none", default=None)
    window: str = wire(STR, default="yesterday")
    catchup: Catchup = wire(ENUM(Catchup), default=Catchup.LATEST)


@dataclasses.dataclass(kw_only=True)
class BackfillWindow:
    window: Window = wire(MSG(Window))
    run_id: str = wire(STR)
    skip: str | None = wire(OPT(STR), default=None)
    state: RunState | None = wire(OPT(ENUM(RunState)), default=None)


@dataclasses.dataclass(kw_only=True)
class LogLine:
    at: datetime = wire(TIME)
    stream: LogStream = wire(ENUM(LogStream))
    text: str = wire(STR)


@dataclasses.dataclass
class ControlAction:
    """`"cancel"` / `"retry"` on the wire, or a one-key map such as
    `{"schedule_pause": {"name": "w"}}` (`arguments` keeps its fields in order)."""

    name: str
    arguments: dict[str, Any] | None = None

    CANCEL: ClassVar[str] = "cancel"
    RETRY: ClassVar[str] = "retry"


def _decode_action(value: Any, where: str) -> ControlAction:
    if isinstance(value, str):
        return ControlAction(value)
    if isinstance(value, dict) and len(value) == 1:
        ((name, arguments),) = value.items()
        if isinstance(arguments, dict):
            return ControlAction(str(name), arguments)
    raise WireError(f"field `{where}`: expected an action name or a map with one key")


ACTION: Codec = (
    _decode_action,
    lambda action: action.name if action.arguments is None else {action.name: action.arguments},
)


# ---------------------------------------------------------------- messages


@dataclasses.dataclass(kw_only=True)
class Submission(Message):
    WHAT: ClassVar[str] = "submission"
    schema_version: int = wire(INT)
    run_id: str = wire(STR)
    workflow: str = wire(STR)
    window: Window | None = wire(OPT(MSG(Window)), default=None)
    params: dict[str, str] = wire(MAP(STR), default={})
    idempotency_key: str | None = wire(OPT(STR), default=None)
    submitted_at: datetime | None = wire(OPT(TIME), default=None)
    origin: str | None = wire(OPT(STR), omit="none", default=None)


@dataclasses.dataclass(kw_only=True)
class JobMessage(Message):
    WHAT: ClassVar[str] = "job"
    schema_version: int = wire(INT)
    run_id: str = wire(STR)
    workflow: str = wire(STR)
    job: str = wire(STR)
    kind: str = wire(STR)
    command: list[str] | None = wire(OPT(LIST(STR)), default=None)
    config: Any = wire(ANY, default=None)
    window: Window = wire(MSG(Window))
    params: dict[str, str] = wire(MAP(STR), default={})
    pool: str = wire(STR)
    attempt_offset: int = wire(INT, default=0)
    retry_base: int | None = wire(OPT(INT), omit="none", default=None)
    generation: int = wire(INT, default=0)
    retry: RetryPolicy = wire(MSG(RetryPolicy))
    timeout_ms: int | None = wire(OPT(INT), default=None)
    permanent_exit_codes: list[int] = wire(LIST(INT), default=[])
    needs: list[str] = wire(LIST(STR), omit="falsy", default=[])
    image: str | None = wire(OPT(STR), omit="none", default=None)
    resources: Any = wire(ANY, omit="none", default=None)
    env: dict[str, Any] = wire(MAP(ANY), omit="falsy", default={})
    batch_events: bool = wire(BOOL, omit="falsy", default=False)

    def retry_base_or_offset(self) -> int:
        """Where the retry policy counts attempts from."""
        return self.attempt_offset if self.retry_base is None else self.retry_base


@dataclasses.dataclass(kw_only=True)
class JobEvent(Message):
    WHAT: ClassVar[str] = "job event"
    schema_version: int = wire(INT)
    run_id: str = wire(STR)
    job: str = wire(STR)
    attempt: int = wire(INT)
    generation: int = wire(INT, default=0)
    kind: EventKind = wire(ENUM(EventKind))
    at: datetime = wire(TIME)
    worker: str = wire(STR, default="")
    error: str | None = wire(OPT(STR), default=None)
    retry_at: datetime | None = wire(OPT(TIME), default=None)
    output: Any = wire(ANY, omit="none", default=None)
    spawned: int = wire(INT, omit="falsy", default=0)
    started_at: datetime | None = wire(OPT(TIME), omit="none", default=None)
    schedule_retry: bool = wire(BOOL, omit="falsy", default=False)
    earlier: list[EarlierAttempt] = wire(LIST(MSG(EarlierAttempt)), omit="falsy", default=[])


@dataclasses.dataclass(kw_only=True)
class RunRecord(Message):
    WHAT: ClassVar[str] = "run record"
    schema_version: int = wire(INT)
    id: str = wire(STR)
    workflow: str = wire(STR)
    spec_yaml: str = wire(STR, omit="falsy", default="")
    spec_hash: str | None = wire(OPT(STR), omit="none", default=None)
    window: Window = wire(MSG(Window))
    params: dict[str, str] = wire(MAP(STR), default={})
    state: RunState = wire(ENUM(RunState))
    created_at: datetime = wire(TIME)
    finished_at: datetime | None = wire(OPT(TIME), default=None)
    idempotency_key: str | None = wire(OPT(STR), default=None)
    error: str | None = wire(OPT(STR), default=None)
    traceparent: str | None = wire(OPT(STR), default=None)
    tracestate: str | None = wire(OPT(STR), default=None)
    jobs: list[str] = wire(LIST(STR), default=[])
    #: Which of `jobs` the run queued when it began (hex bitmap; docs/protocol.md).
    queued_at_start: str | None = wire(OPT(STR), omit="none", default=None)
    origin: str = wire(STR, default="manual")
    cancelled_by: str | None = wire(OPT(STR), omit="none", default=None)

    def first_state(self, index: int) -> JobRecord | None:
        """The record of workflow job `index` while it has none of its own: `queued` since
        `created_at` if its `queued_at_start` bit is set, else `blocked`. None for a record
        from before `queued_at_start` (its jobs all have records) or an index past `jobs`."""
        if self.queued_at_start is None or not 0 <= index < len(self.jobs):
            return None
        digits = self.queued_at_start
        digit = int(digits[index // 4], 16) if index // 4 < len(digits) else 0
        queued = bool(digit >> (index % 4) & 1)
        return JobRecord(
            schema_version=self.schema_version,
            run_id=self.id,
            name=self.jobs[index],
            state=JobState.QUEUED if queued else JobState.BLOCKED,
            queued_at=self.created_at if queued else None,
        )


@dataclasses.dataclass(kw_only=True)
class RunIndexEntry(Message):
    WHAT: ClassVar[str] = "run index entry"
    schema_version: int = wire(INT)
    run_id: str = wire(STR)
    workflow: str = wire(STR)
    window_start: datetime = wire(TIME)
    created_at: datetime = wire(TIME)
    origin: str = wire(STR)
    state: RunState | None = wire(OPT(ENUM(RunState)), default=None)
    finished_at: datetime | None = wire(OPT(TIME), default=None)
    previous: int | None = wire(OPT(INT), default=None)


@dataclasses.dataclass(kw_only=True)
class JobRecord(Message):
    WHAT: ClassVar[str] = "job record"
    schema_version: int = wire(INT)
    run_id: str = wire(STR)
    name: str = wire(STR)
    state: JobState = wire(ENUM(JobState))
    attempts: int = wire(INT, default=0)
    attempt_offset: int = wire(INT, default=0)
    generation: int = wire(INT, default=0)
    queued_at: datetime | None = wire(OPT(TIME), default=None)
    started_at: datetime | None = wire(OPT(TIME), default=None)
    finished_at: datetime | None = wire(OPT(TIME), default=None)
    retry_at: datetime | None = wire(OPT(TIME), default=None)
    error: str | None = wire(OPT(STR), default=None)
    attempt_history: list[AttemptRecord] = wire(LIST(MSG(AttemptRecord)), default=[])
    parent: str | None = wire(OPT(STR), omit="none", default=None)
    #: A child's job definition, kept as read (a YAML job's fields).
    definition: Any = wire(ANY, omit="none", default=None)
    children: int = wire(INT, omit="falsy", default=0)
    output: Any = wire(ANY, omit="none", default=None)
    attempts_omitted: int = wire(INT, omit="falsy", default=0)
    marked: Mark | None = wire(OPT(MSG(Mark)), omit="none", default=None)


@dataclasses.dataclass(kw_only=True)
class DeadLetter(Message):
    WHAT: ClassVar[str] = "dead letter"
    schema_version: int = wire(INT)
    job: JobMessage = wire(MSG(JobMessage))
    reason: str = wire(STR)
    attempts: list[AttemptRecord] = wire(LIST(MSG(AttemptRecord)), default=[])
    dead_at: datetime = wire(TIME)
    attempts_omitted: int = wire(INT, omit="falsy", default=0)


@dataclasses.dataclass(kw_only=True)
class ControlRequest(Message):
    WHAT: ClassVar[str] = "control request"
    schema_version: int = wire(INT)
    request_id: str | None = wire(OPT(STR), default=None)
    requested_by: str = wire(STR, default="")
    run_id: str | None = wire(OPT(STR), default=None)
    action: ControlAction = wire(ACTION)
    job: str | None = wire(OPT(STR), default=None)
    requested_at: datetime = wire(TIME)
    dead_letter: int | None = wire(OPT(INT), default=None)
    spec: str | None = wire(OPT(STR), omit="none", default=None)

    def action_name(self) -> str:
        """The action as outcomes name it (`replay` is a retry of one dead letter's job)."""
        if self.action.name == ControlAction.RETRY and self.dead_letter is not None:
            return "replay"
        return self.action.name


@dataclasses.dataclass(kw_only=True)
class ControlOutcome(Message):
    WHAT: ClassVar[str] = "control outcome"
    schema_version: int = wire(INT)
    request_id: str = wire(STR)
    run_id: str | None = wire(OPT(STR), default=None)
    action: str = wire(STR)
    outcome: Outcome = wire(ENUM(Outcome))
    kind: RefusalKind | None = wire(OPT(ENUM(RefusalKind)), default=None)
    reason: str = wire(STR)
    changed: list[str] = wire(LIST(STR), default=[])
    changed_total: int = wire(INT, default=0)
    requested_by: str = wire(STR, default="")
    at: datetime = wire(TIME)


@dataclasses.dataclass(kw_only=True)
class PendingCancel(Message):
    WHAT: ClassVar[str] = "pending cancel"
    schema_version: int = wire(INT)
    run_id: str = wire(STR)
    request_id: str | None = wire(OPT(STR), default=None)
    requested_by: str = wire(STR, default="")
    at: datetime = wire(TIME)


@dataclasses.dataclass(kw_only=True)
class PoolRecord(Message):
    WHAT: ClassVar[str] = "pool record"
    schema_version: int = wire(INT)
    name: str = wire(STR)
    ack_wait_ms: int = wire(INT)
    max_deliver: int = wire(INT)
    max_timeout_ms: int | None = wire(OPT(INT), default=None)
    kinds: list[str] = wire(LIST(STR), default=[])
    declared_at: datetime = wire(TIME)
    updated_at: datetime = wire(TIME)


@dataclasses.dataclass(kw_only=True)
class WorkerRecord(Message):
    WHAT: ClassVar[str] = "worker record"
    schema_version: int = wire(INT)
    worker_id: str = wire(STR)
    pool: str = wire(STR)
    kinds: list[str] = wire(LIST(STR), default=[])
    protocol_versions: list[int] = wire(LIST(INT), default=[])
    version: str = wire(STR)
    slots: int = wire(INT, default=0)
    busy: int = wire(INT, default=0)
    started_at: datetime = wire(TIME)
    leader: bool = wire(BOOL, default=False)


@dataclasses.dataclass(kw_only=True)
class ScheduleRecord(Message):
    WHAT: ClassVar[str] = "schedule record"
    schema_version: int = wire(INT)
    name: str = wire(STR)
    workflow: str = wire(STR)
    schedule: ScheduleSpec = wire(MSG(ScheduleSpec))
    paused: bool = wire(BOOL, default=False)
    handled_until: datetime = wire(TIME)
    created_at: datetime = wire(TIME)
    updated_at: datetime = wire(TIME)
    last_tick: datetime | None = wire(OPT(TIME), default=None)
    last_run: str | None = wire(OPT(STR), default=None)
    skipped_ticks: int = wire(INT, default=0)


@dataclasses.dataclass(kw_only=True)
class WorkflowRecord(Message):
    """A workflow applied with `sluice workflow apply`, in KV `sluice-workflows`."""

    WHAT: ClassVar[str] = "workflow record"
    schema_version: int = wire(INT)
    name: str = wire(STR)
    spec_hash: str = wire(STR)
    description: str | None = wire(OPT(STR), default=None)
    timezone: str | None = wire(OPT(STR), default=None)
    schedule: str | None = wire(OPT(STR), default=None)
    jobs: int = wire(INT)
    params: list[str] = wire(LIST(STR), default=[])
    created_at: datetime = wire(TIME)
    updated_at: datetime = wire(TIME)
    applied_by: str = wire(STR, default="")


@dataclasses.dataclass(kw_only=True)
class BackfillRecord(Message):
    WHAT: ClassVar[str] = "backfill record"
    schema_version: int = wire(INT)
    id: str = wire(STR)
    workflow: str = wire(STR)
    spec_yaml: str = wire(STR)
    from_: str = wire(STR)
    to: str = wire(STR)
    interval: str = wire(STR)
    max_parallel_runs: int = wire(INT)
    rerun: Rerun = wire(ENUM(Rerun))
    state: RunState = wire(ENUM(RunState))
    created_at: datetime = wire(TIME)
    finished_at: datetime | None = wire(OPT(TIME), default=None)
    windows: list[BackfillWindow] = wire(LIST(MSG(BackfillWindow)))
    next: int = wire(INT, default=0)


@dataclasses.dataclass(kw_only=True)
class LogBatch(Message):
    WHAT: ClassVar[str] = "log batch"
    schema_version: int = wire(INT)
    run_id: str = wire(STR)
    job: str = wire(STR)
    attempt: int = wire(INT)
    lines: list[LogLine] = wire(LIST(MSG(LogLine)))


@dataclasses.dataclass(kw_only=True)
class Rejection(Message):
    WHAT: ClassVar[str] = "rejection"
    schema_version: int = wire(INT)
    received_at: datetime = wire(TIME)
    run_id: str | None = wire(OPT(STR), default=None)
    workflow: str | None = wire(OPT(STR), default=None)
    reason: str = wire(STR)
    payload_bytes: int = wire(INT)


@dataclasses.dataclass(kw_only=True)
class SpawnBatch(Message):
    WHAT: ClassVar[str] = "spawn batch"
    schema_version: int = wire(INT)
    run_id: str = wire(STR)
    job: str = wire(STR)
    attempt: int = wire(INT)
    generation: int = wire(INT)
    children: list[ChildSpec] = wire(LIST(MSG(ChildSpec)))


@dataclasses.dataclass(kw_only=True)
class EventBatch(Message):
    """Several job events in one message (for jobs whose message says `batch_events`):
    each element is one `JobEvent`, encoded as it would be alone."""

    WHAT: ClassVar[str] = "event batch"
    schema_version: int = wire(INT)
    worker: str = wire(STR)
    events: list[bytes] = wire(LIST(BYTES))


#: Every top-level message class by its golden vector's name (proto/tests/golden/<name>.msgpack).
class NotifyEvent(enum.StrEnum):
    FAILED = "failed"
    SUCCEEDED = "succeeded"
    DEAD_LETTER = "dead_letter"
    SCHEDULE_MISSED = "schedule_missed"


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclasses.dataclass(kw_only=True)
class FailedJob:
    job: str = wire(STR)
    error: str = wire(STR)
    attempts: int = wire(INT)


@dataclasses.dataclass(kw_only=True)
class Notice(Message):
    """A notification waiting in the coordinator's outbox (proto/src/notify.rs)."""

    WHAT: ClassVar[str] = "notice"
    schema_version: int = wire(INT)
    id: str = wire(STR)
    event: NotifyEvent = wire(ENUM(NotifyEvent))
    target: str = wire(STR)
    workflow: str = wire(STR)
    run_id: str | None = wire(OPT(STR), omit="none", default=None)
    window: Window | None = wire(OPT(MSG(Window)), omit="none", default=None)
    state: RunState | None = wire(OPT(ENUM(RunState)), omit="none", default=None)
    origin: str | None = wire(OPT(STR), omit="none", default=None)
    failed_jobs: list[FailedJob] = wire(LIST(MSG(FailedJob)), default=[])
    failed_jobs_omitted: int = wire(INT, default=0)
    pool: str | None = wire(OPT(STR), omit="none", default=None)
    skipped_ticks: int | None = wire(OPT(INT), omit="none", default=None)
    at: datetime = wire(TIME)


@dataclasses.dataclass(kw_only=True)
class NotifyStatus(Message):
    """A notice's delivery, in KV `sluice-notifications`."""

    WHAT: ClassVar[str] = "notification status"
    schema_version: int = wire(INT)
    id: str = wire(STR)
    event: NotifyEvent = wire(ENUM(NotifyEvent))
    target: str = wire(STR)
    run_id: str | None = wire(OPT(STR), omit="none", default=None)
    state: DeliveryState = wire(ENUM(DeliveryState))
    status_code: int | None = wire(OPT(INT), default=None)
    attempts: int = wire(INT)
    last_at: datetime = wire(TIME)
    error: str | None = wire(OPT(STR), omit="none", default=None)


GOLDEN: Mapping[str, type[Message]] = {
    "submission": Submission,
    "job_message": JobMessage,
    "job_message_batch_events": JobMessage,
    "event_batch": EventBatch,
    "job_event": JobEvent,
    "job_event_short": JobEvent,
    "job_event_spawned": JobEvent,
    "run_record": RunRecord,
    "run_index_entry": RunIndexEntry,
    "job_record": JobRecord,
    "dead_letter": DeadLetter,
    "control_request": ControlRequest,
    "control_request_backfill": ControlRequest,
    "control_request_bulk": ControlRequest,
    "control_request_schedule": ControlRequest,
    "control_outcome": ControlOutcome,
    "pending_cancel": PendingCancel,
    "pool_record": PoolRecord,
    "worker_record": WorkerRecord,
    "schedule_record": ScheduleRecord,
    "workflow_record": WorkflowRecord,
    "backfill_record": BackfillRecord,
    "log_batch": LogBatch,
    "rejection": Rejection,
    "spawn_batch": SpawnBatch,
    "notice": Notice,
    "notify_status": NotifyStatus,
}
