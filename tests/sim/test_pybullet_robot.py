"""The PyBullet robot: clocks, end-effector and joint control, cameras and determinism."""

from __future__ import annotations

import time

import numpy as np
import pytest

from sim.robot import EE_KEY, JOINT_KEY, CameraConfig, PyBulletRobot
from sim.world import PhysicsConfig, quat_to_rotvec, rotvec_to_quat


def run_ticks(robot: PyBulletRobot, action: dict, ticks: int, hz: float = 10.0) -> None:
    for _ in range(ticks):
        robot.act(action)
        robot.clock.sleep_until(robot.clock.now() + 1.0 / hz)


def test_lockstep_runs_faster_than_real_time_and_counts_physics_steps() -> None:
    with PyBulletRobot("panda", physics=PhysicsConfig(hz=240.0)) as robot:
        start_sim, start_wall = robot.clock.now(), time.perf_counter()
        run_ticks(robot, {EE_KEY: np.array([0, 0, 0, 0, 0, 0, 1.0])}, ticks=50, hz=10.0)
        sim_elapsed, wall = robot.clock.now() - start_sim, time.perf_counter() - start_wall
        assert sim_elapsed == pytest.approx(5.0, abs=1e-9)  # 50 ticks at 10 Hz, to the step
        assert robot.world.steps % 24 == 0  # 240 Hz physics: 24 steps a tick
        assert wall < sim_elapsed / 2


def test_realtime_clock_tracks_wall_time() -> None:
    with PyBulletRobot("panda", clock="realtime") as robot:
        t0, w0 = robot.clock.now(), time.monotonic()
        run_ticks(robot, {EE_KEY: np.array([0, 0, 0, 0, 0, 0, 1.0])}, ticks=5, hz=10.0)
        robot.observe()
        assert robot.world.time - t0 == pytest.approx(time.monotonic() - w0, abs=0.03)


def test_end_effector_deltas_move_the_tool_as_commanded() -> None:
    with PyBulletRobot("panda", seed=1) as robot:
        start = robot.observe()["ee_pose"][:3].astype(float)
        run_ticks(robot, {EE_KEY: np.array([0.01, -0.01, -0.005, 0, 0, 0, 1.0])}, ticks=10)
        run_ticks(robot, {EE_KEY: np.zeros(7) + np.array([0, 0, 0, 0, 0, 0, 1.0])}, ticks=10)
        end = robot.observe()["ee_pose"][:3].astype(float)
        np.testing.assert_allclose(end - start, [0.1, -0.1, -0.05], atol=0.005)
        # a rotation about z turns the tool about z by the commanded angle
        yaw0 = np.arctan2(*robot.observe()["ee_pose"][[4, 3]].astype(float))
        run_ticks(robot, {EE_KEY: np.array([0, 0, 0, 0, 0, 0.1, 1.0])}, ticks=5)
        run_ticks(robot, {EE_KEY: np.array([0, 0, 0, 0, 0, 0, 1.0])}, ticks=10)
        yaw1 = np.arctan2(*robot.observe()["ee_pose"][[4, 3]].astype(float))
        assert (yaw1 - yaw0 + np.pi) % (2 * np.pi) - np.pi == pytest.approx(0.5, abs=0.02)


def test_joint_targets_are_reached_and_reported_in_both_representations() -> None:
    with PyBulletRobot("panda", seed=0) as robot:
        q = robot.observe()["state"].astype(float)
        target = q.copy()
        target[0] += 0.3
        target[-1] = 0.02  # close the fingers to 2 cm
        sent = robot.act({JOINT_KEY: target})
        np.testing.assert_allclose(sent[JOINT_KEY], target, atol=1e-5)
        assert sent[EE_KEY][-1] == pytest.approx(0.25)
        run_ticks(robot, {JOINT_KEY: target}, ticks=20)
        reached = robot.observe()["state"]
        np.testing.assert_allclose(reached[:7], target[:7], atol=0.01)
        assert reached[-1] == pytest.approx(0.02, abs=0.003)


