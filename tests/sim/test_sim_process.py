"""The simulated arm in a process of its own (sim.process.SimProcessRobot): it keeps its own
time, its cameras run at their own rate, the loop's side solves the kinematics and only reads
what the child published, and a child that dies or cannot start is reported, not waited for."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from robolearn.hal import DeviceError
from sim.process import SimProcessRobot
from sim.robot import CameraConfig, PyBulletRobot
from sim.tasks.reach import TOLERANCE, Reach
from sim.world import PhysicsConfig

TOP = CameraConfig("top", width=48, height=40)


def reach_robot(**kw) -> SimProcessRobot:
    return SimProcessRobot(PyBulletRobot("panda", task=Reach(), cameras=[TOP], seed=0), **kw)


def test_end_effector_steps_reach_the_goal_and_the_task_says_so() -> None:
    """End-effector deltas are solved on the loop's side (the same IK as the in-process robot),
    the joint targets reach the child without a reply, and the child's success check is what
    `robot.task.success()` reads."""
    with reach_robot() as robot:
        obs = robot.reset(3)
        assert not robot.task.success()
        goal = obs["task_state"].astype(np.float64)
        end = robot.clock.now() + 8.0
        while not robot.task.success() and robot.clock.now() < end:
            pos = obs["ee_pose"][:3].astype(np.float64)
            step = np.clip(goal - pos, -0.02, 0.02)
            sent = robot.act({"action.ee": [*step, 0.0, 0.0, 0.0, 1.0]})
            assert set(sent) == {"action.ee", "action.joint"}
            robot.clock.sleep_until(robot.clock.now() + 0.1)
            obs = robot.observe()
        assert robot.task.success(), "the arm never reached the goal"
        time.sleep(0.05)
        obs = robot.observe()
        assert np.linalg.norm(obs["ee_pose"][:3] - goal) < 2 * TOLERANCE
        assert robot.task.score() == 1.0


def test_joint_targets_are_tracked_and_time_runs_on_its_own() -> None:
    with reach_robot() as robot:
        obs = robot.reset(0)
        target = obs["state"].astype(np.float64).copy()
        target[0] += 0.3
        target[3] -= 0.2
        robot.act({"action.joint": target})
        # no observe or act for a while: the child keeps stepping the physics by itself
        time.sleep(1.5)
        obs = robot.observe()
        assert np.abs(obs["state"][:7] - target[:7]).max() < 0.02, obs["state"] - target
        # the state is fresh (published at every physics step), on the shared clock
        age = robot.clock.now() - obs.capture_times["state"]
        assert 0.0 <= age < 0.5, age


def test_cameras_run_at_their_own_rate_and_observe_only_reads_the_latest_frame() -> None:
    with reach_robot(camera_fps=20.0) as robot:
        robot.reset(1)
        stamps, states = [], []
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            obs = robot.observe()
            stamps.append(obs.capture_times["top"])
            states.append(obs.capture_times["state"])
            time.sleep(0.005)
        frames = np.unique(stamps)
        # 20 frames a second over 1.5 s; a busy machine may drop a few, never add any
        assert 18 <= len(frames) <= 32, len(frames)
        gaps = np.diff(frames)
        assert gaps.min() > 0.04, gaps  # one frame per period at most
        assert len(np.unique(states)) > 3 * len(frames)  # the state is published more often
        assert (np.diff(states) >= 0).all()
    # a camera with a rate of its own keeps it
    cam = CameraConfig("top", width=48, height=40, fps=10.0)
    robot = SimProcessRobot(PyBulletRobot("panda", task=Reach(), cameras=[cam], seed=0))
    assert robot.cameras[0].fps == 10.0
    assert reach_robot().cameras[0].fps == 30.0


def test_a_killed_simulation_is_reported_and_a_reconnect_starts_a_new_one() -> None:
    robot = reach_robot()
    robot.connect()
    try:
        first = robot.pid
        assert first is not None and first != os.getpid()
        os.kill(first, signal.SIGKILL)
        time.sleep(0.5)
        with pytest.raises(DeviceError, match=r"exited \(code -9\)"):
            robot.observe()
        with pytest.raises(DeviceError, match="simulation process"):
            robot.act({"action.joint": np.zeros(8)})
        with pytest.raises(DeviceError, match="simulation process"):
            robot.reset(0)
        robot.hold()  # holding a dead arm does nothing, and does not raise
        robot.disconnect()
        robot.connect()
        assert robot.pid not in (None, first)
        assert robot.observe()["state"].shape == (8,)
    finally:
        robot.disconnect()
    assert robot.pid is None


def test_a_simulation_that_cannot_start_says_why() -> None:
    broken = PyBulletRobot("panda", task=Reach(), physics=PhysicsConfig(hz=0.0), seed=0)
    robot = SimProcessRobot(broken)
    with pytest.raises(DeviceError, match="physics rate must be positive"):
        robot.connect()
    assert not robot.is_connected and robot.pid is None


def test_only_an_unconnected_robot_with_a_positive_camera_rate_is_taken() -> None:
    with pytest.raises(ValueError, match="camera_fps"):
        reach_robot(camera_fps=0.0)
    with (
        PyBulletRobot("panda", seed=0) as connected,
        pytest.raises(ValueError, match="unconnected"),
    ):
        SimProcessRobot(connected)
