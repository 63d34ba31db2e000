"""A simulated arm in a process of its own, in real time, as a real arm and its cameras are.

`PyBulletRobot(clock="realtime")` runs the physics and renders the cameras inside `observe()`,
on the control loop's thread: a tick that falls on a camera frame pays for the render (6 ms for
a 96×96 TinyRenderer frame on a quiet core, 25 ms at the p99 on a busy 2-core machine), and a
50 Hz loop then misses deadlines that a real arm would not make it miss. `SimProcessRobot`
runs the same robot in a child process that keeps its own time: it steps the physics at the
physics rate, renders each camera at the camera's frame rate (cameras without one run at
`camera_fps`) and publishes the latest state, frames, capture times and the task's success into
shared memory. The control loop's `observe()` only copies the latest of them; `act()` solves
the kinematics on the loop's side (a kinematics-only copy of the arm, the same code as the
in-process robot) and hands the joint targets to the child without waiting, as a real arm's
driver writes goal positions to its bus. The task's `success()` and `score()` read the
published values.

The child is started with `spawn` (no locks or threads inherited from a process that may run
torch), builds the arm and scene from a pickled, unconnected copy of the robot, and exits when
the parent disconnects or goes away. If it dies, the next `observe()`, `act()` or `reset()`
raises DeviceError with its exit code and, when it could say, its traceback.

Capture times are on the shared clock (`clock.now()`, seconds since the episode's reset on the
simulated clock, which runs at wall time), so the runtime's action ages and latency
compensation see what they would see on a real arm. Lock-step runs keep the in-process robot:
there the simulation has to wait for the loop.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import logging
import multiprocessing as mp
import os
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from robolearn.hal import DeviceError, Observation, SimRobot
from robolearn.spec import FeatureSpec
from sim.robot import CameraConfig, PyBulletRobot

log = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0  # importing PyBullet and loading the scene on a busy machine
REPLY_TIMEOUT_S = 60.0  # a reset settles the scene and renders every camera
LOCK_TIMEOUT_S = 2.0  # the child holds the lock only while it copies one snapshot in
HEADER = 4  # float64 slots before the capture times: sequence, clock origin, success, score


@dataclasses.dataclass(frozen=True)
class _Slot:
    key: str
    offset: int
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


class Snapshot:
    """The shared memory both sides see: a float64 header (sequence number, clock origin,
    success, score, one capture time per observation key) and every observation's bytes."""

    def __init__(self, spec: FeatureSpec, buffer: Any) -> None:
        keys = spec.observation_keys
        self.keys = list(keys)
        offset = 8 * (HEADER + len(keys))
        slots = []
        for k in keys:
            f = spec[k]
            slots.append(_Slot(k, offset, tuple(f.shape), str(f.dtype)))
            offset += -(-slots[-1].nbytes // 8) * 8  # keep every slot 8-byte aligned
        self.slots = slots
        self.nbytes = offset
        self.buffer = buffer
        raw = np.frombuffer(buffer, dtype=np.uint8)
        if raw.size < self.nbytes:
            raise ValueError(f"shared buffer of {raw.size} bytes; the spec needs {self.nbytes}")
        self.header = np.frombuffer(buffer, dtype=np.float64, count=HEADER + len(keys))
        self.views = {
            s.key: raw[s.offset : s.offset + s.nbytes].view(s.dtype).reshape(s.shape) for s in slots
        }

    @staticmethod
    def size(spec: FeatureSpec) -> int:
        n = len(spec.observation_keys)
        total = 8 * (HEADER + n)
        for k in spec.observation_keys:
            f = spec[k]
            total += -(-int(np.prod(f.shape)) * np.dtype(f.dtype).itemsize // 8) * 8
        return total

    def write(self, obs: Observation, origin: float, success: bool, score: float) -> None:
        for k in self.keys:
            self.views[k][...] = obs.values[k]
        h = self.header
        h[1], h[2], h[3] = origin, float(success), float(score)
        h[HEADER:] = [obs.capture_times[k] for k in self.keys]
        h[0] += 1

    def read(self) -> tuple[dict[str, np.ndarray], dict[str, float], float, float, float, int]:
        values = {k: v.copy() for k, v in self.views.items()}
        h = self.header.copy()
        times = dict(zip(self.keys, h[HEADER:].tolist(), strict=True))
        return values, times, float(h[1]), float(h[2]), float(h[3]), int(h[0])


class SharedClock:
    """The child's simulated clock as the parent sees it: wall time since the episode's reset
    (both processes read the same monotonic clock)."""

    def __init__(self, origin: float) -> None:
        self.origin = origin

    def now(self) -> float:
        return time.monotonic() - self.origin

    def sleep_until(self, t: float) -> None:
        delay = t - self.now()
        if delay > 0:
            time.sleep(delay)


class _TaskView:
    """The task as the parent sees it: its configuration, and success and score as the child
    last published them."""

    def __init__(self, task: Any, robot: SimProcessRobot) -> None:
        self._task = task
        self._robot = robot

    def success(self) -> bool:
        return bool(self._robot._latest()[3])

    def score(self) -> float:
        return float(self._robot._latest()[4])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)


def _at_rate(cam: Any, fps: float) -> CameraConfig:
    """`cam` as a CameraConfig, running at `fps` unless it has a rate of its own."""
    values = {f.name: getattr(cam, f.name) for f in dataclasses.fields(CameraConfig)}
    for k in ("eye", "target", "up"):
        values[k] = tuple(float(v) for v in values[k])
    if values["fps"] is None:
        values["fps"] = fps
    return CameraConfig(**values)


def _serve(robot: PyBulletRobot, buffer: Any, lock: Any, conn: Connection) -> None:
    """The child: connect the robot (real-time clock), then step, render and publish until told
    to stop."""
    try:
        snap = Snapshot(robot.spec, buffer)
        robot.connect()  # resets to the robot's seed
        world = robot.world
        task = robot.task
        assert world is not None

        def publish(obs: Observation) -> None:
            success = task is not None and bool(task.success())
            score = float(task.score()) if task is not None else 0.0
            origin = robot.clock.origin  # type: ignore[union-attr]
            with lock:
                snap.write(obs, origin, success, score)

        def targets() -> tuple[Any, ...]:
            q, grip, ee = robot.targets()
            return (q, grip, ee, robot.clock.origin)  # type: ignore[union-attr]

        publish(robot._observe())
        conn.send(("ready", os.getpid(), targets()))
    except BaseException:
        with contextlib.suppress(Exception):
            conn.send(("failed", traceback.format_exc()))
        return
    try:
        while True:
            robot.clock.sync()  # the physics up to now, under the commands sent until now
            while conn.poll(0):
                msg = conn.recv()
                kind = msg[0]
                if kind == "command":
                    robot.arm.command(msg[1], msg[2])  # type: ignore[union-attr]
                elif kind == "reset":
                    publish(robot.reset(msg[1]))
                    conn.send(("reset", targets()))
                elif kind == "hold":
                    robot.hold()
                    conn.send(("held", targets()))
                elif kind == "render":
                    conn.send(("frame", robot.render(msg[1])))
                elif kind == "close":
                    return
            publish(robot._observe())  # renders the cameras whose frame is due
            wait = (world.steps + 1) * world.dt - robot.clock.now()
            if wait > 0:
                conn.poll(wait)  # the next physics step, or a message, whichever comes first
    except (EOFError, OSError, KeyboardInterrupt):
        return  # the parent went away
    except BaseException:
        with contextlib.suppress(Exception):
            conn.send(("failed", traceback.format_exc()))
    finally:
        with contextlib.suppress(Exception):
            robot.disconnect()


class SimProcessRobot(SimRobot):
    """`robot` (an unconnected PyBulletRobot) run in real time in a process of its own (module
    docstring). Cameras without a frame rate of their own run at `camera_fps` there, as real
    cameras do (a fresh frame at every observation would need the loop to wait for it)."""

    clock_mode = "realtime"

    def __init__(self, robot: PyBulletRobot, *, camera_fps: float = 30.0) -> None:
        if robot.is_connected:
            raise ValueError("SimProcessRobot takes an unconnected PyBulletRobot; it connects it")
        if not camera_fps > 0:
            raise ValueError(f"camera_fps must be positive, got {camera_fps}")
        self.sim = robot
        self.camera_fps = float(camera_fps)
        self.model = robot.model
        self.cameras = [_at_rate(c, self.camera_fps) for c in robot.cameras]
        self.task = None if robot.task is None else _TaskView(robot.task, self)
        self._proc: Any = None
        self._conn: Connection | None = None
        self._clock: SharedClock | None = None
        self._kin: PyBulletRobot | None = None
        self._snap: Snapshot | None = None
        self._lock: Any = None

    @property
    def spec(self) -> FeatureSpec:
        return self.sim.spec

    @property
    def clock(self) -> SharedClock:
        if self._clock is None:
            raise RuntimeError("the robot's clock exists once it is connected")
        return self._clock

    @property
    def pid(self) -> int | None:
        """The simulation process's id (None before connect)."""
        return None if self._proc is None else self._proc.pid

    # ------------------------------------------------------------------ lifecycle
    def _connect(self) -> None:
        from sim.arms import SimArm
        from sim.world import new_client

        ctx = mp.get_context("spawn")
        child = copy.copy(self.sim)
        child.clock_mode = "realtime"
        child.cameras = list(self.cameras)
        buffer = ctx.RawArray(ctypes.c_uint8, Snapshot.size(self.spec))
        self._lock = ctx.Lock()
        self._snap = Snapshot(self.spec, buffer)
        ours, theirs = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(
            target=_serve,
            args=(child, buffer, self._lock, theirs),
            name="robolearn-sim",
            daemon=True,
        )
        self._proc.start()
        theirs.close()
        self._conn = ours
        # the kinematics on this side: the arm alone, in a client that is never stepped
        kin = copy.copy(self.sim)
        kin.task, kin.cameras = None, []
        kin.arm = SimArm(new_client(), self.model, "simple")
        self._kin = kin
        try:
            reply = self._wait(("ready",), START_TIMEOUT_S, "start")
        except BaseException:
            self._stop()
            raise
        self._take(reply[2])

    def _disconnect(self) -> None:
        self._stop()

    def _stop(self) -> None:
        conn, proc = self._conn, self._proc
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.send(("close",))
        if proc is not None:
            proc.join(timeout=5.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5.0)
            if proc.is_alive():
                proc.kill()
                proc.join()
        if conn is not None:
            conn.close()
        if self._kin is not None and self._kin.arm is not None:
            self._kin.arm.close()
            with contextlib.suppress(Exception):
                self._kin.arm.client.disconnect()
        self._conn = self._proc = self._kin = None

    def _take(self, targets: tuple[Any, ...]) -> None:
        q, grip, ee, origin = targets
        assert self._kin is not None
        self._kin.set_targets(q, grip, ee)
        self._clock = SharedClock(origin)

    def _died(self, what: str) -> DeviceError:
        proc = self._proc
        if proc is not None:
            proc.join(timeout=1.0)  # the exit code, once it has gone
        code = None if proc is None else proc.exitcode
        detail = ""
        with contextlib.suppress(Exception):
            while self._conn is not None and self._conn.poll(0):
                msg = self._conn.recv()
                if msg[0] == "failed":
                    detail = "\n" + msg[1]
        return DeviceError(
            f"the simulation process {what}: it exited (code {code}){detail}"
            if code is not None
            else f"the simulation process {what}{detail}"
        )

    def _wait(self, kinds: tuple[str, ...], timeout: float, what: str) -> tuple[Any, ...]:
        conn = self._conn
        assert conn is not None
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise DeviceError(f"the simulation process did not answer ({what}) in {timeout} s")
            try:
                ready = conn.poll(min(left, 0.5))
                msg = conn.recv() if ready else None
            except (EOFError, OSError):
                raise self._died(f"failed to {what}") from None
            if msg is None:
                if not self._proc.is_alive():
                    raise self._died(f"failed to {what}")
                continue
            if msg[0] == "failed":
                raise DeviceError(f"the simulation process failed to {what}:\n{msg[1]}")
            if msg[0] in kinds:
                return msg

    def _alive(self) -> None:
        if self._proc is None or not self._proc.is_alive():
            raise self._died("stopped")

    # ------------------------------------------------------------------ episodes
    def reset(self, seed: int | None = None) -> Observation:
        self._require_connected()
        self._alive()
        assert self._conn is not None
        self._conn.send(("reset", seed))
        self._take(self._wait(("reset",), REPLY_TIMEOUT_S, "reset")[1])
        return self.observe()

    def hold(self) -> None:
        if self._conn is None or self._proc is None or not self._proc.is_alive():
            return
        with contextlib.suppress(Exception):
            self._conn.send(("hold",))
            self._take(self._wait(("held",), 10.0, "hold")[1])

    def render(self, cam: Any) -> np.ndarray:
        """One RGB frame of `cam` rendered in the simulation process (for videos)."""
        self._require_connected()
        self._alive()
        assert self._conn is not None
        self._conn.send(("render", cam))
        return self._wait(("frame",), REPLY_TIMEOUT_S, "render")[1]

    # ------------------------------------------------------------------ observe / act
    def _latest(self) -> tuple[dict[str, np.ndarray], dict[str, float], float, float, float, int]:
        self._alive()
        assert self._snap is not None
        if not self._lock.acquire(timeout=LOCK_TIMEOUT_S):
            self._alive()
            raise DeviceError("the simulation process holds its snapshot lock; it has hung")
        try:
            return self._snap.read()
        finally:
            self._lock.release()

    def _observe(self) -> Observation:
        values, times, _, _, _, _ = self._latest()
        return Observation(values, times)

    def _send(self, key: str, action: np.ndarray) -> dict[str, np.ndarray]:
        self._alive()
        assert self._kin is not None and self._conn is not None
        q, grip, sent = self._kin.plan(key, action)
        try:
            self._conn.send(("command", q, grip))
        except (BrokenPipeError, OSError):
            raise self._died("stopped") from None
        return sent
