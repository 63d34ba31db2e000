"""The control loop: absolute deadlines, stage timing, overruns (skip / catch up), lock-step speed."""

from __future__ import annotations

import gc
import time

import numpy as np
import pytest

from robolearn.loop import ControlLoop, LoopError, Tick, frozen_gc, latency_slice, thread_slice
from robolearn.testing.synthetic import Sine, SyntheticRobot
from sim.robot import PyBulletRobot


class Still:
    """Holds the arm where it is; sleeps `delay` seconds on the ticks listed in `slow`."""

    action_key = "action.ee"

    def __init__(self, slow: dict[int, float] | None = None) -> None:
        self.slow = slow or {}
        self.n = 0

    def read(self, observation=None):  # type: ignore[no-untyped-def]
        time.sleep(self.slow.get(self.n, 0.0))
        self.n += 1
        return {"action.ee": np.array([0, 0, 0, 0, 0, 0, 1], dtype=np.float32)}


def test_ticks_are_due_on_absolute_deadlines_and_every_stage_is_timed() -> None:
    ticks: list[Tick] = []
    with PyBulletRobot("panda", clock="realtime") as robot:
        loop = ControlLoop(robot, Still(), 50, sinks=[ticks.append])
        stats = loop.run(max_ticks=20)
    assert stats.ticks == 20 and len(ticks) == 20
    t0 = ticks[0].deadline
    np.testing.assert_allclose([t.deadline - t0 for t in ticks], np.arange(20) / 50, atol=1e-9)
    assert all(t.start >= t.deadline for t in ticks)  # never early
    summary = stats.summary()
    assert set(summary["stage_ms"]) == {"observe", "decide", "act", "record"}
    # a tick's work is the sum of its stages: its mean lies between the stages' largest mean
    # and their sum of p99s, and the worst tick is no shorter than its p99
    work, stages = summary["work_ms"], summary["stage_ms"].values()
    assert max(s["mean"] for s in stages) <= work["p99"] <= work["max"]
    assert work["p50"] <= sum(s["p99"] for s in stages) + 1e-3
    assert summary["real_rate_hz"] == pytest.approx(50, rel=0.2)
    assert set(ticks[0].action) == {"action.ee", "action.joint"}  # every representation as sent


@pytest.mark.parametrize("policy", ["skip", "catch_up"])
def test_an_overrun_is_reported_and_handled_as_configured(policy: str) -> None:
    reported: list[tuple[int, float]] = []
    ticks: list[Tick] = []
    with PyBulletRobot("panda", clock="realtime") as robot:
        loop = ControlLoop(
            robot,
            Still(slow={5: 0.09}),  # tick 5 takes 4.5 periods
            50,
            sinks=[ticks.append],
            overrun=policy,
            on_overrun=lambda i, late: reported.append((i, late)),
        )
        stats = loop.run(duration=0.5)
    # tick 5's overrun is reported (a busy machine may add a short one elsewhere)
    assert stats.overruns >= 1 and any(i == 5 and late > 0.05 for i, late in reported)
    # and traced in the summary: its stage times name the slow stage (the policy's decide)
    traced = {t["tick"]: t for t in stats.summary()["late_ticks"]}
    assert traced[5]["stage_ms"]["decide"] >= 85 and traced[5]["late_ms"] > 50
    assert traced[5]["start_lag_ms"] < traced[5]["stage_ms"]["decide"]
    deadlines = np.round((np.array([t.deadline for t in ticks]) - ticks[0].deadline) * 50)
    if policy == "skip":
        # the missed deadlines are dropped and counted; the phase is kept
        assert stats.skipped >= 4
        assert deadlines[6] - deadlines[5] >= 5
        assert len(ticks) <= 25 - 4
    else:
        # every deadline gets its tick: the late ones run back to back
        assert stats.skipped == 0
        np.testing.assert_array_equal(deadlines, np.arange(len(ticks)))
        late_starts = [t.period_error for t in ticks[6:9]]
        assert min(late_starts) > 0.01


def test_lock_step_runs_faster_than_real_time() -> None:
    with PyBulletRobot("panda", clock="lockstep") as robot:
        start = time.monotonic()
        stats = ControlLoop(robot, Still(), 10).run(duration=5.0)
        wall = time.monotonic() - start
    assert stats.ticks == 50
    assert stats.overruns == 0 and max(abs(e) for e in stats.period_errors) < 1e-9
    assert wall < 5.0


def test_bad_loop_settings_are_refused_with_the_reason() -> None:
    with PyBulletRobot("panda") as robot:
        with pytest.raises(LoopError, match="rate_hz"):
            ControlLoop(robot, Still(), 0)
        with pytest.raises(LoopError, match="overrun"):
            ControlLoop(robot, Still(), 10, overrun="drop")
        with pytest.raises(LoopError, match="read"):
            ControlLoop(robot, object(), 10)  # type: ignore[arg-type]


def test_the_loop_thread_asks_for_a_short_scheduler_slice_while_it_runs() -> None:
    with latency_slice(1e-4):
        expected = thread_slice()  # 0.1 ms on Linux ≥ 6.12; elsewhere what the kernel reports
    before = thread_slice()
    seen: list[float | None] = []
    left_alone: list[float | None] = []
    with SyntheticRobot() as robot:
        ControlLoop(robot, Sine(), 100, sinks=[lambda t: seen.append(thread_slice())]).run(
            max_ticks=3
        )
        assert thread_slice() == before  # given back when the run ends
        loop = ControlLoop(
            robot,
            Sine(),
            100,
            latency_slice=None,
            sinks=[lambda t: left_alone.append(thread_slice())],
        )
        loop.run(max_ticks=2)
    assert seen == [expected] * 3
    assert left_alone == [before] * 2


def test_the_collector_leaves_older_objects_alone_while_loops_run() -> None:
    assert gc.get_freeze_count() == 0
    during: list[int] = []
    with SyntheticRobot() as robot:
        loop = ControlLoop(
            robot, Sine(), 100, sinks=[lambda t: during.append(gc.get_freeze_count())]
        )
        with frozen_gc():  # another loop of the same process, already running
            loop.run(max_ticks=2)
            assert gc.get_freeze_count() > 0  # the inner run's end keeps the outer's freeze
        assert gc.get_freeze_count() == 0
        ControlLoop(robot, Sine(), 100, freeze_gc=False, sinks=[lambda t: during.append(-1)]).run(
            max_ticks=1
        )
    assert len(during) == 3 and all(c > 0 for c in during[:2]) and during[2] == -1
