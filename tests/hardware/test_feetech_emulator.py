"""The emulated Feetech bus, driven through lerobot's real FeetechMotorsBus and SO-101 classes on a pty."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from bus_helpers import connect_bus, with_retries
from lerobot.motors import Motor, MotorCalibration, MotorNormMode
from lerobot.motors.feetech import FeetechMotorsBus
from lerobot.motors.feetech import tables as lerobot_tables

from hardware.emulator import (
    EmulatorError,
    FeetechBusEmulator,
    MotorCalibrationValues,
    so101_motors,
    write_so101_calibration,
)
from hardware.emulator.feetech import ERR_OVERLOAD, REGISTER_ALIASES, REGISTERS

REPO = Path(__file__).resolve().parents[2]
# A plausible calibrated SO-101 (what lerobot's calibration writes): half-turn homings, and the
# ranges a person sweeps; wrist_roll turns fully.
SO101_CAL = {
    "shoulder_pan": MotorCalibrationValues(-40, 760, 3300),
    "shoulder_lift": MotorCalibrationValues(1200, 820, 3200),
    "elbow_flex": MotorCalibrationValues(-1500, 900, 3100),
    "wrist_flex": MotorCalibrationValues(300, 850, 3250),
    "wrist_roll": MotorCalibrationValues(-2000, 0, 4095),
    "gripper": MotorCalibrationValues(1100, 2000, 3400),
}


def lerobot_motors(ids: dict[str, int] | None = None) -> dict[str, Motor]:
    """The SO-101's motors as lerobot's SO-101 classes declare them (degrees, gripper in %)."""
    ids = so101_motors() if ids is None else ids
    return {
        name: Motor(
            i, "sts3215", MotorNormMode.RANGE_0_100 if name == "gripper" else MotorNormMode.DEGREES
        )
        for name, i in ids.items()
    }


def lerobot_calibration(cal: dict[str, MotorCalibrationValues]) -> dict[str, MotorCalibration]:
    ids = so101_motors()
    return {
        n: MotorCalibration(ids[n], 0, c.homing_offset, c.range_min, c.range_max)
        for n, c in cal.items()
    }


def wait_for(check: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


@pytest.fixture
def emu() -> Iterator[FeetechBusEmulator]:
    with FeetechBusEmulator(so101_motors(), seed=0) as emulator:
        yield emulator


@pytest.fixture
def bus(emu: FeetechBusEmulator) -> Iterator[FeetechMotorsBus]:
    bus = FeetechMotorsBus(emu.port, lerobot_motors())
    connect_bus(bus)
    yield with_retries(bus)
    if bus.is_connected:
        emu.reconnect()
        bus.disconnect(disable_torque=False)


# ---------------------------------------------------------------------- the control table
def test_control_table_matches_lerobots() -> None:
    """Every register lerobot names for the STS series sits at the same address and size here."""
    for name, (address, size) in lerobot_tables.STS_SMS_SERIES_CONTROL_TABLE.items():
        reg = REGISTERS[REGISTER_ALIASES.get(name.strip(), name.strip())]
        assert (reg.address, reg.size) == (address, size), name
    for name, sign_bit in lerobot_tables.STS_SMS_SERIES_ENCODINGS_TABLE.items():
        if name in REGISTERS:
            assert REGISTERS[name].sign_bit == sign_bit, name
    assert REGISTERS["Model_Number"].default == lerobot_tables.MODEL_NUMBER_TABLE["sts3215"]


# ---------------------------------------------------------------------- FeetechMotorsBus
def test_connect_checks_ids_and_models(emu: FeetechBusEmulator) -> None:
    bus = FeetechMotorsBus(emu.port, lerobot_motors())
    connect_bus(bus)  # handshake: ping + model number + firmware version of every motor
    assert bus.is_connected
    assert bus.ping("gripper") == 777
    bus.disconnect(disable_torque=False)

    missing = FeetechMotorsBus(
        emu.port, lerobot_motors() | {"extra": Motor(7, "sts3215", MotorNormMode.DEGREES)}
    )
    with pytest.raises(RuntimeError, match=r"Missing motor IDs:\n  - 7"):
        connect_bus(missing)  # a real fault fails every try
    missing.port_handler.closePort()

    wrong = FeetechMotorsBus(emu.port, {"shoulder_pan": Motor(1, "sts3250", MotorNormMode.DEGREES)})
    with pytest.raises(RuntimeError, match="expected 2825, found 777"):
        wrong.connect()
    wrong.port_handler.closePort()


def test_read_and_write_single_registers(emu: FeetechBusEmulator, bus: FeetechMotorsBus) -> None:
    assert bus.read("Model_Number", "elbow_flex") == 777
    assert bus.read("Firmware_Major_Version", "elbow_flex") == 3
    assert (
        bus.read("Present_Position", "wrist_flex", normalize=False) == emu.positions()["wrist_flex"]
    )

    bus.write("P_Coefficient", "wrist_flex", 16)
    bus.write("Max_Torque_Limit", "gripper", 500)
    bus.write("Homing_Offset", "elbow_flex", -300, normalize=False)  # sign-magnitude on the wire
    assert emu.register("wrist_flex", "P_Coefficient") == 16
    assert emu.register("gripper", "Max_Torque_Limit") == 500
    assert emu.register("elbow_flex", "Homing_Offset") == 300 | 1 << 11
    assert bus.read("Homing_Offset", "elbow_flex", normalize=False) == -300
    assert emu.register("shoulder_pan", "P_Coefficient") == 32  # other motors untouched

    bus.write("Model_Number", "gripper", 1234, normalize=False)  # read-only: ignored, as on a servo
    assert bus.read("Model_Number", "gripper") == 777


def test_sync_read_reports_every_position(emu: FeetechBusEmulator, bus: FeetechMotorsBus) -> None:
    assert bus.sync_read("Present_Position", normalize=False) == emu.positions()
    emu.set_position("elbow_flex", 2500)
    emu.set_position("gripper", 100)
    positions = bus.sync_read("Present_Position", normalize=False)
    assert positions["elbow_flex"] == 2500
    assert positions["gripper"] == 100
    assert bus.sync_read("Present_Position", ["gripper", "shoulder_pan"], normalize=False) == {
        "gripper": 100,
        "shoulder_pan": emu.positions()["shoulder_pan"],
    }


def test_goal_positions_converge_with_torque_on_only(
    emu: FeetechBusEmulator, bus: FeetechMotorsBus
) -> None:
    start = emu.positions()
    bus.enable_torque(["shoulder_pan", "elbow_flex", "wrist_flex"])
    assert emu.positions() == start  # torque on without a new goal: the servos hold where they are
    goals = {"shoulder_pan": 1000, "elbow_flex": 3000, "wrist_flex": 2100, "gripper": 3500}
    bus.sync_write("Goal_Position", goals, normalize=False)

    # 1000 steps at most 4000 steps/s: not there yet right away, moving the right way
    first = bus.sync_read("Present_Position", normalize=False)
    assert first["shoulder_pan"] > 1000 and first["elbow_flex"] < 3000
    assert bus.read("Moving", "shoulder_pan") == 1
    assert bus.read("Present_Velocity", "shoulder_pan", normalize=False) < 0  # sign-magnitude
    assert bus.read("Present_Load", "elbow_flex", normalize=False) > 0

    def arrived() -> bool:
        now = bus.sync_read("Present_Position", normalize=False)
        return all(now[m] == goals[m] for m in ("shoulder_pan", "elbow_flex", "wrist_flex"))

    assert wait_for(arrived)
    assert (
        bus.sync_read("Present_Position", ["gripper"], normalize=False)["gripper"]
        == start["gripper"]
    )
    assert bus.read("Moving", "elbow_flex") == 0
    assert bus.read("Present_Velocity", "elbow_flex", normalize=False) == 0

    # a torque-enabled servo moved by hand takes that pose as its goal and keeps it
    emu.set_position("elbow_flex", 2222)
    time.sleep(0.05)
    assert emu.positions()["elbow_flex"] == 2222


def test_goal_is_clamped_to_the_position_limits(
    emu: FeetechBusEmulator, bus: FeetechMotorsBus
) -> None:
    bus.write("Min_Position_Limit", "wrist_flex", 1500, normalize=False)
    bus.write("Max_Position_Limit", "wrist_flex", 2500, normalize=False)
    bus.enable_torque("wrist_flex")
    bus.write("Goal_Position", "wrist_flex", 3900, normalize=False)
    assert wait_for(lambda: emu.positions()["wrist_flex"] == 2500)


def test_calibration_round_trip(emu: FeetechBusEmulator, bus: FeetechMotorsBus) -> None:
    before = emu.positions()
    calibration = lerobot_calibration(SO101_CAL)
    bus.write_calibration(calibration)
    assert bus.read_calibration() == calibration
    assert bus.is_calibrated
    assert {n: emu.register(n, "Homing_Offset", decoded=True) for n in SO101_CAL} == {
        n: c.homing_offset for n, c in SO101_CAL.items()
    }
    # STS firmware: Present_Position = actual - Homing_Offset, wrapped into one turn
    after = bus.sync_read("Present_Position", normalize=False)
    assert after == {n: (before[n] - SO101_CAL[n].homing_offset) % 4096 for n in before}

    bus.reset_calibration()
    assert bus.sync_read("Present_Position", normalize=False) == before


def test_half_turn_homing_centres_every_joint(
    emu: FeetechBusEmulator, bus: FeetechMotorsBus
) -> None:
    """What lerobot's calibration relies on: after set_half_turn_homings every joint reads 2047."""
    for name, pos in zip(so101_motors(), (300, 1000, 2047, 3000, 4000, 3500), strict=True):
        emu.set_position(name, pos)
    offsets = bus.set_half_turn_homings()
    assert offsets["shoulder_pan"] == 300 - 2047
    assert set(bus.sync_read("Present_Position", normalize=False).values()) == {2047}


