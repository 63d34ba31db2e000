"""lerobot arms and leader arms (SO-100, SO-101, Koch, …) behind robolearn's Robot and Teleoperator.

`LeRobotArm` drives any position-controlled lerobot `Robot` (its own driver, motor bus and
calibration files) through robolearn's HAL, so the recorder, the control loop and the deployment
runtime drive a real arm with the code that drives the PyBullet arm. `LeRobotTeleop` reads any
lerobot teleoperator (e.g. the SO-101 leader arm) as `action.joint`. Both are built from a
lerobot type name and that type's config fields, so a hydra YAML makes them with `_target_`::

    _target_: hardware.lerobot_arm.LeRobotArm
    type: so101_follower
    port: /dev/ttyACM0
    id: my_so101
    max_relative_target: 10.0

What robolearn adds on top of lerobot's driver: a feature spec (`state`, one image per camera,
`action.joint` named and scaled like the simulated arm's), capture times taken around the bus
read, bus exchanges retried with backoff before a `DeviceError` that names the port and the motor
that stopped answering, a safe stop (`hold()`: keep the measured position, then keep the torque
or release it after a delay) and a clear error for an uncalibrated arm.

Cameras are robolearn `Camera`s (e.g. `hardware.cameras.opencv.OpenCVCamera`: frames stamped on
the monotonic clock, never repeated nor stale, reconnected when they drop out), listed as hydra
`_target_` entries::

    cameras:
      - _target_: hardware.cameras.opencv.OpenCVCamera
        name: front
        source: /dev/v4l/by-id/usb-...-video-index0
        width: 640
        height: 480
        fps: 30

or lerobot's own camera configs (`cameras: {front: {type: opencv, index_or_path: 0, ...}}`),
which lerobot's driver reads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import pkgutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from robolearn.errors import RobolearnError
from robolearn.hal import Camera, DeviceError, Observation, Robot, Teleoperator
from robolearn.spec import Feature, FeatureSpec

log = logging.getLogger(__name__)

JOINT_KEY = "action.joint"
STATE_KEY = "state"

# Units of a joint value for each lerobot MotorNormMode (its `.value`): the simulated SO-101 uses
# lerobot's use_degrees=True convention, degrees for the body and 0..100 for the gripper.
NORM_UNITS = {"degrees": "deg", "range_m100_100": "-100..100", "range_0_100": "0..100"}


class LeRobotConfigError(RobolearnError, ValueError):
    """A lerobot device type or config field that does not exist or does not fit robolearn."""


class CalibrationError(DeviceError):
    """The arm has no calibration (or one that its motors do not hold); run the calibration."""


# ---------------------------------------------------------------------- settings
@dataclass
class RetryConfig:
    """How a failed bus exchange is retried before it becomes a DeviceError.

    Every try is one call of lerobot's driver, which itself repeats a failed read at once
    (`num_read_retries`); between tries robolearn waits `backoff_s`, doubling up to
    `max_backoff_s`, so a burst of noise on the bus can pass.
    """

    tries: int = 4
    backoff_s: float = 0.005
    max_backoff_s: float = 0.05

    def check(self) -> None:
        if int(self.tries) < 1:
            raise LeRobotConfigError(f"retry.tries must be at least 1, got {self.tries}")
        if not (self.backoff_s >= 0 and self.max_backoff_s >= 0):
            raise LeRobotConfigError(
                f"retry.backoff_s and retry.max_backoff_s must be ≥ 0 seconds, got "
                f"{self.backoff_s} and {self.max_backoff_s}"
            )


@dataclass
class StopConfig:
    """What a safe stop (`hold()`, after an error or an emergency stop) does with the torque.

    `torque="hold"` keeps the motors powered at the measured position (the arm stays where it
    is, holding what it carries); `torque="release"` holds first and switches the torque off
    after `release_after_s` (the arm goes limp: support it), unless a new command comes first.
    """

    torque: str = "hold"
    release_after_s: float = 2.0

    def check(self) -> None:
        if self.torque not in ("hold", "release"):
            raise LeRobotConfigError(
                f"stop.torque must be 'hold' or 'release', got {self.torque!r}"
            )
        if not self.release_after_s >= 0:
            raise LeRobotConfigError(
                f"stop.release_after_s must be ≥ 0 seconds, got {self.release_after_s}"
            )


def _settings[T](cls: type[T], value: T | Mapping[str, Any] | None, what: str) -> T:
    """A settings dataclass from itself, a mapping (a hydra node) or None (the defaults)."""
    if value is None:
        out = cls()
    elif isinstance(value, cls):
        out = value
    elif isinstance(value, Mapping):
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(value) - names)
        if unknown:
            raise LeRobotConfigError(f"{what}: unknown key(s) {unknown}; known: {sorted(names)}")
        out = cls(**dict(value))
    else:
        raise LeRobotConfigError(f"{what} is a mapping, got {type(value).__name__}")
    out.check()  # type: ignore[attr-defined]
    return out


# ---------------------------------------------------------------------- building lerobot devices
_KINDS = {
    # kind: (module of the config base class, its name, the package holding the device types)
    "robot": ("lerobot.robots", "RobotConfig", "lerobot.robots"),
    "teleop": ("lerobot.teleoperators", "TeleoperatorConfig", "lerobot.teleoperators"),
    "camera": ("lerobot.cameras", "CameraConfig", "lerobot.cameras"),
}


def _import_lerobot(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"real arms need lerobot with its motor drivers (import {module!r} failed: {exc}); "
            "install them with: uv sync --extra hardware"
        ) from exc


def _config_base(kind: str) -> Any:
    module, name, _ = _KINDS[kind]
    return getattr(_import_lerobot(module), name)


def config_class(kind: str, type_name: str) -> type:
    """The lerobot config class registered as `type_name` (e.g. so101_follower, so101_leader).

    lerobot registers a type when its package is imported; the package is found by name
    (`lerobot.robots.koch_follower`) or, failing that, by importing the packages one by one
    (several types share one: so100_follower and so101_follower live in `so_follower`).
    """
    base = _config_base(kind)
    known = base.get_known_choices()
    if type_name in known:
        return known[type_name]
    package = _KINDS[kind][2]
    candidates = [f"{package}.{type_name}"] + [
        f"{package}.{m.name}"
        for m in pkgutil.iter_modules(_import_lerobot(package).__path__)
        if m.ispkg
    ]
    for module in candidates:
        try:
            importlib.import_module(module)
        except Exception as exc:  # a device whose optional SDK is missing: not the one wanted
            log.debug("skipping %s while looking for %r: %s", module, type_name, exc)
            continue
        known = base.get_known_choices()
        if type_name in known:
            return known[type_name]
    raise LeRobotConfigError(
        f"lerobot has no {kind} type {type_name!r}; known types: {sorted(known)}"
    )


def _plain(value: Any) -> Any:
    """Hydra nodes (DictConfig, ListConfig) as plain dicts and lists for draccus."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [_plain(v) for v in value]
    return value


