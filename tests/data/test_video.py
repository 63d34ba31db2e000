"""Tests of exporting an episode's camera images to mp4 with robolearn.data.video."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from robolearn.data import video
from robolearn.data.store import EpisodeStore
from robolearn.data.video import export_video
from robolearn.errors import SpecError, StoreError
from robolearn.spec import Feature, FeatureSpec


def camera_image(h: int, w: int, c: int, i: int, rng: np.random.Generator) -> np.ndarray:
    """A camera-like RGB(A)/gray frame: colour gradient, a moving red circle and sensor noise."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([40 + 60 * x / w, 60 + 120 * y / h, 160 - 80 * x / w], axis=-1)
    img = img.astype(np.uint8).copy()
    cx = int(w * (0.2 + 0.6 * ((i * 0.07) % 1.0)))
    cv2.circle(img, (cx, h // 2), max(2, h // 5), (230, 30, 30), -1)
    noisy = img.astype(np.int16) + rng.integers(-3, 4, img.shape, dtype=np.int16)
    img = np.clip(noisy, 0, 255).astype(np.uint8)
    if c == 1:
        return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None]
    if c == 4:
        alpha = np.full((h, w, 1), 200, dtype=np.uint8)
        return np.concatenate([img, alpha], axis=-1)
    return img


def make_store(
    path: Path,
    cams: dict[str, tuple[int, int, int]],
    lengths: tuple[int, ...] = (30,),
    period: float = 0.05,
    fps: float = 30.0,
) -> EpisodeStore:
    """A store with a state, an action and the given cameras; frames `period` seconds apart."""
    features = {
        "joints": Feature((3,), "float32", "state", names=("a", "b", "c")),
        "cmd": Feature((2,), "float32", "action", low=(-1, -1), high=(1, 1)),
    }
    for name, shape in cams.items():
        features[name] = Feature(shape, "uint8", "image")
    store = EpisodeStore.create(path, FeatureSpec(features), fps)
    rng = np.random.default_rng(0)
    writer = store.writer()
    for length in lengths:
        writer.start_episode(task="push the block")
        for i in range(length):
            frame: dict[str, np.ndarray] = {
                "joints": np.sin(np.arange(3) + i * 0.1).astype(np.float32),
                "cmd": np.cos(np.arange(2) + i * 0.1).astype(np.float32),
            }
            for name, (h, w, c) in cams.items():
                frame[name] = camera_image(h, w, c, i, rng)
            writer.add_frame(frame, timestamp=100.0 + i * period)
        writer.save(success=True)
    writer.close()
    return store


def decode(path: Path) -> tuple[list[np.ndarray], float]:
    """All frames of a video as RGB arrays, and its frame rate."""
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened()
    rate = capture.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames, rate


def mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def test_single_camera_round_trip(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.zarr", {"front": (48, 64, 3)}, lengths=(30,))
    out = export_video(store, 0, tmp_path / "ep0.mp4", label=False)
    assert out == tmp_path / "ep0.mp4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ep0.mp4", "s.zarr"]

    frames, _ = decode(out)
    assert len(frames) == 30
    assert frames[0].shape == (48, 64, 3)
    stored = store.read_episode(0, ["front"])["front"]
    mid = 15
    same = mae(frames[mid], stored[mid])
    other = mae(frames[mid], stored[mid + 5])
    assert same < 8, same
    # The moving circle makes a different frame clearly worse: frames are in order, not shifted.
    assert other > 2 * same, (same, other)
    # The red circle stays red: channels were swapped to BGR for OpenCV and back.
    circle = (stored[mid][..., 0] > 200) & (stored[mid][..., 2] < 60)
    assert circle.sum() > 50
    assert frames[mid][circle][:, 0].mean() > 180
    assert frames[mid][circle][:, 2].mean() < 80


def test_plays_at_measured_rate_by_default(tmp_path: Path) -> None:
    # Recorded at 20 Hz although the store's nominal rate is 30 Hz.
    store = make_store(tmp_path / "s.zarr", {"front": (32, 32, 3)}, lengths=(12,), period=0.05)
    _, rate = decode(export_video(store, 0, tmp_path / "a.mp4"))
    assert rate == pytest.approx(20.0, abs=0.1)
    _, rate = decode(export_video(store, 0, tmp_path / "b.mp4", fps=10))
    assert rate == pytest.approx(10.0, abs=0.1)


def test_single_frame_falls_back_to_nominal_rate(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.zarr", {"front": (32, 32, 3)}, lengths=(1,), fps=25.0)
    frames, rate = decode(export_video(store, 0, tmp_path / "a.mp4"))
    assert len(frames) == 1
    assert rate == pytest.approx(25.0, abs=0.1)


def test_two_cameras_are_tiled_at_a_common_height(tmp_path: Path) -> None:
    # The wrist camera is portrait and smaller: it is scaled to 48 high, keeping 3:4 → 36 wide.
    cams = {"front": (48, 64, 3), "wrist": (32, 24, 3)}
    store = make_store(tmp_path / "s.zarr", cams, lengths=(10, 14))
    frames, _ = decode(export_video(store, 1, tmp_path / "ep1.mp4", label=False))
    assert len(frames) == 14
    assert frames[0].shape == (48, 64 + 36, 3)

    data = store.read_episode(1, ["front", "wrist"])
    mid = 7
    assert mae(frames[mid][:, :64], data["front"][mid]) < 8
    wrist = cv2.resize(data["wrist"][mid], (36, 48), interpolation=cv2.INTER_LINEAR)
    assert mae(frames[mid][:, 64:], wrist) < 10

    # keys picks and orders the cameras.
    frames, _ = decode(export_video(store, 1, tmp_path / "wrist.mp4", keys=["wrist"]))
    assert frames[0].shape == (32, 24, 3)


def test_odd_sizes_are_padded_not_cropped(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.zarr", {"front": (31, 45, 3)}, lengths=(5,))
    frames, _ = decode(export_video(store, 0, tmp_path / "a.mp4", label=False))
    assert frames[0].shape == (32, 46, 3)
    stored = store.read_episode(0, ["front"])["front"]
    assert mae(frames[2][:31, :45], stored[2]) < 8


def test_grayscale_and_rgba(tmp_path: Path) -> None:
    cams = {"depth": (32, 32, 1), "overlay": (32, 32, 4)}
    store = make_store(tmp_path / "s.zarr", cams, lengths=(8,))
    frames, _ = decode(export_video(store, 0, tmp_path / "a.mp4", label=False))
    assert len(frames) == 8
    assert frames[0].shape == (32, 64, 3)
    data = store.read_episode(0, ["depth", "overlay"])
    gray = np.repeat(data["depth"][4], 3, axis=-1)
    assert mae(frames[4][:, :32], gray) < 8
    assert mae(frames[4][:, 32:], data["overlay"][4][..., :3]) < 8


def test_long_episode_is_read_in_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A block size that does not divide the episode length exercises the last partial block.
    monkeypatch.setattr(video, "BLOCK_FRAMES", 7)
    store = make_store(tmp_path / "s.zarr", {"front": (32, 48, 3)}, lengths=(5, 30))
    reads: list[tuple[str, int, int]] = []
    real_read = store.read

    def spy(key: str, start: int, stop: int) -> np.ndarray:
        reads.append((key, start, stop))
        return real_read(key, start, stop)

    monkeypatch.setattr(store, "read", spy)
    frames, _ = decode(export_video(store, 1, tmp_path / "a.mp4", label=False))
    assert len(frames) == 30
    image_reads = [r for r in reads if r[0] == "front"]
    assert max(stop - start for _, start, stop in image_reads) <= 7
    assert image_reads[0][1] == 5
    assert image_reads[-1][2] == 35

    stored = real_read("front", 5, 35)
    errors = [mae(f, s) for f, s in zip(frames, stored, strict=True)]
    assert max(errors) < 8, errors


def test_label_is_drawn_top_left(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.zarr", {"front": (96, 128, 3)}, lengths=(6,))
    plain, _ = decode(export_video(store, 0, tmp_path / "plain.mp4", label=False))
    labelled, _ = decode(export_video(store, 0, tmp_path / "label.mp4", label=True))
    # The scene has no white pixels; the label's white text does, only in the top-left corner.
    white = (labelled[3] > 200).all(axis=-1)
    assert white[:20, :80].sum() > 20
    assert not white[20:].any()
    assert not white[:, 80:].any()
    assert not (plain[3] > 200).all(axis=-1).any()
    assert mae(plain[3][40:], labelled[3][40:]) < 3


def test_path_without_suffix_gets_mp4(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.zarr", {"front": (32, 32, 3)}, lengths=(3,))
    out = export_video(store, 0, tmp_path / "videos" / "ep0")
    assert out == tmp_path / "videos" / "ep0.mp4"
    assert len(decode(out)[0]) == 3


def test_errors_name_the_problem_and_the_fix(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.zarr", {"front": (32, 32, 3), "wrist": (32, 32, 3)}, (3, 4))
    with pytest.raises(StoreError, match=r"episode 5 does not exist.*2 episodes.*0\.\.1"):
        export_video(store, 5, tmp_path / "a.mp4")
    with pytest.raises(SpecError, match=r"'joints' is a state key, not an image.*'front', 'wrist'"):
        export_video(store, 0, tmp_path / "a.mp4", keys=["joints"])
    with pytest.raises(SpecError, match=r"no key 'top'.*'front', 'wrist'"):
        export_video(store, 0, tmp_path / "a.mp4", keys=["front", "top"])
    with pytest.raises(ValueError, match="fps must be a positive number"):
        export_video(store, 0, tmp_path / "a.mp4", fps=0)
    assert not (tmp_path / "a.mp4").exists()

    blind = make_store(tmp_path / "blind.zarr", {}, lengths=(3,))
    with pytest.raises(StoreError, match=r"no image keys.*plot_episode"):
        export_video(blind, 0, tmp_path / "b.mp4")


def test_failed_export_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(video, "BLOCK_FRAMES", 4)
    store = make_store(tmp_path / "s.zarr", {"front": (32, 32, 3)}, lengths=(10,))
    real_read = store.read

    def failing(key: str, start: int, stop: int) -> np.ndarray:
        if key == "front" and start >= 4:
            raise OSError("disk went away")
        return real_read(key, start, stop)

    monkeypatch.setattr(store, "read", failing)
    with pytest.raises(OSError, match="disk went away"):
        export_video(store, 0, tmp_path / "out" / "a.mp4")
    assert list((tmp_path / "out").iterdir()) == []