def test_normalised_reads_agree_with_raw_positions(
    emu: FeetechBusEmulator, bus: FeetechMotorsBus
) -> None:
    bus.write_calibration(lerobot_calibration(SO101_CAL))
    emu.set_position("elbow_flex", 2500)
    emu.set_position("gripper", 2700)
    degrees = bus.sync_read("Present_Position")
    raw = emu.positions()
    for name, cal in SO101_CAL.items():
        if name == "gripper":
            expected = (raw[name] - cal.range_min) / (cal.range_max - cal.range_min) * 100
        else:
            expected = (raw[name] - (cal.range_min + cal.range_max) / 2) * 360 / 4095
        assert degrees[name] == pytest.approx(expected), name
    assert degrees["gripper"] == pytest.approx(50.0)

    # and a goal in degrees lands where the same conversion says
    bus.enable_torque("elbow_flex")
    bus.write("Goal_Position", "elbow_flex", 30.0)
    target = int(30.0 * 4095 / 360 + (900 + 3100) / 2)
    assert wait_for(lambda: emu.positions()["elbow_flex"] == target)
    assert bus.read("Present_Position", "elbow_flex") == pytest.approx(30.0, abs=0.1)


def test_configure_motors(emu: FeetechBusEmulator, bus: FeetechMotorsBus) -> None:
    emu.set_register("wrist_roll", "Phase", 0x1C)  # a servo shipped in signed-angle feedback mode
    bus.configure_motors()
    for name in so101_motors():
        assert emu.register(name, "Return_Delay_Time") == 0
        assert emu.register(name, "Maximum_Acceleration") == 254
        assert emu.register(name, "Acceleration") == 254
    assert emu.register("wrist_roll", "Phase") == 0x0C


