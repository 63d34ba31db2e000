"""The primitive-shape SO-101 URDF: the published kinematics, and it behaves in PyBullet.

Expected values are copied from TheRobotStudio/SO-ARM100, Simulation/SO101/so101_new_calib.urdf
(the onshape-to-robot export LeRobot's SO-101 docs point to), independently of our URDF file.
"""

from __future__ import annotations

import itertools
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pybullet
import pytest
from pybullet_utils.bullet_client import BulletClient

import sim

URDF = Path(sim.__file__).parent / "assets" / "so101" / "so101.urdf"

# (joint, origin xyz, origin rpy, lower, upper) from so101_new_calib.urdf; every axis is "0 0 1".
PUBLISHED = [
    (
        "shoulder_pan",
        (0.0388353, -8.97657e-09, 0.0624),
        (3.14159, 4.18253e-17, -3.14159),
        -1.91986,
        1.91986,
    ),
    (
        "shoulder_lift",
        (-0.0303992, -0.0182778, -0.0542),
        (-1.5708, -1.5708, 0.0),
        -1.74533,
        1.74533,
    ),
    (
        "elbow_flex",
        (-0.11257, -0.028, 1.73763e-16),
        (-3.63608e-16, 8.74301e-16, 1.5708),
        -1.69,
        1.69,
    ),
    (
        "wrist_flex",
        (-0.1349, 0.0052, 3.62355e-17),
        (4.02456e-15, 8.67362e-16, -1.5708),
        -1.65806,
        1.65806,
    ),
    ("wrist_roll", (5.55112e-17, -0.0611, 0.0181), (1.5708, 0.0486795, 3.14159), -2.74385, 2.84121),
    (
        "gripper",
        (0.0202, 0.0188, -0.0234),
        (1.5708, -5.24284e-08, -1.41553e-15),
        -0.174533,
        1.74533,
    ),
]
# gripper_frame_joint (fixed, gripper_link -> gripper_frame_link): the point between the jaw tips.
GRIPPER_FRAME = ((-0.0079, -0.000218121, -0.0981274), (0.0, 3.14159, 0.0))
NAMES = [row[0] for row in PUBLISHED]
STALL_TORQUE = 3.0  # N*m: STS3215 stall torque is ~2.94 N*m (30 kg*cm) at 12 V


def rot(rpy: tuple[float, float, float]) -> np.ndarray:
    """URDF rpy: fixed-axis roll about x, then pitch about y, then yaw about z."""
    r, p, y = rpy
    rx = np.array([[1, 0, 0], [0, math.cos(r), -math.sin(r)], [0, math.sin(r), math.cos(r)]])
    ry = np.array([[math.cos(p), 0, math.sin(p)], [0, 1, 0], [-math.sin(p), 0, math.cos(p)]])
    rz = np.array([[math.cos(y), -math.sin(y), 0], [math.sin(y), math.cos(y), 0], [0, 0, 1]])
    return rz @ ry @ rx


def transform(xyz, rpy) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3] = rot(rpy)
    t[:3, 3] = xyz
    return t


def published_tcp(q: list[float]) -> np.ndarray:
    """World pose of gripper_frame_link from the published joint origins (base fixed at the origin)."""
    t = np.eye(4)
    for (_, xyz, rpy, _, _), angle in zip(PUBLISHED[:5], q[:5], strict=True):
        t = t @ transform(xyz, rpy) @ transform((0, 0, 0), (0, 0, angle))
    return t @ transform(*GRIPPER_FRAME)


class Arm:
    def __init__(self, client: BulletClient, body: int) -> None:
        self.c, self.body = client, body
        self.link = {
            client.getJointInfo(body, j)[12].decode(): j for j in range(client.getNumJoints(body))
        }
        self.joint = {
            client.getJointInfo(body, j)[1].decode(): j for j in range(client.getNumJoints(body))
        }
        self.arm = [self.joint[n] for n in NAMES]
        self.tcp = self.link["gripper_frame_link"]

    def set(self, q) -> None:
        for j, angle in zip(self.arm, q, strict=True):
            self.c.resetJointState(self.body, j, angle)

    def q(self) -> np.ndarray:
        return np.array([s[0] for s in self.c.getJointStates(self.body, self.arm)])

    def pose(self, link: int) -> np.ndarray:
        state = self.c.getLinkState(self.body, link, computeForwardKinematics=True)
        t = np.eye(4)
        t[:3, :3] = np.array(self.c.getMatrixFromQuaternion(state[5])).reshape(3, 3)
        t[:3, 3] = state[4]
        return t


def load(flags: int = 0) -> Iterator[Arm]:
    client = BulletClient(connection_mode=pybullet.DIRECT)
    try:
        body = client.loadURDF(str(URDF), useFixedBase=True, flags=flags)
        yield Arm(client, body)
    finally:
        client.disconnect()


@pytest.fixture
def arm() -> Iterator[Arm]:
    yield from load()


