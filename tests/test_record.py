"""The recorder: episode flow, metadata, resume, operator events, device failure, interrupts."""

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
from robolearn.errors import SpecError
from robolearn.hal import DeviceError, EpisodeEvent
from robolearn.record import RecordConfig, Recorder, RecordError
from sim.robot import CameraConfig, PyBulletRobot
from sim.tasks import make_task
from sim.teleop import ExpertTeleop

REPO = Path(__file__).resolve().parents[1]
CAM = [CameraConfig("top", width=32, height=32)]


def quiet(_: str) -> None:
    pass


def test_expert_episodes_are_recorded_with_timing_seeds_and_success(tmp_path: Path) -> None:
    path = tmp_path / "reach.zarr"
    task = make_task("reach")
    with PyBulletRobot("panda", task=task, cameras=CAM) as robot:
        cfg = RecordConfig(path, num_episodes=3, fps=10, episode_time_s=20, task="reach it")
        results = Recorder(robot, ExpertTeleop(robot), cfg, log=quiet).run()
    assert [r.outcome for r in results] == ["saved"] * 3
    assert [r.seed for r in results] == [0, 1, 2]
    with EpisodeStore.open(path, "r") as store:
        assert store.num_episodes == 3 and store.fps == 10
        assert set(store.spec) == {
            "state",
            "ee_pose",
            "task_state",
            "top",
            "action.joint",
            "action.ee",
        }
        info = store.episode(1)
        assert info.task == "reach it" and info.success is True
        timing = info.extra["timing"]
        assert timing["ticks"] == info.length and timing["overruns"] == 0
        assert set(timing["stage_ms"]) == {"observe", "decide", "act", "record"}
        # the frames carry the simulated capture times: exactly one period apart in lock-step
        ts = store.read("timestamp", *store.bounds(1))
        np.testing.assert_allclose(np.diff(ts), 0.1, atol=1e-6)
        # the stored goal is the one the seed draws
        goal = store.read("task_state", *store.bounds(1))[0]
    with PyBulletRobot("panda", task=task) as robot:
        np.testing.assert_allclose(robot.reset(1)["task_state"], goal, atol=1e-6)


def test_resume_appends_and_continues_the_seeds_and_a_different_robot_is_refused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "reach.zarr"
    task = make_task("reach")
    cfg = RecordConfig(path, num_episodes=2, fps=10, episode_time_s=20)
    with PyBulletRobot("panda", task=task, cameras=CAM) as robot:
        Recorder(robot, ExpertTeleop(robot), cfg, log=quiet).run()
        results = Recorder(robot, ExpertTeleop(robot), cfg, log=quiet).run()
    assert [r.seed for r in results] == [2, 3] and [r.index for r in results] == [2, 3]
    before = sorted(p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file())
    with (
        PyBulletRobot("panda", task=make_task("reach")) as other,  # no camera
        pytest.raises(SpecError, match="top"),
    ):
        Recorder(other, ExpertTeleop(other), cfg, log=quiet).run()
    wrong_rate = RecordConfig(path, num_episodes=1, fps=20)
    with PyBulletRobot("panda", task=make_task("reach"), cameras=CAM) as robot:
        recorder = Recorder(robot, ExpertTeleop(robot), wrong_rate, log=quiet)
        with pytest.raises(SpecError, match="fps=10"):
            recorder.run()
    after = sorted(p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file())
    assert before == after  # nothing stored was touched
    with EpisodeStore.open(path, "r") as store:
        assert store.num_episodes == 4


class Operator(ExpertTeleop):
    """The expert, with an operator pressing keys: a scripted list of (attempt, tick, event)."""

    def __init__(self, robot, presses) -> None:  # type: ignore[no-untyped-def]
        super().__init__(robot)
        self.presses = presses
        self.attempt = -1
        self.tick = 0

    def reset(self, seed=None) -> None:  # type: ignore[no-untyped-def]
        super().reset(seed)
        self.attempt += 1
        self.tick = 0

    def read(self, observation=None):  # type: ignore[no-untyped-def]
        self.tick += 1
        return super().read(observation)

    def events(self):  # type: ignore[no-untyped-def]
        for attempt, tick, event in self.presses:
            if attempt == self.attempt and tick == self.tick:
                return [event]
        return super().events() if self.tick > 1000 else []


def test_save_discard_and_rerecord_keys(tmp_path: Path) -> None:
    path = tmp_path / "ops.zarr"
    presses = [
        (0, 5, EpisodeEvent.DISCARD),  # drop it, move on to the next seed
        (1, 5, EpisodeEvent.RERECORD),  # drop it, same seed again
        (2, 8, EpisodeEvent.SAVE),  # keep 8 frames
        (3, 3, EpisodeEvent.QUIT),  # stop (episode in flight discarded)
    ]
    with PyBulletRobot("panda", task=make_task("reach")) as robot:
        cfg = RecordConfig(path, num_episodes=5, fps=10, episode_time_s=20)
        results = Recorder(robot, Operator(robot, presses), cfg, log=quiet).run()
    assert [r.outcome for r in results] == ["discarded", "rerecord", "saved", "quit"]
    assert [r.seed for r in results] == [0, 1, 1, 2]
    with EpisodeStore.open(path, "r") as store:
        assert store.num_episodes == 1 and store.episode(0).length == 8


