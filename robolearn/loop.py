"""The control loop: one tick = observe → decide → act → record, at `rate_hz`, on absolute deadlines.

Recording and deployment run the same loop; only the action source (a teleoperator, a policy
runner) and the sinks (an episode writer, a live display) differ. Timing is never hidden:

- tick k is due at `t0 + k / rate_hz` on the robot's clock (wall time for real arms and real-time
  simulation, simulated time in lock-step), so small delays do not accumulate into drift;
- every tick records its period error (start − deadline) and the wall time spent in each stage;
- a tick that ends after the next deadline is an *overrun*. It is counted, reported to the
  `on_overrun` callback (the recorder prints it live) and kept in the statistics that go into the
  episode's metadata. What happens next is `overrun="skip"` (drop the deadlines already missed and
  keep the phase: the robot gets fewer, correctly timed ticks; missed ticks are counted as dropped)
  or `overrun="catch_up"` (run the missed ticks at once, back to back, to keep the tick count).

While it runs, the loop's thread asks the kernel for a short scheduler time slice
(`latency_slice`, 0.1 ms by default; Linux ≥ 6.12 EEVDF, no privilege needed; a no-op
elsewhere). Its share of the CPU stays the same, but a thread with a short slice gets an earlier
virtual deadline and preempts a busy CPU when it wakes for its deadline instead of queueing
behind whatever runs there: measured on a loaded 2-core VM, p99 period error of the loop alone
at 100 Hz fell from 1.7-2.5 ms to 0.07-0.14 ms (benchmarks/control_loop.py notes).

It also keeps Python's cyclic garbage collector off the objects that existed before it started
(`freeze_gc`): one collection first, then `gc.freeze()` until the last running loop of the
process ends. Collections during the run then only walk the objects made since (sub-0.2 ms
here) instead of everything the robot, zarr and numpy have allocated (1-4 ms with the GIL
held, longer the more a process has imported).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import platform
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from robolearn.errors import RobolearnError
from robolearn.hal import Clock, Observation, Robot

STAGES = ("observe", "decide", "act", "record")


class LoopError(RobolearnError):
    """The control loop was configured wrongly or cannot go on."""


@runtime_checkable
class ActionSource(Protocol):
    """Anything that turns an observation into an action: a teleoperator, a policy runner."""

    def read(self, observation: Observation | None = None) -> Mapping[str, Any] | None: ...


# An action source may also have `begin_tick(deadline)`: the loop calls it before `read` with
# the time the tick was due on the robot's clock (the policy runner schedules actions on that
# grid rather than on the moment `read` happens to run).


@dataclass
class Tick:
    """What one tick saw and did, handed to every sink."""

    index: int
    deadline: float  # when the tick was due (robot clock)
    start: float  # when it started (robot clock)
    observation: Observation
    action: dict[str, np.ndarray]  # as sent, in every representation the robot has ({}: none)

    @property
    def period_error(self) -> float:
        return self.start - self.deadline


Sink = Callable[[Tick], None]


LATE_KEPT = 20  # overruns traced one by one in LoopStats.late


@dataclass
class LoopStats:
    """Per-tick timing of one run of the loop, summarised for logs and episode metadata."""

    rate_hz: float
    period_errors: list[float] = field(default_factory=list)  # seconds, start − deadline
    stage_times: dict[str, list[float]] = field(
        default_factory=lambda: {s: [] for s in STAGES}
    )  # wall seconds per stage
    overruns: int = 0
    skipped: int = 0  # deadlines dropped after overruns (overrun="skip")
    started: float | None = None
    ended: float | None = None
    # the first LATE_KEPT overruns, each traced: which tick, how late it ended, how late it
    # started (woken late: the OS) and its stages (a slow stage: the code)
    late: list[dict[str, Any]] = field(default_factory=list)

    def trace_overrun(self, index: int, late: float) -> None:
        if len(self.late) >= LATE_KEPT or index >= self.ticks:
            return
        self.late.append(
            {
                "tick": index,
                "late_ms": _round(late * 1e3),
                "start_lag_ms": _round(self.period_errors[index] * 1e3),
                "stage_ms": {s: _round(v[index] * 1e3) for s, v in self.stage_times.items() if v},
            }
        )

    @property
    def ticks(self) -> int:
        return len(self.period_errors)

    @property
    def real_rate(self) -> float:
        """Ticks per second of the robot's clock, measured over the run."""
        if self.ticks < 2 or self.started is None or self.ended is None:
            return float("nan")
        return (self.ticks - 1) / max(self.ended - self.started, 1e-12)

    def summary(self) -> dict[str, Any]:
        """Plain numbers (JSON-ready): counts, rate, period error and stage time percentiles."""
        out: dict[str, Any] = {
            "rate_hz": self.rate_hz,
            "ticks": self.ticks,
            "real_rate_hz": _round(self.real_rate),
            "overruns": self.overruns,
            "skipped_ticks": self.skipped,
        }
        if self.ticks:
            err = np.abs(np.asarray(self.period_errors)) * 1e3
            out["period_error_ms"] = {
                "p50": _round(float(np.percentile(err, 50))),
                "p99": _round(float(np.percentile(err, 99))),
                "max": _round(float(err.max())),
            }
            work = np.sum([v for v in self.stage_times.values() if v], axis=0) * 1e3
            out["work_ms"] = {  # a tick's own work: observe + decide + act + record
                "p50": _round(float(np.percentile(work, 50))),
                "p99": _round(float(np.percentile(work, 99))),
                "max": _round(float(work.max())),
            }
            out["stage_ms"] = {
                s: {
                    "mean": _round(float(np.mean(v)) * 1e3),
                    "p99": _round(float(np.percentile(v, 99)) * 1e3),
                }
                for s, v in self.stage_times.items()
                if v
            }
        if self.late:
            out["late_ticks"] = list(self.late)
        return out


