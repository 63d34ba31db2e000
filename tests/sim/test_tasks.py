"""Tasks and their scripted experts: success, determinism, variety and the state they expose."""

from __future__ import annotations

import numpy as np
import pytest

from sim.robot import PyBulletRobot
from sim.tasks.base import Randomization, TaskConfig
from sim.tasks.pick_place import PickPlace
from sim.tasks.reach import Reach
from sim.tasks.stack import Stack


def rollout(robot: PyBulletRobot, task, seed: int) -> tuple[bool, np.ndarray]:  # type: ignore[no-untyped-def]
    obs = robot.reset(seed)
    expert = task.expert(robot, np.random.default_rng(seed))
    path = []
    for _ in range(task.max_steps):
        robot.act(expert.read(obs))
        robot.clock.sleep_until(robot.clock.now() + 1.0 / task.config.control_hz)
        obs = robot.observe()
        path.append(obs["ee_pose"][:3].copy())
        if expert.done:
            break
    return task.success(), np.array(path)


@pytest.mark.parametrize("task_cls", [Reach, PickPlace, Stack])
def test_expert_succeeds_on_fresh_seeds(task_cls) -> None:
    task = task_cls()
    with PyBulletRobot("panda", task=task) as robot:
        results = [rollout(robot, task, seed)[0] for seed in range(200, 212)]
    assert sum(results) >= 11, results  # the benchmark measures 100 seeds; the bar is 95 %


def test_so101_pick_place_expert_succeeds_on_fresh_seeds() -> None:
    """The 5-DoF arm: the expert sends joint targets that keep the tool pointing down, and
    grasps with the fixed jaw just clear of the cube."""
    task = PickPlace()
    with PyBulletRobot("so101", task=task) as robot:
        results = [rollout(robot, task, seed)[0] for seed in range(200, 212)]
    assert sum(results) >= 11, results


def test_same_seed_same_start_and_same_expert_path() -> None:
    task = PickPlace()
    with PyBulletRobot("panda", task=task) as robot:
        first = robot.reset(5)["task_state"]
        _, path_a = rollout(robot, task, 5)
        second = robot.reset(5)["task_state"]
        _, path_b = rollout(robot, task, 5)
        other = robot.reset(6)["task_state"]
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(path_a, path_b, atol=1e-6)
    assert not np.allclose(first, other)


def test_experts_are_varied_across_episodes() -> None:
    """Different seeds give different routes and speeds: not one fixed script."""
    task = PickPlace()
    with PyBulletRobot("panda", task=task) as robot:
        routes = {task.expert(robot, np.random.default_rng(s)).route for s in range(30)}
        lengths = {len(rollout(robot, task, s)[1]) for s in range(4)}
    assert routes == {0, 1, 2}
    assert len(lengths) > 1


def test_task_state_is_in_the_spec_and_success_needs_the_cube_on_the_target() -> None:
    task = PickPlace()
    with PyBulletRobot("panda", task=task) as robot:
        obs = robot.reset(1)
        assert robot.spec["task_state"].names[0] == "cube_x"
        assert obs["task_state"].shape == (7,)
        assert not task.success()  # the cube starts away from the target


def test_domain_randomisation_is_off_by_default_and_changes_the_scene_when_on() -> None:
    plain, randomised = (
        PickPlace(),
        PickPlace(TaskConfig(randomization=Randomization(colors=True, size=0.2))),
    )
    with PyBulletRobot("panda", task=plain) as a, PyBulletRobot("panda", task=randomised) as b:
        za, zb = [], []
        for seed in range(3):
            za.append(a.reset(seed)["task_state"][2])
            zb.append(b.reset(seed)["task_state"][2])
    assert np.allclose(za, plain.base_half, atol=1e-3)
    assert not np.allclose(zb, plain.base_half, atol=1e-3)
    assert len({round(float(z), 4) for z in zb}) == 3  # a new size each episode


def test_lighting_randomisation_changes_the_images_only_when_on() -> None:
    from sim.robot import CameraConfig

    cams = [CameraConfig("top", width=32, height=32)]
    means = {}
    for lighting in (False, True):
        task = PickPlace(TaskConfig(randomization=Randomization(lighting=lighting)))
        with PyBulletRobot("panda", task=task, cameras=cams) as robot:
            means[lighting] = [robot.reset(seed)["top"].astype(float).mean() for seed in range(3)]
    assert np.ptp(means[False]) < 1.0  # same light every episode (only the cube moves)
    assert np.ptp(means[True]) > 2.0
