"""The protocol-independent half of the servo bus emulators: the pty, the process serving it, faults and counters.

A bus emulator is two objects: a `BusEngine`, which owns the servos, opens a pseudo-terminal
and serves its master side, running in a small child process; and a `PtyBusEmulator` in the
caller's process, which starts that process and forwards calls to it over a socket. A driver
opens the pty's slave side (`port`) as if it were a USB serial adapter. Engines speak one
servo protocol: they cut instruction packets out of the byte stream (`_split`) and answer
them (`_handle`, through `_send`, which applies the injected faults).
"""

from __future__ import annotations

import abc
import array
import collections
import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from robolearn.errors import RobolearnError

logger = logging.getLogger(__name__)

_TCGETS2 = 0x802C542A  # _IOR('T', 0x2A, struct termios2) on x86-64 and arm64 Linux


class EmulatorError(RobolearnError, ValueError):
    """The emulator was given a motor, register or value it does not have."""


# ---------------------------------------------------------------------- control tables
@dataclass(frozen=True)
class Register:
    """One entry of a servo's control table."""

    name: str
    address: int
    size: int  # bytes: 1, 2 or 4
    writable: bool
    default: int = 0
    sign_bit: int | None = None  # sign-magnitude encoding (Feetech): the bit that holds the sign
    signed: bool = False  # two's complement encoding (Dynamixel)

    def decode(self, raw: int) -> int:
        if self.sign_bit is not None:
            magnitude = raw & ((1 << self.sign_bit) - 1)
            return -magnitude if raw >> self.sign_bit & 1 else magnitude
        if self.signed and raw >> (8 * self.size - 1):
            return raw - (1 << 8 * self.size)
        return raw

    def encode(self, value: int) -> int:
        bits = 8 * self.size
        if self.sign_bit is not None:
            limit = (1 << self.sign_bit) - 1
            if abs(value) > limit:
                raise EmulatorError(f"{self.name} holds -{limit}..{limit}, got {value}")
            return abs(value) | (1 << self.sign_bit if value < 0 else 0)
        lo, hi = (-(1 << bits - 1), (1 << bits - 1) - 1) if self.signed else (0, (1 << bits) - 1)
        if not lo <= value <= hi:
            raise EmulatorError(f"{self.name} holds {lo}..{hi}, got {value}")
        return value & ((1 << bits) - 1)

    def to_bytes(self, value: int) -> bytes:
        return self.encode(value).to_bytes(self.size, "little")


def lookup_register(
    registers: Mapping[str, Register], name: str, aliases: Mapping[str, str], model: str
) -> Register:
    key = aliases.get(name.strip(), name.strip())
    if key not in registers:
        raise EmulatorError(
            f"no register {name!r} in the {model} control table; known: {', '.join(sorted(registers))}"
        )
    return registers[key]


@dataclass(frozen=True)
class MotorCalibrationValues:
    """The calibration a servo holds in its EEPROM, in lerobot's MotorCalibration fields."""

    homing_offset: int = 0
    range_min: int = 0
    range_max: int = 4095
    drive_mode: int = 0


def write_calibration_file(
    path: str | os.PathLike[str],
    robot_id: str,
    ids: Mapping[str, int],
    calibration: Mapping[str, MotorCalibrationValues],
) -> Path:
    """Write a lerobot calibration file (`path/<robot_id>.json`) for the motors `ids`.

    `path` is the `calibration_dir` of lerobot's robot or teleoperator config; the format is the
    one lerobot's `Robot._save_calibration` writes (a MotorCalibration per motor name).
    """
    directory = Path(path)
    if directory.suffix == ".json":
        raise EmulatorError(
            f"{directory} looks like a file: pass the calibration directory "
            "(lerobot's calibration_dir); the file is named <robot_id>.json"
        )
    payload = {
        name: {
            "id": ids[name],
            "drive_mode": calibration[name].drive_mode,
            "homing_offset": calibration[name].homing_offset,
            "range_min": calibration[name].range_min,
            "range_max": calibration[name].range_max,
        }
        for name in ids
    }
    directory.mkdir(parents=True, exist_ok=True)
    file = directory / f"{robot_id}.json"
    file.write_text(json.dumps(payload, indent=4) + "\n")
    return file


