"""Dynamic micro-batching: concurrent requests share one forward pass.

Requests put their decoded image in a bounded queue and await a future. A single worker task takes the first image,
waits up to `max_wait_s` for more (or until `max_batch` are there), and runs the whole batch through the model in a
thread of its own, so the event loop keeps accepting and answering requests meanwhile. While a batch runs, the next
one gathers, so under load batches fill up without waiting at all. `max_batch=1` is one image at a time.

A full queue refuses at once (`QueueFull`, which the app answers with 503 and Retry-After) instead of letting latency
and memory grow without bound. A request takes its place in the queue (`reserve()`) before it decodes its image, so
images being decoded count towards `max_queue` as well as those waiting. A request that gave up (timed out,
disconnected) leaves the queue at once: it neither runs nor takes room.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from peopleseg.errors import PeoplesegError

Item = TypeVar("Item")
Result = TypeVar("Result")


class QueueFull(PeoplesegError):
    """The batcher's queue is at its bound; `retry_after_s` estimates when there will be room."""

    def __init__(self, depth: int, retry_after_s: int) -> None:
        super().__init__(f"the server is busy ({depth} images queued); retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class BatcherStopped(PeoplesegError):
    """The batcher is not running (the server is starting or shutting down)."""


@dataclass
class Batched(Generic[Result]):
    """One item's answer, with the size of the batch it rode in (for headers and tests)."""

    result: Result
    batch_size: int


@dataclass(eq=False)  # a job is itself: equality by identity, so the queue can withdraw it (items may be arrays)
class _Job(Generic[Item]):
    item: Item
    future: asyncio.Future
    queued_at: float


class Slot:
    """A place in a batcher's queue, held from before its item exists (while the image is decoded) until the item is
    queued by `submit(item, slot)` or the place is released. Releasing twice is harmless."""

    def __init__(self, batcher: MicroBatcher[Any, Any]) -> None:
        self._batcher = batcher
        self._held = True
        self._deferred = False

    def release(self) -> None:
        """Give the place back, unless `release_when_done` holds it for work still running."""
        if self._held and not self._deferred:
            self._held = False
            self._batcher._reserved -= 1

    def release_when_done(self, work: asyncio.Future) -> None:
        """Keep the place until `work` ends: a thread cannot be stopped, so the pixels an abandoned decode is still
        producing must keep counting towards the bound."""
        self._deferred = True

        def done(future: asyncio.Future) -> None:
            if not future.cancelled():
                future.exception()  # retrieved: the caller that gave up is not there to hear of it
            self._deferred = False
            self.release()

        work.add_done_callback(done)

    def _hand_over(self) -> None:
        # submit() queues the item in the same step: the place passes to it, never counted twice or not at all.
        if not self._held:
            raise RuntimeError("this queue place was already released")
        self._held = False
        self._batcher._reserved -= 1


class MicroBatcher(Generic[Item, Result]):
    """Gathers items submitted concurrently into batches for `run_batch(items) -> results` (same order, same length).

    `on_batch(size, seconds)` is called after each batch (for metrics). Use it as `async with batcher:` or call
    `start()` and `stop()` from the event loop that will submit.
    """

    def __init__(
        self,
        run_batch: Callable[[Sequence[Item]], Sequence[Result]],
        *,
        max_batch: int = 8,
        max_wait_s: float = 0.01,
        max_queue: int = 64,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_s >= 0")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._pending: collections.deque[_Job[Item]] = collections.deque()
        self._reserved = 0  # places held by requests still decoding their image (`reserve()`)
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._seconds_per_batch = 0.0  # a moving average, for Retry-After
        self.batches = 0
        self.items = 0

    # --- life cycle ------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._worker is not None:
            return
        self._wakeup = asyncio.Event()
        # One model thread: batches run one after another, and the model's own threads do the parallel work.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="peopleseg-batch")
        self._worker = asyncio.create_task(self._work(), name="peopleseg-batcher")

    async def stop(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(BatcherStopped("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def __aenter__(self) -> MicroBatcher[Item, Result]:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    # --- submitting --------------------------------------------------------------------------------------------------

    def depth(self) -> int:
        """Items being prepared (reserved places) or waiting for the model, not counting the batch running now."""
        return len(self._pending) + self._reserved

    def is_full(self) -> bool:
        return self.depth() >= self.max_queue

    def retry_after_s(self) -> int:
        """Whole seconds until the queue has likely drained enough for one more item (at least 1)."""
        batches_ahead = math.ceil((self.depth() + 1) / self.max_batch)
        return max(1, math.ceil(batches_ahead * self._seconds_per_batch))

    def check_room(self) -> None:
        """Raise `QueueFull` (or `BatcherStopped`) now, before the caller spends work on an item that cannot queue."""
        if not self.running:
            raise BatcherStopped("the model is not ready")
        if self.is_full():
            raise QueueFull(self.depth(), self.retry_after_s())

    def reserve(self) -> Slot:
        """Take a place in the queue now, for an item still to be made (an image to decode), or raise as
        `check_room` does. Pass the slot to `submit`, and release it if the item is never submitted."""
        self.check_room()
        self._reserved += 1
        return Slot(self)

    async def submit(self, item: Item, slot: Slot | None = None) -> Batched[Result]:
        """Queue `item` (in the place `slot` holds, if given) and wait for its result. Cancelling the wait withdraws
        the item if its batch has not run."""
        if slot is None:
            self.check_room()
        elif not self.running:
            slot.release()
            raise BatcherStopped("the model is not ready")
        else:
            slot._hand_over()
        assert self._wakeup is not None
        job = _Job(item, asyncio.get_running_loop().create_future(), time.perf_counter())
        self._pending.append(job)
        self._wakeup.set()
        try:
            return await job.future
        except asyncio.CancelledError:
            # Leave the queue now, not when the batch running meanwhile ends: dead jobs would fill it (503 busy).
            with contextlib.suppress(ValueError):  # already taken for a batch
                self._pending.remove(job)
            raise

    # --- the worker --------------------------------------------------------------------------------------------------

    async def _work(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            deadline = loop.time() + self.max_wait_s
            while len(self._pending) < self.max_batch and (remaining := deadline - loop.time()) > 0:
                self._wakeup.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
            jobs = self._take()
            if jobs:
                await self._run(loop, jobs)

    def _take(self) -> list[_Job[Item]]:
        jobs: list[_Job[Item]] = []
        while self._pending and len(jobs) < self.max_batch:
            job = self._pending.popleft()
            if not job.future.done():  # done already = cancelled by a caller that gave up: no work for it
                jobs.append(job)
        return jobs

    async def _run(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job[Item]]) -> None:
        start = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self.run_batch, [job.item for job in jobs])
            if len(results) != len(jobs):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(jobs)} items")
        except asyncio.CancelledError:  # stop() while a batch runs: its requests end now, not at their timeout
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(BatcherStopped("the server is shutting down"))
            raise
        except Exception as exc:  # every waiting request learns of the failure; the worker keeps serving
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        finally:
            seconds = time.perf_counter() - start
            self._seconds_per_batch = seconds if not self.batches else 0.8 * self._seconds_per_batch + 0.2 * seconds
            self.batches += 1
            self.items += len(jobs)
            if self.on_batch is not None:
                self.on_batch(len(jobs), seconds)
        for job, result in zip(jobs, results, strict=True):
            if not job.future.done():
                job.future.set_result(Batched(result, len(jobs)))


def batch_stats(batcher: MicroBatcher[Any, Any]) -> dict[str, float]:
    """Batches run, images run, and their mean batch size."""
    mean = batcher.items / batcher.batches if batcher.batches else 0.0
    return {"batches": batcher.batches, "images": batcher.items, "mean_batch_size": round(mean, 3)}
