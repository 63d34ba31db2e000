"""Dataset interop: LeRobot v3 and HDF5 (ACT, robomimic) in and out, compared frame by frame."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from shutil import rmtree

import cv2
import h5py
import numpy as np
import pytest

from robolearn.data.interop import InteropError
from robolearn.data.interop.cli import main
from robolearn.data.interop.hdf5 import (
    ALOHA_JOINTS,
    HDF5ImportConfig,
    import_aloha,
    import_robomimic,
)
from robolearn.data.store import EpisodeStore
from robolearn.spec import Feature, FeatureSpec

H, W = 24, 32
LENGTHS = [9, 14, 6]
TASKS = ["pick the cube", "place it in the bowl", "pick the cube"]


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames move in blocks of 4 to 8 here, so block seams inside episodes are crossed."""
    monkeypatch.setattr("robolearn.data.interop.BLOCK_BYTES", 20_000)


def _leftovers(parent: Path) -> list[str]:
    """Hidden staging folders an import or export would leave behind after a failure."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _camera(i: int, shift: int) -> np.ndarray:
    """A smooth frame whose brightness and square position encode the frame number `i`.

    Smooth content keeps video error small; the brightness steps make any 14 consecutive frames
    differ from each other by 14 grey levels or more, so a frame shifted in a round trip is
    caught.
    """
    yy, xx = np.mgrid[0:H, 0:W]
    level = 14 * (i % 14)
    img = np.stack([20 + yy + level, 30 + xx + level, 40 + (xx + yy) // 2 + shift], axis=-1)
    x, y = (3 * i) % (W - 6), (2 * i) % (H - 6)
    img[y : y + 6, x : x + 6] = (230, 220 - shift, 40)
    return img.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def robolearn_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three episodes of different lengths: jittered measured times, cameras captured before
    the tick, limits and a representation on the action, tasks, success flags, extra."""
    path = tmp_path_factory.mktemp("rl") / "demo.zarr"
    names = [f"joint{j}.pos" for j in range(5)] + ["gripper.pos"]
    spec = FeatureSpec(
        {
            "state": Feature((6,), "float32", "state", names=names),
            "action": Feature(
                (6,),
                "float32",
                "action",
                names=names,
                low=[-2.0] * 6,
                high=[2.0] * 6,
                representation="joint_position",
            ),
            "top": Feature((H, W, 3), "uint8", "image"),
            "wrist": Feature((H, W, 3), "uint8", "image"),
        }
    )
    rng = np.random.default_rng(7)
    store = EpisodeStore.create(path, spec, 30.0, attrs={"recording": {"robot": "so101"}})
    frame = 0
    with store, store.writer() as writer:
        for e, n in enumerate(LENGTHS):
            writer.start_episode(task=TASKS[e], tags=[f"take{e}"], start_time=1.7e9 + 100 * e)
            t = 50.0 + 10 * e
            for _ in range(n):
                t += 1 / 30 + rng.normal(0, 0.002)
                writer.add_frame(
                    {
                        "state": rng.normal(0, 1, 6).astype(np.float32),
                        "action": rng.uniform(-2, 2, 6).astype(np.float32),
                        "top": _camera(frame, 0),
                        "wrist": _camera(frame + 5, 30),
                    },
                    timestamp=t,
                    capture_times={"top": t - 0.004, "wrist": t - 0.011, "state": t - 0.001},
                )
                frame += 1
            writer.save(success=(True, False, None)[e], extra={"operator": "ana", "take": e})
    return path


