"""OpenCVCamera on real video files (written here with cv2.VideoWriter), a stalling FIFO and the
PyBullet renderer: the camera contract, colours and frame numbers, staleness, reconnection."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path

import cv2
import numpy as np
import pytest

from hardware.cameras import CameraConfigError, OpenCVCamera, OpenCVCameraConfig
from hardware.cameras.find import main as find_cameras
from robolearn.hal import Camera, DeviceError
from robolearn.spec import Feature
from robolearn.testing.camera_conformance import CameraConformance
from sim.camera import SimCamera

H, W = 48, 64
BITS = 6  # frame numbers drawn as 6 bars of 8 px right of a 16 px colour block
PALETTE = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]  # RGB: frame i shows PALETTE[i % 3]
FPS = 50.0


def draw(i: int) -> np.ndarray:
    """Frame i in RGB: a colour block and i in binary (white bar = 1), big enough for MJPEG."""
    frame = np.zeros((H, W, 3), np.uint8)
    frame[:, :16] = PALETTE[i % 3]
    for b in range(BITS):
        if (i >> b) & 1:
            frame[:, 16 + 8 * b : 16 + 8 * (b + 1)] = 255
    return frame


def number(frame: np.ndarray) -> int:
    """The frame number drawn by `draw` (frame as read(): RGB, unrotated)."""
    centres = frame[H // 2, 16 + 4 : W : 8].mean(axis=1)
    return sum(1 << b for b, v in enumerate(centres) if v > 128)


def colour(frame: np.ndarray) -> np.ndarray:
    return frame[H // 4 : 3 * H // 4, 4:12].reshape(-1, 3).mean(axis=0)


def write_video(
    path: Path, frames: int, fps: float = FPS, fourcc: str = "MJPG", start: int = 0
) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (W, H))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} to {path.suffix}"
    for i in range(start, start + frames):
        writer.write(cv2.cvtColor(draw(i), cv2.COLOR_RGB2BGR))  # VideoWriter takes BGR
    writer.release()
    return path


@pytest.fixture
def video(tmp_path: Path) -> Path:
    return write_video(tmp_path / "clip.avi", 20)


def camera_for(source: Path | str, **fields: object) -> OpenCVCamera:
    # generous waits: other tests share this machine's two cores
    settings: dict[str, object] = {
        "width": W,
        "height": H,
        "warmup_frames": 0,
        "timeout_s": 1.0,
        "max_age_s": 1.0,
    }
    settings.update(fields)
    return OpenCVCamera(OpenCVCameraConfig(name="cam", source=str(source), **settings))  # type: ignore[arg-type]


def read_until(camera: Camera, ok: Callable[[], bool] | None = None, within: float = 5.0):  # type: ignore[no-untyped-def]
    """Read until a frame comes (and `ok()` holds); DeviceErrors meanwhile are expected."""
    deadline = time.monotonic() + within
    while True:
        try:
            got = camera.read()
            if ok is None or ok():
                return got
        except DeviceError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not hold in time")


def read_until_error(
    camera: Camera, limit: int = 200
) -> tuple[list[tuple[np.ndarray, float]], str]:
    """Frames read before the first DeviceError, and its message (fails if none comes)."""
    frames = []
    for _ in range(limit):
        try:
            frames.append(camera.read())
        except DeviceError as e:
            return frames, str(e)
    raise AssertionError(f"no DeviceError in {limit} reads")


def camera_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("camera-") and t.is_alive()]


# ---------------------------------------------------------------------- the contract, two ways
class TestOpenCVCameraContract(CameraConformance):
    @pytest.fixture
    def camera(self, video: Path) -> Iterator[OpenCVCamera]:
        with camera_for(video) as cam:
            yield cam


class TestSimCameraContract(CameraConformance):
    @pytest.fixture
    def robot(self):  # type: ignore[no-untyped-def]
        from sim.robot import PyBulletRobot

        with PyBulletRobot("so101") as robot:
            yield robot

    @pytest.fixture
    def camera(self, robot) -> Iterator[SimCamera]:  # type: ignore[no-untyped-def]
        from sim.robot import CameraConfig

        cam = SimCamera(robot, CameraConfig("top", width=W, height=H))
        cam.connect()
        yield cam
        cam.disconnect()

    @pytest.fixture
    def now(self, robot):  # type: ignore[no-untyped-def]
        return robot.clock.now

    @pytest.fixture
    def advance(self, robot):  # type: ignore[no-untyped-def]
        return lambda: robot.clock.sleep_until(robot.clock.now() + 0.05)


# ---------------------------------------------------------------------- frames
@pytest.mark.parametrize(("suffix", "fourcc"), [("avi", "MJPG"), ("mp4", "mp4v")])
def test_frames_keep_their_colours_and_numbers(tmp_path: Path, suffix: str, fourcc: str) -> None:
    path = write_video(tmp_path / f"clip.{suffix}", 30, fourcc=fourcc)
    with camera_for(path, loop=False, reconnect_attempts=0) as cam:
        assert cam.feature == Feature((H, W, 3), "uint8", "image")
        frames = [cam.read() for _ in range(12)]
    numbers = [number(f) for f, _ in frames]
    times = [t for _, t in frames]
    assert numbers[0] == 0  # warmup_frames=0: nothing skipped
    assert all(b > a for a, b in pairwise(numbers)), numbers
    assert all(b > a for a, b in pairwise(times)), times
    for (frame, _), n in zip(frames, numbers, strict=True):
        assert frame.shape == (H, W, 3) and frame.dtype == np.uint8
        np.testing.assert_allclose(colour(frame), PALETTE[n % 3], atol=40)  # RGB, not BGR


def test_files_replay_at_their_frame_rate(video: Path) -> None:
    with camera_for(video) as cam:
        times = [cam.read()[1] for _ in range(11)]
    # 10 intervals at 50 fps: 0.2 s (less one frame's jitter); a busy machine stretches it
    assert times[-1] - times[0] >= 0.17


def test_warmup_frames_are_dropped(video: Path) -> None:
    with camera_for(video, warmup_frames=3) as cam:
        assert number(cam.read()[0]) == 3


def test_bgr_order_and_rotation(video: Path) -> None:
    with camera_for(video, color_order="bgr", rotation=90) as cam:
        assert cam.feature.shape == (W, H, 3)  # 90° swaps height and width
        frame, _ = read_until(cam)
    assert frame.shape == (W, H, 3)
    upright = cv2.rotate(frame, cv2.ROTATE_90_COUNTERCLOCKWISE)[..., ::-1]
    n = number(upright)
    np.testing.assert_allclose(colour(upright), PALETTE[n % 3], atol=40)
    # turned clockwise, the colour block (left) is on top
    np.testing.assert_allclose(frame[:16].reshape(-1, 3).mean(0), colour(upright)[::-1], atol=40)


def test_latency_offset_is_subtracted(video: Path) -> None:
    with camera_for(video, latency_s=0.25) as cam:
        _, t = cam.read()
        assert t <= time.monotonic() - 0.25


# ---------------------------------------------------------------------- never stale, never twice
def test_no_frame_is_returned_twice_and_counters_add_up(tmp_path: Path) -> None:
    with camera_for(write_video(tmp_path / "long.avi", 150), loop=False) as cam:
        seen: list[int] = []
        for i in range(8):
            if i % 2:
                time.sleep(0.07)  # slower than the camera: frames get dropped
            frame, _ = cam.read()
            seen.append(number(frame))
        stats = cam.stats
    assert all(b > a for a, b in pairwise(seen)), seen
    assert stats.frames_read == 8
    assert stats.frames_dropped > 0
    unread = stats.frames_grabbed - stats.frames_read - stats.frames_dropped
    assert unread in (0, 1), stats


def test_a_repeat_is_refused_unless_allowed(tmp_path: Path) -> None:
    path = write_video(tmp_path / "slow.avi", 4, fps=2.0)  # a frame every 0.5 s
    with camera_for(path, timeout_s=0.1) as cam:
        cam.read()
        with pytest.raises(DeviceError, match=r"camera 'cam'.*no new frame within timeout_s=0.1"):
            cam.read()  # the only frame there is was returned already
    with camera_for(path, timeout_s=0.1, allow_repeat=True) as cam:
        (a, ta), (b, tb) = cam.read(), cam.read()
        assert ta == tb and a is b
        assert cam.stats.frames_read == 1  # one distinct frame


def test_a_frame_older_than_max_age_is_refused(tmp_path: Path) -> None:
    path = write_video(tmp_path / "slow.avi", 4, fps=2.0)  # a frame every 0.5 s
    with camera_for(path, max_age_s=0.1, timeout_s=0.05) as cam:
        time.sleep(0.2)  # the first frame is unread but older than max_age_s
        with pytest.raises(DeviceError, match=r"'cam'.*no new frame.*max_age_s=0.1"):
            cam.read()


def test_a_stalled_source_raises_within_max_age_and_recovers(tmp_path: Path) -> None:
    data = write_video(tmp_path / "clip.avi", 40).read_bytes()
    fifo = tmp_path / "stream.avi"
    os.mkfifo(fifo)
    resume, done = threading.Event(), threading.Event()

    def feed() -> None:
        # a camera that stops delivering mid-stream: grab() blocks inside the driver
        with open(fifo, "wb") as pipe:
            pipe.write(data[: len(data) // 2])
            pipe.flush()
            resume.wait(10)
            pipe.write(data[len(data) // 2 :])
            pipe.flush()
            done.wait(10)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    cam = camera_for(fifo, max_age_s=0.3, timeout_s=0.3, loop=False, reconnect_attempts=0)
    try:
        cam.connect()
        frames, error = read_until_error(cam)
        assert re.search(r"camera 'cam'.*no new frame", error), error
        assert frames, "the first half of the stream delivered no frame"
        assert time.monotonic() - frames[-1][1] < 0.3 + 0.35, "the stall was noticed late"
        assert "capture state: streaming" in error  # stuck in the driver, not lost
        resume.set()
        frame, _ = read_until(cam)
        assert number(frame) > 0  # the stream went on where it stopped
        done.set()
        # the stream ends: with reconnect_attempts=0 the loss is final, and reads say so
        deadline = time.monotonic() + 3.0
        while True:
            try:
                cam.read()
            except DeviceError as e:
                if "lost and did not come back" in str(e):
                    break
            assert time.monotonic() < deadline, "the end of the stream was not reported"
    finally:
        resume.set()
        done.set()
        cam.disconnect()
        feeder.join(5)
    assert not camera_threads()


# ---------------------------------------------------------------------- losing the camera
def test_the_camera_comes_back_after_its_source_disappears(video: Path, tmp_path: Path) -> None:
    away = tmp_path / "unplugged.avi"
    cam = camera_for(
        video,
        loop=False,
        max_age_s=0.2,
        timeout_s=0.1,
        reconnect_backoff_s=0.02,
        reconnect_backoff_max_s=0.05,
    )
    with cam:
        video.rename(away)  # unplugged: the open file plays to its end, reopening fails
        _, error = read_until_error(cam)
        assert re.search(r"'cam'.*reconnecting", error), error
        assert cam.stats.reconnects == 0
        away.rename(video)  # plugged in again
        frame, _ = read_until(cam, ok=lambda: cam.stats.reconnects > 0)
        assert cam.stats.reconnects == 1
        assert cam.state == "streaming"
        assert number(frame) < 10  # the file started again from its beginning
    assert not camera_threads()


def test_a_file_without_loop_or_reconnects_plays_once(video: Path) -> None:
    with camera_for(video, loop=False, reconnect_attempts=0) as cam:
        frames, error = read_until_error(cam)
    assert "lost and did not come back after 0" in error
    numbers = [number(f) for f, _ in frames]
    assert numbers[-1] == 19 and cam.stats.loops == 0


def test_a_looping_file_starts_again(video: Path) -> None:
    with camera_for(video, realtime=False) as cam:
        read_until(cam, ok=lambda: cam.stats.loops >= 2)
        assert cam.stats.reconnects == 0


# ---------------------------------------------------------------------- configuration errors
def test_a_wrong_resolution_names_the_keys_to_change(video: Path) -> None:
    cam = camera_for(video, width=640, height=480)
    with pytest.raises(CameraConfigError, match=r"delivers 64×48.*`width: 64` and `height: 48`"):
        cam.connect()
    assert not cam.is_connected and not camera_threads()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"rotation": 45}, "rotation=45 is not one of"),
        ({"color_order": "rgba"}, "color_order='rgba'"),
        ({"backend": "qt"}, "backend='qt'"),
        ({"fourcc": "MJPEG"}, "four characters"),
        ({"max_age_s": 0}, "max_age_s"),
        ({"width": 0}, "width=0"),
    ],
)
def test_bad_config_values_are_named(fields: dict[str, object], message: str) -> None:
    with pytest.raises(CameraConfigError, match=message):
        OpenCVCameraConfig(name="cam", **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("source", "message"),
    [("missing.avi", "does not exist"), ("/dev/video97", "no device '/dev/video97'")],
)
def test_sources_that_are_not_there_say_so(tmp_path: Path, source: str, message: str) -> None:
    path = str(tmp_path / source) if not source.startswith("/") else source
    cam = camera_for(path)
    with pytest.raises(DeviceError, match=message):
        cam.connect()
    with pytest.raises(DeviceError, match="not connected"):
        cam.read()


def test_the_example_config_builds_a_camera(video: Path) -> None:
    from omegaconf import OmegaConf

    from robolearn.config import CONF_DIR, build

    node = OmegaConf.load(CONF_DIR / "camera" / "opencv.yaml")
    node.source, node.width, node.height, node.warmup_frames = str(video), W, H, 0
    cam = build(node, "camera")
    assert isinstance(cam, OpenCVCamera) and cam.name == "top"
    with cam:
        assert number(cam.read()[0]) in range(20)


# ---------------------------------------------------------------------- find-cameras
def test_find_cameras_without_cameras_explains_what_to_check(
    capsys: pytest.CaptureFixture[str],
) -> None:
    if any(Path("/dev").glob("video*")):
        pytest.skip("this machine has video devices")
    assert find_cameras(["--max-index", "2"]) == 0
    out = capsys.readouterr().out
    assert "No cameras found" in out
    assert "video" in out and "usermod" in out


def test_find_cameras_lists_a_source_and_saves_a_frame(
    video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert find_cameras(["--source", str(video), "--save", str(tmp_path / "frames")]) == 0
    out = capsys.readouterr().out
    assert "64×48 @ 50 fps" in out and "MJPG" in out and "FFMPEG" in out
    (png,) = (tmp_path / "frames").glob("*.png")
    saved = cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB)
    np.testing.assert_allclose(colour(saved), PALETTE[0], atol=40)
    assert find_cameras(["--source", str(tmp_path / "none.avi")]) == 1
    assert "no such device or file" in capsys.readouterr().out
