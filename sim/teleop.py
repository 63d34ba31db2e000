"""The scripted expert as a teleoperator: the simulator's source of demonstrations.

`ExpertTeleop(robot)` draws a fresh expert from the robot's task at every `reset(seed)` (so
episode i of a recording is a function of its seed), feeds it the observations, and, once the
expert has finished and the scene has settled for `settle_ticks`, raises SAVE so the recorder
closes the episode. Whether a finished episode is kept can depend on the task's success
(`keep=success` in the recorder).
"""

from __future__ import annotations

import numpy as np

from robolearn.hal import EpisodeEvent, Observation, Teleoperator
from sim.robot import PyBulletRobot


class ExpertTeleop(Teleoperator):
    def __init__(self, robot: PyBulletRobot, settle_ticks: int = 3) -> None:
        if robot.task is None:
            raise ValueError("the scripted expert needs a robot with a task (task=...)")
        self.robot = robot
        self.settle_ticks = int(settle_ticks)
        self.action_key = "action.ee"
        self.expert: Teleoperator | None = None
        self._after_done = 0
        self._signalled = False

    def reset(self, seed: int | None = None) -> None:
        task = self.robot.task
        assert task is not None
        self.expert = task.expert(self.robot, np.random.default_rng(seed))
        self.action_key = self.expert.action_key
        self._after_done = 0
        self._signalled = False

    def read(self, observation: Observation | None = None) -> dict[str, np.ndarray]:
        if self.expert is None:
            self.reset(None)
        assert self.expert is not None
        action = self.expert.read(observation)
        if getattr(self.expert, "done", False):
            self._after_done += 1
        return action

    def events(self) -> list[EpisodeEvent]:
        if self._after_done > self.settle_ticks and not self._signalled:
            self._signalled = True
            return [EpisodeEvent.SAVE]
        return []
