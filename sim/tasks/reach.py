"""reach: bring the gripper to a target point in the air above the table."""

from __future__ import annotations

import numpy as np
import pybullet as p

from robolearn.spec import Feature
from sim.tasks.base import Task
from sim.tasks.expert import Waypoint, WaypointExpert

TOLERANCE = 0.02


class Reach(Task):
    name = "reach"

    def _build(self) -> None:
        assert self.world is not None
        vis = self.world.client.createVisualShape(
            p.GEOM_SPHERE, radius=0.015, rgbaColor=[0.9, 0.2, 0.2, 0.8]
        )
        self.marker = self.world.client.createMultiBody(0, -1, vis, basePosition=[0.5, 0, 0.2])
        self.goal = np.array([0.5, 0.0, 0.2])

    def reset(self, rng: np.random.Generator) -> None:
        assert self.world is not None and self.arm is not None
        (x0, x1), (y0, y1) = self.arm.model.workspace
        hover = self.arm.model.hover
        self.goal = np.array(
            [rng.uniform(x0, x1), rng.uniform(y0, y1), rng.uniform(0.3 * hover, 1.5 * hover)]
        )
        self.world.client.resetBasePositionAndOrientation(
            self.marker, self.goal.tolist(), [0, 0, 0, 1]
        )

    def state_features(self) -> dict[str, Feature]:
        return {
            "task_state": Feature((3,), "float32", "state", names=["goal_x", "goal_y", "goal_z"])
        }

    def state(self) -> dict[str, np.ndarray]:
        return {"task_state": self.goal.copy()}

    def success(self) -> bool:
        assert self.arm is not None
        return bool(np.linalg.norm(self.arm.ee_pose()[0] - self.goal) < TOLERANCE)

    def expert(self, robot, rng: np.random.Generator) -> WaypointExpert:  # type: ignore[no-untyped-def]
        expert = WaypointExpert(
            robot,
            rng,
            speed=float(rng.uniform(0.015, 0.03)),
            noise=float(rng.uniform(0.0005, 0.002)),
        )
        route = []
        if rng.random() < 0.5:  # half the time, swing through a point off the straight line
            start = robot.arm.ee_pose()[0]
            via = (start + self.goal) / 2 + rng.normal(0, 0.05, 3) * np.array([1, 1, 0.3])
            route.append(Waypoint(via, 1.0, tol=0.03))
        route.append(Waypoint(self.goal.copy(), 1.0, tol=TOLERANCE / 4, dwell=2))
        expert.plan(route)
        return expert
