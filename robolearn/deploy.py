"""Deployment: a trained policy driving a robot of the HAL at control rate (`robolearn deploy`).

One episode is the control loop (`robolearn.loop.ControlLoop`, the same loop that records
demonstrations) with a `SafeSource` as its action source: the policy runner
(`robolearn.runner`, asynchronous inference and chunk scheduling) behind the safety filter
(`robolearn.safety`). The robot's own clock sets the pace, so the same code runs a real arm,
PyBullet in real time, or PyBullet in lock-step.

Episode flow (`run_episode`): a simulated robot is reset to the episode's seed; the first
observation primes the runner (the first chunk is predicted before the clock starts) and gives
the filter the measured joints to hold; the loop runs until the task succeeds (simulated
tasks), the episode time is up, an operator key ends it, or the emergency stop latches. When a
store is given, every tick (observation + action as sent) is written through the recorder's
episode writer and the episode is saved with its success and the runtime's figures in its
metadata (`extra["deploy"]`): inference latency, action age, skipped actions, safety
interventions, loop timing. A failure mid-episode discards the episode in flight and leaves
the robot holding; committed episodes are never touched.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robolearn.hal import Observation, Robot, SimRobot, Teleoperator
from robolearn.loop import ControlLoop, LoopStats, Tick
from robolearn.record import frame, task_success
from robolearn.runner import PolicyRunner
from robolearn.safety import SafetyFilter


class SafeSource(Teleoperator):
    """The runner's actions through the safety filter: what the control loop reads."""

    def __init__(self, runner: PolicyRunner, safety: SafetyFilter) -> None:
        self.runner = runner
        self.safety = safety
        self.action_key = runner.action_key

    def connect(self) -> None:
        self.runner.connect()

    def disconnect(self) -> None:
        self.runner.disconnect()

    def reset(self, seed: int | None = None) -> None:
        self.runner.reset(seed)
        self.safety.reset()

    def read(self, observation: Observation | None = None) -> dict[str, np.ndarray] | None:  # type: ignore[override]
        if self.safety.estopped:
            return self.safety(None, observation)
        return self.safety(self.runner.read(observation), observation)

    def begin_tick(self, deadline: float) -> None:
        self.runner.begin_tick(deadline)

    def events(self) -> list[Any]:
        return self.runner.events()


@dataclass
class DeployOutcome:
    episode: int
    seed: int | None
    ended: str  # success | timeout | stopped | estop
    success: bool | None
    ticks: int
    seconds: float  # robot-clock seconds
    loop: dict[str, Any]
    runner: dict[str, Any]
    safety: dict[str, Any]
    index: int | None = None  # index in the store, when recorded
    commands: np.ndarray | None = field(default=None, repr=False)  # (ticks, dim) as sent

    def to_json(self) -> dict[str, Any]:
        return {
            "episode": self.episode,
            "seed": self.seed,
            "ended": self.ended,
            "success": self.success,
            "ticks": self.ticks,
            "seconds": round(self.seconds, 3),
            "loop": self.loop,
            "runner": self.runner,
            "safety": self.safety,
            "store_index": self.index,
        }


def run_episode(
    robot: Robot,
    source: SafeSource,
    rate_hz: float,
    *,
    episode: int = 0,
    seed: int | None = None,
    max_seconds: float = 60.0,
    writer: Any | None = None,
    task: str = "",
    stop: Callable[[], str | None] | None = None,
    on_tick: Callable[[Tick], None] | None = None,
    on_overrun: Callable[[int, float], None] | None = None,
    overrun: str = "skip",
    stop_on_success: bool = True,
) -> DeployOutcome:
    """One episode of the policy on `robot` (module docstring). `stop` returns a reason to end
    the episode (e.g. "stopped" for an operator key) or None to go on."""
    runner, safety = source.runner, source.safety
    if isinstance(robot, SimRobot):
        robot.reset(seed)
    # the robot's clock, as it is now (a simulated robot starts a new one at every reset)
    runner.clock = safety.clock = robot.clock
    source.reset(seed)
    first = robot.observe()
    safety.start(first)
    runner.prime(first)
    # a simulated robot in real time catches its physics up with the time the first prediction
    # took now, not inside the first tick (which would then miss its deadline)
    sync = getattr(robot.clock, "sync", None)
    if callable(sync):
        sync()
    ended: dict[str, str | None] = {"why": None}
    commands: list[np.ndarray] = []
    key = runner.action_key

    def should_stop() -> bool:
        if safety.estopped:
            ended["why"] = "estop"
        elif stop is not None and (why := stop()):
            ended["why"] = why
            if why == "estop":
                safety.estop()
        elif stop_on_success and task_success(robot):
            ended["why"] = "success"
        return ended["why"] is not None

    def sink(tick: Tick) -> None:
        if key in tick.action:
            commands.append(np.asarray(tick.action[key], dtype=np.float64))
            if writer is not None:
                writer.add_frame(
                    frame(tick.observation, tick.action),
                    timestamp=tick.start,
                    capture_times=tick.observation.capture_times,
                )
        if on_tick is not None:
            on_tick(tick)

    loop = ControlLoop(robot, source, rate_hz, sinks=[sink], overrun=overrun, on_overrun=on_overrun)
    stats = LoopStats(rate_hz)
    if writer is not None:
        tags = ("deploy", f"mode={runner.mode}") + ((f"seed={seed}",) if seed is not None else ())
        writer.start_episode(task, tags=tags)
    try:
        loop.run(duration=max_seconds, stop=should_stop, stats=stats)
    except BaseException:
        if writer is not None:
            writer.discard()
        _hold(robot)
        raise
    if ended["why"] is None:
        ended["why"] = "success" if stop_on_success and task_success(robot) else "timeout"
    if ended["why"] == "estop":
        _hold(robot)
    success = task_success(robot)
    outcome = DeployOutcome(
        episode=episode,
        seed=seed,
        ended=str(ended["why"]),
        success=success,
        ticks=stats.ticks,
        seconds=(stats.ended - stats.started)
        if stats.ended is not None and stats.started is not None
        else 0.0,
        loop=stats.summary(),
        runner=runner.metrics(),
        safety=safety.summary(),
        commands=np.asarray(commands),
    )
    if writer is not None:
        if writer.episode_frames > 0:
            info = writer.save(
                success=success,
                extra={
                    "seed": seed,
                    "timing": outcome.loop,
                    "deploy": {
                        "ended": outcome.ended,
                        "runner": outcome.runner,
                        "safety": outcome.safety,
                    },
                },
            )
            outcome.index = info.index
        else:
            writer.discard()
    return outcome


