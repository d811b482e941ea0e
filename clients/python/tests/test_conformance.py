"""The SDK against the conformance tables the Rust side is also tested against
(proto/tests/conformance/)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from paths import CONFORMANCE

from sluice import _names, placeholders, retry, windows
from sluice._wire import MSG, RetryPolicy, format_time, parse_time
from sluice.errors import ConfigError


def table(name: str) -> Any:
    return json.loads((CONFORMANCE / f"{name}.json").read_text())


def policy(fields: dict[str, Any]) -> RetryPolicy:
    decoded = MSG(RetryPolicy)[0](fields, "policy")
    assert isinstance(decoded, RetryPolicy)
    return decoded


@pytest.mark.parametrize("case", table("windows")["cases"], ids=lambda case: f"{case['text']}@{case['zone']}")
def test_windows(case: dict[str, Any]) -> None:
    now = parse_time(case["now"])
    if "error" in case:
        with pytest.raises(ConfigError) as caught:
            windows.parse_window(case["text"], case["zone"], now)
        assert case["error"] in str(caught.value)
        return
    window = windows.parse_window(case["text"], case["zone"], now)
    assert (format_time(window.start), format_time(window.end)) == (case["start"], case["end"])
    if "hours" in case:
        assert window.end - window.start == timedelta(hours=case["hours"])


@pytest.mark.parametrize("case", table("windows")["zones"], ids=lambda case: case["zone"])
def test_zones(case: dict[str, Any]) -> None:
    if "error" in case:
        with pytest.raises(ConfigError, match=case["error"].replace("/", ".")):
            windows.parse_zone(case["zone"])
    else:
        windows.parse_zone(case["zone"])


@pytest.mark.parametrize("case", table("placeholders")["substitute"], ids=lambda case: case["text"])
def test_placeholder_substitution(case: dict[str, Any]) -> None:
    values: dict[str, str] = case["values"]
    if "error" in case:
        with pytest.raises(ConfigError) as caught:
            placeholders.substitute(case["text"], values.get)
        assert case["error"] in str(caught.value)
    else:
        assert placeholders.substitute(case["text"], values.get) == case["out"]


@pytest.mark.parametrize("case", table("placeholders")["check"], ids=lambda case: case["text"])
def test_placeholder_check(case: dict[str, Any]) -> None:
    if "error" in case:
        with pytest.raises(ConfigError) as caught:
            placeholders.check(case["text"], case["params"])
        assert case["error"] in str(caught.value)
    else:
        placeholders.check(case["text"], case["params"])


def test_placeholder_values_of_a_job() -> None:
    from sluice.context import placeholder_lookup

    values = table("placeholders")["values"]
    window = windows.new_window(parse_time(values["window"]["start"]), parse_time(values["window"]["end"]))
    lookup = placeholder_lookup(window, values["run_id"], values["job"], values["attempt"], values["params"])
    for name, expected in values["expect"].items():
        assert lookup(name) == expected, name


@pytest.mark.parametrize("case", table("retry")["delays"])
def test_retry_delays(case: dict[str, Any]) -> None:
    delay = retry.delay_after_ms(policy(case["policy"]), case["failed_attempt"], case["jitter_fraction"])
    assert delay == case["delay_ms"]


@pytest.mark.parametrize("case", table("retry")["another"])
def test_retry_another_attempt(case: dict[str, Any]) -> None:
    assert retry.allows_another_after(policy(case["policy"]), case["failed_attempt"]) is case["another"]


@pytest.mark.parametrize("case", table("retry")["settlement"], ids=lambda case: case["name"])
def test_retry_settlement(case: dict[str, Any]) -> None:
    offset = case.get("attempt_offset", 0)
    base = case.get("retry_base", offset)
    settlement = retry.settle(
        policy(case["policy"]),
        case["attempt"] - base,
        retry.Ending(case["ending"]),
        table("retry")["nak_delay_max_ms"],
        0.0,
    )
    assert settlement.kind.value == case["settlement"]
    if "delay_ms" in case:
        assert settlement.delay_ms == case["delay_ms"]


def test_cron_table_loads() -> None:
    # The SDK does not fire schedules (the coordinator does); the table's shape is checked.
    for case in table("cron")["cases"]:
        assert isinstance(case["cron"], str) and ("next" in case or "error" in case)


def test_names() -> None:
    names = table("names")
    for constant, value in names["constants"].items():
        assert getattr(_names, constant) == value, constant
    sample = names["sample"]
    for function, row in names["functions"].items():
        assert getattr(_names, function)(*(sample[arg] for arg in row["args"])) == row["out"], function
