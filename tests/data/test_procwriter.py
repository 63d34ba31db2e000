"""ProcessEpisodeWriter: the thread writer's API and guarantees with the disk work in a child.

Same stored bytes as the thread writer, bad frames refused in the caller, back-pressure,
errors of the child reaching the caller, and kills: the writer process killed mid-episode, the
parent killed mid-episode (the child keeps the store locked until it has dropped the episode
and exited), with the committed episodes intact every time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from robolearn.data.procwriter import ProcessEpisodeWriter, process_writer_supported
from robolearn.data.store import EpisodeStore
from robolearn.data.synthetic import SyntheticArm, sample_spec
from robolearn.data.tools import verify_store
from robolearn.errors import FrameError, StoreError, WriterError

pytestmark = pytest.mark.skipif(not process_writer_supported(), reason="needs Linux")

SPEC = sample_spec({"cam": (48, 64), "wrist": (16, 16)})


@pytest.fixture
def store(tmp_path: Path) -> EpisodeStore:
    s = EpisodeStore.create(tmp_path / "p.zarr", SPEC, 10)
    yield s
    s.close()


def frames(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    arm = SyntheticArm(SPEC, seed=seed)
    return [arm.frame(i / 10, i) for i in range(n)]


def capture_times(i: int) -> dict[str, float]:
    return {"cam": i / 10 - 0.004, "wrist": i / 10 - 0.002}


def write(writer, episodes) -> list:  # type: ignore[no-untyped-def]
    infos = []
    for e, fs in enumerate(episodes):
        writer.start_episode(task=f"task {e}", tags=["t"])
        for i, f in enumerate(fs):
            writer.add_frame(f, timestamp=i / 10, capture_times=capture_times(i))
        infos.append(writer.save(success=e % 2 == 0, extra={"e": e, "arr": np.arange(2)}))
    return infos


def test_stores_exactly_what_the_thread_writer_stores(tmp_path: Path) -> None:
    episodes = [frames(150, seed=1), frames(37, seed=2), frames(260, seed=3)]
    paths = {}
    for mode in ("thread", "process"):
        path = paths[mode] = tmp_path / f"{mode}.zarr"
        with EpisodeStore.create(path, SPEC, 10, codecs={"wrist": "jpeg:80"}) as store:
            writer = store.writer() if mode == "thread" else ProcessEpisodeWriter(store)
            with writer:
                infos = write(writer, episodes)
                # the caller's store object sees what the writer process committed
                assert store.num_episodes == 3 and store.num_frames == 447
                np.testing.assert_array_equal(
                    store.read("state", 187, 190)[:, 0],
                    [episodes[2][i]["state"][0] for i in range(3)],
                )
            assert [i.length for i in infos] == [150, 37, 260]
            assert infos[2].extra == {"e": 2, "arr": [0, 1]} and infos[1].success is False
            assert writer.stats.frames == 447 and writer.stats.episodes_saved == 3
    a, b = EpisodeStore.open(paths["thread"]), EpisodeStore.open(paths["process"])
    assert [e.task for e in a.episodes()] == [e.task for e in b.episodes()]
    for k in range(3):
        ea, eb = a.read_episode(k), b.read_episode(k)
        for key in ea:
            np.testing.assert_array_equal(ea[key], eb[key], err_msg=key)
        for key in ("cam", "wrist", "state"):
            np.testing.assert_array_equal(a.capture_times(k, key), b.capture_times(k, key))
    assert verify_store(paths["process"]).ok


def test_bad_frames_and_wrong_order_are_refused_in_the_caller(store: EpisodeStore) -> None:
    good = frames(3)
    with ProcessEpisodeWriter(store) as w:
        with pytest.raises(WriterError, match="before start_episode"):
            w.add_frame(good[0])
        w.start_episode()
        with pytest.raises(WriterError, match="no frames"):
            w.save()
        w.add_frame(good[0], timestamp=0.0)
        bad = dict(good[1], cam=np.zeros((48, 64, 3), np.float32))
        with pytest.raises(FrameError, match="image 'cam' is float32"):
            w.add_frame(bad, timestamp=0.1)
        with pytest.raises(FrameError, match="missing"):
            w.add_frame({"state": good[1]["state"]}, timestamp=0.1)
        with pytest.raises(FrameError, match="goes back in time"):
            w.add_frame(good[1], timestamp=-1.0)
        # a list for a state and a non-contiguous image are taken (and copied) as they are
        odd = dict(good[1], state=good[1]["state"].tolist())
        odd["cam"] = np.asfortranarray(good[1]["cam"])
        w.add_frame(odd, timestamp=0.1)
        good[1]["cam"][:] = 0  # the caller's arrays are its own again once add_frame returns
        assert w.save().length == 2
    with pytest.raises(WriterError, match="closed"):
        w.start_episode()
    s = EpisodeStore.open(store.path)
    assert s.num_frames == 2
    np.testing.assert_array_equal(s.read("cam", 1, 2)[0], np.asarray(odd["cam"]))


def test_discard_and_close_drop_only_the_episode_in_flight(store: EpisodeStore) -> None:
    kept = frames(300, seed=1)  # spans several chunks and shards
    with ProcessEpisodeWriter(store) as w:
        w.start_episode(task="kept")
        for i, f in enumerate(kept[:150]):
            w.add_frame(f, timestamp=i / 10)
        w.save()
        w.start_episode(task="dropped")
        for i, f in enumerate(frames(170, seed=9)):
            w.add_frame(f, timestamp=i / 10)
        w.discard()
        assert store.num_frames == 150
        w.start_episode(task="kept too")
        for i, f in enumerate(kept[150:]):
            w.add_frame(f, timestamp=i / 10)
        w.save()
        w.start_episode(task="closed in flight")
        for i, f in enumerate(frames(20, seed=8)):
            w.add_frame(f, timestamp=i / 10)
    assert w.stats.episodes_discarded == 2 and w.pid is None
    s = EpisodeStore.open(store.path)
    assert [e.task for e in s.episodes()] == ["kept", "kept too"]
    for key in SPEC:
        np.testing.assert_array_equal(s.read(key, 0, 300), np.stack([f[key] for f in kept]))
    assert s.recovery.cut_frames == 0


def test_back_pressure_bounds_the_frames_waiting_and_loses_none(store: EpisodeStore) -> None:
    fs = frames(400)
    frame_bytes = sum(np.asarray(v).nbytes for v in fs[0].values())
    with ProcessEpisodeWriter(store, max_queue_bytes=3 * frame_bytes + 1000) as w:
        w.start_episode()
        for i, f in enumerate(fs):
            w.add_frame(f, timestamp=i / 10)
        w.save()
    assert w.stats.stalls > 0 and w.stats.stall_seconds > 0  # the caller outran the disk
    assert w.stats.bytes_queued_peak <= 3 * frame_bytes
    s = EpisodeStore.open(store.path)
    for key in SPEC:
        np.testing.assert_array_equal(s.read(key, 0, 400), np.stack([f[key] for f in fs]))


def add_until_it_fails(w: ProcessEpisodeWriter, fs: list, start: int) -> None:
    for i, f in enumerate(fs):
        w.add_frame(f, timestamp=(start + i) / 10)
        time.sleep(0.01)


def test_writer_process_killed_mid_episode(store: EpisodeStore) -> None:
    fs = frames(60)
    w = ProcessEpisodeWriter(store)
    write(w, [fs[:25]])
    w.start_episode(task="in flight")
    for i, f in enumerate(fs[25:40]):
        w.add_frame(f, timestamp=i / 10)
    os.kill(w.pid, signal.SIGKILL)  # type: ignore[arg-type]
    with pytest.raises(WriterError, match=r"killed by SIGKILL.*committed episodes are intact"):
        add_until_it_fails(w, fs[40:], start=15)
    with pytest.raises(WriterError, match="killed by SIGKILL"):
        w.save()
    w.close()  # closing a failed writer is quiet
    store.close()
    s = EpisodeStore.open(store.path, "a")  # repairs what the kill left
    assert s.num_episodes == 1 and s.episode(0).length == 25
    for key in SPEC:
        np.testing.assert_array_equal(s.read(key, 0, 25), np.stack([f[key] for f in fs[:25]]))
    with ProcessEpisodeWriter(s) as w2:  # and takes new episodes
        write(w2, [fs[25:]])
    s.close()
    assert EpisodeStore.open(store.path).episode(1).length == 35
    assert verify_store(store.path).ok
    assert not list(Path(store.path).rglob("*.partial"))


PARENT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from robolearn.data.procwriter import ProcessEpisodeWriter
    from robolearn.data.store import EpisodeStore
    from robolearn.data.synthetic import SyntheticArm, sample_spec
    spec = sample_spec({"cam": (48, 64), "wrist": (16, 16)})
    arm = SyntheticArm(spec, seed=5)
    store = EpisodeStore.open(sys.argv[1], "a")
    w = ProcessEpisodeWriter(store)
    w.start_episode(task="committed")
    for i in range(30):
        w.add_frame(arm.frame(i / 10, i), timestamp=i / 10)
    w.save()
    w.start_episode(task="in flight")
    for i in range(45):
        w.add_frame(arm.frame(i / 10, i), timestamp=i / 10)
    print(w.pid, flush=True)
    time.sleep(600)
    """
)


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "\nState:\tZ" in status  # an orphan nobody has reaped yet


