"""The scripted expert as a teleoperator: the simulator's source of demonstrations.

`ExpertTeleop(robot)` draws a fresh expert from the robot's task at every `reset(seed)` (so
episode i of a recording is a function of its seed), feeds it the observations, and, once the
expert has finished and the scene has settled for `settle_ticks`, raises SAVE so the recorder
closes the episode. Whether a finished episode is kept can depend on the task's success
(`keep=success` in the recorder).

`perturb` (radians, default 0) records corrections as well as the path (DART, Laskey et al.
2017): a slowly varying random offset, with that spread on each arm joint, pushes the arm off
whatever the expert commands, and the expert, which steers by what it sees, corrects. The
store keeps the expert's commands, not the pushes, so a policy learns to come back to the path
from the near misses it will make itself. The push scales with the waypoint's steadiness
(`Waypoint.noise`: none during the fine, steady phases) and stops when the expert is done.
"""

from __future__ import annotations

import numpy as np

from robolearn.hal import EpisodeEvent, Observation, Teleoperator
from sim.robot import PyBulletRobot


class ExpertTeleop(Teleoperator):
    def __init__(
        self,
        robot: PyBulletRobot,
        settle_ticks: int = 3,
        perturb: float = 0.0,
        perturb_corr: float = 0.8,
    ) -> None:
        if robot.task is None:
            raise ValueError("the scripted expert needs a robot with a task (task=...)")
        if not (perturb >= 0.0 and np.isfinite(perturb)):
            raise ValueError(f"teleop.perturb={perturb}: a spread in radians, 0 or more")
        if not 0.0 <= perturb_corr < 1.0:
            raise ValueError(
                f"teleop.perturb_corr={perturb_corr}: the push's tick-to-tick correlation, "
                "in [0, 1)"
            )
        if perturb > 0 and not hasattr(robot, "disturb"):
            raise ValueError(
                f"teleop.perturb needs a simulated arm that can be pushed; {type(robot).__name__}"
                " cannot (set teleop.perturb=0)"
            )
        self.robot = robot
        self.settle_ticks = int(settle_ticks)
        self.perturb = float(perturb)
        self.perturb_corr = float(perturb_corr)
        self._offset: np.ndarray | None = None
        self._push_rng = np.random.default_rng()
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
        # its own stream, so that the expert's path for a seed is the same with or without it
        self._push_rng = np.random.default_rng(None if seed is None else [seed, 0x0DA7])
        self._offset = None
        if self.perturb > 0:
            self.robot.disturb(None)

    def read(self, observation: Observation | None = None) -> dict[str, np.ndarray]:
        if self.expert is None:
            self.reset(None)
        assert self.expert is not None
        action = self.expert.read(observation)
        done = bool(getattr(self.expert, "done", False))
        if done:
            self._after_done += 1
        if self.perturb > 0:
            self._push(done)
        return action

    def _push(self, done: bool) -> None:
        """The offset the arm gets on top of this tick's command (an AR(1) process with
        `perturb` as its stationary spread, scaled by the waypoint's steadiness)."""
        if done:
            self.robot.disturb(None)
            return
        n = len(self.robot.model.joint_names)
        if self._offset is None:
            self._offset = np.zeros(n)
        rho = self.perturb_corr
        step = self._push_rng.normal(0.0, self.perturb * np.sqrt(1 - rho**2), n)
        self._offset = rho * self._offset + step
        expert = self.expert
        waypoints = getattr(expert, "waypoints", None)
        index = getattr(expert, "index", 0)
        scale = float(waypoints[index].noise) if waypoints and index < len(waypoints) else 1.0
        self.robot.disturb(self._offset * min(scale, 1.0))

    def events(self) -> list[EpisodeEvent]:
        if self._after_done > self.settle_ticks and not self._signalled:
            self._signalled = True
            return [EpisodeEvent.SAVE]
        return []
