"""lerobot arms behind the HAL, on the real path: lerobot's driver → a pty → emulated STS3215 servos."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("lerobot.motors.feetech", reason="needs lerobot with the feetech extra")
pytest.importorskip("scservo_sdk", reason="needs the Feetech SDK (lerobot's feetech extra)")

from hardware.emulator.feetech import (
    FeetechBusEmulator,
    so101_motors,
    write_so101_calibration,
)
from hardware.lerobot_arm import (
    JOINT_KEY,
    CalibrationError,
    LeRobotArm,
    LeRobotConfigError,
    LeRobotTeleop,
)
from robolearn.data.store import EpisodeStore
from robolearn.data.tools import verify_store
from robolearn.hal import DeviceError
from robolearn.record import RecordConfig, Recorder, RecordError
from robolearn.testing.conformance import RobotConformance

MOTORS = list(so101_motors())
NAMES = [f"{m}.pos" for m in MOTORS]
MID = 2047.5  # the middle of a factory calibration's range (0..4095): 0 degrees


def quiet(_: str) -> None:
    pass


def degrees(raw: float) -> float:
    """A raw STS3215 position as lerobot's use_degrees=True reads it (factory calibration)."""
    return (raw - MID) * 360.0 / 4095


def raw(deg: float) -> int:
    return round(deg * 4095 / 360.0 + MID)


@pytest.fixture
def follower() -> Iterator[FeetechBusEmulator]:
    with FeetechBusEmulator(so101_motors(), seed=0) as emu:
        yield emu


@pytest.fixture
def leader() -> Iterator[FeetechBusEmulator]:
    with FeetechBusEmulator(so101_motors(), seed=1) as emu:
        yield emu


def make_arm(emu: FeetechBusEmulator, cal_dir: Path, **kwargs: Any) -> LeRobotArm:
    write_so101_calibration(cal_dir, "follower", emu)
    kwargs.setdefault("max_relative_target", 20.0)
    return LeRobotArm(
        "so101_follower", port=emu.port, id="follower", calibration_dir=str(cal_dir), **kwargs
    )


def make_leader(emu: FeetechBusEmulator, cal_dir: Path, **kwargs: Any) -> LeRobotTeleop:
    write_so101_calibration(cal_dir, "leader", emu)
    return LeRobotTeleop(
        "so101_leader", port=emu.port, id="leader", calibration_dir=str(cal_dir), **kwargs
    )


class TestEmulatedSO101(RobotConformance):
    @pytest.fixture
    def robot(self, follower: FeetechBusEmulator, tmp_path: Path) -> Iterator[LeRobotArm]:
        with make_arm(follower, tmp_path / "cal") as arm:
            yield arm


def from_config(group: str, name: str, available: Any = None, **fields: Any) -> Any:
    """A device as `robolearn record` builds it: configs/<group>/<name>.yaml with overrides
    (and, for a teleoperator, the robot and its spec, which the recorder offers)."""
    from omegaconf import OmegaConf

    from robolearn.config import CONF_DIR, build

    node = OmegaConf.merge(OmegaConf.load(CONF_DIR / group / f"{name}.yaml"), fields)
    return build(node, group, **(available or {}))


class TestEmulatedKoch(RobotConformance):
    """The Koch follower from configs/robot/koch.yaml, on emulated Dynamixel servos."""

    @pytest.fixture
    def robot(self, tmp_path: Path) -> Iterator[LeRobotArm]:
        dxl = pytest.importorskip("hardware.emulator.dynamixel")
        pytest.importorskip("dynamixel_sdk", reason="needs lerobot's dynamixel extra")
        models = dxl.koch_follower_models()
        with dxl.DynamixelBusEmulator(dxl.koch_motors(), models=models, seed=0) as emu:
            dxl.write_koch_calibration(tmp_path, "koch", emu)
            arm = from_config(
                "robot", "koch", port=emu.port, id="koch", calibration_dir=str(tmp_path)
            )
            assert arm.units == {**{n: "deg" for n in NAMES[:-1]}, "gripper.pos": "0..100"}
            with arm:
                yield arm