def _assert_same_store(a: EpisodeStore, b: EpisodeStore, *, image_atol: float = 0.0) -> None:
    """Every frame of every key, times, boundaries and episode metadata (images within atol)."""
    assert b.spec == a.spec
    assert b.fps == a.fps
    np.testing.assert_array_equal(b.episode_ends, a.episode_ends)
    n = a.num_frames
    for key, feature in a.spec.items():
        x, y = a.read(key, 0, n), b.read(key, 0, n)
        if feature.kind == "image" and image_atol:
            assert np.abs(x.astype(float) - y).mean(axis=(1, 2, 3)).max() <= image_atol, key
        else:
            np.testing.assert_array_equal(y, x, err_msg=key)
        if feature.kind != "action":
            np.testing.assert_array_equal(b.time_array(key)[:n], a.time_array(key)[:n])
    np.testing.assert_array_equal(b.read("timestamp", 0, n), a.read("timestamp", 0, n))
    for ea, eb in zip(a.episodes(), b.episodes(), strict=True):
        assert (eb.task, eb.success, eb.tags, eb.start_time, eb.extra) == (
            ea.task,
            ea.success,
            ea.tags,
            ea.start_time,
            ea.extra,
        )


# ---------------------------------------------------------------------- LeRobot
@pytest.fixture(scope="module")
def lerobot_dataset():  # type: ignore[no-untyped-def]
    """lerobot's dataset module (slow to import: only the LeRobot tests pay for it)."""
    return pytest.importorskip("lerobot.datasets.lerobot_dataset")


def test_export_images_is_lossless_and_reads_back_identically(
    robolearn_store: Path, tmp_path: Path, lerobot_dataset
) -> None:
    from robolearn.data.interop.lerobot import (
        LeRobotExportConfig,
        export_lerobot,
        import_lerobot,
    )

    out = export_lerobot(robolearn_store, tmp_path / "le", LeRobotExportConfig(video=False))
    src = EpisodeStore.open(robolearn_store)
    # lerobot's own reader sees every frame as it was, with nominal timestamps and the tasks
    ds = lerobot_dataset.LeRobotDataset("robolearn/le", root=out, video_backend="pyav")
    assert (ds.fps, ds.num_episodes, len(ds)) == (30, 3, sum(LENGTHS))
    assert ds.meta.features["observation.state"]["names"] == list(src.spec["state"].names)
    for i in range(len(ds)):
        item = ds[i]
        e = int(item["episode_index"])
        assert item["task"] == TASKS[e]
        assert float(item["timestamp"]) == pytest.approx(int(item["frame_index"]) / 30, abs=1e-6)
        np.testing.assert_array_equal(
            item["observation.state"].numpy(), src.read("state", i, i + 1)[0]
        )
        np.testing.assert_array_equal(item["action"].numpy(), src.read("action", i, i + 1)[0])
        for cam in ("top", "wrist"):
            img = (item[f"observation.images.{cam}"] * 255).round().byte().permute(1, 2, 0)
            np.testing.assert_array_equal(img.numpy(), src.read(cam, i, i + 1)[0])
    back = import_lerobot(out, tmp_path / "back.zarr")
    _assert_same_store(src, EpisodeStore.open(back))
    assert EpisodeStore.open(back).user_attrs["recording"] == {"robot": "so101"}
    assert _leftovers(tmp_path) == []


def test_export_video_round_trip_within_codec_error(
    robolearn_store: Path, tmp_path: Path, lerobot_dataset
) -> None:
    """Video is lossy (lerobot's default AV1, crf 30, 4:2:0 chroma): low-dim data, times and
    metadata stay exact and every camera frame comes back within 8 grey levels of mean
    absolute error. That content measures 5.4-5.9 here (a 24x32 frame, where the saturated
    square's edges lose most to chroma subsampling); 8 leaves room for other encoder builds
    and still fails on a colour swap, a resize or a wrong frame. That no frame is shifted or
    repeated is checked apart: each decoded frame must be nearest to its own source frame
    (neighbouring source frames lie 9.5 or more apart)."""
    from robolearn.data.interop.lerobot import (
        LeRobotExportConfig,
        export_lerobot,
        import_lerobot,
    )

    out = export_lerobot(robolearn_store, tmp_path / "le", LeRobotExportConfig(video=True))
    assert sorted(p.parent.parent.name for p in out.glob("videos/*/chunk-*/*.mp4")) == [
        "observation.images.top",
        "observation.images.wrist",
    ]
    back = EpisodeStore.open(import_lerobot(out, tmp_path / "back.zarr"))
    src = EpisodeStore.open(robolearn_store)
    _assert_same_store(src, back, image_atol=8.0)
    for cam in ("top", "wrist"):
        x = src.read(cam, 0, src.num_frames).astype(float)
        y = back.read(cam, 0, back.num_frames).astype(float)
        for ep in src.episodes():
            a, b = ep.start, ep.end
            dist = np.abs(x[a:b, None] - y[None, a:b]).mean(axis=(2, 3, 4))
            # each decoded frame is nearest to its own source frame: no shift, no repeat
            np.testing.assert_array_equal(dist.argmin(axis=0), np.arange(b - a))


