"""End-effector teleoperation with a 3Dconnexion SpaceMouse, read as raw HID reports (hidapi)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hardware.teleop import (
    EE_KEY,
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

# (vendor, product) of 3Dconnexion 6-DoF devices: the Logitech-era ids, then 3Dconnexion's own.
KNOWN_DEVICES: dict[tuple[int, int], str] = {
    (0x046D, 0xC603): "SpaceMouse Plus XT",
    (0x046D, 0xC605): "CADman",
    (0x046D, 0xC606): "SpaceMouse Classic",
    (0x046D, 0xC621): "SpaceBall 5000",
    (0x046D, 0xC623): "SpaceTraveler",
    (0x046D, 0xC625): "SpacePilot",
    (0x046D, 0xC626): "SpaceNavigator",
    (0x046D, 0xC627): "SpaceExplorer",
    (0x046D, 0xC628): "SpaceNavigator for Notebooks",
    (0x046D, 0xC629): "SpacePilot Pro",
    (0x046D, 0xC62B): "SpaceMouse Pro",
    (0x256F, 0xC62E): "SpaceMouse Wireless (cable)",
    (0x256F, 0xC62F): "SpaceMouse Wireless (receiver)",
    (0x256F, 0xC631): "SpaceMouse Pro Wireless (cable)",
    (0x256F, 0xC632): "SpaceMouse Pro Wireless (receiver)",
    (0x256F, 0xC633): "SpaceMouse Enterprise",
    (0x256F, 0xC635): "SpaceMouse Compact",
    (0x256F, 0xC636): "SpaceMouse Module",
    (0x256F, 0xC652): "3Dconnexion Universal Receiver",
}
DEVICE_AXES = ("x", "y", "z")
MAX_REPORTS_PER_POLL = 1000


@dataclass(frozen=True)
class SpaceMouseReport:
    """What one HID report says; the parts it does not carry are None."""

    translation: tuple[int, int, int] | None = None
    rotation: tuple[int, int, int] | None = None
    buttons: int | None = None  # bit i set: button i is down


def _int16s(data: bytes, start: int) -> tuple[int, int, int]:
    values = np.frombuffer(data, dtype="<i2", count=3, offset=start)
    return (int(values[0]), int(values[1]), int(values[2]))


def parse_report(report: bytes | Sequence[int]) -> SpaceMouseReport:
    """Decode one raw HID report (the first byte is its id).

    id 1: translation x, y, z as little-endian int16 (7 bytes); devices such as the SpaceMouse
    Wireless and Compact send rotation rx, ry, rz in the same report (13 bytes). id 2: rotation
    (7 bytes). id 3: the buttons as a little-endian bit mask. Other ids (battery, LEDs) carry
    nothing for us: an empty report. Raw axes are in the device's frame: x right, y towards
    the operator, z down (HID's east-south-down), rotations right-handed about those axes.
    """
    data = bytes(report)
    if not data:
        raise ValueError("an empty HID report")
    rid = data[0]
    if rid == 1:
        if len(data) >= 13:
            return SpaceMouseReport(translation=_int16s(data, 1), rotation=_int16s(data, 7))
        if len(data) >= 7:
            return SpaceMouseReport(translation=_int16s(data, 1))
    elif rid == 2:
        if len(data) >= 7:
            return SpaceMouseReport(rotation=_int16s(data, 1))
    elif rid == 3:
        if len(data) >= 2:
            return SpaceMouseReport(buttons=int.from_bytes(data[1:], "little"))
    else:
        return SpaceMouseReport()
    raise ValueError(f"HID report id {rid} is {len(data)} bytes, too short: {data.hex(' ')}")


@dataclass
class SpaceMouseState:
    """The device's latest raw values, accumulated from reports (each carries only a part)."""

    translation: tuple[int, int, int] = (0, 0, 0)
    rotation: tuple[int, int, int] = (0, 0, 0)
    buttons: int = 0

    def update(self, report: SpaceMouseReport) -> None:
        if report.translation is not None:
            self.translation = report.translation
        if report.rotation is not None:
            self.rotation = report.rotation
        if report.buttons is not None:
            self.buttons = report.buttons

    def buttons_down(self) -> list[int]:
        return [i for i in range(self.buttons.bit_length()) if self.buttons >> i & 1]


class SpaceMouseMapping:
    """Raw SpaceMouse state → `action.ee` and episode events; no device involved.

    `axes` names, for the robot's x, y and z, the device axis that drives it (with '-' to
    invert); rotations follow the same axes, so twisting the cap turns the tool the same way.
    The default ("-y", "-x", "-z") is for the device lying in front of the operator, cable away
    from them, behind the robot: push the cap forward → +x (forward), left → +y, lift → +z;
    tilt or twist the cap and the tool turns the same way (twist anticlockwise seen from above
    → +rz). The axes must not mirror the device (an odd number of swaps and sign flips would
    turn rotations the wrong way).

    Raw values are divided by `full_scale` (about 350 for most devices), clipped to [-1, 1]
    and pass a `deadzone`. Buttons count from 0 (left) and fire on the press only:
    `gripper_button` toggles open ↔ closed, `events` maps buttons to episode events
    (default: the right button saves, which a recorder not recording reads as start).
    """

    def __init__(
        self,
        *,
        translation_step: float = 0.005,
        rotation_step: float = 0.03,
        deadzone: float = 0.1,
        full_scale: float = 350.0,
        axes: Sequence[str] = ("-y", "-x", "-z"),
        gripper_button: int | None = 0,
        events: Mapping[int, EpisodeEvent | str] | None = None,
        limits: Feature | None = None,
    ) -> None:
        if not full_scale > 0:
            raise ValueError(f"SpaceMouseMapping: full_scale must be > 0, got {full_scale}")
        self.full_scale = float(full_scale)
        self.deadzone = check_deadzone(deadzone, "SpaceMouseMapping")
        self.scale = EEScale(translation_step, rotation_step, limits, owner="SpaceMouseMapping")
        self.matrix = _axes_matrix(axes)
        events = {1: EpisodeEvent.SAVE} if events is None else events
        bound = {int(b): parse_event(e, f"SpaceMouse button {b}") for b, e in events.items()}
        if any(b < 0 for b in bound) or (gripper_button is not None and gripper_button < 0):
            raise ValueError("SpaceMouseMapping: buttons count from 0")
        self.buttons = ButtonBindings(
            bound, gripper_button, owner=f"SpaceMouseMapping (button {gripper_button})"
        )

    def reset(self) -> None:
        """Open the gripper (robots reset with it open); held buttons still do not fire again."""
        self.buttons.reset()

    def update(self, state: SpaceMouseState) -> tuple[np.ndarray, list[EpisodeEvent]]:
        """The action for this state, and the events of buttons pressed since the last update."""
        events = self.buttons.update(state.buttons_down())
        raw = np.array([*state.translation, *state.rotation], dtype=float) / self.full_scale
        device = apply_deadzone(raw, self.deadzone)
        motion = np.concatenate([self.matrix @ device[:3], self.matrix @ device[3:]])
        return self.scale.action(motion, 1.0 if self.buttons.open else 0.0), events


def _axes_matrix(axes: Sequence[str]) -> np.ndarray:
    """The 3×3 signed permutation taking device axes to robot axes; rejects mirror images."""
    if len(axes) != 3:
        raise ValueError(f"SpaceMouseMapping axes: give 3 device axes (for x, y, z), got {axes}")
    parsed = [parse_axis(a, DEVICE_AXES, "SpaceMouseMapping axes") for a in axes]
    if len({name for name, _ in parsed}) != 3:
        raise ValueError(f"SpaceMouseMapping axes {list(axes)} use a device axis twice")
    m = np.zeros((3, 3))
    for row, (name, sign) in enumerate(parsed):
        m[row, DEVICE_AXES.index(name)] = sign
    if np.linalg.det(m) < 0:
        raise ValueError(
            f"SpaceMouseMapping axes {list(axes)} mirror the device, so rotations would turn "
            "the wrong way; flip the sign of one axis"
        )
    return m


class SpaceMouseTeleop(PolledTeleop):
    """A 3Dconnexion SpaceMouse through hidapi; see `SpaceMouseMapping` for the controls.

    Opens the first known 3Dconnexion device (or the one given by `vendor_id`/`product_id` or
    `path`) and drains its reports without blocking at every `read()` and `events()`. Needs
    `pip install 'robolearn[spacemouse]'` (and on Linux read access to /dev/hidraw*, e.g. a
    udev rule `KERNEL=="hidraw*", ATTRS{idVendor}=="256f", MODE="0660", TAG+="uaccess"`).
    """

    def __init__(
        self,
        *,
        vendor_id: int | None = None,
        product_id: int | None = None,
        path: bytes | str | None = None,
        translation_step: float = 0.005,
        rotation_step: float = 0.03,
        deadzone: float = 0.1,
        full_scale: float = 350.0,
        axes: Sequence[str] = ("-y", "-x", "-z"),
        gripper_button: int | None = 0,
        events: Mapping[int, EpisodeEvent | str] | None = None,
        limits: Feature | None = None,
        action_key: str = EE_KEY,
    ) -> None:
        self.vendor_id, self.product_id, self.path = vendor_id, product_id, path
        mapping = SpaceMouseMapping(
            translation_step=translation_step,
            rotation_step=rotation_step,
            deadzone=deadzone,
            full_scale=full_scale,
            axes=axes,
            gripper_button=gripper_button,
            events=events,
            limits=limits,
        )
        super().__init__(mapping, action_key)
        self.mapping: SpaceMouseMapping = mapping
        self.state = SpaceMouseState()
        self._device: Any = None
        self._warned = False

    def connect(self) -> None:
        if self._device is not None:
            return
        hid = import_extra("hid", "spacemouse", "hidapi")
        if not hasattr(hid, "device"):
            raise ImportError(
                "the imported 'hid' module is not hidapi's (another package named 'hid' is "
                "installed); pip uninstall hid, then pip install 'robolearn[spacemouse]'"
            )
        path = self.path if self.path is not None else self._find(hid.enumerate())
        device = hid.device()
        try:
            device.open_path(path.encode() if isinstance(path, str) else path)
            device.set_nonblocking(1)
        except OSError as e:
            raise DeviceError(
                f"could not open the SpaceMouse at {path!r}: {e}; on Linux give yourself read "
                "access to /dev/hidraw* (a udev rule) and check no other program holds it"
            ) from e
        self._device = device
        self.state = SpaceMouseState()
        self.reset()

    def _find(self, devices: Iterable[Mapping[str, Any]]) -> bytes:
        devices = list(devices)
        for d in devices:
            key = (d.get("vendor_id"), d.get("product_id"))
            if self.vendor_id is not None or self.product_id is not None:
                wanted = (self.vendor_id is None or key[0] == self.vendor_id) and (
                    self.product_id is None or key[1] == self.product_id
                )
            else:
                wanted = key in KNOWN_DEVICES
            if wanted:
                log.info("SpaceMouse: %s", d.get("product_string") or KNOWN_DEVICES.get(key))
                return d["path"]
        seen = sorted(
            {f"{d.get('vendor_id', 0):04x}:{d.get('product_id', 0):04x}" for d in devices}
        )
        raise DeviceError(
            f"no SpaceMouse found among the HID devices {seen or '(none)'}; plug it in, or pass "
            "vendor_id/product_id (or path) for a device robolearn does not know"
        )

    def disconnect(self) -> None:
        if self._device is not None:
            try:
                self._device.close()
            finally:
                self._device = None

    def _state(self) -> SpaceMouseState:
        """Drain the reports waiting (without blocking) into the accumulated state."""
        if self._device is None:
            raise DeviceError("SpaceMouseTeleop is not connected; call connect() first")
        for _ in range(MAX_REPORTS_PER_POLL):
            try:
                data = self._device.read(64)
            except (OSError, ValueError) as e:
                self.disconnect()
                raise DeviceError(
                    f"the SpaceMouse stopped answering ({e}); is it unplugged?"
                ) from e
            if not data:
                break
            try:
                self.state.update(parse_report(data))
            except ValueError as e:
                if not self._warned:
                    log.warning("SpaceMouse: ignoring a malformed report (%s)", e)
                    self._warned = True
        return self.state
