"""The hardware abstraction layer: the small contracts that robots, cameras and teleoperators keep.

Everything above this layer (the control loop, the recorder, the policy runner) talks to these
classes only, so a PyBullet arm and a real arm are interchangeable. Devices never decide timing:
the control loop owns the clock (`Clock`) and calls `observe()` and `act()` once per tick.
"""

from __future__ import annotations

import enum
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from robolearn.errors import RobolearnError
from robolearn.spec import Feature, FeatureSpec


class ActionError(RobolearnError, ValueError):
    """An action with an unknown key, a wrong shape, NaN, or (when the spec says so) out of limits."""


class DeviceError(RobolearnError):
    """A device failed: not connected, lost, or a camera that stopped delivering frames."""


# ---------------------------------------------------------------------- clocks
@runtime_checkable
class Clock(Protocol):
    """Time as the control loop sees it: wall time for real robots, simulated time in lock-step."""

    def now(self) -> float: ...

    def sleep_until(self, t: float) -> None: ...


class WallClock:
    """The monotonic wall clock; sleeping really waits.

    `sleep_until` sleeps in the kernel until `spin` seconds before the deadline and then yields
    in a tight loop until it: the kernel's wake-up can be late by a scheduler time slice on a busy
    machine, and the last stretch decides the period error. The spin costs CPU (2 ms of every
    10 ms period at 100 Hz is a fifth of a core); `spin=0` sleeps all the way.
    """

    def __init__(self, spin: float = 0.002) -> None:
        if not spin >= 0:
            raise ValueError(f"spin must be ≥ 0 seconds, got {spin}")
        self.spin = float(spin)

    def now(self) -> float:
        return time.monotonic()

    def sleep_until(self, t: float) -> None:
        while True:
            left = t - time.monotonic()
            if left <= 0:
                return
            if left > self.spin:
                time.sleep(left - self.spin)
            else:
                time.sleep(0)  # yield the core and the GIL, come straight back


# ---------------------------------------------------------------------- observations
@dataclass
class Observation:
    """What a robot saw at one tick: every observation key of its spec, each with a capture time.

    Capture times are seconds on the robot's clock (`robot.clock.now()`), taken when the value was
    measured (a camera frame's exposure, a joint read), not when `observe()` returned.
    """

    values: dict[str, np.ndarray]
    capture_times: dict[str, float]

    def __getitem__(self, key: str) -> np.ndarray:
        return self.values[key]

    def __contains__(self, key: object) -> bool:
        return key in self.values

    @property
    def timestamp(self) -> float:
        """The latest capture time: when the observation as a whole was complete."""
        return max(self.capture_times.values())


# ---------------------------------------------------------------------- robots
class Robot(ABC):
    """A robot arm (with its cameras) behind one contract.

    Subclasses implement `_connect`, `_disconnect`, `_observe` and `_send`; the base class checks
    actions against the spec once for every robot. `act()` takes one action representation
    (a key of the spec's action features), checks it, applies the feature's limits (clip or
    reject, as the feature says) and returns the action as sent in every representation the robot
    knows, so a recorder can store all of them.
    """

    @property
    @abstractmethod
    def spec(self) -> FeatureSpec:
        """Observation features (state and images) and action features this robot has."""

    @property
    def clock(self) -> Clock:
        return WallClock()

    @property
    def is_connected(self) -> bool:
        return getattr(self, "_connected", False)

    def connect(self) -> None:
        if not self.is_connected:
            self._connect()
            self._connected = True

    def disconnect(self) -> None:
        if self.is_connected:
            try:
                self._disconnect()
            finally:
                self._connected = False

    def __enter__(self) -> Robot:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    def observe(self) -> Observation:
        self._require_connected()
        return self._observe()

    def act(self, action: Mapping[str, Any]) -> dict[str, np.ndarray]:
        self._require_connected()
        key, value = self.check_action(action)
        return self._send(key, value)

    def hold(self) -> None:  # noqa: B027 - robots with nothing to do may keep the default
        """Make the arm hold still where it is (the safe state after a stop or an error).

        Real arms apply their configured torque policy here (keep holding, or release slowly).
        The default does nothing, for robots that hold their last target by themselves.
        """

    def check_action(self, action: Mapping[str, Any]) -> tuple[str, np.ndarray]:
        """Validate an action for this robot; return (key, value after limits)."""
        if not isinstance(action, Mapping) or len(action) != 1:
            given = list(action) if isinstance(action, Mapping) else type(action).__name__
            raise ActionError(
                f"an action is a mapping with exactly one of {self.spec.action_keys}, got {given}"
            )
        ((key, raw),) = action.items()
        if key not in self.spec or self.spec[key].kind != "action":
            raise ActionError(
                f"{type(self).__name__} has no action {key!r}; it takes one of {self.spec.action_keys}"
            )
        return key, apply_limits(key, self.spec[key], raw)

    def _require_connected(self) -> None:
        if not self.is_connected:
            raise DeviceError(f"{type(self).__name__} is not connected; call connect() first")

    @abstractmethod
    def _connect(self) -> None: ...

    @abstractmethod
    def _disconnect(self) -> None: ...

    @abstractmethod
    def _observe(self) -> Observation: ...

    @abstractmethod
    def _send(self, key: str, action: np.ndarray) -> dict[str, np.ndarray]: ...


