"""Crash safety: a writer killed with SIGKILL at random moments loses at most the episode in flight."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from robolearn.data.store import EpisodeStore
from robolearn.data.tools import verify_store

sys.path.insert(0, str(Path(__file__).parent))
from crash_writer import CODECS, FPS, SPEC, episode_content

CHILD = Path(__file__).with_name("crash_writer.py")
KILLS = 36


def check_committed(path: Path, verified: dict[int, int]) -> int:
    """Compare every committed episode with what it must hold; return the episode count."""
    store = EpisodeStore.open(path, "r")
    n = store.num_episodes
    for k in range(n):
        want = episode_content(k)
        got = store.read_episode(k)
        info = store.episode(k)
        assert info.task == f"episode {k}" and info.success is bool(k % 2), f"episode {k} metadata"
        for key in ("state", "action", "cam", "timestamp"):
            assert np.array_equal(got[key], want[key]), f"episode {k} key {key} differs"
        assert np.array_equal(got["wrist"], want["wrist_stored"]), f"episode {k} jpeg frames differ"
        verified[k] = info.length
    return n


@pytest.mark.slow
def test_sigkill_at_random_moments_never_harms_committed_episodes(tmp_path: Path) -> None:
    path = tmp_path / "crash.zarr"
    EpisodeStore.create(path, SPEC, FPS, codecs=CODECS).close()
    rng = np.random.default_rng(7)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(CHILD.parent), *sys.path])}
    verified: dict[int, int] = {}
    counts = []
    cut_reports = 0
    for kill in range(KILLS):
        child = subprocess.Popen(
            [sys.executable, str(CHILD), str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        if kill % 4 == 3:
            # Sometimes kill early: during start-up or while the store is being repaired.
            time.sleep(rng.uniform(0.0, 1.0))
        else:
            line = child.stdout.readline()
            assert line.startswith("ready"), child.stderr.read()
            time.sleep(rng.uniform(0.0, 0.6))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL, child.stderr.read()
        n = check_committed(path, verified)
        assert not counts or n >= counts[-1], "a committed episode disappeared"
        counts.append(n)
        reader = EpisodeStore.open(path, "r")
        cut_reports += bool(reader.recovery.cut_frames)

    # Most kills must land mid-episode, or the test proves little.
    assert cut_reports >= KILLS // 3, f"only {cut_reports} kills caught an episode in flight"
    assert counts[-1] >= 20
    # The store opens for writing, says what it cut, and takes new episodes.
    store = EpisodeStore.open(path, "a")
    assert store.recovery.episodes == counts[-1]
    assert "recovered" in str(store.recovery)
    with store, store.writer() as writer:
        content = episode_content(store.num_episodes)
        writer.start_episode(task=f"episode {store.num_episodes}")
        for i in range(len(content["timestamp"])):
            writer.add_frame(
                {k: content[k][i] for k in SPEC}, timestamp=float(content["timestamp"][i])
            )
        writer.save(success=bool(store.num_episodes % 2))
    assert check_committed(path, verified) == counts[-1] + 1
    report = verify_store(path)
    assert report.ok, report.problems
    assert not list(path.rglob("*.partial"))
