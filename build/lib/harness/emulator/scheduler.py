"""The runner's frame scheduler: which module runs on which window at which step.

The rules are specified in ``docs/protocol.md`` section 7 (the host verifies
them through OUTPUT.step); this is their one Python implementation, run by the
virtual board and used to draw the timelines in the spec. The firmware's
portable C core implements the same rules.

Frames are counted by the frame counter, steps by the step counter (FLUSH adds
steps, not frames). A window of W frames is queued for module 0 when its last
frame arrives. *Sequential*: all N modules run on it at that step.
*Round-robin* (the seed design): at most one module runs per step, the oldest
ready task first; with W >= N module k of window j runs at step
``j*W + W - 1 + k``. With W < N windows back up; more than ``queue_depth``
waiting windows stop the stream (``BacklogFull``).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Callable

import numpy as np

from harness.device.protocol import DEFAULT_QUEUE_DEPTH, Schedule

ROUND_ROBIN, SEQUENTIAL = Schedule.ROUND_ROBIN, Schedule.SEQUENTIAL


class BacklogFull(Exception):
    """More windows wait for modules than the queue holds; the stream stops until RESET."""


@dataclass
class Task:
    window: int
    module: int
    ready_step: int
    data: object  # module 0: the window's frames [W, C]; module k: module k-1's output


@dataclass(frozen=True)
class Run:
    window: int
    module: int
    step: int


class Scheduler:
    """Holds the window buffer and the task queue; ``push``/``flush`` call ``run(task, step)``."""

    def __init__(self, modules: int, window: int, schedule: Schedule, queue_depth: int = 0,
                 frame_shape: tuple[int, ...] = (1,), dtype=np.int8):
        self.modules, self.window, self.schedule = modules, window, Schedule(schedule)
        self.queue_depth = queue_depth or DEFAULT_QUEUE_DEPTH
        self.frame_shape, self.dtype = frame_shape, np.dtype(dtype)
        self.reset()

    def reset(self) -> None:
        """RESET/CONFIGURE: counters to zero, window buffer and queue emptied."""
        self.frames = 0  # frames received: FRAMES.first_frame must equal it
        self.step = 0  # steps taken: one per frame, plus one per task FLUSH runs
        self.stopped: str | None = None  # why the stream stopped (backlog), until reset
        self._buffer = np.zeros((self.window, *self.frame_shape), dtype=self.dtype)  # oldest frame first
        self._ready: list[tuple[int, int, Task]] = []  # heap of runnable tasks by (window, module)
        self._next_step: list[Task] = []  # round-robin: tasks that become ready at the next step
        self._waiting: set[int] = set()  # windows whose last module has not run

    def push(self, frame: np.ndarray, run: Callable[[Task, int], object]) -> None:
        """One frame step: slide the frame into the window; queue a completed window; run what may run."""
        if self.stopped:
            raise BacklogFull(self.stopped)
        step = self.step
        self._buffer[:-1] = self._buffer[1:]
        self._buffer[-1] = frame
        if self.frames % self.window == self.window - 1:
            window = self.frames // self.window
            waiting = len(self._waiting) + 1
            if self.schedule == ROUND_ROBIN and waiting > self.queue_depth:
                self.stopped = f"{waiting} windows waiting, queue_depth {self.queue_depth}"
                raise BacklogFull(self.stopped)
            self._waiting.add(window)
            self._enqueue(Task(window, 0, step, self._buffer.copy()))
        self.frames += 1
        self._run_ready(step, run)
        self.step += 1

    def flush(self, run: Callable[[Task, int], object]) -> None:
        """Run every pending task, one per extra step."""
        while self._ready or self._next_step:
            self._run_ready(self.step, run)
            self.step += 1

    def _enqueue(self, task: Task) -> None:
        heapq.heappush(self._ready, (task.window, task.module, task))

    def _run_ready(self, step: int, run) -> None:
        for task in self._next_step:  # ready from this step on
            self._enqueue(task)
        self._next_step = []
        while self._ready:
            _, _, task = heapq.heappop(self._ready)  # the oldest ready task
            output = run(task, step)
            if task.module + 1 < self.modules:
                follow = Task(task.window, task.module + 1, step, output)
                if self.schedule == SEQUENTIAL:
                    self._enqueue(follow)  # the next module runs in this same step
                else:
                    follow.ready_step = step + 1
                    self._next_step.append(follow)
            else:
                self._waiting.discard(task.window)
            if self.schedule == ROUND_ROBIN:
                return  # one module per step


@dataclass(frozen=True)
class Timeline:
    runs: tuple[Run, ...]  # in execution order
    steps: int  # steps used, FLUSH steps included
    backlog_full_step: int | None = None  # the step at which the device answers BACKLOG_FULL


def plan_schedule(modules: int, window: int, schedule: Schedule, frames: int, *, queue_depth: int = 0,
                  flush: bool = False) -> Timeline:
    """When a conforming device runs each (window, module) task for ``frames`` frames (then FLUSH)."""
    scheduler = Scheduler(modules, window, schedule, queue_depth)
    runs: list[Run] = []

    def record(task: Task, step: int) -> None:
        runs.append(Run(task.window, task.module, step))

    try:
        for _ in range(frames):
            scheduler.push(np.zeros(1, dtype=np.int8), record)
        if flush:
            scheduler.flush(record)
    except BacklogFull:
        return Timeline(tuple(runs), scheduler.step + 1, backlog_full_step=scheduler.step)
    return Timeline(tuple(runs), scheduler.step)
