"""The policy runner: a trained policy as an action source that never makes the control loop wait.

A policy predicts a *chunk* of future actions from a short window of observations. On a robot
the prediction takes time (milliseconds for ACT or an MLP, tens to hundreds for diffusion) and
the robot keeps moving meanwhile, so the runner

- keeps the observation history the policy reads (`n_obs_steps` frames, the first frame of an
  episode repeated until there are enough, as training pads episode starts);
- runs inference on a background thread (`inference="thread"`; torch releases the GIL while
  it computes), in a worker process (`"process"`: the model's Python never holds the loop's
  GIL; robolearn/inference_worker.py), or inline (`"inline"`: deterministic, for lock-step
  simulation and tests);
- schedules every chunk by time: action `i` of a chunk predicted from an observation captured
  at `t_obs` is due at `t_obs + (i - s) / rate_hz`, where `s` is the chunk index of the
  observed step (`-policy.config.action_offset`). At each tick the runner sends the action due
  when the command will take effect, `now + robot_latency_s`; a chunk's actions whose time has
  already passed when it arrives are *skipped* (counted), as real deployments of diffusion
  policies do;
- starts the next inference early enough that its chunk arrives, by the measured latency
  (p90 of recent calls), before the current chunk's `n_action_steps` run out.

Execution modes (`RunnerConfig.mode`):

- `sync`: the classic loop, for comparison: when the chunk's `n_action_steps` are used up the
  runner predicts the next one *inside* the tick (the loop waits) and executes its actions one
  per tick, ignoring time;
- `receding`: receding horizon with asynchronous inference: execute a chunk until the next one
  arrives (around its `n_action_steps`), then switch to the newer chunk at once;
- `blend`: `receding`, but for `blend_steps` ticks after a switch the command is a linear
  cross-fade from the old chunk's action to the new one's for the same time, which removes the
  jump at chunk boundaries;
- `ensemble`: ACT's temporal ensembling: inference runs continuously (a new chunk whenever the
  last one is done) and the action for time t is the weighted mean of every chunk's prediction
  for t, with weights exp(-m·i), i = 0 for the oldest prediction (m = `ensemble_decay`);
- `auto`: the policy's own preference (`robolearn.policies.base.preferred_mode`: ensemble for
  ACT and for policies with relative actions, blend for the others).

The runner returns `None` when it has no action for the tick (the first chunk has not arrived,
or inference is slower than the chunks last). The safety filter (`robolearn.safety`), which
always sits between the runner and the robot, turns that into "hold position" and counts it.
Every tick's choice is kept in `trace` (time, chunk, index, due time) and summarised by
`metrics()`: inference latency p50/p99, age of the executed actions, skipped actions.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robolearn.errors import RobolearnError
from robolearn.hal import Clock, Observation, Teleoperator, WallClock
from robolearn.inference_worker import InferenceProcess, InferenceProcessError, predict_actions

MODES = ("auto", "sync", "receding", "blend", "ensemble")
SWITCH_INTERVAL_S = 5e-4  # the GIL switch interval while an inference thread runs


class RunnerError(RobolearnError):
    """The runner is configured wrongly, or the policy failed while the robot was running."""


@dataclass
class RunnerConfig:
    mode: str = "auto"  # auto | sync | receding | blend | ensemble (module docstring)
    n_action_steps: int | None = None  # actions executed per chunk (None: the policy's)
    blend_steps: int = 4  # blend: ticks of cross-fade after a chunk switch
    ensemble_decay: float = 0.01  # ensemble: m of the weights exp(-m·i), ACT's default
    robot_latency_s: float = 0.0  # from command to motion: actions are picked this far ahead
    camera_latency_s: float = 0.0  # from exposure to the capture time the robot reports
    # thread (asynchronous) | process (asynchronous, own interpreter) | inline (in the tick)
    inference: str = "thread"
    latency_window: int = 20  # inference calls the latency estimate (p90) looks back on
    # niceness added to the inference thread or process (Linux): when the model and the control
    # loop want the same core, the loop's tick wins and the model waits (0: equal shares)
    inference_nice: int = 5

    def check(self) -> None:
        if self.mode not in MODES:
            raise RunnerError(f"runner.mode={self.mode!r}: choose one of {', '.join(MODES)}")
        if self.inference not in ("thread", "process", "inline"):
            raise RunnerError(
                f"runner.inference={self.inference!r}: choose thread, process or inline"
            )
        if self.n_action_steps is not None and int(self.n_action_steps) < 1:
            raise RunnerError(f"runner.n_action_steps must be ≥ 1, got {self.n_action_steps}")
        if int(self.blend_steps) < 0:
            raise RunnerError(f"runner.blend_steps must be ≥ 0, got {self.blend_steps}")
        if not (math.isfinite(self.ensemble_decay) and self.ensemble_decay >= 0):
            raise RunnerError(f"runner.ensemble_decay must be ≥ 0, got {self.ensemble_decay}")
        if not 0 <= int(self.inference_nice) <= 19:
            raise RunnerError(f"runner.inference_nice must be 0..19, got {self.inference_nice}")
        for name in ("robot_latency_s", "camera_latency_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value < 10):
                raise RunnerError(f"runner.{name} must be between 0 and 10 seconds, got {value}")


@dataclass
class Chunk:
    """One prediction, placed in time."""

    seq: int
    obs_time: float  # capture time of the newest observation it saw (robot clock)
    t0: float  # when actions[0] is due
    actions: np.ndarray  # (horizon, action_dim), every action key of the policy
    latency_s: float  # wall time the inference took
    arrived: float  # robot-clock time it became usable

    def index(self, t: float, dt: float) -> int | None:
        i = round((t - self.t0) / dt)
        return i if 0 <= i < len(self.actions) else None

    def due(self, i: int, dt: float) -> float:
        return self.t0 + i * dt


@dataclass
class TraceEntry:
    """What the runner sent at one tick."""

    time: float  # the tick (robot clock)
    target: float  # when the action takes effect (time + robot latency)
    chunk: int | None  # seq of the chunk the action came from (the newest one that contributed)
    index: int | None  # its index in that chunk
    due: float | None  # when that action was due
    blended: bool = False


@dataclass
class _Request:
    generation: int
    seq: int
    window: dict[str, np.ndarray]
    obs_time: float


@dataclass
class _Result:
    generation: int
    seq: int
    obs_time: float
    actions: np.ndarray | None
    latency_s: float
    error: BaseException | None = None
    counted: bool = True  # a bad (None) chunk was already counted where it was predicted


@dataclass
class RunnerStats:
    inference_s: list[float] = field(default_factory=list)
    action_age_s: list[float] = field(default_factory=list)
    chunks: int = 0
    skipped: int = 0  # actions whose time had passed when their chunk arrived
    starved: int = 0  # ticks with no action to send
    bad_chunks: int = 0  # predictions with NaN or infinite values, dropped
    switches: int = 0


def _ms_percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    ms = np.asarray(values) * 1e3
    return {
        "p50": round(float(np.percentile(ms, 50)), 3),
        "p99": round(float(np.percentile(ms, 99)), 3),
        "max": round(float(ms.max()), 3),
    }


def _lower_priority(increment: int) -> int | None:
    """Add `increment` to this thread's niceness (Linux threads have their own); its new value.

    Raising one's own niceness needs no privilege. Elsewhere (or if refused) nothing changes and
    None is returned: the runner still works, the loop just shares the core evenly."""
    if increment <= 0 or not hasattr(os, "setpriority"):
        return None
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + increment)
        return os.getpriority(os.PRIO_PROCESS, tid)
    except OSError:
        return None


class PolicyRunner(Teleoperator):
    """A policy as an action source for the control loop (module docstring).

    `policy` is a loaded `robolearn.policies.Policy` (anything with its `predict_chunk`,
    `obs_keys`, `action_keys`, `n_obs_steps`, `split_actions`, `reset` and `config`).
    `rate_hz` is the control rate, `clock` the robot's clock (`robot.clock`). `action_key`
    names the action representation sent to the robot (default: `action.joint` when the policy
    predicts it: absolute targets are the safest to execute open-loop). `done` is an optional
    test of the episode's end (a simulated task's success), turned into a SAVE event.
    """

    def __init__(
        self,
        policy: Any,
        rate_hz: float,
        config: RunnerConfig | None = None,
        *,
        clock: Clock | None = None,
        action_key: str | None = None,
        done: Callable[[], bool] | None = None,
    ) -> None:
        self.config = config = config or RunnerConfig()
        config.check()
        if not (math.isfinite(rate_hz) and rate_hz > 0):
            raise RunnerError(f"rate_hz must be a positive number, got {rate_hz}")
        self.policy = policy
        keys = list(policy.action_keys)
        if action_key is None:
            action_key = "action.joint" if "action.joint" in keys else keys[0]
        if action_key not in keys:
            raise RunnerError(f"the policy predicts {keys}; it cannot send {action_key!r}")
        self.action_key = action_key
        self.dt = 1.0 / float(rate_hz)
        self.clock: Clock = clock or WallClock()
        self.done = done
        self.start_index = -int(policy.config.action_offset)  # chunk index of the observed step
        horizon = int(policy.config.horizon)
        n_exec = int(config.n_action_steps or policy.config.n_action_steps)
        if not 1 <= n_exec <= horizon - self.start_index:
            raise RunnerError(
                f"n_action_steps={n_exec} does not fit the policy's chunk: it predicts {horizon} "
                f"actions, {horizon - self.start_index} from the observed step on"
            )
        self.n_exec = n_exec
        mode = config.mode
        if mode == "auto":
            from robolearn.policies.base import preferred_mode

            mode = preferred_mode(policy.config)
        self.mode = mode
        self.history: deque[dict[str, np.ndarray]] = deque(maxlen=int(policy.n_obs_steps))
        self.trace: list[TraceEntry] = []
        self.stats = RunnerStats()
        self._cv = threading.Condition()
        self._request: _Request | None = None
        self._results: deque[_Result] = deque()
        self._busy = False
        self._stop = False
        self._thread: threading.Thread | None = None
        self._generation = 0
        self._fatal: BaseException | None = None
        self._deadline: float | None = None
        self._warm = False
        self._switch_interval = sys.getswitchinterval()
        self.worker_nice: int | None = None  # the inference thread's niceness once it runs
        self._process: InferenceProcess | None = None
        self._reset_state()

    # ------------------------------------------------------------------ lifecycle
    @property
    def asynchronous(self) -> bool:
        return self.config.inference != "inline"

    def connect(self) -> None:
        if self.config.inference == "process" and self._process is None and self.mode != "sync":
            import torch

            try:
                proc = InferenceProcess(
                    self.policy,
                    deliver=self._deliver,
                    died=self._died,
                    threads=torch.get_num_threads(),
                    nice=int(self.config.inference_nice),
                )
                proc.start()
            except InferenceProcessError as e:
                raise RunnerError(str(e)) from e
            self._process = proc
            self.worker_nice = proc.niceness
        if self.config.inference == "thread" and self._thread is None:
            # The inference thread holds the GIL between torch's kernels; with Python's default
            # 5 ms switch interval the control thread can wait that long for it when its tick
            # is due. A 0.5 ms interval bounds that wait (restored on disconnect).
            self._switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(self._switch_interval, SWITCH_INTERVAL_S))
            self._stop = False
            self._thread = threading.Thread(
                target=self._worker, name="robolearn-inference", daemon=True
            )
            self._thread.start()

    def disconnect(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None
        thread = self._thread
        if thread is None:
            return
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        thread.join(timeout=30)
        self._thread = None
        sys.setswitchinterval(self._switch_interval)

    def reset(self, seed: int | None = None) -> None:
        """Forget the episode: history, chunks, statistics; a prediction in flight is dropped."""
        with self._cv:
            self._generation += 1
            self._request = None
            self._results.clear()
        self.history.clear()
        self.policy.reset()
        if self._process is not None:
            self._process.reset()
        self.trace = []
        self.stats = RunnerStats()
        self._reset_state()

    def _reset_state(self) -> None:
        self.current: Chunk | None = None
        self.previous: Chunk | None = None
        self.chunks: list[Chunk] = []  # ensemble: every chunk still covering the future
        self._switch_tick = 0
        self._ticks = 0
        self._seq = 0
        self._in_flight = False
        self._sync_used = 0

    def prime(self, observation: Observation) -> None:
        """Predict the first chunk now (before the loop starts), so the first tick has actions.

        The first call of a model is often slow (allocations, kernel selection): the runner's
        first prime predicts twice and keeps the second result, which also gives a first
        latency figure.
        """
        self._push(observation)
        window = self._window()
        for _ in range(1 if self._warm else 2):
            t0 = time.perf_counter()
            actions = self._predict_remote(window) if self._process else self._predict(window)
            latency = time.perf_counter() - t0
        self._warm = True
        self.stats.inference_s.append(latency)
        now = self.clock.now()
        if actions is None:
            return
        chunk = self._chunk(self._next_seq(), self._obs_time(observation), actions, latency, now)
        self._adopt(chunk, now + self.config.robot_latency_s)
        self.history.clear()  # read() pushes the first tick's frame again

    # ------------------------------------------------------------------ the tick
    def read(self, observation: Observation | None = None) -> dict[str, np.ndarray] | None:  # type: ignore[override]
        if observation is None:
            raise RunnerError("the policy runner needs the robot's observation at every tick")
        if self._fatal is not None:
            raise RunnerError(f"the policy failed during inference: {self._fatal}") from self._fatal
        # the tick's deadline when the loop gave it (a late tick keeps its place on the grid)
        now = self._deadline if self._deadline is not None else self.clock.now()
        self._deadline = None
        target = now + self.config.robot_latency_s
        self._push(observation)
        if self.mode == "sync":
            action, entry = self._sync_tick(observation, now, target)
        else:
            self._collect(now, target)
            self._maybe_request(observation, now, target)
            if self.config.inference == "inline":
                self._collect(now, target)
            action, entry = self._select(now, target)
        self._ticks += 1
        self.trace.append(entry)
        if action is None:
            self.stats.starved += 1
            return None
        return {self.action_key: self.policy.split_actions(action)[self.action_key]}

    def begin_tick(self, deadline: float) -> None:
        """The control loop's deadline for the tick whose `read` comes next."""
        self._deadline = deadline

    def events(self) -> list[Any]:
        from robolearn.hal import EpisodeEvent

        if self.done is not None and self.done():
            return [EpisodeEvent.SAVE]
        return []

    # ------------------------------------------------------------------ observations
    def _push(self, observation: Observation) -> None:
        frame = {k: np.array(observation[k], copy=True) for k in self.policy.obs_keys}
        if not self.history:
            self.history.extend([frame] * self.history.maxlen)  # type: ignore[operator]
        else:
            self.history.append(frame)

    def _window(self) -> dict[str, np.ndarray]:
        return {k: np.stack([f[k] for f in self.history])[None] for k in self.policy.obs_keys}

    def _obs_time(self, observation: Observation) -> float:
        return float(observation.timestamp) - self.config.camera_latency_s

    # ------------------------------------------------------------------ inference
    def _predict(self, window: Mapping[str, np.ndarray]) -> np.ndarray | None:
        """One chunk (horizon, action_dim), or None for a NaN/infinite prediction (counted)."""
        actions = predict_actions(self.policy, window)
        if actions is None:
            self.stats.bad_chunks += 1
        return actions

    def _predict_remote(self, window: Mapping[str, np.ndarray]) -> np.ndarray | None:
        """`_predict` in the inference process, waiting for the answer (priming only)."""
        assert self._process is not None
        seq = -self._next_seq()  # negative: never taken for a chunk of the loop
        self._process.submit(self._generation, seq, window, 0.0)
        with self._cv:
            while True:
                for res in list(self._results):
                    if res.seq == seq:
                        self._results.remove(res)
                        if res.error is not None:
                            raise RunnerError(
                                f"the policy failed during inference: {res.error}"
                            ) from res.error
                        if res.actions is None:
                            self.stats.bad_chunks += 1
                        return res.actions
                if self._fatal is not None:
                    raise RunnerError(str(self._fatal)) from self._fatal
                self._cv.wait(timeout=1.0)

    def _deliver(
        self,
        generation: int,
        seq: int,
        obs_time: float,
        actions: np.ndarray | None,
        latency: float,
        error: str | None,
    ) -> None:
        """An answer of the inference process (on its receiver thread)."""
        exc = RunnerError(f"in the inference process:\n{error}") if error is not None else None
        res = _Result(generation, seq, obs_time, actions, latency, exc, counted=False)
        with self._cv:
            self._results.append(res)
            self._cv.notify_all()

    def _died(self, exc: BaseException) -> None:
        with self._cv:
            self._fatal = exc
            self._cv.notify_all()

    def _worker(self) -> None:
        self.worker_nice = _lower_priority(int(self.config.inference_nice))
        while True:
            with self._cv:
                while self._request is None and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                req = self._request
                self._request = None
            assert req is not None
            t0 = time.perf_counter()
            error: BaseException | None = None
            actions = None
            try:
                actions = self._predict(req.window)
            except BaseException as exc:  # handed to the control thread, which stops
                error = exc
            latency = time.perf_counter() - t0
            with self._cv:
                self._results.append(
                    _Result(req.generation, req.seq, req.obs_time, actions, latency, error)
                )

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _expected_latency(self) -> float:
        """Robot-clock seconds a prediction takes: p90 of recent calls (0 when inline)."""
        if self.config.inference == "inline" or not self.stats.inference_s:
            return 0.0
        recent = self.stats.inference_s[-self.config.latency_window :]
        return float(np.percentile(recent, 90))

    def _maybe_request(self, observation: Observation, now: float, target: float) -> None:
        if self._in_flight:
            return
        if self.mode == "ensemble":
            due = True  # as often as inference allows
        else:
            cur = self.current
            if cur is None:
                due = True
            else:
                # the current chunk's window: n_exec actions from its observed step on. A
                # threaded prediction is usable one tick after it was asked for at the earliest,
                # an inline one at once: ask so that it arrives as the window runs out.
                end = cur.due(self.start_index + self.n_exec, self.dt)
                margin = self.dt if self.asynchronous else 0.0
                due = end - target <= self._expected_latency() + margin + 1e-3 * self.dt
        if not due:
            return
        seq = self._next_seq()
        req = _Request(self._generation, seq, self._window(), self._obs_time(observation))
        self._in_flight = True
        if self.config.inference == "inline":
            t0 = time.perf_counter()
            actions = self._predict(req.window)
            self._results.append(
                _Result(req.generation, seq, req.obs_time, actions, time.perf_counter() - t0)
            )
            return
        if self._process is not None:
            try:
                self._process.submit(req.generation, req.seq, req.window, req.obs_time)
            except InferenceProcessError as e:
                raise RunnerError(str(e)) from e
            return
        with self._cv:
            self._request = req
            self._cv.notify_all()

    def _collect(self, now: float, target: float) -> None:
        while True:
            with self._cv:
                if not self._results:
                    return
                res = self._results.popleft()
            if res.generation != self._generation:
                continue  # from before a reset
            self._in_flight = False
            if res.error is not None:
                self._fatal = res.error
                raise RunnerError(f"the policy failed during inference: {res.error}") from res.error
            self.stats.inference_s.append(res.latency_s)
            if res.actions is None:
                if not res.counted:
                    self.stats.bad_chunks += 1
                continue  # a bad chunk: the next tick asks again
            self._adopt(self._chunk(res.seq, res.obs_time, res.actions, res.latency_s, now), target)

    def _chunk(
        self, seq: int, obs_time: float, actions: np.ndarray, latency: float, now: float
    ) -> Chunk:
        self.stats.chunks += 1
        t0 = obs_time - self.start_index * self.dt
        return Chunk(seq, obs_time, t0, actions, latency, now)

    def _adopt(self, chunk: Chunk, target: float) -> None:
        """Make a new chunk the one to execute; count its actions that are already late."""
        first = chunk.index(chunk.obs_time, self.dt) or 0
        now_i = round((target - chunk.t0) / self.dt)
        self.stats.skipped += max(0, min(now_i, len(chunk.actions)) - first)
        if self.mode == "ensemble":
            self.chunks.append(chunk)
        else:
            self.previous = self.current
            self.current = chunk
            self._switch_tick = self._ticks
            if self.previous is not None:
                self.stats.switches += 1

    # ------------------------------------------------------------------ choosing the action
    def _select(self, now: float, target: float) -> tuple[np.ndarray | None, TraceEntry]:
        if self.mode == "ensemble":
            return self._ensemble(now, target)
        cur = self.current
        i = cur.index(target, self.dt) if cur is not None else None
        if cur is None or i is None:
            return None, TraceEntry(now, target, None, None, None)
        action = cur.actions[i]
        blended = False
        k = self._ticks - self._switch_tick
        prev = self.previous
        if self.mode == "blend" and prev is not None and k < self.config.blend_steps:
            j = prev.index(target, self.dt)
            if j is not None:
                alpha = (k + 1) / (self.config.blend_steps + 1)
                action = (1 - alpha) * prev.actions[j] + alpha * action
                blended = True
        self.stats.action_age_s.append(target - cur.obs_time)
        return action, TraceEntry(now, target, cur.seq, i, cur.due(i, self.dt), blended)

    def _ensemble(self, now: float, target: float) -> tuple[np.ndarray | None, TraceEntry]:
        live = [(c, c.index(target, self.dt)) for c in self.chunks]
        live = [(c, i) for c, i in live if i is not None]
        # chunks that end before the target will never be used again
        self.chunks = [c for c in self.chunks if c.due(len(c.actions) - 1, self.dt) >= target]
        if not live:
            return None, TraceEntry(now, target, None, None, None)
        weights = np.exp(-self.config.ensemble_decay * np.arange(len(live)))  # oldest first
        stack = np.stack([c.actions[i] for c, i in live])
        action = (weights[:, None] * stack).sum(0) / weights.sum()
        newest, i = live[-1]
        self.stats.action_age_s.append(target - newest.obs_time)
        return action, TraceEntry(now, target, newest.seq, i, newest.due(i, self.dt), len(live) > 1)

    def _sync_tick(
        self, observation: Observation, now: float, target: float
    ) -> tuple[np.ndarray | None, TraceEntry]:
        cur = self.current
        if cur is None or self._sync_used >= self.n_exec:
            t0 = time.perf_counter()
            actions = self._predict(self._window())
            latency = time.perf_counter() - t0
            self.stats.inference_s.append(latency)
            if actions is None:
                return None, TraceEntry(now, target, None, None, None)
            cur = self._chunk(self._next_seq(), self._obs_time(observation), actions, latency, now)
            if self.current is not None:
                self.stats.switches += 1
            self.current = cur
            self._sync_used = 0
        i = self.start_index + self._sync_used
        self._sync_used += 1
        self.stats.action_age_s.append(target - cur.obs_time)
        return cur.actions[i], TraceEntry(now, target, cur.seq, i, cur.due(i, self.dt))

    # ------------------------------------------------------------------ figures
    def metrics(self) -> dict[str, Any]:
        """The episode's figures, JSON-ready."""
        s = self.stats
        return {
            "mode": self.mode,
            "inference": self.config.inference,
            "n_action_steps": self.n_exec,
            "ticks": self._ticks,
            "chunks": s.chunks,
            "chunk_switches": s.switches,
            "inference_ms": _ms_percentiles(s.inference_s),
            "action_age_ms": _ms_percentiles(s.action_age_s),
            "skipped_actions": s.skipped,
            "starved_ticks": s.starved,
            "bad_chunks": s.bad_chunks,
        }