def first_order_step(
    x: float, goal: float, dt: float, tau: float, vmax: float
) -> tuple[float, float]:
    """Position and velocity after `dt` of a speed-capped first-order approach to `goal`.

    At full speed while the error is above vmax·tau, then exponential; solved exactly, so the
    result does not depend on how often the servo is read. Inside half a step it stops, as a
    servo inside its dead band does.
    """
    err = goal - x
    t_linear = max(0.0, abs(err) - vmax * tau) / vmax
    if dt <= t_linear:
        err -= math.copysign(vmax * dt, err)
        v = math.copysign(vmax, err) if err else 0.0
    else:
        err = math.copysign(min(abs(err), vmax * tau), err) * math.exp(-(dt - t_linear) / tau)
        v = err / tau
    if abs(err) < 0.5:
        return goal, 0.0
    return goal - err, v


class Servo(abc.ABC):
    """One emulated servo: its control table in a byte array, and its motion. The bus lock is held."""

    registers: Mapping[str, Register]

    def __init__(self, name: str, time_constant_s: float, max_speed: float) -> None:
        self.name = name
        self.mem = bytearray(256)
        for reg in self.registers.values():
            self.put(reg.name, reg.default)
        self.tau = time_constant_s
        self.max_speed = max_speed
        self.x = 0.0  # position in the Present_Position frame, as a float (sub-step motion)
        self.v = 0.0
        self.t = time.monotonic()
        self.pending: tuple[int, bytes] | None = None  # REG_WRITE waiting for ACTION

    def raw(self, name: str) -> int:
        reg = self.registers[name]
        return int.from_bytes(self.mem[reg.address : reg.address + reg.size], "little")

    def value(self, name: str) -> int:
        return self.registers[name].decode(self.raw(name))

    def put(self, name: str, value: int) -> None:
        """Store a (decoded) value, clipped into the register's range."""
        reg = self.registers[name]
        bits = 8 * reg.size
        if reg.sign_bit is not None:
            limit = (1 << reg.sign_bit) - 1
        else:
            limit = (1 << bits - 1) - 1 if reg.signed else (1 << bits) - 1
        low = -limit if (reg.sign_bit is not None or reg.signed) else 0
        self.mem[reg.address : reg.address + reg.size] = reg.to_bytes(max(low, min(limit, value)))

    @property
    @abc.abstractmethod
    def id(self) -> int: ...

    @property
    @abc.abstractmethod
    def baudrate(self) -> int: ...

    @abc.abstractmethod
    def advance(self, now: float) -> None:
        """Integrate the motion up to `now` and refresh the Present_* registers."""

    @abc.abstractmethod
    def write(self, address: int, data: bytes, now: float) -> int:
        """Apply a write from the bus; returns the status packet's error byte."""

    @abc.abstractmethod
    def hand_move(self, position: int, now: float) -> None:
        """Put the shaft at `position` (Present_Position frame), as a hand does."""

    @abc.abstractmethod
    def calibration(self) -> MotorCalibrationValues: ...

    def read(self, address: int, length: int, now: float) -> bytes:
        self.advance(now)
        return bytes(self.mem[address : address + length]).ljust(length, b"\x00")


def check_motors(motors: Mapping[str, int], max_id: int, rates: list[int], baudrate: int) -> None:
    """Reject a bus no real one could be: no motors, IDs out of range or shared, a wrong rate."""
    if not motors:
        raise EmulatorError("a bus needs at least one motor, e.g. so101_motors()")
    ids = list(motors.values())
    if bad := [i for i in ids if not 0 <= i <= max_id]:
        raise EmulatorError(f"motor IDs must be in 0..{max_id}, got {bad}")
    if len(set(ids)) != len(ids):
        raise EmulatorError(f"two motors share an ID in {dict(motors)}: give each its own")
    if baudrate not in rates:
        raise EmulatorError(f"baudrate {baudrate} is not one of the servos' rates {sorted(rates)}")


