"""The live camera preview: the web page's MJPEG stream and snapshots, rerun, and the recorder."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from robolearn.data.store import EpisodeStore
from robolearn.hal import Observation
from robolearn.preview import PreviewConfig, PreviewError, WebPreview, make_preview
from robolearn.record import RecordConfig, Recorder
from robolearn.spec import Feature, FeatureSpec
from sim.robot import CameraConfig, PyBulletRobot
from sim.tasks import make_task
from sim.teleop import ExpertTeleop

SPEC = FeatureSpec(
    {
        "state": Feature((3,), "float32", "state", names=["a", "b", "c"]),
        "front": Feature((48, 64, 3), "uint8", "image"),
        "action": Feature((2,), "float32", "action", names=["x", "y"]),
    }
)


def picture(seed: int) -> np.ndarray:
    """Large flat blocks of colour: JPEG keeps them within a few levels."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    return np.repeat(np.repeat(blocks, 8, axis=0), 8, axis=1)


def observation(seed: int) -> Observation:
    values = {"state": np.array([seed, 0.5, -1.0], np.float32), "front": picture(seed)}
    return Observation(values, {k: float(seed) for k in values})


def get(url: str, timeout: float = 10.0) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def decode(jpeg: bytes) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert bgr is not None, "not a JPEG"
    return bgr[..., ::-1]


@pytest.fixture
def web() -> WebPreview:
    preview = make_preview(PreviewConfig(kind="web", port=0, fps=50), SPEC)
    assert isinstance(preview, WebPreview)
    yield preview
    preview.close()


def test_the_page_snapshots_and_state_show_the_newest_observation(web: WebPreview) -> None:
    status, kind, body = get(web.url)
    assert status == 200 and kind.startswith("text/html")
    assert b"/stream/front" in body
    for seed in (1, 2):  # the snapshot follows the newest published observation
        web.publish(observation(seed), {"action": np.array([0.25, -0.75], np.float32)})
        status, kind, jpeg = get(web.url + "frame/front.jpg")
        assert status == 200 and kind == "image/jpeg"
        got = decode(jpeg).astype(int)
        assert got.shape == (48, 64, 3)
        assert np.abs(got - picture(seed)).mean() < 16  # JPEG; a channel swap is ~80
        assert np.abs(got - picture(3 - seed)).mean() > 40
    state = json.loads(get(web.url + "state.json")[2])
    assert state == {"state": [2.0, 0.5, -1.0], "action": [0.25, -0.75]}


def test_the_mjpeg_stream_sends_each_new_frame(web: WebPreview) -> None:
    web.publish(observation(1), {})
    host, port = web.server.server_address[:2]
    frames: list[np.ndarray] = []
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"GET /stream/front HTTP/1.0\r\n\r\n")
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        headers, _, buf = buf.partition(b"\r\n\r\n")
        assert b"200" in headers.split(b"\r\n")[0]
        assert b"multipart/x-mixed-replace; boundary=frame" in headers
        while len(frames) < 3:
            part = buf.partition(b"--frame\r\n")[2]
            head, sep, body = part.partition(b"\r\n\r\n")
            if sep:
                length = int(head.split(b"Content-Length: ")[1])
                if len(body) >= length:
                    frames.append(decode(body[:length]).astype(int))
                    buf = body[length:]
                    web.publish(observation(len(frames) + 1), {})  # the next one
                    continue
            chunk = s.recv(65536)
            assert chunk, "the stream closed early"
            buf += chunk
    for i, got in enumerate(frames):  # each frame once, in order
        assert np.abs(got - picture(i + 1)).mean() < 16
    assert web.frames_sent >= 3


def test_unknown_cameras_and_busy_ports_are_named(web: WebPreview) -> None:
    status, _, body = get(web.url + "frame/wrist.jpg")
    assert status == 404 and b"no camera 'wrist'" in body and b"front" in body
    port = web.server.server_address[1]
    with pytest.raises(PreviewError, match=r"preview_port=N"):
        make_preview(PreviewConfig(kind="web", port=port), SPEC)
    with pytest.raises(PreviewError, match="choose one of none, web, rerun"):
        make_preview(PreviewConfig(kind="window"), SPEC)
    assert make_preview(PreviewConfig(kind="none"), SPEC) is None


def test_rerun_preview_logs_cameras_state_and_action_to_a_recording(tmp_path: Path) -> None:
    rr = pytest.importorskip("rerun", reason="the rerun extra")  # in the dev group: always here
    path = tmp_path / "preview.rrd"
    preview = make_preview(PreviewConfig(kind="rerun", rerun=str(path), fps=100), SPEC)
    for seed in range(1, 4):
        preview.publish(observation(seed), {"action": np.array([0.1 * seed, 0.0], np.float32)})
        deadline = time.monotonic() + 10
        while preview.frames_logged < seed and time.monotonic() < deadline:
            time.sleep(0.01)  # let the thread log each one (the preview skips stale ones)
    preview.close()
    assert preview.frames_logged == 3
    rows: dict[str, int] = {}
    for chunk in rr.chunk.RrdReader(path).stream():
        if not chunk.is_static:
            rows[chunk.entity_path] = rows.get(chunk.entity_path, 0) + chunk.num_rows
    # one image and one scalar per state and action dimension, for each of the 3 observations
    assert rows == {
        "/cameras/front": 3,
        **{f"/state/state/{n}": 3 for n in "abc"},
        **{f"/action/action/{n}": 3 for n in "xy"},
    }


def test_the_recorder_shows_every_recorded_tick(tmp_path: Path) -> None:
    path = tmp_path / "reach.zarr"
    cameras = [CameraConfig("top", width=32, height=32)]
    with PyBulletRobot("panda", task=make_task("reach"), cameras=cameras) as robot:
        preview = make_preview(PreviewConfig(kind="web", port=0), robot.spec)
        assert isinstance(preview, WebPreview)
        try:
            cfg = RecordConfig(path, num_episodes=1, fps=10, episode_time_s=20)
            (result,) = Recorder(
                robot, ExpertTeleop(robot), cfg, log=lambda _: None, preview=preview
            ).run()
            assert result.outcome == "saved"
            assert preview.latest.seq == result.frames > 0  # every recorded tick, no more
            status, _, jpeg = get(preview.url + "frame/top.jpg")
            assert status == 200
        finally:
            preview.close()
    with EpisodeStore.open(path, "r") as store:
        last = store.read("top", *store.bounds(0))[-1].astype(int)
    assert np.abs(decode(jpeg).astype(int) - last).mean() < 16  # the newest frame, as stored
