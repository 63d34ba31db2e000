"""pick_place: lift a cube and put it down on a target disc."""

from __future__ import annotations

import numpy as np

from robolearn.spec import Feature
from sim.tasks.base import Task
from sim.tasks.expert import Waypoint, WaypointExpert
from sim.tasks.objects import PALETTE, make_box, make_target, place, pose, sample_apart


class PickPlace(Task):
    name = "pick_place"

    def _build(self) -> None:
        assert self.world is not None and self.arm is not None
        big = self.arm.model.name == "panda"
        self.half = self.base_half = 0.02 if big else 0.0125
        self.radius = 0.04 if big else 0.025
        self.cube = make_box(self.world.client, (self.half,) * 3, (*PALETTE[0], 1.0), mass=0.05)
        self.target = make_target(self.world.client, self.radius, (0.2, 0.7, 0.3, 1.0))

    def reset(self, rng: np.random.Generator) -> None:
        assert self.world is not None and self.arm is not None
        c = self.world.client
        half = self.base_half
        if self.random.size:
            # a new size needs a new collision shape: rebuild the cube
            half *= 1 + rng.uniform(-self.random.size, self.random.size)
            c.removeBody(self.cube)
            self.cube = make_box(c, (half,) * 3, (*PALETTE[0], 1.0), mass=0.05)
        self.half = half
        if self.random.colors:
            c.changeVisualShape(self.cube, -1, rgbaColor=[*rng.uniform(0.1, 0.95, 3), 1])
        if self.random.friction:
            c.changeDynamics(
                self.cube, -1, lateralFriction=1.0 + rng.uniform(-1, 1) * self.random.friction
            )
        cube_xy, target_xy = sample_apart(rng, self.arm.model.workspace, 2, 4 * self.radius)
        place(
            c, self.cube, np.array([*cube_xy, half]), yaw=float(rng.uniform(-np.pi / 4, np.pi / 4))
        )
        place(c, self.target, np.array([*target_xy, 0.001]))

    def state_features(self) -> dict[str, Feature]:
        names = [
            "cube_x",
            "cube_y",
            "cube_z",
            "cube_yaw_sin",
            "cube_yaw_cos",
            "target_x",
            "target_y",
        ]
        return {"task_state": Feature((7,), "float32", "state", names=names)}

    def state(self) -> dict[str, np.ndarray]:
        assert self.world is not None
        cube, yaw = pose(self.world.client, self.cube)
        target, _ = pose(self.world.client, self.target)
        # yaw is only defined modulo 90° for a cube: encode 4·yaw so the features are continuous
        return {"task_state": np.array([*cube, np.sin(4 * yaw), np.cos(4 * yaw), *target[:2]])}

    def success(self) -> bool:
        assert self.world is not None
        cube, _ = pose(self.world.client, self.cube)
        target, _ = pose(self.world.client, self.target)
        on_target = np.linalg.norm(cube[:2] - target[:2]) < self.radius
        resting = cube[2] < self.half * 1.5
        return bool(on_target and resting)

    def expert(self, robot, rng: np.random.Generator) -> WaypointExpert:  # type: ignore[no-untyped-def]
        return PickPlaceExpert(self, robot, rng)


class CarryExpert(WaypointExpert):
    """Picks `body` up and lets it go at `drop_point()`, correcting for where it sits in the hand.

    Per episode it draws a hover height, a speed, a noise level and a carrying route (straight,
    or arcing out to the left or right), so the demonstrations are multimodal. Once the cube is
    lifted, the remaining waypoints are shifted by the cube's offset from the gripper centre,
    as a person would aim with the cube rather than with the hand.
    """

    def __init__(self, task, robot, rng: np.random.Generator, body: int) -> None:  # type: ignore[no-untyped-def]
        super().__init__(
            robot,
            rng,
            speed=float(rng.uniform(0.015, 0.025)),
            noise=float(rng.uniform(0.0005, 0.002)),
        )
        self.task = task
        self.body = body
        self.hover = task.arm.model.hover * float(rng.uniform(0.8, 1.2))
        self.route = int(rng.integers(0, 3))  # 0 straight, 1 arc left, 2 arc right
        self._nominal: list[np.ndarray] = []
        self._corrected = False

    def drop_point(self) -> np.ndarray:
        raise NotImplementedError

    def on_tick(self, obs) -> None:  # type: ignore[no-untyped-def]
        client = self.task.world.client
        if not self._nominal:
            cube, yaw = pose(client, self.body)
            self.plan(
                pick_and_place_route(
                    cube,
                    yaw,
                    self.task.half,
                    self.drop_point(),
                    _current_yaw(obs),
                    self.hover,
                    self.route,
                )
            )
            self._nominal = [w.pos.copy() for w in self.waypoints]
            return


PICKED = 4  # waypoints before the cube is in the air


class PickPlaceExpert(CarryExpert):
    def __init__(self, task: PickPlace, robot, rng: np.random.Generator) -> None:  # type: ignore[no-untyped-def]
        super().__init__(task, robot, rng, task.cube)

    def drop_point(self) -> np.ndarray:
        target, _ = pose(self.task.world.client, self.task.target)
        return np.array([target[0], target[1], 2 * self.task.half + 0.01])


def pick_and_place_route(
    cube: np.ndarray,
    cube_yaw: float,
    half: float,
    drop: np.ndarray,
    tool_yaw: float,
    hover: float,
    route: int,
) -> list[Waypoint]:
    """Waypoints to grasp a cube from above and let it go at `drop` (0 straight, 1/2 arcs)."""
    # the jaws close across a face: any of 4 yaws works; take the one closest to the tool's
    grasp_yaw = cube_yaw + np.pi / 2 * np.round((tool_yaw - cube_yaw) / (np.pi / 2))
    up = np.array([0, 0, hover])
    grasp = np.array([cube[0], cube[1], max(half * 0.8, 0.008)])
    plan = [Waypoint(grasp + up, 1.0, tol=0.01, yaw=grasp_yaw)]
    plan += [Waypoint(grasp, 1.0, tol=0.004, yaw=grasp_yaw, speed=0.01)]
    plan += [Waypoint(grasp, 0.0, tol=0.01, dwell=4)]
    plan += [Waypoint(grasp + up, 0.0, tol=0.015)]
    if route:
        mid = (grasp + drop) / 2 + up
        side = np.array([-(drop - grasp)[1], (drop - grasp)[0], 0.0])
        side = side / (np.linalg.norm(side) + 1e-9) * (0.08 if route == 1 else -0.08) * half / 0.02
        plan += [Waypoint(mid + side, 0.0, tol=0.03)]
    plan += [Waypoint(drop + up, 0.0, tol=0.01)]
    plan += [Waypoint(drop, 0.0, tol=0.006, speed=0.01)]
    plan += [Waypoint(drop, 1.0, tol=0.02, dwell=3)]
    plan += [Waypoint(drop + up, 1.0, tol=0.02)]
    return plan


def _current_yaw(obs) -> float:  # type: ignore[no-untyped-def]
    r = obs["ee_pose"][3:].astype(float)
    return float(np.arctan2(r[1], r[0]))
