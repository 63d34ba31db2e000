"""The emulated Dynamixel bus, driven through lerobot's real DynamixelMotorsBus and Koch classes on a pty."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dynamixel_sdk
import pytest
from bus_helpers import connect_bus, with_retries
from lerobot.motors import Motor, MotorCalibration, MotorNormMode
from lerobot.motors.dynamixel import DynamixelMotorsBus
from lerobot.motors.dynamixel import tables as lerobot_tables

from hardware.emulator import EmulatorError, MotorCalibrationValues
from hardware.emulator.dynamixel import (
    MODEL_NUMBERS,
    REGISTERS,
    DynamixelBusEmulator,
    crc16,
    koch_follower_models,
    koch_leader_models,
    koch_motors,
    stuff,
    unstuff,
    write_koch_calibration,
)

MODELS = koch_follower_models()
KOCH_CAL = {
    "shoulder_pan": MotorCalibrationValues(-1000, 1200, 2900),
    "shoulder_lift": MotorCalibrationValues(300, 900, 3100),
    "elbow_flex": MotorCalibrationValues(-2500, 1000, 3000),
    "wrist_flex": MotorCalibrationValues(1500, 800, 3300),
    "wrist_roll": MotorCalibrationValues(0, 0, 4095),
    "gripper": MotorCalibrationValues(-200, 1900, 3000),
}


def lerobot_motors(models: dict[str, str] = MODELS) -> dict[str, Motor]:
    return {
        name: Motor(
            i,
            models[name],
            MotorNormMode.RANGE_0_100 if name == "gripper" else MotorNormMode.DEGREES,
        )
        for name, i in koch_motors().items()
    }


def wait_for(check: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


@pytest.fixture
def emu() -> Iterator[DynamixelBusEmulator]:
    with DynamixelBusEmulator(koch_motors(), models=MODELS, seed=0) as emulator:
        yield emulator


@pytest.fixture
def bus(emu: DynamixelBusEmulator) -> Iterator[DynamixelMotorsBus]:
    bus = DynamixelMotorsBus(emu.port, lerobot_motors())
    connect_bus(bus)
    yield with_retries(bus)
    if bus.is_connected:
        emu.reconnect()
        bus.disconnect(disable_torque=False)


def test_tables_and_framing_match_lerobot_and_the_sdk() -> None:
    for name, (address, size) in lerobot_tables.X_SERIES_CONTROL_TABLE.items():
        assert (REGISTERS[name].address, REGISTERS[name].size) == (address, size), name
    for name in lerobot_tables.X_SERIES_ENCODINGS_TABLE:
        assert REGISTERS[name].signed, name
    assert {
        m: MODEL_NUMBERS[m] for m in lerobot_tables.MODEL_NUMBER_TABLE
    } == lerobot_tables.MODEL_NUMBER_TABLE

    sdk = dynamixel_sdk.PacketHandler(2.0)
    rng = random.Random(0)
    for _ in range(20):
        data = bytes(
            rng.choice([0xFF, 0xFD, 0x00, rng.randrange(256)]) for _ in range(rng.randrange(1, 40))
        )
        assert crc16(data) == sdk.updateCRC(0, list(data), len(data))
        assert unstuff(stuff(data)) == data
    assert stuff(b"\x03\xff\xff\xfd\x01") == b"\x03\xff\xff\xfd\xfd\x01"


def test_connect_read_write_and_the_eeprom_lock(
    emu: DynamixelBusEmulator, bus: DynamixelMotorsBus
) -> None:
    assert bus.ping("shoulder_pan") == 1060 and bus.ping("gripper") == 1200
    assert bus.sync_read("Present_Position", normalize=False) == emu.positions()
    bus.write("Return_Delay_Time", "gripper", 0)
    assert emu.register("gripper", "Return_Delay_Time") == 0

    wrong = DynamixelMotorsBus(emu.port, lerobot_motors(dict.fromkeys(MODELS, "xl330-m077")))
    with pytest.raises(RuntimeError, match="expected 1190, found 1060"):
        wrong.connect()
    wrong.port_handler.closePort()

    bus.enable_torque("elbow_flex")
    with pytest.raises(RuntimeError, match="not available to target address"):
        bus.write(
            "Operating_Mode", "elbow_flex", 4, num_retry=0
        )  # EEPROM: locked while torque is on
    assert emu.register("elbow_flex", "Operating_Mode") == 3
    bus.disable_torque("elbow_flex")
    bus.write("Operating_Mode", "elbow_flex", 4)
    assert emu.register("elbow_flex", "Operating_Mode") == 4

    # values whose bytes hold FF FF FD travel byte-stuffed, both ways
    bus.write("Goal_Position", "wrist_flex", 0x00FDFFFF, normalize=False)
    assert emu.register("wrist_flex", "Goal_Position") == 0x00FDFFFF
    assert bus.read("Goal_Position", "wrist_flex", normalize=False) == 0x00FDFFFF


def test_extended_position_mode_moves_past_one_turn(
    emu: DynamixelBusEmulator, bus: DynamixelMotorsBus
) -> None:
    bus.write("Operating_Mode", "shoulder_pan", 4)
    bus.enable_torque("shoulder_pan")
    bus.sync_write("Goal_Position", {"shoulder_pan": -1500}, normalize=False)  # two's complement
    assert bus.read("Moving", "shoulder_pan") == 1
    assert bus.read("Present_Velocity", "shoulder_pan", normalize=False) < 0
    assert wait_for(lambda: bus.read("Present_Position", "shoulder_pan", normalize=False) == -1500)

    bus.write("Operating_Mode", "wrist_flex", 3)  # single-turn position mode clamps to its limits
    bus.write("Max_Position_Limit", "wrist_flex", 2500)
    bus.enable_torque("wrist_flex")
    bus.write("Goal_Position", "wrist_flex", 3900, normalize=False)
    assert wait_for(lambda: emu.positions()["wrist_flex"] == 2500)


def test_calibration_round_trip_and_half_turn_homing(
    emu: DynamixelBusEmulator, bus: DynamixelMotorsBus
) -> None:
    ids = koch_motors()
    calibration = {
        n: MotorCalibration(ids[n], 0, c.homing_offset, c.range_min, c.range_max)
        for n, c in KOCH_CAL.items()
    }
    before = emu.positions()
    bus.write_calibration(calibration)
    assert bus.read_calibration() == calibration
    assert bus.is_calibrated
    # X series: Present_Position = actual + Homing_Offset
    assert bus.sync_read("Present_Position", normalize=False) == {
        n: before[n] + KOCH_CAL[n].homing_offset for n in before
    }

    bus.write("Drive_Mode", "elbow_flex", 1)  # reverse: the same shaft angle reads mirrored
    assert (
        emu.positions()["elbow_flex"]
        == -before["elbow_flex"] + KOCH_CAL["elbow_flex"].homing_offset
    )
    bus.write("Drive_Mode", "elbow_flex", 0)

    for name, pos in zip(ids, (100, 1000, 2047, 3000, 4000, 3500), strict=True):
        emu.set_position(name, pos)
    bus.set_half_turn_homings()
    assert set(bus.sync_read("Present_Position", normalize=False).values()) == {2047}


def test_faults(emu: DynamixelBusEmulator, bus: DynamixelMotorsBus) -> None:
    emu.faults.lost = 0.3
    for _ in range(10):
        assert (
            bus.read("Present_Position", "gripper", normalize=False, num_retry=7)
            == emu.positions()["gripper"]
        )
    errors = []
    for _ in range(30):
        try:
            bus.read("Present_Position", "gripper", normalize=False, num_retry=0)
        except ConnectionError as e:
            errors.append(str(e))
    assert errors and errors[0].endswith("[TxRxResult] There is no status packet!")
    emu.faults.lost = 0.0
    emu.faults.corrupt = 1.0
    with pytest.raises(ConnectionError, match=r"Incorrect status packet!"):
        bus.read("Present_Position", "gripper", normalize=False, num_retry=0)
    emu.faults.corrupt = 0.0
    emu.disconnect()
    with pytest.raises(ConnectionError, match="There is no status packet!"):
        bus.sync_read("Present_Position", num_retry=0)
    emu.reconnect()
    assert bus.sync_read("Present_Position", normalize=False) == emu.positions()


def test_koch_follower_and_leader(tmp_path: Path) -> None:
    from lerobot.robots.koch_follower import KochFollower, KochFollowerConfig
    from lerobot.teleoperators.koch_leader import KochLeader, KochLeaderConfig

    with (
        DynamixelBusEmulator(koch_motors(), models=MODELS, seed=1, calibration=KOCH_CAL) as arm,
        DynamixelBusEmulator(koch_motors(), models=koch_leader_models(), seed=2) as hand,
    ):
        write_koch_calibration(tmp_path, "follower", arm)
        write_koch_calibration(tmp_path, "leader", hand)
        robot = KochFollower(
            KochFollowerConfig(
                port=arm.port, id="follower", calibration_dir=tmp_path, use_degrees=True
            )
        )
        leader = KochLeader(KochLeaderConfig(port=hand.port, id="leader", calibration_dir=tmp_path))
        connect_bus(robot, calibrate=False)
        connect_bus(leader, calibrate=False)
        try:
            assert robot.is_calibrated and leader.is_calibrated
            assert arm.register("gripper", "Operating_Mode") == 5  # configure() reached the servos
            hand.set_position("elbow_flex", 2500)
            action = leader.get_action()
            # lerobot's Koch leader reads its joints in -100..100 over the calibrated range
            assert action["elbow_flex.pos"] == pytest.approx(2500 / 4095 * 200 - 100)

            obs = robot.get_observation()
            goal = obs | {"elbow_flex.pos": obs["elbow_flex.pos"] + 15.0}
            robot.send_action(goal)
            assert wait_for(
                lambda: (
                    abs(robot.get_observation()["elbow_flex.pos"] - goal["elbow_flex.pos"]) < 0.2
                )
            )
        finally:
            robot.disconnect()
            leader.disconnect()
        assert arm.register("elbow_flex", "Torque_Enable") == 0


def test_bad_models_are_named() -> None:
    with pytest.raises(EmulatorError, match="unknown Dynamixel models"):
        DynamixelBusEmulator({"a": 1}, models="xl999")
    with pytest.raises(EmulatorError, match="no model for motors"):
        DynamixelBusEmulator({"a": 1, "b": 2}, models={"a": "xl430-w250"})
