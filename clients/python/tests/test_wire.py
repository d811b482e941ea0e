"""The golden vectors the Rust side writes decode into the SDK's classes and re-encode byte
for byte; bad messages are refused naming what is wrong."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import msgpack
import pytest
from paths import GOLDEN

from sluice import _wire
from sluice._wire import GOLDEN as CLASSES
from sluice.errors import WireError


def test_every_golden_vector_has_a_class() -> None:
    names = {path.stem for path in GOLDEN.glob("*.msgpack")}
    assert names, f"no golden vectors in {GOLDEN}"
    assert names == set(CLASSES), "a golden vector without an SDK class, or a class without a vector"


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_golden_vector_round_trips_byte_for_byte(name: str) -> None:
    data = (GOLDEN / f"{name}.msgpack").read_bytes()
    value = CLASSES[name].decode(data)
    assert value.encode() == data


@pytest.mark.parametrize("path", sorted((GOLDEN / "v1").glob("*.msgpack")), ids=lambda path: path.stem)
def test_schema_1_vectors_still_decode(path: object) -> None:
    from pathlib import Path

    assert isinstance(path, Path)
    value = CLASSES[path.stem].decode(path.read_bytes())
    assert value.schema_version == 1


def test_typed_fields_read_as_python_values() -> None:
    job = _wire.JobMessage.decode((GOLDEN / "job_message.msgpack").read_bytes())
    assert job.window.start == datetime(2024, 3, 1, tzinfo=timezone(timedelta(hours=-8)))
    assert job.config == {"model": "v3", "threshold": 0.5}
    assert job.retry.backoff is _wire.Backoff.EXPONENTIAL
    event = _wire.JobEvent.decode((GOLDEN / "job_event_short.msgpack").read_bytes())
    assert event.kind is _wire.EventKind.SUCCEEDED
    assert event.started_at == datetime(2024, 3, 2, 8, 0, 5, 1000, tzinfo=UTC)


def test_a_newer_schema_is_refused_with_its_version() -> None:
    data = msgpack.packb({"schema_version": 3, "run_id": "x"})
    with pytest.raises(_wire.NewerSchemaError, match="schema version 3 is newer"):
        _wire.JobEvent.decode(data)


def test_a_wrong_field_is_named() -> None:
    value = msgpack.unpackb((GOLDEN / "job_event.msgpack").read_bytes())
    value["attempt"] = "two"
    with pytest.raises(WireError, match=re.escape("field `job event.attempt`: expected an integer")):
        _wire.JobEvent.decode(msgpack.packb(value))
    del value["attempt"]
    with pytest.raises(WireError, match=re.escape("missing field `job event.attempt`")):
        _wire.JobEvent.decode(msgpack.packb(value))
    with pytest.raises(WireError, match="not MessagePack"):
        _wire.JobEvent.decode(b"\xc1")


def test_times_are_written_as_chrono_writes_them() -> None:
    assert _wire.format_time(datetime(2024, 3, 1, tzinfo=UTC)) == "2024-03-01T00:00:00Z"
    assert _wire.format_time(datetime(2024, 3, 1, 0, 0, 0, 20000, tzinfo=UTC)) == "2024-03-01T00:00:00.020Z"
    assert _wire.format_time(datetime(2024, 3, 1, 0, 0, 0, 1, tzinfo=UTC)) == "2024-03-01T00:00:00.000001Z"
    plus_one = timezone(timedelta(hours=1))
    assert _wire.format_time(datetime(2024, 3, 1, tzinfo=plus_one)) == "2024-03-01T00:00:00+01:00"
    assert _wire.parse_time("2024-03-01T00:00:00.123456789Z").microsecond == 123456
    with pytest.raises(WireError, match="has no time zone"):
        _wire.format_time(datetime(2024, 3, 1))
    with pytest.raises(WireError, match="not an RFC 3339 time"):
        _wire.parse_time("2024-03-01")


def test_a_workflow_job_without_a_record_is_in_the_state_its_run_began_with() -> None:
    record = _wire.RunRecord.decode((GOLDEN / "run_record.msgpack").read_bytes())
    assert record.first_state(0) is None, "a record from before queued_at_start: every job has a record"
    record.jobs = ["a", "late", "z"]
    record.queued_at_start = "5"  # jobs 0 and 2, as the Rust engine test has it
    states = [(job.name, job.state) for job in (record.first_state(i) for i in range(3)) if job is not None]
    assert states == [("a", "queued"), ("late", "blocked"), ("z", "queued")]
    first = record.first_state(0)
    assert first is not None and first.queued_at == record.created_at and first.attempts == 0
    assert record.first_state(3) is None
    again = _wire.RunRecord.decode(record.encode())
    assert again.queued_at_start == "5"
