"""Windows `[start, end)` as `--window` reads them, computed in a time zone (DST days are 23
or 25 hours). The same rules as proto/src/window.rs; proto/tests/conformance/windows.json
holds both to them."""

from __future__ import annotations

import calendar
import re
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ._wire import Window, format_time, parse_time
from .errors import ConfigError, WireError

#: The longest `last Nd`, in days (proto limits::WINDOW_LAST_DAYS_MAX).
WINDOW_LAST_DAYS_MAX = 3660
#: How much of a bad window text an error repeats, in characters.
_SHOWN_CHARS = 120

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DIGITS = re.compile(r"^\+?\d+$")


def parse_zone(name: str) -> tzinfo:
    """An IANA time zone by name; an unknown one is a `ConfigError` naming it."""
    try:
        if name and not name.startswith("/"):
            return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        pass
    raise ConfigError(
        f"unknown time zone `{name[:64]}`: use an IANA name such as UTC, Europe/Berlin or America/Los_Angeles"
    )


def _exists(moment: datetime) -> bool:
    back = moment.astimezone(UTC).astimezone(moment.tzinfo)
    return back.replace(tzinfo=None) == moment.replace(tzinfo=None)


def _fixed(moment: datetime) -> datetime:
    offset = moment.utcoffset() or timedelta(0)
    return moment.astimezone(timezone(offset))


def local_midnight(day: date, zone: tzinfo) -> datetime:
    """Local midnight of `day`; where midnight does not exist (a zone that springs forward at
    00:00), the first whole hour of the day that does. Ambiguous: the earlier one."""
    for hour in range(5):
        moment = datetime.combine(day, time(hour), tzinfo=zone)
        if _exists(moment):
            return _fixed(moment)
    return datetime.combine(day, time(0), tzinfo=UTC)


def day_window(day: date, zone: tzinfo) -> Window:
    """The calendar day `day` in `zone`."""
    return Window(start=local_midnight(day, zone), end=local_midnight(day + timedelta(days=1), zone))


def _why_no_such_day(day: str) -> str:
    try:
        year, month, number = int(day[0:4]), int(day[5:7]), int(day[8:10])
    except ValueError:
        return f"{day} is not a day such as 2024-03-01"
    if not 1 <= month <= 12 or year < 1:
        return f"{day} does not exist: there is no month {month:02d} (months are 01 to 12)"
    if number == 0:
        return f"{day} does not exist: days of a month start at 01"
    length = calendar.monthrange(year, month)[1]
    return f"{day} does not exist: {calendar.month_name[month]} {year} has {length} days"


def _parse_day(day: str, shown: str) -> date:
    try:
        return date(int(day[0:4]), int(day[5:7]), int(day[8:10]))
    except ValueError:
        raise ConfigError(f"invalid window `{shown}`: {_why_no_such_day(day)}") from None


def _unreadable(shown: str) -> ConfigError:
    return ConfigError(
        f"invalid window `{shown}`: write a day (2024-03-01), `yesterday`, `today`, `last 7d`, DAY..DAY "
        "(2024-03-01..2024-03-07), or START..END in RFC 3339 (2024-03-01T00:00:00Z..2024-03-02T00:00:00Z)"
    )


def new_window(start: datetime, end: datetime) -> Window:
    """A window, checked not to be empty."""
    if end <= start:
        raise ConfigError(f"invalid window: end {format_time(end)} is not after start {format_time(start)}")
    return Window(start=start, end=end)


def parse_window(text: str, zone: tzinfo | str = "UTC", now: datetime | None = None) -> Window:
    """Reads what a user types after `--window`, relative to `now` (default: now), in `zone`:
    a day, `today`, `yesterday`, `last Nd`, DAY..DAY (both included) or START..END in RFC 3339
    (offsets kept). Bad text is a `ConfigError` that says what to write."""
    if isinstance(zone, str):
        zone = parse_zone(zone)
    now = now or datetime.now(UTC)
    trimmed = text.strip()
    shown = trimmed[:_SHOWN_CHARS]
    today = now.astimezone(zone).date()
    if trimmed == "today":
        return day_window(today, zone)
    if trimmed == "yesterday":
        return day_window(today - timedelta(days=1), zone)
    if trimmed.startswith("last"):
        count = trimmed[4:].strip()
        digits = count[:-1] if count.endswith("d") else ""
        if not _DIGITS.match(digits) or not 1 <= int(digits) <= WINDOW_LAST_DAYS_MAX:
            raise ConfigError(
                f"invalid window `{shown}`: write `last Nd` with N whole days from 1 to "
                f"{WINDOW_LAST_DAYS_MAX}, e.g. `last 7d`"
            )
        first = today - timedelta(days=int(digits))
        return Window(start=local_midnight(first, zone), end=local_midnight(today, zone))
    if ".." in trimmed:
        first_text, _, last_text = trimmed.partition("..")
        first_text, last_text = first_text.strip(), last_text.strip()
        first_is_day, last_is_day = bool(_DAY.match(first_text)), bool(_DAY.match(last_text))
        if first_is_day and last_is_day:
            first, last = _parse_day(first_text, shown), _parse_day(last_text, shown)
            if last < first:
                raise ConfigError(f"invalid window: the last day {last} is before the first day {first}")
            return Window(
                start=local_midnight(first, zone), end=local_midnight(last + timedelta(days=1), zone)
            )
        if not first_is_day and not last_is_day:

            def time_of(part: str, value: str) -> datetime:
                try:
                    return parse_time(value)
                except WireError:
                    raise ConfigError(
                        f"invalid window `{shown}`: {part} `{value[:60]}` is not an RFC 3339 time "
                        "such as 2024-03-01T00:00:00Z"
                    ) from None

            return new_window(time_of("start", first_text), time_of("end", last_text))
        raise ConfigError(
            f"invalid window `{shown}`: a range is two days (2024-03-01..2024-03-07) or two RFC 3339 "
            "times (2024-03-01T00:00:00Z..2024-03-02T00:00:00Z), not a day and a time"
        )
    if _DAY.match(trimmed):
        return day_window(_parse_day(trimmed, shown), zone)
    raise _unreadable(shown)