def test_parent_killed_mid_episode_child_holds_the_lock_then_exits(store: EpisodeStore) -> None:
    store.close()
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_SCRIPT, store.path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = parent.stdout.readline()  # type: ignore[union-attr]
    assert line.strip().isdigit(), parent.stderr.read()  # type: ignore[union-attr]
    child = int(line)
    os.kill(child, signal.SIGSTOP)  # hold the writer process where it is
    try:
        parent.kill()
        parent.wait(timeout=30)
        # the parent is gone, yet its writer process still holds the store: nobody may repair
        # it under the writer's feet
        with pytest.raises(StoreError, match="open for writing in another process"):
            EpisodeStore.open(store.path, "a")
    finally:
        os.kill(child, signal.SIGCONT)
    deadline = time.monotonic() + 30
    while not _gone(child):
        assert time.monotonic() < deadline, "the orphaned writer process did not exit"
        time.sleep(0.05)
    s = EpisodeStore.open(store.path, "a")  # the lock went with the writer process
    assert [e.task for e in s.episodes()] == ["committed"] and s.num_frames == 30
    s.close()
    assert verify_store(store.path).ok


IO_ERROR_SCRIPT = textwrap.dedent(
    """
    import resource, signal, sys, numpy as np
    from robolearn.data.procwriter import ProcessEpisodeWriter
    from robolearn.data.store import EpisodeStore
    from robolearn.errors import WriterError
    store = EpisodeStore.open(sys.argv[1], "a")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # inherited by the writer process
    rng = np.random.default_rng(0)
    with ProcessEpisodeWriter(store) as w:
        # The writer process's files past this size fail with EFBIG, a real I/O error.
        limit = int(sys.argv[2])
        resource.prlimit(w.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        w.start_episode(task="too big")
        try:
            for i in range(4000):
                w.add_frame({"state": np.zeros(14, np.float32), "action": np.zeros(14, np.float32),
                             "cam": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)},
                            timestamp=i / 50)
            w.save()
        except WriterError as e:
            print("WriterError:", e.__cause__.__class__.__name__, e.__cause__)
            print("note:", "in the episode writer process" in "".join(e.__cause__.__notes__))
            sys.exit(3)
    print("no error")
    """
)


