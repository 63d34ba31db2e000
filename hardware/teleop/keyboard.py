"""End-effector teleoperation from terminal keys, for operators with no device at hand."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from hardware.teleop import EE_KEY, MOTION_AXES, EEScale, check_step, parse_axis
from robolearn.hal import Clock, DeviceError, Observation, Teleoperator, WallClock
from robolearn.spec import Feature
from robolearn.terminal import EpisodeKeys, KeyQueue, KeyReader, check_key_names

# Right hand translates, number row rotates; none of these is an episode key (s d r q …).
DEFAULT_LAYOUT: dict[str, str] = {
    "i": "+x",
    "k": "-x",
    "j": "+y",
    "l": "-y",
    "u": "+z",
    "o": "-z",
    "1": "+rx",
    "2": "-rx",
    "3": "+ry",
    "4": "-ry",
    "5": "+rz",
    "6": "-rz",
}


class KeyboardTeleop(Teleoperator):
    """Moves the end effector with terminal keys; `action.ee` deltas per control tick.

    Default layout (robot base frame: +x forward, +y left, +z up, for an operator standing
    behind the robot):

        i / k   forward / back (±x)        1 / 2   roll  (±rx)
        j / l   left / right   (±y)        3 / 4   pitch (±ry)
        u / o   up / down      (±z)        5 / 6   yaw   (±rz)
        g       toggle the gripper (it starts open, and opens again at every reset)

    A terminal reports presses and auto-repeats, never releases. So each press moves the arm
    at `translation_step` m (or `rotation_step` rad) per tick for `hold` seconds; the repeats
    of a held key keep extending that window, which gives smooth motion once auto-repeat starts
    (after the keyboard's repeat delay, commonly 0.25–0.6 s: until then a held key moves for
    `hold` seconds, pauses, then moves steadily). Only the last key held auto-repeats, so move
    one axis at a time. Opposite keys cancel.

    The movement keys are claimed from the shared `KeyReader` on `connect()`, so the recorder's
    `reader.keys()` still gets every other key (the episode keys) and never a movement key.
    Movement keys may not be episode keys (`reserved`, by default `EpisodeKeys().keys`).
    """

    def __init__(
        self,
        reader: KeyReader,
        *,
        translation_step: float = 0.005,
        rotation_step: float = 0.03,
        hold: float = 0.15,
        gripper_key: str = "g",
        layout: Mapping[str, str] | None = None,
        limits: Feature | None = None,
        reserved: Iterable[str] | None = None,
        clock: Clock | None = None,
        action_key: str = EE_KEY,
    ) -> None:
        self.reader = reader
        self.action_key = action_key
        self.hold = check_step(hold, "KeyboardTeleop: hold")
        if self.hold == 0:
            raise ValueError("KeyboardTeleop: hold must be > 0 seconds, or no key would move")
        self.scale = EEScale(translation_step, rotation_step, limits, owner="KeyboardTeleop")
        self.clock: Clock = clock if clock is not None else WallClock()
        layout = dict(DEFAULT_LAYOUT if layout is None else layout)
        check_key_names([*layout, gripper_key], "KeyboardTeleop layout")
        # Letters match in either case, so the layout keeps them in lower case.
        self.gripper_key = _lower(gripper_key)
        self.layout = {
            _lower(key): parse_axis(axis, MOTION_AXES, f"KeyboardTeleop key {key!r}")
            for key, axis in layout.items()
        }
        if len(self.layout) != len(layout):
            raise ValueError(f"KeyboardTeleop layout {sorted(layout)} has a letter twice")
        if gripper_key in self.layout:
            raise ValueError(f"KeyboardTeleop: gripper key {gripper_key!r} also moves an axis")
        reserved = {_lower(k) for k in (EpisodeKeys().keys if reserved is None else reserved)}
        clash = sorted({*self.layout, self.gripper_key} & reserved)
        if clash:
            raise ValueError(
                f"KeyboardTeleop: key(s) {clash} are episode keys; choose other movement keys"
            )
        self._queue: KeyQueue | None = None
        self._until: dict[str, float] = {}  # key → end of its hold window
        self._gripper_until = -np.inf
        self._open = True

    def _upper_case(self) -> set[str]:
        """Upper-case twins of letter keys, which move the same way (Caps Lock)."""
        return {k.upper() for k in [*self.layout, self.gripper_key] if len(k) == 1 and k.isalpha()}

    @property
    def help(self) -> str:
        """One line naming the keys, e.g. "i/k ±x  j/l ±y  u/o ±z  1/2 ±rx  3/4 ±ry  5/6 ±rz  g gripper"."""
        by_axis: dict[str, dict[float, str]] = {a: {} for a in MOTION_AXES}
        for key, (axis, sign) in self.layout.items():
            by_axis[axis].setdefault(sign, key)
        parts = [
            f"{keys.get(1.0, '-')}/{keys.get(-1.0, '-')} ±{axis}"
            for axis, keys in by_axis.items()
            if keys
        ]
        return "  ".join([*parts, f"{self.gripper_key} gripper"])

    # ------------------------------------------------------------------ Teleoperator
    def connect(self) -> None:
        if self._queue is not None:
            return
        if self.reader.reason is not None:
            raise DeviceError(
                f"keyboard teleoperation needs an interactive terminal, but {self.reader.reason}; "
                "run the command in a terminal (over SSH: ssh -t) or choose another teleoperator"
            )
        names = {*self.layout, self.gripper_key} | self._upper_case()
        self._queue = self.reader.claim(names)
        self.reset()

    def disconnect(self) -> None:
        if self._queue is not None:
            self.reader.release(self._queue)
            self._queue = None

    def reset(self, seed: int | None = None) -> None:
        """Stop all motion, forget keys pressed meanwhile and open the gripper (as robots reset)."""
        if self._queue is not None:
            self._queue.drain()
        self._until.clear()
        self._gripper_until = -np.inf
        self._open = True

    def read(self, observation: Observation | None = None) -> dict[str, np.ndarray]:
        if self._queue is None:
            raise DeviceError("KeyboardTeleop is not connected; call connect() first")
        now = self.clock.now()
        for key in self._queue.drain():
            key = _lower(key)
            if key == self.gripper_key:
                # Auto-repeat of a held gripper key extends its window instead of toggling again.
                if now >= self._gripper_until:
                    self._open = not self._open
                self._gripper_until = now + self.hold
            else:
                self._until[key] = now + self.hold
        motion = np.zeros(len(MOTION_AXES))
        for key, until in self._until.items():
            if until > now:
                axis, sign = self.layout[key]
                motion[MOTION_AXES.index(axis)] += sign
        return {self.action_key: self.scale.action(motion, 1.0 if self._open else 0.0)}


def _lower(key: str) -> str:
    """A letter key in lower case; named keys ("up") as they are."""
    return key.lower() if len(key) == 1 else key