def _direct_lerobot(lerobot_dataset, root: Path) -> dict[str, list[np.ndarray]]:  # type: ignore[no-untyped-def]
    """A LeRobot dataset written with lerobot's API (no robolearn metadata); what was added."""
    features = {
        "observation.state": {
            "dtype": "float32",
            "shape": (4,),
            "names": ["shoulder.pos", "elbow.pos", "wrist.pos", "gripper.pos"],
        },
        "observation.images.front": {
            "dtype": "image",
            "shape": (H, W, 3),
            "names": ["height", "width", "channels"],
        },
        "action": {
            "dtype": "float32",
            "shape": (4,),
            "names": ["shoulder.pos", "elbow.pos", "wrist.pos", "gripper.pos"],
        },
        "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
    }
    ds = lerobot_dataset.LeRobotDataset.create(
        "someone/direct", 15, features, root=root, use_videos=False
    )
    rng = np.random.default_rng(3)
    added: dict[str, list[np.ndarray]] = {"state": [], "action": [], "front": []}
    for e, n in enumerate((5, 8, 3)):
        for i in range(n):
            state = rng.normal(0, 1, 4).astype(np.float32)
            action = rng.normal(0, 1, 4).astype(np.float32)
            img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
            ds.add_frame(
                {
                    "observation.state": state,
                    "observation.images.front": img,
                    "action": action,
                    "next.reward": np.array([float(i == n - 1)], dtype=np.float32),
                    "task": f"task {e % 2}",
                }
            )
            added["state"].append(state)
            added["action"].append(action)
            added["front"].append(img)
        ds.save_episode()
    ds.finalize()
    return added


def test_lerobot_dataset_written_by_lerobot_imports_exactly(
    tmp_path: Path, lerobot_dataset
) -> None:
    from robolearn.data.interop.lerobot import LeRobotImportConfig, import_lerobot

    root = tmp_path / "direct"
    added = _direct_lerobot(lerobot_dataset, root)
    # a reward has no place in a store: refused, naming the key and the fix, nothing written
    with pytest.raises(InteropError, match=r"'next.reward'.*--drop next.reward"):
        import_lerobot(root, tmp_path / "x.zarr")
    assert not (tmp_path / "x.zarr").exists() and _leftovers(tmp_path) == []

    path = import_lerobot(root, tmp_path / "x.zarr", LeRobotImportConfig(drop=["next.reward"]))
    store = EpisodeStore.open(path)
    assert store.fps == 15.0
    np.testing.assert_array_equal(store.episode_ends, [5, 13, 16])
    assert [ep.task for ep in store.episodes()] == ["task 0", "task 1", "task 0"]
    assert store.spec["state"].names == ("shoulder.pos", "elbow.pos", "wrist.pos", "gripper.pos")
    assert store.spec["action"].representation == "joint_position"
    assert store.spec["front"] == Feature((H, W, 3), "uint8", "image")
    for key, values in added.items():
        np.testing.assert_array_equal(store.read(key, 0, 16), np.stack(values), err_msg=key)
    # the source's timestamps (frame_index / fps, as lerobot writes them in float32)
    expected = np.concatenate([np.arange(n, dtype=np.float64) / 15 for n in (5, 8, 3)])
    np.testing.assert_array_equal(
        store.read("timestamp", 0, 16), expected.astype(np.float32).astype(np.float64)
    )
    np.testing.assert_array_equal(store.time_array("front")[:16], store.read("timestamp", 0, 16))
    assert store.user_attrs["source"]["format"] == "lerobot"

    # an episode subset keeps its own boundaries and tasks
    sub = EpisodeStore.open(
        import_lerobot(
            root,
            tmp_path / "sub.zarr",
            LeRobotImportConfig(episodes=[2, 1], drop=["next.reward"]),
        )
    )
    np.testing.assert_array_equal(sub.episode_ends, [3, 11])
    np.testing.assert_array_equal(sub.read("front", 0, 3), np.stack(added["front"][13:16]))
    assert [ep.task for ep in sub.episodes()] == ["task 0", "task 1"]