def lerobot_config(kind: str, type_name: str, fields: Mapping[str, Any]) -> Any:
    """A lerobot RobotConfig / TeleoperatorConfig of `type_name` from plain config fields."""
    import draccus

    cls = config_class(kind, type_name)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise LeRobotConfigError(
            f"{type_name} has no config field(s) {unknown}; its fields are {sorted(known)}"
        )
    missing = sorted(
        name
        for name, f in known.items()
        if f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and fields.get(name) is None
    )
    if missing:
        hint = (
            " (the arm's serial port: find it with `lerobot-find-port`)"
            if "port" in missing
            else ""
        )
        raise LeRobotConfigError(
            f"{type_name} needs {', '.join(f'{m}=...' for m in missing)}{hint}"
        )
    # None means "lerobot's default" (e.g. calibration_dir), not a value to decode
    raw = {k: _plain(v) for k, v in fields.items() if v is not None}
    for key in ("id", "port", "calibration_dir"):  # `id=7` on a command line arrives as an int
        if key in raw:
            raw[key] = str(raw[key])
    cameras = raw.get("cameras") or {}
    if not isinstance(cameras, Mapping):
        raise LeRobotConfigError(
            f"lerobot's cameras are a mapping name → lerobot camera config, got {cameras!r}; "
            "e.g. {front: {type: opencv, index_or_path: 0, width: 640, height: 480, fps: 30}}"
        )
    for name, cam in cameras.items():
        if not (isinstance(cam, Mapping) and "type" in cam):
            raise LeRobotConfigError(
                f"camera {name!r} needs a lerobot camera type, e.g. type: opencv; got {cam!r}"
            )
        config_class("camera", str(cam["type"]))  # registers the type with lerobot
    try:
        return draccus.decode(_config_base(kind), {"type": type_name, **raw})
    except Exception as exc:
        raise LeRobotConfigError(f"bad {type_name} config {raw}: {exc}") from exc


def make_lerobot_device(kind: str, type_name: str, fields: Mapping[str, Any]) -> Any:
    """A lerobot Robot or Teleoperator, made by lerobot's own factory from our config fields."""
    config = lerobot_config(kind, type_name, fields)
    if kind == "robot":
        from lerobot.robots import make_robot_from_config

        return make_robot_from_config(config)
    from lerobot.teleoperators import make_teleoperator_from_config

    return make_teleoperator_from_config(config)


def calibrate_hint(kind: str, type_name: str, port: str | None) -> str:
    """The robolearn command that calibrates this device (named in calibration errors)."""
    group = "robot" if kind == "robot" else "teleop"
    name = type_name.removesuffix("_follower") if kind == "robot" else type_name
    return f"robolearn calibrate {group}={name} port={port or 'PORT'}"


# ---------------------------------------------------------------------- the shared bus handling
# What a failed exchange with a serial bus looks like from lerobot: ConnectionError (no or a
# corrupted status packet), RuntimeError (a motor's error status: overload, overheating),
# OSError (the port vanished: serial.SerialException is one), TimeoutError (a stale camera).
_BUS_ERRORS = (ConnectionError, RuntimeError, OSError)


