"""An emulated Feetech STS3215 servo bus on a pseudo-terminal, to run lerobot's real drivers without a robot.

The emulator answers the Feetech SCS/STS protocol (protocol 0: the STS series', which lerobot's
`FeetechMotorsBus` speaks through scservo_sdk) on a pty, from a small child process; `emu.port`,
the pty's slave path, is what a driver opens as its serial port. Nothing above the serial port
is faked: packets are parsed and checksummed byte by byte, status packets go back the way a
servo writes them, and faults (lost, corrupted and late status packets, a pulled cable) happen
on the wire.

Each servo keeps its control table in a byte array laid out as the STS3215's
(`STS3215_REGISTERS`), so a read or write of any address range behaves as on the real one, and
it moves: with torque on, toward `Goal_Position` as a first-order system with a speed cap,
integrated from the monotonic clock whenever it is read.

Packet format (multi-byte values little-endian):

    instruction: 0xFF 0xFF ID LEN INSTR PARAM... CHECKSUM     LEN = len(PARAM) + 2
    status:      0xFF 0xFF ID LEN ERROR PARAM... CHECKSUM     CHECKSUM = ~(ID + LEN + ...) & 0xFF
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

from hardware.emulator.serial_bus import (
    BusEngine,
    EmulatorError,
    MotorCalibrationValues,
    PtyBusEmulator,
    Register,
    Servo,
    check_motors,
    first_order_step,
    lookup_register,
    make_servos,
    write_calibration_file,
)

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------- protocol constants
BROADCAST_ID = 0xFE
MAX_ID = 0xFC
INST_PING = 0x01
INST_READ = 0x02
INST_WRITE = 0x03
INST_REG_WRITE = 0x04
INST_ACTION = 0x05
INST_SYNC_READ = 0x82
INST_SYNC_WRITE = 0x83
INSTRUCTION_NAMES: dict[int, str] = {
    INST_PING: "PING",
    INST_READ: "READ",
    INST_WRITE: "WRITE",
    INST_REG_WRITE: "REG_WRITE",
    INST_ACTION: "ACTION",
    INST_SYNC_READ: "SYNC_READ",
    INST_SYNC_WRITE: "SYNC_WRITE",
}
# Status-packet error bits (scservo_sdk's ERRBIT_*), for `faults.status_error`.
ERR_VOLTAGE = 0x01
ERR_ANGLE = 0x02
ERR_OVERHEAT = 0x04
ERR_OVERCURRENT = 0x08
ERR_OVERLOAD = 0x20

# Baud_Rate register value -> bits per second (the STS/SMS series table).
BAUD_RATES: dict[int, int] = {
    0: 1_000_000,
    1: 500_000,
    2: 250_000,
    3: 128_000,
    4: 115_200,
    5: 57_600,
    6: 38_400,
    7: 19_200,
}
RESOLUTION = 4096  # encoder steps per turn
PHASE_SIGNED_POSITION = 0x10  # Phase bit 4: Present_Position is not wrapped into 0..4095


# ---------------------------------------------------------------------- the control table
def _r(
    name: str,
    address: int,
    size: int,
    default: int = 0,
    *,
    ro: bool = False,
    sign: int | None = None,
) -> Register:
    return Register(name, address, size, not ro, default, sign)


# The STS3215's control table (Feetech's STS/SMS memory table), named as lerobot names it. The
# defaults are a factory-fresh servo's; ID and the position registers are filled per motor.
STS3215_REGISTERS: tuple[Register, ...] = (
    # EEPROM (kept across power cycles on the real servo)
    _r("Firmware_Major_Version", 0, 1, 3, ro=True),
    _r("Firmware_Minor_Version", 1, 1, 10, ro=True),
    _r("Model_Number", 3, 2, 777, ro=True),
    _r("ID", 5, 1, 1),
    _r("Baud_Rate", 6, 1, 0),
    _r("Return_Delay_Time", 7, 1, 250),  # units of 2 µs: 500 µs until lerobot sets it to 0
    _r("Response_Status_Level", 8, 1, 1),  # 0: answer only PING and READ
    _r("Min_Position_Limit", 9, 2, 0),
    _r("Max_Position_Limit", 11, 2, RESOLUTION - 1),
    _r("Max_Temperature_Limit", 13, 1, 70),
    _r("Max_Voltage_Limit", 14, 1, 140),
    _r("Min_Voltage_Limit", 15, 1, 40),
    _r("Max_Torque_Limit", 16, 2, 1000),
    _r("Phase", 18, 1, 0x0C),
    _r("Unloading_Condition", 19, 1, 44),
    _r("LED_Alarm_Condition", 20, 1, 47),
    _r("P_Coefficient", 21, 1, 32),
    _r("D_Coefficient", 22, 1, 32),
    _r("I_Coefficient", 23, 1, 0),
    _r("Minimum_Startup_Force", 24, 2, 16),
    _r("CW_Dead_Zone", 26, 1, 1),
    _r("CCW_Dead_Zone", 27, 1, 1),
    _r("Protection_Current", 28, 2, 500),
    _r("Angular_Resolution", 30, 1, 1),
    _r("Homing_Offset", 31, 2, 0, sign=11),
    _r("Operating_Mode", 33, 1, 0),
    _r("Protective_Torque", 34, 1, 20),
    _r("Protection_Time", 35, 1, 200),
    _r("Overload_Torque", 36, 1, 80),
    _r("Velocity_closed_loop_P_proportional_coefficient", 37, 1, 10),
    _r("Over_Current_Protection_Time", 38, 1, 200),
    _r("Velocity_closed_loop_I_integral_coefficient", 39, 1, 200),
    # SRAM
    _r("Torque_Enable", 40, 1, 0),
    _r("Acceleration", 41, 1, 0),
    _r("Goal_Position", 42, 2, 0, sign=15),
    _r("Goal_Time", 44, 2, 0),
    _r("Goal_Velocity", 46, 2, 0, sign=15),
    _r("Torque_Limit", 48, 2, 1000),
    _r("Lock", 55, 1, 0),
    _r("Present_Position", 56, 2, 0, ro=True, sign=15),
    _r("Present_Velocity", 58, 2, 0, ro=True, sign=15),
    _r("Present_Load", 60, 2, 0, ro=True, sign=10),
    _r("Present_Voltage", 62, 1, 120, ro=True),  # 0.1 V: a 12 V supply
    _r("Present_Temperature", 63, 1, 32, ro=True),  # °C
    _r("Status", 65, 1, 0, ro=True),
    _r("Moving", 66, 1, 0, ro=True),
    _r("Present_Current", 69, 2, 0, ro=True),  # units of 6.5 mA
    _r("Goal_Position_2", 71, 2, 0, ro=True),
    # factory area
    _r("Moving_Velocity_Threshold", 80, 1, 1),
    _r("DTs", 81, 1, 50),
    _r("Velocity_Unit_factor", 82, 1, 1),
    _r("Hts", 83, 1, 0),
    _r("Maximum_Velocity_Limit", 84, 1, 254),
    _r("Maximum_Acceleration", 85, 1, 254),
    _r("Acceleration_Multiplier", 86, 1, 0),
)
# lerobot names two registers twice (one name per firmware documentation).
REGISTER_ALIASES: dict[str, str] = {"Moving_Velocity": "Moving_Velocity_Threshold"}
REGISTERS: dict[str, Register] = {r.name: r for r in STS3215_REGISTERS}
_WRITABLE = bytes(
    1 if any(r.writable and r.address <= a < r.address + r.size for r in STS3215_REGISTERS) else 0
    for a in range(256)
)


def register_info(name: str) -> Register:
    """The control-table entry of a register, by lerobot's name (`"Present_Position"`)."""
    return lookup_register(REGISTERS, name, REGISTER_ALIASES, "STS3215")


