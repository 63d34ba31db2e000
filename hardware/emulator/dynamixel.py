"""An emulated Dynamixel X-series servo bus (protocol 2.0) on a pseudo-terminal, for the Koch arm without a robot.

The same emulator as `hardware.emulator.feetech` (a pty served by a child process, faults on the wire,
servos that move), speaking ROBOTIS protocol 2.0 as lerobot's `DynamixelMotorsBus` does through
dynamixel_sdk: CRC-16 checked packets, byte stuffing, PING with model number and firmware,
READ, WRITE, REG_WRITE/ACTION, SYNC_READ, SYNC_WRITE and REBOOT. The control table is the
X series' (`X_SERIES_REGISTERS`); EEPROM registers refuse writes while torque is on, as on the
real servos ("Access error").

Packet format (multi-byte values little-endian):

    instruction: FF FF FD 00 ID LEN_L LEN_H INSTR PARAM... CRC_L CRC_H   LEN = len(INSTR..CRC)
    status:      FF FF FD 00 ID LEN_L LEN_H 0x55 ERROR PARAM... CRC_L CRC_H
    CRC-16 (polynomial 0x8005) over everything before it; FF FF FD inside INSTR..PARAM is sent
    as FF FF FD FD (byte stuffing).
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
INST_FACTORY_RESET = 0x06
INST_REBOOT = 0x08
INST_STATUS = 0x55
INST_SYNC_READ = 0x82
INST_SYNC_WRITE = 0x83
INSTRUCTION_NAMES: dict[int, str] = {
    INST_PING: "PING",
    INST_READ: "READ",
    INST_WRITE: "WRITE",
    INST_REG_WRITE: "REG_WRITE",
    INST_ACTION: "ACTION",
    INST_FACTORY_RESET: "FACTORY_RESET",
    INST_REBOOT: "REBOOT",
    INST_SYNC_READ: "SYNC_READ",
    INST_SYNC_WRITE: "SYNC_WRITE",
}
# Status-packet error numbers (dynamixel_sdk's ERRNUM_*) and the hardware alert bit.
ERR_RESULT_FAIL = 1
ERR_INSTRUCTION = 2
ERR_DATA_RANGE = 4
ERR_DATA_LENGTH = 5
ERR_ACCESS = 7
ERR_ALERT = 0x80

BAUD_RATES: dict[int, int] = {
    0: 9_600,
    1: 57_600,
    2: 115_200,
    3: 1_000_000,
    4: 2_000_000,
    5: 3_000_000,
    6: 4_000_000,
}
MODEL_NUMBERS: dict[str, int] = {
    "xl330-m077": 1190,
    "xl330-m288": 1200,
    "xl430-w250": 1060,
    "xm430-w350": 1020,
    "xm540-w270": 1120,
    "xc430-w150": 1070,
    "xh540-w150": 1110,
    "xc330-t288": 1220,
    "xc330-t181": 1210,
}
RESOLUTION = 4096
STEPS_PER_VELOCITY_UNIT = 0.229 / 60 * RESOLUTION  # a velocity unit is 0.229 rpm: 15.6 steps/s
EEPROM_END = 64  # addresses below are EEPROM: writable only with torque off
POSITION_MODES = (3, 4, 5)  # position, extended (multi-turn) position, current-based position
MULTI_TURN_LIMIT = 1_048_575  # ±256 turns in extended position mode


def _r(
    name: str, address: int, size: int, default: int = 0, *, ro: bool = False, signed: bool = False
) -> Register:
    return Register(name, address, size, not ro, default, signed=signed)


# The X series' control table (ROBOTIS e-Manual, protocol 2.0), named as lerobot names it; the
# defaults are a factory-fresh XL430-W250's (Model_Number is set per motor).
X_SERIES_REGISTERS: tuple[Register, ...] = (
    # EEPROM
    _r("Model_Number", 0, 2, 1060, ro=True),
    _r("Model_Information", 2, 4, 0, ro=True),
    _r("Firmware_Version", 6, 1, 48, ro=True),
    _r("ID", 7, 1, 1),
    _r("Baud_Rate", 8, 1, 1),
    _r("Return_Delay_Time", 9, 1, 250),  # units of 2 µs
    _r("Drive_Mode", 10, 1, 0),  # bit 0: reverse direction
    _r("Operating_Mode", 11, 1, 3),
    _r("Secondary_ID", 12, 1, 255),
    _r("Protocol_Type", 13, 1, 2),
    _r("Homing_Offset", 20, 4, 0, signed=True),
    _r("Moving_Threshold", 24, 4, 10),
    _r("Temperature_Limit", 31, 1, 72),
    _r("Max_Voltage_Limit", 32, 2, 140),
    _r("Min_Voltage_Limit", 34, 2, 60),
    _r("PWM_Limit", 36, 2, 885),
    _r("Current_Limit", 38, 2, 1750),
    _r("Acceleration_Limit", 40, 4, 32767),
    _r("Velocity_Limit", 44, 4, 265),
    _r("Max_Position_Limit", 48, 4, RESOLUTION - 1),
    _r("Min_Position_Limit", 52, 4, 0),
    _r("Shutdown", 63, 1, 52),
    # RAM
    _r("Torque_Enable", 64, 1, 0),
    _r("LED", 65, 1, 0),
    _r("Status_Return_Level", 68, 1, 2),  # 0: PING only, 1: PING and READ, 2: all
    _r("Registered_Instruction", 69, 1, 0, ro=True),
    _r("Hardware_Error_Status", 70, 1, 0, ro=True),
    _r("Velocity_I_Gain", 76, 2, 1000),
    _r("Velocity_P_Gain", 78, 2, 100),
    _r("Position_D_Gain", 80, 2, 0),
    _r("Position_I_Gain", 82, 2, 0),
    _r("Position_P_Gain", 84, 2, 800),
    _r("Feedforward_2nd_Gain", 88, 2, 0),
    _r("Feedforward_1st_Gain", 90, 2, 0),
    _r("Bus_Watchdog", 98, 1, 0),
    _r("Goal_PWM", 100, 2, 885, signed=True),
    _r("Goal_Current", 102, 2, 1750, signed=True),
    _r("Goal_Velocity", 104, 4, 0, signed=True),
    _r("Profile_Acceleration", 108, 4, 0),
    _r("Profile_Velocity", 112, 4, 0),
    _r("Goal_Position", 116, 4, 0, signed=True),
    _r("Realtime_Tick", 120, 2, 0, ro=True),
    _r("Moving", 122, 1, 0, ro=True),
    _r("Moving_Status", 123, 1, 0, ro=True),
    _r("Present_PWM", 124, 2, 0, ro=True, signed=True),
    _r("Present_Current", 126, 2, 0, ro=True, signed=True),
    _r("Present_Velocity", 128, 4, 0, ro=True, signed=True),
    _r("Present_Position", 132, 4, 0, ro=True, signed=True),
    _r("Velocity_Trajectory", 136, 4, 0, ro=True, signed=True),
    _r("Position_Trajectory", 140, 4, 0, ro=True, signed=True),
    _r("Present_Input_Voltage", 144, 2, 120, ro=True),  # 0.1 V
    _r("Present_Temperature", 146, 1, 30, ro=True),
)
REGISTERS: dict[str, Register] = {r.name: r for r in X_SERIES_REGISTERS}
_WRITABLE = bytes(
    1 if any(r.writable and r.address <= a < r.address + r.size for r in X_SERIES_REGISTERS) else 0
    for a in range(256)
)


def register_info(name: str) -> Register:
    """The control-table entry of a register, by lerobot's name (`"Present_Position"`)."""
    return lookup_register(REGISTERS, name, {}, "Dynamixel X-series")


