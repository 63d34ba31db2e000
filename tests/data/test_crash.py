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

from robolearn.data.procwriter import process_writer_supported
from robolearn.data.store import EpisodeStore
from robolearn.data.tools import verify_store
from robolearn.errors import StoreError

sys.path.insert(0, str(Path(__file__).parent))
from crash_writer import CODECS, FPS, SPEC, episode_content

CHILD = Path(__file__).with_name("crash_writer.py")
KILLS = 24
PROCESS_KILLS = 12


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


def wait_for_save(child: subprocess.Popen[str], said: list[str]) -> None:
    """Read the child's lines until it reports a committed episode (so every run makes progress)."""
    while True:
        line = child.stdout.readline()
        assert line, child.stderr.read()
        said.append(line)
        if line.startswith("saved"):
            return


def check_reported(child: subprocess.Popen[str], said: list[str], n: int) -> None:
    """Every episode the killed child saw `save()` return for must be in the store."""
    said += child.stdout.read().splitlines()
    saved = [int(line.split()[1]) for line in said if line.startswith("saved")]
    assert not saved or n > max(saved), f"episode {max(saved)} was saved, yet the store has {n}"


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
        said: list[str] = []
        if kill % 4 == 3:
            # Sometimes kill early: during start-up or while the store is being repaired.
            time.sleep(rng.uniform(0.0, 1.0))
        else:
            line = child.stdout.readline()
            assert line.startswith("ready"), child.stderr.read()
            if kill % 4 == 1:  # a quarter of the runs commit an episode, however slow the machine
                wait_for_save(child, said)
            time.sleep(rng.uniform(0.0, 0.6))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL, child.stderr.read()
        n = check_committed(path, verified)
        check_reported(child, said, n)
        assert not counts or n >= counts[-1], "a committed episode disappeared"
        counts.append(n)
        reader = EpisodeStore.open(path, "r")
        cut_reports += bool(reader.recovery.cut_frames)

    # Most kills must land mid-episode, or the test proves little.
    assert cut_reports >= KILLS // 3, f"only {cut_reports} kills caught an episode in flight"
    assert counts[-1] >= KILLS // 4
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


def _gone(pid: int) -> bool:
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()  # unreaped orphan
    except FileNotFoundError:
        return True


def _open_when_free(path: Path, timeout: float = 30.0) -> EpisodeStore:
    """Open for appending once no (orphaned) writer process holds the store any more."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return EpisodeStore.open(path, "a")
        except StoreError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.skipif(not process_writer_supported(), reason="needs Linux")
def test_process_writer_sigkill_of_either_process_never_harms_committed_episodes(
    tmp_path: Path,
) -> None:
    """SIGKILL the recording process or its writer process at random moments."""
    path = tmp_path / "crash.zarr"
    EpisodeStore.create(path, SPEC, FPS, codecs=CODECS).close()
    rng = np.random.default_rng(11)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(CHILD.parent), *sys.path])}
    verified: dict[int, int] = {}
    counts = []
    cut_reports = 0
    for kill in range(PROCESS_KILLS):
        parent = subprocess.Popen(
            [sys.executable, str(CHILD), str(path), "process"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        line = parent.stdout.readline()
        assert line.startswith("ready"), parent.stderr.read()
        writer = int(line.split()[2])
        said: list[str] = []
        if kill % 4 in (1, 2):  # half the runs commit an episode, however slow the machine
            wait_for_save(parent, said)
        time.sleep(rng.uniform(0.0, 0.8))
        if kill % 2:  # the writer process: the recording process must say so and stop
            os.kill(writer, signal.SIGKILL)
            parent.wait(timeout=60)
            err = parent.stderr.read()
            assert parent.returncode == 1 and "killed by SIGKILL" in err, err
        else:  # the recording process: its writer process must notice, drop the episode, exit
            parent.send_signal(signal.SIGKILL)
            parent.wait(timeout=30)
            assert parent.returncode == -signal.SIGKILL
            deadline = time.monotonic() + 30
            while not _gone(writer):
                assert time.monotonic() < deadline, "the orphaned writer process did not exit"
                time.sleep(0.02)
        with _open_when_free(path) as store:  # repairs what a killed writer process left
            cut_reports += bool(store.recovery.cut_frames)
        n = check_committed(path, verified)
        check_reported(parent, said, n)
        assert not counts or n >= counts[-1], "a committed episode disappeared"
        counts.append(n)
    # killed writer processes leave their episode's frames for the next open to cut (a killed
    # recording process's writer drops them itself)
    assert cut_reports >= PROCESS_KILLS // 4, f"only {cut_reports} kills caught an episode"
    assert counts[-1] >= PROCESS_KILLS // 2
    report = verify_store(path)
    assert report.ok, report.problems
    assert not list(path.rglob("*.partial"))
