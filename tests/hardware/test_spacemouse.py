"""SpaceMouse: HID report parsing, the mapping to action.ee, and the device against a stand-in hid."""

from __future__ import annotations

import struct
import sys
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from hardware.teleop.spacemouse import (
    SpaceMouseMapping,
    SpaceMouseReport,
    SpaceMouseState,
    SpaceMouseTeleop,
    parse_report,
)
from robolearn.hal import DeviceError, EpisodeEvent
from robolearn.spec import Feature

STEP, ROT = 0.01, 0.1


def translation(x: int, y: int, z: int) -> bytes:
    return struct.pack("<Bhhh", 1, x, y, z)


def rotation(rx: int, ry: int, rz: int) -> bytes:
    return struct.pack("<Bhhh", 2, rx, ry, rz)


def both(x: int, y: int, z: int, rx: int, ry: int, rz: int) -> bytes:
    return struct.pack("<Bhhhhhh", 1, x, y, z, rx, ry, rz)


def buttons(mask: int) -> bytes:
    return bytes([3, mask & 0xFF, mask >> 8])


def test_old_layout_separate_translation_rotation_and_button_reports() -> None:
    assert parse_report(translation(-350, 12, 300)) == SpaceMouseReport(translation=(-350, 12, 300))
    assert parse_report(rotation(5, -6, 7)) == SpaceMouseReport(rotation=(5, -6, 7))
    assert parse_report(bytes.fromhex("02 00 00 e2 ff 00 00")).rotation == (0, -30, 0)
    assert parse_report(bytes.fromhex("03 01 00")).buttons == 1  # left
    assert parse_report(bytes.fromhex("03 02 00")).buttons == 2  # right
    assert parse_report(buttons(0x0103)).buttons == 0x0103


def test_new_layout_carries_all_six_axes_in_report_1() -> None:
    report = parse_report(list(both(1, -2, 3, -400, 500, -6)))  # hidapi gives a list of ints
    assert report == SpaceMouseReport(translation=(1, -2, 3), rotation=(-400, 500, -6))


def test_other_reports_carry_nothing_and_truncated_ones_are_errors() -> None:
    assert parse_report(bytes([0x17, 0x64, 0x00])) == SpaceMouseReport()  # battery level
    with pytest.raises(ValueError, match="too short"):
        parse_report(bytes([1, 0, 0, 0]))
    with pytest.raises(ValueError, match="empty"):
        parse_report(b"")


def test_state_accumulates_partial_reports() -> None:
    s = SpaceMouseState()
    for data in (translation(1, 2, 3), rotation(4, 5, 6), buttons(2), translation(0, 0, 0)):
        s.update(parse_report(data))
    assert (s.translation, s.rotation, s.buttons) == ((0, 0, 0), (4, 5, 6), 2)
    assert s.buttons_down() == [1]


def mapping(**kwargs: Any) -> SpaceMouseMapping:
    kwargs = {"translation_step": STEP, "rotation_step": ROT, "deadzone": 0.0, **kwargs}
    return SpaceMouseMapping(**kwargs)


def act(m: SpaceMouseMapping, *reports: bytes) -> tuple[np.ndarray, list[EpisodeEvent]]:
    s = SpaceMouseState()
    for r in reports:
        s.update(parse_report(r))
    return m.update(s)


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        # The device's raw frame is x right, y towards the operator, z down.
        (translation(0, -350, 0), [STEP, 0, 0, 0, 0, 0]),  # cap pushed forward → +x
        (translation(-350, 0, 0), [0, STEP, 0, 0, 0, 0]),  # pushed left → +y
        (translation(0, 0, -350), [0, 0, STEP, 0, 0, 0]),  # lifted → +z
        (rotation(0, 0, -350), [0, 0, 0, 0, 0, ROT]),  # twisted anticlockwise from above → +rz
        (rotation(0, -350, 0), [0, 0, 0, ROT, 0, 0]),  # rolled right-side down → +rx
        (rotation(-350, 0, 0), [0, 0, 0, 0, ROT, 0]),  # top tilted forward → +ry (about +y, left)
        (both(0, -175, 0, 0, 0, 0), [STEP / 2, 0, 0, 0, 0, 0]),  # the 13-byte layout
    ],
)
def test_axis_signs_and_order_follow_the_robot_frame(report: bytes, expected: list[float]) -> None:
    action, events = act(mapping(), report)
    assert action.dtype == np.float32 and action.shape == (7,)
    np.testing.assert_allclose(action, [*expected, 1.0], rtol=1e-5, atol=1e-9)
    assert events == []


def test_deadzone_and_full_scale() -> None:
    m = mapping(deadzone=0.1, full_scale=350.0)
    assert not act(m, translation(30, -30, 20))[0][:6].any()  # resting-hand drift
    assert act(m, translation(0, -192, 0))[0][0] == pytest.approx(STEP / 2, rel=1e-2)
    assert act(m, translation(0, -500, 0))[0][0] == pytest.approx(
        STEP
    )  # beyond full scale: clipped