def make_servos(
    motors: Mapping[str, int],
    seed: int,
    calibration: Mapping[str, MotorCalibrationValues] | None,
    positions: Mapping[str, int] | None,
    make: Callable[[str, int, int], Servo],
) -> dict[str, Servo]:
    """Servos resting mid-range (of their calibrated range, if given) with a seeded scatter."""
    for what, given in (("calibration", calibration), ("positions", positions)):
        if unknown := set(given or {}) - set(motors):
            raise EmulatorError(f"{what} names motors not on the bus: {sorted(unknown)}")
    rng = random.Random(seed)
    servos: dict[str, Servo] = {}
    now = time.monotonic()
    for name, motor_id in motors.items():
        jitter = rng.randint(-40, 40)
        cal = (calibration or {}).get(name)
        lo, hi = (cal.range_min, cal.range_max) if cal else (0, 4095)
        servo = make(name, motor_id, min(max((lo + hi) // 2 + jitter, lo), hi))
        if cal is not None:
            rest = servo.x
            for reg, value in (
                ("Homing_Offset", cal.homing_offset),
                ("Min_Position_Limit", cal.range_min),
                ("Max_Position_Limit", cal.range_max),
                ("Drive_Mode", cal.drive_mode),
            ):
                if reg in servo.registers:
                    servo.write(
                        servo.registers[reg].address, servo.registers[reg].to_bytes(value), now
                    )
            servo.hand_move(round(rest), now)  # rests mid-range in its calibrated frame
        if positions and name in positions:
            servo.hand_move(positions[name], now)
        servos[name] = servo
    return servos


# ---------------------------------------------------------------------- faults and counters
@dataclass
class Faults:
    """Faults injected on the wire; change them at any time, they apply to the next packet."""

    # probability that a status packet is not sent (the driver: "There is no status packet!")
    lost: float = 0.0
    # probability that a status packet goes out with a wrong checksum ("Incorrect status packet!")
    corrupt: float = 0.0
    # seconds before each status packet: late packets, past the driver's timeout when large
    delay_s: float = 0.0
    # the error byte of every status packet (hardware alarms: overload, overheating, ...)
    status_error: int = 0

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("lost", "corrupt") and not 0.0 <= value <= 1.0:
            raise EmulatorError(f"faults.{name} is a probability in [0, 1], got {value}")
        if name == "delay_s" and not value >= 0.0:
            raise EmulatorError(f"faults.delay_s is a delay in seconds (≥ 0), got {value}")
        if name == "status_error" and not 0 <= value <= 0xFF:
            # (scservo_sdk drops Feetech status packets whose error byte is above 0x7F as malformed)
            raise EmulatorError(f"faults.status_error is an error byte in 0..0xFF, got {value}")
        super().__setattr__(name, value)


@dataclass
class BusStats:
    """What happened on the bus since the emulator started (counters only grow)."""

    received: int = 0  # well-formed instruction packets
    rejected: int = 0  # instruction packets with a bad checksum (ignored, as a servo does)
    answered: int = 0  # status packets written to the port (corrupted ones included)
    dropped: int = 0  # status packets not sent: faults.lost, or disconnect()
    corrupted: int = 0  # status packets sent with a wrong checksum (faults.corrupt)
    ignored_bytes: int = 0  # bytes that arrived while disconnected, or that were not a packet
    instructions: collections.Counter[str] = field(default_factory=collections.Counter)


# ---------------------------------------------------------------------- the engine (child process)
class BusEngine(abc.ABC):
    """The servos and the pty they are served on; runs in the emulator's own process.

    The engine lives in a child process so that its timing does not hang on the driver's: the
    SDKs poll the port in a tight loop while they wait for a status packet, and on a thread of
    the same interpreter the emulator would have to win the GIL from that loop, which on a busy
    machine takes longer than the drivers' 34-50 ms packet timeouts.
    """

    def __init__(self, servos: dict[str, Servo], seed: int) -> None:
        self._servos = servos
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self.faults = Faults()
        self._stats = BusStats()
        self._connected = True

    # ------------------------------------------------------------------ protocol hooks
    @abc.abstractmethod
    def _split(self, buf: bytearray) -> list[bytes]:
        """Cut the complete, well-formed instruction packets off the front of `buf`."""

    @abc.abstractmethod
    def _handle(self, packet: bytes) -> None:
        """Act on one instruction packet and `_send` the status packets it calls for."""

    @abc.abstractmethod
    def _register_info(self, name: str) -> Register: ...

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> str:
        """Open the pty, serve it from a thread; returns the port (the pty's slave path)."""
        self._master, self._slave = os.openpty()
        # Raw mode from the start: no echo or line editing before a driver configures the port.
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)
        self._wake_r, self._wake_w = os.pipe()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="serve", daemon=True)
        self._thread.start()
        return self.port

    def stop(self) -> None:
        self._stop.set()
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5.0)
        for fd in (self._master, self._slave, self._wake_r, self._wake_w):
            os.close(fd)

    # ------------------------------------------------------------------ what the proxy calls
    def set_connected(self, connected: bool) -> None:
        with self._lock:
            self._connected = connected

    def set_fault(self, name: str, value: Any) -> None:
        with self._lock:
            setattr(self.faults, name, value)

    def stats(self) -> BusStats:
        with self._lock:
            return dataclasses.replace(self._stats, instructions=self._stats.instructions.copy())

    def motors(self) -> dict[str, int]:
        with self._lock:
            return {name: servo.id for name, servo in self._servos.items()}

    def _servo(self, name: str) -> Servo:
        if name not in self._servos:
            raise EmulatorError(f"no motor {name!r} on this bus; motors: {sorted(self._servos)}")
        return self._servos[name]

    def positions(self) -> dict[str, int]:
        with self._lock:
            now = time.monotonic()
            for servo in self._servos.values():
                servo.advance(now)
            return {name: s.value("Present_Position") for name, s in self._servos.items()}

    def register(self, name: str, register: str, decoded: bool) -> int:
        reg = self._register_info(register)
        with self._lock:
            data = self._servo(name).read(reg.address, reg.size, time.monotonic())
        raw = int.from_bytes(data, "little")
        return reg.decode(raw) if decoded else raw

    def set_register(self, name: str, register: str, value: int) -> None:
        reg = self._register_info(register)
        data = reg.to_bytes(value)
        with self._lock:
            servo = self._servo(name)
            if reg.writable:
                servo.write(reg.address, data, time.monotonic())
            else:
                servo.mem[reg.address : reg.address + reg.size] = data

    def calibration(self) -> dict[str, MotorCalibrationValues]:
        with self._lock:
            return {name: servo.calibration() for name, servo in self._servos.items()}

    def set_position(self, name: str, position: int) -> None:
        with self._lock:
            self._servo(name).hand_move(position, time.monotonic())

    # ------------------------------------------------------------------ serving
    def _port_baudrate(self) -> int | None:
        """The baud rate the driver set on the pty (the master sees the slave's termios)."""
        buf = array.array("I", [0] * 11)  # struct termios2: 4 flags, line + 19 cc, ispeed, ospeed
        try:
            fcntl.ioctl(self._master, _TCGETS2, buf)
        except OSError:
            return None
        return buf[10] or None

    def _listening(self) -> list[Servo]:
        """The servos that hear the port: those set to the rate it runs at (others see noise)."""
        baud = self._port_baudrate()
        return [s for s in self._servos.values() if baud in (None, s.baudrate)]

    def _serve(self) -> None:
        buf = bytearray()
        partial_since = 0.0
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master, self._wake_r], [], [], 0.1)
            if self._wake_r in ready:
                break
            if self._master in ready:
                try:
                    chunk = os.read(self._master, 4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:  # EIO: the slave side hung up
                    time.sleep(0.01)
                    continue
                if not self._connected:
                    with self._lock:
                        self._stats.ignored_bytes += len(chunk)
                    buf.clear()
                    continue
                buf += chunk
            packets = self._split(buf)
            now = time.monotonic()
            if not buf or packets:
                partial_since = 0.0
            elif partial_since == 0.0:
                partial_since = now
            elif now - partial_since > 0.05:
                # A truncated packet: a servo's receiver times out and resynchronises.
                self._ignore(buf, 1)
                partial_since = 0.0
                packets = self._split(buf)
            for packet in packets:
                self._handle(packet)

    def _ignore(self, buf: bytearray, n: int) -> None:
        if n > 0:
            with self._lock:
                self._stats.ignored_bytes += n
            del buf[:n]

    def _reject(self) -> None:
        with self._lock:
            self._stats.rejected += 1

    def _count(self, instruction: str) -> None:
        with self._lock:
            self._stats.received += 1
            self._stats.instructions[instruction] += 1

    def _send(self, servo: Servo, reply: bytes) -> None:
        """Write one status packet, with the faults applied."""
        # The servo's own return delay (Return_Delay_Time, at most 0.5 ms) is not waited: it is
        # below what a Python process can time, and far below the drivers' timeouts.
        if self.faults.delay_s > 0 and self._stop.wait(self.faults.delay_s):
            return
        with self._lock:
            if not self._connected or self._rng.random() < self.faults.lost:
                self._stats.dropped += 1
                return
            if self._rng.random() < self.faults.corrupt:
                reply = reply[:-1] + bytes([reply[-1] ^ 0xFF])
                self._stats.corrupted += 1
            self._stats.answered += 1
        try:
            os.write(self._master, reply)
        except OSError:
            # Nobody reads the port and its buffer is full: the bytes are lost, as on a wire.
            with self._lock:
                self._stats.dropped += 1
                self._stats.answered -= 1


def serve_child(fd: int) -> None:
    """The emulator process: build the engine it is sent, then answer the proxy's calls."""
    conn = Connection(fd)
    # Ctrl-C in a terminal reaches the whole process group; the parent decides when to stop us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A servo answers within microseconds whatever else the computer does; on a loaded machine
    # a higher priority keeps the emulator inside the drivers' timeouts. Allowed for root only
    # (containers, CI); elsewhere the emulator runs at normal priority.
    with contextlib.suppress(OSError):
        os.nice(-10)
    engine_type, servos, seed = conn.recv()
    engine: BusEngine = engine_type(servos, seed)
    conn.send(engine.start())
    try:
        while True:
            try:
                method, args = conn.recv()
            except (EOFError, OSError):  # the parent is gone: stop with it
                break
            if method == "close":
                break
            try:
                conn.send((True, getattr(engine, method)(*args)))
            except Exception as e:  # a bad name or value: raised again in the parent
                conn.send((False, e))
    finally:
        engine.stop()
        with contextlib.suppress(OSError):
            conn.send((True, None))
        conn.close()


# ---------------------------------------------------------------------- the bus (the user's side)
class _FaultsProxy(Faults):
    """`emu.faults`: setting a field checks it here and sets it in the emulator process."""

    _bus: PtyBusEmulator

    def __init__(self, bus: PtyBusEmulator) -> None:
        super().__init__()  # the defaults, which the engine starts with too
        object.__setattr__(self, "_bus", bus)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)  # validates
        if "_bus" in self.__dict__:
            self._bus._call("set_fault", name, value)