def test_lerobot_errors_name_the_problem_and_leave_nothing(
    robolearn_store: Path, tmp_path: Path, lerobot_dataset
) -> None:
    import huggingface_hub

    from robolearn.data.interop.lerobot import (
        LeRobotExportConfig,
        LeRobotImportConfig,
        export_lerobot,
        import_lerobot,
    )

    offline_env = os.environ.get("HF_HUB_OFFLINE")
    with pytest.raises(InteropError, match=r"does not exist.*never downloads"):
        import_lerobot(tmp_path / "nowhere", tmp_path / "a.zarr")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InteropError, match=r"not a LeRobot dataset \(no meta/info.json\)"):
        import_lerobot(tmp_path / "empty", tmp_path / "a.zarr")
    assert not (tmp_path / "a.zarr").exists()

    # an export stopped half-way (Ctrl-C after the first block) leaves no dataset behind
    def interrupt(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_lerobot(robolearn_store, tmp_path / "half", progress=interrupt)
    assert not (tmp_path / "half").exists() and _leftovers(tmp_path) == []
    # a store already at the destination is refused and left as it was
    export_lerobot(robolearn_store, tmp_path / "le", LeRobotExportConfig(episodes=[1]))
    before = sorted(p.relative_to(robolearn_store) for p in robolearn_store.rglob("*"))
    with pytest.raises(InteropError, match="already holds a store"):
        import_lerobot(tmp_path / "le", robolearn_store)
    assert sorted(p.relative_to(robolearn_store) for p in robolearn_store.rglob("*")) == before
    with pytest.raises(InteropError, match=r"already holds"):
        export_lerobot(robolearn_store, tmp_path / "le", LeRobotExportConfig(video=False))
    # lerobot is never left to fetch a missing file from the Hub: each is named instead
    (tmp_path / "le" / "meta" / "tasks.parquet").rename(tmp_path / "tasks.parquet")
    with pytest.raises(InteropError, match=r"no meta/tasks.parquet; the copy is incomplete"):
        import_lerobot(tmp_path / "le", tmp_path / "a.zarr")
    (tmp_path / "tasks.parquet").rename(tmp_path / "le" / "meta" / "tasks.parquet")
    # an episode that does not exist, a missing video file
    with pytest.raises(InteropError, match=r"has 1 episodes.*\[4\] do not exist"):
        import_lerobot(tmp_path / "le", tmp_path / "a.zarr", LeRobotImportConfig(episodes=[4]))
    next((tmp_path / "le").glob("videos/observation.images.top/*/*.mp4")).unlink()
    hub_offline = huggingface_hub.constants.HF_HUB_OFFLINE
    with pytest.raises(InteropError, match=r"video of 'observation.images.top'.*is missing"):
        import_lerobot(tmp_path / "le", tmp_path / "a.zarr")
    # offline mode is lerobot's only while robolearn runs it
    assert hub_offline == huggingface_hub.constants.HF_HUB_OFFLINE
    assert os.environ.get("HF_HUB_OFFLINE") == offline_env
    assert not (tmp_path / "a.zarr").exists()
    # a fractional rate cannot be a LeRobot fps unless a nominal one is given
    ntsc = EpisodeStore.create(
        tmp_path / "ntsc.zarr",
        {"state": {"shape": [2], "dtype": "float32", "kind": "state"}},
        29.97,
    )
    with ntsc, ntsc.writer() as writer:
        writer.start_episode(task="wave")
        for i in range(4):
            writer.add_frame({"state": np.full(2, i, np.float32)}, timestamp=i / 29.97)
        writer.save()
    with pytest.raises(InteropError, match=r"29.97 fps.*--fps N"):
        export_lerobot(tmp_path / "ntsc.zarr", tmp_path / "ntsc")
    out = export_lerobot(tmp_path / "ntsc.zarr", tmp_path / "ntsc", LeRobotExportConfig(fps=30))
    back = EpisodeStore.open(import_lerobot(out, tmp_path / "ntsc2.zarr"))
    assert back.fps == 29.97  # the store's own rate comes back from meta/robolearn.json
    np.testing.assert_array_equal(back.read("state", 0, 4)[:, 0], np.arange(4))
    assert _leftovers(tmp_path) == []


def test_cli_export_then_import(
    robolearn_store: Path, tmp_path: Path, capsys, lerobot_dataset
) -> None:  # type: ignore[no-untyped-def]
    le, back = tmp_path / "le", tmp_path / "back.zarr"
    assert main(["export", str(robolearn_store), str(le), "--no-video", "--episodes", "0,2"]) == 0
    assert json.loads((le / "meta" / "info.json").read_text())["total_episodes"] == 2
    assert main(["import", str(le), str(back), "--format", "lerobot"]) == 0
    assert "imported 2 episodes (15 frames, 30 fps)" in capsys.readouterr().out
    src, got = EpisodeStore.open(robolearn_store), EpisodeStore.open(back)
    for e_src, e_got in ((0, 0), (2, 1)):
        a, b = src.read_episode(e_src), got.read_episode(e_got)
        for key in a:
            np.testing.assert_array_equal(b[key], a[key], err_msg=key)
    assert main(["import", str(le), str(back), "--format", "lerobot"]) == 2
    assert "already holds a store" in capsys.readouterr().err


# ---------------------------------------------------------------------- HDF5: ACT / ALOHA
def _write_aloha(folder: Path, *, compress: bool, lengths: tuple[int, ...] = (10, 7, 12)) -> dict:
    """ACT-style episode files, as ALOHA's recorder writes them; returns what was written."""
    folder.mkdir()
    rng = np.random.default_rng(11)
    written: dict[str, list[np.ndarray]] = {"qpos": [], "qvel": [], "action": [], "cam_high": []}
    for e, n in enumerate(lengths):
        qpos = rng.normal(0, 1, (n, 14))
        qvel = rng.normal(0, 1, (n, 14))
        action = rng.normal(0, 1, (n, 14)).astype(np.float32)
        frames = np.stack([_camera(7 * e + i, 10) for i in range(n)])
        with h5py.File(folder / f"episode_{e}.hdf5", "w") as f:
            f.attrs["sim"] = True
            f.attrs["compress"] = compress
            obs = f.create_group("observations")
            obs["qpos"], obs["qvel"] = qpos, qvel
            f["action"] = action
            if compress:
                encoded = [
                    cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 50])[1] for img in frames
                ]
                padded = max(len(b) for b in encoded) + 17
                rows = np.zeros((n, padded), dtype=np.uint8)
                for i, b in enumerate(encoded):
                    rows[i, : len(b)] = b.reshape(-1)
                obs.create_dataset("images/cam_high", data=rows, chunks=(1, padded))
                f["compress_len"] = np.array([[len(b) for b in encoded]], dtype=np.float64)
                # what ACT's loader gets back from the padded rows
                frames = np.stack([cv2.imdecode(r, cv2.IMREAD_COLOR) for r in rows])
            else:
                obs.create_dataset("images/cam_high", data=frames, chunks=(1, H, W, 3))
        written["qpos"].append(qpos)
        written["qvel"].append(qvel)
        written["action"].append(action)
        written["cam_high"].append(frames)
    return {k: np.concatenate(v) for k, v in written.items()}


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "jpeg"])
def test_aloha_folder_imports_every_frame(tmp_path: Path, compress: bool) -> None:
    written = _write_aloha(tmp_path / "act", compress=compress)
    path = import_aloha(tmp_path / "act", tmp_path / "act.zarr", HDF5ImportConfig(fps=50))
    store = EpisodeStore.open(path)
    assert store.fps == 50.0 and set(store.spec) == {"state", "qvel", "cam_high", "action"}
    np.testing.assert_array_equal(store.episode_ends, [10, 17, 29])
    np.testing.assert_array_equal(store.read("state", 0, 29), written["qpos"])
    np.testing.assert_array_equal(store.read("qvel", 0, 29), written["qvel"])
    np.testing.assert_array_equal(store.read("action", 0, 29), written["action"])
    np.testing.assert_array_equal(store.read("cam_high", 0, 29), written["cam_high"])
    assert store.spec["state"].names == tuple(f"{j}.pos" for j in ALOHA_JOINTS)
    assert store.spec["action"].representation == "joint_position"
    assert store.spec["action"].dtype == "float32" and store.spec["state"].dtype == "float64"
    ts = np.concatenate([np.arange(n) / 50 for n in (10, 7, 12)])
    np.testing.assert_array_equal(store.read("timestamp", 0, 29), ts)
    assert [ep.extra for ep in store.episodes()][1] == {
        "source_file": "episode_1.hdf5",
        "sim": True,
    }
    assert store.user_attrs["source"]["format"] == "aloha-hdf5"