def test_urdf_is_primitives_only_with_plausible_masses():
    root = ET.parse(URDF).getroot()
    assert root.find(".//mesh") is None
    assert not [p for p in URDF.parent.iterdir() if p.suffix.lower() in {".stl", ".obj", ".dae"}]
    masses = {}
    for link in root.iter("link"):
        inertial = link.find("inertial")
        assert inertial is not None, link.get("name")
        masses[link.get("name")] = float(inertial.find("mass").get("value"))
        inertia = inertial.find("inertia")
        diag = [float(inertia.get(k)) for k in ("ixx", "iyy", "izz")]
        assert all(d > 0 for d in diag), link.get("name")
        # principal moments of a real body satisfy the triangle inequality
        assert max(diag) <= sum(diag) - max(diag) + 1e-12, link.get("name")
    assert 0.7 <= sum(masses.values()) <= 1.0
    # moving links carry the CAD masses of the published URDF (kg)
    for name, cad in [
        ("shoulder_link", 0.100006),
        ("upper_arm_link", 0.103),
        ("lower_arm_link", 0.104),
        ("wrist_link", 0.079),
        ("gripper_link", 0.087),
        ("moving_jaw_so101_v1_link", 0.012),
    ]:
        assert masses[name] == pytest.approx(cad, abs=1e-6)


def test_joints_match_the_published_urdf(arm: Arm):
    c = arm.c
    revolute = [
        j
        for j in range(c.getNumJoints(arm.body))
        if c.getJointInfo(arm.body, j)[2] == pybullet.JOINT_REVOLUTE
    ]
    assert [c.getJointInfo(arm.body, j)[1].decode() for j in revolute] == NAMES
    for name, _, _, lower, upper in PUBLISHED:
        info = c.getJointInfo(arm.body, arm.joint[name])
        assert info[8:10] == pytest.approx((lower, upper), abs=1e-9), name
        assert info[13] == pytest.approx((0, 0, 1)), name
        assert info[10] == pytest.approx(2.94)  # effort: STS3215 stall torque
    for fixed, parent in [
        ("gripper_frame_joint", "gripper_link"),
        ("camera_joint", "gripper_link"),
    ]:
        info = c.getJointInfo(arm.body, arm.joint[fixed])
        assert info[2] == pybullet.JOINT_FIXED
        assert c.getJointInfo(arm.body, info[16])[12].decode() == parent


@pytest.mark.parametrize(
    "q",
    [
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [0.6, -0.9, 1.2, -0.7, 1.4, 0.5],
        [-1.5, 1.2, -1.4, 1.3, -2.5, -0.1],
        [1.9, 1.7, 1.6, 1.6, 2.8, 1.7],
    ],
)
def test_tcp_forward_kinematics_match_published_chain(arm: Arm, q):
    arm.set(q)
    expected = published_tcp(q)
    got = arm.pose(arm.tcp)
    assert np.linalg.norm(got[:3, 3] - expected[:3, 3]) < 1e-3
    assert np.allclose(got[:3, :3], expected[:3, :3], atol=1e-3)


def test_zero_pose_is_the_middle_of_range_l_shape(arm: Arm):
    """URDF zero = LeRobot calibration middle: upper arm up, forearm and gripper forward."""
    arm.set([0.0] * 6)
    lift = arm.pose(arm.link["upper_arm_link"])[:3, 3]
    elbow = arm.pose(arm.link["lower_arm_link"])[:3, 3]
    wrist = arm.pose(arm.link["wrist_link"])[:3, 3]
    tcp = arm.pose(arm.tcp)
    assert (elbow - lift)[2] > 0.1 and abs((elbow - lift)[0]) < 0.03
    assert (wrist - elbow)[0] > 0.13 and abs((wrist - elbow)[2]) < 0.01
    assert tcp[:3, 3] == pytest.approx(published_tcp([0.0] * 6)[:3, 3], abs=1e-6)
    assert tcp[:3, 2] @ np.array([1.0, 0.0, 0.0]) > 0.99  # the tool axis points forward
    camera = arm.pose(arm.link["camera_link"])
    assert camera[:3, 2] @ tcp[:3, 2] > 0.9  # the wrist camera looks along the jaws (within 25°)
    # ... from the side away from the moving jaw's horn, towards the gap between the jaws
    ahead = tcp[:3, 3] + 0.04 * tcp[:3, 2]
    assert np.linalg.norm(np.cross(camera[:3, 2], ahead - camera[:3, 3])) < 1e-3


def test_reach_is_that_of_an_so101(arm: Arm):
    pan_axis = arm.pose(arm.link["shoulder_link"])
    axis_xy = pan_axis[:2, 3]
    # Upper bound: every published offset in the arm's plane laid end to end.
    straight = (
        abs(PUBLISHED[1][1][0])  # pan axis -> lift axis, horizontal
        + np.linalg.norm(PUBLISHED[2][1][:2])
        + np.linalg.norm(PUBLISHED[3][1][:2])
        + abs(PUBLISHED[4][1][1])
        + np.linalg.norm(GRIPPER_FRAME[0])
    )
    grid = [np.linspace(lo, hi, 9) for _, _, _, lo, hi in PUBLISHED[1:4]]
    reach = 0.0
    for lift, elbow, flex in itertools.product(*grid):
        arm.set([0.0, lift, elbow, flex, 0.0, 0.0])
        reach = max(reach, float(np.linalg.norm(arm.pose(arm.tcp)[:2, 3] - axis_xy)))
    assert 0.40 < reach <= straight + 1e-3
    assert 0.30 < reach < 0.45


