"""EpisodeWriter: bad frames, discard, flat memory and I/O errors reaching the caller."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from robolearn.data.store import EpisodeStore
from robolearn.data.synthetic import SyntheticArm, sample_spec
from robolearn.errors import FrameError, WriterError


@pytest.fixture
def store(tmp_path: Path) -> EpisodeStore:
    s = EpisodeStore.create(tmp_path / "w.zarr", sample_spec({"cam": (16, 16)}), 10)
    yield s
    s.close()


def good_frame() -> dict[str, np.ndarray]:
    return SyntheticArm(sample_spec({"cam": (16, 16)})).frame(0.0, 0)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.pop("state"), r"missing \['state'\]"),
        (lambda f: f.update(gripper=np.zeros(1)), r"unknown key\(s\) \['gripper'\]"),
        (
            lambda f: f.update(state=np.zeros(13)),
            r"state 'state' has shape \(13,\) but the spec says \(14,\)",
        ),
        (
            lambda f: f.update(cam=np.zeros((16, 16, 3), np.float32)),
            "image 'cam' is float32; images are stored as uint8",
        ),
        (lambda f: f.update(cam=np.zeros((16, 15, 3), np.uint8)), r"shape \(16, 15, 3\)"),
        (
            lambda f: f["action"].__setitem__(3, np.nan),
            r"action 'action' has NaN or infinite values in \['joint3.target'\]",
        ),
        (lambda f: f.update(state=np.array(["a"] * 14)), "non-numeric"),
    ],
)
def test_bad_frames_are_refused_and_nothing_is_stored(
    store: EpisodeStore, mutate, message: str
) -> None:
    with store.writer() as w:
        w.start_episode()
        w.add_frame(good_frame(), timestamp=0.0)
        bad = good_frame()
        mutate(bad)
        with pytest.raises(FrameError, match=message):
            w.add_frame(bad, timestamp=0.1)
        assert w.episode_frames == 1
        w.add_frame(good_frame(), timestamp=0.2)
        info = w.save()
    assert info.length == 2
    assert EpisodeStore.open(store.path).num_frames == 2


def test_dtype_and_shape_coercion_is_safe(store: EpisodeStore) -> None:
    frame = good_frame()
    frame["state"] = frame["state"].astype(np.float64).tolist()  # a plain list of floats is fine
    with store.writer() as w:
        w.start_episode()
        w.add_frame(frame, timestamp=0)
        w.save()
    np.testing.assert_allclose(
        EpisodeStore.open(store.path).read("state", 0, 1)[0], frame["state"], rtol=1e-6
    )


def test_order_of_calls_is_enforced(store: EpisodeStore) -> None:
    with store.writer() as w:
        with pytest.raises(WriterError, match="before start_episode"):
            w.add_frame(good_frame())
        with pytest.raises(WriterError, match="no episode in flight"):
            w.save()
        w.start_episode()
        with pytest.raises(WriterError, match="already in flight"):
            w.start_episode()
        with pytest.raises(WriterError, match="no frames"):
            w.save()
        w.add_frame(good_frame(), timestamp=5.0)
        with pytest.raises(FrameError, match="goes back in time"):
            w.add_frame(good_frame(), timestamp=4.0)
        w.discard()
    with pytest.raises(WriterError, match="closed"):
        w.start_episode()


def test_discard_drops_only_the_episode_in_flight(store: EpisodeStore) -> None:
    arm = SyntheticArm(store.spec, seed=1)
    kept = [arm.frame(i / 10, i) for i in range(300)]  # spans several chunks and shards
    with store.writer() as w:
        w.start_episode(task="kept")
        for i, f in enumerate(kept[:150]):
            w.add_frame(f, timestamp=i / 10)
        w.save()
        w.start_episode(task="dropped")
        for i in range(400):
            w.add_frame(arm.frame(99 + i, i), timestamp=i / 10)
        w.discard()
        w.start_episode(task="kept too")
        for i, f in enumerate(kept[150:]):
            w.add_frame(f, timestamp=i / 10)
        w.save()
        assert w.stats.episodes_discarded == 1
    s = EpisodeStore.open(store.path)
    assert [e.task for e in s.episodes()] == ["kept", "kept too"]
    for key in s.spec:
        np.testing.assert_array_equal(s.read(key, 0, 300), np.stack([f[key] for f in kept]))
    assert s.recovery.cut_frames == 0


def test_close_with_an_episode_in_flight_discards_it(store: EpisodeStore) -> None:
    w = store.writer()
    w.start_episode()
    w.add_frame(good_frame(), timestamp=0)
    w.close()
    assert EpisodeStore.open(store.path).num_episodes == 0


def test_long_episode_keeps_memory_flat(tmp_path: Path) -> None:
    """An hour at 50 Hz is 180k frames; memory must not grow with the episode."""
    script = textwrap.dedent(
        """
        import resource, sys, numpy as np
        from robolearn.data.store import EpisodeStore
        from robolearn.data.synthetic import sample_spec
        spec = sample_spec({"cam": (64, 64)})
        store = EpisodeStore.create(sys.argv[1], spec, 50)
        frame = {"state": np.zeros(14, np.float32), "action": np.zeros(14, np.float32),
                 "cam": np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)}
        rss = []
        # A bounded queue: when the disk is slower than the caller, the caller waits.
        with store.writer(max_queue_bytes=32 << 20) as w:
            w.start_episode()
            for i in range(int(sys.argv[2])):
                frame["state"][0] = i
                w.add_frame(frame, timestamp=i / 50)
                if i % 2000 == 1999:
                    rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
            w.save()
        print(rss[1], rss[-1], w.stats.stalls)
        """
    )
    frames = 24_000  # 295 MB of camera data
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "long.zarr"), str(frames)],
        capture_output=True,
        text=True,
        check=True,
        timeout=240,
    )
    early, late, stalls = (int(v) for v in out.stdout.split())
    assert stalls > 0  # the caller outran the disk, so the bound was exercised
    assert (late - early) * 1024 < 60e6, f"peak RSS grew by {(late - early) / 1024:.0f} MB"
    store = EpisodeStore.open(tmp_path / "long.zarr")
    assert store.num_frames == frames
    np.testing.assert_array_equal(
        store.read("state", frames - 3, frames)[:, 0], [frames - 3, frames - 2, frames - 1]
    )


IO_ERROR_SCRIPT = textwrap.dedent(
    """
    import resource, signal, sys, numpy as np
    from robolearn.data.store import EpisodeStore
    from robolearn.errors import WriterError
    store = EpisodeStore.open(sys.argv[1], "a")
    # Files larger than this cannot be written: the kernel answers EFBIG, a real I/O error.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
    rng = np.random.default_rng(0)
    with store.writer() as w:
        w.start_episode(task="too big")
        try:
            for i in range(4000):
                w.add_frame({"state": np.zeros(14, np.float32), "action": np.zeros(14, np.float32),
                             "cam": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)}, timestamp=i / 50)
            w.save()
        except WriterError as e:
            print("WriterError:", e.__cause__.__class__.__name__, e.__cause__)
            sys.exit(3)
    print("no error")
    """
)


def test_io_error_reaches_the_caller_and_committed_episodes_stay(tmp_path: Path) -> None:
    path = tmp_path / "io.zarr"
    spec = sample_spec({"cam": (64, 64)})
    arm = SyntheticArm(spec)
    committed = [arm.frame(i / 50, i) for i in range(100)]
    with EpisodeStore.create(path, spec, 50) as store, store.writer() as w:
        w.start_episode(task="safe")
        for i, f in enumerate(committed):
            w.add_frame(f, timestamp=i / 50)
        w.save()
    out = subprocess.run(
        [sys.executable, "-c", IO_ERROR_SCRIPT, str(path), str(600_000)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 3, out.stdout + out.stderr
    assert "WriterError: OSError" in out.stdout and "File too large" in out.stdout
    store = EpisodeStore.open(path, "a")
    assert store.num_episodes == 1 and store.episode(0).task == "safe"
    for key in spec:
        np.testing.assert_array_equal(
            store.read(key, 0, 100), np.stack([f[key] for f in committed])
        )
    store.close()
    assert not list(path.rglob("*.partial"))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_disk_reaches_the_caller(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True
    ).returncode:
        pytest.skip("this sandbox does not allow mounting a tmpfs")
    try:
        path = mnt / "full.zarr"
        spec = sample_spec({"cam": (64, 64)})
        arm = SyntheticArm(spec)
        with EpisodeStore.create(path, spec, 50) as store, store.writer() as w:
            w.start_episode(task="safe")
            for i in range(20):
                w.add_frame(arm.frame(i / 50, i), timestamp=i / 50)
            w.save()
        out = subprocess.run(
            [sys.executable, "-c", IO_ERROR_SCRIPT, str(path), str(1 << 40)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 3, out.stdout + out.stderr
        assert "No space left on device" in out.stdout
        store = EpisodeStore.open(path)
        assert store.num_episodes == 1 and store.num_frames == 20
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_lossy_frames_of_committed_episodes_are_never_reencoded(tmp_path: Path) -> None:
    """Appending after a reopen or a discard continues a half-full shard; the frames already in
    it must keep their bytes (a decode + encode round trip would degrade JPEG each time)."""
    spec = sample_spec({"cam": (16, 16)})
    arm = SyntheticArm(spec, seed=4)
    path = tmp_path / "jpeg.zarr"
    EpisodeStore.create(path, spec, 10, codecs={"cam": "jpeg:75"}).close()
    first = None
    for session in range(4):
        with EpisodeStore.open(path, "a") as store, store.writer() as w:
            w.start_episode()
            for i in range(7):
                w.add_frame(arm.frame(session + i / 10, i), timestamp=i / 10)
            w.save()
            w.start_episode()
            w.add_frame(arm.frame(99, 0), timestamp=0)
            w.discard()
        stored = EpisodeStore.open(path).read("cam", 0, 7)
        first = stored if first is None else first
        np.testing.assert_array_equal(stored, first)
    shard_file = path / "data" / "cam" / "c" / "0" / "0" / "0" / "0"
    assert shard_file.exists()