class PtyBusEmulator:
    """A bus of emulated servos served on a pseudo-terminal by a child process.

    The servos, the pty and its serving thread live in a small child process (see `BusEngine`
    for why); this object is its remote control. Use it as a context manager (or call
    `close()`): the process stops and the pty is closed. If this process dies, the child
    notices its end of the control socket close and exits too.
    """

    def __init__(self, engine_type: type[BusEngine], servos: dict[str, Servo], seed: int) -> None:
        self._closed = True
        self._call_lock = threading.Lock()
        ours, theirs = socket.socketpair()
        repo = str(Path(__file__).resolve().parents[2])
        env = os.environ | {"PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
        code = (
            f"from hardware.emulator.serial_bus import serve_child; serve_child({theirs.fileno()})"
        )
        self._process = subprocess.Popen(
            [sys.executable, "-c", code], pass_fds=[theirs.fileno()], env=env, close_fds=True
        )
        theirs.close()
        self._conn = Connection(ours.detach())
        self._conn.send((engine_type, servos, seed))
        if not self._conn.poll(30.0):
            self._process.kill()
            self._process.wait()
            self._conn.close()
            raise EmulatorError("the emulator process did not start within 30 s")
        self.port: str = self._conn.recv()
        self._closed = False
        self.faults: Faults = _FaultsProxy(self)
        logger.info("%s with %d motors on %s", type(self).__name__, len(servos), self.port)

    def _call(self, method: str, *args: Any) -> Any:
        if self._closed:
            raise EmulatorError(f"the emulator on {self.port} is closed")
        try:
            with self._call_lock:  # one request and its answer at a time, whichever thread asks
                self._conn.send((method, args))
                ok, result = self._conn.recv()
        except (OSError, EOFError) as e:
            raise EmulatorError(f"the emulator process serving {self.port} is gone: {e}") from e
        if not ok:
            raise result
        return result

    @property
    def pid(self) -> int:
        """The emulator process's id."""
        return self._process.pid

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> PtyBusEmulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the emulator process and close the pty (a driver still on it gets I/O errors)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError, EOFError), self._call_lock:
            self._conn.send(("close", ()))
            self._conn.recv()
        self._conn.close()
        try:
            self._process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:  # pragma: no cover - a bug: do not leave it behind
            logger.error("the emulator process on %s did not stop; killing it", self.port)
            self._process.kill()
            self._process.wait()

    def disconnect(self) -> None:
        """Stop answering anything, as when the USB cable is pulled; `reconnect()` undoes it."""
        self._call("set_connected", False)

    def reconnect(self) -> None:
        """Answer again after `disconnect()`; the servos kept their state (they stayed powered)."""
        self._call("set_connected", True)

    # ------------------------------------------------------------------ inspection
    @property
    def stats(self) -> BusStats:
        """The bus counters now (a snapshot: read it again to see later packets)."""
        return self._call("stats")

    @property
    def motors(self) -> dict[str, int]:
        """Motor name -> its current ID (an ID written over the bus shows here)."""
        return self._call("motors")

    def positions(self) -> dict[str, int]:
        """Every motor's Present_Position as the wire carries it (raw, Homing_Offset applied)."""
        return self._call("positions")

    def register(self, name: str, register: str, *, decoded: bool = False) -> int:
        """A register of motor `name` by lerobot's name: raw as on the wire, or `decoded` (signed)."""
        return self._call("register", name, register, decoded)

    def set_register(self, name: str, register: str, value: int) -> None:
        """Write a (decoded) register value as the bus would; a read-only one is set directly."""
        self._call("set_register", name, register, value)

    def calibration(self) -> dict[str, MotorCalibrationValues]:
        """The calibration each servo holds (Homing_Offset, position limits, drive mode)."""
        return self._call("calibration")

    def set_position(self, name: str, position: int) -> None:
        """Move a joint by hand (a person moving a leader arm), in the Present_Position frame.

        A torque-enabled servo takes the new position as its goal too, so it stays there.
        """
        self._call("set_position", name, position)