def _round(x: float) -> float | None:
    return None if not math.isfinite(x) else round(x, 4)


# sched_setattr / sched_getattr: (set, get) syscall numbers per machine.
_SCHED_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275)}
_SCHED_ATTR = struct.Struct("=IIQiIQQQII")  # struct sched_attr, version 1 (56 bytes)
_SCHED_FAIR = (0, 3)  # SCHED_OTHER, SCHED_BATCH: the policies whose slice can be set


def _sched_attr(tid: int = 0) -> tuple[int, ...] | None:
    """This thread's struct sched_attr, or None where the kernel or machine has no such call."""
    nums = _SCHED_SYSCALLS.get(platform.machine())
    if nums is None or not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(_SCHED_ATTR.size)
        if libc.syscall(nums[1], tid, buf, _SCHED_ATTR.size, 0) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return _SCHED_ATTR.unpack(buf.raw)


def _set_slice(ns: int) -> bool:
    """Set the calling thread's fair-scheduler slice request (0: the kernel's default)."""
    attr = _sched_attr()
    if attr is None or attr[1] not in _SCHED_FAIR:
        return False
    _, policy, _, nice, _, _, _, _, _, _ = attr
    raw = _SCHED_ATTR.pack(_SCHED_ATTR.size, policy, 0, nice, 0, int(ns), 0, 0, 0, 0)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        nums = _SCHED_SYSCALLS[platform.machine()]
        return libc.syscall(nums[0], 0, ctypes.create_string_buffer(raw, len(raw)), 0) == 0
    except (OSError, AttributeError):
        return False


def thread_slice() -> float | None:
    """The calling thread's scheduler slice in seconds (None where it cannot be read)."""
    attr = _sched_attr()
    return None if attr is None else attr[5] / 1e9


@contextlib.contextmanager
def latency_slice(seconds: float | None) -> Iterator[bool]:
    """Run the block with a short scheduler slice for this thread; yields whether it was set.

    The kernel (Linux ≥ 6.12) clamps the request to 0.1..100 ms; older kernels accept and ignore
    it; other systems, real-time policies and refusals leave the thread as it was.
    """
    changed = seconds is not None and seconds > 0 and _set_slice(round(seconds * 1e9))
    try:
        yield changed
    finally:
        if changed:
            _set_slice(0)


_GC_LOCK = threading.Lock()
_GC_FROZEN = [0]  # loops of this process running with the collector's old objects frozen


@contextlib.contextmanager
def frozen_gc(enabled: bool = True) -> Iterator[None]:
    """Collect once, then keep the garbage collector off every object that exists now.

    Nested and concurrent uses (two loops in one process) share one freeze, undone when the
    last of them ends, so that garbage made meanwhile is collected as usual afterwards.
    """
    if not enabled:
        yield
        return
    with _GC_LOCK:
        if _GC_FROZEN[0] == 0:
            gc.collect()
            gc.freeze()
        _GC_FROZEN[0] += 1
    try:
        yield
    finally:
        with _GC_LOCK:
            _GC_FROZEN[0] -= 1
            if _GC_FROZEN[0] == 0:
                gc.unfreeze()