# ---------------------------------------------------------------------- packets
def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = (crc << 1) ^ 0x8005 if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes | bytearray) -> int:
    """ROBOTIS protocol 2.0's CRC-16 (polynomial 0x8005, no reflection, initial value 0)."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) ^ _CRC_TABLE[((crc >> 8) ^ byte) & 0xFF]) & 0xFFFF
    return crc


def stuff(payload: bytes) -> bytes:
    """Byte stuffing: FF FF FD inside a payload goes out as FF FF FD FD."""
    out = bytearray()
    for i, byte in enumerate(payload):
        out.append(byte)
        if byte == 0xFD and i >= 2 and payload[i - 1] == 0xFF and payload[i - 2] == 0xFF:
            out.append(0xFD)
    return bytes(out)


def unstuff(payload: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(payload):
        out.append(payload[i])
        if payload[i : i + 2] == b"\xfd\xfd" and out[-3:] == b"\xff\xff\xfd":
            i += 1  # drop the stuffed FD
        i += 1
    return bytes(out)


def packet(motor_id: int, payload: bytes) -> bytes:
    """A protocol 2.0 packet around `payload` (instruction or 0x55 + error, then parameters)."""
    body = stuff(payload)
    head = bytes([0xFF, 0xFF, 0xFD, 0x00, motor_id]) + (len(body) + 2).to_bytes(2, "little")
    crc = crc16(head + body)
    return head + body + crc.to_bytes(2, "little")


def status_packet(motor_id: int, error: int = 0, params: bytes = b"") -> bytes:
    return packet(motor_id, bytes([INST_STATUS, error]) + params)


# ---------------------------------------------------------------------- one servo
class XServo(Servo):
    """One Dynamixel X-series servo."""

    registers = REGISTERS

    def __init__(
        self,
        name: str,
        motor_id: int,
        model: str,
        position: int,
        baudrate: int,
        time_constant_s: float,
        max_speed: float,
    ) -> None:
        super().__init__(name, time_constant_s, max_speed)
        self.model = model
        self.put("Model_Number", MODEL_NUMBERS[model])
        if model.startswith("xl330"):  # 5 V servos
            self.put("Present_Input_Voltage", 50)
            self.put("Max_Voltage_Limit", 70)
            self.put("Min_Voltage_Limit", 35)
        self.put("ID", motor_id)
        self.put("Baud_Rate", {v: k for k, v in BAUD_RATES.items()}[baudrate])
        self.x = float(position)
        self.put("Goal_Position", position)
        self.goal_written_while_off = False
        self.t0 = self.t

    @property
    def id(self) -> int:
        return self.raw("ID")

    @property
    def baudrate(self) -> int:
        return BAUD_RATES.get(self.raw("Baud_Rate"), 0)

    @property
    def torque_on(self) -> bool:
        return self.raw("Torque_Enable") == 1

    def _direction(self) -> int:
        return -1 if self.raw("Drive_Mode") & 1 else 1

    def calibration(self) -> MotorCalibrationValues:
        return MotorCalibrationValues(
            self.value("Homing_Offset"),
            self.value("Min_Position_Limit"),
            self.value("Max_Position_Limit"),
            self.raw("Drive_Mode"),
        )

    def goal(self) -> float:
        goal = self.value("Goal_Position")
        if self.raw("Operating_Mode") == 3:  # only (single-turn) position mode has limits
            goal = min(
                max(goal, self.value("Min_Position_Limit")), self.value("Max_Position_Limit")
            )
        return float(max(-MULTI_TURN_LIMIT, min(MULTI_TURN_LIMIT, goal)))

    def advance(self, now: float) -> None:
        dt, self.t = max(0.0, now - self.t), now
        self.v = 0.0
        if self.torque_on and self.raw("Operating_Mode") in POSITION_MODES:
            vmax = self.max_speed
            if profile := self.value("Profile_Velocity"):
                vmax = min(vmax, profile * STEPS_PER_VELOCITY_UNIT)
            self.x, self.v = first_order_step(self.x, self.goal(), dt, self.tau, vmax)
        self._refresh(now)

    def _refresh(self, now: float) -> None:
        self.put("Present_Position", round(self.x))
        velocity = round(self.v / STEPS_PER_VELOCITY_UNIT)
        self.put("Present_Velocity", velocity)
        self.put("Velocity_Trajectory", velocity)
        self.put("Position_Trajectory", round(self.goal()) if self.torque_on else round(self.x))
        # Current (mA) and PWM grow with the tracking error, as a P controller's output does.
        err = self.goal() - self.x if self.torque_on else 0.0
        current_limit = self.value("Current_Limit")
        self.put("Present_Current", max(-current_limit, min(current_limit, round(err * 3))))
        pwm_limit = self.value("PWM_Limit")
        self.put("Present_PWM", max(-pwm_limit, min(pwm_limit, round(err * 2))))
        moving = abs(velocity) > self.value("Moving_Threshold")
        self.put("Moving", int(moving))
        # Moving_Status: bit 0 in position, bit 1 profile in progress
        self.put("Moving_Status", (0 if abs(err) > 1 else 1) | (2 if moving else 0))
        self.put("Realtime_Tick", int((now - self.t0) * 1000) % 32768)

    def write(self, address: int, data: bytes, now: float) -> int:
        self.advance(now)
        if self.torque_on and address < EEPROM_END:
            return ERR_ACCESS  # EEPROM is locked while torque is on; nothing is written
        offset_before, direction_before = self.value("Homing_Offset"), self._direction()
        torque_before = self.torque_on
        actual = direction_before * (self.x - offset_before)  # the shaft's angle
        for i, byte in enumerate(data):
            if address + i < len(_WRITABLE) and _WRITABLE[address + i]:
                self.mem[address + i] = byte
        # X series: Present_Position = (direction · actual angle) + Homing_Offset
        self.x = self._direction() * actual + self.value("Homing_Offset")
        goal_address = REGISTERS["Goal_Position"].address
        if any(goal_address <= a < goal_address + 4 for a in range(address, address + len(data))):
            self.goal_written_while_off = not self.torque_on
        if self.torque_on and not torque_before:
            if not self.goal_written_while_off:
                self.put("Goal_Position", round(self.x))  # torque on without a goal: hold
            self.goal_written_while_off = False
        self._refresh(now)
        return 0

    def hand_move(self, position: int, now: float) -> None:
        if not (isinstance(position, int) and -MULTI_TURN_LIMIT <= position <= MULTI_TURN_LIMIT):
            raise EmulatorError(
                f"position of {self.name!r} must be an integer in "
                f"-{MULTI_TURN_LIMIT}..{MULTI_TURN_LIMIT}, got {position!r}"
            )
        self.advance(now)
        self.x, self.v = float(position), 0.0
        if self.torque_on:
            self.put("Goal_Position", position)
        self._refresh(now)


# ---------------------------------------------------------------------- the bus
def koch_motors() -> dict[str, int]:
    """The motors of a Koch v1.1 arm (follower or leader), name -> ID, as lerobot's."""
    return {
        "shoulder_pan": 1,
        "shoulder_lift": 2,
        "elbow_flex": 3,
        "wrist_flex": 4,
        "wrist_roll": 5,
        "gripper": 6,
    }