def test_the_configs_build_arms_with_the_safety_defaults(tmp_path: Path) -> None:
    for name, kind in (
        ("so101", "so101_follower"),
        ("so100", "so100_follower"),
        ("koch", "koch_follower"),
    ):
        arm = from_config("robot", name, port="/dev/null", calibration_dir=str(tmp_path))
        assert isinstance(arm, LeRobotArm) and arm.type == kind
        cfg = arm.lerobot.config
        assert cfg.max_relative_target == 10.0 and cfg.disable_torque_on_disconnect, name
        assert cfg.use_degrees and arm.spec[JOINT_KEY].names == tuple(NAMES), name
        assert arm.stop.torque == "hold" and arm.retry.tries >= 2, name
    leader = from_config("teleop", "so101_leader", port="/dev/null", calibration_dir=str(tmp_path))
    assert isinstance(leader, LeRobotTeleop) and leader.names == NAMES
    # as robolearn record offers them (hydra hands the spec over as a config node)
    from sim.robot import PyBulletRobot

    panda = PyBulletRobot(arm="panda")
    with pytest.raises(Exception, match="same joints"):
        from_config("teleop", "so101_leader", {"robot": panda, "spec": panda.spec}, port="x")
    with pytest.raises(Exception, match="same joints"):
        from_config("teleop", "so101_leader", {"spec": panda.spec}, port="x")


# ---------------------------------------------------------------------- spec and units
def test_the_real_so101_spec_matches_the_simulated_one(
    follower: FeetechBusEmulator, tmp_path: Path
) -> None:
    from sim.arms import SO101
    from sim.robot import PyBulletRobot

    sim = PyBulletRobot(arm="so101").spec  # the spec needs no connection
    arm = make_arm(follower, tmp_path / "cal")
    real = arm.spec
    for key in ("state", JOINT_KEY):
        assert real[key].shape == sim[key].shape, key
        assert real[key].names == sim[key].names == tuple(NAMES), key
        assert real[key].dtype == sim[key].dtype and real[key].kind == sim[key].kind, key
    assert real[JOINT_KEY].representation == sim[JOINT_KEY].representation == "joint_position"
    # a policy trained in simulation fits the real arm (and a real dataset the simulated arm)
    sim.check_fits(real, keys=["state", JOINT_KEY], what="the sim SO-101", other_what="the real")
    real.check_fits(sim, keys=["state", JOINT_KEY], what="the real SO-101", other_what="the sim")
    # same units: degrees for the body, 0..100 for the gripper, as the sim arm
    assert SO101.units == "deg" and SO101.gripper_range == (0.0, 100.0)
    assert arm.units == {**{n: "deg" for n in NAMES[:-1]}, "gripper.pos": "0..100"}
    low, high = np.array(real[JOINT_KEY].low), np.array(real[JOINT_KEY].high)
    assert (low[-1], high[-1]) == (0.0, 100.0)
    np.testing.assert_allclose(high[:-1], 180.0, atol=0.1)  # the calibrated range: a full turn
    # and the values really are degrees: a joint a quarter turn past the middle reads +90
    with arm:
        follower.set_position("elbow_flex", raw(90.0))
        state = arm.observe()["state"]
    assert state[NAMES.index("elbow_flex.pos")] == pytest.approx(90.0, abs=0.2)


def test_cameras_in_the_config_become_image_features(tmp_path: Path) -> None:
    cameras = {
        "front": {"type": "opencv", "index_or_path": 0, "width": 64, "height": 48, "fps": 30}
    }
    arm = LeRobotArm("so101_follower", port="/dev/null", cameras=cameras)  # nothing opened yet
    assert arm.spec.image_keys == ["front"]
    assert arm.spec["front"].shape == (48, 64, 3) and arm.spec["front"].dtype == "uint8"
    assert list(arm.spec) == ["state", "front", JOINT_KEY]


def test_capture_time_is_taken_around_the_bus_read(
    follower: FeetechBusEmulator, tmp_path: Path
) -> None:
    with make_arm(follower, tmp_path / "cal") as arm:
        follower.faults.delay_s = 0.004  # every status packet comes 4 ms late: 24 ms a read
        before = time.monotonic()
        obs = arm.observe()
        after = time.monotonic()
        follower.faults.delay_s = 0.0
    t = obs.capture_times["state"]
    assert before < t < after
    # the read took at least one delayed status packet; the capture lies within it
    assert after - before >= 0.024 and after - t >= 0.008


# ---------------------------------------------------------------------- calibration
def test_an_uncalibrated_arm_says_how_to_calibrate_it(
    follower: FeetechBusEmulator, tmp_path: Path
) -> None:
    arm = LeRobotArm(
        "so101_follower", port=follower.port, id="nobody", calibration_dir=str(tmp_path)
    )
    with pytest.raises(
        CalibrationError, match=rf"robolearn calibrate robot=so101 port={follower.port}"
    ):
        arm.connect()
    assert not arm.is_connected
    assert not arm.lerobot.bus.is_connected  # the port was closed again


