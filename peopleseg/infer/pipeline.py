"""A three-stage threaded pipeline for video: decode -> batch + process -> consume, in order, with back-pressure.

Each stage runs in its own thread and hands work on through a bounded queue, so decoding, the model and encoding
overlap, and a slow stage makes the others wait instead of filling memory. At most about
2 * queue_size + batch_size frames are in flight. The first exception in any stage (or a Ctrl-C in the caller's thread)
stops every stage and is re-raised in the caller's thread; the consume stage has finished by then, so a `VideoWriter`
that the caller closes afterwards is never written to concurrently.

It knows nothing about models: `process_batch(frames) -> results` (one result per frame) and `consume(frame, result)`
are the caller's.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

from peopleseg.infer.sources import Frame

T = TypeVar("T")

POLL_S = 0.05  # how often a blocked stage looks up to see whether it should stop
# Stages other than consume only read frames and run the model; they are given this long to notice a stop.
JOIN_TIMEOUT_S = 5.0


@dataclass
class PipelineStats:
    """What a run did: frames consumed, wall time, frames per second, and batches processed."""

    frames: int
    seconds: float
    fps: float
    batches: int


class _Stop(Exception):
    """Raised inside a stage when another stage failed or the caller stopped the run."""


class _End:
    """The end-of-stream marker passed down the queues."""


_END = _End()


@dataclass
class _Result(Generic[T]):
    frame: Frame
    value: T


class _FpsColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} fps" if speed else "-- fps", style="progress.data.speed")


class _Run:
    """The shared state of one run: the queues, the stop flag and the first error."""

    def __init__(self, queue_size: int) -> None:
        self.frames: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self.results: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self.stop = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._lock = threading.Lock()

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = exc
        self.stop.set()

    def put(self, target: queue.Queue[Any], item: object) -> None:
        while True:
            if self.stop.is_set():
                raise _Stop
            try:
                target.put(item, timeout=POLL_S)
                return
            except queue.Full:
                continue

    def get(self, source: queue.Queue[Any]) -> Any:
        while True:
            if self.stop.is_set():
                raise _Stop
            try:
                return source.get(timeout=POLL_S)
            except queue.Empty:
                continue


def run_pipeline(
    frames: Iterable[Frame],
    process_batch: Callable[[list[Frame]], list[T]],
    consume: Callable[[Frame, T], None],
    *,
    batch_size: int = 1,
    queue_size: int = 8,
    progress: bool = True,
    total: int | None = None,
    description: str = "frames",
    side_niceness: int = 0,
) -> PipelineStats:
    """Run every frame through `process_batch` in batches of `batch_size` and hand each result to `consume`, in order.

    Batches are full except the last. `total` (default: `frames.frame_count` when the source knows it) sizes the
    progress bar, which is drawn only when `progress` is true and the console is a terminal.

    `side_niceness` > 0 lowers the scheduling priority of the decode and consume threads (and of the codec threads
    they start) by that many nice levels, where the OS allows it per thread (Linux). When the model has every core,
    an equal-priority encoder that preempts one of its threads stalls the other at the next barrier; at a lower
    priority the side stages run in the model's idle moments and between its operators instead.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if queue_size < 1:
        raise ValueError(f"queue_size must be >= 1, got {queue_size}")
    if total is None:
        total = getattr(frames, "frame_count", None)
    run = _Run(queue_size)
    counts = {"frames": 0, "batches": 0}
    console = Console(stderr=True)
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _FpsColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not progress or not console.is_terminal,
    )
    task = bar.add_task(description, total=total)

    def decode() -> None:
        iterator = iter(frames)
        try:
            for frame in iterator:
                run.put(run.frames, frame)
            run.put(run.frames, _END)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()  # a generator's own clean-up runs here, in the thread that iterated it

    def process() -> None:
        while True:
            batch: list[Frame] = []
            item = None
            while len(batch) < batch_size:
                item = run.get(run.frames)
                if item is _END:
                    break
                batch.append(item)
            if batch:
                values = process_batch(batch)
                if len(values) != len(batch):
                    raise ValueError(f"process_batch returned {len(values)} results for a batch of {len(batch)} frames")
                counts["batches"] += 1
                for frame, value in zip(batch, values, strict=True):
                    run.put(run.results, _Result(frame, value))
            if item is _END:
                run.put(run.results, _END)
                return

    def consume_all() -> None:
        while True:
            item = run.get(run.results)
            if item is _END:
                run.done.set()
                return
            consume(item.frame, item.value)
            counts["frames"] += 1
            bar.advance(task)

    def stage(target: Callable[[], None], niceness: int) -> Callable[[], None]:
        def body() -> None:
            if niceness > 0:
                _lower_priority(niceness)
            try:
                target()
            except _Stop:
                pass
            except BaseException as exc:
                run.fail(exc)

        return body

    threads = [
        threading.Thread(target=stage(fn, niceness), name=f"peopleseg-{name}", daemon=True)
        for name, fn, niceness in (
            ("decode", decode, side_niceness),
            ("process", process, 0),
            ("consume", consume_all, side_niceness),
        )
    ]
    start = time.perf_counter()
    try:
        with bar:
            for thread in threads:
                thread.start()
            # The caller's thread only supervises; short waits keep it responsive to Ctrl-C.
            while not run.done.wait(POLL_S) and not run.stop.is_set():
                pass
    except BaseException as exc:  # KeyboardInterrupt (or SystemExit) in the caller's thread
        run.fail(exc)
        raise
    finally:
        run.stop.set()
        _join(threads)
    if run.error is not None:
        raise run.error
    seconds = time.perf_counter() - start
    frames_done = counts["frames"]
    return PipelineStats(frames_done, seconds, frames_done / seconds if seconds > 0 else 0.0, counts["batches"])


def _lower_priority(niceness: int) -> None:
    """Raise the calling thread's nice value by `niceness` (Linux keeps one per thread). Elsewhere, or where the OS
    refuses, the thread keeps its priority: only the scheduling changes, never the results."""
    if not sys.platform.startswith("linux"):
        return  # macOS and the BSDs would renice the whole process; Windows has no setpriority
    try:
        thread_id = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread_id, os.getpriority(os.PRIO_PROCESS, thread_id) + niceness)
    except OSError:
        pass


def _join(threads: list[threading.Thread]) -> None:
    """Wait for the stages. Consume always (it may be mid-write to the caller's file); the others a bounded time."""
    decode, process, consume = threads
    if consume.ident is not None:
        consume.join()
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    for thread in (process, decode):
        if thread.ident is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