class LeRobotDevice:
    """One lerobot device (robot or teleoperator) made from its type and config fields: connect
    with a calibration check, bus exchanges with retries, a diagnosis that names the motor at
    fault, a disconnect that never raises. The arm, the leader and `robolearn calibrate` share it."""

    def __init__(
        self,
        kind: str,
        type_name: str,
        fields: Mapping[str, Any],
        retry: RetryConfig,
        write_calibration: bool,
    ) -> None:
        self.kind = kind
        self.type_name = type_name
        self.port = fields.get("port")
        self.retry = retry
        self.write_calibration = write_calibration
        self.device = make_lerobot_device(kind, type_name, fields)
        self.lock = threading.RLock()  # the bus is shared with the torque-release timer
        self.retries = 0  # failed tries that a later one made good (for logs and tests)

    @property
    def bus(self) -> Any:
        return getattr(self.device, "bus", None)

    @property
    def where(self) -> str:
        return f"{self.type_name} on {self.port}" if self.port else self.type_name

    def connect(self) -> None:
        """Open the device (`open`) and check its calibration (CalibrationError with the fix)."""
        with self.lock:
            self.open()
            try:
                self._check_calibration()
            except BaseException:
                self.disconnect()
                raise

    def open(self) -> None:
        """lerobot's connect, without its interactive calibration, retried on bus errors."""
        dev = self.device
        with self.lock:
            delay = self.retry.backoff_s
            for attempt in range(1, self.retry.tries + 1):
                try:
                    # calibrate=False: lerobot would otherwise start its interactive calibration
                    dev.connect(calibrate=False)
                    break
                except _BUS_ERRORS as exc:
                    self._close_quietly()
                    # lerobot sets the motors up with single writes, unretried: a packet lost
                    # then fails the whole connect, so it is tried again (not a missing port)
                    if _port_unusable(exc):
                        raise DeviceError(
                            f"cannot open the port {self.port} of the {self.type_name} "
                            f"({_one_line(exc.__cause__ or exc)}): is it the arm's port? "
                            "`lerobot-find-port` finds it"
                        ) from exc
                    if attempt == self.retry.tries:
                        raise DeviceError(
                            f"cannot connect to the {self.where}: {_one_line(exc)}. Check the "
                            "USB cable, the arm's power supply and the port (`lerobot-find-port` "
                            "lists them)"
                        ) from exc
                    log.info("%s: connecting failed (%s); trying again", self.where, exc)
                    time.sleep(delay)
                    delay = min(2 * delay, self.retry.max_backoff_s)

    def _check_calibration(self) -> None:
        dev = self.device
        if dev.is_calibrated:
            return
        hint = calibrate_hint(self.kind, self.type_name, self.port)
        path = getattr(dev, "calibration_fpath", None)
        if not dev.calibration:
            raise CalibrationError(
                f"the {self.where} is not calibrated: there is no calibration file {path} for "
                f"id {dev.id!r}. Run `{hint}` (with the same id), or set `id` and "
                "`calibration_dir` to where your lerobot calibration lives"
            )
        if not self.write_calibration or self.bus is None:
            raise CalibrationError(
                f"the motors of the {self.where} hold another calibration than {path}. "
                f"Run `{hint}`, or set write_calibration=true to write the file to the motors"
            )
        # what lerobot's own flow does when the file exists and the operator presses ENTER
        log.warning("%s: writing the calibration of %s to the motors", self.where, path)
        with self.bus.torque_disabled():
            self.bus.write_calibration(dev.calibration)
        if not dev.is_calibrated:
            raise CalibrationError(
                f"the motors of the {self.where} did not take the calibration of {path}; "
                f"run `{hint}`"
            )

    def call[R](
        self, what: str, fn: Callable[[], R], tries: int | None = None, *, diagnose: bool = True
    ) -> R:
        """`fn()` with retries and backoff; then a DeviceError naming the port and (with
        `diagnose`, which pings every motor) the motor at fault."""
        tries = self.retry.tries if tries is None else tries
        delay = self.retry.backoff_s
        last: BaseException | None = None
        for attempt in range(1, tries + 1):
            try:
                with self.lock:
                    out = fn()
                if attempt > 1:
                    self.retries += attempt - 1
                    log.info("%s: %s succeeded on try %d", self.where, what, attempt)
                return out
            except _BUS_ERRORS as exc:
                if _not_connected(exc):
                    raise DeviceError(f"the {self.where} is not connected ({exc})") from exc
                last = exc
                log.debug("%s: %s failed (try %d of %d): %s", self.where, what, attempt, tries, exc)
                if attempt < tries:
                    time.sleep(delay)
                    delay = min(
                        2 * delay if delay else self.retry.backoff_s, self.retry.max_backoff_s
                    )
        assert last is not None
        if isinstance(last, TimeoutError) or "frame" in str(last):
            # lerobot's cameras: TimeoutError for a stale frame, RuntimeError for none yet
            why = "a camera delivers no fresh frames: check its cable, index_or_path and fps"
        elif isinstance(last, ConnectionError | OSError):
            why = self.diagnose() if diagnose else "the bus does not answer"
        else:  # lerobot raises RuntimeError for a status packet that carries a motor's alarm
            why = (
                "a motor reports a hardware alarm (overload, overheating or voltage): free the "
                "arm if it is stuck, let it cool down, check the power supply"
            )
        raise DeviceError(
            f"the {self.where} failed to {what} after {tries} tries ({_one_line(last)}); {why}"
        ) from last

    def diagnose(self) -> str:
        """Which motors still answer a ping: names the one at fault, or the cable and power."""
        bus = self.bus
        if bus is None or not getattr(bus, "motors", None):
            return "check the device's cable and power"
        silent: list[str] = []
        try:
            with self.lock:
                for name, motor in bus.motors.items():
                    if bus.ping(name) is None:
                        silent.append(f"{name!r} (id {motor.id})")
        except Exception as exc:  # the port itself is gone
            return (
                f"the port {self.port} does not work any more ({exc}): is the USB cable unplugged?"
            )
        if not silent:
            return (
                f"every motor on {self.port} answers a ping, so the bus is noisy: check the "
                "cables between the motors and the power supply"
            )
        if len(silent) == len(bus.motors):
            return (
                f"no motor answers on {self.port}: is the arm's power off or its cable "
                "(USB or the first motor's) unplugged?"
            )
        motors, verb = ("motor", "does") if len(silent) == 1 else ("motors", "do")
        return (
            f"{motors} {', '.join(silent)} {verb} not answer on {self.port}: check the cable "
            "into each and the one before it in the chain"
        )

    def disconnect(self) -> None:
        """lerobot's disconnect (torque off when its config says so); never raises."""
        dev = self.device
        with self.lock:
            try:
                if dev.is_connected:
                    dev.disconnect()
                    return
            except Exception as exc:
                log.error(
                    "%s: could not disconnect cleanly (%s); the torque may still be on: "
                    "switch the arm's power off before touching it",
                    self.where,
                    exc,
                )
            self._close_quietly()

    def _close_quietly(self) -> None:
        bus = self.bus
        handler = getattr(bus, "port_handler", None)
        if handler is not None and getattr(handler, "is_open", False):
            try:
                handler.closePort()
            except Exception as exc:
                log.debug("%s: closing the port failed: %s", self.where, exc)
        for cam in getattr(self.device, "cameras", {}).values():
            try:
                if cam.is_connected:
                    cam.disconnect()
            except Exception as exc:
                log.debug("%s: closing a camera failed: %s", self.where, exc)


