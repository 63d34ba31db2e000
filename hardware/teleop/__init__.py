"""Teleoperators for people without a leader arm: terminal keys, a gamepad, a SpaceMouse.

All three produce `action.ee`: an end-effector delta per control tick (dx dy dz in metres,
rotation vector drx dry drz in radians, in the robot's base frame: +x forward, +y left, +z up,
seen by an operator standing behind the robot) and the gripper (0 closed … 1 open, or the
limits of the robot's feature). This module holds what they share: scaling to the robot's
limits, deadzones, button bindings, the lazy import of optional device libraries and
the base of teleoperators that poll a device at every tick (`PolledTeleop`).
"""

from __future__ import annotations

import importlib
import logging
import math
from abc import abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from robolearn.hal import EpisodeEvent, Observation, Teleoperator, TeleopState
from robolearn.spec import Feature

log = logging.getLogger(__name__)

EE_KEY = "action.ee"
MOTION_AXES = ("x", "y", "z", "rx", "ry", "rz")


def import_extra(module: str, extra: str, package: str) -> ModuleType:
    """Import an optional device library, or fail saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"this teleoperator needs the {package!r} package (import {module!r} failed: {e}); "
            f"install it with: pip install 'robolearn[{extra}]'"
        ) from e


def check_step(value: float, name: str) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number ≥ 0, got {value}")
    return value


class EEScale:
    """Turns normalised motion (six values in [-1, 1]) and a gripper state into `action.ee`.

    Full input moves `translation_step` metres and `rotation_step` radians per control tick.
    With `limits` (the robot's `action.ee` feature) a step beyond the robot's limit is lowered
    to it, every action is clipped into the limits, and the gripper's closed / open values are
    the feature's low / high; without it they are 0 and 1.
    """

    def __init__(
        self,
        translation_step: float,
        rotation_step: float,
        limits: Feature | None = None,
        *,
        owner: str = "teleop",
    ) -> None:
        t = check_step(translation_step, f"{owner}: translation_step")
        r = check_step(rotation_step, f"{owner}: rotation_step")
        self.step = np.array([t, t, t, r, r, r])
        self.low = np.array([-t, -t, -t, -r, -r, -r, 0.0])
        self.high = np.array([t, t, t, r, r, r, 1.0])
        if limits is not None:
            self._fit(limits, owner)

    def _fit(self, limits: Feature, owner: str) -> None:
        if limits.shape != (7,):
            raise ValueError(
                f"{owner} makes 7-D end-effector deltas (dx dy dz drx dry drz gripper) but the "
                f"robot's feature has shape {limits.shape}"
            )
        if limits.representation not in (None, "ee_delta"):
            raise ValueError(
                f"{owner} makes end-effector deltas but the robot's feature is "
                f"{limits.representation!r}; pass the robot's 'action.ee' feature"
            )
        low = np.asarray(limits.low if limits.low is not None else [-np.inf] * 7, dtype=float)
        high = np.asarray(limits.high if limits.high is not None else [np.inf] * 7, dtype=float)
        reach = np.minimum(-low[:6], high[:6])
        if (reach < 0).any():
            raise ValueError(f"{owner}: the robot's limits {limits.low}…{limits.high} exclude 0")
        too_big = self.step > reach
        if too_big.any():
            names = [MOTION_AXES[i] for i in np.flatnonzero(too_big)]
            log.warning(
                "%s: steps on %s exceed the robot's per-tick limits; using the limits %s",
                owner,
                names,
                reach[too_big].tolist(),
            )
        self.step = np.minimum(self.step, reach)
        self.low[:6], self.high[:6] = low[:6], high[:6]
        if math.isfinite(low[6]) and math.isfinite(high[6]):
            self.low[6], self.high[6] = low[6], high[6]

    def action(self, motion: Sequence[float] | np.ndarray, gripper_open: float) -> np.ndarray:
        """`action.ee` (float32, 7) for `motion` in [-1, 1]⁶ and a gripper opening in [0, 1]."""
        m = np.clip(np.asarray(motion, dtype=float), -1.0, 1.0)
        g = float(np.clip(gripper_open, 0.0, 1.0))
        gripper = self.low[6] + g * (self.high[6] - self.low[6])
        out = np.append(m * self.step, gripper)
        return np.clip(out, self.low, self.high).astype(np.float32)


def apply_deadzone(value: float | np.ndarray, deadzone: float) -> np.ndarray:
    """Zero inside ±deadzone, rescaled outside so the output still spans [-1, 1] without a jump."""
    v = np.clip(np.asarray(value, dtype=float), -1.0, 1.0)
    magnitude = np.clip((np.abs(v) - deadzone) / (1.0 - deadzone), 0.0, None)
    return np.sign(v) * magnitude


def check_deadzone(deadzone: float, owner: str) -> float:
    deadzone = float(deadzone)
    if not 0.0 <= deadzone < 1.0:
        raise ValueError(f"{owner}: deadzone is a fraction of full input in [0, 1), got {deadzone}")
    return deadzone


class ButtonBindings:
    """Button presses → episode events and gripper toggles; a held button acts only once.

    `events` maps button numbers to events; `gripper` (a button number, or None) toggles the
    gripper between open and closed on each press. `update()` takes the buttons down now.
    """

    def __init__(
        self, events: Mapping[int, EpisodeEvent], gripper: int | None, *, owner: str
    ) -> None:
        if gripper is not None and gripper in events:
            raise ValueError(f"{owner}: one button both toggles the gripper and ends episodes")
        self.events = dict(events)
        self.gripper = gripper
        self.open = True
        self._down: frozenset[int] = frozenset()

    def reset(self) -> None:
        """Open the gripper (robots reset with it open); held buttons still do not fire again."""
        self.open = True

    def update(self, down: Iterable[int]) -> list[EpisodeEvent]:
        """The events of the buttons pressed since the previous update (toggling the gripper)."""
        now = frozenset(down)
        pressed, self._down = sorted(now - self._down), now
        if self.gripper in pressed:
            self.open = not self.open
        return [self.events[b] for b in pressed if b in self.events]


def parse_axis(spec: str, names: Sequence[str], what: str) -> tuple[str, float]:
    """'-left_y' → ('left_y', -1.0); an error names the choices for an unknown name."""
    sign = -1.0 if spec.startswith("-") else 1.0
    name = spec.lstrip("+-")
    if name not in names:
        raise ValueError(f"{what}: {spec!r} is not one of {list(names)} (with an optional sign)")
    return name, sign


class DeviceMapping(Protocol):
    """Turns one raw device state into `action.ee` and the episode events it started."""

    scale: EEScale

    def reset(self) -> None: ...

    def update(self, state: Any) -> tuple[np.ndarray, list[EpisodeEvent]]: ...


class PolledTeleop(Teleoperator):
    """A device read at every `read()` and `events()`, never in a thread of its own.

    Subclasses return the device's raw state from `_state()`; their `mapping` turns it into the
    action and the button events. Events seen by `read()` are kept until `events()` takes them,
    so the control loop may call the two in either order, or only `events()` while it waits.
    """

    def __init__(self, mapping: DeviceMapping, action_key: str) -> None:
        self.mapping = mapping
        self.action_key = action_key
        self._pending = TeleopState()
        self._action = mapping.scale.action(np.zeros(len(MOTION_AXES)), 1.0)

    @abstractmethod
    def _state(self) -> Any:
        """The device's raw state now; DeviceError when it is not connected or gone."""

    def reset(self, seed: int | None = None) -> None:
        """Open the gripper (robots reset with it open) and forget events not yet taken."""
        self.mapping.reset()
        self._pending.drain()

    def _poll(self) -> None:
        self._action, events = self.mapping.update(self._state())
        for event in events:
            self._pending.push(event)

    def read(self, observation: Observation | None = None) -> dict[str, np.ndarray]:
        self._poll()
        return {self.action_key: self._action}

    def events(self) -> list[EpisodeEvent]:
        self._poll()
        return self._pending.drain()