def koch_follower_models() -> dict[str, str]:
    """The servo model of each Koch follower joint, as lerobot's KochFollower declares them."""
    big, small = "xl430-w250", "xl330-m288"
    return dict(zip(koch_motors(), (big, big, small, small, small, small), strict=True))


def koch_leader_models() -> dict[str, str]:
    """The servo model of each Koch leader joint, as lerobot's KochLeader declares them."""
    return dict.fromkeys(koch_motors(), "xl330-m077")


class DynamixelEngine(BusEngine):
    """The X-series protocol, served in the emulator process."""

    def _register_info(self, name: str) -> Register:
        return register_info(name)

    def _split(self, buf: bytearray) -> list[bytes]:
        packets: list[bytes] = []
        while True:
            start = buf.find(b"\xff\xff\xfd\x00")
            if start < 0:
                keep = next((k for k in (3, 2, 1) if b"\xff\xff\xfd"[:k] == buf[-k:]), 0)
                self._ignore(buf, len(buf) - keep)
                return packets
            self._ignore(buf, start)
            if len(buf) < 7:
                return packets
            length = int.from_bytes(buf[5:7], "little")
            if length < 3:
                self._ignore(buf, 4)
                continue
            total = 7 + length
            if len(buf) < total:
                return packets
            raw = bytes(buf[:total])
            if crc16(raw[:-2]) != int.from_bytes(raw[-2:], "little"):
                self._reject()
                del buf[:4]
                continue
            del buf[:total]
            packets.append(raw)

    def _handle(self, raw: bytes) -> None:
        motor_id = raw[4]
        payload = unstuff(raw[7:-2])
        instruction, params = payload[0], payload[1:]
        self._count(INSTRUCTION_NAMES.get(instruction, f"0x{instruction:02X}"))
        now = time.monotonic()
        replies: list[tuple[Servo, bytes]] = []
        broadcast = motor_id == BROADCAST_ID
        with self._lock:
            servos = self._listening()
            targets = [s for s in servos if broadcast or s.id == motor_id]
            alarm = self.faults.status_error

            def answer(servo: Servo, error: int = 0, data: bytes = b"", level: int = 2) -> None:
                # Status_Return_Level: 0 answers PING only, 1 also READ, 2 everything
                if not broadcast and servo.raw("Status_Return_Level") >= level:
                    replies.append((servo, status_packet(servo.id, error | alarm, data)))

            if instruction == INST_PING:
                for servo in sorted(targets, key=lambda s: s.id):
                    info = servo.mem[0:2] + servo.mem[6:7]  # model number, firmware version
                    replies.append((servo, status_packet(servo.id, alarm, bytes(info))))
            elif instruction == INST_READ:
                for servo in targets:
                    if len(params) != 4:
                        answer(servo, ERR_DATA_LENGTH, level=1)
                        continue
                    address, length = (int.from_bytes(params[i : i + 2], "little") for i in (0, 2))
                    answer(servo, 0, servo.read(address, length, now), level=1)
            elif instruction == INST_WRITE and len(params) > 2:
                address = int.from_bytes(params[:2], "little")
                for servo in targets:
                    old_id = servo.id
                    error = servo.write(address, params[2:], now)
                    if servo.raw("Status_Return_Level") >= 2 and not broadcast:
                        # from the old ID, should the write change it (lerobot's setup_motor)
                        replies.append((servo, status_packet(old_id, error | alarm)))
            elif instruction == INST_REG_WRITE and len(params) > 2:
                for servo in targets:
                    servo.pending = (int.from_bytes(params[:2], "little"), bytes(params[2:]))
                    servo.mem[REGISTERS["Registered_Instruction"].address] = 1
                    answer(servo)
            elif instruction == INST_ACTION:
                for servo in targets:
                    error = 0
                    if servo.pending is not None:
                        error = servo.write(*servo.pending, now)
                        servo.pending = None
                        servo.mem[REGISTERS["Registered_Instruction"].address] = 0
                    answer(servo, error)
            elif instruction == INST_REBOOT:
                for servo in targets:
                    answer(servo)
                    servo.put("Torque_Enable", 0)
            elif instruction == INST_SYNC_WRITE and broadcast and len(params) >= 4:
                address, length = (int.from_bytes(params[i : i + 2], "little") for i in (0, 2))
                for i in range(4, len(params) - length, length + 1):
                    for servo in servos:
                        if servo.id == params[i]:
                            servo.write(address, params[i + 1 : i + 1 + length], now)
            elif instruction == INST_SYNC_READ and broadcast and len(params) >= 4:
                address, length = (int.from_bytes(params[i : i + 2], "little") for i in (0, 2))
                for wanted in params[4:]:  # the servos answer one after the other, in list order
                    for servo in servos:
                        if servo.id == wanted:
                            data = servo.read(address, length, now)
                            replies.append((servo, status_packet(servo.id, alarm, data)))
            else:
                for servo in targets:
                    answer(servo, ERR_INSTRUCTION)
        for servo, reply in replies:
            self._send(servo, reply)