def test_aloha_episodes_sort_naturally_and_subset(tmp_path: Path) -> None:
    written = _write_aloha(tmp_path / "act", compress=False, lengths=(3, 4, 5))
    # rename episode_2 to episode_10: natural order keeps it last
    (tmp_path / "act" / "episode_2.hdf5").rename(tmp_path / "act" / "episode_10.hdf5")
    config = HDF5ImportConfig(
        fps=50, episodes=[2, 0], task="fold the towel", drop=["observations/qvel"]
    )
    store = EpisodeStore.open(import_aloha(tmp_path / "act", tmp_path / "s.zarr", config))
    assert "qvel" not in store.spec
    np.testing.assert_array_equal(store.episode_ends, [5, 8])
    np.testing.assert_array_equal(store.read("state", 0, 5), written["qpos"][7:12])
    np.testing.assert_array_equal(store.read("state", 5, 8), written["qpos"][0:3])
    assert [ep.task for ep in store.episodes()] == ["fold the towel"] * 2
    assert store.episode(0).extra["source_file"] == "episode_10.hdf5"


def test_aloha_broken_inputs_are_refused_and_leave_nothing(tmp_path: Path) -> None:
    _write_aloha(tmp_path / "act", compress=True)
    dest = tmp_path / "out" / "act.zarr"
    with pytest.raises(InteropError, match=r"does not say its frame rate; pass --fps"):
        import_aloha(tmp_path / "act", dest)
    with pytest.raises(InteropError, match="does not exist"):
        import_aloha(tmp_path / "nope", dest, HDF5ImportConfig(fps=50))
    with h5py.File(tmp_path / "act" / "episode_0.hdf5", "a") as f:
        f["base_action"] = np.zeros((10, 2))
    with pytest.raises(InteropError, match=r"episode_0.hdf5:/base_action .*--drop base_action"):
        import_aloha(tmp_path / "act", dest, HDF5ImportConfig(fps=50))
    config = HDF5ImportConfig(fps=50, episodes=[0], drop=["/base_action"])
    assert EpisodeStore.open(import_aloha(tmp_path / "act", dest, config)).num_frames == 10
    rmtree(dest.parent)
    with h5py.File(tmp_path / "act" / "episode_0.hdf5", "a") as f:
        del f["base_action"]
    with h5py.File(tmp_path / "act" / "episode_1.hdf5", "a") as f:
        del f["action"]
        f["action"] = np.zeros((6, 14), dtype=np.float32)  # one row short
    with pytest.raises(
        InteropError, match=r"episode_1.hdf5: /action has 6 rows but /observations/qpos has 7"
    ):
        import_aloha(tmp_path / "act", dest, HDF5ImportConfig(fps=50))
    with h5py.File(tmp_path / "act" / "episode_1.hdf5", "a") as f:
        del f["action"]
    with pytest.raises(InteropError, match=r"episode_1.hdf5 has no /action"):
        import_aloha(tmp_path / "act", dest, HDF5ImportConfig(fps=50))
    with pytest.raises(InteropError, match=r"episode_1.hdf5 has no /action"):
        import_aloha(tmp_path / "act" / "episode_1.hdf5", dest, HDF5ImportConfig(fps=50))
    # damage found only while writing (a JPEG of episode 2 is garbage), after episodes 0 and 1
    # are committed in the staging store: still nothing at the destination
    (tmp_path / "act" / "episode_1.hdf5").unlink()
    with h5py.File(tmp_path / "act" / "episode_2.hdf5", "a") as f:
        f["observations/images/cam_high"][5] = 7
    with pytest.raises(
        InteropError, match=r"episode_2.hdf5:/observations/images/cam_high.*could not be decoded"
    ):
        import_aloha(tmp_path / "act", dest, HDF5ImportConfig(fps=50))
    assert not (tmp_path / "out").exists()  # the parent it made is gone too
    assert _leftovers(tmp_path) == []


