"""The threads `thread`-mode jobs run on: one per slot, long-lived.

`concurrent.futures.ThreadPoolExecutor` costs, per job, a Python-level work queue with its
locks, a `concurrent.futures.Future` chained to an asyncio one, and a wake-up of the event
loop (a write to its self-pipe) for every result. Here a job goes through a `SimpleQueue`
(C), and results come back in a deque: the loop is woken once for all the results that
finish before it runs, which is what makes short jobs cheap.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
from collections.abc import Callable
from typing import Any

_Item = tuple["asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


class JobThreads:
    def __init__(self, loop: asyncio.AbstractEventLoop, count: int, name: str = "sluice-job") -> None:
        self._loop = loop
        self._jobs: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._done: collections.deque[tuple[asyncio.Future[Any], Any, BaseException | None]] = (
            collections.deque()
        )
        self._lock = threading.Lock()
        self._wake_pending = False
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{index}", daemon=True) for index in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, function: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Runs `function(*args)` on a free thread; the future resolves on the loop."""
        future: asyncio.Future[Any] = self._loop.create_future()
        self._jobs.put((future, function, args))
        return future

    def shutdown(self) -> None:
        """Lets each thread end once its job (if any) returns; does not wait."""
        for _ in self._threads:
            self._jobs.put(None)

    def _run(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            future, function, args = item
            value: Any = None
            error: BaseException | None = None
            try:
                value = function(*args)
            except BaseException as caught:
                error = caught
            with self._lock:
                self._done.append((future, value, error))
                wake = not self._wake_pending
                self._wake_pending = True
            if wake:
                try:
                    self._loop.call_soon_threadsafe(self._deliver)
                except RuntimeError:  # the loop is closed: nobody waits for results
                    return

    def _deliver(self) -> None:
        with self._lock:
            done = list(self._done)
            self._done.clear()
            self._wake_pending = False
        for future, value, error in done:
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)
