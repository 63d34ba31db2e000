"""Gymnasium environments over the simulated tasks, so RL and gym tooling work on them.

`import sim.gym_env` registers the ids (or use `gymnasium.make("sim.gym_env:robolearn/PickPlace-v0")`):
robolearn/{Reach,PushCube,PickPlace,Stack,PushT}-v0 on the Panda and the same names with
-SO101-v0 on the SO-101. Observations are the robot spec's observation keys; actions are one of its action
representations (end-effector deltas by default). Reward is 1 on the step the task succeeds
(which ends the episode); episodes are truncated after the task's time limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from robolearn.spec import Feature, FeatureSpec
from sim.robot import EE_KEY, CameraConfig, PyBulletRobot
from sim.tasks import TASKS, make_task
from sim.tasks.base import Task, TaskConfig


def _space(feature: Feature) -> spaces.Box:
    if feature.kind == "image":
        return spaces.Box(0, 255, feature.shape, np.uint8)
    low = (
        np.full(feature.shape, -np.inf)
        if feature.low is None
        else np.asarray(feature.low).reshape(feature.shape)
    )
    high = (
        np.full(feature.shape, np.inf)
        if feature.high is None
        else np.asarray(feature.high).reshape(feature.shape)
    )
    return spaces.Box(
        low.astype(feature.dtype),
        high.astype(feature.dtype),
        feature.shape,
        np.dtype(feature.dtype),
    )


def observation_space(spec: FeatureSpec) -> spaces.Dict:
    return spaces.Dict({k: _space(spec[k]) for k in spec.observation_keys})


class RobolearnEnv(gym.Env):
    """One task on one simulated arm, stepped in lock-step at the task's control rate."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}  # noqa: RUF012 - gymnasium's API

    def __init__(
        self,
        task: type[Task] | Task,
        arm: str = "panda",
        *,
        cameras: Sequence[CameraConfig] = (),
        action_key: str = EE_KEY,
        task_config: TaskConfig | None = None,
        render_mode: str | None = None,
    ) -> None:
        self.task = task(task_config) if isinstance(task, type) else task
        self.robot = PyBulletRobot(arm, task=self.task, cameras=cameras)
        if action_key not in self.robot.spec.action_keys:
            raise ValueError(
                f"action_key {action_key!r} is not one of {self.robot.spec.action_keys}"
            )
        self.action_key = action_key
        self.render_mode = render_mode
        self.observation_space = observation_space(self.robot.spec)
        self.action_space = _space(self.robot.spec[action_key])
        self.metadata = {**self.metadata, "render_fps": self.task.config.control_hz}
        self._steps = 0
        self._render_camera = CameraConfig("render", width=320, height=240)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):  # type: ignore[override]
        super().reset(seed=seed)
        if not self.robot.is_connected:
            self.robot.connect()
        draw = int(self.np_random.integers(0, 2**31 - 1))
        obs = self.robot.reset(draw)
        self._steps = 0
        return dict(obs.values), {"seed": draw}

    def step(self, action: np.ndarray):  # type: ignore[override]
        self.robot.act({self.action_key: action})
        clock = self.robot.clock
        clock.sleep_until(clock.now() + 1.0 / self.task.config.control_hz)
        obs = self.robot.observe()
        self._steps += 1
        success = self.task.success()
        truncated = self._steps >= self.task.max_steps and not success
        return dict(obs.values), float(success), success, truncated, {"is_success": success}

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        return self.robot.render(self._render_camera)

    def close(self) -> None:
        self.robot.disconnect()


def _camel(name: str) -> str:
    return "".join("T" if part == "t" else part.capitalize() for part in name.split("_"))


# robolearn/PickPlace-v0 (Panda), robolearn/PickPlace-SO101-v0, … for every task in TASKS
IDS = {
    f"robolearn/{_camel(name)}{suffix}-v0": (name, arm)
    for name in TASKS
    for arm, suffix in (("panda", ""), ("so101", "-SO101"))
}


def _make(task: str, arm: str, **kwargs: Any) -> RobolearnEnv:
    config = kwargs.pop("task_config", None)
    return RobolearnEnv(make_task(task, config), arm, **kwargs)


for _id, (_task, _arm) in IDS.items():
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_make, kwargs={"task": _task, "arm": _arm})
