"""GamepadMapping on raw states; GamepadTeleop's device handling against a stand-in pygame."""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from hardware.teleop.gamepad import GamepadLayout, GamepadMapping, GamepadState, GamepadTeleop
from robolearn.hal import DeviceError, EpisodeEvent
from robolearn.spec import Feature

STEP, ROT = 0.01, 0.1
REST = (0.0, 0.0, -1.0, 0.0, 0.0, -1.0)  # sticks centred, triggers released (SDL2 on Linux)
A, B, X, Y, LB, RB, BACK, START = range(8)


def state(
    axes: dict[int, float] | None = None, buttons: tuple[int, ...] = (), hat=(0, 0)
) -> GamepadState:
    values = list(REST)
    for i, v in (axes or {}).items():
        values[i] = v
    return GamepadState(axes=values, buttons=[i in buttons for i in range(11)], hat=hat)


def mapping(**kwargs: Any) -> GamepadMapping:
    kwargs = {"translation_step": STEP, "rotation_step": ROT, "deadzone": 0.1, **kwargs}
    return GamepadMapping(**kwargs)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (state({1: -1.0}), [STEP, 0, 0, 0, 0, 0]),  # left stick pushed forward (up reads -1)
        (state({1: 1.0}), [-STEP, 0, 0, 0, 0, 0]),
        (state({0: -1.0}), [0, STEP, 0, 0, 0, 0]),  # left stick left → +y (left)
        (state({4: -1.0}), [0, 0, STEP, 0, 0, 0]),  # right stick up → up
        (state({3: 1.0}), [0, 0, 0, 0, 0, -ROT]),  # right stick right → clockwise from above
        (state(hat=(1, 0)), [0, 0, 0, -ROT, 0, 0]),  # d-pad right: tool tip to the right
        (state(hat=(0, 1)), [0, 0, 0, 0, -ROT, 0]),  # d-pad up: tool tip forward
        (state(), [0, 0, 0, 0, 0, 0]),  # released triggers move nothing
    ],
)
def test_sign_conventions(raw: GamepadState, expected: list[float]) -> None:
    action, events = mapping().update(raw)
    assert action.dtype == np.float32 and action.shape == (7,)
    np.testing.assert_allclose(action, [*expected, 1.0], rtol=1e-6, atol=1e-9)
    assert events == []


def test_deadzone_zeroes_drift_and_rescales_without_a_jump() -> None:
    m = mapping(deadzone=0.1)
    assert m.update(state({1: -0.09, 0: 0.05}))[0][:6].tolist() == [0.0] * 6
    assert m.update(state({1: -0.55}))[0][0] == pytest.approx(0.5 * STEP)
    assert m.update(state({1: -0.11}))[0][0] == pytest.approx(STEP / 90, rel=1e-3)
    assert m.update(state({1: -1.0}))[0][0] == pytest.approx(STEP)


def test_full_deflection_is_scaled_to_the_robots_limits() -> None:
    limits = Feature(
        (7,),
        "float32",
        "action",
        low=[-0.002, -0.05, -0.05, -0.3, -0.3, -0.04, 0.0],
        high=[0.002, 0.05, 0.05, 0.3, 0.3, 0.04, 0.08],
        representation="ee_delta",
    )
    m = mapping(translation_step=0.05, rotation_step=0.1, limits=limits)
    action, _ = m.update(state({1: -1.0, 0: -0.55, 3: 1.0}))
    np.testing.assert_allclose(action, [0.002, 0.025, 0, 0, 0, -0.04, 0.08], rtol=1e-5)


def test_a_held_button_fires_its_event_once() -> None:
    m = mapping()
    assert m.update(state(buttons=(A,)))[1] == [EpisodeEvent.SAVE]
    assert m.update(state(buttons=(A,)))[1] == []
    assert m.update(state(buttons=(A,)))[1] == []
    assert m.update(state())[1] == []
    assert m.update(state(buttons=(A,)))[1] == [EpisodeEvent.SAVE]


def test_default_buttons() -> None:
    m = mapping()
    got = [m.update(state(buttons=(b,)))[1] for b in (B, X, START, BACK)]
    E = EpisodeEvent
    assert got == [[E.DISCARD], [E.RERECORD], [E.START], [E.QUIT]]
    assert mapping().update(state(buttons=(A, BACK)))[1] == [E.SAVE, E.QUIT]


def test_gripper_button_toggles_on_each_press_and_reset_opens() -> None:
    m = mapping()
    assert m.update(state(buttons=(RB,)))[0][6] == 0.0
    assert m.update(state(buttons=(RB,)))[0][6] == 0.0  # held: no second toggle
    assert m.update(state())[0][6] == 0.0
    assert m.update(state(buttons=(RB,)))[0][6] == 1.0
    m.update(state())
    m.update(state(buttons=(RB,)))
    m.reset()
    assert m.update(state())[0][6] == 1.0