def _port_unusable(exc: BaseException) -> bool:
    """lerobot failed to open the port itself (not a motor that did not answer the handshake)."""
    cause = exc.__cause__
    return "Could not connect on port" in str(exc) and not isinstance(cause, ConnectionError)


def _as_spec(spec: Any) -> FeatureSpec | None:
    """The FeatureSpec itself: hydra's instantiate hands dataclass arguments over as config
    nodes (structured configs), which have the spec's fields but not its methods."""
    if spec is None or isinstance(spec, FeatureSpec):
        return spec
    from omegaconf import OmegaConf

    if OmegaConf.is_config(spec):
        spec = OmegaConf.to_object(spec)
    if isinstance(spec, FeatureSpec):
        return spec
    if isinstance(spec, Mapping):
        return FeatureSpec.from_dict(spec)
    raise LeRobotConfigError(f"spec is a FeatureSpec, got {type(spec).__name__}")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _not_connected(exc: BaseException) -> bool:
    return type(exc).__name__ == "DeviceNotConnectedError"


def _motor_limits(bus: Any, motor: str) -> tuple[float, float] | None:
    """A motor's range in its normalised units (from its calibration), None when unknown."""
    m = getattr(bus, "motors", {}).get(motor)
    if m is None:
        return None
    mode = getattr(m.norm_mode, "value", m.norm_mode)
    if mode == "range_0_100":
        return 0.0, 100.0
    if mode == "range_m100_100":
        return -100.0, 100.0
    if mode == "degrees":
        cal = (getattr(bus, "calibration", None) or {}).get(motor)
        if cal is None:
            return -180.0, 180.0
        # lerobot maps the calibrated range symmetrically around its middle
        resolution = bus.model_resolution_table[m.model] - 1
        half = (cal.range_max - cal.range_min) / 2 * 360.0 / resolution
        return -half, half
    return None


def _joint_units(bus: Any, names: Sequence[str]) -> dict[str, str]:
    motors = getattr(bus, "motors", {})
    out = {}
    for name in names:
        m = motors.get(name.removesuffix(".pos"))
        mode = getattr(getattr(m, "norm_mode", None), "value", None)
        out[name] = NORM_UNITS.get(str(mode), "unknown")
    return out


class _CapWarnings(logging.Filter):
    """lerobot warns on the root logger, several lines long, at every tick in which
    `max_relative_target` caps a target: at 30 Hz that buries every other line. Keep the
    first warning and every 100th, with a count."""

    PREFIX = "Relative goal position magnitude had to be clamped"
    EVERY = 100

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.PREFIX):
            return True
        self.count += 1
        if self.count > 1 and self.count % self.EVERY:
            return False
        record.msg = (
            f"max_relative_target capped a joint target ({self.count} time(s) in this process; "
            f"shown once every {self.EVERY}): {record.msg}"
        )
        return True


_CAP_WARNINGS = _CapWarnings()


def _summarise_cap_warnings() -> None:
    root = logging.getLogger()
    if _CAP_WARNINGS not in root.filters:
        root.addFilter(_CAP_WARNINGS)


