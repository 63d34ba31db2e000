"""A simulated camera behind the HAL's Camera contract: one camera of a connected PyBulletRobot.

`PyBulletRobot.observe()` already renders its cameras; this class is for code that wants a
camera on its own (a preview, a test of camera handling, a second view of the scene).
"""

from __future__ import annotations

import numpy as np

from robolearn.hal import Camera, DeviceError
from robolearn.spec import Feature
from sim.robot import CameraConfig, PyBulletRobot


class SimCamera(Camera):
    """Renders `config` from `robot` on read(), stamped with the robot's clock.

    It refuses to render twice at one simulated time: that frame would be a repeat.
    """

    def __init__(self, robot: PyBulletRobot, config: CameraConfig) -> None:
        self.robot, self.config, self.name = robot, config, config.name
        self._last: float | None = None
        self._connected = False

    @property
    def feature(self) -> Feature:
        return Feature((self.config.height, self.config.width, 3), "uint8", "image")

    def connect(self) -> None:
        self._connected = True

    def disconnect(self) -> None:
        self._connected = False
        self._last = None

    def read(self) -> tuple[np.ndarray, float]:
        if not self._connected or not self.robot.is_connected:
            raise DeviceError(f"camera {self.name!r} is not connected; call connect() first")
        t = self.robot.clock.now()
        if self._last is not None and t <= self._last:
            raise DeviceError(
                f"camera {self.name!r}: no simulated time passed since its last frame; "
                "step the robot's clock between reads"
            )
        self._last = t
        return self.robot.render(self.config), t
