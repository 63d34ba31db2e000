"""The safety filter between an action source (the policy runner) and the robot.

On by default in `robolearn deploy`. Every tick the command passes, in this order:

1. **nothing to send** (the runner has no action yet, or inference is late): hold the last safe
   command (`starved`); when nothing fresh has come for `watchdog_s`, the watchdog trips
   (`watchdog`, reported once per outage) and the filter keeps holding;
2. **NaN or infinite values**: never sent; hold the last safe command (`nonfinite`);
3. **limits**: clipped to the action feature's `low` / `high` from the robot's spec
   (`limit`);
4. **rate**: the change from the last command is capped per tick: joint targets by
   `max_speed_frac` × the joint's range per second (or `max_speed`, in the action's units per
   second, per joint), except the dimensions named by `unlimited` (grippers open and close in
   one step); end-effector deltas by `max_ee_speed` (m/s, per axis) and `max_rot_speed`
   (rad/s, the rotation vector's norm) (`rate`);
5. **workspace**: for end-effector deltas, the target (observed end-effector position + delta)
   is kept inside the `workspace` box (`workspace`);
6. **emergency stop** (`estop()`, the deploy command's key): latched; from then on every tick
   holds and the run ends.

"Hold" for joint targets is the last command sent (the first tick: the measured joints); for
end-effector deltas a zero motion with the gripper as last commanded. Before the first command
of an end-effector episode, holding sends nothing (the robot keeps its own target). Each intervention is
counted per kind (`counts`) and the first few of each are kept with their time and detail
(`events`), for the log and the episode's metadata.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robolearn.errors import RobolearnError
from robolearn.hal import Clock, Observation, WallClock
from robolearn.spec import FeatureSpec

KINDS = ("starved", "watchdog", "nonfinite", "limit", "rate", "workspace", "estop")
EVENTS_KEPT = 20  # per kind


class SafetyError(RobolearnError):
    """The safety filter is configured wrongly for this robot."""


@dataclass
class SafetyConfig:
    enabled: bool = True  # false: only NaN is still refused (the robot itself refuses it)
    limits: bool = True  # clip to the spec's low/high
    # overshoots below this fraction of a joint's range are clipped without being reported
    # (a regression policy's gripper at 0.0805 of 0.08 is not an event worth a line)
    limit_tolerance: float = 0.02
    max_speed_frac: float | None = 0.6  # joint targets: fraction of each joint's range per second
    max_speed: Any = None  # or a list: per joint, in the action's units per second
    unlimited: list[str] = field(default_factory=lambda: ["gripper"])  # dims not rate limited
    max_ee_speed: float | None = 0.3  # end-effector deltas: m/s per axis
    max_rot_speed: float | None = 2.0  # rad/s
    workspace: Any = None  # [[x, y, z] low, [x, y, z] high], metres
    watchdog_s: float = 0.5  # no fresh action for this long: hold and report

    def check(self) -> None:
        if self.max_speed_frac is not None and not self.max_speed_frac > 0:
            raise SafetyError(f"safety.max_speed_frac must be > 0, got {self.max_speed_frac}")
        for name in ("max_ee_speed", "max_rot_speed"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise SafetyError(f"safety.{name} must be > 0 (or null), got {v}")
        if not (math.isfinite(self.watchdog_s) and self.watchdog_s > 0):
            raise SafetyError(f"safety.watchdog_s must be > 0 seconds, got {self.watchdog_s}")
        if self.max_speed is not None:
            try:
                speed = np.asarray(self.max_speed, dtype=float).reshape(-1)
            except (TypeError, ValueError):
                speed = np.array([np.nan])
            if not (np.isfinite(speed).all() and (speed > 0).all()):
                raise SafetyError(
                    f"safety.max_speed is a list of positive speeds, one per joint, got "
                    f"{self.max_speed}"
                )
        if self.workspace is not None:
            try:
                box = np.asarray(self.workspace, dtype=float)
            except (TypeError, ValueError):
                box = np.zeros((0,))
            if box.shape != (2, 3) or not (box[0] < box[1]).all():
                raise SafetyError(
                    "safety.workspace is [[x, y, z] low, [x, y, z] high] with low < high, "
                    f"got {self.workspace}"
                )


class SafetyFilter:
    """Checks and corrects every command for one action key of `spec` (module docstring)."""

    def __init__(
        self,
        spec: FeatureSpec,
        action_key: str,
        rate_hz: float,
        config: SafetyConfig | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.config = config = config or SafetyConfig()
        config.check()
        if action_key not in spec or spec[action_key].kind != "action":
            raise SafetyError(f"the robot has no action {action_key!r}; it has {spec.action_keys}")
        self.key = action_key
        self.feature = f = spec[action_key]
        self.clock = clock or WallClock()
        self.dt = 1.0 / rate_hz
        self.delta = f.representation == "ee_delta" or action_key.endswith(".ee")
        n = f.size
        self.low = np.asarray(f.low, dtype=np.float64) if f.low is not None else np.full(n, -np.inf)
        self.high = (
            np.asarray(f.high, dtype=np.float64) if f.high is not None else np.full(n, np.inf)
        )
        self.step = self._max_step(spec)
        if config.workspace is not None and not self.delta:
            raise SafetyError(
                f"safety.workspace bounds end-effector motion, but the runner sends {action_key!r}"
                " (joint targets); send action.ee or set safety.workspace=null"
            )
        self.counts = dict.fromkeys(KINDS, 0)
        self.events: list[dict[str, Any]] = []
        self.estopped = False
        self.reset()

    def _max_step(self, spec: FeatureSpec) -> np.ndarray:
        """Largest change per tick of every dimension (inf: no limit)."""
        f, c, n = self.feature, self.config, self.feature.size
        names = f.dim_names()
        if self.delta:
            step = np.full(n, np.inf)
            if c.max_ee_speed is not None:
                step[:3] = c.max_ee_speed * self.dt
            return step
        if c.max_speed is not None:
            speed = np.asarray(c.max_speed, dtype=np.float64)
            if speed.shape != (n,):
                raise SafetyError(
                    f"safety.max_speed has {speed.size} values but {self.key!r} has {n} "
                    f"dimensions ({', '.join(names)})"
                )
        elif c.max_speed_frac is not None:
            span = self.high - self.low
            speed = np.where(np.isfinite(span), span * c.max_speed_frac, np.inf)
        else:
            speed = np.full(n, np.inf)
        step = speed * self.dt
        for i, name in enumerate(names):
            if any(u and u in name for u in c.unlimited):
                step[i] = np.inf
        return step

    # ------------------------------------------------------------------ episodes
    def reset(self) -> None:
        """No command sent yet; the watchdog restarts (counts are kept until `start`)."""
        self.last: np.ndarray | None = None
        self.last_fresh = self.clock.now()
        self._tripped = False

    def start(self, observation: Observation) -> None:
        """A new episode: its own counts and events; the robot's measured joints are the
        command to hold until the first action."""
        self.reset()
        self.counts = dict.fromkeys(KINDS, 0)
        self.events = []
        # (end-effector deltas, or a state in other units: nothing is known to hold, and until
        # the first action a hold sends nothing, so the robot keeps its own target)
        state = observation.values.get("state")
        if not self.delta and state is not None and np.shape(state) == self.feature.shape:
            self.last = np.clip(np.asarray(state, dtype=np.float64), self.low, self.high)

    def estop(self) -> None:
        if not self.estopped:
            self.estopped = True
            self._event("estop", "emergency stop: holding position")

    # ------------------------------------------------------------------ the filter
    def __call__(
        self, action: Mapping[str, Any] | None, observation: Observation | None = None
    ) -> dict[str, np.ndarray] | None:
        now = self.clock.now()
        if self.estopped:
            return self._hold()
        if action is None:
            self._event("starved", "no action for this tick")
            if now - self.last_fresh > self.config.watchdog_s and not self._tripped:
                self._tripped = True
                self._event(
                    "watchdog",
                    f"no fresh action for {now - self.last_fresh:.2f} s "
                    f"(limit {self.config.watchdog_s:g} s): holding position",
                )
            return self._hold()
        if set(action) != {self.key}:
            raise SafetyError(f"the action source sent {sorted(action)}; expected {self.key!r}")
        value = np.asarray(action[self.key], dtype=np.float64)
        if value.shape != self.feature.shape:
            raise SafetyError(
                f"action {self.key!r} has shape {value.shape}; the robot expects "
                f"{self.feature.shape}"
            )
        self.last_fresh = now
        self._tripped = False
        if not np.isfinite(value).all():
            bad = [self.feature.dim_names()[i] for i in np.flatnonzero(~np.isfinite(value))[:4]]
            self._event("nonfinite", f"NaN or infinite in {bad}: not sent")
            return self._hold()
        if not self.config.enabled:
            return self._send(value)
        if self.config.limits:
            clipped = np.clip(value, self.low, self.high)
            excess = np.abs(clipped - value)
            span = np.where(np.isfinite(self.high - self.low), self.high - self.low, np.inf)
            if (excess > self.config.limit_tolerance * span).any():
                worst = int(np.argmax(excess / np.where(np.isfinite(span), span, 1.0)))
                self._event(
                    "limit",
                    f"{self.feature.dim_names()[worst]}={value[worst]:.4g} clipped to "
                    f"[{self.low[worst]:.4g}, {self.high[worst]:.4g}]",
                )
            value = clipped
        value = self._rate(value)
        if self.delta and self.config.workspace is not None:
            value = self._workspace(value, observation)
        return self._send(value)

    def _rate(self, value: np.ndarray) -> np.ndarray:
        out = value.copy()
        if self.delta:
            # deltas are relative to the robot's own target: cap their size per tick
            cap = self.step[:3]
            out[:3] = np.clip(out[:3], -cap, cap)
            if self.config.max_rot_speed is not None and out.size >= 6:
                limit = self.config.max_rot_speed * self.dt
                norm = float(np.linalg.norm(out[3:6]))
                if norm > limit:
                    out[3:6] *= limit / norm
        elif self.last is not None:
            out = np.clip(out, self.last - self.step, self.last + self.step)
        if not np.allclose(out, value, rtol=0, atol=1e-12):
            worst = int(np.argmax(np.abs(out - value)))
            self._event(
                "rate",
                f"{self.feature.dim_names()[worst]} change {value[worst] - (0 if self.delta or self.last is None else self.last[worst]):+.4g} "
                f"capped to {out[worst] - (0 if self.delta or self.last is None else self.last[worst]):+.4g} per tick",
            )
        return out

    def _workspace(self, value: np.ndarray, observation: Observation | None) -> np.ndarray:
        if observation is None or "ee_pose" not in observation:
            raise SafetyError(
                "safety.workspace needs the end-effector position (observation 'ee_pose')"
            )
        pos = np.asarray(observation["ee_pose"], dtype=np.float64)[:3]
        box = np.asarray(self.config.workspace, dtype=np.float64)
        target = pos + value[:3]
        inside = np.clip(target, box[0], box[1])
        if not np.array_equal(inside, target):
            value = value.copy()
            value[:3] = inside - pos
            self._event("workspace", f"target {np.round(target, 3).tolist()} kept in the box")
        return value

    def _hold(self) -> dict[str, np.ndarray] | None:
        if self.last is None:
            return None  # nothing safe is known yet: the caller keeps the robot as it is
        if self.delta:
            hold = np.zeros(self.feature.shape)
            hold[-1] = self.last[-1]  # the gripper as last commanded
            return {self.key: hold.astype(self.feature.dtype)}
        return {self.key: self.last.astype(self.feature.dtype)}

    def _send(self, value: np.ndarray) -> dict[str, np.ndarray]:
        self.last = value
        return {self.key: value.astype(self.feature.dtype)}

    def _event(self, kind: str, detail: str) -> None:
        self.counts[kind] += 1
        if self.counts[kind] <= EVENTS_KEPT:
            self.events.append({"time": round(self.clock.now(), 4), "kind": kind, "detail": detail})

    def summary(self) -> dict[str, Any]:
        return {
            "interventions": {k: v for k, v in self.counts.items() if v},
            "total": sum(self.counts.values()),
            "events": list(self.events),
        }