def test_an_io_error_in_the_writer_process_reaches_the_caller(tmp_path: Path) -> None:
    path = tmp_path / "io.zarr"
    spec = sample_spec({"cam": (64, 64)})
    arm = SyntheticArm(spec)
    committed = [arm.frame(i / 50, i) for i in range(100)]
    with EpisodeStore.create(path, spec, 50) as store, ProcessEpisodeWriter(store) as w:
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
    assert "note: True" in out.stdout  # the child's traceback travels with the error
    store = EpisodeStore.open(path, "a")
    assert store.num_episodes == 1 and store.episode(0).task == "safe"
    for key in spec:
        np.testing.assert_array_equal(
            store.read(key, 0, 100), np.stack([f[key] for f in committed])
        )
    store.close()
    assert not list(path.rglob("*.partial"))


def test_lossy_frames_of_committed_episodes_are_never_reencoded(tmp_path: Path) -> None:
    spec = sample_spec({"cam": (16, 16)})
    arm = SyntheticArm(spec, seed=4)
    path = tmp_path / "jpeg.zarr"
    EpisodeStore.create(path, spec, 10, codecs={"cam": "jpeg:75"}).close()
    first = None
    for session in range(3):
        with EpisodeStore.open(path, "a") as store, ProcessEpisodeWriter(store) as w:
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


