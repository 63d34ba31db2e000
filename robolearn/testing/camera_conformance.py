"""The camera conformance suite: the behaviour every Camera implementation must show.

Use it from a test module of your camera::

    from robolearn.testing.camera_conformance import CameraConformance

    class TestMyCamera(CameraConformance):
        @pytest.fixture
        def camera(self):
            cam = MyCamera(...)
            cam.connect()
            yield cam
            cam.disconnect()

Every test method then runs against your camera. A camera on another clock than
`time.monotonic()` (a simulated one) also overrides `now` (the camera's current time) and
`advance` (let one frame interval pass on that clock). It needs pytest (the `test` extra).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from itertools import pairwise

import numpy as np
import pytest

from robolearn.hal import Camera, DeviceError
from robolearn.spec import FeatureSpec

ADVANCE_S = 0.05  # longer than one frame interval of any camera the suite is meant for


def _read_fresh(camera: Camera, tries: int = 20) -> tuple[np.ndarray, float]:
    """A frame, allowing the camera a few DeviceErrors while it catches up (a busy machine)."""
    for attempt in range(tries):
        try:
            return camera.read()
        except DeviceError:
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


class CameraConformance:
    """Subclass it and provide a connected `camera` fixture (and `now`/`advance` if needed)."""

    @pytest.fixture
    def camera(self) -> Camera:  # pragma: no cover - every subclass provides it
        raise NotImplementedError("provide a connected `camera` fixture")

    @pytest.fixture
    def now(self) -> Callable[[], float]:
        """The camera's clock: what its capture times are measured on."""
        return time.monotonic

    @pytest.fixture
    def advance(self) -> Callable[[], None]:
        """Let enough time pass for the camera to have a new frame."""
        return lambda: time.sleep(ADVANCE_S)

    def test_feature_is_an_rgb_image(self, camera: Camera) -> None:
        feature = camera.feature
        assert feature.kind == "image"
        assert feature.dtype == "uint8"
        assert len(feature.shape) == 3 and feature.shape[2] == 3, feature.shape
        # it can stand in a robot's spec under the camera's name
        FeatureSpec({camera.name: feature})

    def test_frames_match_the_feature(self, camera: Camera, now: Callable[[], float]) -> None:
        frame, t = _read_fresh(camera)
        assert isinstance(frame, np.ndarray)
        assert frame.shape == camera.feature.shape
        assert frame.dtype == np.uint8
        assert isinstance(t, float)
        assert t <= now(), "a frame cannot be captured in the future"
        assert frame.std() > 0, "a uniform frame: the camera delivers no picture"

    def test_capture_times_increase(
        self, camera: Camera, advance: Callable[[], None], now: Callable[[], float]
    ) -> None:
        times = []
        for _ in range(5):
            advance()
            times.append(_read_fresh(camera)[1])
        assert all(b > a for a, b in pairwise(times)), times
        assert times[-1] <= now()

    def test_a_frame_is_never_returned_twice(self, camera: Camera) -> None:
        _, last = _read_fresh(camera)
        # reading again at once: either a newer frame or a DeviceError naming the camera
        for _ in range(5):
            try:
                _, t = camera.read()
            except DeviceError as e:
                message = str(e)
                assert camera.name in message, f"the error does not name the camera: {message}"
                continue
            assert t > last, f"capture time {t} returned again (previous {last})"
            last = t

    def test_disconnect_stops_reads_and_connect_resumes(
        self, camera: Camera, advance: Callable[[], None]
    ) -> None:
        _read_fresh(camera)
        camera.disconnect()
        camera.disconnect()  # twice is harmless
        with pytest.raises(DeviceError, match="not connected"):
            camera.read()
        alive = {t for t in threading.enumerate() if t.is_alive()}
        camera.connect()
        camera.connect()  # twice is harmless
        advance()
        frame, _ = _read_fresh(camera)
        assert frame.shape == camera.feature.shape
        camera.disconnect()
        leaked = [t.name for t in threading.enumerate() if t.is_alive() and t not in alive]
        assert not leaked, f"threads still running after disconnect: {leaked}"
        camera.connect()  # leave it as the fixture gave it