def test_lost_status_packets_need_retries(emu: FeetechBusEmulator, bus: FeetechMotorsBus) -> None:
    emu.faults.lost = 0.3
    for _ in range(10):  # a read fails only if 8 packets in a row are lost: 0.3 ** 8
        assert bus.read("Present_Position", "gripper", num_retry=7, normalize=False) >= 0
    errors = []
    for _ in range(40):  # the seeded dice lose a packet within a few reads
        try:
            bus.read("Present_Position", "gripper", normalize=False, num_retry=0)
        except ConnectionError as e:
            errors.append(str(e))
    assert errors
    assert errors[0].endswith("after 1 tries. [TxRxResult] There is no status packet!")
    # a sync read needs all six answers: fewer losses, as lerobot's SO-101 retries (2) expect
    emu.faults.lost = 0.05
    for _ in range(10):
        assert bus.sync_read("Present_Position", normalize=False, num_retry=4) == emu.positions()
    assert emu.stats.dropped > 0


def test_corrupted_status_packets_are_rejected(
    emu: FeetechBusEmulator, bus: FeetechMotorsBus
) -> None:
    emu.faults.corrupt = 0.3
    for _ in range(20):
        assert (
            bus.read("Present_Position", "gripper", normalize=False, num_retry=7)
            == emu.positions()["gripper"]
        )
    corrupted = emu.stats.corrupted
    assert corrupted > 0
    emu.faults.corrupt = 1.0
    with pytest.raises(
        ConnectionError, match=r"after 1 tries\. \[TxRxResult\] Incorrect status packet!"
    ):
        bus.read("Present_Position", "gripper", normalize=False, num_retry=0)
    with pytest.raises(ConnectionError, match=r"Failed to sync read .* Incorrect status packet!"):
        bus.sync_read("Present_Position", num_retry=0)
    assert emu.stats.corrupted > corrupted


