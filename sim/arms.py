"""Simulated arms: what each one is (URDF, joints, gripper, units) and how to drive it in PyBullet."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pybullet as p
from pybullet_utils import bullet_client

from sim.world import new_client

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
    ik_orientation=False,
    position_gain=0.2,
    workspace=((0.17, 0.27), (-0.1, 0.1)),
    hover=0.08,
)


class SimArm:
    """An arm loaded into a SimWorld: joint reads, motor commands, end-effector pose and IK.

    IK and forward kinematics run in a second, kinematics-only PyBullet client, so solving for
    a target never disturbs the simulation.
    """

    def __init__(self, client: bullet_client.BulletClient, model: ArmModel) -> None:
        self.model = model
        self.client = client
        orientation = p.getQuaternionFromEuler([0, 0, model.base_yaw])
        flags = p.URDF_USE_SELF_COLLISION_EXCLUDE_PARENT
        self.body = client.loadURDF(
            model.urdf, model.base_position, orientation, useFixedBase=True, flags=flags
        )
        self.kin = new_client()
        self.kin_body = self.kin.loadURDF(
            model.urdf, model.base_position, orientation, useFixedBase=True
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
        self.client.setJointMotorControlArray(
            self.body,
            self.gripper,
            p.POSITION_CONTROL,
            targetPositions=[g] * len(self.gripper),
            forces=[self.model.gripper_force] * len(self.gripper),
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
        if quat is not None and self.model.ik_orientation:
            sol = self.kin.calculateInverseKinematics(
                self.kin_body, self.ee, pos.tolist(), quat.tolist(), **kwargs
            )
        else:
            sol = self.kin.calculateInverseKinematics(
                self.kin_body, self.ee, pos.tolist(), **kwargs
            )
        q = np.array([sol[rest_map[j]] for j in self.joints])
        return np.clip(q, self.joint_low, self.joint_high)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.kin.disconnect()
