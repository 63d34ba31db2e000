"""Run a task's scripted expert for one episode: the building block of data generation and of
the expert-success figures in benchmarks/sim.py."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.robot import PyBulletRobot


@dataclass
class ExpertEpisode:
    seed: int
    success: bool
    steps: int
    path: np.ndarray  # end-effector positions, one row per control tick


def run_expert(robot: PyBulletRobot, seed: int, *, settle_ticks: int = 3) -> ExpertEpisode:
    """Reset to `seed`, follow the task's expert until it is done (or time runs out), let the
    scene settle for a few ticks, and report whether the task succeeded."""
    task = robot.task
    if task is None:
        raise ValueError("run_expert needs a robot with a task")
    obs = robot.reset(seed)
    expert = task.expert(robot, np.random.default_rng(seed))
    clock, period = robot.clock, 1.0 / task.config.control_hz
    path = []
    steps = 0
    for steps in range(1, task.max_steps + 1):  # noqa: B007 - steps is reported
        robot.act(expert.read(obs))
        clock.sleep_until(clock.now() + period)
        obs = robot.observe()
        path.append(obs["ee_pose"][:3].copy())
        if expert.done:
            break
    if expert.done:
        for _ in range(settle_ticks):
            robot.act(expert.read(obs))
            clock.sleep_until(clock.now() + period)
            obs = robot.observe()
    return ExpertEpisode(seed, task.success(), steps, np.array(path))