def test_gripper_on_a_trigger_closes_in_proportion() -> None:
    m = mapping(gripper="rt", deadzone=0.0)
    assert m.update(state({5: -1.0}))[0][6] == pytest.approx(1.0)  # released: open
    assert m.update(state({5: 0.0}))[0][6] == pytest.approx(0.5)
    assert m.update(state({5: 1.0}))[0][6] == pytest.approx(0.0)  # pulled: closed


def test_a_pad_with_fewer_controls_reads_them_as_released() -> None:
    action, events = mapping().update(GamepadState(axes=(0.0, -1.0), buttons=(True,), hat=(0, 0)))
    np.testing.assert_allclose(action, [STEP, 0, 0, 0, 0, 0, 1], rtol=1e-6)
    assert events == [EpisodeEvent.SAVE]


def test_custom_layout_and_bindings() -> None:
    layout = GamepadLayout(axes={"lx": 0, "ly": 1}, buttons={"cross": 0, "circle": 1}, triggers=())
    m = mapping(
        layout=layout,
        motion={"x": "ly", "y": "lx"},
        gripper="circle",
        events={"cross": "start"},
    )
    action, events = m.update(GamepadState(axes=(1.0, 1.0), buttons=(True, True)))
    np.testing.assert_allclose(action, [STEP, STEP, 0, 0, 0, 0, 0], rtol=1e-6)
    assert events == [EpisodeEvent.START]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"deadzone": 1.0}, "deadzone"),
        ({"translation_step": -1.0}, "translation_step"),
        ({"gripper": "z"}, "neither a button"),
        ({"gripper": "a"}, "both toggles"),
        ({"events": {"turbo": "save"}}, "unknown button"),
        ({"events": {"a": "keep"}}, "not an episode event"),
        ({"motion": {"w": "left_x"}}, "not axes"),
        ({"motion": {"x": "-left_z"}}, "is not one of"),
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mapping(**kwargs)


# ---------------------------------------------------------------------- the device
class FakeJoystick:
    def __init__(
        self, axes: list[float], buttons: list[int], hat: tuple[int, int] = (0, 0)
    ) -> None:
        self.axes, self.buttons, self.hat = axes, buttons, hat

    def init(self) -> None: ...

    def get_name(self) -> str:
        return "Fake Pad"

    def get_instance_id(self) -> int:
        return 7

    def get_numaxes(self) -> int:
        return len(self.axes)

    def get_axis(self, i: int) -> float:
        return self.axes[i]

    def get_numbuttons(self) -> int:
        return len(self.buttons)

    def get_button(self, i: int) -> int:
        return self.buttons[i]

    def get_numhats(self) -> int:
        return 1

    def get_hat(self, i: int) -> tuple[int, int]:
        return self.hat


def fake_pygame(pads: list[FakeJoystick]) -> SimpleNamespace:
    """The slice of pygame's API GamepadTeleop uses."""
    queue: list[SimpleNamespace] = []
    return SimpleNamespace(
        JOYDEVICEREMOVED=0x606,
        queue=queue,
        display=SimpleNamespace(init=lambda: None, quit=lambda: None),
        joystick=SimpleNamespace(
            init=lambda: None,
            quit=lambda: None,
            get_count=lambda: len(pads),
            Joystick=lambda i: pads[i],
        ),
        event=SimpleNamespace(get=lambda: [queue.pop() for _ in range(len(queue))]),
    )


def test_missing_pygame_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pygame", None)
    with pytest.raises(ImportError, match=r"pip install 'robolearn\[gamepad\]'"):
        GamepadTeleop().connect()


def test_no_gamepad_is_a_clear_device_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pygame", fake_pygame([]))
    with pytest.raises(DeviceError, match="no gamepad found"):
        GamepadTeleop().connect()


def test_teleop_reads_the_pad_and_reports_events(monkeypatch: pytest.MonkeyPatch) -> None:
    pad = FakeJoystick(list(REST), [0] * 11)
    pygame = fake_pygame([pad])
    monkeypatch.setitem(sys.modules, "pygame", pygame)
    with GamepadTeleop(translation_step=STEP, rotation_step=ROT) as teleop:
        assert teleop.events() == []
        pad.axes[1], pad.buttons[A] = -1.0, 1
        action = teleop.read()["action.ee"]
        np.testing.assert_allclose(action, [STEP, 0, 0, 0, 0, 0, 1], rtol=1e-6)
        assert teleop.events() == [EpisodeEvent.SAVE]  # the press seen by read() is kept
        assert teleop.events() == []
        pygame.queue.append(SimpleNamespace(type=pygame.JOYDEVICEREMOVED, instance_id=7))
        with pytest.raises(DeviceError, match="disconnected"):
            teleop.read()
    with pytest.raises(DeviceError, match="not connected"):
        teleop.read()


def test_real_pygame_without_a_pad_raises_no_gamepad_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    pygame = pytest.importorskip("pygame")
    pygame.display.init()
    pygame.joystick.init()
    try:
        if pygame.joystick.get_count() > 0:
            pytest.skip("a gamepad is plugged in")
        with pytest.raises(DeviceError, match="no gamepad found"):
            GamepadTeleop().connect()
    finally:
        pygame.quit()
