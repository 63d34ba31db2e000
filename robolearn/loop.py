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
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
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

    def read(self, observation: Observation | None = None) -> Mapping[str, Any]: ...


@dataclass
class Tick:
    """What one tick saw and did, handed to every sink."""

    index: int
    deadline: float  # when the tick was due (robot clock)
    start: float  # when it started (robot clock)
    observation: Observation
    action: dict[str, np.ndarray]  # the action as sent, in every representation the robot has

    @property
    def period_error(self) -> float:
        return self.start - self.deadline


Sink = Callable[[Tick], None]


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
            out["stage_ms"] = {
                s: {
                    "mean": _round(float(np.mean(v)) * 1e3),
                    "p99": _round(float(np.percentile(v, 99)) * 1e3),
                }
                for s, v in self.stage_times.items()
                if v
            }
        return out


def _round(x: float) -> float | None:
    return None if not math.isfinite(x) else round(x, 4)


class ControlLoop:
    """Runs `robot` at `rate_hz` with actions from `source`, handing every tick to `sinks`.

    The loop owns timing; devices never sleep. `run()` goes until `max_ticks`, `duration` (robot
    clock seconds) or `stop()` returns true, whichever comes first, and returns the run's
    `LoopStats`. `stop` is called between ticks, so a key press or a signal handler that sets a
    flag ends the run at a tick boundary, never half-way through one.
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

    def run(
        self,
        *,
        max_ticks: int | None = None,
        duration: float | None = None,
        stop: Callable[[], bool] | None = None,
        stats: LoopStats | None = None,
    ) -> LoopStats:
        stats = stats or LoopStats(self.rate_hz)
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
        action = self.source.read(obs)
        c = t()
        sent = self.robot.act(action)
        d = t()
        tick = Tick(index, deadline, start, obs, sent)
        for sink in self.sinks:
            sink(tick)
        e = t()
        stats.period_errors.append(start - deadline)
        for stage, dt in zip(STAGES, (b - a, c - b, d - c, e - d), strict=True):
            stats.stage_times[stage].append(dt)
        return tick
