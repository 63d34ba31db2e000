"""The simulated arms pass the HAL conformance suite, in lock-step, in real time and in real time
in a process of their own."""

from __future__ import annotations

from dataclasses import replace

import pytest

from robolearn.testing.conformance import RobotConformance
from sim.process import SimProcessRobot
from sim.robot import CameraConfig, PyBulletRobot
from sim.tasks.reach import Reach

CAMERAS = [
    CameraConfig("top", width=48, height=40),
    CameraConfig(
        "wrist",
        width=32,
        height=32,
        mount="wrist",
        eye=(0.05, 0.0, 0.0),
        target=(0.05, 0.0, 0.2),
        up=(1.0, 0.0, 0.0),
    ),
]


class TestPandaLockStep(RobotConformance):
    @pytest.fixture
    def robot(self):
        with PyBulletRobot("panda", cameras=CAMERAS, seed=0) as robot:
            yield robot


class TestPandaRealTime(RobotConformance):
    @pytest.fixture
    def robot(self):
        with PyBulletRobot("panda", cameras=CAMERAS[:1], clock="realtime", seed=0) as robot:
            yield robot


class TestPandaOwnProcess(RobotConformance):
    @pytest.fixture
    def robot(self):
        sim = PyBulletRobot("panda", task=Reach(), cameras=CAMERAS, seed=0)
        with SimProcessRobot(sim) as robot:
            yield robot


class TestSO101LockStep(RobotConformance):
    @pytest.fixture
    def robot(self):
        wrist = CameraConfig(
            "wrist",
            width=32,
            height=32,
            mount="wrist",
            eye=(0.0, 0.0, 0.0),
            target=(0.0, 0.0, 0.1),
            up=(1.0, 0.0, 0.0),
        )
        with PyBulletRobot("so101", cameras=[CAMERAS[0], wrist], seed=0) as robot:
            yield robot


class TestPandaWithDepth(RobotConformance):
    @pytest.fixture
    def robot(self):
        cameras = [replace(CAMERAS[0], depth=True), replace(CAMERAS[1], depth=True)]
        with PyBulletRobot("panda", cameras=cameras, seed=0) as robot:
            yield robot