def test_same_seed_same_world() -> None:
    cams = [CameraConfig("top", width=32, height=32, jitter=0.02)]
    frames = []
    for _ in range(2):
        with PyBulletRobot("panda", cameras=cams, seed=3) as robot:
            run_ticks(robot, {EE_KEY: np.array([0.01, 0.0, -0.01, 0, 0, 0.05, 0.5])}, ticks=5)
            frames.append(robot.observe())
    for key in frames[0].values:
        np.testing.assert_array_equal(frames[0][key], frames[1][key])
    with PyBulletRobot("panda", cameras=cams, seed=4) as robot:
        assert not np.array_equal(robot.observe()["top"], frames[0]["top"])  # camera jitter differs


@pytest.mark.parametrize(("fps", "frames"), [(None, 50), (25.0, 25), (30.0, 30), (100.0, 50)])
def test_a_camera_runs_at_its_own_frame_rate(fps: float | None, frames: int) -> None:
    """50 control ticks over one simulated second: a camera with `fps` captures that many
    frames (never more than one a tick); between frames an observation reads the latest frame
    with its capture time."""
    cams = [CameraConfig("top", width=32, height=32, fps=fps)]
    with PyBulletRobot("panda", cameras=cams, physics=PhysicsConfig(hz=200.0)) as robot:
        stamps, images = [], []
        for _ in range(50):
            obs = robot.observe()
            stamps.append(obs.capture_times["top"])
            images.append(obs["top"])
            robot.act({EE_KEY: np.array([0.02, 0.0, 0.0, 0, 0, 0, 1.0])})  # the arm moves
            robot.clock.sleep_until(robot.clock.now() + 0.02)
        assert len(set(stamps)) == frames
        for i in range(1, 50):
            if stamps[i] == stamps[i - 1]:  # no new frame: the latest one again
                np.testing.assert_array_equal(images[i], images[i - 1])
        assert not np.array_equal(images[0], images[-1])  # frames do follow the moving arm
        # a reset starts the episode with a fresh frame
        assert robot.reset(seed=1).capture_times["top"] > stamps[-1]


def test_rotation_helpers_round_trip() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        v = rng.normal(size=3)
        v *= rng.uniform(0, np.pi - 0.01) / np.linalg.norm(v)
        np.testing.assert_allclose(quat_to_rotvec(rotvec_to_quat(v)), v, atol=1e-9)


def test_bad_configuration_is_named() -> None:
    with pytest.raises(ValueError, match="unknown arm 'ur5'"):
        PyBulletRobot("ur5")
    with pytest.raises(ValueError, match="clock"):
        PyBulletRobot("panda", clock="fast")
    with pytest.raises(ValueError, match="camera names"):
        PyBulletRobot("panda", cameras=[CameraConfig("a"), CameraConfig("a")])
    with pytest.raises(ValueError, match="fps must be positive"):
        CameraConfig("a", fps=0)


def test_so101_spec_uses_lerobot_names_and_units() -> None:
    robot = PyBulletRobot("so101")
    names = robot.spec["state"].names
    assert names == (
        "shoulder_pan.pos",
        "shoulder_lift.pos",
        "elbow_flex.pos",
        "wrist_flex.pos",
        "wrist_roll.pos",
        "gripper.pos",
    )
    joint = robot.spec["action.joint"]
    assert joint.high[0] == pytest.approx(110.0, abs=0.1)  # degrees, as lerobot's use_degrees
    assert (joint.low[-1], joint.high[-1]) == (0.0, 100.0)  # gripper 0..100
    with robot:
        obs = robot.observe()
        assert 0.0 <= obs["state"][-1] <= 100.0
        run_ticks(robot, {"action.ee": np.array([0.01, 0.0, 0.0, 0, 0, 0, 1.0])}, ticks=5)
        run_ticks(robot, {"action.ee": np.array([0.0, 0.0, 0.0, 0, 0, 0, 1.0])}, ticks=10)
        moved = robot.observe()["ee_pose"][0] - obs["ee_pose"][0]
        assert moved == pytest.approx(0.05, abs=0.01)