def test_a_calibration_file_the_motors_do_not_hold_is_written_or_refused(
    follower: FeetechBusEmulator, tmp_path: Path
) -> None:
    path = write_so101_calibration(tmp_path, "follower", follower)
    cal = json.loads(path.read_text())
    cal["wrist_flex"]["range_min"], cal["wrist_flex"]["range_max"] = 1000, 3000
    path.write_text(json.dumps(cal))
    strict = LeRobotArm(
        "so101_follower",
        port=follower.port,
        id="follower",
        calibration_dir=str(tmp_path),
        write_calibration=False,
    )
    with pytest.raises(CalibrationError, match="another calibration"):
        strict.connect()
    arm = LeRobotArm(
        "so101_follower", port=follower.port, id="follower", calibration_dir=str(tmp_path)
    )
    with arm:
        held = follower.calibration()["wrist_flex"]
        assert (held.range_min, held.range_max) == (1000, 3000)
        wrist = arm.spec[JOINT_KEY].high[NAMES.index("wrist_flex.pos")]
        assert wrist == pytest.approx(1000 * 360 / 4095, abs=0.1)  # limits follow the file


def test_bad_configs_are_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(LeRobotConfigError, match="no robot type 'so102_follower'"):
        LeRobotArm("so102_follower", port="/dev/null")
    with pytest.raises(LeRobotConfigError, match=r"needs port=\.\.\..*lerobot-find-port"):
        LeRobotArm("so101_follower")
    with pytest.raises(LeRobotConfigError, match=r"no config field\(s\) \['baud'\]"):
        LeRobotArm("so101_follower", port="/dev/null", baud=9600)
    with pytest.raises(LeRobotConfigError, match=r"stop\.torque"):
        LeRobotArm("so101_follower", port="/dev/null", stop={"torque": "drop"})
    from sim.robot import PyBulletRobot

    panda = PyBulletRobot(arm="panda").spec
    with pytest.raises(LeRobotConfigError, match="same joints"):
        LeRobotTeleop("so101_leader", port="/dev/null", spec=panda)


def test_a_port_without_an_arm_is_a_device_error_naming_the_port(tmp_path: Path) -> None:
    arm = LeRobotArm("so101_follower", port=str(tmp_path / "ttyACM9"), id="x")
    with pytest.raises(DeviceError, match=r"ttyACM9.*lerobot-find-port"):
        arm.connect()


# ---------------------------------------------------------------------- recording
class Mover:
    """A person at the leader arm: its joints follow slow sines while the test runs."""

    def __init__(self, emu: FeetechBusEmulator, amplitude_deg: float = 25.0) -> None:
        self.emu = emu
        self.start = emu.positions()
        self.amplitude = amplitude_deg * 4095 / 360
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(0.01):
            t = time.monotonic() - t0
            for i, (name, pos) in enumerate(self.start.items()):
                target = pos + self.amplitude * np.sin(2 * np.pi * 0.6 * t + i)
                self.emu.set_position(name, int(np.clip(round(target), 0, 4095)))

    def __enter__(self) -> Mover:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def record(
    arm: LeRobotArm, teleop: LeRobotTeleop, path: Path, log: Any = quiet, **kwargs: Any
) -> tuple[Recorder, list[Any]]:
    cfg = RecordConfig(path, fps=30, writer="thread", **kwargs)
    recorder = Recorder(arm, teleop, cfg, log=log)
    return recorder, recorder.run()


def test_a_leader_arm_drives_the_follower_into_a_zarr_store(
    follower: FeetechBusEmulator, leader: FeetechBusEmulator, tmp_path: Path
) -> None:
    path = tmp_path / "so101.zarr"
    arm = make_arm(follower, tmp_path / "cal")
    with arm, Mover(leader):
        teleop = make_leader(leader, tmp_path / "cal", spec=arm.spec)
        _, results = record(arm, teleop, path, num_episodes=3, episode_time_s=0.7)
    assert [r.outcome for r in results] == ["saved"] * 3
    assert verify_store(path).ok
    with EpisodeStore.open(path, "r") as store:
        assert store.num_episodes == 3 and store.fps == 30
        assert set(store.spec) == {"state", JOINT_KEY}
        for e in range(3):
            lo, hi = store.bounds(e)
            state, action = store.read("state", lo, hi), store.read(JOINT_KEY, lo, hi)
            assert hi - lo >= 10
            moving = np.ptp(action[:, :-1], axis=0) > 5.0  # the leader's joints moved (deg)
            assert moving.all(), np.ptp(action, axis=0)
            # the follower follows: its measured joints are the commands of a tick or a few
            # before (the servos lag; a loaded machine skips ticks)
            lag = min(
                float(np.median(np.abs(state[k:, :-1] - action[:-k, :-1]))) for k in (1, 2, 3, 4)
            )
            assert lag < 4.0, lag
            for j in range(5):
                best = max(np.corrcoef(state[k:, j], action[:-k, j])[0, 1] for k in (1, 2, 3, 4))
                assert best > 0.9, (j, best)
            times = store.read("timestamp", lo, hi)
            assert np.all(np.diff(times) > 0)
    # the recording ended with a safe stop: the arm holds where it was
    assert arm.stops and "holds its position" in arm.stops[-1]


