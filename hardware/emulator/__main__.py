"""`python -m hardware.emulator so101` (or `koch`): serve an emulated arm's servo bus until Ctrl-C."""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardware.emulator.dynamixel import (
    DynamixelBusEmulator,
    koch_follower_models,
    koch_leader_models,
    koch_motors,
    write_koch_calibration,
)
from hardware.emulator.feetech import FeetechBusEmulator, so101_motors, write_so101_calibration
from hardware.emulator.serial_bus import EmulatorError, PtyBusEmulator


@dataclass(frozen=True)
class Arm:
    """How to emulate one arm: a bus for its follower and its leader, and its calibration file."""

    make: Callable[[str, int], PtyBusEmulator]  # (role, seed) -> bus
    write_calibration: Callable[[str, str, Any], Path]  # (directory, robot id, bus) -> file
    teleop: str | None  # robolearn's teleop config for its leader arm (configs/teleop/), if any


ARMS: dict[str, Arm] = {
    "so101": Arm(
        lambda role, seed: FeetechBusEmulator(so101_motors(), seed=seed),
        write_so101_calibration,
        "so101_leader",
    ),
    "koch": Arm(
        lambda role, seed: DynamixelBusEmulator(
            koch_motors(),
            models=koch_follower_models() if role == "follower" else koch_leader_models(),
            seed=seed,
        ),
        write_koch_calibration,
        None,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hardware.emulator",
        description="Serve an emulated servo bus (Feetech or Dynamixel) on a pseudo-terminal, "
        "to try the real-hardware path (lerobot's drivers, robolearn's adapters) before the "
        "arm arrives.",
    )
    parser.add_argument("arm", choices=sorted(ARMS), help="the arm whose servos to emulate")
    parser.add_argument(
        "--leader",
        action="store_true",
        help="also serve a leader arm (a second bus) for teleoperation",
    )
    parser.add_argument(
        "--wiggle",
        type=float,
        default=0.0,
        metavar="DEG",
        help="move the leader's joints by ±DEG degrees, slowly, as a person would (default 0)",
    )
    parser.add_argument(
        "--calibration-dir",
        help="write lerobot calibration files (<id>.json) that match the emulated servos here",
    )
    parser.add_argument("--id", help="follower id for its calibration file (emulated_<arm>)")
    parser.add_argument("--leader-id", help="leader id likewise (emulated_<arm>_leader)")
    parser.add_argument("--seed", type=int, default=0, help="initial positions and fault dice")
    parser.add_argument(
        "--lost", type=float, default=0.0, help="probability of a lost status packet"
    )
    parser.add_argument("--corrupt", type=float, default=0.0, help="probability of a bad checksum")
    parser.add_argument(
        "--delay", type=float, default=0.0, help="seconds before each status packet"
    )
    return parser


def _wiggle(emu: PtyBusEmulator, degrees: float, stop: threading.Event) -> None:
    """Move every joint of `emu` on a slow sine around where it started (a person at a leader)."""
    start = emu.positions()
    amplitude = degrees / 360 * 4096
    t0 = time.monotonic()
    while not stop.wait(0.02):
        t = time.monotonic() - t0
        for i, (name, pos) in enumerate(start.items()):
            target = pos + amplitude * math.sin(2 * math.pi * 0.2 * t + i)
            emu.set_position(name, int(min(4095, max(0, round(target)))))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.wiggle and not args.leader:
        parser.error("--wiggle moves the leader's joints: add --leader")
    arm = ARMS[args.arm]
    follower_id = args.id or f"emulated_{args.arm}"
    leader_id = args.leader_id or f"emulated_{args.arm}_leader"
    stop = threading.Event()
    # Ctrl-C and SIGTERM (a supervisor) only raise a flag: a handler that set the Event, or a
    # KeyboardInterrupt inside Event.wait, could land while the main thread holds the Event's
    # own lock, and the exit then deadlocked (seen once in the suite: no exit 10 s after SIGINT).
    signals: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda number, _frame: signals.append(number))
    with ExitStack() as stack:
        follower = stack.enter_context(arm.make("follower", args.seed))
        buses = {"follower": (follower, follower_id)}
        if args.leader:
            leader = stack.enter_context(arm.make("leader", args.seed + 1))
            buses["leader"] = (leader, leader_id)
        try:
            for emu, _ in buses.values():
                emu.faults.lost = args.lost
                emu.faults.corrupt = args.corrupt
                emu.faults.delay_s = args.delay
        except EmulatorError as e:
            parser.error(str(e))
        print(f"emulated {args.arm} follower on {follower.port}", flush=True)
        if args.leader:
            print(f"emulated {args.arm} leader on {buses['leader'][0].port}", flush=True)
        if args.calibration_dir:
            for role, (emu, robot_id) in buses.items():
                path = arm.write_calibration(args.calibration_dir, robot_id, emu)
                print(f"{role} calibration: {path}", flush=True)
        how_to = f"robolearn record robot={args.arm} robot.port={follower.port}"
        if args.calibration_dir:
            how_to += f" robot.id={follower_id} robot.calibration_dir={args.calibration_dir}"
        if args.leader and arm.teleop:
            how_to += f" teleop={arm.teleop} teleop.port={buses['leader'][0].port}"
            if args.calibration_dir:
                how_to += f" teleop.id={leader_id} teleop.calibration_dir={args.calibration_dir}"
        how_to += " task=free"
        print(f"use it: {how_to}   (Ctrl-C to stop)", flush=True)
        if args.leader and args.wiggle:
            threading.Thread(
                target=_wiggle, args=(buses["leader"][0], args.wiggle, stop), daemon=True
            ).start()
        while not signals:
            time.sleep(0.1)  # a signal ends the sleep early; its handler takes no lock
        stop.set()
        for role, (emu, _) in buses.items():
            s = emu.stats
            print(f"{role}: {s.received} packets received, {s.answered} answered", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