def test_status_error_bits_reach_the_driver(emu: FeetechBusEmulator, bus: FeetechMotorsBus) -> None:
    emu.faults.status_error = ERR_OVERLOAD
    with pytest.raises(RuntimeError, match=r"Overload error!"):
        bus.read("Present_Position", "gripper", normalize=False, num_retry=0)


def test_late_status_packets(emu: FeetechBusEmulator, bus: FeetechMotorsBus) -> None:
    emu.faults.delay_s = 0.01  # inside lerobot's ~50 ms packet timeout
    t0 = time.monotonic()
    assert bus.read("Model_Number", "gripper") == 777
    assert time.monotonic() - t0 >= 0.01
    emu.faults.delay_s = 0.2  # past it
    with pytest.raises(ConnectionError, match="There is no status packet!"):
        bus.read("Model_Number", "gripper", num_retry=0)


def test_disconnect_and_reconnect(emu: FeetechBusEmulator, bus: FeetechMotorsBus) -> None:
    emu.disconnect()
    with pytest.raises(
        ConnectionError, match=r"Failed to sync read 'Present_Position'.*There is no status packet!"
    ):
        bus.sync_read("Present_Position", num_retry=0)
    with pytest.raises(
        ConnectionError, match=r"Failed to write 'Torque_Enable'.*There is no status packet!"
    ):
        bus.enable_torque("gripper")
    assert emu.register("gripper", "Torque_Enable") == 0  # nothing reached the servos
    emu.reconnect()
    assert bus.sync_read("Present_Position", normalize=False) == emu.positions()
    bus.enable_torque("gripper")
    assert emu.register("gripper", "Torque_Enable") == 1


def test_broadcast_ping_and_stats(emu: FeetechBusEmulator, bus: FeetechMotorsBus) -> None:
    answered = emu.stats.answered
    assert bus.broadcast_ping() == dict.fromkeys(range(1, 7), 777)
    assert emu.stats.instructions["PING"] >= 7  # the handshake's six, the broadcast
    bus.sync_write("Goal_Position", dict.fromkeys(so101_motors(), 2048), normalize=False)
    assert wait_for(lambda: emu.stats.instructions["SYNC_WRITE"] == 1)  # no answer to wait for
    assert emu.stats.answered == answered + 6 + 6  # six pings answered, six model-number reads


