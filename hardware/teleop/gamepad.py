"""End-effector teleoperation with an Xbox- or PlayStation-style gamepad, through pygame."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hardware.teleop import (
    EE_KEY,
    MOTION_AXES,
    ButtonBindings,
    EEScale,
    PolledTeleop,
    apply_deadzone,
    check_deadzone,
    import_extra,
    parse_axis,
)
from robolearn.hal import DeviceError, EpisodeEvent
from robolearn.spec import Feature
from robolearn.terminal import parse_event

log = logging.getLogger(__name__)

HAT_AXES = ("hat_x", "hat_y")


@dataclass(frozen=True)
class GamepadLayout:
    """Where a gamepad's controls sit in pygame's joystick API.

    The defaults are an Xbox pad (and, for the axes, a DualShock/DualSense) under SDL2 on Linux.
    Under Windows (XInput) the triggers are axes 4 and 5 and the right stick axes 2 and 3; print
    `GamepadTeleop.raw_state()` while moving each control to find a pad's indices.
    `trigger_rest` is what a released trigger reads (-1 under SDL2; 0 for pads whose triggers
    span 0…1). Stick axes read -1 … 1 with up negative; the hat reads (x, y) with up +1.
    """

    axes: Mapping[str, int] = field(
        default_factory=lambda: {
            "left_x": 0,
            "left_y": 1,
            "lt": 2,
            "right_x": 3,
            "right_y": 4,
            "rt": 5,
        }
    )
    buttons: Mapping[str, int] = field(
        default_factory=lambda: {
            "a": 0,
            "b": 1,
            "x": 2,
            "y": 3,
            "lb": 4,
            "rb": 5,
            "back": 6,
            "start": 7,
            "guide": 8,
            "left_stick": 9,
            "right_stick": 10,
        }
    )
    triggers: tuple[str, ...] = ("lt", "rt")
    trigger_rest: float = -1.0
    hat: int = 0


# Sticks translate, the d-pad tilts the tool (pointing down, it tilts towards the pressed side).
DEFAULT_MOTION: dict[str, str] = {
    "x": "-left_y",  # left stick forward → forward
    "y": "-left_x",  # left stick left → left
    "z": "-right_y",  # right stick up → up
    "rz": "-right_x",  # right stick right → turn clockwise seen from above
    "rx": "-hat_x",  # d-pad right → tool tip to the right
    "ry": "-hat_y",  # d-pad up → tool tip forward
}
# "a" saves, which a recorder that is not recording reads as "start" (one button for both).
DEFAULT_EVENTS: dict[str, EpisodeEvent | str] = {
    "a": EpisodeEvent.SAVE,
    "start": EpisodeEvent.START,
    "b": EpisodeEvent.DISCARD,
    "x": EpisodeEvent.RERECORD,
    "back": EpisodeEvent.QUIT,
}


@dataclass(frozen=True)
class GamepadState:
    """One raw reading: axes in [-1, 1], buttons down or up, the hat's (x, y) in {-1, 0, 1}."""

    axes: Sequence[float] = ()
    buttons: Sequence[bool] = ()
    hat: tuple[int, int] = (0, 0)


class GamepadMapping:
    """Raw gamepad states → `action.ee` and episode events; no device involved.

    `motion` names, for each moved axis (x y z rx ry rz), the control that drives it: a layout
    axis or `hat_x` / `hat_y`, with a '-' to invert. `gripper` is a button (each press toggles
    open ↔ closed) or a trigger (pressed closes in proportion). `events` maps buttons to episode
    events; they fire on the press, once however long the button is held.
    """

    def __init__(
        self,
        *,
        translation_step: float = 0.005,
        rotation_step: float = 0.03,
        deadzone: float = 0.1,
        gripper: str = "rb",
        layout: GamepadLayout | None = None,
        motion: Mapping[str, str] | None = None,
        events: Mapping[str, EpisodeEvent | str] | None = None,
        limits: Feature | None = None,
    ) -> None:
        self.layout = layout or GamepadLayout()
        self.deadzone = check_deadzone(deadzone, "GamepadMapping")
        self.scale = EEScale(translation_step, rotation_step, limits, owner="GamepadMapping")
        controls = [*self.layout.axes, *HAT_AXES]
        motion = DEFAULT_MOTION if motion is None else motion
        unknown = sorted(set(motion) - set(MOTION_AXES))
        if unknown:
            raise ValueError(f"GamepadMapping motion: {unknown} are not axes of {MOTION_AXES}")
        self.motion = {
            axis: parse_axis(control, controls, f"GamepadMapping motion {axis!r}")
            for axis, control in motion.items()
        }
        buttons = self.layout.buttons
        if gripper in buttons:
            gripper_button: int | None = buttons[gripper]
            self.gripper_trigger: int | None = None
        elif gripper in self.layout.triggers and gripper in self.layout.axes:
            gripper_button, self.gripper_trigger = None, self.layout.axes[gripper]
        else:
            raise ValueError(
                f"GamepadMapping gripper: {gripper!r} is neither a button {sorted(buttons)} "
                f"nor a trigger {list(self.layout.triggers)}"
            )
        events = DEFAULT_EVENTS if events is None else events
        unknown = sorted(set(events) - set(buttons))
        if unknown:
            raise ValueError(
                f"GamepadMapping events: unknown button(s) {unknown}; the layout has {sorted(buttons)}"
            )
        bound = {
            buttons[name]: parse_event(event, f"gamepad button {name!r}")
            for name, event in events.items()
        }
        self.buttons = ButtonBindings(bound, gripper_button, owner=f"GamepadMapping ({gripper!r})")

    def reset(self) -> None:
        """Open the gripper (robots reset with it open); held buttons still do not fire again."""
        self.buttons.reset()

    def update(self, state: GamepadState) -> tuple[np.ndarray, list[EpisodeEvent]]:
        """The action for this state, and the events of buttons pressed since the last update."""
        events = self.buttons.update(i for i, down in enumerate(state.buttons) if down)
        motion = np.zeros(len(MOTION_AXES))
        for axis, (control, sign) in self.motion.items():
            motion[MOTION_AXES.index(axis)] = sign * self._control(state, control)
        if self.gripper_trigger is not None:
            opening = 1.0 - self._trigger(state, self.gripper_trigger)
        else:
            opening = 1.0 if self.buttons.open else 0.0
        return self.scale.action(motion, opening), events

    def _control(self, state: GamepadState, control: str) -> float:
        if control in HAT_AXES:
            return float(state.hat[HAT_AXES.index(control)])  # digital: no deadzone
        index = self.layout.axes[control]
        if control in self.layout.triggers:
            return self._trigger(state, index)
        raw = state.axes[index] if index < len(state.axes) else 0.0
        return float(apply_deadzone(raw, self.deadzone))

    def _trigger(self, state: GamepadState, index: int) -> float:
        """How far a trigger is pulled, 0 … 1."""
        rest = self.layout.trigger_rest
        raw = state.axes[index] if index < len(state.axes) else rest
        pulled = np.clip((raw - rest) / (1.0 - rest), 0.0, 1.0)
        return float(apply_deadzone(pulled, self.deadzone))


