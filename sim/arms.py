"""Simulated arms: what each one is (URDF, joints, gripper, units) and how to drive it in PyBullet."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pybullet as p
from pybullet_utils import bullet_client

from sim.urdf import variant
from sim.world import new_client, quat_multiply, quat_to_rotvec

ASSETS = Path(__file__).parent / "assets"


@dataclass(frozen=True)
class ArmModel:
    """One arm's description. Joint values in the spec use `units` ('rad' or 'deg'); the gripper
    is reported in `gripper_range` (spec units, closed → open) whatever its joints are."""

    name: str
    urdf: str
    joint_names: tuple[str, ...]
    gripper_joints: tuple[str, ...]
    gripper_joint_range: tuple[float, float]  # joint value when closed, when open
    gripper_range: tuple[float, float]  # spec value when closed, when open
    gripper_name: str
    ee_link: str
    camera_link: str | None
    home: tuple[float, ...]  # radians
    units: str = "rad"
    max_force: tuple[float, ...] = ()
    gripper_force: float = 20.0
    # rad/s (or m/s) cap on the jaws' speed; None: uncapped. A light jaw driven by its motor's
    # full force with no cap hits its stop so hard that the whole arm goes unstable (SO-101).
    gripper_max_velocity: float | None = None
    # N·m·s/rad, replaces the URDF's damping of every arm and gripper joint; None: the URDF's.
    # PyBullet applies joint damping explicitly, which for light links at 240 Hz is unstable
    # above about 0.1 (the SO-101's URDF has MuJoCo's 0.6, where it is integrated implicitly).
    joint_damping: float | None = None
    base_position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    base_yaw: float = 0.0
    tool_down: tuple[float, float, float, float] = (
        1.0,
        0.0,
        0.0,
        0.0,
    )  # xyzw, gripper pointing down
    ik_orientation: bool = True  # 5-DoF arms cannot reach every orientation: solve position first
    position_gain: float = 0.3
    # Where tasks put objects: x and y ranges (m) on the table in front of the arm, and the
    # height (m) above the table where experts hover before going down.
    workspace: tuple[tuple[float, float], tuple[float, float]] = ((0.4, 0.65), (-0.2, 0.2))
    hover: float = 0.15
    # For experts: how far to open the jaws to grasp (open fraction), and where the tool centre
    # sits between the jaws: None midway (two fingers closing on it), or the x (m, tool frame)
    # of the inner face of a fixed jaw that a single moving jaw closes against.
    grasp_open: float = 1.0
    fixed_jaw: float | None = None
    # For pushing experts: the shut jaws seen from above, low over the table, as the x and y
    # ranges (m) they cover in the tool frame; None: about the tool centre (the experts' own
    # allowance for the fingers' size).
    push_footprint: tuple[tuple[float, float], tuple[float, float]] | None = None
    state_names: tuple[str, ...] = field(default=())

    @property
    def scale(self) -> float:
        """Spec units per radian."""
        return 180.0 / math.pi if self.units == "deg" else 1.0

    def names(self) -> list[str]:
        return [f"{j}.pos" for j in self.joint_names] + [f"{self.gripper_name}.pos"]


PANDA = ArmModel(
    name="panda",
    urdf="franka_panda/panda.urdf",
    joint_names=tuple(f"panda_joint{i}" for i in range(1, 8)),
    gripper_joints=("panda_finger_joint1", "panda_finger_joint2"),
    gripper_joint_range=(0.0, 0.04),
    gripper_range=(0.0, 0.08),  # finger width in metres
    gripper_name="gripper_width",
    ee_link="panda_grasptarget",
    camera_link="panda_hand",
    home=(0.0, -0.3, 0.0, -2.3, 0.0, 2.0, math.pi / 4),
    units="rad",
    max_force=(87.0,) * 4 + (12.0,) * 3,
    gripper_force=40.0,
)

SO101 = ArmModel(
    name="so101",
    urdf=str(ASSETS / "so101" / "so101.urdf"),
    joint_names=("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll"),
    gripper_joints=("gripper",),
    gripper_joint_range=(-0.1745, 1.745),  # the URDF gripper joint limits
    gripper_range=(0.0, 100.0),  # lerobot's RANGE_0_100 for the SO-101 gripper
    gripper_name="gripper",
    ee_link="gripper_frame_link",
    camera_link="camera_link",
    home=(0.0, -0.3, 0.5, 1.2, 0.0),
    units="deg",  # lerobot's SO-101 with use_degrees=True
    max_force=(3.0,) * 5,
    gripper_force=3.0,
    gripper_max_velocity=2.0,
    joint_damping=0.1,
    ik_orientation=False,
    position_gain=0.2,
    workspace=((0.17, 0.27), (-0.1, 0.1)),
    hover=0.06,  # much higher and the tool can no longer point straight down
    grasp_open=0.5,  # 45° of the jaw's -10°…100°: enough for a 2.5 cm cube
    fixed_jaw=0.002,  # gripper_frame_link sits 2 mm off the fixed jaw's face
    # measured with a probe sphere in slices 0-12 mm above the jaws' tips (the tips are 8 mm
    # below the tool centre): the shut jaws lie to one side of the tool centre
    push_footprint=((0.002, 0.013), (-0.0105, 0.011)),
)


class SimArm:
    """An arm loaded into a SimWorld: joint reads, motor commands, end-effector pose and IK.

    IK and forward kinematics run in a second, kinematics-only PyBullet client, so solving for
    a target never disturbs the simulation.
    """

    def __init__(
        self, client: bullet_client.BulletClient, model: ArmModel, visuals: str = "simple"
    ) -> None:
        self.model = model
        self.client = client
        orientation = p.getQuaternionFromEuler([0, 0, model.base_yaw])
        flags = p.URDF_USE_SELF_COLLISION_EXCLUDE_PARENT
        # drawn with the coarse collision meshes unless asked otherwise (sim/urdf.py)
        self.body = client.loadURDF(
            variant(model.urdf, visuals),
            model.base_position,
            orientation,
            useFixedBase=True,
            flags=flags,
        )
        self.kin = new_client()  # never renders: the light drawing whatever `visuals` says
        self.kin_body = self.kin.loadURDF(
            variant(model.urdf, "simple"), model.base_position, orientation, useFixedBase=True
        )
        index = {
            client.getJointInfo(self.body, j)[1].decode(): j
            for j in range(client.getNumJoints(self.body))
        }
        links = {
            client.getJointInfo(self.body, j)[12].decode(): j
            for j in range(client.getNumJoints(self.body))
        }
        missing = [n for n in (*model.joint_names, *model.gripper_joints) if n not in index]
        if missing:
            raise ValueError(f"{model.urdf} has no joints {missing}")
        self.joints = [index[n] for n in model.joint_names]
        self.gripper = [index[n] for n in model.gripper_joints]
        self.ee = links[model.ee_link]
        self.camera = links.get(model.camera_link) if model.camera_link else None
        # Limits and rest pose of every movable joint, in PyBullet's joint order, for IK.
        self.movable = [
            j
            for j in range(client.getNumJoints(self.body))
            if client.getJointInfo(self.body, j)[2] != p.JOINT_FIXED
        ]
        info = [client.getJointInfo(self.body, j) for j in self.movable]
        self.lower = np.array([i[8] for i in info])
        self.upper = np.array([i[9] for i in info])
        self.joint_low = np.array([client.getJointInfo(self.body, j)[8] for j in self.joints])
        self.joint_high = np.array([client.getJointInfo(self.body, j)[9] for j in self.joints])
        self.max_force = np.array(model.max_force or [50.0] * len(self.joints))
        for link in range(-1, client.getNumJoints(self.body)):
            client.changeDynamics(self.body, link, lateralFriction=1.0)
        for j in self.gripper:
            client.changeDynamics(self.body, j, lateralFriction=2.0, spinningFriction=0.01)
        if model.joint_damping is not None:
            for j in self.joints + self.gripper:
                client.changeDynamics(self.body, j, jointDamping=model.joint_damping)
        self.reset(np.array(model.home), open_fraction=1.0)

    # ------------------------------------------------------------------ state
    def reset(self, q: np.ndarray, open_fraction: float = 1.0) -> None:
        g = self._gripper_joint_value(open_fraction)
        for j, v in zip(self.joints, q, strict=True):
            self.client.resetJointState(self.body, j, float(v), 0.0)
        for j in self.gripper:
            self.client.resetJointState(self.body, j, g, 0.0)
        self.command(q, open_fraction)

    def joint_positions(self) -> np.ndarray:
        return np.array([s[0] for s in self.client.getJointStates(self.body, self.joints)])

    def open_fraction(self) -> float:
        values = [s[0] for s in self.client.getJointStates(self.body, self.gripper)]
        closed, opened = self.model.gripper_joint_range
        return float(np.clip((np.mean(values) - closed) / (opened - closed), 0.0, 1.0))

    def ee_pose(self) -> tuple[np.ndarray, np.ndarray]:
        state = self.client.getLinkState(self.body, self.ee, computeForwardKinematics=True)
        return np.array(state[4]), np.array(state[5])

    def link_pose(self, link: int) -> tuple[np.ndarray, np.ndarray]:
        state = self.client.getLinkState(self.body, link, computeForwardKinematics=True)
        return np.array(state[4]), np.array(state[5])

    # ------------------------------------------------------------------ commands
    def command(self, q: np.ndarray, open_fraction: float) -> None:
        q = np.clip(np.asarray(q, dtype=np.float64), self.joint_low, self.joint_high)
        n = len(self.joints)
        self.client.setJointMotorControlArray(
            self.body,
            self.joints,
            p.POSITION_CONTROL,
            targetPositions=q.tolist(),
            forces=self.max_force.tolist(),
            positionGains=[self.model.position_gain] * n,
        )
        g = self._gripper_joint_value(open_fraction)
        if self.model.gripper_max_velocity is None:
            self.client.setJointMotorControlArray(
                self.body,
                self.gripper,
                p.POSITION_CONTROL,
                targetPositions=[g] * len(self.gripper),
                forces=[self.model.gripper_force] * len(self.gripper),
            )
        else:  # only the one-joint-at-a-time call takes a speed cap
            for j in self.gripper:
                self.client.setJointMotorControl2(
                    self.body,
                    j,
                    p.POSITION_CONTROL,
                    targetPosition=g,
                    force=self.model.gripper_force,
                    maxVelocity=self.model.gripper_max_velocity,
                )

    def _gripper_joint_value(self, open_fraction: float) -> float:
        closed, opened = self.model.gripper_joint_range
        return closed + float(np.clip(open_fraction, 0.0, 1.0)) * (opened - closed)

    # ------------------------------------------------------------------ kinematics
    def forward(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """End-effector pose at joint positions `q`, from the kinematics-only client."""
        for j, v in zip(self.joints, q, strict=True):
            self.kin.resetJointState(self.kin_body, j, float(v))
        state = self.kin.getLinkState(self.kin_body, self.ee, computeForwardKinematics=True)
        return np.array(state[4]), np.array(state[5])

    def inverse(self, pos: np.ndarray, quat: np.ndarray | None, seed: np.ndarray) -> np.ndarray:
        """Joint positions that put the end effector at `pos` (and `quat` where the arm can)."""
        if quat is not None and not self.model.ik_orientation:
            return self.inverse_position_first(pos, quat, seed)
        for j, v in zip(self.joints, seed, strict=True):
            self.kin.resetJointState(self.kin_body, j, float(v))
        rest = self.lower + 0.0
        rest_map = dict(zip(self.movable, range(len(self.movable)), strict=True))
        for j, v in zip(self.joints, seed, strict=True):
            rest[rest_map[j]] = v
        kwargs = {
            "lowerLimits": self.lower.tolist(),
            "upperLimits": self.upper.tolist(),
            "jointRanges": (self.upper - self.lower).tolist(),
            "restPoses": rest.tolist(),
            "maxNumIterations": 100,
            "residualThreshold": 1e-5,
        }
        if quat is not None:
            sol = self.kin.calculateInverseKinematics(
                self.kin_body, self.ee, pos.tolist(), quat.tolist(), **kwargs
            )
        else:
            sol = self.kin.calculateInverseKinematics(
                self.kin_body, self.ee, pos.tolist(), **kwargs
            )
        q = np.array([sol[rest_map[j]] for j in self.joints])
        return np.clip(q, self.joint_low, self.joint_high)

    def inverse_position_first(
        self, pos: np.ndarray, quat: np.ndarray, seed: np.ndarray, iterations: int = 60
    ) -> np.ndarray:
        """IK for an arm with too few joints to take every orientation (the 5-DoF SO-101).

        PyBullet's IK either solves such an arm for the position alone (and the tool drifts
        into whatever tilt is nearest: end-effector rotations in actions are lost) or weighs an
        orientation against the position (and misses both). This is damped least squares from
        `seed` with strict priorities: the position first, then, with the joint motions that
        leave the position alone, the orientation as close to `quat` as they can get it. A
        joint at its limit is left out of a step that would push it further, so the others make
        up for it.
        """
        q = np.clip(np.asarray(seed, dtype=np.float64), self.joint_low, self.joint_high)
        cols = [self.movable.index(j) for j in self.joints]
        zeros = [0.0] * len(self.movable)
        n = len(q)
        for _ in range(iterations):
            for j, v in zip(self.joints, q, strict=True):
                self.kin.resetJointState(self.kin_body, j, float(v))
            state = self.kin.getLinkState(self.kin_body, self.ee, computeForwardKinematics=True)
            e_pos = np.asarray(pos, dtype=np.float64) - np.array(state[4])
            conj = np.array([-state[5][0], -state[5][1], -state[5][2], state[5][3]])
            e_rot = quat_to_rotvec(quat_multiply(np.asarray(quat, dtype=np.float64), conj))
            movable = [s[0] for s in self.kin.getJointStates(self.kin_body, self.movable)]
            lin, ang = self.kin.calculateJacobian(
                self.kin_body, self.ee, [0.0, 0.0, 0.0], movable, zeros, zeros
            )
            jp_all, jo_all = np.array(lin)[:, cols], np.array(ang)[:, cols]
            free = np.ones(n)
            for _ in range(n):
                jp, jo = jp_all * free, jo_all * free
                jp_pinv = jp.T @ np.linalg.inv(jp @ jp.T + 1e-6 * np.eye(3))
                dq = jp_pinv @ e_pos
                null = (np.eye(n) - jp_pinv @ jp) * free
                jo_null = jo @ null
                rest = e_rot - jo @ dq
                damped = jo_null @ jo_null.T + 2.5e-3 * np.eye(3)
                dq = dq + null @ (jo_null.T @ np.linalg.solve(damped, rest))
                blocked = ((q <= self.joint_low + 1e-6) & (dq < 0)) | (
                    (q >= self.joint_high - 1e-6) & (dq > 0)
                )
                if not (blocked & (free > 0)).any():
                    break
                free[blocked] = 0.0
            biggest = float(np.abs(dq).max())
            if biggest > 0.2:
                dq *= 0.2 / biggest
            q = np.clip(q + dq, self.joint_low, self.joint_high)
            if biggest < 1e-5:
                break
        return q

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.kin.disconnect()