def test_reg_write_waits_for_action(emu: FeetechBusEmulator, bus: FeetechMotorsBus) -> None:
    ph, port = bus.packet_handler, bus.port_handler
    for motor_id in (2, 3):
        assert ph.regWriteTxRx(port, motor_id, 21, 1, [7]) == (0, 0)  # P_Coefficient
    assert emu.register("shoulder_lift", "P_Coefficient") == 32
    ph.action(port, 0xFE)  # broadcast ACTION: applied by every servo, answered by none
    assert wait_for(lambda: emu.register("elbow_flex", "P_Coefficient") == 7)
    assert emu.register("shoulder_lift", "P_Coefficient") == 7


def test_setup_motor_sets_id_and_baud_rate() -> None:
    """lerobot's setup_motor on a factory-fresh servo: ID 1 at 500 kbps becomes gripper, ID 6 at 1 Mbps."""
    with FeetechBusEmulator({"new": 1}, baudrate=500_000) as emu:
        bus = FeetechMotorsBus(emu.port, lerobot_motors())
        bus.setup_motor("gripper", initial_baudrate=500_000)
        assert emu.motors == {"new": 6}
        assert emu.register("new", "Baud_Rate") == 0
        assert bus.ping("gripper") == 777  # now at 1 Mbps
        bus.set_baudrate(500_000)
        assert bus.ping("gripper") is None  # a servo does not hear another rate
        bus.port_handler.closePort()


def test_emulators_run_side_by_side_and_clean_up() -> None:
    threads, fds = threading.active_count(), len(os.listdir("/proc/self/fd"))
    with (
        FeetechBusEmulator(so101_motors(), seed=1) as a,
        FeetechBusEmulator(so101_motors(), seed=2) as b,
    ):
        assert a.port != b.port
        bus_a, bus_b = (
            FeetechMotorsBus(a.port, lerobot_motors()),
            FeetechMotorsBus(b.port, lerobot_motors()),
        )
        connect_bus(bus_a)
        connect_bus(bus_b)
        with_retries(bus_a), with_retries(bus_b)
        b.set_position("gripper", 1234)
        assert bus_a.sync_read("Present_Position", normalize=False) == a.positions()
        assert bus_b.read("Present_Position", "gripper", normalize=False) == 1234
        assert a.positions()["gripper"] != 1234
        bus_a.disconnect(disable_torque=False)
        bus_b.disconnect(disable_torque=False)
    assert threading.active_count() == threads
    assert len(os.listdir("/proc/self/fd")) == fds


