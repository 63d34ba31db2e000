"""push_cube: push a cube across the table into a target region, without grasping it."""

from __future__ import annotations

import numpy as np

from robolearn.spec import Feature
from sim.tasks.base import Task
from sim.tasks.expert import Waypoint, WaypointExpert
from sim.tasks.objects import PALETTE, make_box, make_target, place, pose, sample_apart

FRICTION = 0.5  # cube on table: a pushed cube slides rather than tipping


class PushCube(Task):
    """The red cube must end with its centre inside the green disc, still upright on the table.

    The gripper stays closed in the expert's demonstrations (the fingers are the pusher), but the
    task does not forbid grasping: a policy is judged only by where the cube ends up.
    """

    name = "push_cube"

    def _build(self) -> None:
        assert self.world is not None and self.arm is not None
        big = self.arm.model.name == "panda"
        self.half = self.base_half = 0.025 if big else 0.015
        self.radius = 0.05 if big else 0.03
        self.cube = make_box(
            self.world.client, (self.half,) * 3, (*PALETTE[0], 1.0), mass=0.1, friction=FRICTION
        )
        self.target = make_target(self.world.client, self.radius, (0.2, 0.7, 0.3, 1.0))

    def reset(self, rng: np.random.Generator) -> None:
        assert self.world is not None and self.arm is not None
        c = self.world.client
        half = self.base_half
        if self.random.size:
            half *= 1 + rng.uniform(-self.random.size, self.random.size)
            c.removeBody(self.cube)
            self.cube = make_box(c, (half,) * 3, (*PALETTE[0], 1.0), mass=0.1, friction=FRICTION)
        self.half = half
        if self.random.colors:
            c.changeVisualShape(self.cube, -1, rgbaColor=[*rng.uniform(0.1, 0.95, 3), 1])
            c.changeVisualShape(self.target, -1, rgbaColor=[*rng.uniform(0.1, 0.95, 3), 1])
        if self.random.friction:
            c.changeDynamics(
                self.cube,
                -1,
                lateralFriction=FRICTION * (1.0 + rng.uniform(-1, 1) * self.random.friction),
            )
        # the cube starts well outside the target: at least three radii between the centres
        cube_xy, target_xy = sample_apart(rng, self.arm.model.workspace, 2, 3 * self.radius)
        yaw = float(rng.uniform(-np.pi / 4, np.pi / 4))
        place(c, self.cube, np.array([*cube_xy, half]), yaw=yaw)
        place(c, self.target, np.array([*target_xy, 0.001]))

    def state_features(self) -> dict[str, Feature]:
        names = ["cube_x", "cube_y", "cube_z", "cube_yaw_sin", "cube_yaw_cos", "target_x"]
        names.append("target_y")
        return {"task_state": Feature((7,), "float32", "state", names=names)}

    def state(self) -> dict[str, np.ndarray]:
        assert self.world is not None
        cube, yaw = pose(self.world.client, self.cube)
        target, _ = pose(self.world.client, self.target)
        return {"task_state": np.array([*cube, np.sin(4 * yaw), np.cos(4 * yaw), *target[:2]])}

    def success(self) -> bool:
        assert self.world is not None
        cube, _ = pose(self.world.client, self.cube)
        target, _ = pose(self.world.client, self.target)
        inside = np.linalg.norm(cube[:2] - target[:2]) < self.radius
        on_table = abs(cube[2] - self.half) < 0.2 * self.half
        return bool(inside and on_table)

    def expert(self, robot, rng: np.random.Generator) -> WaypointExpert:  # type: ignore[no-untyped-def]
        return PushExpert(self, robot, rng)