def test_lost_and_corrupted_packets_are_retried_and_the_recording_goes_on(
    follower: FeetechBusEmulator, leader: FeetechBusEmulator, tmp_path: Path
) -> None:
    path = tmp_path / "noisy.zarr"
    # lerobot's own immediate retries off: every failed exchange reaches robolearn's retries
    retry = {"tries": 8, "backoff_s": 0.001}
    arm = make_arm(follower, tmp_path / "cal", num_read_retries=0, retry=retry)
    with arm, Mover(leader):
        teleop = make_leader(
            leader, tmp_path / "cal", num_read_retries=0, retry=retry, spec=arm.spec
        )
        teleop.connect()  # setting the motors up takes dozens of unretried writes: no noise yet
        for emu in (follower, leader):
            emu.faults.lost, emu.faults.corrupt = 0.03, 0.03
        _, results = record(arm, teleop, path, num_episodes=2, episode_time_s=0.6)
        for emu in (follower, leader):
            emu.faults.lost = emu.faults.corrupt = 0.0
    assert [r.outcome for r in results] == ["saved"] * 2
    assert follower.stats.dropped > 0 and follower.stats.corrupted > 0
    assert arm.retries > 0 and teleop.retries > 0
    assert verify_store(path).ok


def test_a_bus_that_fails_mid_episode_discards_only_that_episode_and_stops_safely(
    follower: FeetechBusEmulator, leader: FeetechBusEmulator, tmp_path: Path
) -> None:
    path = tmp_path / "cut.zarr"
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if line.startswith("saved episode 1"):  # pull the cable during the third episode
            threading.Timer(0.2, follower.disconnect).start()

    # robolearn's retries only (lerobot's off), a few of them: a loaded test machine can stall
    # the emulator past one read's timeout before the cable is pulled
    arm = make_arm(
        follower, tmp_path / "cal", num_read_retries=0, retry={"tries": 4, "backoff_s": 0.005}
    )
    with arm, Mover(leader):
        teleop = make_leader(leader, tmp_path / "cal", spec=arm.spec)
        with pytest.raises(RecordError, match="episode 2 discarded") as info:
            record(arm, teleop, path, log=log, num_episodes=5, episode_time_s=0.5)
        error = info.value.__cause__
        assert isinstance(error, DeviceError)
        assert follower.port in str(error) and "no motor answers" in str(error)
        # the safe stop was tried and says what it could not do
        assert arm.stops and "servos keep their last target" in arm.stops[-1]
        assert all(follower.register(m, "Torque_Enable") == 1 for m in MOTORS)  # still holding
        with EpisodeStore.open(path, "r") as store:
            assert store.num_episodes == 2
        assert verify_store(path).ok
        # the cable is back: a safe stop holds the arm where it is
        follower.reconnect()
        arm.hold()
        assert "holds its position with the torque on" in arm.stops[-1]
        before = follower.positions()
        time.sleep(0.2)
        after = follower.positions()
        assert all(abs(after[m] - before[m]) <= 2 for m in MOTORS), (before, after)
    # disconnecting switched the torque off (lerobot's disable_torque_on_disconnect)
    assert all(follower.register(m, "Torque_Enable") == 0 for m in MOTORS)


def test_a_motor_that_stops_answering_is_named(
    follower: FeetechBusEmulator, tmp_path: Path
) -> None:
    with make_arm(follower, tmp_path / "cal", retry={"tries": 3, "backoff_s": 0.001}) as arm:
        arm.observe()
        follower.set_register("wrist_flex", "ID", 20)  # as good as a broken cable to it
        with pytest.raises(DeviceError) as info:
            arm.observe()
        follower.set_register("wrist_flex", "ID", 4)
    message = str(info.value)
    assert "failed to read the joints after 3 tries" in message
    assert f"motor 'wrist_flex' (id 4) does not answer on {follower.port}" in message