def test_emulator_process_ends_with_its_parent() -> None:
    """A test process killed mid-run leaves no emulator behind."""
    code = (
        "import os; from hardware.emulator import FeetechBusEmulator, so101_motors; "
        "emu = FeetechBusEmulator(so101_motors()); print(emu.pid, flush=True); os._exit(1)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    pid = int(out.stdout.split()[0])
    assert wait_for(
        lambda: not Path(f"/proc/{pid}").exists() or "Z" in _proc_state(pid), timeout=10
    )


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return "Z"


def test_bad_input_is_named(emu: FeetechBusEmulator) -> None:
    with pytest.raises(EmulatorError, match="probability"):
        emu.faults.lost = 1.5
    with pytest.raises(EmulatorError, match="no motor 'elbow'"):
        emu.set_position("elbow", 100)
    with pytest.raises(EmulatorError, match=r"0\.\.4095"):
        emu.set_position("elbow_flex", 5000)
    with pytest.raises(EmulatorError, match="no register 'Present_Pos'"):
        emu.register("gripper", "Present_Pos")
    with pytest.raises(EmulatorError, match="share an ID"):
        FeetechBusEmulator({"a": 1, "b": 1})
    with pytest.raises(EmulatorError, match="calibration directory"):
        write_so101_calibration("/tmp/x.json", "arm")


# ---------------------------------------------------------------------- lerobot's SO-101 classes
def test_so101_follower_observes_and_acts(tmp_path: Path) -> None:
    from lerobot.robots.so_follower import SO101Follower, SO101FollowerConfig

    with FeetechBusEmulator(so101_motors(), seed=3, calibration=SO101_CAL) as emu:
        write_so101_calibration(tmp_path, "follower", emu)
        robot = SO101Follower(
            SO101FollowerConfig(
                port=emu.port, id="follower", calibration_dir=tmp_path, use_degrees=True
            )
        )
        connect_bus(robot, calibrate=False)
        try:
            assert robot.is_calibrated  # the file and the servos' EEPROM agree
            assert all(emu.register(n, "Torque_Enable") == 1 for n in so101_motors())
            assert (
                emu.register("gripper", "Max_Torque_Limit") == 500
            )  # robot.configure() reached it

            obs = robot.get_observation()
            assert set(obs) == {f"{n}.pos" for n in so101_motors()}
            raw = emu.positions()
            mid = (SO101_CAL["elbow_flex"].range_min + SO101_CAL["elbow_flex"].range_max) / 2
            assert obs["elbow_flex.pos"] == pytest.approx((raw["elbow_flex"] - mid) * 360 / 4095)

            action = {k: v for k, v in obs.items()} | {
                "elbow_flex.pos": obs["elbow_flex.pos"] + 20.0
            }
            action["gripper.pos"] = 80.0
            sent = robot.send_action(action)
            assert sent["elbow_flex.pos"] == pytest.approx(obs["elbow_flex.pos"] + 20.0)

            def moved() -> bool:
                now = robot.get_observation()
                return (
                    abs(now["elbow_flex.pos"] - action["elbow_flex.pos"]) < 0.2
                    and abs(now["gripper.pos"] - 80.0) < 0.2
                )

            assert wait_for(moved)
            assert emu.positions()["elbow_flex"] > raw["elbow_flex"] + 200
        finally:
            robot.disconnect()
        assert all(emu.register(n, "Torque_Enable") == 0 for n in so101_motors())


def test_so101_leader_reads_hand_moved_joints(tmp_path: Path) -> None:
    from lerobot.teleoperators.so_leader import SO101Leader, SO101LeaderConfig

    with FeetechBusEmulator(so101_motors(), seed=4) as emu:
        write_so101_calibration(tmp_path, "leader", emu)
        leader = SO101Leader(
            SO101LeaderConfig(port=emu.port, id="leader", calibration_dir=tmp_path)
        )
        connect_bus(leader, calibrate=False)
        try:
            emu.set_position("elbow_flex", 2500)
            emu.set_position("gripper", 4095)
            action = leader.get_action()
            assert action["elbow_flex.pos"] == pytest.approx((2500 - 4095 / 2) * 360 / 4095)
            assert action["gripper.pos"] == pytest.approx(100.0)
            emu.set_position("elbow_flex", 1500)
            assert leader.get_action()["elbow_flex.pos"] < 0
        finally:
            leader.disconnect()


# ---------------------------------------------------------------------- python -m hardware.emulator
def test_module_serves_until_interrupted(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hardware.emulator",
            "so101",
            "--calibration-dir",
            str(tmp_path),
            "--id",
            "arm",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        port = re.search(r"follower on (\S+)", lines[0]).group(1)  # type: ignore[union-attr]
        assert (tmp_path / "arm.json").is_file()
        assert f"port={port}" in lines[2]
        bus = with_retries(FeetechMotorsBus(port, lerobot_motors()))
        connect_bus(bus)
        assert len(bus.sync_read("Present_Position", normalize=False)) == 6
        bus.disconnect(disable_torque=False)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert "packets received" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
