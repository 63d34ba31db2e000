"""Tests of the episode signal and frame-timing plots of robolearn.data.plot."""

from __future__ import annotations

import logging
import struct
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from matplotlib.figure import Figure

from robolearn.data import plot
from robolearn.data.plot import find_gaps, plot_episode, plot_timing
from robolearn.data.store import EpisodeStore
from robolearn.errors import SpecError, StoreError
from robolearn.spec import Feature, FeatureSpec

FPS = 50.0
PERIOD = 1 / FPS


def make_store(
    path: Path,
    lengths: tuple[int, ...] = (80,),
    gap_at: int | None = None,
    with_camera: bool = True,
    with_signals: bool = True,
) -> EpisodeStore:
    """A store at 50 Hz with jittered timestamps; `gap_at` delays that frame by 5 periods."""
    features: dict[str, Feature] = {}
    if with_signals:
        features["joints"] = Feature((3,), "float32", "state", names=("shoulder", "elbow", "wrist"))
        features["gripper"] = Feature((1,), "float32", "state", names=("width",))
        features["cmd"] = Feature(
            (2,), "float32", "action", names=("vx", "vy"), low=(-1.0, -0.5), high=(1.0, 0.5)
        )
    if with_camera:
        features["cam"] = Feature((16, 16, 3), "uint8", "image")
    store = EpisodeStore.create(path, FeatureSpec(features), FPS)
    rng = np.random.default_rng(1)
    writer = store.writer()
    for e, length in enumerate(lengths):
        writer.start_episode(task=f"stack cube {e}")
        t = 10.0
        for i in range(length):
            frame: dict[str, np.ndarray] = {}
            if with_signals:
                frame["joints"] = np.sin(np.arange(3) + i * 0.1).astype(np.float32)
                frame["gripper"] = np.array([0.04 * (i % 20 < 10)], dtype=np.float32)
                frame["cmd"] = (np.array([0.9, 0.4]) * np.cos(i * 0.2 + np.arange(2))).astype(
                    np.float32
                )
            if with_camera:
                frame["cam"] = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            writer.add_frame(frame, timestamp=t)
            t += PERIOD * (5 if i + 1 == gap_at else 1) + rng.uniform(-0.002, 0.002)
        writer.save(success=e % 2 == 0)
    writer.close()
    return store


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's signature and IHDR chunk; fails if it is not a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    assert head[12:16] == b"IHDR"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def red_mask(path: Path) -> np.ndarray:
    """Pixels of the strong red used to mark gaps (tab:red is RGB 214, 39, 40)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None
    b, g, r = (bgr[..., i].astype(int) for i in range(3))
    return (r > 180) & (g < 90) & (b < 90)


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """Every figure saved during the test, for checking what was drawn, not just pixels."""
    saved: list[Figure] = []
    real = Figure.savefig

    def spy(self: Figure, *args: Any, **kwargs: Any) -> None:
        saved.append(self)
        real(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    return saved


def test_plot_episode_png(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.zarr", lengths=(40, 60))
    out = plot_episode(store, 1, tmp_path / "plots" / "ep1.png")
    assert out == tmp_path / "plots" / "ep1.png"
    width, height = png_size(out)
    rows = 3  # joints, gripper, cmd; the camera is left out
    expected_h = (plot.TITLE_HEIGHT_IN + rows * plot.ROW_HEIGHT_IN) * plot.DPI
    assert width == pytest.approx(plot.FIG_WIDTH_IN * plot.DPI, abs=1)
    assert height == pytest.approx(expected_h, abs=1)
    image = cv2.imread(str(out), cv2.IMREAD_COLOR)
    colours = np.unique(image.reshape(-1, 3), axis=0)
    assert len(colours) > 50


def test_plot_episode_draws_dims_limits_and_title(tmp_path: Path, figures: list[Figure]) -> None:
    store = make_store(tmp_path / "s.zarr", lengths=(40, 60))
    plot_episode(store, 1, tmp_path / "ep1.png")
    (fig,) = figures
    axes = fig.axes
    assert [ax.get_title(loc="left") for ax in axes] == [
        "joints (state)",
        "gripper (state)",
        "cmd (action)",
    ]
    title = fig.get_suptitle()
    assert "episode 1" in title
    assert "stack cube 1" in title
    assert "failure" in title

    t = store.read_episode(1, [])["timestamp"]
    joints = axes[0]
    assert [text.get_text() for text in joints.get_legend().get_texts()] == [
        "shoulder",
        "elbow",
        "wrist",
    ]
    # x is measured time (jittered), not frame index / fps.
    np.testing.assert_allclose(joints.lines[0].get_xdata(), t)
    np.testing.assert_allclose(
        joints.lines[1].get_ydata(), store.read_episode(1, ["joints"])["joints"][:, 1], rtol=1e-6
    )

    cmd = axes[2]
    dashed = [line for line in cmd.lines if line.get_linestyle() == "--"]
    levels = sorted(float(line.get_ydata()[0]) for line in dashed)
    assert levels == [-1.0, -0.5, 0.5, 1.0]
    # Each limit has its dimension's colour.
    vx = next(line for line in cmd.lines if line.get_label() == "vx")
    vx_limits = [line for line in dashed if line.get_color() == vx.get_color()]
    assert sorted(float(line.get_ydata()[0]) for line in vx_limits) == [-1.0, 1.0]
    # States have no limits.
    assert not any(line.get_linestyle() == "--" for line in joints.lines)


def test_plot_episode_selected_keys(tmp_path: Path, figures: list[Figure]) -> None:
    store = make_store(tmp_path / "s.zarr")
    out = plot_episode(store, 0, tmp_path / "cmd", keys=["cmd"])
    assert out.suffix == ".png"
    assert png_size(out)[1] == pytest.approx(
        (plot.TITLE_HEIGHT_IN + plot.ROW_HEIGHT_IN) * plot.DPI, abs=1
    )
    assert [ax.get_title(loc="left") for ax in figures[0].axes] == ["cmd (action)"]
    assert "success" in figures[0].get_suptitle()


def test_plot_episode_errors(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.zarr", lengths=(10,))
    with pytest.raises(StoreError, match=r"episode 3 does not exist.*1 episodes.*0\.\.0"):
        plot_episode(store, 3, tmp_path / "a.png")
    with pytest.raises(SpecError, match=r"'cam' is an image.*'joints', 'gripper', 'cmd'.*video"):
        plot_episode(store, 0, tmp_path / "a.png", keys=["cam"])
    with pytest.raises(SpecError, match=r"no key 'torque'.*'joints'"):
        plot_episode(store, 0, tmp_path / "a.png", keys=["torque"])
    assert not (tmp_path / "a.png").exists()

    cams_only = make_store(tmp_path / "c.zarr", lengths=(5,), with_signals=False)
    with pytest.raises(StoreError, match=r"no state or action keys.*export_video"):
        plot_episode(cams_only, 0, tmp_path / "b.png")


def test_find_gaps() -> None:
    t = np.array([0.0, 0.02, 0.04, 0.12, 0.14, 0.175, 0.19])
    # 0.08 s and 0.035 s exceed 1.5 × 20 ms; 0.015 s does not.
    assert find_gaps(t, 50.0).tolist() == [3, 5]
    assert find_gaps(t[:1], 50.0).tolist() == []


def test_plot_timing_marks_an_injected_gap(
    tmp_path: Path, figures: list[Figure], caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store(tmp_path / "s.zarr", lengths=(80,), gap_at=60, with_camera=False)
    t = store.read_episode(0, [])["timestamp"]
    assert find_gaps(t, store.fps).tolist() == [60]

    with caplog.at_level(logging.INFO, logger="robolearn.data.plot"):
        out = plot_timing(store, 0, tmp_path / "timing.png")
    assert "1 gap " in caplog.text
    assert "[60]" in caplog.text
    width, height = png_size(out)
    assert (width, height) == pytest.approx(
        (plot.FIG_WIDTH_IN * plot.DPI, plot.TIMING_HEIGHT_IN * plot.DPI), abs=1
    )

    # The gap is drawn in red where it happened: frame 60 of 80, right of the middle
    # (the legend's red marker sits top-left, so look only at the right half).
    red = red_mask(out)
    assert red[:, width // 2 :].sum() > 10
    (fig,) = figures
    (ax,) = fig.axes
    (marks,) = ax.collections
    np.testing.assert_allclose(marks.get_offsets()[:, 0], [t[60]])
    np.testing.assert_allclose(marks.get_offsets()[:, 1], [(t[60] - t[59]) * 1000])
    assert fig.get_suptitle().endswith("1 gap")


def test_plot_timing_without_gaps_has_no_red(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.zarr", lengths=(80,), with_camera=False)
    out = plot_timing(store, 0, tmp_path / "timing.png")
    assert not red_mask(out).any()


def test_plot_single_frame_episode(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.zarr", lengths=(1,), with_camera=False)
    assert png_size(plot_timing(store, 0, tmp_path / "t.png"))[0] > 0
    assert png_size(plot_episode(store, 0, tmp_path / "e.png"))[0] > 0