def test_no_self_collision_at_zero_pose():
    flags = pybullet.URDF_USE_SELF_COLLISION | pybullet.URDF_USE_SELF_COLLISION_EXCLUDE_PARENT
    for arm in load(flags):
        arm.set([0.0] * 6)
        arm.c.performCollisionDetection()
        assert arm.c.getContactPoints(arm.body, arm.body) == ()
        # stricter: every pair of links, parent/child included, is clear by at least 0.5 mm
        links = [-1, *range(arm.c.getNumJoints(arm.body))]
        for a, b in itertools.combinations(links, 2):
            close = arm.c.getClosestPoints(arm.body, arm.body, 0.0005, a, b)
            assert close == (), (a, b, min(p[8] for p in close))


def test_servos_hold_zero_pose_against_gravity(arm: Arm):
    c = arm.c
    c.setGravity(0, 0, -9.81)
    c.setTimeStep(1 / 240)
    arm.set([0.0] * 6)
    c.setJointMotorControlArray(
        arm.body,
        arm.arm,
        pybullet.POSITION_CONTROL,
        targetPositions=[0.0] * 6,
        forces=[STALL_TORQUE] * 6,
    )
    worst = 0.0
    for _ in range(480):
        c.stepSimulation()
        worst = max(worst, float(np.abs(arm.q()).max()))
    assert worst < 0.02
    # and the load is real: with the motors off the arm falls
    c.setJointMotorControlArray(arm.body, arm.arm, pybullet.VELOCITY_CONTROL, forces=[0.0] * 6)
    for _ in range(120):
        c.stepSimulation()
    assert np.abs(arm.q()).max() > 0.1


def test_ik_reaches_a_point_in_front_of_the_arm(arm: Arm):
    target = np.array([0.2, 0.0, 0.05])
    lower = [row[3] for row in PUBLISHED]
    upper = [row[4] for row in PUBLISHED]
    arm.set([0.0] * 6)
    # null-space IK (respects the limits), re-linearised from the last solution: with the
    # current pose as the rest pose the null-space pull does not fight the target
    for _ in range(5):
        q = arm.c.calculateInverseKinematics(
            arm.body,
            arm.tcp,
            target.tolist(),
            lowerLimits=lower,
            upperLimits=upper,
            jointRanges=[u - lo for lo, u in zip(lower, upper, strict=True)],
            restPoses=arm.q().tolist(),
            maxNumIterations=200,
            residualThreshold=1e-6,
        )
        arm.set(q)
    q = np.array(q)
    assert np.all(q >= np.array(lower) - 1e-6) and np.all(q <= np.array(upper) + 1e-6)
    assert np.linalg.norm(arm.pose(arm.tcp)[:3, 3] - target) < 0.005


def test_jaws_grip_a_cube_by_friction(arm: Arm):
    """Roll the wrist so the jaws close sideways; a 2.5 cm cube then hangs on friction alone."""
    c = arm.c
    for link in ("gripper_link", "moving_jaw_so101_v1_link"):
        assert c.getDynamicsInfo(arm.body, arm.link[link])[1] == pytest.approx(1.5)
    c.setTimeStep(1 / 240)
    q = [0.0, 0.0, 0.0, 0.0, math.pi / 2, 0.6]
    arm.set(q)
    # cube centre 13 mm off the fixed jaw's face, 8 cm in front of the wrist roll axis
    gripper = arm.pose(arm.link["gripper_link"])
    centre = gripper @ np.array([0.0035, 0.0, -0.080, 1.0])
    box = c.createCollisionShape(pybullet.GEOM_BOX, halfExtents=[0.0125] * 3)
    orn = c.getLinkState(arm.body, arm.link["gripper_link"])[5]
    cube = c.createMultiBody(0.03, box, -1, centre[:3].tolist(), orn)
    c.changeDynamics(cube, -1, lateralFriction=1.0)
    c.setJointMotorControlArray(
        arm.body,
        arm.arm[:5],
        pybullet.POSITION_CONTROL,
        targetPositions=q[:5],
        forces=[STALL_TORQUE] * 5,
    )
    # close (at about 1 rad/s: a 12 g jaw driven at stall torque would otherwise bat the cube away)
    c.setJointMotorControl2(
        arm.body,
        arm.arm[5],
        pybullet.POSITION_CONTROL,
        targetPosition=-0.17,
        force=STALL_TORQUE,
        maxVelocity=1.0,
    )
    for _ in range(120):  # in zero gravity
        c.stepSimulation()
    jaw = arm.q()[5]
    assert 0.15 < jaw < 0.6  # stopped by the cube, not closed
    c.setGravity(0, 0, -9.81)
    for _ in range(240):
        c.stepSimulation()
    held = np.array(c.getBasePositionAndOrientation(cube)[0])
    assert np.linalg.norm(held - centre[:3]) < 0.01