# ---------------------------------------------------------------------- robolearn cameras
CAMERA_EXAMPLE = (
    "cameras: [{_target_: hardware.cameras.opencv.OpenCVCamera, name: front, source: 0, "
    "width: 640, height: 480, fps: 30}] (see configs/camera/opencv.yaml), or lerobot's "
    "{front: {type: opencv, index_or_path: 0, width: 640, height: 480, fps: 30}}"
)


def split_cameras(value: Any) -> tuple[dict[str, Any], list[Camera]]:
    """A `cameras` setting as (lerobot camera configs by name, robolearn cameras).

    Accepted: a list of robolearn camera entries (or one built `Camera`), or a mapping
    name → entry where an entry is a robolearn camera (a built `Camera`, or a `_target_` node,
    which is built here) or a lerobot camera config (a node with a lerobot `type`). `robolearn.config.build` builds
    nested `_target_` nodes before the arm, so from a YAML the cameras arrive as objects.
    """
    if value is None:
        return {}, []
    if isinstance(value, Camera):
        value = [value]
    lerobot: dict[str, Any] = {}
    own: list[Camera] = []
    if isinstance(value, Mapping):
        for key, entry in value.items():
            if isinstance(entry, Mapping) and "type" in entry and "_target_" not in entry:
                lerobot[str(key)] = entry
            else:
                own.append(_robolearn_camera(entry, f"cameras.{key}", name=str(key)))
    elif isinstance(value, Sequence) and not isinstance(value, str | bytes):
        for i, entry in enumerate(value):
            if isinstance(entry, Mapping) and "type" in entry and "_target_" not in entry:
                raise LeRobotConfigError(
                    f"cameras[{i}] is a lerobot camera config ({_plain(entry)}); lerobot's "
                    "cameras go in a mapping by name: {front: {type: opencv, ...}}; a list "
                    "takes robolearn cameras (_target_ entries)"
                )
            own.append(_robolearn_camera(entry, f"cameras[{i}]"))
    else:
        raise LeRobotConfigError(
            f"cameras is a list of cameras or a mapping name → camera, got "
            f"{type(value).__name__} {value!r}; e.g. {CAMERA_EXAMPLE}"
        )
    names = [cam.name for cam in own]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise LeRobotConfigError(
            f"camera name(s) {twice} given more than once; each camera's name is its "
            "observation key, so every camera needs its own"
        )
    return lerobot, own


def _robolearn_camera(entry: Any, where: str, name: str | None = None) -> Camera:
    """One robolearn camera from a built Camera or a `_target_` node; `name`: its mapping key."""
    if isinstance(entry, Mapping) and "_target_" in entry:
        fields = dict(_plain(entry))
        if name is not None:
            fields.setdefault("name", name)
        from hydra.utils import instantiate

        try:
            entry = instantiate(fields)
        except Exception as exc:
            raise LeRobotConfigError(f"{where}: cannot build the camera {fields}: {exc}") from exc
    if not isinstance(entry, Camera):
        raise LeRobotConfigError(
            f"{where} is not a camera (got {type(entry).__name__} {entry!r}); e.g. {CAMERA_EXAMPLE}"
        )
    if name is not None and entry.name != name:
        raise LeRobotConfigError(
            f"{where}: the camera is named {entry.name!r}, not {name!r}; a camera's name is "
            f"its observation key: make them the same (name: {name})"
        )
    feature = entry.feature
    if feature.kind != "image" or feature.dtype != "uint8" or len(feature.shape) != 3:
        raise LeRobotConfigError(
            f"{where}: camera {entry.name!r} delivers {feature.dtype} {feature.kind} of shape "
            f"{feature.shape}; robolearn cameras deliver uint8 H×W×C images"
        )
    return entry


def _close_camera(cam: Camera, where: str) -> None:
    """Disconnect a camera; never raises (it runs on the way out of an error, too)."""
    try:
        cam.disconnect()
    except Exception as exc:
        log.error("%s: could not disconnect camera %r: %s", where, cam.name, exc)


