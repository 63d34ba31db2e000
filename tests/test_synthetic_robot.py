"""The synthetic robot (benchmarks' stand-in): a HAL citizen whose camera can stop delivering."""

from __future__ import annotations

import contextlib
import time

import pytest

from robolearn.hal import DeviceError
from robolearn.testing.conformance import RobotConformance
from robolearn.testing.synthetic import SyntheticCamera, SyntheticRobot


class TestSyntheticRobotConformance(RobotConformance):
    @pytest.fixture
    def robot(self):  # type: ignore[no-untyped-def]
        with SyntheticRobot([SyntheticCamera("top", 48, 64, fps=60, ring=4)]) as robot:
            yield robot


def test_camera_reads_wait_for_a_new_frame_and_a_stopped_camera_is_an_error() -> None:
    cam = SyntheticCamera("top", 24, 32, fps=50, ring=2, timeout=0.3)
    with SyntheticRobot([cam]) as robot:
        a = robot.observe().capture_times["top"]
        b = robot.observe().capture_times["top"]
        assert b > a  # never the same frame twice
        cam.stop_delivering()
        time.sleep(0.05)  # the thread has stopped; at most one frame is still in the slot
        with contextlib.suppress(DeviceError):
            robot.observe()
        with pytest.raises(DeviceError, match="camera 'top' delivered no new frame"):
            robot.observe()