def test_the_release_policy_switches_the_torque_off_after_a_safe_stop(
    follower: FeetechBusEmulator, tmp_path: Path
) -> None:
    arm = make_arm(follower, tmp_path / "cal", stop={"torque": "release", "release_after_s": 0.05})
    with arm:
        arm.hold()
        assert "torque goes off in 0.05 s" in arm.stops[-1]
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and any(
            follower.register(m, "Torque_Enable") for m in MOTORS
        ):
            time.sleep(0.02)
        assert all(follower.register(m, "Torque_Enable") == 0 for m in MOTORS)
        # a new command powers the arm again and moves it
        target = arm.observe()["state"].astype(np.float64)
        target[0] += 5.0
        arm.act({JOINT_KEY: target})
        assert all(follower.register(m, "Torque_Enable") == 1 for m in MOTORS)
        time.sleep(0.3)
        assert arm.observe()["state"][0] == pytest.approx(target[0], abs=1.0)


def test_max_relative_target_caps_each_tick_and_act_returns_what_was_sent(
    follower: FeetechBusEmulator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hardware import lerobot_arm

    monkeypatch.setattr(lerobot_arm._CAP_WARNINGS, "count", 0)
    with make_arm(follower, tmp_path / "cal", max_relative_target=5.0) as arm:
        here = arm.observe()["state"].astype(np.float64)
        far = here.copy()
        far[0] += 60.0
        sent = arm.act({JOINT_KEY: far})[JOINT_KEY]
        assert sent[0] == pytest.approx(here[0] + 5.0, abs=0.3)
        np.testing.assert_allclose(sent[1:], here[1:], atol=0.3)
        for _ in range(3):
            arm.act({JOINT_KEY: far})
    # lerobot warns at every capped tick; the log keeps the first (and every 100th)
    capped = [r for r in caplog.records if "max_relative_target capped" in r.getMessage()]
    assert len(capped) == 1 and "(1 time(s)" in capped[0].getMessage()


# ---------------------------------------------------------------------- calibration command
def test_calibrate_runs_lerobots_flow_and_the_arm_then_connects(
    follower: FeetechBusEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import os
    import sys

    from hardware.calibrate import main

    # lerobot's flow reads ENTER from stdin (input() and a select() on it): give it a pipe
    r, w = os.pipe()
    with os.fdopen(r, "r") as stdin, os.fdopen(w, "w") as keys:
        monkeypatch.setattr(sys, "stdin", stdin)
        outcome: dict[str, Any] = {}

        def run() -> None:
            argv = [
                "robot=so101",
                f"port={follower.port}",
                "id=fresh",
                f"calibration_dir={tmp_path}",
            ]
            try:
                outcome["rc"] = main(argv)
            except BaseException as exc:
                outcome["error"] = exc

        flow = threading.Thread(target=run, daemon=True)
        flow.start()
        keys.write("\n")  # "move the arm to the middle of its range and press ENTER"
        keys.flush()
        out = ""
        deadline = time.monotonic() + 30
        while "Recording positions" not in out:
            assert flow.is_alive() and time.monotonic() < deadline, (outcome, out[-2000:])
            time.sleep(0.05)
            out += capsys.readouterr().out
        # a person moves every joint but wrist_roll through its range
        start = follower.positions()
        for name in [*MOTORS[:-2], "gripper"]:
            for delta in (-600, 600, 0):
                follower.set_position(name, start[name] + delta)
                # held long enough for lerobot's sampling loop to see it on a loaded machine
                time.sleep(0.15)
        keys.write("\n")
        keys.flush()
        flow.join(30)
    out += capsys.readouterr().out
    assert outcome == {"rc": 0}, (outcome, out[-2000:])
    seen = out.splitlines()
    assert any("calibration of the so101_follower saved to" in line for line in seen)
    cal = json.loads((tmp_path / "fresh.json").read_text())
    assert set(cal) == set(MOTORS)
    assert (cal["wrist_roll"]["range_min"], cal["wrist_roll"]["range_max"]) == (0, 4095)
    for name in [*MOTORS[:-2], "gripper"]:
        span = cal[name]["range_max"] - cal[name]["range_min"]
        assert 1100 <= span <= 1300, (name, cal[name])  # the 1200 steps it was moved through
        held = follower.calibration()[name]
        assert (held.range_min, held.range_max) == (cal[name]["range_min"], cal[name]["range_max"])
    arm = LeRobotArm(
        "so101_follower", port=follower.port, id="fresh", calibration_dir=str(tmp_path)
    )
    with arm:  # calibrated: it connects, and its limits are the recorded range
        assert np.all(np.array(arm.spec[JOINT_KEY].high[:3]) < 70.0)


def test_calibrate_refuses_what_it_cannot_calibrate() -> None:
    from hardware.calibrate import main

    with pytest.raises(LeRobotConfigError, match="nothing to calibrate"):
        main(["robot=sim_so101", "port=/dev/null"])
    with pytest.raises(LeRobotConfigError, match="give the serial port"):
        main(["robot=so101"])
    with pytest.raises(LeRobotConfigError, match="robot=NAME or teleop=NAME"):
        main(["port=/dev/null"])
    with pytest.raises(LeRobotConfigError, match="no robot config 'so999'"):
        main(["robot=so999", "port=/dev/null"])


# ---------------------------------------------------------------------- deployment
@pytest.mark.integration
def test_a_policy_trained_on_leader_demonstrations_deploys_on_the_follower(
    follower: FeetechBusEmulator, leader: FeetechBusEmulator, tmp_path: Path
) -> None:
    from robolearn.cli import main

    cal = tmp_path / "cal"
    data = tmp_path / "demos.zarr"
    arm = make_arm(follower, cal)
    with arm, Mover(leader, amplitude_deg=15.0):
        teleop = make_leader(leader, cal, spec=arm.spec)
        record(arm, teleop, data, num_episodes=2, episode_time_s=1.0)
    run = tmp_path / "run"
    train = [
        "train",
        f"dataset={data}",
        f"run_dir={run}",
        "policy=mlp",
        "policy.hidden_dims=[32,32]",
        "policy.horizon=8",
        "policy.n_action_steps=4",
        "policy.obs_keys=[state]",
        "policy.action_keys=[action.joint]",
        "train=demo",
        "train.steps=40",
        "train.batch_size=16",
        "train.val_every=40",
        "train.checkpoint_every=40",
        "train.device=cpu",
    ]
    assert main(train) == 0
    out = tmp_path / "deploy"
    deploy = [
        "deploy",
        f"checkpoint={run}",
        "robot=so101",
        f"robot.port={follower.port}",
        "robot.id=follower",
        f"robot.calibration_dir={cal}",
        "rate_hz=30",
        "episode_time_s=1.0",
        "episodes=1",
        "keys=off",
        "status=off",
        f"out={out}",
    ]
    assert main(deploy) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["robot"] == "LeRobotArm" and report["rate_hz"] == 30
    (episode,) = report["episodes"]
    assert episode["ticks"] >= 20 and episode["ended"] == "timeout", episode
    assert "nonfinite" not in episode["safety"]["interventions"]
    # deploying ended with the arm disconnected: torque off
    assert all(follower.register(m, "Torque_Enable") == 0 for m in MOTORS)


# ---------------------------------------------------------------------- robolearn cameras
# A video file replayed by robolearn's OpenCVCamera stands in for a USB camera: every frame
# shows its number in binary (two rows of six 8 px bars, white = 1), so a stored frame can be
# traced back to the decoded frame of the file it came from.
CAM_H, CAM_W, CAM_FPS = 32, 48, 30.0


def numbered_frame(i: int) -> np.ndarray:
    """Frame i (RGB): bits 0-5 of i in the top row of bars, bits 6-11 in the bottom row."""
    frame = np.zeros((CAM_H, CAM_W, 3), np.uint8)
    for b in range(12):
        if (i >> b) & 1:
            row, col = divmod(b, 6)
            frame[16 * row : 16 * (row + 1), 8 * col : 8 * (col + 1)] = 255
    return frame


def frame_number(frame: np.ndarray) -> int:
    centres = [frame[8 + 16 * (b // 6), 4 + 8 * (b % 6)].mean() for b in range(12)]
    return sum(1 << b for b, v in enumerate(centres) if v > 128)


def write_video(path: Path, frames: int) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), CAM_FPS, (CAM_W, CAM_H))
    assert writer.isOpened(), f"OpenCV cannot write MJPG to {path}"
    for i in range(frames):
        writer.write(cv2.cvtColor(numbered_frame(i), cv2.COLOR_RGB2BGR))  # it takes BGR
    writer.release()
    return path


def decoded_frames(path: Path) -> list[np.ndarray]:
    """Every frame of the file as OpenCV decodes it, in RGB (what the camera delivers)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return out


def camera_entry(video: Path, name: str = "front", **fields: Any) -> dict[str, Any]:
    """A robolearn camera entry as a config gives it (configs/camera/opencv.yaml)."""
    # generous waits: other tests share this machine's cores
    return {
        "_target_": "hardware.cameras.opencv.OpenCVCamera",
        "name": name,
        "source": str(video),
        "width": CAM_W,
        "height": CAM_H,
        "warmup_frames": 0,
        "timeout_s": 1.0,
        "max_age_s": 1.0,
        **fields,
    }


def opencv_camera(video: Path, name: str = "front", **fields: Any) -> Any:
    from hardware.cameras import OpenCVCamera

    entry = camera_entry(video, name, **fields)
    del entry["_target_"]
    return OpenCVCamera(**entry)


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return write_video(tmp_path / "clip.avi", 15)


def test_the_numbered_video_decodes_to_its_numbers(clip: Path) -> None:
    frames = decoded_frames(clip)
    assert [frame_number(f) for f in frames] == list(range(15))
    big = numbered_frame(4095 - 7)
    assert frame_number(big) == 4088


class TestEmulatedSO101WithACamera(RobotConformance):
    """The conformance suite with a robolearn camera (a replayed video file) on the arm."""

    @pytest.fixture
    def robot(
        self, follower: FeetechBusEmulator, tmp_path: Path, clip: Path
    ) -> Iterator[LeRobotArm]:
        with make_arm(follower, tmp_path / "cal", cameras=[opencv_camera(clip)]) as arm:
            yield arm


def test_robolearn_cameras_become_image_features_named_by_the_camera(
    clip: Path, tmp_path: Path
) -> None:
    from hardware.cameras import OpenCVCamera

    image = (CAM_H, CAM_W, 3)
    # from configs/robot/so101.yaml as `robolearn record` builds it: hydra builds the nested
    # _target_ nodes before the arm, which gets camera objects
    arm = from_config(
        "robot",
        "so101",
        port="/dev/null",
        calibration_dir=str(tmp_path),
        cameras=[camera_entry(clip, "front"), camera_entry(clip, "wrist")],
    )
    assert isinstance(arm.cameras["front"], OpenCVCamera) and list(arm.cameras) == [
        "front",
        "wrist",
    ]
    assert list(arm.spec) == ["state", "front", "wrist", JOINT_KEY]
    assert arm.spec["front"] == arm.cameras["front"].feature
    assert arm.spec["wrist"].shape == image and arm.spec["wrist"].kind == "image"
    assert not arm.cameras["front"].is_connected  # nothing is opened before connect()
    # a mapping name → entry (built or not), next to a lerobot camera config
    built = opencv_camera(clip, "side")
    arm = LeRobotArm(
        "so101_follower",
        port="/dev/null",
        cameras={
            "top": {k: v for k, v in camera_entry(clip).items() if k != "name"},
            "side": built,
            "lerobot_cam": {
                "type": "opencv",
                "index_or_path": 0,
                "width": 64,
                "height": 48,
                "fps": 30,
            },
        },
    )
    assert arm.cameras["top"].name == "top" and arm.cameras["side"] is built
    assert list(arm.lerobot.cameras) == ["lerobot_cam"]  # lerobot's driver reads that one
    assert arm.spec.image_keys == ["lerobot_cam", "top", "side"]
    assert arm.spec["lerobot_cam"].shape == (48, 64, 3) and arm.spec["top"].shape == image
    # no cameras: the packaged configs say null
    arm = from_config("robot", "so101", port="/dev/null", calibration_dir=str(tmp_path))
    assert arm.cameras == {} and arm.spec.image_keys == []


def test_bad_camera_entries_are_refused_with_the_fix(clip: Path) -> None:
    def arm(cameras: Any) -> LeRobotArm:
        return LeRobotArm("so101_follower", port="/dev/null", cameras=cameras)

    with pytest.raises(LeRobotConfigError, match=r"more than once"):
        arm([camera_entry(clip), opencv_camera(clip)])
    with pytest.raises(LeRobotConfigError, match=r"named 'front', not 'top'.*name: top"):
        arm({"top": opencv_camera(clip, "front")})
    with pytest.raises(LeRobotConfigError, match=r"cameras\[0\] is a lerobot camera.*mapping"):
        arm([{"type": "opencv", "index_or_path": 0}])
    with pytest.raises(LeRobotConfigError, match=r"cameras\[1\] is not a camera.*_target_"):
        arm([camera_entry(clip), "front"])
    with pytest.raises(LeRobotConfigError, match=r"cameras\[0\]: cannot build the camera"):
        arm([camera_entry(clip, width=-3)])
    with pytest.raises(LeRobotConfigError, match=r"camera 'state' has the name of another"):
        arm([camera_entry(clip, "state")])


def test_a_camera_that_cannot_open_leaves_nothing_open(
    follower: FeetechBusEmulator, clip: Path, tmp_path: Path
) -> None:
    good, missing = opencv_camera(clip, "front"), opencv_camera(tmp_path / "gone.avi", "wrist")
    arm = make_arm(follower, tmp_path / "cal", cameras=[good, missing])
    with pytest.raises(DeviceError, match=r"camera 'wrist'.*gone\.avi"):
        arm.connect()
    assert not arm.is_connected and not good.is_connected
    assert not arm.lerobot.bus.is_connected  # the cameras come first: the bus was not touched
    # an arm that fails after its cameras opened closes them again
    good = opencv_camera(clip, "front")
    uncalibrated = LeRobotArm(
        "so101_follower",
        port=follower.port,
        id="nobody",
        calibration_dir=str(tmp_path / "none"),
        cameras=[good],
    )
    with pytest.raises(CalibrationError):
        uncalibrated.connect()
    assert not good.is_connected and not uncalibrated.lerobot.bus.is_connected


def test_a_leader_arm_records_the_camera_frames_into_a_zarr_store(
    follower: FeetechBusEmulator, leader: FeetechBusEmulator, tmp_path: Path
) -> None:
    # 6 s of video played once (no loop, no reconnect): it outlasts the recording, and frame
    # numbers only ever grow, so every stored frame is traceable to one frame of the file
    video = write_video(tmp_path / "long.avi", 180)
    file_frames = decoded_frames(video)
    camera = opencv_camera(video, loop=False, reconnect_attempts=0)
    path = tmp_path / "camera.zarr"
    arm = make_arm(follower, tmp_path / "cal", cameras=[camera])
    with arm, Mover(leader):
        teleop = make_leader(leader, tmp_path / "cal", spec=arm.spec)
        _, results = record(arm, teleop, path, num_episodes=2, episode_time_s=0.5)
    assert not camera.is_connected  # disconnecting the arm closed its camera
    assert [r.outcome for r in results] == ["saved"] * 2
    assert verify_store(path).ok
    numbers: list[int] = []
    with EpisodeStore.open(path, "r") as store:
        assert store.spec["front"] == camera.feature
        assert set(store.spec) == {"state", "front", JOINT_KEY}
        for e in range(2):
            lo, hi = store.bounds(e)
            assert hi - lo >= 8
            drawn = []
            for f in store.read("front", lo, hi):
                n = frame_number(f)
                assert np.array_equal(f, file_frames[n]), n  # the decoded frame, bit for bit
                drawn.append(n)
            numbers += drawn
            # the camera's own capture times (episode-relative in the store), not the joints'
            stamps = store.capture_times(e, "front")
            assert np.all(np.diff(stamps) > 0), stamps
            assert not np.array_equal(stamps, store.capture_times(e, "state"))
            # stamped as the file was replayed at 30 fps: the time between two stored frames
            # is the number of frames between them over 30 (the median: a loaded machine
            # delays some grabs)
            per_frame = np.diff(stamps) / np.diff(drawn)
            assert 0.7 / CAM_FPS < float(np.median(per_frame)) < 1.5 / CAM_FPS, per_frame
    assert all(a < b for a, b in itertools.pairwise(numbers)), numbers  # no repeat, in order


def test_a_camera_whose_file_disappears_discards_only_that_episode(
    follower: FeetechBusEmulator, leader: FeetechBusEmulator, tmp_path: Path
) -> None:
    # a 0.4 s clip played in a loop: once the file is gone, the camera fails at the clip's
    # end (reopening it fails, and reconnect_attempts=0 makes that final)
    video = write_video(tmp_path / "short.avi", 12)
    file_frames = decoded_frames(video)
    camera = opencv_camera(video, reconnect_attempts=0)
    path = tmp_path / "cut.zarr"

    def log(line: str) -> None:
        if line.startswith("saved episode 1"):  # the camera's file goes during the third
            video.unlink()

    arm = make_arm(follower, tmp_path / "cal", cameras=[camera])
    with arm, Mover(leader):
        teleop = make_leader(leader, tmp_path / "cal", spec=arm.spec)
        with pytest.raises(RecordError, match=r"episode 2 discarded: camera 'front'") as info:
            record(arm, teleop, path, log=log, num_episodes=4, episode_time_s=0.6)
        error = info.value.__cause__
        assert isinstance(error, DeviceError) and "short.avi" in str(error)
        assert "holds its position" in arm.stops[-1]  # the arm made its safe stop
        with EpisodeStore.open(path, "r") as store:
            assert store.num_episodes == 2
            for e in range(2):
                lo, hi = store.bounds(e)
                for f in store.read("front", lo, hi):
                    assert np.array_equal(f, file_frames[frame_number(f)])
        assert verify_store(path).ok
    assert not camera.is_connected
