"""Emulated servo buses on pseudo-terminals, for running lerobot's real drivers without a robot."""

from hardware.emulator.dynamixel import (
    DynamixelBusEmulator,
    koch_follower_models,
    koch_leader_models,
    koch_motors,
    write_koch_calibration,
)
from hardware.emulator.feetech import FeetechBusEmulator, so101_motors, write_so101_calibration
from hardware.emulator.serial_bus import BusStats, EmulatorError, Faults, MotorCalibrationValues

__all__ = [
    "BusStats",
    "DynamixelBusEmulator",
    "EmulatorError",
    "Faults",
    "FeetechBusEmulator",
    "MotorCalibrationValues",
    "koch_follower_models",
    "koch_leader_models",
    "koch_motors",
    "so101_motors",
    "write_koch_calibration",
    "write_so101_calibration",
]
