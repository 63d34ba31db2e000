"""PyBulletRobot: a simulated arm, its cameras and a task scene behind the HAL's Robot contract."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pybullet as p

from robolearn.hal import Observation, SimRobot
from robolearn.spec import Feature, FeatureSpec
from sim.arms import PANDA, SO101, ArmModel, SimArm
from sim.tasks.base import Task
from sim.urdf import VISUALS, variant
from sim.world import (
    LockStepClock,
    PhysicsConfig,
    RealTimeClock,
    SimWorld,
    new_client,
    quat_multiply,
    quat_to_rotvec,
    rotvec_to_quat,
)

EE_KEY = "action.ee"
DEFAULT_LIGHT = {"lightDirection": [0.4, -0.3, 1.0]}
JOINT_KEY = "action.joint"
ARMS = {"panda": PANDA, "so101": SO101}


@dataclass
class CameraConfig:
    """A camera: fixed in the world (`eye` looking at `target`) or riding on the wrist (`mount`).

    For a wrist camera, `eye` and `target` are in the mount link's frame.

    With `depth=True` the robot also observes `<name>_depth`: float32 H×W×1 metric depth in
    metres, the distance from the camera along its viewing axis (z-depth, not the length of the
    ray), linearised from the renderer's z-buffer with `near` and `far`; where nothing is within
    `far` it reads `far`. It is a kind "state" feature because robolearn images are uint8; it is
    stored losslessly as float32.
    """

    name: str
    width: int = 96
    height: int = 96
    fov: float = 60.0
    eye: tuple[float, float, float] = (1.1, 0.0, 0.7)
    target: tuple[float, float, float] = (0.45, 0.0, 0.05)
    up: tuple[float, float, float] = (0.0, 0.0, 1.0)
    mount: str | None = None  # "wrist" to ride on the arm's camera link
    near: float = 0.01
    far: float = 3.0
    jitter: float = 0.0  # metres of random eye displacement per reset (domain randomisation)
    depth: bool = False  # also observe `<name>_depth` (metres, float32 H×W×1)
    # Frames per second. None: a fresh frame at every observation. A number: the camera runs
    # at its own rate, as a real one does (30 fps is usual); an observation between two frames
    # reads the latest frame with its capture time. On the simulation's clock, so lock-step and
    # real-time runs see the same frames; in real time it also spares the control loop a render
    # on the ticks between frames (a 96×96 TinyRenderer frame costs 10–25 ms on 2 cores).
    fps: float | None = None

    def __post_init__(self) -> None:
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"camera {self.name!r}: fps must be positive or null, got {self.fps}")

    @property
    def depth_key(self) -> str:
        return depth_key(self.name)


def depth_key(camera: str) -> str:
    """The observation key of a camera's depth image."""
    return f"{camera}_depth"


def linearize_depth(zbuf: np.ndarray, near: float, far: float) -> np.ndarray:
    """Metric z-depth (metres, float32) from an OpenGL-style z-buffer in [0, 1]."""
    z = np.asarray(zbuf, dtype=np.float64)
    return (far * near / (far - (far - near) * z)).astype(np.float32)


def rot6d(quat: np.ndarray) -> np.ndarray:
    """First two columns of the rotation matrix: a continuous encoding of orientation."""
    m = np.array(p.getMatrixFromQuaternion(quat)).reshape(3, 3)
    return np.concatenate([m[:, 0], m[:, 1]])