def test_killed_import_leaves_no_store_at_the_destination(tmp_path: Path) -> None:
    """SIGKILL in the middle of an import: the destination never looks like a store."""
    _write_aloha(tmp_path / "act", compress=False)
    script = textwrap.dedent(
        f"""
        import os, signal
        from robolearn.data.interop.hdf5 import HDF5ImportConfig, import_aloha

        def progress(done, total):
            if done > 10:  # episode 0 (10 frames) is committed in the staging store
                os.kill(os.getpid(), signal.SIGKILL)

        import_aloha({str(tmp_path / "act")!r}, {str(tmp_path / "act.zarr")!r},
                     HDF5ImportConfig(fps=50), progress=progress)
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert run.returncode == -9, run.stderr.decode()
    assert not (tmp_path / "act.zarr").exists()
    staged = _leftovers(tmp_path)
    assert len(staged) == 1 and staged[0].startswith(".act.zarr.importing-")

    # an interrupt we can catch (Ctrl-C) cleans up after itself
    def interrupt(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        import_aloha(
            tmp_path / "act", tmp_path / "b.zarr", HDF5ImportConfig(fps=50), progress=interrupt
        )
    assert not (tmp_path / "b.zarr").exists() and _leftovers(tmp_path) == staged


def test_cli_imports_aloha_and_reports_errors(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    written = _write_aloha(tmp_path / "act", compress=True)
    args = ["import", str(tmp_path / "act"), str(tmp_path / "a.zarr"), "--format", "aloha-hdf5"]
    assert main(args) == 2
    assert "pass --fps N" in capsys.readouterr().err
    assert main([*args, "--fps", "50", "--episodes", "1-2", "--task", "stack"]) == 0
    assert "imported 2 episodes (19 frames, 50 fps)" in capsys.readouterr().out
    store = EpisodeStore.open(tmp_path / "a.zarr")
    np.testing.assert_array_equal(store.read("cam_high", 0, 19), written["cam_high"][10:])
    assert (
        main(
            [
                "import",
                str(tmp_path / "act"),
                str(tmp_path / "b.zarr"),
                "--format",
                "robomimic-hdf5",
            ]
        )
        == 2
    )
    assert "is a folder; a robomimic dataset is one .hdf5 file" in capsys.readouterr().err


# ---------------------------------------------------------------------- HDF5: robomimic
def _write_robomimic(path: Path, lengths: tuple[int, ...] = (8, 13, 5)) -> dict:
    rng = np.random.default_rng(5)
    written: dict[str, list[np.ndarray]] = {
        "robot0_eef_pos": [],
        "robot0_joint_pos": [],
        "agentview": [],
        "action": [],
    }
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps(
            {"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 20}}
        )
        for d, n in enumerate(lengths):
            demo = data.create_group(f"demo_{d}")
            demo.attrs["num_samples"] = n
            values = {
                "robot0_eef_pos": rng.normal(0, 1, (n, 3)),
                "robot0_joint_pos": rng.normal(0, 1, (n, 7)),
                "agentview": np.stack([_camera(5 * d + i, 20) for i in range(n)]),
                "action": rng.uniform(-1, 1, (n, 7)),
            }
            demo["obs/robot0_eef_pos"] = values["robot0_eef_pos"]
            demo["obs/robot0_joint_pos"] = values["robot0_joint_pos"]
            demo["obs/agentview_image"] = values["agentview"]
            demo["actions"] = values["action"]
            demo["rewards"] = np.zeros(n)
            demo["next_obs/robot0_eef_pos"] = values["robot0_eef_pos"]
            for k, v in values.items():
                written[k].append(v)
        f["mask/valid"] = np.array([b"demo_1"])
    return {k: np.concatenate(v) for k, v in written.items()}


def test_robomimic_file_imports_every_frame(tmp_path: Path) -> None:
    written = _write_robomimic(tmp_path / "lift.hdf5")
    store = EpisodeStore.open(import_robomimic(tmp_path / "lift.hdf5", tmp_path / "lift.zarr"))
    assert store.fps == 20.0
    assert set(store.spec) == {"robot0_eef_pos", "robot0_joint_pos", "agentview", "action"}
    assert store.spec["agentview"].kind == "image" and store.spec["action"].representation is None
    np.testing.assert_array_equal(store.episode_ends, [8, 21, 26])
    for key, values in written.items():
        np.testing.assert_array_equal(store.read(key, 0, 26), values, err_msg=key)
    np.testing.assert_array_equal(
        store.read("timestamp", 0, 26), np.concatenate([np.arange(n) / 20 for n in (8, 13, 5)])
    )
    assert [ep.task for ep in store.episodes()] == ["Lift"] * 3
    assert store.user_attrs["source"]["env_args"]["env_name"] == "Lift"
    valid = EpisodeStore.open(
        import_robomimic(
            tmp_path / "lift.hdf5",
            tmp_path / "valid.zarr",
            HDF5ImportConfig(filter_key="valid"),
        )
    )
    np.testing.assert_array_equal(valid.read("action", 0, 13), written["action"][8:21])


def test_robomimic_broken_inputs_are_refused(tmp_path: Path) -> None:
    _write_robomimic(tmp_path / "lift.hdf5")
    dest = tmp_path / "x.zarr"
    with h5py.File(tmp_path / "lift.hdf5", "a") as f:
        del f["data/demo_2/obs/robot0_joint_pos"]
        f["data/demo_0/obs/robot0_eye_in_hand_depth"] = np.zeros((8, H, W, 1), dtype=np.float32)
    with pytest.raises(
        InteropError, match=r"robot0_eye_in_hand_depth.*--drop robot0_eye_in_hand_depth"
    ):
        import_robomimic(tmp_path / "lift.hdf5", dest)
    config = HDF5ImportConfig(drop=["robot0_eye_in_hand_depth"])
    with pytest.raises(InteropError, match=r"data/demo_2 has no obs/robot0_joint_pos"):
        import_robomimic(tmp_path / "lift.hdf5", dest, config)
    with h5py.File(tmp_path / "other.hdf5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(InteropError, match="has no 'data' group"):
        import_robomimic(tmp_path / "other.hdf5", dest)
    assert not dest.exists() and _leftovers(tmp_path) == []
    # what is left imports once the broken demo is left out
    config.episodes = [0, 1]
    store = EpisodeStore.open(import_robomimic(tmp_path / "lift.hdf5", dest, config))
    assert store.num_episodes == 2


def test_hdf5_import_does_not_load_lerobot(tmp_path: Path) -> None:
    """The HDF5 importers never import lerobot (it is heavy, and has Hub code paths)."""
    script = textwrap.dedent(
        """
        import sys
        import robolearn.data.interop.hdf5, robolearn.data.interop.cli
        assert "lerobot" not in sys.modules and "huggingface_hub" not in sys.modules
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, timeout=120, env=os.environ
    )
    assert run.returncode == 0, run.stderr.decode()
