"""Retry delays and how a worker settles an attempt: the rules of proto/src/retry.rs and the
Rust worker's `settle` (proto/tests/conformance/retry.json holds both to them)."""

from __future__ import annotations

import dataclasses
import enum
import re

from ._wire import Backoff, RetryPolicy
from .errors import ConfigError

#: A job handed back for a newer schema waits this long before it is offered again (ms).
NEWER_SCHEMA_NAK_DELAY_MS = 5000
#: The longest retry delay a worker waits out with a NAK (ms); longer ones the coordinator
#: schedules (the Rust worker's `--max-nak-delay`).
NAK_DELAY_MAX_MS = 30_000
#: Ten years: no duration is longer (ms).
DURATION_MAX_MS = 10 * 366 * 86_400_000

_PART = re.compile(r"(\d+)([A-Za-z]*)")
_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(text: str) -> int:
    """`500ms`, `30s`, `10m`, `2h`, `1d`, `1h30m` in milliseconds."""

    def error(reason: str) -> ConfigError:
        return ConfigError(
            f"invalid duration `{text[:40]}`: {reason} (write e.g. 500ms, 30s, 10m, 2h, 1d or 1h30m)"
        )

    rest = text.strip()
    if not rest:
        raise error("it is empty")
    total = 0
    while rest:
        match = _PART.match(rest)
        if match is None:
            raise error("each part must start with a number")
        value, unit = match.groups()
        if not unit:
            raise error("a unit is missing")
        if unit not in _UNITS:
            raise error("unknown unit")
        total += int(value) * _UNITS[unit]
        rest = rest[match.end() :]
    if total > DURATION_MAX_MS:
        raise error("longer than ten years")
    return total


def allows_another_after(policy: RetryPolicy, attempt: int) -> bool:
    """Whether series attempt `attempt` (1-based) that just failed may be followed by another."""
    return attempt < policy.max_attempts


def delay_after_ms(policy: RetryPolicy, failed_attempt: int, jitter_fraction: float) -> int:
    """The delay before the attempt after `failed_attempt`, in ms; `jitter_fraction` in [0, 1]
    comes from the caller's random source."""
    initial = parse_duration_ms(policy.initial)
    if policy.backoff == Backoff.FIXED:
        base = initial
    else:
        exponent = min(max(failed_attempt - 1, 0), 31)
        base = initial * (1 << exponent)
    capped = min(base, parse_duration_ms(policy.max))
    if not policy.jitter:
        return capped
    fraction = min(max(jitter_fraction, 0.0), 1.0)
    return round(capped * (0.5 + 0.5 * fraction))


class Ending(enum.StrEnum):
    """How an attempt ended, as far as settling its message goes."""

    SUCCEEDED = "succeeded"
    RETRYABLE = "retryable"
    PERMANENT = "permanent"
    UNDECODABLE = "undecodable"
    NEWER_SCHEMA = "newer_schema"
    UNKNOWN_KIND = "unknown_kind"
    HANDED_BACK = "handed_back"
    STOPPED = "stopped"


class Kind(enum.StrEnum):
    ACK = "ack"
    NAK = "nak"
    SCHEDULE_RETRY = "schedule_retry"
    TERM = "term"


@dataclasses.dataclass(frozen=True)
class Settlement:
    """What becomes of a job's message once its event is stored; `delay_ms` for a NAK or a
    scheduled retry (the event's `retry_at` is now + delay)."""

    kind: Kind
    delay_ms: int | None = None

    @property
    def retries(self) -> bool:
        return self.kind in (Kind.NAK, Kind.SCHEDULE_RETRY)


def settle(
    policy: RetryPolicy | None,
    series_attempt: int,
    ending: Ending,
    nak_delay_max_ms: int = NAK_DELAY_MAX_MS,
    jitter_fraction: float = 0.5,
) -> Settlement:
    """Decides the settlement of an attempt that ended with `ending`. `series_attempt` is the
    attempt counted from the job's retry base; `policy` is None when the job cannot be read."""
    if ending in (Ending.SUCCEEDED, Ending.STOPPED):
        return Settlement(Kind.ACK)
    if ending is Ending.HANDED_BACK:
        return Settlement(Kind.NAK, 0)
    if ending is Ending.NEWER_SCHEMA:
        return Settlement(Kind.NAK, NEWER_SCHEMA_NAK_DELAY_MS)
    if ending is not Ending.RETRYABLE or policy is None or not allows_another_after(policy, series_attempt):
        return Settlement(Kind.TERM)
    delay = delay_after_ms(policy, series_attempt, jitter_fraction)
    return Settlement(Kind.NAK if delay <= nak_delay_max_ms else Kind.SCHEDULE_RETRY, delay)