def _hold(robot: Robot) -> None:
    with contextlib.suppress(Exception):
        if robot.is_connected:
            robot.hold()


def boundary_jumps(outcome: DeployOutcome, trace: list[Any]) -> np.ndarray:
    """The largest per-dimension change of the command at every tick where the chunk in use
    changed (the smoothness figure of blending), from an episode's commands and the runner's
    trace of the same ticks."""
    cmds = outcome.commands
    if cmds is None or len(cmds) < 2:
        return np.zeros(0)
    seqs = [e.chunk for e in trace[: len(cmds)]]
    jumps = [
        float(np.abs(cmds[t] - cmds[t - 1]).max())
        for t in range(1, len(cmds))
        if seqs[t] is not None and seqs[t - 1] is not None and seqs[t] != seqs[t - 1]
    ]
    return np.asarray(jumps)


@contextlib.contextmanager
def connected(*devices: Any) -> Iterator[None]:
    """Connect devices in order; disconnect them in reverse, whatever happens."""
    with contextlib.ExitStack() as stack:
        for d in devices:
            d.connect()
            stack.callback(d.disconnect)
        yield


def summarize(outcomes: list[DeployOutcome]) -> dict[str, Any]:
    """Success rate with its 95% interval and the runtime figures over all episodes."""
    from robolearn.evaluate import wilson_interval

    judged = [o for o in outcomes if o.success is not None]
    wins = sum(bool(o.success) for o in judged)
    lo, hi = wilson_interval(wins, len(judged))

    def pooled(part: str, key: str) -> dict[str, float | None]:
        vals = [o.__dict__[part][key] for o in outcomes if o.__dict__[part].get(key)]
        p50 = [v["p50"] for v in vals if v.get("p50") is not None]
        p99 = [v["p99"] for v in vals if v.get("p99") is not None]
        mx = [v["max"] for v in vals if v.get("max") is not None]
        return {
            "p50_median": float(np.median(p50)) if p50 else None,
            "p99_max": float(max(p99)) if p99 else None,
            "max": float(max(mx)) if mx else None,
        }

    interventions: dict[str, int] = {}
    for o in outcomes:
        for k, v in o.safety.get("interventions", {}).items():
            interventions[k] = interventions.get(k, 0) + int(v)
    return {
        "episodes": len(outcomes),
        "successes": wins,
        "success_rate": wins / len(judged) if judged else None,
        "ci95": [lo, hi],
        "ended": {k: sum(o.ended == k for o in outcomes) for k in {o.ended for o in outcomes}},
        "ticks": sum(o.ticks for o in outcomes),
        "overruns": sum(int(o.loop.get("overruns", 0)) for o in outcomes),
        "skipped_ticks": sum(int(o.loop.get("skipped_ticks", 0)) for o in outcomes),
        # each traced deadline miss, with its episode: which stage was slow, or a late wake-up
        "late_ticks": [
            {"episode": o.episode, **t} for o in outcomes for t in o.loop.get("late_ticks", [])
        ][:50],
        "work_ms": pooled("loop", "work_ms"),
        "stage_ms": {
            stage: {
                "mean": float(np.mean([o.loop["stage_ms"][stage]["mean"] for o in staged])),
                "p99_max": float(max(o.loop["stage_ms"][stage]["p99"] for o in staged)),
            }
            for stage in ("observe", "decide", "act", "record")
            if (staged := [o for o in outcomes if stage in o.loop.get("stage_ms", {})])
        },
        "inference_ms": pooled("runner", "inference_ms"),
        "action_age_ms": pooled("runner", "action_age_ms"),
        "skipped_actions": sum(int(o.runner.get("skipped_actions", 0)) for o in outcomes),
        "starved_ticks": sum(int(o.runner.get("starved_ticks", 0)) for o in outcomes),
        "interventions": interventions,
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def policy_fits_robot(policy: Any, robot: Robot, action_key: str) -> None:
    """Raise SpecError unless the robot has every key the policy reads and the action it sends,
    with the same shapes."""
    keys = [*policy.obs_keys, action_key]
    robot.spec.check_fits(policy.spec, keys, what="the robot", other_what="the policy")


def as_observation(values: Mapping[str, Any], t: float) -> Observation:
    """An Observation of plain values all captured at `t` (for tools and tests)."""
    return Observation({k: np.asarray(v) for k, v in values.items()}, dict.fromkeys(values, t))