class GamepadTeleop(PolledTeleop):
    """A gamepad through pygame's joystick API; see `GamepadMapping` for the controls.

    Defaults: left stick moves forward/back/left/right, right stick up/down and yaw, the d-pad
    tilts the tool, RB toggles the gripper; A save (or start), Start start, B discard,
    X re-record, Back quit. Works headless (SDL's dummy video driver) and over SSH with the pad
    plugged into the robot's computer. Needs `pip install 'robolearn[gamepad]'`.
    """

    def __init__(
        self,
        index: int = 0,
        *,
        translation_step: float = 0.005,
        rotation_step: float = 0.03,
        deadzone: float = 0.1,
        gripper: str = "rb",
        layout: GamepadLayout | None = None,
        motion: Mapping[str, str] | None = None,
        events: Mapping[str, EpisodeEvent | str] | None = None,
        limits: Feature | None = None,
        action_key: str = EE_KEY,
    ) -> None:
        if index < 0:
            raise ValueError(f"GamepadTeleop: index must be ≥ 0, got {index}")
        self.index = index
        mapping = GamepadMapping(
            translation_step=translation_step,
            rotation_step=rotation_step,
            deadzone=deadzone,
            gripper=gripper,
            layout=layout,
            motion=motion,
            events=events,
            limits=limits,
        )
        super().__init__(mapping, action_key)
        self.mapping: GamepadMapping = mapping
        self._pygame: Any = None
        self._joystick: Any = None

    def connect(self) -> None:
        if self._joystick is not None:
            return
        # Headless: no window, no sound; pad events even without a focused window.
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        os.environ.setdefault("SDL_JOYSTICK_ALLOW_BACKGROUND_EVENTS", "1")
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        pygame = import_extra("pygame", "gamepad", "pygame")
        try:
            pygame.display.init()
            pygame.joystick.init()
            count = pygame.joystick.get_count()
        except RuntimeError as e:  # pygame.error: SDL could not start
            raise DeviceError(f"pygame could not open the joystick subsystem: {e}") from e
        if count <= self.index:
            pygame.joystick.quit()
            pygame.display.quit()
            found = "no gamepad found" if count == 0 else f"only {count} gamepad(s) found"
            raise DeviceError(
                f"{found} (wanted index {self.index}); plug one in (check it shows under "
                "/dev/input/js* on Linux and that you may read it) and try again"
            )
        joystick = pygame.joystick.Joystick(self.index)
        joystick.init()
        self._pygame, self._joystick = pygame, joystick
        layout = self.mapping.layout
        need_axes = max(layout.axes.values(), default=-1) + 1
        need_buttons = max(layout.buttons.values(), default=-1) + 1
        if joystick.get_numaxes() < need_axes or joystick.get_numbuttons() < need_buttons:
            log.warning(
                "gamepad %r has %d axes and %d buttons but the layout uses %d and %d; "
                "missing controls read as released",
                joystick.get_name(),
                joystick.get_numaxes(),
                joystick.get_numbuttons(),
                need_axes,
                need_buttons,
            )
        log.info("gamepad %d: %s", self.index, joystick.get_name())
        self.reset()

    def disconnect(self) -> None:
        if self._pygame is not None:
            self._pygame.joystick.quit()
            self._pygame.display.quit()
        self._pygame = self._joystick = None

    def _state(self) -> GamepadState:
        return self.raw_state()

    def raw_state(self) -> GamepadState:
        """The pad's controls now (pumps pygame's events); raises DeviceError if it is gone."""
        if self._joystick is None:
            raise DeviceError("GamepadTeleop is not connected; call connect() first")
        pygame, joystick = self._pygame, self._joystick
        removed = getattr(pygame, "JOYDEVICEREMOVED", None)
        for event in pygame.event.get():
            if event.type == removed and event.instance_id == joystick.get_instance_id():
                self.disconnect()
                raise DeviceError("the gamepad was disconnected; plug it in and start again")
        return GamepadState(
            axes=tuple(joystick.get_axis(i) for i in range(joystick.get_numaxes())),
            buttons=tuple(bool(joystick.get_button(i)) for i in range(joystick.get_numbuttons())),
            hat=tuple(joystick.get_hat(self.mapping.layout.hat))
            if joystick.get_numhats() > self.mapping.layout.hat
            else (0, 0),
        )
