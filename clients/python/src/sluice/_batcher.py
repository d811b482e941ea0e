"""Outcomes sent in event batches, as the Rust worker's `runtime/batcher.rs` does.

A group commit: an outcome goes out at once while fewer than EVENT_BATCHES_IN_FLIGHT batches
await JetStream's acknowledgement; otherwise outcomes gather until one comes back (or a batch
is full). Each caller waits until its own outcome is stored, so nothing is acked early; if a
batch is not stored, each of its outcomes is stored on its own (`alone`), as before batching.
Only outcomes after which the job's message is removed, and only for jobs whose message says
`batch_events`, come here (docs/protocol.md, "Events").
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

from ._wire import SCHEMA_VERSION, EventBatch, JobEvent

log = logging.getLogger("sluice.worker")

#: Most events in one batch (proto `limits::EVENTS_PER_BATCH_MAX`).
EVENTS_PER_BATCH_MAX = 64
#: Most bytes of encoded events in one batch (proto `limits::EVENT_BATCH_MAX_BYTES`).
EVENT_BATCH_MAX_BYTES = 256 * 1024
#: Batches awaiting JetStream's acknowledgement before outcomes gather (the Rust worker's
#: `limits::EVENT_BATCHES_IN_FLIGHT`).
EVENT_BATCHES_IN_FLIGHT = 2


def flush_now(events: int, size: int, in_flight: int) -> bool:
    """Whether the gathered outcomes (`events`, `size` bytes) go out now, with `in_flight`
    batches unacknowledged: while fewer than EVENT_BATCHES_IN_FLIGHT are, always; otherwise
    once a batch is full."""
    return events > 0 and (
        in_flight < EVENT_BATCHES_IN_FLIGHT or events >= EVENTS_PER_BATCH_MAX or size >= EVENT_BATCH_MAX_BYTES
    )


def batch_len(sizes: Iterable[int]) -> int:
    """How many of the waiting events (their sizes, oldest first) the next batch takes: as many
    as fit both limits, and at least one (an event bigger than a batch travels alone)."""
    total = 0
    count = 0
    for size in sizes:
        if count == EVENTS_PER_BATCH_MAX or (count > 0 and total + size > EVENT_BATCH_MAX_BYTES):
            break
        total += size
        count += 1
    return count


@dataclasses.dataclass
class _Waiting:
    event: JobEvent
    encoded: bytes
    stored: asyncio.Future[None]
    alone: Callable[[], Awaitable[None]]


class Batcher:
    """Sends outcomes in `EventBatch` messages on the worker's batch subject."""

    def __init__(
        self, publish: Callable[[str, bytes], Awaitable[object]], subject: str, worker_id: str
    ) -> None:
        self._publish = publish
        self._subject = subject
        self._worker_id = worker_id
        self._waiting: deque[_Waiting] = deque()
        self._size = 0
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def store(self, event: JobEvent, alone: Callable[[], Awaitable[None]]) -> None:
        """Returns once `event` is stored: in a batch, or by `alone()` if its batch was not."""
        encoded = event.encode()
        stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(event, encoded, stored, alone))
        self._size += len(encoded)
        self._flush()
        await stored

    def _flush(self) -> None:
        while flush_now(len(self._waiting), self._size, self._in_flight):
            count = batch_len(len(waiting.encoded) for waiting in self._waiting)
            batch = [self._waiting.popleft() for _ in range(count)]
            self._size -= sum(len(waiting.encoded) for waiting in batch)
            self._in_flight += 1
            task = asyncio.create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Waiting]) -> None:
        payload = EventBatch(
            schema_version=SCHEMA_VERSION,
            worker=self._worker_id,
            events=[waiting.encoded for waiting in batch],
        ).encode()
        try:
            await self._publish(self._subject, payload)
        except Exception as error:
            log.warning("storing a batch of %d outcomes failed (%s); storing each alone", len(batch), error)
            self._in_flight -= 1
            self._flush()
            await asyncio.gather(*(self._alone(waiting) for waiting in batch))
            return
        self._in_flight -= 1
        for waiting in batch:
            if not waiting.stored.done():
                waiting.stored.set_result(None)
        self._flush()

    @staticmethod
    async def _alone(waiting: _Waiting) -> None:
        try:
            await waiting.alone()
        except Exception as error:
            if not waiting.stored.done():
                waiting.stored.set_exception(error)
            return
        if not waiting.stored.done():
            waiting.stored.set_result(None)
