"""`robolearn calibrate`: lerobot's own calibration (and motor set-up) flow, for a robolearn config.

    robolearn calibrate robot=so101 port=/dev/ttyACM0              # the follower arm
    robolearn calibrate teleop=so101_leader port=/dev/ttyACM1      # the leader arm
    robolearn calibrate robot=so101 port=/dev/ttyACM0 --setup-motors   # give new motors their ids

The device is the one `configs/robot/<name>.yaml` (or `configs/teleop/<name>.yaml`) describes,
with `key=value` overrides of its fields (`port`, `id`, `calibration_dir`, …); the flow and the
file it writes (`<calibration_dir>/<id>.json`) are lerobot's, so robolearn, `lerobot-record`
and `lerobot-teleoperate` share one calibration.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

from hardware.lerobot_arm import LeRobotConfigError, LeRobotDevice, RetryConfig

log = logging.getLogger(__name__)

USAGE = """usage: robolearn calibrate robot=NAME port=PORT [id=ID] [calibration_dir=DIR] [--setup-motors]
       robolearn calibrate teleop=NAME port=PORT [id=ID] [calibration_dir=DIR] [--setup-motors]

Runs lerobot's calibration of a real arm (robot=) or leader arm (teleop=) described by
configs/robot/NAME.yaml or configs/teleop/NAME.yaml, and saves lerobot's calibration file
<calibration_dir>/<id>.json. Other key=value pairs override fields of that config.

  --setup-motors   first-time set-up instead: give each new motor its id and baud rate
                   (connect one motor at a time when asked)

robots: {robots}
teleops: {teleops}
"""

# robolearn's own settings of the adapters: not lerobot config fields
_ADAPTER_KEYS = ("_target_", "retry", "stop", "write_calibration", "joint_limits", "action_key")
_TARGETS = {
    "robot": "hardware.lerobot_arm.LeRobotArm",
    "teleop": "hardware.lerobot_arm.LeRobotTeleop",
}


def _choices(group: str) -> list[str]:
    """The configs of `group` that are lerobot devices (the simulated ones have nothing to calibrate)."""
    from robolearn.config import CONF_DIR

    out = []
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        if _TARGETS[group] in path.read_text():
            out.append(path.stem)
    return out


def usage() -> str:
    return USAGE.format(robots=", ".join(_choices("robot")), teleops=", ".join(_choices("teleop")))


def parse_args(argv: Sequence[str]) -> tuple[str, str, dict[str, str], bool]:
    """(group, config name, field overrides, --setup-motors) of the command line."""
    pairs: dict[str, str] = {}
    setup = False
    for arg in argv:
        if arg == "--setup-motors":
            setup = True
            continue
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise LeRobotConfigError(f"{arg!r} is not key=value\n{usage()}")
        pairs[key] = value
    groups = [g for g in _TARGETS if g in pairs]
    if len(groups) != 1:
        raise LeRobotConfigError(
            f"name one device: robot=NAME or teleop=NAME (e.g. robot=so101 port=/dev/ttyACM0)\n{usage()}"
        )
    group = groups[0]
    name = pairs.pop(group)
    # `robot.port=...` (as `robolearn record` spells it) means the same as `port=...`
    overrides = {k.removeprefix(f"{group}."): v for k, v in pairs.items()}
    return group, name, overrides, setup


def device_fields(group: str, name: str, overrides: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """(lerobot type, lerobot config fields) of configs/<group>/<name>.yaml with overrides."""
    from omegaconf import OmegaConf

    from robolearn.config import CONF_DIR

    path = CONF_DIR / group / f"{name}.yaml"
    if not path.exists():
        raise LeRobotConfigError(
            f"there is no {group} config {name!r}; real {group}s: {', '.join(_choices(group))}"
        )
    cfg = OmegaConf.load(path)
    if cfg.get("_target_") != _TARGETS[group]:
        raise LeRobotConfigError(
            f"{group}={name} is not a real lerobot device (its _target_ is "
            f"{cfg.get('_target_')!r}): there is nothing to calibrate"
        )
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"{k}={v}" for k, v in overrides.items()]))
    if OmegaConf.is_missing(cfg, "port"):
        raise LeRobotConfigError(
            f"give the serial port: robolearn calibrate {group}={name} port=/dev/ttyACM0 "
            "(`lerobot-find-port` finds it)"
        )
    fields = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(fields, dict)
    for key in _ADAPTER_KEYS:
        fields.pop(key, None)
    type_name = str(fields.pop("type"))
    return type_name, {str(k): v for k, v in fields.items()}


def main(argv: Sequence[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(usage())
        return 0
    group, name, overrides, setup = parse_args(argv)
    type_name, fields = device_fields(group, name, overrides)
    kind = "robot" if group == "robot" else "teleop"
    handle = LeRobotDevice(kind, type_name, fields, RetryConfig(), write_calibration=False)
    device = handle.device
    if setup:
        setup_motors = getattr(device, "setup_motors", None)
        if not callable(setup_motors):
            raise LeRobotConfigError(f"lerobot's {type_name} has no motor set-up flow")
        setup_motors()
        print(
            f"motors of the {type_name} are set up; next: robolearn calibrate {group}={name} port=..."
        )
        return 0
    handle.open()  # connect only (retried on a noisy bus): the calibration is the flow below
    try:
        device.calibrate()  # lerobot's interactive flow; it writes <calibration_dir>/<id>.json
    finally:
        handle.disconnect()
    print(f"calibration of the {type_name} saved to {device.calibration_fpath}")
    return 0


if __name__ == "__main__":
    from robolearn.errors import RobolearnError

    try:
        sys.exit(main(sys.argv[1:]))
    except RobolearnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
