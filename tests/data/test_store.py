"""The episode store: layout, metadata, reading, bad input and remote (fsspec) reading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import fsspec
import numpy as np
import pytest
import zarr

from robolearn.data.store import FORMAT_VERSION, EpisodeStore
from robolearn.data.synthetic import SyntheticArm, sample_spec
from robolearn.errors import FormatVersionError, SpecError, StoreError


def test_layout_and_metadata_of_a_fresh_store(sample_store) -> None:
    path = sample_store(episodes=3, frames=[30, 45, 12], fps=20.0)
    root = zarr.open_group(str(path), mode="r")
    attrs = root.attrs["robolearn"]
    assert attrs["format"] == "robolearn.episodes"
    assert attrs["format_version"] == FORMAT_VERSION
    assert attrs["fps"] == 20.0
    assert set(attrs["features"]) == {"state", "action", "top", "wrist"}
    assert attrs["features"]["action"]["low"] == [-3.0] * 14
    np.testing.assert_array_equal(root["meta/episode_ends"][:], [30, 75, 87])
    assert root["data/top"].shape == (87, 24, 32, 3)
    assert root["data/top"].chunks == (1, 24, 32, 3)
    assert root["time/top"].shape == (87,)
    assert "action" not in root["time"]

    store = EpisodeStore.open(path)
    assert store.num_episodes == 3 and store.num_frames == 87
    assert store.bounds(1) == (30, 75)
    ep = store.episode(2)
    assert (ep.task, ep.success, ep.tags, ep.extra) == (
        "task0",
        False,
        ("sample",),
        {"operator": "test"},
    )
    assert ep.length == 12
    assert store.episode(1).success is True
    assert abs(ep.start_time - store.episode(0).start_time) < 60
    data = store.read_episode(1)
    assert data["state"].shape == (45, 14) and data["top"].dtype == np.uint8
    np.testing.assert_allclose(data["timestamp"][:3], [0, 0.05, 0.1])


def test_frames_read_back_exactly_as_written(tmp_path: Path) -> None:
    spec = sample_spec({"cam": (20, 30)})
    arm = SyntheticArm(spec, seed=3)
    written = [arm.frame(i / 10, i) for i in range(50)]
    with EpisodeStore.create(tmp_path / "s.zarr", spec, 10) as store, store.writer() as w:
        w.start_episode()
        for i, f in enumerate(written[:20]):
            w.add_frame(f, timestamp=100 + i / 10)
        w.save()
        w.start_episode()
        for i, f in enumerate(written[20:]):
            w.add_frame(f, timestamp=7 + i / 10)
        w.save()
    store = EpisodeStore.open(tmp_path / "s.zarr")
    for key in spec:
        np.testing.assert_array_equal(store.read(key, 0, 50), np.stack([f[key] for f in written]))
    # random access by global frame index, in any order and with repeats
    idx = np.array([[49, 3], [3, 20]])
    np.testing.assert_array_equal(
        store.read_frames("cam", idx), np.stack([f["cam"] for f in written])[idx]
    )
    np.testing.assert_array_equal(
        store.read_frames("state", idx), np.stack([f["state"] for f in written])[idx]
    )
    # timestamps are relative to each episode's first frame
    np.testing.assert_allclose(store.read_episode(1)["timestamp"][:2], [0, 0.1])


def test_capture_times_are_kept_per_key(tmp_path: Path) -> None:
    spec = sample_spec({"cam": (8, 8)})
    arm = SyntheticArm(spec)
    with EpisodeStore.create(tmp_path / "s.zarr", spec, 10) as store, store.writer() as w:
        w.start_episode()
        for i in range(5):
            w.add_frame(
                arm.frame(0, i), timestamp=50 + i * 0.1, capture_times={"cam": 50 + i * 0.1 - 0.03}
            )
        w.save()
    store = EpisodeStore.open(tmp_path / "s.zarr")
    np.testing.assert_allclose(store.capture_times(0, "cam"), np.arange(5) * 0.1 - 0.03)
    np.testing.assert_allclose(store.capture_times(0, "state"), np.arange(5) * 0.1)


def test_create_refuses_to_clobber_and_validates(tmp_path: Path, sample_store) -> None:
    path = sample_store(episodes=1)
    with pytest.raises(StoreError, match="already holds a store"):
        EpisodeStore.create(path, sample_spec(), 10)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("mine")
    with pytest.raises(StoreError, match="not empty"):
        EpisodeStore.create(tmp_path / "full", sample_spec(), 10)
    assert (tmp_path / "full" / "x.txt").read_text() == "mine"
    with pytest.raises(SpecError, match="only images can use jpeg"):
        EpisodeStore.create(tmp_path / "a.zarr", sample_spec(), 10, codecs={"state": "jpeg"})
    with pytest.raises(SpecError, match="not in the spec"):
        EpisodeStore.create(tmp_path / "b.zarr", sample_spec(), 10, codecs={"nope": "jpeg"})
    with pytest.raises(SpecError, match="unknown"):
        EpisodeStore.create(tmp_path / "c.zarr", sample_spec(), 10, codecs={"top": "png"})
    with pytest.raises(SpecError, match="fps"):
        EpisodeStore.create(tmp_path / "d.zarr", sample_spec(), 0)


def test_opening_what_is_not_a_store_says_so(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        EpisodeStore.open(tmp_path / "missing.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match=r"no zarr\.json"):
        EpisodeStore.open(tmp_path / "plain")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").attrs["x"] = 1
    with pytest.raises(StoreError, match="not a robolearn episode store"):
        EpisodeStore.open(tmp_path / "other.zarr")
    (tmp_path / "junk.zarr").mkdir()
    (tmp_path / "junk.zarr" / "zarr.json").write_text("{not json")
    with pytest.raises(StoreError):
        EpisodeStore.open(tmp_path / "junk.zarr")


def test_newer_format_version_is_refused_and_left_alone(sample_store) -> None:
    path = sample_store(episodes=1)
    meta_file = path / "zarr.json"
    doc = json.loads(meta_file.read_text())
    doc["attributes"]["robolearn"]["format_version"] = FORMAT_VERSION + 1
    meta_file.write_text(json.dumps(doc))
    before = meta_file.read_bytes()
    for mode in ("r", "a"):
        with pytest.raises(FormatVersionError, match=r"newer.*upgrade robolearn"):
            EpisodeStore.open(path, mode)
    assert meta_file.read_bytes() == before


def test_one_writer_at_a_time(sample_store) -> None:
    path = sample_store(episodes=1)
    first = EpisodeStore.open(path, "a")
    try:
        with pytest.raises(StoreError, match="open for writing in another process"):
            EpisodeStore.open(path, "a")
        EpisodeStore.open(path, "r")  # readers are always welcome
    finally:
        first.close()
    EpisodeStore.open(path, "a").close()


def test_read_only_store_refuses_writers(sample_store) -> None:
    store = EpisodeStore.open(sample_store(episodes=1), "r")
    with pytest.raises(StoreError, match="read-only"):
        store.writer()


def test_index_errors_name_the_limits(sample_store) -> None:
    store = EpisodeStore.open(sample_store(episodes=2))
    with pytest.raises(IndexError, match="episode 5 does not exist; the store has 2"):
        store.episode(5)
    with pytest.raises(IndexError, match="outside"):
        store.read("state", 0, 10_000)
    with pytest.raises(KeyError, match="no key 'gripper'"):
        store.read("gripper", 0, 1)
    assert store.episode(-1).index == 1


def test_append_mode_resumes_an_existing_store(sample_store) -> None:
    path = sample_store(episodes=2, frames=10)
    store = EpisodeStore.open(path, "a")
    arm = SyntheticArm(store.spec, seed=9)
    extra = [arm.frame(i / 20, i) for i in range(7)]
    with store, store.writer() as w:
        w.start_episode(task="resumed")
        for i, f in enumerate(extra):
            w.add_frame(f, timestamp=i / 20)
        w.save()
    store = EpisodeStore.open(path)
    assert store.num_episodes == 3 and store.episode(2).task == "resumed"
    np.testing.assert_array_equal(store.read_episode(2)["top"], np.stack([f["top"] for f in extra]))
    assert store.read_episode(0)["state"].shape == (10, 14)


def test_remote_store_reads_through_fsspec(sample_store) -> None:
    path = sample_store(episodes=2, frames=15, codecs={"wrist": "jpeg:80"})
    local = EpisodeStore.open(path)
    fs = fsspec.filesystem("memory")
    for file in path.rglob("*"):
        if file.is_file():
            fs.pipe(f"/remote/demo.zarr/{file.relative_to(path).as_posix()}", file.read_bytes())
    try:
        remote = EpisodeStore.open("memory://remote/demo.zarr")
        assert remote.num_episodes == 2
        for key in local.spec:
            np.testing.assert_array_equal(remote.read(key, 0, 30), local.read(key, 0, 30))
        np.testing.assert_array_equal(
            remote.read_frames("top", np.array([29, 2])),
            local.read_frames("top", np.array([29, 2])),
        )
        with pytest.raises(StoreError, match="remote stores open read-only"):
            EpisodeStore.open("memory://remote/demo.zarr", "a")
    finally:
        fs.rm("/remote", recursive=True)


def test_store_copied_elsewhere_still_opens(sample_store, tmp_path: Path) -> None:
    path = sample_store(episodes=2)
    shutil.copytree(path, tmp_path / "copy.zarr")
    assert EpisodeStore.open(tmp_path / "copy.zarr").num_frames == 80