class PyBulletRobot(SimRobot):
    """A simulated arm with cameras and a task scene.

    Observations: `state` (joint positions and gripper, in the arm's units), `ee_pose` (position
    and 6-D rotation), the task's privileged state keys, one image per camera and `<camera>_depth`
    for a camera with `depth=True`. Actions: `action.joint` (absolute joint targets + gripper)
    and `action.ee` (end-effector delta: dx dy dz in metres, rotation vector in radians, gripper
    0 closed … 1 open). Both are returned by `act()` whichever one was sent, so a recorder can
    keep both.

    `clock="lockstep"` runs the physics only when the control loop sleeps (as fast as the CPU
    allows); `clock="realtime"` keeps simulated time equal to wall time.

    `visuals`: how the arm is drawn. "simple" (default) draws each link with its collision mesh,
    about 5× faster to render with TinyRenderer and to load than the detailed visual meshes
    ("full"; the same picture at 96×96, see sim/urdf.py). Physics is the same in both.
    """

    def __init__(
        self,
        arm: ArmModel | str = "panda",
        *,
        task: Task | None = None,
        cameras: Sequence[CameraConfig] = (),
        clock: str = "lockstep",
        physics: PhysicsConfig | None = None,
        max_ee_step: float = 0.05,
        max_rot_step: float = 0.3,
        seed: int | None = None,
        visuals: str = "simple",
    ) -> None:
        if isinstance(arm, str):
            if arm not in ARMS:
                raise ValueError(f"unknown arm {arm!r}; choose one of {sorted(ARMS)}")
            arm = ARMS[arm]
        if clock not in ("lockstep", "realtime"):
            raise ValueError(f"clock must be 'lockstep' or 'realtime', got {clock!r}")
        if visuals not in VISUALS:
            raise ValueError(
                f"visuals={visuals!r}: choose simple (the collision meshes, fast to load and "
                "render) or full (the URDF's detailed meshes)"
            )
        names = [c.name for c in cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"camera names must differ, got {names}")
        self.model = arm
        self.task = task
        self.cameras = list(cameras)
        self.clock_mode = clock
        self.physics = physics or PhysicsConfig()
        self.max_ee_step = float(max_ee_step)
        self.max_rot_step = float(max_rot_step)
        self._seed = seed
        self.visuals = visuals
        self.world: SimWorld | None = None
        self.arm: SimArm | None = None
        self._clock: LockStepClock | RealTimeClock | None = None
        self._disturbance: np.ndarray | None = None  # see disturb()
        self._spec = self._build_spec()

    # ------------------------------------------------------------------ spec
    def _build_spec(self) -> FeatureSpec:
        m = self.model
        n = len(m.joint_names)
        features: dict[str, Feature] = {
            "state": Feature((n + 1,), "float32", "state", names=m.names()),
            "ee_pose": Feature(
                (9,),
                "float32",
                "state",
                names=["x", "y", "z", "r11", "r21", "r31", "r12", "r22", "r32"],
            ),
        }
        if self.task is not None:
            features.update(self.task.state_features())
        for cam in self.cameras:
            features[cam.name] = Feature((cam.height, cam.width, 3), "uint8", "image")
        for cam in self.cameras:
            if cam.depth:
                if cam.depth_key in features:
                    raise ValueError(
                        f"camera {cam.name!r}: its depth key {cam.depth_key!r} is already taken"
                    )
                features[cam.depth_key] = Feature((cam.height, cam.width, 1), "float32", "state")
        low, high = self._joint_limits()
        features[JOINT_KEY] = Feature(
            (n + 1,),
            "float32",
            "action",
            names=m.names(),
            low=low,
            high=high,
            representation="joint_position",
        )
        s, r = self.max_ee_step, self.max_rot_step
        features[EE_KEY] = Feature(
            (7,),
            "float32",
            "action",
            names=["dx", "dy", "dz", "drx", "dry", "drz", "gripper"],
            low=[-s, -s, -s, -r, -r, -r, 0.0],
            high=[s, s, s, r, r, r, 1.0],
            representation="ee_delta",
        )
        return FeatureSpec(features)

    def _joint_limits(self) -> tuple[list[float], list[float]]:
        # Read the limits from the URDF once, with a throwaway kinematics client.
        client = new_client()
        try:
            body = client.loadURDF(variant(self.model.urdf, "simple"), useFixedBase=True)
            index = {
                client.getJointInfo(body, j)[1].decode(): j
                for j in range(client.getNumJoints(body))
            }
            low = [
                client.getJointInfo(body, index[n])[8] * self.model.scale
                for n in self.model.joint_names
            ]
            high = [
                client.getJointInfo(body, index[n])[9] * self.model.scale
                for n in self.model.joint_names
            ]
        finally:
            client.disconnect()
        g0, g1 = self.model.gripper_range
        return [*low, min(g0, g1)], [*high, max(g0, g1)]

    @property
    def spec(self) -> FeatureSpec:
        return self._spec

    @property
    def clock(self) -> LockStepClock | RealTimeClock:
        if self._clock is None:
            raise RuntimeError("the robot's clock exists once it is connected")
        return self._clock

    # ------------------------------------------------------------------ lifecycle
    def _connect(self) -> None:
        self.world = SimWorld(self.physics)
        self.arm = SimArm(self.world.client, self.model, self.visuals)
        if self.task is not None:
            self.task.build(self.world, self.arm)
        self._clock = (
            LockStepClock(self.world)
            if self.clock_mode == "lockstep"
            else RealTimeClock(self.world)
        )
        self._views: dict[str, tuple[list[float], list[float]]] = {}
        self._eye_offsets = {c.name: np.zeros(3) for c in self.cameras}
        # per camera: when its next frame is due, the latest frame (and depth), its capture time
        self._frames: dict[str, tuple[float, np.ndarray, np.ndarray | None, float]] = {}
        self._connected = True  # reset() below observes, which needs a connected robot
        self.reset(self._seed)

    def _disconnect(self) -> None:
        if self.arm is not None:
            self.arm.close()
        if self.world is not None:
            self.world.close()
        self.world = self.arm = self._clock = None

    def reset(self, seed: int | None = None) -> Observation:
        self._require_connected()
        rng = np.random.default_rng(seed)
        arm, world = self.arm, self.world
        assert arm is not None and world is not None
        arm.reset(np.array(self.model.home), open_fraction=1.0)
        if self.task is not None:
            self.task.reset(rng)
        for cam in self.cameras:
            self._eye_offsets[cam.name] = (
                rng.normal(0.0, cam.jitter, 3) if cam.jitter > 0 else np.zeros(3)
            )
        self._light = dict(DEFAULT_LIGHT)
        if self.task is not None and self.task.random.lighting:
            direction = np.array([rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0.5, 1.5)])
            self._light = {
                "lightDirection": direction.tolist(),
                "lightColor": rng.uniform(0.7, 1.0, 3).tolist(),
                "lightAmbientCoeff": float(rng.uniform(0.4, 0.8)),
                "lightDiffuseCoeff": float(rng.uniform(0.4, 0.8)),
            }
        self._frames = {}  # a new episode starts with fresh frames
        self._disturbance = None
        world.step(int(0.1 * self.physics.hz))  # let objects settle on the table
        if isinstance(self._clock, RealTimeClock):
            self._clock = RealTimeClock(world)
        self._q_target = arm.joint_positions()
        self._grip_target = 1.0
        self._ee_target = arm.ee_pose()
        return self.observe()

    def hold(self) -> None:
        """Hold the arm where it is now (targets = measured joints, gripper as it is)."""
        arm = self.arm
        if arm is None:
            return
        q, grip = arm.joint_positions(), arm.open_fraction()
        arm.command(q, grip)
        self._q_target, self._grip_target = q, grip
        self._ee_target = arm.ee_pose()

    def targets(self) -> tuple[np.ndarray, float, tuple[np.ndarray, np.ndarray]]:
        """The commanded joint targets (radians), gripper opening and end-effector pose."""
        return self._q_target, self._grip_target, self._ee_target

    def set_targets(self, q: np.ndarray, grip: float, ee: tuple[np.ndarray, np.ndarray]) -> None:
        """Take over another copy's targets (the base of the next end-effector delta)."""
        self._q_target, self._grip_target = np.asarray(q, dtype=np.float64), float(grip)
        self._ee_target = (np.asarray(ee[0], dtype=np.float64), np.asarray(ee[1], dtype=np.float64))

    def disturb(self, offset: np.ndarray | None) -> None:
        """Push the arm off its commands: `offset` (radians, one per arm joint) is added to the
        joint targets of every action sent from now on (None: no longer). `act()` still
        returns the action as commanded, so a recorder stores the command, not the push: the
        way to record corrections to a disturbed arm (DART). Cleared by `reset()`."""
        if offset is None:
            self._disturbance = None
            return
        offset = np.asarray(offset, dtype=np.float64)
        n = len(self.model.joint_names)
        if offset.shape != (n,) or not np.all(np.isfinite(offset)):
            raise ValueError(
                f"disturb(): need {n} finite joint offsets (radians) for {self.model.name}, "
                f"got shape {offset.shape}"
            )
        self._disturbance = offset

    # ------------------------------------------------------------------ observe / act
    def _observe(self) -> Observation:
        arm = self.arm
        assert arm is not None
        self.clock.sync()
        now = self.clock.now()
        q = arm.joint_positions() * self.model.scale
        g0, g1 = self.model.gripper_range
        grip = g0 + arm.open_fraction() * (g1 - g0)
        pos, quat = arm.ee_pose()
        values: dict[str, np.ndarray] = {
            "state": np.array([*q, grip], dtype=np.float32),
            "ee_pose": np.concatenate([pos, rot6d(quat)]).astype(np.float32),
        }
        if self.task is not None:
            values.update(
                {k: np.asarray(v, dtype=np.float32) for k, v in self.task.state().items()}
            )
        times = dict.fromkeys(values, now)
        for cam in self.cameras:
            last = self._frames.get(cam.name)
            # frames fall due on the camera's own schedule, one period apart (the tolerance
            # keeps a camera at the control rate, or a multiple of it, on every tick); one
            # that came due between two observations is captured at the later one
            if last is None or cam.fps is None or now >= last[0] - 1e-6:
                rgb, depth = self._capture(cam, depth=cam.depth)
                due = now if last is None or cam.fps is None else last[0]
                if cam.fps is not None:
                    due = max(due + 1.0 / cam.fps, now)
                last = self._frames[cam.name] = (due, rgb, depth, self.clock.now())
            _, rgb, depth, stamp = last
            values[cam.name] = rgb
            times[cam.name] = stamp
            if depth is not None:
                values[cam.depth_key] = depth
                times[cam.depth_key] = stamp
        return Observation(values, times)

    def _send(self, key: str, action: np.ndarray) -> dict[str, np.ndarray]:
        arm = self.arm
        assert arm is not None
        self.clock.sync()
        q, grip, sent = self.plan(key, action)
        if self._disturbance is not None:
            q = q + self._disturbance
        arm.command(q, grip)
        return sent

    def plan(self, key: str, action: np.ndarray) -> tuple[np.ndarray, float, dict[str, np.ndarray]]:
        """The joint targets (radians) and gripper opening (0 closed … 1 open) an action asks
        for, and the action in both representations, from the kinematics alone (nothing is
        sent; the targets become the base of the next end-effector delta)."""
        arm = self.arm
        assert arm is not None
        n = len(self.model.joint_names)
        g0, g1 = self.model.gripper_range
        prev_pos, prev_quat = self._ee_target
        if key == JOINT_KEY:
            q = action[:n].astype(np.float64) / self.model.scale
            grip = float((action[n] - g0) / (g1 - g0))
            pos, quat = arm.forward(q)
        else:
            pos = prev_pos + action[:3]
            quat = quat_multiply(rotvec_to_quat(action[3:6]), prev_quat)
            quat /= np.linalg.norm(quat)
            grip = float(action[6])
            q = arm.inverse(pos, quat, seed=self._q_target)
            if not self.model.ik_orientation:
                # The arm cannot take every orientation: the target follows what IK reached.
                pos, quat = arm.forward(q)
        self._q_target, self._grip_target, self._ee_target = q, grip, (pos, quat)
        joint = np.array([*(q * self.model.scale), g0 + grip * (g1 - g0)], dtype=np.float32)
        if key == EE_KEY:
            ee = action.astype(np.float32)  # the delta as sent (after the limits)
        else:
            # The end-effector delta this joint target amounts to, within the delta limits.
            delta_quat = quat_multiply(quat, _conjugate(prev_quat))
            ee = np.array([*(pos - prev_pos), *quat_to_rotvec(delta_quat), grip])
            f = self.spec[EE_KEY]
            ee = np.clip(ee, f.low, f.high).astype(np.float32)
        return q, grip, {JOINT_KEY: joint, EE_KEY: ee}

    # ------------------------------------------------------------------ rendering
    def render(self, cam: CameraConfig) -> np.ndarray:
        """One RGB frame of `cam` (uint8 H×W×3)."""
        return self._capture(cam, depth=False)[0]

    def render_depth(self, cam: CameraConfig) -> tuple[np.ndarray, np.ndarray]:
        """One RGB frame (uint8 H×W×3) and its depth (metres, float32 H×W×1) from one render."""
        rgb, depth = self._capture(cam, depth=True)
        assert depth is not None
        return rgb, depth

    def _capture(self, cam: CameraConfig, *, depth: bool) -> tuple[np.ndarray, np.ndarray | None]:
        arm, world = self.arm, self.world
        assert arm is not None and world is not None
        eye = np.array(cam.eye) + self._eye_offsets.get(cam.name, 0.0)
        target, up = np.array(cam.target), np.array(cam.up)
        if cam.mount == "wrist":
            if arm.camera is None:
                raise ValueError(f"{self.model.name} has no wrist camera link")
            lpos, lquat = arm.link_pose(arm.camera)
            m = np.array(p.getMatrixFromQuaternion(lquat)).reshape(3, 3)
            eye, target, up = lpos + m @ eye, lpos + m @ target, m @ up
        view = world.client.computeViewMatrix(eye.tolist(), target.tolist(), up.tolist())
        proj = world.client.computeProjectionMatrixFOV(
            cam.fov, cam.width / cam.height, cam.near, cam.far
        )
        _, _, rgba, zbuf, _ = world.client.getCameraImage(
            cam.width,
            cam.height,
            view,
            proj,
            renderer=world.renderer,
            flags=p.ER_NO_SEGMENTATION_MASK,
            **self._light,
        )
        # this PyBullet build hands back tuples: bytes() converts them ~3× faster than asarray
        rgb = np.frombuffer(bytes(rgba), np.uint8).reshape(cam.height, cam.width, 4)[..., :3].copy()
        if not depth:
            return rgb, None
        # The z-buffer comes with every render: linearising it is the only extra work.
        z = np.asarray(zbuf, dtype=np.float32).reshape(cam.height, cam.width, 1)
        return rgb, linearize_depth(z, cam.near, cam.far)


def _conjugate(q: np.ndarray) -> np.ndarray:
    return np.array([-q[0], -q[1], -q[2], q[3]])