class PushingExpert(WaypointExpert):
    """A waypoint follower for pushing: re-plans one waypoint at a time and never winds up."""

    max_lag = 0.02  # metres the commanded target may lead the hand while pushing

    def __init__(self, robot, rng: np.random.Generator, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(robot, rng, **kwargs)
        self._cmd: np.ndarray | None = None
        self._finished = False
        self._trail: list[np.ndarray] = []
        self.debug = False

    def stuck(self, ticks: int = 8, moved: float = 0.003, far: float = 0.01) -> bool:
        """The hand has hardly moved for `ticks` ticks while it still has somewhere to go."""
        if len(self._trail) <= ticks or self.done or self.index >= len(self.waypoints):
            return False
        away = np.linalg.norm(self._trail[-1] - self.waypoints[self.index].pos) > far
        return bool(away and np.linalg.norm(self._trail[-1] - self._trail[-1 - ticks]) < moved)

    @property
    def done(self) -> bool:
        return self._finished

    def read(self, observation=None):  # type: ignore[no-untyped-def]
        obs = observation if observation is not None else self.robot.observe()
        action = super().read(obs)
        # Anti-windup: the robot integrates deltas into its target, so while the fingers press
        # on something the target would run away. Keep it within `max_lag` of the hand.
        ee = obs["ee_pose"][:3].astype(np.float64)
        self._trail = [*self._trail[-15:], ee]
        if self._cmd is None:
            self._cmd = ee.copy()
        step = action[self.action_key][:3].astype(np.float64)
        lag = self._cmd + step - ee
        if getattr(self, "phase", "push") != "push":
            lag = step  # not pushing: let go of any pressure at once (target = hand + step)
        elif np.linalg.norm(lag) > self.max_lag:
            lag = lag / np.linalg.norm(lag) * self.max_lag
        step = np.clip(ee + lag - self._cmd, -self.max_step, self.max_step)
        self._cmd = self._cmd + step
        action[self.action_key][:3] = step
        return action

    def _set(self, waypoint: Waypoint) -> None:
        self.waypoints, self.index, self._dwell = [waypoint], 0, 0


class PushExpert(PushingExpert):
    """Closed-loop pusher: gets behind the cube (as seen from where it should go) and pushes.

    Every tick it re-plans from the cube's pose, so a cube that turns or slides off the fingers
    is caught again: if the fingers fall beside the cube, it lifts, goes round and comes down
    behind it once more. Per episode it draws a route (a straight push, or an L: along x first
    or along y first, the way people often push along the table's edges), speeds and noise.
    """

    def __init__(self, task: PushCube, robot, rng: np.random.Generator) -> None:  # type: ignore[no-untyped-def]
        super().__init__(
            robot,
            rng,
            speed=float(rng.uniform(0.015, 0.025)),
            noise=float(rng.uniform(0.0003, 0.0015)),
        )
        self.task = task
        self.route = int(rng.integers(0, 3))  # 0 straight, 1 x then y, 2 y then x
        self.push_speed = float(rng.uniform(0.007, 0.012))
        self.finger = 0.012 if task.arm.model.name == "panda" else 0.008
        self.push_z = 0.018 if task.arm.model.name == "panda" else 0.008
        self.travel_z = 2 * task.half + float(rng.uniform(0.03, 0.05))
        self.phase = "lift"
        self._corner: np.ndarray | None = None
        self._d: np.ndarray | None = None
        self._behind = np.zeros(2)
        self.debug = False

    def _subgoal(self, cube: np.ndarray, goal: np.ndarray) -> np.ndarray:
        if self._corner is None and self.route:
            corner = (
                np.array([goal[0], cube[1]]) if self.route == 1 else np.array([cube[0], goal[1]])
            )
            legs = (np.linalg.norm(corner - cube), np.linalg.norm(goal - corner))
            self._corner = corner if min(legs) > 0.04 else np.array([np.nan, np.nan])
        if self._corner is not None and not np.isnan(self._corner[0]):
            # the first leg ends once the cube is level with the corner along that leg
            axis = 0 if self.route == 1 else 1
            if abs(cube[axis] - self._corner[axis]) > 0.01:
                return self._corner
            self._corner = np.array([np.nan, np.nan])
        return goal

    def on_tick(self, obs) -> None:  # type: ignore[no-untyped-def]
        task = self.task
        client = task.world.client
        cube3, yaw = pose(client, task.cube)
        goal = pose(client, task.target)[0][:2]
        cube = cube3[:2]
        ee = obs["ee_pose"][:3].astype(np.float64)
        if self.phase == "retreat":
            if (
                self.index >= len(self.waypoints)
                or np.linalg.norm(ee - self.waypoints[0].pos) < 0.01
            ):
                self._finished = True
            return
        if np.linalg.norm(goal - cube) < 0.25 * task.radius:
            self.phase = "retreat"
            self._set(Waypoint(np.array([*ee[:2], self.travel_z]), 0.0, tol=0.01))
            return
        sub = self._subgoal(cube, goal)
        if self._d is None or np.linalg.norm(sub - cube) > 0.02:
            # close to the subgoal the direction is ill-defined: keep pushing the way we were
            self._d = (sub - cube) / max(np.linalg.norm(sub - cube), 1e-9)
        d = self._d
        n = np.array([-d[1], d[0]])
        # distance from the cube's centre to its face along -d (a turned cube is wider)
        rel = yaw - np.arctan2(d[1], d[0])
        reach = task.half * (abs(np.cos(rel)) + abs(np.sin(rel)))
        behind = cube - d * (reach + self.finger + 0.01)
        along, lateral = (ee[:2] - cube) @ d, (ee[:2] - cube) @ n
        in_place = along < -(reach + 0.002) and abs(lateral) < 0.6 * task.half
        low = ee[2] < self.push_z + 0.01
        if self.phase == "push" and not (in_place and low):
            if self.debug:
                print("lost", along, -(reach + 0.002), lateral, ee[2])
            self.phase = "lift"
        if self.phase == "lift":
            self._set(Waypoint(np.array([*ee[:2], self.travel_z]), 0.0, tol=0.01))
            if ee[2] > self.travel_z - 0.01:
                self.phase = "over"
        if self.phase == "over":
            self._set(Waypoint(np.array([*behind, self.travel_z]), 0.0, tol=0.008))
            if np.linalg.norm(ee[:2] - behind) < 0.008:
                self.phase = "down"
                self._behind = behind
        if self.phase == "down" and np.linalg.norm(ee[:2] - cube) < reach + self.finger:
            self.phase = "lift"  # the cube moved under the fingers: go round again
            self._set(Waypoint(np.array([*ee[:2], self.travel_z]), 0.0, tol=0.01))
            return
        if self.phase == "down":
            # come straight down where we were, not where a moving cube would put us
            self._set(Waypoint(np.array([*self._behind, self.push_z]), 0.0, tol=0.004, speed=0.015))
            if ee[2] < self.push_z + 0.005:
                self.phase = "push"
            return
        if self.phase == "push":
            # aim at the contact point on the line through the cube towards the subgoal, a
            # little inside the cube, so the fingers push and steer at once
            contact = cube - d * (reach + self.finger) + d * 1.5 * self.push_speed
            self._set(
                Waypoint(np.array([*contact, self.push_z]), 0.0, tol=0.001, speed=self.push_speed)
            )
