"""DART recording: the expert's arm is pushed off its commands, the store keeps the commands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from robolearn.data.store import EpisodeStore
from robolearn.record import RecordConfig, Recorder
from sim.robot import PyBulletRobot
from sim.tasks import make_task
from sim.teleop import ExpertTeleop


def quiet(_: str) -> None:
    pass


def test_a_disturbed_arm_goes_off_its_command_and_act_returns_the_command() -> None:
    with PyBulletRobot("panda") as robot:
        obs = robot.reset(seed=0)
        target = obs["state"].copy()
        offset = np.array([0.05, -0.04, 0.0, 0.03, 0.0, 0.0, 0.0])
        robot.disturb(offset)
        for _ in range(20):
            sent = robot.act({"action.joint": target})
            robot.clock.sleep_until(robot.clock.now() + 0.1)
        q = robot.observe()["state"][:7]
        np.testing.assert_array_equal(sent["action.joint"], target)
        np.testing.assert_allclose(q - target[:7], offset, atol=0.01)
        robot.disturb(None)
        for _ in range(20):
            robot.act({"action.joint": target})
            robot.clock.sleep_until(robot.clock.now() + 0.1)
        np.testing.assert_allclose(robot.observe()["state"][:7], target[:7], atol=0.01)
        with pytest.raises(ValueError, match="7 finite joint offsets"):
            robot.disturb(np.zeros(6))
        with pytest.raises(ValueError, match="7 finite joint offsets"):
            robot.disturb(np.full(7, np.nan))
        robot.disturb(offset)
        robot.reset(seed=1)  # a new episode starts undisturbed
        assert robot._disturbance is None


def record(path: Path, perturb: float) -> list[float]:
    task = make_task("pick_place")
    with PyBulletRobot("panda", task=task) as robot:
        cfg = RecordConfig(path, num_episodes=2, fps=10, episode_time_s=30, keep="all")
        teleop = ExpertTeleop(robot, perturb=perturb)
        results = Recorder(robot, teleop, cfg, log=quiet).run()
    assert [r.outcome for r in results] == ["saved", "saved"]
    gaps = []
    with EpisodeStore.open(path, "r") as store:
        for i in range(store.num_episodes):
            assert store.episode(i).success is True  # the expert still does the task
            a, b = store.bounds(i)
            command = store.read("action.joint", a, b)[:-1, :7]
            reached = store.read("state", a, b)[1:, :7]  # where the arm is a tick later
            gaps.append(float(np.abs(reached - command).mean()))
    return gaps


def test_dart_recording_stores_the_experts_corrections_not_the_pushes(tmp_path: Path) -> None:
    calm = record(tmp_path / "calm.zarr", 0.0)
    pushed = record(tmp_path / "pushed.zarr", 0.01)
    # with the pushes the arm is measurably off what the stored commands asked for, and the
    # expert brought it back all the same (the episodes succeeded)
    assert min(pushed) > 2 * max(calm), (calm, pushed)


def test_perturb_settings_are_checked() -> None:
    task = make_task("pick_place")
    with PyBulletRobot("panda", task=task) as robot:
        with pytest.raises(ValueError, match=r"perturb=-0\.1"):
            ExpertTeleop(robot, perturb=-0.1)
        with pytest.raises(ValueError, match=r"perturb_corr=1\.0"):
            ExpertTeleop(robot, perturb=0.01, perturb_corr=1.0)