def test_scaled_to_the_robots_limits() -> None:
    limits = Feature(
        (7,),
        "float32",
        "action",
        low=[-0.003, -0.05, -0.05, -0.3, -0.3, -0.3, 0.0],
        high=[0.003, 0.05, 0.05, 0.3, 0.3, 0.3, 1.0],
        representation="ee_delta",
    )
    m = mapping(translation_step=0.05, rotation_step=0.5, limits=limits)
    action, _ = act(m, both(0, -350, 0, 0, 0, -350))
    np.testing.assert_allclose(action, [0.003, 0, 0, 0, 0, 0.3, 1.0], rtol=1e-5)


def test_left_button_toggles_gripper_right_button_saves_once() -> None:
    m = mapping()
    s = SpaceMouseState()

    def press(mask: int) -> tuple[float, list[EpisodeEvent]]:
        s.update(parse_report(buttons(mask)))
        action, events = m.update(s)
        return float(action[6]), events

    assert press(0b01) == (0.0, [])  # left: close
    assert press(0b01) == (0.0, [])  # held: still closed
    assert press(0b00) == (0.0, [])
    assert press(0b10) == (0.0, [EpisodeEvent.SAVE])  # right: save
    assert press(0b10) == (0.0, [])  # held: fires once
    assert press(0b11) == (1.0, [])  # left again: open
    m.reset()
    assert press(0b00) == (1.0, [])


def test_custom_axes_and_buttons() -> None:
    m = mapping(axes=("x", "y", "z"), gripper_button=None, events={0: "start", 1: "discard"})
    action, events = act(m, translation(350, 0, 0), rotation(0, 0, 350), buttons(0b11))
    np.testing.assert_allclose(action, [STEP, 0, 0, 0, 0, ROT, 1.0], rtol=1e-5)
    assert events == [EpisodeEvent.START, EpisodeEvent.DISCARD]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"axes": ("y", "-x", "-z")}, "mirror"),
        ({"axes": ("x", "x", "z")}, "twice"),
        ({"axes": ("x", "y")}, "3 device axes"),
        ({"axes": ("x", "y", "w")}, "is not one of"),
        ({"deadzone": -0.1}, "deadzone"),
        ({"full_scale": 0}, "full_scale"),
        ({"rotation_step": -0.1}, "rotation_step"),
        ({"events": {0: "save"}}, "both toggles"),
        ({"events": {1: "keep"}}, "not an episode event"),
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mapping(**kwargs)


# ---------------------------------------------------------------------- the device
class FakeHidDevice:
    def __init__(self, reports: list[bytes]) -> None:
        self.reports = reports
        self.opened: bytes | None = None
        self.closed = False
        self.fail = False

    def open_path(self, path: bytes) -> None:
        self.opened = path

    def set_nonblocking(self, flag: int) -> None:
        assert flag

    def read(self, size: int) -> list[int]:
        if self.fail:
            raise OSError("read error")
        return list(self.reports.pop(0)) if self.reports else []

    def close(self) -> None:
        self.closed = True


def fake_hid(devices: list[dict], device: FakeHidDevice) -> SimpleNamespace:
    return SimpleNamespace(enumerate=lambda: devices, device=lambda: device)


COMPACT = {"vendor_id": 0x256F, "product_id": 0xC635, "path": b"/dev/hidraw3"}
KEYBOARD = {"vendor_id": 0x046D, "product_id": 0xC31C, "path": b"/dev/hidraw0"}


def test_teleop_drains_reports_into_actions_and_events(monkeypatch: pytest.MonkeyPatch) -> None:
    device = FakeHidDevice([])
    monkeypatch.setitem(sys.modules, "hid", fake_hid([KEYBOARD, COMPACT], device))
    with SpaceMouseTeleop(translation_step=STEP, rotation_step=ROT, deadzone=0.0) as teleop:
        assert device.opened == b"/dev/hidraw3"
        device.reports += [translation(0, -100, 0), translation(0, -350, 0), buttons(2)]
        np.testing.assert_allclose(teleop.read()["action.ee"], [STEP, 0, 0, 0, 0, 0, 1], rtol=1e-5)
        assert teleop.events() == [EpisodeEvent.SAVE]
        device.reports += [bytes([1, 0])]  # malformed: skipped with a warning
        assert teleop.events() == []
        device.fail = True
        with pytest.raises(DeviceError, match="stopped answering"):
            teleop.read()
    assert device.closed


def test_no_spacemouse_is_a_clear_device_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "hid", fake_hid([KEYBOARD], FakeHidDevice([])))
    with pytest.raises(DeviceError, match=r"no SpaceMouse found.*046d:c31c"):
        SpaceMouseTeleop().connect()


def test_an_unknown_device_can_be_named(monkeypatch: pytest.MonkeyPatch) -> None:
    device = FakeHidDevice([])
    monkeypatch.setitem(sys.modules, "hid", fake_hid([KEYBOARD, COMPACT], device))
    SpaceMouseTeleop(vendor_id=0x046D, product_id=0xC31C).connect()
    assert device.opened == b"/dev/hidraw0"


def test_missing_or_wrong_hid_module_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "hid", None)
    with pytest.raises(ImportError, match=r"pip install 'robolearn\[spacemouse\]'"):
        SpaceMouseTeleop().connect()
    monkeypatch.setitem(sys.modules, "hid", SimpleNamespace(Device=object))  # the other "hid"
    with pytest.raises(ImportError, match="not hidapi"):
        SpaceMouseTeleop().connect()


def test_read_before_connect_is_refused() -> None:
    with pytest.raises(DeviceError, match="not connected"):
        SpaceMouseTeleop().read()