class DynamixelBusEmulator(PtyBusEmulator):
    """A bus of emulated Dynamixel X-series servos (protocol 2.0) served on a pseudo-terminal.

    The interface is `FeetechBusEmulator`'s; `models` names each motor's model (one name for
    all, or per motor: `koch_follower_models()`).
    """

    def __init__(
        self,
        motors: Mapping[str, int],
        *,
        models: str | Mapping[str, str] = "xl430-w250",
        seed: int = 0,
        baudrate: int = 1_000_000,
        calibration: Mapping[str, MotorCalibrationValues] | None = None,
        positions: Mapping[str, int] | None = None,
        time_constant_s: float = 0.05,
        max_speed: float = 4000.0,
    ) -> None:
        check_motors(motors, MAX_ID, list(BAUD_RATES.values()), baudrate)
        per_motor = dict.fromkeys(motors, models) if isinstance(models, str) else dict(models)
        if missing := set(motors) - set(per_motor):
            raise EmulatorError(f"models names no model for motors {sorted(missing)}")
        if unknown := {m for m in per_motor.values() if m not in MODEL_NUMBERS}:
            raise EmulatorError(
                f"unknown Dynamixel models {sorted(unknown)}; known: {sorted(MODEL_NUMBERS)}"
            )
        servos = make_servos(
            motors,
            seed,
            calibration,
            positions,
            lambda name, motor_id, rest: XServo(
                name, motor_id, per_motor[name], rest, baudrate, time_constant_s, max_speed
            ),
        )
        super().__init__(DynamixelEngine, servos, seed)


# ---------------------------------------------------------------------- lerobot calibration files
def write_koch_calibration(
    path: str | os.PathLike[str],
    robot_id: str,
    emulator: DynamixelBusEmulator | None = None,
) -> Path:
    """Write lerobot's calibration file for a Koch arm on the emulator: `path/<robot_id>.json`.

    Like `write_so101_calibration`: the servos' own values (offset, limits, drive mode), or a
    factory-fresh bus's when no emulator is given.
    """
    if emulator is not None:
        ids, cal = emulator.motors, emulator.calibration()
    else:
        ids = koch_motors()
        cal = {name: MotorCalibrationValues() for name in ids}
    if missing := set(koch_motors()) - set(cal):
        raise EmulatorError(
            f"the emulator lacks Koch motors {sorted(missing)}: build it with koch_motors()"
        )
    return write_calibration_file(path, robot_id, {n: ids[n] for n in koch_motors()}, cal)