# ---------------------------------------------------------------------- the arm
class LeRobotArm(Robot):
    """A lerobot robot (an SO-100/SO-101 or Koch follower arm, …) behind robolearn's Robot.

    `type` is lerobot's robot type (`so101_follower`, `so100_follower`, `koch_follower`, …);
    every other keyword not listed here is a field of that type's lerobot config (`port`, `id`,
    `calibration_dir`, `max_relative_target`, `disable_torque_on_disconnect`, `use_degrees`,
    …). robolearn's own settings:

    - `cameras`: robolearn `Camera`s (built, or hydra `_target_` nodes) as a list or a mapping
      name → camera; a mapping's entries with a lerobot `type` are lerobot camera configs, read
      by lerobot's driver instead (see `split_cameras`);
    - `joint_limits`: `{joint: [low, high]}` overriding the limits read from the calibration;
    - `retry`: a `RetryConfig` (bus exchanges retried with backoff before a DeviceError);
    - `stop`: a `StopConfig` (what `hold()` does with the torque);
    - `write_calibration`: when the motors hold another calibration than the file of this `id`,
      write the file's to them (what lerobot does when you press ENTER) instead of failing.

    Spec: `state` (the joints in lerobot's order and units: degrees with use_degrees=True, the
    gripper 0..100), one uint8 image per camera (a robolearn camera's key is its name, its
    feature the camera's `feature`) and `action.joint` (absolute joint targets,
    representation joint_position, limits from the calibrated range). `connect()` opens the
    cameras before the bus, `disconnect()` closes them after it; a camera that fails to
    open or to deliver a frame is a DeviceError naming it. With lerobot's
    `max_relative_target` the arm caps each tick's move itself; `act()` returns the target as
    capped, so a recording stores what the arm was really told.
    """

    def __init__(
        self,
        type: str,
        *,
        joint_limits: Mapping[str, Sequence[float]] | None = None,
        retry: RetryConfig | Mapping[str, Any] | None = None,
        stop: StopConfig | Mapping[str, Any] | None = None,
        write_calibration: bool = True,
        cameras: Sequence[Any] | Mapping[str, Any] | None = None,
        **config: Any,
    ) -> None:
        self.type = type
        self.retry = _settings(RetryConfig, retry, "retry")
        self.stop = _settings(StopConfig, stop, "stop")
        lerobot_cameras, own_cameras = split_cameras(cameras)
        if lerobot_cameras:
            config["cameras"] = lerobot_cameras
        # robolearn's cameras, by name (= observation key); lerobot's live in `lerobot.cameras`
        self.cameras: dict[str, Camera] = {cam.name: cam for cam in own_cameras}
        self._dev = LeRobotDevice("robot", type, config, self.retry, bool(write_calibration))
        self._joint_limits = {
            str(k): tuple(float(x) for x in v) for k, v in (joint_limits or {}).items()
        }
        self._release_timer: threading.Timer | None = None
        self._released = False
        self._read_span: tuple[float, float] | None = None
        self._timing = False
        self.stops: list[str] = []  # one line per safe stop, newest last (logs and tests)
        self._time_bus_reads()
        self._spec = self._build_spec()
        _summarise_cap_warnings()

    # ------------------------------------------------------------------ spec
    @property
    def lerobot(self) -> Any:
        """The lerobot robot underneath (its bus, cameras and calibration)."""
        return self._dev.device

    @property
    def port(self) -> str | None:
        return self._dev.port

    @property
    def retries(self) -> int:
        """Failed bus exchanges that a retry made good, since the arm was made."""
        return self._dev.retries

    def _build_spec(self) -> FeatureSpec:
        lr = self.lerobot
        obs_ft, act_ft = dict(lr.observation_features), dict(lr.action_features)
        self._state_names = [k for k, v in obs_ft.items() if not isinstance(v, tuple)]
        self._images = [
            k for k, v in obs_ft.items() if isinstance(v, tuple) and len(v) == 3 and v[2] == 3
        ]
        # anything else with a shape (a depth map, H×W×1) is kept as float32 state
        self._arrays = [
            k for k, v in obs_ft.items() if isinstance(v, tuple) and k not in self._images
        ]
        self._action_names = list(act_ft)
        not_positions = [k for k in self._action_names if not k.endswith(".pos")]
        if not_positions:
            raise LeRobotConfigError(
                f"LeRobotArm drives position-controlled arms, but {self.type} also takes "
                f"{not_positions}; robolearn's joint_position actions are '<joint>.pos' only"
            )
        if not self._state_names:
            raise LeRobotConfigError(f"{self.type} observes no joint values")
        unknown = sorted(set(self._joint_limits) - set(self._action_names))
        if unknown:
            raise LeRobotConfigError(
                f"joint_limits names {unknown}, which {self.type} does not have "
                f"(its joints: {self._action_names})"
            )
        low, high = [], []
        for name in self._action_names:
            lim = self._joint_limits.get(name) or _motor_limits(
                self._dev.bus, name.removesuffix(".pos")
            )
            if lim is None or len(lim) != 2 or not lim[0] < lim[1]:
                raise LeRobotConfigError(
                    f"the limits of {name!r} are unknown or empty ({lim}); give them as "
                    f"joint_limits: {{{name}: [low, high]}} in the action's units"
                )
            low.append(lim[0])
            high.append(lim[1])
        features: dict[str, Feature] = {
            STATE_KEY: Feature(
                (len(self._state_names),), "float32", "state", names=self._state_names
            )
        }
        for key in self._images:
            features[key] = Feature(tuple(obs_ft[key]), "uint8", "image")
        for key in self._arrays:
            features[key] = Feature(tuple(obs_ft[key]), "float32", "state")
        for name, cam in self.cameras.items():
            if name in features or name == JOINT_KEY:
                raise LeRobotConfigError(
                    f"camera {name!r} has the name of another observation or action of the "
                    f"{self.type} ({[*features, JOINT_KEY]}); give the camera another name"
                )
            features[name] = cam.feature
        features[JOINT_KEY] = Feature(
            (len(self._action_names),),
            "float32",
            "action",
            names=self._action_names,
            low=low,
            high=high,
            representation="joint_position",
        )
        return FeatureSpec(features)

    @property
    def spec(self) -> FeatureSpec:
        return self._spec

    @property
    def units(self) -> dict[str, str]:
        """Each action dimension's units ('deg', '0..100', '-100..100'), from lerobot's norm modes."""
        return _joint_units(self._dev.bus, self._action_names)

    # ------------------------------------------------------------------ lifecycle
    def _connect(self) -> None:
        # cameras first: a camera that cannot work fails before the arm's torque comes on
        opened: list[Camera] = []
        try:
            for name, cam in self.cameras.items():
                with self._camera_errors(name, "open"):
                    cam.connect()
                opened.append(cam)
            self._dev.connect()
        except BaseException:
            for cam in reversed(opened):
                _close_camera(cam, self._dev.where)
            raise
        # the calibration may have been written to the motors: the limits follow it
        self._spec = self._build_spec()

    def _disconnect(self) -> None:
        with self._dev.lock:
            timer, self._release_timer, self._released = self._release_timer, None, False
        if timer is not None:
            timer.cancel()
        try:
            self._dev.disconnect()
        finally:
            for cam in self.cameras.values():
                _close_camera(cam, self._dev.where)

    @contextlib.contextmanager
    def _camera_errors(self, name: str, what: str) -> Iterator[None]:
        """Camera failures as DeviceErrors naming the camera (the recorder then discards the
        episode in flight): its own when it names itself, else one that does."""
        try:
            yield
        except Exception as exc:  # a third-party camera may raise anything
            if isinstance(exc, DeviceError) and repr(name) in str(exc):
                raise
            raise DeviceError(
                f"camera {name!r} of the {self._dev.where} failed to {what}: {_one_line(exc)}"
            ) from exc

    # ------------------------------------------------------------------ observe / act
    def _time_bus_reads(self) -> None:
        """Note when the joints were read: time.monotonic() around lerobot's bus read."""
        bus = self._dev.bus
        read = getattr(bus, "sync_read", None)
        if read is None:
            return

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.monotonic()
            out = read(*args, **kwargs)
            if self._timing and self._read_span is None:
                self._read_span = (t0, time.monotonic())
            return out

        # an instance attribute: lerobot's get_observation() goes on calling its own read
        bus.sync_read = timed

    def _observe(self) -> Observation:
        lr = self.lerobot
        # robolearn's cameras first: read() waits for a frame it has not returned yet, and
        # the joints read after that wait are the fresher for it
        frames: dict[str, np.ndarray] = {}
        frame_times: dict[str, float] = {}
        for name, cam in self.cameras.items():
            with self._camera_errors(name, "deliver a frame"):
                frame, t = cam.read()
            frame = np.asarray(frame)
            want = self._spec[name]
            if frame.shape != want.shape or frame.dtype != np.uint8:
                raise DeviceError(
                    f"camera {name!r} of the {self._dev.where} delivered a {frame.dtype} frame "
                    f"of shape {frame.shape}, not uint8 {want.shape}: check its width and height"
                )
            frames[name], frame_times[name] = frame, float(t)

        def read() -> dict[str, Any]:
            self._read_span = None
            self._timing = True
            try:
                return lr.get_observation()
            finally:
                self._timing = False

        t0 = time.monotonic()
        raw = self._dev.call("read the joints", read)
        t1 = time.monotonic()
        span = self._read_span or (t0, t1)
        t_state = (span[0] + span[1]) / 2  # the servos' positions were sampled in between
        values: dict[str, np.ndarray] = {
            STATE_KEY: np.array([raw[n] for n in self._state_names], dtype=np.float32)
        }
        times = {STATE_KEY: t_state}
        for key in self._images:
            frame = np.asarray(raw[key])
            if frame.shape != self._spec[key].shape or frame.dtype != np.uint8:
                raise DeviceError(
                    f"camera {key!r} of the {self._dev.where} delivered a {frame.dtype} frame of "
                    f"shape {frame.shape}, not uint8 {self._spec[key].shape}: check its "
                    "width, height and color_mode"
                )
            values[key] = frame
            times[key] = self._frame_time(key, frame, t0)
        for key in self._arrays:
            values[key] = np.asarray(raw[key], dtype=np.float32).reshape(self._spec[key].shape)
            times[key] = self._frame_time(key.removesuffix("_depth"), None, t0)
        values.update(frames)
        times.update(frame_times)  # each camera's own capture time (time.monotonic())
        return Observation(values, times)

    def _frame_time(self, camera: str, frame: np.ndarray | None, fallback: float) -> float:
        """The camera's own capture time on the monotonic clock (lerobot stamps frames with
        time.perf_counter()); `fallback` when the frame is not the one the stamp belongs to."""
        cam = getattr(self.lerobot, "cameras", {}).get(camera)
        stamp = getattr(cam, "latest_timestamp", None)
        if cam is None or stamp is None:
            return fallback
        lock = getattr(cam, "frame_lock", None)
        if frame is not None and lock is not None:
            with lock:
                if cam.latest_frame is not frame:  # a newer frame came since ours
                    return fallback
                stamp = cam.latest_timestamp
        return time.monotonic() - (time.perf_counter() - float(stamp))

    def _send(self, key: str, action: np.ndarray) -> dict[str, np.ndarray]:
        self._cancel_release()  # someone is driving the arm again
        target = {n: float(v) for n, v in zip(self._action_names, action, strict=True)}
        sent = self._dev.call("send the joint targets", lambda: self.lerobot.send_action(target))
        out = np.array([sent.get(n, target[n]) for n in self._action_names], dtype=np.float32)
        return {JOINT_KEY: out}

    # ------------------------------------------------------------------ safe stop
    def hold(self) -> None:
        """Stop where the arm is: the measured joints become the target, then the torque policy.

        When the bus no longer answers nothing can be sent: the servos keep their last target
        with the torque on, and the message says so.
        """
        if not self.is_connected:
            return
        lr = self.lerobot
        try:
            # quick: a stop comes right after an error, which said what failed already
            raw = self._dev.call(
                "read the joints for a safe stop", lr.get_observation, tries=2, diagnose=False
            )
            here = {n: float(raw[n]) for n in self._action_names if n in raw}
            self._dev.call(
                "send the safe-stop target", lambda: lr.send_action(here), tries=2, diagnose=False
            )
        except DeviceError as exc:
            msg = (
                f"safe stop of the {self._dev.where} failed ({exc}); the servos keep their last "
                "target with the torque on: switch the arm's power off if that is unsafe"
            )
            log.error(msg)
            self.stops.append(msg)
            return
        if self.stop.torque == "release":
            msg = (
                f"safe stop: the {self._dev.where} holds its position; the torque goes off in "
                f"{self.stop.release_after_s:g} s (support the arm)"
            )
            self._schedule_release()
            log.warning(msg)
        else:  # also the normal end of every recording: not worth a warning
            msg = f"safe stop: the {self._dev.where} holds its position with the torque on"
            log.info(msg)
        self.stops.append(msg)

    def _schedule_release(self) -> None:
        self._cancel_release()
        timer = threading.Timer(self.stop.release_after_s, self._release)
        timer.daemon = True
        self._release_timer = timer
        timer.start()

    def _release(self) -> None:
        bus = self._dev.bus
        with self._dev.lock:
            # a command that came meanwhile cancelled the release (it holds the same lock)
            if self._release_timer is None or bus is None or not self.is_connected:
                return
            self._release_timer = None
            try:
                self._dev.call("switch the torque off", bus.disable_torque, tries=3)
            except DeviceError as exc:
                log.error("%s: could not switch the torque off: %s", self._dev.where, exc)
                return
            self._released = True
        log.warning("%s: torque off after the safe stop", self._dev.where)
        self.stops.append(f"torque released on the {self._dev.where}")

    def _cancel_release(self) -> None:
        with self._dev.lock:
            timer, self._release_timer = self._release_timer, None
            if timer is not None:
                timer.cancel()
            if self._released:
                # lerobot's send_action moves only powered motors: a new command powers them
                self._released = False
                bus = self._dev.bus
                if bus is not None:
                    self._dev.call("switch the torque back on", bus.enable_torque, tries=2)