def checksum(body: bytes | bytearray) -> int:
    """The SCS/STS checksum of a packet's bytes after the 0xFF 0xFF header, checksum excluded."""
    return ~sum(body) & 0xFF


def status_packet(motor_id: int, error: int = 0, params: bytes = b"") -> bytes:
    """A status packet as a servo sends it."""
    body = bytes([motor_id, len(params) + 2, error]) + params
    return b"\xff\xff" + body + bytes([checksum(body)])


def instruction_packet(motor_id: int, instruction: int, params: bytes = b"") -> bytes:
    """An instruction packet as a host sends it (for tools that talk to the bus raw)."""
    body = bytes([motor_id, len(params) + 2, instruction]) + params
    return b"\xff\xff" + body + bytes([checksum(body)])


# ---------------------------------------------------------------------- one servo
class StsServo(Servo):
    """One STS3215."""

    registers = REGISTERS

    def __init__(
        self,
        name: str,
        motor_id: int,
        position: int,
        baudrate: int,
        time_constant_s: float,
        max_speed: float,
    ) -> None:
        super().__init__(name, time_constant_s, max_speed)
        self.put("ID", motor_id)
        self.put("Baud_Rate", {v: k for k, v in BAUD_RATES.items()}[baudrate])
        self.x = float(position)
        self.put("Goal_Position", position)  # at power-on a servo holds where it is
        self.goal_written_while_off = False

    @property
    def id(self) -> int:
        return self.raw("ID")

    @property
    def baudrate(self) -> int:
        return BAUD_RATES.get(self.raw("Baud_Rate"), 0)

    @property
    def torque_on(self) -> bool:
        return self.raw("Torque_Enable") == 1

    @property
    def signed_position(self) -> bool:
        return bool(self.raw("Phase") & PHASE_SIGNED_POSITION)

    def calibration(self) -> MotorCalibrationValues:
        return MotorCalibrationValues(
            self.value("Homing_Offset"),
            self.value("Min_Position_Limit"),
            self.value("Max_Position_Limit"),
        )

    def _frame(self, actual: float) -> float:
        """The physical encoder angle `actual` (0..4095) in the Present_Position frame.

        STS firmware reports Present_Position = actual - Homing_Offset, wrapped into one turn
        unless Phase bit 4 asks for the signed difference.
        """
        present = actual - self.value("Homing_Offset")
        return present if self.signed_position else present % RESOLUTION

    def goal(self) -> float:
        goal = self.value("Goal_Position")
        lo, hi = self.value("Min_Position_Limit"), self.value("Max_Position_Limit")
        if lo < hi:  # both 0 means multi-turn mode on the real servo: no limits
            goal = min(max(goal, lo), hi)
        if not self.signed_position:
            goal = min(max(goal, 0), RESOLUTION - 1)
        return float(goal)

    def advance(self, now: float) -> None:
        dt, self.t = max(0.0, now - self.t), now
        self.v = 0.0
        if self.torque_on and self.value("Operating_Mode") == 0:
            vmax = self.max_speed
            if goal_speed := abs(self.value("Goal_Velocity")):
                vmax = min(vmax, goal_speed)
            self.x, self.v = first_order_step(self.x, self.goal(), dt, self.tau, vmax)
        self._refresh()

    def _refresh(self) -> None:
        pos = round(self.x)
        self.put("Present_Position", pos if self.signed_position else pos % RESOLUTION)
        self.put("Present_Velocity", round(self.v))  # steps/s
        # Load (0.1 % of max torque) grows with the tracking error, as a P controller's does.
        err = self.goal() - self.x if self.torque_on else 0.0
        limit = min(self.value("Torque_Limit"), self.value("Max_Torque_Limit"), 1000)
        load = max(-limit, min(limit, round(err * 4)))
        self.put("Present_Load", load)
        self.put("Present_Current", abs(load) * 3 // 10)  # 6.5 mA units: ~2 A at full load
        # Moving_Velocity_Threshold counts in 50 steps/s (lerobot's SCS table says "*50").
        self.put("Moving", int(abs(self.v) >= 50 * max(1, self.raw("Moving_Velocity_Threshold"))))

    def write(self, address: int, data: bytes, now: float) -> int:
        self.advance(now)
        offset_before, torque_before = self.value("Homing_Offset"), self.torque_on
        actual = (self.x + offset_before) % RESOLUTION
        for i, byte in enumerate(data):
            if address + i < len(_WRITABLE) and _WRITABLE[address + i]:
                self.mem[address + i] = byte
        touched = range(address, address + len(data))
        if REGISTERS["Torque_Enable"].address in touched and self.raw("Torque_Enable") == 128:
            # STS firmware: writing 128 makes the present angle the centre (2048) of the frame.
            self.put("Torque_Enable", int(torque_before))
            self.put("Homing_Offset", round(actual) - RESOLUTION // 2)
        # The shaft did not move: the same physical angle, seen through the (new) offset/Phase.
        self.x = self._frame(actual)
        goal_address = REGISTERS["Goal_Position"].address
        if goal_address in touched or goal_address + 1 in touched:
            self.goal_written_while_off = not self.torque_on
        if self.torque_on and not torque_before:
            if not self.goal_written_while_off:
                # Holding still is what a servo does when torque comes on without a new goal.
                self.put("Goal_Position", round(self.x))
            self.goal_written_while_off = False
        self._refresh()
        return 0

    def hand_move(self, position: int, now: float) -> None:
        lo, hi = (-32767, 32767) if self.signed_position else (0, RESOLUTION - 1)
        if not (isinstance(position, int) and lo <= position <= hi):
            raise EmulatorError(
                f"position of {self.name!r} must be an integer in {lo}..{hi}, got {position!r}"
            )
        self.advance(now)
        self.x, self.v = float(position), 0.0
        if self.torque_on:
            self.put("Goal_Position", position)
        self._refresh()


# ---------------------------------------------------------------------- the bus
def so101_motors() -> dict[str, int]:
    """The motors of an SO-101 arm (follower or leader), name -> ID, all STS3215, as lerobot's."""
    return {
        "shoulder_pan": 1,
        "shoulder_lift": 2,
        "elbow_flex": 3,
        "wrist_flex": 4,
        "wrist_roll": 5,
        "gripper": 6,
    }


class FeetechEngine(BusEngine):
    """The STS3215 protocol, served in the emulator process."""

    def _register_info(self, name: str) -> Register:
        return register_info(name)

    def _split(self, buf: bytearray) -> list[bytes]:
        packets: list[bytes] = []
        while True:
            start = buf.find(b"\xff\xff")
            if start < 0:
                self._ignore(buf, len(buf) - (1 if buf[-1:] == b"\xff" else 0))
                return packets
            self._ignore(buf, start)
            if len(buf) >= 3 and buf[2] == 0xFF:  # 0xFF 0xFF 0xFF: the header starts one later
                self._ignore(buf, 1)
                continue
            if len(buf) < 4:
                return packets
            if buf[3] < 2:
                self._ignore(buf, 2)
                continue
            total = buf[3] + 4
            if len(buf) < total:
                return packets
            packet = bytes(buf[:total])
            if checksum(packet[2:-1]) != packet[-1]:
                self._reject()
                del buf[:2]
                continue
            del buf[:total]
            packets.append(packet)

    def _handle(self, packet: bytes) -> None:
        motor_id, instruction, params = packet[2], packet[4], packet[5:-1]
        self._count(INSTRUCTION_NAMES.get(instruction, f"0x{instruction:02X}"))
        now = time.monotonic()
        replies: list[tuple[Servo, bytes]] = []
        broadcast = motor_id == BROADCAST_ID
        with self._lock:
            servos = self._listening()
            targets = [s for s in servos if broadcast or s.id == motor_id]
            err = self.faults.status_error

            def answer(servo: Servo, data: bytes = b"", *, always: bool = False) -> None:
                # Response_Status_Level 0: the servo answers only PING and READ.
                if not broadcast and (always or servo.raw("Response_Status_Level")):
                    replies.append((servo, status_packet(servo.id, err, data)))

            if instruction == INST_PING:
                for servo in sorted(targets, key=lambda s: s.id):
                    # the one broadcast servos answer: lerobot's broadcast_ping scans with it
                    replies.append((servo, status_packet(servo.id, err)))
            elif instruction == INST_READ and len(params) == 2:
                for servo in targets:
                    answer(servo, servo.read(params[0], params[1], now), always=True)
            elif instruction == INST_WRITE and len(params) >= 2:
                for servo in targets:
                    answer(servo)  # from the old ID, should this write change it (setup_motor)
                    servo.write(params[0], params[1:], now)
            elif instruction == INST_REG_WRITE and len(params) >= 2:
                for servo in targets:
                    servo.pending = (params[0], bytes(params[1:]))
                    answer(servo)
            elif instruction == INST_ACTION:
                for servo in targets:
                    if servo.pending is not None:
                        servo.write(*servo.pending, now)
                        servo.pending = None
                    answer(servo)
            elif instruction == INST_SYNC_WRITE and broadcast and len(params) >= 2:
                address, length = params[0], params[1]
                for i in range(2, len(params) - length, length + 1):
                    for servo in servos:
                        if servo.id == params[i]:
                            servo.write(address, params[i + 1 : i + 1 + length], now)
            elif instruction == INST_SYNC_READ and broadcast and len(params) >= 2:
                address, length = params[0], params[1]
                for wanted in params[2:]:  # the servos answer one after the other, in list order
                    for servo in servos:
                        if servo.id == wanted:
                            data = servo.read(address, length, now)
                            replies.append((servo, status_packet(servo.id, err, data)))
            else:
                logger.debug("ignored instruction 0x%02X for id %d", instruction, motor_id)
        for servo, reply in replies:
            self._send(servo, reply)


class FeetechBusEmulator(PtyBusEmulator):
    """A bus of emulated STS3215 servos served on a pseudo-terminal (by a child process).

    `motors` maps names to IDs (`so101_motors()`). `calibration` preloads each servo's EEPROM
    (Homing_Offset, Min/Max_Position_Limit; factory values when omitted) and `positions` its
    Present_Position (by default mid-range with a small per-`seed` scatter). `seed` also drives
    the fault dice, so a run with faults is reproducible. The servos answer at `baudrate` only,
    like real ones: a driver whose port runs at another rate gets no answer.

    Use it as a context manager (or call `close()`): the process stops and the pty is closed.
    """

    def __init__(
        self,
        motors: Mapping[str, int],
        *,
        seed: int = 0,
        baudrate: int = 1_000_000,
        calibration: Mapping[str, MotorCalibrationValues] | None = None,
        positions: Mapping[str, int] | None = None,
        time_constant_s: float = 0.05,
        max_speed: float = 4000.0,
    ) -> None:
        check_motors(motors, MAX_ID, list(BAUD_RATES.values()), baudrate)
        servos = make_servos(
            motors,
            seed,
            calibration,
            positions,
            lambda name, motor_id, rest: StsServo(
                name, motor_id, rest, baudrate, time_constant_s, max_speed
            ),
        )
        super().__init__(FeetechEngine, servos, seed)


# ---------------------------------------------------------------------- lerobot calibration files
def write_so101_calibration(
    path: str | os.PathLike[str],
    robot_id: str,
    emulator: FeetechBusEmulator | None = None,
) -> Path:
    """Write lerobot's calibration file for an SO-101 on the emulator: `path/<robot_id>.json`.

    `path` is the `calibration_dir` of lerobot's robot or teleoperator config. The values are
    those the emulator's servos hold (`emulator.calibration()`), or a factory-fresh emulator's
    (offset 0, range 0..4095) when no emulator is given; so `connect(calibrate=False)` finds the
    file and the servos in agreement. Returns the file's path.
    """
    if emulator is not None:
        ids, cal = emulator.motors, emulator.calibration()
    else:
        ids = so101_motors()
        cal = {name: MotorCalibrationValues() for name in ids}
    if missing := set(so101_motors()) - set(cal):
        raise EmulatorError(
            f"the emulator lacks SO-101 motors {sorted(missing)}: build it with so101_motors()"
        )
    return write_calibration_file(path, robot_id, {n: ids[n] for n in so101_motors()}, cal)
