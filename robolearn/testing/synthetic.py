"""A robot with no hardware and no physics: real-time synthetic cameras and a moving arm.

`SyntheticCamera` behaves like a USB camera driver: a thread delivers frames at its own rate
(`fps`, on the wall clock) into a one-frame slot, and `read()` waits for a frame newer than the
last one it returned (as the HAL's Camera contract asks), raising DeviceError when none comes.
Frames are camera-like (texture, noise, a moving arm; robolearn.data.synthetic), drawn ahead of
time so that delivering one costs what a driver's copy costs.

`SyntheticRobot` puts a 7-joint arm that follows its joint targets (first-order lag) behind the
Robot contract with such cameras. The control-loop benchmark uses it to time the loop and the
recorder on this machine with two 480×640 cameras; tests use it where physics is beside the point.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from robolearn.data.synthetic import SyntheticArm, sample_spec
from robolearn.hal import Camera, DeviceError, Observation, Robot, WallClock
from robolearn.loop import latency_slice
from robolearn.spec import Feature, FeatureSpec


class SyntheticCamera(Camera):
    def __init__(
        self,
        name: str,
        height: int = 480,
        width: int = 640,
        fps: float = 30.0,
        *,
        ring: int = 16,
        seed: int = 0,
        timeout: float = 1.0,
    ) -> None:
        self.name = name
        self.shape = (height, width, 3)
        self.fps = float(fps)
        self.timeout = float(timeout)
        arm = SyntheticArm(sample_spec({name: (height, width)}), seed=seed)
        self._frames = [arm.frame(i / fps, i)[name] for i in range(ring)]
        self._cond = threading.Condition()
        self._latest: tuple[np.ndarray, float, int] | None = None
        self._last_read = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.delivered = 0

    @property
    def feature(self) -> Feature:
        return Feature(self.shape, "uint8", "image")

    def connect(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.name}", daemon=True)
        self._thread.start()

    def disconnect(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._thread = None

    def stop_delivering(self) -> None:
        """Simulate an unplugged camera: the thread stops, reads time out."""
        self._stop.set()

    def _run(self) -> None:
        # a driver thread is latency-bound like the control loop: it asks for the same short
        # scheduler slice, so a busy machine does not hold back the frames the loop waits for
        with latency_slice(1e-4):
            self._deliver()

    def _deliver(self) -> None:
        t0 = time.monotonic()
        i = 0
        while not self._stop.is_set():
            due = t0 + i / self.fps
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            frame = self._frames[i % len(self._frames)]
            with self._cond:
                self._latest = (frame, time.monotonic(), i)
                self.delivered += 1
                self._cond.notify_all()
            i += 1

    def read(self) -> tuple[np.ndarray, float]:
        deadline = time.monotonic() + self.timeout
        with self._cond:
            while self._latest is None or self._latest[2] == self._last_read:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DeviceError(
                        f"camera {self.name!r} delivered no new frame for {self.timeout:g} s; "
                        "check its cable and that no other program holds it"
                    )
                self._cond.wait(left)
            frame, t, i = self._latest
            self._last_read = i
        return frame, t


class SyntheticRobot(Robot):
    """A 7-joint arm (joint-position actions) and synthetic cameras, on the wall clock."""

    def __init__(self, cameras: list[SyntheticCamera] | None = None, seed: int = 0) -> None:
        self.cameras = list(cameras or [])
        self._arm = SyntheticArm(sample_spec({}, state_dim=7), seed=seed)
        self._q = np.zeros(7)
        self._target = np.zeros(7)
        self._t_last = 0.0
        features = {
            "state": Feature((7,), "float32", "state", names=[f"joint{i}.pos" for i in range(7)]),
            "action.joint": Feature(
                (7,),
                "float32",
                "action",
                names=[f"joint{i}.pos" for i in range(7)],
                low=[-3.0] * 7,
                high=[3.0] * 7,
                representation="joint_position",
            ),
        }
        for cam in self.cameras:
            features[cam.name] = cam.feature
        self._spec = FeatureSpec(features)
        self._clock = WallClock()

    @property
    def spec(self) -> FeatureSpec:
        return self._spec

    @property
    def clock(self) -> WallClock:
        return self._clock

    def _connect(self) -> None:
        for cam in self.cameras:
            cam.connect()
        self._t_last = self._clock.now()

    def _disconnect(self) -> None:
        for cam in self.cameras:
            cam.disconnect()

    def _observe(self) -> Observation:
        now = self._clock.now()
        alpha = 1.0 - np.exp(-(now - self._t_last) / 0.05)  # 50 ms joint lag
        self._q += alpha * (self._target - self._q)
        self._t_last = now
        values = {"state": self._q.astype(np.float32)}
        times = {"state": now}
        for cam in self.cameras:
            values[cam.name], times[cam.name] = cam.read()
        return Observation(values, times)

    def _send(self, key: str, action: np.ndarray) -> dict[str, np.ndarray]:
        self._target = action.astype(np.float64)
        return {key: action.astype(np.float32)}

    def hold(self) -> None:
        self._target = self._q.copy()


class Sine:
    """An action source: joint targets on slow sines (for benchmarks and tests)."""

    action_key = "action.joint"

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def read(self, observation: Observation | None = None) -> dict[str, np.ndarray]:
        t = time.monotonic() - self.t0
        q = 0.5 * np.sin(2 * np.pi * 0.2 * t + np.arange(7))
        return {"action.joint": q.astype(np.float32)}
