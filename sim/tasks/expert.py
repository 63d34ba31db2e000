"""Scripted experts: waypoint followers that drive the arm with end-effector deltas.

Demonstrations from one fixed script are unimodal and too clean to learn robust policies from.
Each expert therefore draws, per episode, a strategy (which way round to approach, how high to
hover, how fast to move) and a level of motion noise, the way different human operators would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robolearn.hal import Observation, Teleoperator
from sim.world import quat_multiply, quat_to_rotvec, rotvec_to_quat


def rot6d_to_quat(r: np.ndarray) -> np.ndarray:
    """xyzw quaternion from the first two rotation-matrix columns (as in `ee_pose`)."""
    a, b = np.asarray(r[:3], float), np.asarray(r[3:6], float)
    x = a / np.linalg.norm(a)
    b = b - x * (x @ b)
    y = b / np.linalg.norm(b)
    z = np.cross(x, y)
    m = np.stack([x, y, z], axis=1)
    w = np.sqrt(max(0.0, 1.0 + m[0, 0] + m[1, 1] + m[2, 2])) / 2
    if w > 1e-3:
        return np.array(
            [
                (m[2, 1] - m[1, 2]) / (4 * w),
                (m[0, 2] - m[2, 0]) / (4 * w),
                (m[1, 0] - m[0, 1]) / (4 * w),
                w,
            ]
        )
    i = int(np.argmax(np.diag(m)))
    j, k = (i + 1) % 3, (i + 2) % 3
    q = np.zeros(4)
    q[i] = np.sqrt(max(0.0, 1.0 + m[i, i] - m[j, j] - m[k, k])) / 2
    q[j] = (m[j, i] + m[i, j]) / (4 * q[i])
    q[k] = (m[k, i] + m[i, k]) / (4 * q[i])
    q[3] = (m[k, j] - m[j, k]) / (4 * q[i])
    return q


@dataclass
class Waypoint:
    """Go to `pos` (with the tool yawed by `yaw`), set the gripper, wait `dwell` ticks there."""

    pos: np.ndarray
    gripper: float
    tol: float = 0.01
    dwell: int = 0
    yaw: float | None = None
    speed: float | None = None  # metres per tick; None: the expert's own
    # What `pos` is for: "hand" (the tool centre), or, for experts that carry things (see
    # CarryExpert), "grasp" (where to grasp the object as it lies now), "object" (where the
    # held object should be) or "over_object" (the open hand where it would grasp the object).
    aim: str = "hand"
    noise: float = 1.0  # scales the expert's hand tremor (0: a steady hand for fine work)

    def __post_init__(self) -> None:
        self.pos = np.array(self.pos, dtype=np.float64)  # its own copy: experts re-aim in place


class WaypointExpert(Teleoperator):
    """Follows a list of waypoints with bounded speed, smooth noise and per-episode style.

    It sends end-effector deltas, unless `joint_space` is set: then it works out the joint
    targets itself, with the tool kept pointing down (turned to the waypoint's yaw) as far as
    the arm allows, and sends those. An arm with five joints (the SO-101) needs that: the
    robot's own IK for end-effector deltas places the tool but leaves its tilt to chance.
    """

    action_key = "action.ee"
    joint_key = "action.joint"

    def __init__(
        self, robot, rng: np.random.Generator, *, speed: float = 0.02, noise: float = 0.002
    ) -> None:  # type: ignore[no-untyped-def]
        self.robot = robot
        self.rng = rng
        self.speed = speed
        self.noise = noise
        self.waypoints: list[Waypoint] = []
        self.index = 0
        self._dwell = 0
        self._drift = np.zeros(3)
        self._yaw0: float | None = None
        self.joint_space = False
        self._q: np.ndarray | None = None  # the last joint targets sent (joint_space)
        self._hold_yaw: float | None = None
        # joint_space: keep the tool's orientation as it is instead of turning it down (while
        # drawing back from something it presses on, where turning would swing the jaws into it)
        self.keep_tilt = False
        limits = robot.spec[self.action_key].high
        self.max_step = float(limits[0]) * 0.9
        self.max_rot = float(limits[3]) * 0.9

    @property
    def done(self) -> bool:
        return self.index >= len(self.waypoints)

    def plan(self, waypoints: list[Waypoint]) -> None:
        self.waypoints, self.index, self._dwell = waypoints, 0, 0

    def read(self, observation: Observation | None = None) -> dict[str, np.ndarray]:
        obs = observation if observation is not None else self.robot.observe()
        pose = obs["ee_pose"].astype(np.float64)
        pos, quat = pose[:3], rot6d_to_quat(pose[3:])
        if self._yaw0 is None:
            self._yaw0 = _yaw(quat)
        self.on_tick(obs)
        if self.done:
            last = self.waypoints[-1].gripper if self.waypoints else 1.0
            if self.joint_space and self._q is not None:
                return {self.joint_key: self._joint_action(self._q, last)}
            return {self.action_key: np.array([0, 0, 0, 0, 0, 0, last], dtype=np.float32)}
        wp = self.waypoints[self.index]
        error = wp.pos - pos
        dist = float(np.linalg.norm(error))
        speed = min(wp.speed or self.speed, self.max_step)
        step = error if dist <= speed else error / dist * speed
        # Smooth noise: a slowly drifting offset, so paths wander like a hand's would.
        self._drift = 0.8 * self._drift + self.rng.normal(0.0, self.noise, 3)
        if dist > 3 * wp.tol:
            step = step + self._drift * wp.noise
        rot = np.zeros(3)
        if wp.yaw is not None:
            dyaw = _wrap(wp.yaw - _yaw(quat))
            rot[2] = float(np.clip(dyaw, -self.max_rot, self.max_rot))
        if dist < wp.tol and (wp.yaw is None or abs(_wrap(wp.yaw - _yaw(quat))) < 0.05):
            self._dwell += 1
            if self._dwell > wp.dwell:
                self.index += 1
                self._dwell = 0
        step = np.clip(step, -self.max_step, self.max_step)
        if self.joint_space:
            q = self._solve(obs, self._hand_target(pos, step), quat, wp.yaw)
            return {self.joint_key: self._joint_action(q, wp.gripper)}
        return {self.action_key: np.array([*step, *rot, wp.gripper], dtype=np.float32)}

    def _hand_target(self, pos: np.ndarray, step: np.ndarray) -> np.ndarray:
        """Where to send the tool (joint_space), given the hand at `pos` and this tick's step:
        one step ahead of the hand (a hook: pushing experts lead the hand further)."""
        return pos + step

    def _solve(
        self, obs: Observation, pos: np.ndarray, quat: np.ndarray, yaw: float | None
    ) -> np.ndarray:
        """Joint targets for the tool at `pos`, turned (at most `max_rot` a tick) towards
        pointing down with its x axis at `yaw` (None: the yaw it was last asked for)."""
        model = self.robot.model
        if self._q is None:
            self._q = obs["state"][: len(model.joint_names)].astype(np.float64) / model.scale
        if yaw is not None:
            self._hold_yaw = yaw
        elif self._hold_yaw is None:
            self._hold_yaw = _yaw(quat)
        heading = rotvec_to_quat(np.array([0.0, 0.0, self._hold_yaw]))
        want = quat_multiply(heading, np.array(model.tool_down))
        turn = quat_to_rotvec(quat_multiply(want, quat * np.array([-1.0, -1.0, -1.0, 1.0])))
        angle = float(np.linalg.norm(turn))
        if self.keep_tilt:
            turn = np.zeros(3)
        elif angle > self.max_rot:
            turn *= self.max_rot / angle
        self._q = self.robot.arm.inverse_position_first(
            pos, quat_multiply(rotvec_to_quat(turn), quat), self._q
        )
        return self._q

    def _joint_action(self, q: np.ndarray, gripper: float) -> np.ndarray:
        model = self.robot.model
        g0, g1 = model.gripper_range
        return np.array([*(q * model.scale), g0 + gripper * (g1 - g0)], dtype=np.float32)

    def on_tick(self, obs: Observation) -> None:
        """Hook for experts that re-plan from what they see (e.g. a slipped cube)."""


def _yaw(quat: np.ndarray) -> float:
    """Heading of the tool's x axis in the table plane."""
    x = np.array(
        [1 - 2 * (quat[1] ** 2 + quat[2] ** 2), 2 * (quat[0] * quat[1] + quat[3] * quat[2])]
    )
    return float(np.arctan2(x[1], x[0]))


def _wrap(a: float) -> float:
    return float((a + np.pi) % (2 * np.pi) - np.pi)
