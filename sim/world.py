"""The PyBullet world: one physics client, its time, the table, renderer choice and clocks."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import pybullet as p
import pybullet_data
from pybullet_utils import bullet_client

log = logging.getLogger(__name__)

TABLE_HEIGHT = 0.0  # the table top is the world's z = 0 plane; arms stand on it


@dataclass
class PhysicsConfig:
    """Physics settings. The control rate is independent: a tick spans many physics steps."""

    hz: float = 240.0
    gravity: float = -9.81
    solver_iterations: int = 50
    renderer: str = "tiny"  # "tiny" (TinyRenderer, CPU), "egl" (OpenGL through EGL) or "auto"


class SimWorld:
    """A PyBullet physics client of its own (worlds never share state) with a sim clock."""

    def __init__(self, config: PhysicsConfig | None = None) -> None:
        self.config = config or PhysicsConfig()
        if self.config.hz <= 0:
            raise ValueError(f"physics rate must be positive, got {self.config.hz}")
        self.client = new_client()
        self.dt = 1.0 / self.config.hz
        self.client.setTimeStep(self.dt)
        self.client.setGravity(0, 0, self.config.gravity)
        # Sorted contact pairs: otherwise the order Bullet solves contacts in (and so the last
        # bits of every result) depends on which pairs came and went in earlier episodes, and an
        # episode would not depend on its seed alone (the SO-101 pushing the T, two links on it
        # at once, showed it).
        self.client.setPhysicsEngineParameter(
            numSolverIterations=self.config.solver_iterations, deterministicOverlappingPairs=1
        )
        self.steps = 0
        # the renderer first: the EGL plugin only draws bodies loaded after it
        self.renderer = self._choose_renderer(self.config.renderer)
        self.plane = self.client.loadURDF("plane.urdf", [0, 0, TABLE_HEIGHT])
        self.client.changeVisualShape(self.plane, -1, rgbaColor=[0.78, 0.72, 0.62, 1])

    @property
    def time(self) -> float:
        """Simulated seconds since the world was made (exact: a count of physics steps)."""
        return self.steps * self.dt

    def step(self, n: int = 1) -> None:
        for _ in range(n):
            self.client.stepSimulation()
        self.steps += n

    def step_until(self, t: float) -> None:
        """Advance physics to simulated time `t` (to the nearest step; never backwards)."""
        target = round(t / self.dt)
        if target > self.steps:
            self.step(target - self.steps)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()

    def _choose_renderer(self, name: str) -> int:
        if name not in ("tiny", "egl", "auto"):
            raise ValueError(f"renderer {name!r} is not one of 'tiny', 'egl', 'auto'")
        if name == "tiny":
            return p.ER_TINY_RENDERER
        spec = importlib.util.find_spec("eglRenderer")
        if spec is not None and spec.origin:
            try:
                with _quiet_stdout():
                    plugin = self.client.loadPlugin(spec.origin, "_eglRendererPlugin")
            except Exception as e:  # pybullet raises a bare error when EGL is unusable
                plugin = -1
                log.debug("EGL plugin failed: %r", e)
            if plugin >= 0:
                log.info("rendering through EGL")
                return p.ER_BULLET_HARDWARE_OPENGL
        if name == "egl":
            raise RuntimeError("EGL rendering was asked for but the EGL plugin does not load here")
        log.info("EGL is not available; rendering with TinyRenderer")
        return p.ER_TINY_RENDERER


def new_client() -> bullet_client.BulletClient:
    """A PyBullet physics server of its own, in this process, without a window."""
    with _quiet_stdout():  # PyBullet's C code prints its argv on every connection
        client = bullet_client.BulletClient(connection_mode=p.DIRECT)
    client.setAdditionalSearchPath(pybullet_data.getDataPath())
    return client


@contextlib.contextmanager
def _quiet_stdout():  # type: ignore[no-untyped-def]
    """Silence what PyBullet's C code prints to fd 1 while loading plugins."""
    try:
        fd = os.dup(1)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(fd, 1)
        os.close(fd)
        os.close(devnull)


class LockStepClock:
    """Simulated time: `sleep_until` runs the physics there, as fast as the CPU allows."""

    def __init__(self, world: SimWorld) -> None:
        self.world = world

    def now(self) -> float:
        return self.world.time

    def sleep_until(self, t: float) -> None:
        self.world.step_until(t)

    def sync(self) -> None:
        """Nothing to catch up: lock-step time only moves when the control loop sleeps."""


class RealTimeClock:
    """Wall time: the physics is run forward to keep up with it whenever anyone looks."""

    def __init__(self, world: SimWorld) -> None:
        self.world = world
        self._origin = time.monotonic() - world.time

    @property
    def origin(self) -> float:
        """The monotonic time at which simulated time was zero (shared with other processes)."""
        return self._origin

    def now(self) -> float:
        return time.monotonic() - self._origin

    def sleep_until(self, t: float) -> None:
        delay = t - self.now()
        if delay > 0:
            time.sleep(delay)
        self.sync()

    def sync(self) -> None:
        self.world.step_until(self.now())


def quat_to_rotvec(q: np.ndarray) -> np.ndarray:
    """Rotation vector (axis × angle) of an xyzw quaternion."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q)
    if q[3] < 0:
        q = -q
    s = np.linalg.norm(q[:3])
    if s < 1e-12:
        return 2.0 * q[:3]
    angle = 2.0 * np.arctan2(s, q[3])
    return q[:3] / s * angle


def rotvec_to_quat(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    angle = float(np.linalg.norm(v))
    if angle < 1e-12:
        return np.array([*(0.5 * v), 1.0]) / np.linalg.norm([*(0.5 * v), 1.0])
    axis = v / angle
    return np.array([*(axis * np.sin(angle / 2)), np.cos(angle / 2)])


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of xyzw quaternions (a then b applied in the world frame: a ⊗ b)."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ]
    )
