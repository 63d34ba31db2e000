"""Dataset tools: info figures, merge, filter and verify (with real damage to find)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from robolearn.data.store import EpisodeStore
from robolearn.data.timing import analyse, stale_frames
from robolearn.data.tools import (
    copy_episodes,
    parse_episode_list,
    select_episodes,
    store_info,
    verify_store,
)
from robolearn.errors import SpecError, StoreError


def test_timing_analysis_counts_gaps_and_dropped_frames() -> None:
    t = np.arange(100) / 50.0
    t[60:] += 0.06  # three frames' worth of silence
    timing = analyse(t, 50)
    assert timing.gaps == 1 and timing.dropped == 3
    assert timing.real_fps == pytest.approx(99 / (t[-1] - t[0]))
    assert timing.period_max_ms == pytest.approx(80.0)
    assert analyse(np.arange(10) / 50, 50).dropped == 0
    assert stale_frames(np.array([0.0, 0.1, 0.1, 0.2, 0.2, 0.2])) == 3


def test_info_reports_measured_rate_and_drops(sample_store) -> None:
    path = sample_store(episodes=3, frames=60, fps=20.0, drop_every=20, codecs={"wrist": "jpeg:90"})
    info = store_info(EpisodeStore.open(path))
    assert (info.episodes, info.frames, info.nominal_fps) == (3, 180, 20.0)
    # every 20th period is doubled: 3 drops per episode and a real rate below nominal
    assert info.dropped_frames == 6 and info.gaps == 6
    assert info.per_episode[0]["dropped"] == 2
    assert 18.0 < info.real_fps < 20.0
    assert info.per_episode[2]["success"] is False and info.per_episode[0]["task"] == "task0"
    assert info.bytes_on_disk > 0 and info.per_key["wrist"]["codec"] == "jpeg:90"
    assert info.per_key["wrist"]["ratio"] > info.per_key["top"]["ratio"]
    assert len(info.per_key["state"]["mean"]) == 14


def test_merge_keeps_every_frame_time_and_label(sample_store, tmp_path: Path) -> None:
    a = EpisodeStore.open(sample_store(episodes=2, frames=[10, 15], seed=1))
    b = EpisodeStore.open(sample_store(episodes=1, frames=[12], seed=2, drop_every=4))
    out = copy_episodes([(a, [0, 1]), (b, [0])], tmp_path / "merged.zarr")
    out.close()
    merged = EpisodeStore.open(tmp_path / "merged.zarr")
    assert merged.num_episodes == 3 and merged.num_frames == 37
    pairs = [(a, 0, 0), (a, 1, 1), (b, 0, 2)]
    for src, e, m in pairs:
        want, got = src.read_episode(e), merged.read_episode(m)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
        np.testing.assert_array_equal(merged.capture_times(m, "top"), src.capture_times(e, "top"))
        si, mi = src.episode(e), merged.episode(m)
        assert (si.task, si.success, si.tags, si.extra, si.start_time) == (
            mi.task,
            mi.success,
            mi.tags,
            mi.extra,
            mi.start_time,
        )


def test_merge_keeps_the_attributes_its_sources_share(sample_store, tmp_path: Path) -> None:
    # `recording` tells train and eval which simulation made the data: a merge must keep it
    a = EpisodeStore.open(sample_store(episodes=1, frames=[10], seed=1), "a")
    b = EpisodeStore.open(sample_store(episodes=1, frames=[10], seed=2), "a")
    recording = {"robot": {"name": "sim_panda"}, "task": {"name": "pick_place"}}
    a.set_attrs(recording=recording, operator="ann")
    b.set_attrs(recording=recording, operator="bob")
    copy_episodes([(a, [0]), (b, [0])], tmp_path / "merged.zarr").close()
    merged = EpisodeStore.open(tmp_path / "merged.zarr", "r")
    assert merged.user_attrs == {"recording": recording}


def test_merge_refuses_different_specs_and_rates(sample_store, tmp_path: Path) -> None:
    a = EpisodeStore.open(sample_store(episodes=1))
    other = EpisodeStore.open(sample_store(episodes=1, cameras={"top": (24, 32)}))
    with pytest.raises(SpecError, match="wrist"):
        copy_episodes([(a, [0]), (other, [0])], tmp_path / "x.zarr")
    fast = EpisodeStore.open(sample_store(episodes=1, fps=50.0))
    with pytest.raises(SpecError, match="recorded at 50 fps"):
        copy_episodes([(a, [0]), (fast, [0])], tmp_path / "y.zarr")
    with pytest.raises(StoreError, match="also a source"):
        copy_episodes([(a, [0])], a.path, overwrite=True)
    assert EpisodeStore.open(a.path).num_episodes == 1


def test_filter_selects_by_index_success_and_task(sample_store) -> None:
    store = EpisodeStore.open(sample_store(episodes=6, frames=5))
    assert select_episodes(store, success=False) == [2, 5]
    assert select_episodes(store, task="task1") == [1, 3, 5]
    assert select_episodes(store, episodes=[0, 1, 3], task="task1", success=True) == [1, 3]
    assert parse_episode_list("0, 2,5-7") == [0, 2, 5, 6, 7]
    with pytest.raises(ValueError, match="'x'"):
        parse_episode_list("1,x")
    with pytest.raises(IndexError):
        select_episodes(store, episodes=[10])


def test_verify_passes_a_healthy_store_and_reports_real_damage(sample_store) -> None:
    path = sample_store(episodes=3, frames=40)
    assert verify_store(path).ok
    # Damage 1: a shard file truncated (a disk that lost the end of a file).
    shard = next((path / "data" / "top" / "c").rglob("0"))
    for f in (path / "data" / "top" / "c").rglob("*"):
        if f.is_file():
            shard = f
            break
    shard.write_bytes(shard.read_bytes()[:-50])
    # Damage 2: a state chunk file deleted.
    chunk = next(f for f in (path / "data" / "state" / "c").rglob("*") if f.is_file())
    os.remove(chunk)
    report = verify_store(path)
    assert not report.ok
    text = "\n".join(report.problems)
    assert "top" in text and "cannot be read" in text
    assert "state: chunk files for frames starting at [0] are missing" in text
    # Damage 3: metadata that is not a store at all.
    (path / "zarr.json").write_text(
        json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}})
    )
    assert "not a robolearn episode store" in verify_store(path).problems[0]


def test_verify_notes_an_unfinished_episode_left_by_a_killed_writer(tmp_path: Path) -> None:
    path = tmp_path / "u.zarr"
    code = textwrap.dedent(
        """
        import sys, time, numpy as np
        from robolearn.data.store import EpisodeStore
        from robolearn.data.synthetic import sample_spec
        spec = sample_spec({"cam": (8, 8)})
        store = EpisodeStore.create(sys.argv[1], spec, 10)
        w = store.writer()
        frame = {k: np.zeros(f.shape, f.dtype) for k, f in spec.items()}
        w.start_episode()
        for i in range(3):
            w.add_frame(frame, timestamp=i)
        w.save()
        w.start_episode()
        for i in range(600):  # more than a shard: frames reach the disk before any commit
            w.add_frame(frame, timestamp=i)
        time.sleep(1.0)
        print("flushed", flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "flushed"
    child.kill()
    child.wait()
    report = verify_store(path)
    assert report.ok and report.frames == 3
    assert any("past the last committed episode" in n for n in report.notes), report.notes
    reopened = EpisodeStore.open(path, "a")
    assert reopened.recovery.cut_frames >= 256
    reopened.close()
    assert verify_store(path).notes == []