def test_a_read_only_store_or_a_failing_start_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ro.zarr"
    EpisodeStore.create(path, SPEC, 10).close()
    with EpisodeStore.open(path, "r") as ro, pytest.raises(StoreError, match="read-only"):
        ProcessEpisodeWriter(ro)
    with EpisodeStore.open(path, "a") as store:
        with pytest.raises(WriterError, match="did not answer start"):
            ProcessEpisodeWriter(store, start_timeout=0.001)
        with ProcessEpisodeWriter(store) as w:  # the store is still usable
            write(w, [frames(3)])
    assert EpisodeStore.open(path).num_episodes == 1


def _autogroup(pid: int | str) -> list[str] | None:
    """`/proc/PID/autogroup` split into words, None where the kernel shows no autogroup."""
    try:
        words = Path(f"/proc/{pid}/autogroup").read_text().split()
    except OSError:
        return None
    return words or None


def test_the_writer_process_runs_in_its_own_session_in_the_background(
    store: EpisodeStore,
) -> None:
    with ProcessEpisodeWriter(store) as w:
        pid = w.pid
        assert pid is not None and os.getsid(pid) == pid  # Ctrl-C and hang-ups reach the recorder
        assert os.getpriority(os.PRIO_PROCESS, pid) >= min(5, os.nice(0) + 5)
        theirs, mine = _autogroup(pid), _autogroup("self")
        if theirs is not None:  # a kernel with autogroups: the writer's own group, at niceness 10
            assert theirs[-1] == "10"
            # The kernel shows nothing for a task whose group is a cgroup, not an autogroup
            # (containers, CI runners): then there is no group of ours to compare with.
            assert mine is None or theirs[0] != mine[0]
        ours = os.sched_getaffinity(0)
        if len(ours) > 1:  # one CPU is left to the control loop
            assert os.sched_getaffinity(pid) == set(sorted(ours)[:-1])
        write(w, [frames(5)])


PRIORITY_SCRIPT = textwrap.dedent(
    """
    import os
    from robolearn.data.procwriter import _Priority
    def show(tag):
        group = (open("/proc/self/autogroup").read().split() or ["none"])[-1]
        print(tag, group, sorted(os.sched_getaffinity(0)), flush=True)
    p = _Priority(10, 80, None)  # 80 slots: behind from 10 frames waiting, caught up at 2
    show("start")
    p.update(9); show("9 waiting")
    p.update(10); show("10 waiting")
    p.update(3); show("3 waiting")
    p.update(2); show("2 waiting")
    """
)


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="no autogroups")
def test_the_writer_takes_its_fair_share_while_it_is_behind() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PRIORITY_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,  # as the writer process runs: its own session and autogroup
        check=True,
    ).stdout.splitlines()
    if out[0].split()[1] == "none":
        pytest.skip("the kernel shows no autogroup for a new session here (a cgroup governs it)")
    cpus = sorted(os.sched_getaffinity(0))
    few = str(cpus[:-1] if len(cpus) > 1 else cpus)
    assert out == [
        f"start 10 {few}",
        f"9 waiting 10 {few}",
        f"10 waiting 0 {cpus}",
        f"3 waiting 0 {cpus}",
        f"2 waiting 10 {few}",
    ]