class ControlLoop:
    """Runs `robot` at `rate_hz` with actions from `source`, handing every tick to `sinks`.

    The loop owns timing; devices never sleep. `run()` goes until `max_ticks`, `duration` (robot
    clock seconds) or `stop()` returns true, whichever comes first, and returns the run's
    `LoopStats`. `stop` is called between ticks, so a key press or a signal handler that sets a
    flag ends the run at a tick boundary, never half-way through one. `latency_slice` (seconds,
    None to leave the thread alone) is the scheduler slice the loop's thread asks for while it
    runs; `freeze_gc` keeps the garbage collector off the objects made before the run (module
    docstring).
    """

    def __init__(
        self,
        robot: Robot,
        source: ActionSource,
        rate_hz: float,
        *,
        sinks: Sequence[Sink] = (),
        clock: Clock | None = None,
        overrun: str = "skip",
        on_overrun: Callable[[int, float], None] | None = None,
        latency_slice: float | None = 1e-4,
        freeze_gc: bool = True,
    ) -> None:
        if not (isinstance(rate_hz, int | float) and math.isfinite(rate_hz) and rate_hz > 0):
            raise LoopError(f"rate_hz must be a positive number, got {rate_hz!r}")
        if overrun not in ("skip", "catch_up"):
            raise LoopError(f"overrun must be 'skip' or 'catch_up', got {overrun!r}")
        if not callable(getattr(source, "read", None)):
            raise LoopError(
                f"the action source {type(source).__name__} has no read(observation) method"
            )
        self.robot = robot
        self.source = source
        self.rate_hz = float(rate_hz)
        self.period = 1.0 / self.rate_hz
        self.sinks = list(sinks)
        self.clock = clock or robot.clock
        self.overrun = overrun
        self.on_overrun = on_overrun
        self.latency_slice = latency_slice
        self.freeze_gc = freeze_gc
        # a source that schedules by time (the policy runner) learns each tick's deadline
        begin = getattr(source, "begin_tick", None)
        self._begin_tick: Callable[[float], None] | None = begin if callable(begin) else None

    def run(
        self,
        *,
        max_ticks: int | None = None,
        duration: float | None = None,
        stop: Callable[[], bool] | None = None,
        stats: LoopStats | None = None,
    ) -> LoopStats:
        with latency_slice(self.latency_slice), frozen_gc(self.freeze_gc):
            return self._run(max_ticks, duration, stop, stats or LoopStats(self.rate_hz))

    def _run(
        self,
        max_ticks: int | None,
        duration: float | None,
        stop: Callable[[], bool] | None,
        stats: LoopStats,
    ) -> LoopStats:
        clock = self.clock
        t0 = clock.now()
        stats.started = t0
        k = 0  # index of the next deadline
        n = 0  # ticks run
        while True:
            if max_ticks is not None and n >= max_ticks:
                break
            deadline = t0 + k * self.period
            if duration is not None and deadline - t0 >= duration - 1e-9:
                break
            if stop is not None and stop():
                break
            clock.sleep_until(deadline)
            start = clock.now()
            tick = self._tick(n, deadline, start, stats)
            n += 1
            k += 1
            end = clock.now()
            stats.ended = tick.start
            next_deadline = t0 + k * self.period
            if end > next_deadline:
                stats.overruns += 1
                late = end - next_deadline
                stats.trace_overrun(len(stats.period_errors) - 1, late)
                if self.on_overrun is not None:
                    self.on_overrun(tick.index, late)
                if self.overrun == "skip":
                    missed = math.floor((end - t0) / self.period) + 1 - k
                    if missed > 0:
                        stats.skipped += missed
                        k += missed
        return stats

    def _tick(self, index: int, deadline: float, start: float, stats: LoopStats) -> Tick:
        t = time.perf_counter
        a = t()
        obs = self.robot.observe()
        b = t()
        if self._begin_tick is not None:
            self._begin_tick(deadline)
        action = self.source.read(obs)
        c = t()
        # None: nothing to send this tick (the robot keeps its last target)
        sent = self.robot.act(action) if action is not None else {}
        d = t()
        tick = Tick(index, deadline, start, obs, sent)
        for sink in self.sinks:
            sink(tick)
        e = t()
        stats.period_errors.append(start - deadline)
        for stage, dt in zip(STAGES, (b - a, c - b, d - c, e - d), strict=True):
            stats.stage_times[stage].append(dt)
        return tick