def test_a_resumed_recording_never_repeats_a_stored_seed(tmp_path: Path) -> None:
    """A discarded (or failed) episode uses up its seed: resuming after it must continue after
    the highest stored seed, not at the number of stored episodes (which would record the
    scene of seed 2 twice here)."""
    path = tmp_path / "resume.zarr"
    cfg = RecordConfig(path, num_episodes=2, fps=10, episode_time_s=20)
    with PyBulletRobot("panda", task=make_task("reach")) as robot:
        first = Recorder(robot, Operator(robot, [(0, 3, EpisodeEvent.DISCARD)]), cfg, log=quiet)
        assert [(r.outcome, r.seed) for r in first.run()] == [
            ("discarded", 0),
            ("saved", 1),
            ("saved", 2),
        ]
        again = Recorder(robot, ExpertTeleop(robot), cfg, log=quiet).run()
    assert [(r.outcome, r.seed, r.index) for r in again] == [("saved", 3, 2), ("saved", 4, 3)]
    with EpisodeStore.open(path, "r") as store:
        assert [e.extra["seed"] for e in store.episodes()] == [1, 2, 3, 4]


class FlakyCamera(PyBulletRobot):
    """A simulated robot whose camera stops delivering after `frames` frames."""

    def __init__(self, frames: int, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        self.left = frames

    def _capture(self, cam, **kwargs):  # type: ignore[no-untyped-def]
        self.left -= 1
        if self.left < 0:
            raise DeviceError(f"camera {cam.name!r} delivered no frame for 1.0 s")
        return super()._capture(cam, **kwargs)


def test_a_camera_that_stops_discards_the_episode_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "cam.zarr"
    robot = FlakyCamera(60, arm="panda", task=make_task("reach"), cameras=CAM)
    with robot:
        cfg = RecordConfig(path, num_episodes=10, fps=10, episode_time_s=20)
        recorder = Recorder(robot, ExpertTeleop(robot), cfg, log=quiet)
        with pytest.raises(RecordError, match=r"discarded: camera 'top'"):
            recorder.run()
        held = robot.arm.joint_positions()
        for _ in range(5):
            robot.clock.sleep_until(robot.clock.now() + 0.1)
        np.testing.assert_allclose(robot.arm.joint_positions(), held, atol=2e-3)  # holds still
    with EpisodeStore.open(path, "r") as store:
        saved = store.num_episodes
        assert 1 <= saved < 10
        assert store.num_frames == sum(r.frames for r in recorder.results[:saved])
        assert verify_store(path).ok


def _record_cmd(path: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "robolearn.cli",
        "record",
        "task=reach",
        "robot.clock=realtime",
        "robot.cameras=[]",
        "teleop=expert",
        "keep=all",
        "episode_time_s=2.5",
        "num_episodes=20",
        "fps=20",
        f"dataset={path}",
        "keys=off",
        *extra,
    ]


def _wait_for_episodes(path: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, proc.communicate()
        if (path / "zarr.json").exists():
            try:
                with EpisodeStore.open(path, "r") as store:
                    if store.num_episodes >= n:
                        return
            except Exception:  # the store is still being created
                pass
        time.sleep(0.1)
    raise AssertionError(f"no {n} episodes in {timeout} s")


@pytest.mark.integration
@pytest.mark.parametrize(
    ("sig", "on_interrupt"),
    [(signal.SIGINT, "discard"), (signal.SIGTERM, "discard"), (signal.SIGINT, "save")],
)
def test_an_interrupted_recording_keeps_every_committed_episode(
    tmp_path: Path, sig: int, on_interrupt: str
) -> None:
    path = tmp_path / "live.zarr"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        _record_cmd(path, f"on_interrupt={on_interrupt}", "seed=100"),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _wait_for_episodes(path, 1, proc)
    time.sleep(0.3)  # into the second episode (a reach episode takes about 1 s)
    with EpisodeStore.open(path, "r") as store:
        committed = store.num_episodes
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    # On a loaded machine another episode may end between the count and the signal: the
    # recorder's own lines say which episodes it saved and what became of the one in flight.
    saved = out.count("saved episode")
    with EpisodeStore.open(path, "r") as store:
        assert verify_store(path).ok
        n = store.num_episodes
        assert n == saved and n >= committed, out
        if on_interrupt == "discard":
            assert "interrupted, nothing kept" in out, out
        else:
            assert "(kept on interrupted)" in out, out  # the episode in flight was kept
            assert store.episode(n - 1).length > 0
    # the store takes more episodes afterwards
    done = subprocess.run(
        _record_cmd(path, "num_episodes=1", "episode_time_s=0.5", "robot.clock=lockstep"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with EpisodeStore.open(path, "r") as store:
        assert store.num_episodes == n + 1


@pytest.mark.integration
def test_a_recording_killed_outright_keeps_its_episodes_and_its_writer_process_exits(
    tmp_path: Path,
) -> None:
    """SIGKILL: no handler runs. The writer process notices, drops the episode in flight and
    exits; until then it keeps the store locked, so the next recording waits for nothing."""
    path = tmp_path / "killed.zarr"
    proc = subprocess.Popen(
        _record_cmd(path, "seed=200"),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for_episodes(path, 1, proc)
    time.sleep(0.5)
    writers = [
        int(p)
        for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        if "robolearn.data.procwriter" in Path(f"/proc/{p}/cmdline").read_text()
    ]
    assert len(writers) == 1  # the recorder writes through a writer process
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{writers[0]}").exists() and "\nState:\tZ" not in _status(writers[0]):
        assert time.monotonic() < deadline, "the writer process outlived its recorder"
        time.sleep(0.05)
    with EpisodeStore.open(path, "a") as store:
        assert store.num_episodes >= 1
    assert verify_store(path).ok


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return "\nState:\tZ"


def test_the_writer_setting_is_checked_and_the_thread_writer_still_records(
    tmp_path: Path,
) -> None:
    with pytest.raises(RecordError, match="writer must be 'process' or 'thread'"):
        RecordConfig(tmp_path / "x.zarr", writer="disk").check()
    path = tmp_path / "thread.zarr"
    cfg = RecordConfig(path, num_episodes=1, fps=10, episode_time_s=20, writer="thread")
    with PyBulletRobot("panda", task=make_task("reach"), cameras=CAM) as robot:
        results = Recorder(robot, ExpertTeleop(robot), cfg, log=quiet).run()
    assert [r.outcome for r in results] == ["saved"]
    assert verify_store(path).ok


def test_record_command_builds_a_dataset_in_lock_step(tmp_path: Path) -> None:
    path = tmp_path / "cli.zarr"
    start = time.monotonic()
    done = subprocess.run(
        [
            *_record_cmd(path, "num_episodes=3", "episode_time_s=20", "robot.clock=lockstep"),
            "keep=auto",
            "preview=web",
            "preview_port=0",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with EpisodeStore.open(path, "r") as store:
        assert store.num_episodes == 3
        seconds = store.num_frames / store.fps
        assert all(store.episode(i).success for i in range(3))
    assert time.monotonic() - start < seconds + 30  # not paced by the wall clock
    bad = subprocess.run(
        [*_record_cmd(path), "fps=abc"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "fps='abc' is not a number" in bad.stderr
    assert "live cameras: http://127.0.0.1:" in done.stderr  # the preview page was served
    bad = subprocess.run(
        [*_record_cmd(path), "preview=window"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "preview='window': choose one of none, web, rerun" in bad.stderr


def test_a_missing_device_fails_clearly_and_leaves_no_store(tmp_path: Path) -> None:
    path = tmp_path / "pad.zarr"
    done = subprocess.run(
        [*_record_cmd(path), "teleop=gamepad"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SDL_JOYSTICK_DEVICE": "/nonexistent"},
    )
    assert done.returncode == 2 and "no gamepad found" in done.stderr
    assert not path.exists()


@pytest.mark.integration
def test_keyboard_teleop_and_episode_keys_in_a_real_terminal(tmp_path: Path) -> None:
    """Drive `robolearn record teleop=keyboard` through a pseudo-terminal: move, save, quit."""
    import pty

    path = tmp_path / "kb.zarr"
    master, slave = pty.openpty()
    cmd = [c for c in _record_cmd(path) if not c.startswith(("keys=", "teleop="))]
    proc = subprocess.Popen(
        [*cmd, "teleop=keyboard", "keys=on", "episode_time_s=30", "fps=10"],
        cwd=REPO,
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    os.close(slave)
    try:
        time.sleep(6.0)  # start-up: imports and the PyBullet scene
        for _ in range(15):  # hold "i" (+x) for 1.5 s, as a terminal's key repeat sends it
            os.write(master, b"i")
            time.sleep(0.1)
        time.sleep(0.5)
        os.write(master, b"s")  # save the episode
        time.sleep(1.5)
        os.write(master, b"q")  # quit during the next one
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert proc.returncode == 0, out
    with EpisodeStore.open(path, "r") as store:
        assert store.num_episodes == 1
        ee = store.read("action.ee", 0, store.num_frames)
        pos = store.read("ee_pose", 0, store.num_frames)[:, 0]
    assert (ee[:, 0] > 0).sum() >= 10  # the +x key moved the hand for most of 1.5 s
    assert pos[-1] - pos[0] > 0.05
