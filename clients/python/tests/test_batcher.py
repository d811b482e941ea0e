"""The outcome batcher: when batches go out, what they hold, and that a batch not stored
stores each of its outcomes alone."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from sluice._batcher import (
    EVENT_BATCH_MAX_BYTES,
    EVENTS_PER_BATCH_MAX,
    Batcher,
    batch_len,
    flush_now,
)
from sluice._wire import SCHEMA_VERSION, EventBatch, EventKind, JobEvent


def event(job: str) -> JobEvent:
    return JobEvent(
        schema_version=SCHEMA_VERSION,
        run_id="0190b0a4-0000-7000-8000-000000000001",
        job=job,
        attempt=1,
        kind=EventKind.SUCCEEDED,
        at=datetime(2024, 3, 1, tzinfo=UTC),
        worker="w-1",
    )


def test_outcomes_go_out_at_once_below_two_in_flight_then_only_full_batches() -> None:
    assert flush_now(1, 100, 0) and flush_now(1, 100, 1)
    assert not flush_now(5, 100, 2), "two batches await their ack: gather"
    assert flush_now(EVENTS_PER_BATCH_MAX, 100, 2) and flush_now(2, EVENT_BATCH_MAX_BYTES, 2)
    assert not flush_now(0, 0, 0)


def test_a_batch_takes_what_fits_and_at_least_one() -> None:
    assert batch_len([10] * 100) == EVENTS_PER_BATCH_MAX
    assert batch_len([EVENT_BATCH_MAX_BYTES // 2] * 3) == 2
    assert batch_len([EVENT_BATCH_MAX_BYTES * 2, 10]) == 1, "a big event travels alone"
    assert batch_len([]) == 0


class FakeStream:
    """Publishes that wait until released; `fail` refuses them."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.batches: list[list[str]] = []
        self.gates: list[asyncio.Event] = []

    async def publish(self, subject: str, payload: bytes) -> None:
        assert subject == "sluice.events.p.batch.w-1"
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        if self.fail:
            raise ConnectionError("no responders")
        batch = EventBatch.decode(payload)
        assert batch.worker == "w-1"
        self.batches.append([JobEvent.decode(data).job for data in batch.events])

    def release(self) -> None:
        for gate in self.gates:
            gate.set()


def storing(stream: FakeStream) -> tuple[Callable[[str], Coroutine[Any, Any, None]], list[str]]:
    """A batcher on `stream`: stores a job's outcome; the jobs whose outcome was stored alone."""
    batcher = Batcher(stream.publish, "sluice.events.p.batch.w-1", "w-1")
    alone: list[str] = []

    async def store(job: str) -> None:
        async def by_itself() -> None:
            alone.append(job)

        await batcher.store(event(job), by_itself)

    return store, alone


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def test_outcomes_gather_while_two_batches_await_their_ack_and_each_caller_waits_for_its_own() -> None:
    async def scenario() -> None:
        stream = FakeStream()
        store, alone = storing(stream)
        first = [asyncio.create_task(store(job)) for job in ("a", "b", "c", "d", "e")]
        await settle()
        assert len(stream.gates) == 2, "a and b went out alone; c, d and e gather"
        assert not any(task.done() for task in first), "nothing is stored before its ack"
        stream.release()
        await settle()
        stream.release()
        await asyncio.gather(*first)
        assert stream.batches == [["a"], ["b"], ["c", "d", "e"]]
        assert alone == []

    asyncio.run(scenario())


def test_a_batch_that_is_not_stored_stores_each_outcome_alone() -> None:
    async def scenario() -> None:
        stream = FakeStream(fail=True)
        store, alone = storing(stream)
        tasks = [asyncio.create_task(store(job)) for job in ("a", "b", "c")]
        await settle()
        stream.release()
        await settle()
        stream.release()
        await asyncio.gather(*tasks)
        assert sorted(alone) == ["a", "b", "c"]
        assert stream.batches == []

    asyncio.run(scenario())