class SimRobot(Robot):
    """A simulated robot: it can be reset to a seeded state and stepped in lock-step."""

    @abstractmethod
    def reset(self, seed: int | None = None) -> Observation:
        """Put the robot and its scene into the initial state drawn from `seed`."""


def apply_limits(key: str, feature: Feature, value: Any) -> np.ndarray:
    """Check an action value against its feature; clip or reject out-of-limit values."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != feature.shape:
        raise ActionError(
            f"action {key!r} has shape {arr.shape} but the robot expects {feature.shape}"
        )
    if not np.isfinite(arr).all():
        names = feature.dim_names()
        bad = [names[i] for i in np.flatnonzero(~np.isfinite(arr.reshape(-1)))[:5]]
        raise ActionError(f"action {key!r} has NaN or infinite values in {bad}; nothing was sent")
    if feature.low is not None or feature.high is not None:
        low = np.asarray(feature.low if feature.low is not None else [-np.inf] * feature.size)
        high = np.asarray(feature.high if feature.high is not None else [np.inf] * feature.size)
        flat = arr.reshape(-1)
        outside = (flat < low) | (flat > high)
        if outside.any():
            if feature.on_limit == "reject":
                names = feature.dim_names()
                worst = [
                    f"{names[i]}={flat[i]:.4g} not in [{low[i]:.4g}, {high[i]:.4g}]"
                    for i in np.flatnonzero(outside)[:3]
                ]
                raise ActionError(f"action {key!r} is out of limits: {', '.join(worst)}")
            arr = np.clip(flat, low, high).reshape(feature.shape)
    return arr.astype(feature.dtype)


# ---------------------------------------------------------------------- cameras
class Camera(ABC):
    """A camera that delivers RGB uint8 H×W×C frames with their capture time."""

    name: str

    @property
    @abstractmethod
    def feature(self) -> Feature:
        """The image feature this camera produces (shape H×W×C, uint8)."""

    def connect(self) -> None:  # noqa: B027 - most cameras need no set-up
        """Open the device."""

    def disconnect(self) -> None:  # noqa: B027
        """Release the device."""

    @abstractmethod
    def read(self) -> tuple[np.ndarray, float]:
        """The newest frame and its capture time; raises DeviceError rather than repeat a stale one."""


# ---------------------------------------------------------------------- teleoperators
class EpisodeEvent(enum.Enum):
    """What an operator asks of the recording, besides moving the arm."""

    START = "start"
    SAVE = "save"
    DISCARD = "discard"
    RERECORD = "rerecord"
    QUIT = "quit"


@dataclass
class TeleopState:
    """Events raised since the last poll, drained by `Teleoperator.events()`."""

    pending: list[EpisodeEvent] = field(default_factory=list)

    def push(self, event: EpisodeEvent) -> None:
        self.pending.append(event)

    def drain(self) -> list[EpisodeEvent]:
        out, self.pending = self.pending, []
        return out


class Teleoperator(ABC):
    """A source of actions: a person through a device, or a scripted expert.

    `action_key` names the robot action it produces (e.g. an end-effector delta). `read()` gets
    the robot's latest observation, which leader arms ignore and scripted experts need.
    """

    action_key: str

    def connect(self) -> None:  # noqa: B027 - many teleoperators need no set-up
        """Open the device."""

    def disconnect(self) -> None:  # noqa: B027
        """Release the device."""

    def reset(self, seed: int | None = None) -> None:  # noqa: B027
        """Start a new episode (scripted experts draw their strategy here)."""

    @abstractmethod
    def read(self, observation: Observation | None = None) -> dict[str, np.ndarray]:
        """The action for this tick, as {action_key: value}."""

    def events(self) -> list[EpisodeEvent]:
        """Episode events since the last call (start, save, discard, re-record, quit)."""
        return []

    def __enter__(self) -> Teleoperator:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()
