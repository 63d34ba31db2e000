"""stack: put one cube on top of another."""

from __future__ import annotations

import numpy as np

from robolearn.spec import Feature
from sim.tasks.base import Task
from sim.tasks.expert import WaypointExpert
from sim.tasks.objects import PALETTE, make_box, place, pose, sample_apart
from sim.tasks.pick_place import DROP, CarryExpert


class Stack(Task):
    """The red cube goes on the blue one. Success: red rests on blue, centred within half a side."""

    name = "stack"

    def _build(self) -> None:
        assert self.world is not None and self.arm is not None
        self.half = 0.02 if self.arm.model.name == "panda" else 0.0125
        c = self.world.client
        self.top = make_box(c, (self.half,) * 3, (*PALETTE[0], 1.0), mass=0.05)
        self.base = make_box(c, (self.half,) * 3, (*PALETTE[1], 1.0), mass=0.2)

    def reset(self, rng: np.random.Generator) -> None:
        assert self.world is not None and self.arm is not None
        c = self.world.client
        if self.random.colors:
            for body in (self.top, self.base):
                c.changeVisualShape(body, -1, rgbaColor=[*rng.uniform(0.1, 0.95, 3), 1])
        if self.random.friction:
            for body in (self.top, self.base):
                c.changeDynamics(
                    body, -1, lateralFriction=1.0 + rng.uniform(-1, 1) * self.random.friction
                )
        a, b = sample_apart(rng, self.arm.model.workspace, 2, 6 * self.half)
        place(c, self.top, np.array([*a, self.half]), yaw=float(rng.uniform(-np.pi / 4, np.pi / 4)))
        place(
            c, self.base, np.array([*b, self.half]), yaw=float(rng.uniform(-np.pi / 4, np.pi / 4))
        )

    def state_features(self) -> dict[str, Feature]:
        names = [f"{o}_{f}" for o in ("top", "base") for f in ("x", "y", "z", "yaw_sin", "yaw_cos")]
        return {"task_state": Feature((10,), "float32", "state", names=names)}

    def state(self) -> dict[str, np.ndarray]:
        assert self.world is not None
        out = []
        for body in (self.top, self.base):
            pos, yaw = pose(self.world.client, body)
            out += [*pos, np.sin(4 * yaw), np.cos(4 * yaw)]
        return {"task_state": np.array(out)}

    def success(self) -> bool:
        assert self.world is not None and self.arm is not None
        top, _ = pose(self.world.client, self.top)
        base, _ = pose(self.world.client, self.base)
        centred = np.linalg.norm(top[:2] - base[:2]) < self.half
        on_top = abs(top[2] - base[2] - 2 * self.half) < 0.3 * self.half
        released = self.arm.open_fraction() > 0.5
        return bool(centred and on_top and released)

    def expert(self, robot, rng: np.random.Generator) -> WaypointExpert:  # type: ignore[no-untyped-def]
        return StackExpert(self, robot, rng)


class StackExpert(CarryExpert):
    def __init__(self, task: Stack, robot, rng: np.random.Generator) -> None:  # type: ignore[no-untyped-def]
        super().__init__(task, robot, rng, task.top)

    def drop_point(self) -> np.ndarray:
        base, _ = pose(self.task.world.client, self.task.base)
        return np.array([base[0], base[1], base[2] + 2 * self.task.half + DROP])

    def place_yaw(self) -> float:
        return pose(self.task.world.client, self.task.base)[1]