# ---------------------------------------------------------------------- teleoperators
class LeRobotTeleop(Teleoperator):
    """A lerobot teleoperator (the SO-101 leader arm, a Koch leader, …) giving `action.joint`.

    `type` is lerobot's teleoperator type (`so101_leader`, `so100_leader`, `koch_leader`, …);
    the other keywords are its lerobot config fields (`port`, `id`, `calibration_dir`,
    `use_degrees`). With the follower (`robot`, or its `spec`; `robolearn record` passes both)
    the values come in the order of its action names, and a leader whose joints differ is
    refused.
    Episode events come from the terminal keys; a leader arm has no buttons.
    """

    def __init__(
        self,
        type: str,
        *,
        robot: Robot | None = None,
        spec: FeatureSpec | None = None,
        action_key: str = JOINT_KEY,
        retry: RetryConfig | Mapping[str, Any] | None = None,
        write_calibration: bool = True,
        **config: Any,
    ) -> None:
        self.type = type
        self.action_key = action_key
        self.retry = _settings(RetryConfig, retry, "retry")
        self._dev = LeRobotDevice("teleop", type, config, self.retry, bool(write_calibration))
        own = list(self._dev.device.action_features)
        spec = robot.spec if robot is not None else _as_spec(spec)
        if spec is not None:
            if action_key not in spec or spec[action_key].kind != "action":
                raise LeRobotConfigError(
                    f"the robot has no action {action_key!r} for the {type} (it has "
                    f"{spec.action_keys}); a leader arm gives joint targets"
                )
            want = spec[action_key].dim_names()
            if set(want) != set(own):
                raise LeRobotConfigError(
                    f"the {type} gives {own} but the robot's {action_key!r} takes {want}: "
                    "a leader arm drives a follower with the same joints"
                )
            self.names = want
        else:
            self.names = own

    @property
    def lerobot(self) -> Any:
        """The lerobot teleoperator underneath."""
        return self._dev.device

    @property
    def retries(self) -> int:
        return self._dev.retries

    @property
    def is_connected(self) -> bool:
        return bool(self._dev.device.is_connected)

    def connect(self) -> None:
        if not self.is_connected:
            self._dev.connect()

    def disconnect(self) -> None:
        self._dev.disconnect()

    def read(self, observation: Observation | None = None) -> dict[str, np.ndarray]:
        if not self.is_connected:
            raise DeviceError(f"the {self._dev.where} is not connected; call connect() first")
        raw = self._dev.call("read the leader arm", self.lerobot.get_action)
        return {self.action_key: np.array([raw[n] for n in self.names], dtype=np.float32)}
