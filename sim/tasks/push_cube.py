"""push_cube: push a cube across the table into a target region, without grasping it."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Pusher:
    """What the hand pushes with, seen from above: a rectangle in the frame of the tool pointing
    down (`x` and `y` ranges, m; the shut jaws) grown by `radius`. The default is a disc of
    `radius` about the tool centre, the way the experts allow for fingers that straddle it."""

    x: tuple[float, float] = (0.0, 0.0)
    y: tuple[float, float] = (0.0, 0.0)
    radius: float = 0.0

    @classmethod
    def of(cls, model, radius: float) -> Pusher:  # type: ignore[no-untyped-def]
        """The arm's measured footprint (`ArmModel.push_footprint`), or a disc of `radius`."""
        if model.push_footprint is None:
            return cls(radius=radius)
        (x0, x1), (y0, y1) = model.push_footprint
        return cls((x0, x1), (y0, y1))

    @property
    def round(self) -> bool:
        return self.x[0] == self.x[1] and self.y[0] == self.y[1]

    def centre(self, yaw: float) -> np.ndarray:
        """The footprint's centre relative to the tool centre, in the table plane, the tool
        pointing down with its x axis at `yaw` (its y axis then at `yaw` - 90°)."""
        c, s = np.cos(yaw), np.sin(yaw)
        cx, cy = (self.x[0] + self.x[1]) / 2, (self.y[0] + self.y[1]) / 2
        return np.array([c * cx + s * cy, s * cx - c * cy])

    def depth(self, d: np.ndarray, yaw: float) -> float:
        """From the footprint's centre to its front when pushing along the unit vector `d`."""
        c, s = np.cos(yaw), np.sin(yaw)
        hx, hy = (self.x[1] - self.x[0]) / 2, (self.y[1] - self.y[0]) / 2
        return float(hx * abs(c * d[0] + s * d[1]) + hy * abs(c * d[1] - s * d[0]) + self.radius)

    def face_yaws(self, d: np.ndarray, wide: bool) -> tuple[float, float]:
        """The two tool yaws that square a long face (`wide`) or a short one to `d`."""
        a = float(np.arctan2(d[1], d[0]))
        x_faces_long = self.y[1] - self.y[0] >= self.x[1] - self.x[0]
        if wide != x_faces_long:
            a += np.pi / 2
        return _wrap(a), _wrap(a + np.pi)


class PushingExpert(WaypointExpert):
    """A waypoint follower for pushing: re-plans one waypoint at a time and never winds up.

    With a round pusher (`Pusher`) it sends end-effector deltas and leaves the tool's yaw
    alone. With an arm's measured footprint (the SO-101's jaws, to one side of the tool centre)
    it sends joint targets (see `WaypointExpert.joint_space`), aims the footprint rather than
    the tool centre, and turns the tool so that a face of the footprint is square to the push.
    """

    max_lag = 0.02  # metres the commanded target may lead the hand while pushing
    travel_z: float  # the height the hand moves about at, above the objects (set by subclasses)

    def __init__(self, robot, rng: np.random.Generator, *, finger: float, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(robot, rng, **kwargs)
        self._cmd: np.ndarray | None = None
        self._finished = False
        self._trail: list[np.ndarray] = []
        self.debug = False
        self.pusher = Pusher.of(robot.model, finger)
        self.joint_space = not self.pusher.round
        # A light arm on soft servos (the SO-101) jolts what it touches at each new target: it
        # slows down as the object nears its place, backs off before lifting off it and lifts
        # slowly.
        self.gentle = self.joint_space
        # which faces push (the long ones or the short ones): a habit drawn per episode
        self.wide = bool(rng.random() < 0.5) if self.joint_space else True

    def relax(self, obs) -> None:  # type: ignore[no-untyped-def]
        """Let go of any pressure on what the hand touches: the next targets start from the
        joints as they are, not from targets that led the hand into the object (joint_space)."""
        if self.joint_space:
            model = self.robot.model
            self._q = obs["state"][: len(model.joint_names)].astype(np.float64) / model.scale
            self._cmd = obs["ee_pose"][:3].astype(np.float64)
            self.keep_tilt = True  # until the hand lifts (see _up)

    def jaws_shut(self, obs) -> bool:  # type: ignore[no-untyped-def]
        g0, g1 = self.robot.model.gripper_range
        return bool((obs["state"][-1] - g0) / (g1 - g0) < 0.1)

    def face_yaw(self, obs, d: np.ndarray, at: np.ndarray) -> float | None:  # type: ignore[no-untyped-def]
        """The tool yaw for pushing along `d` with the hand at `at`: None (any) for a round
        pusher. Of the two yaws that square a face to `d`, the nearer to the tool's yaw now that
        the wrist can turn to the short way, which is the way it will turn (see
        `WaypointExpert._solve`): with the tool pointing down, its yaw is the arm's heading plus
        the wrist's roll (the last arm joint), and the roll stops short of a full turn."""
        if self.pusher.round:
            return None
        model, arm = self.robot.model, self.robot.arm
        yaw = tool_yaw(obs)
        roll = float(obs["state"][len(model.joint_names) - 1]) / model.scale
        base = np.array(model.base_position[:2])
        ee = obs["ee_pose"][:2].astype(np.float64) - base
        heading = np.arctan2(at[1] - base[1], at[0] - base[0]) - np.arctan2(ee[1], ee[0])
        low, high = arm.joint_low[-1] + 0.4, arm.joint_high[-1] - 0.4  # with a margin

        def roll_there(a: float) -> float:
            return roll + _wrap(a - yaw) - _wrap(heading)

        yaws = self.pusher.face_yaws(d, self.wide)
        ok = [a for a in yaws if low < roll_there(a) < high]
        return min(ok or yaws, key=lambda a: abs(_wrap(a - yaw)))

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
        ee = obs["ee_pose"][:3].astype(np.float64)
        self._trail = [*self._trail[-15:], ee]
        if self.joint_space:
            return action  # the lead was bounded in _hand_target
        step = action[self.action_key][:3].astype(np.float64)
        action[self.action_key][:3] = self._lead(ee, step)
        return action

    def _lead(self, ee: np.ndarray, step: np.ndarray) -> np.ndarray:
        """Anti-windup: the robot integrates deltas into its target, so while the fingers press
        on something the target would run away. Keep it within `max_lag` of the hand. Returns
        the step of the commanded target (`_cmd`)."""
        if self._cmd is None:
            self._cmd = ee.copy()
        lag = self._cmd + step - ee
        if getattr(self, "phase", "push") != "push":
            lag = step  # not pushing: let go of any pressure at once (target = hand + step)
        elif np.linalg.norm(lag) > self.max_lag:
            lag = lag / np.linalg.norm(lag) * self.max_lag
        step = np.clip(ee + lag - self._cmd, -self.max_step, self.max_step)
        self._cmd = self._cmd + step
        return step

    def _hand_target(self, pos: np.ndarray, step: np.ndarray) -> np.ndarray:
        self._lead(pos, step)
        assert self._cmd is not None
        return self._cmd

    def _set(self, waypoint: Waypoint) -> None:
        self.waypoints, self.index, self._dwell = [waypoint], 0, 0

    def _up(self, ee: np.ndarray) -> Waypoint:
        """Straight up from the hand to the travel height (`travel_z`, the subclass's)."""
        speed = 0.008 if self.gentle else None  # slowly: a quick lift swings the jaws about
        self.keep_tilt = False
        return Waypoint(np.array([*ee[:2], self.travel_z]), 0.0, tol=0.01, speed=speed)


def _wrap(a: float) -> float:
    return float((a + np.pi) % (2 * np.pi) - np.pi)


def tool_yaw(obs) -> float:  # type: ignore[no-untyped-def]
    """Heading of the tool's x axis in the table plane."""
    r = obs["ee_pose"][3:].astype(np.float64)
    return float(np.arctan2(r[1], r[0]))


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
            finger=0.012,  # a round allowance for the Panda's fingers
        )
        self.task = task
        self.route = int(rng.integers(0, 3))  # 0 straight, 1 x then y, 2 y then x
        self.push_speed = float(rng.uniform(0.007, 0.012))
        # the tool centre's height while pushing: the Panda's finger tips 1 cm below it, the
        # SO-101's jaw tips 8 mm below it, both clear of the table (they would drag on it)
        self.push_z = 0.018 if task.arm.model.name == "panda" else 0.013
        # high enough to pass over the cube with the jaws; the SO-101 reaches less far near its
        # base the higher its hand, and its jaw tips hang only 8 mm below the tool centre
        lo, hi = (0.03, 0.05) if task.arm.model.name == "panda" else (0.02, 0.03)
        self.travel_z = 2 * task.half + float(rng.uniform(lo, hi))
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
        if self.phase == "backoff":
            if self.index >= len(self.waypoints) or self.stuck(4):
                self.phase = "retreat"
                self._set(self._up(ee))
            return
        if np.linalg.norm(goal - cube) < 0.25 * task.radius:
            if self.gentle and self._d is not None and ee[2] < self.push_z + 0.01:
                # draw the fingers back from the cube before lifting them off it
                self.phase = "backoff"
                self.relax(obs)
                back = np.array([*(ee[:2] - self._d * 0.01), ee[2]])
                self._set(Waypoint(back, 0.0, tol=0.003, speed=0.005))
                return
            self.phase = "retreat"
            self._set(self._up(ee))
            return
        sub = self._subgoal(cube, goal)
        if self._d is None or np.linalg.norm(sub - cube) > 0.02:
            # close to the subgoal the direction is ill-defined: keep pushing the way we were
            self._d = (sub - cube) / max(np.linalg.norm(sub - cube), 1e-9)
        d = self._d
        n = np.array([-d[1], d[0]])
        # the pusher (the fingers' footprint) as it is now and as it will be, turned for this push
        now = tool_yaw(obs)
        aim = self.face_yaw(obs, d, cube)
        pusher = self.pusher
        hand = ee[:2] + pusher.centre(now)
        offset = pusher.centre(now if aim is None else aim)  # from the tool centre
        depth = pusher.depth(d, now if aim is None else aim)
        # distance from the cube's centre to its face along -d (a turned cube is wider)
        rel = yaw - np.arctan2(d[1], d[0])
        reach = task.half * (abs(np.cos(rel)) + abs(np.sin(rel)))
        behind = cube - d * (reach + depth + 0.01)
        along, lateral = (hand - cube) @ d, (hand - cube) @ n
        in_place = along < -(reach + depth - 0.01) and abs(lateral) < 0.6 * task.half
        low = ee[2] < self.push_z + 0.01
        if self.phase == "push" and not (in_place and low):
            if self.debug:
                print("lost", along, -(reach + depth - 0.01), lateral, ee[2])
            self.phase = "lift"
        if self.phase == "lift":
            self._set(self._up(ee))
            if ee[2] > self.travel_z - 0.01:
                self.phase = "over"
        if self.phase == "over":
            self._set(
                Waypoint(np.array([*(behind - offset), self.travel_z]), 0.0, tol=0.008, yaw=aim)
            )
            # the jaws shut and the tool turned before going down (an open jaw hangs lower)
            turned = aim is None or abs(_wrap(aim - now)) < 0.1
            turned = turned and self.jaws_shut(obs)
            if np.linalg.norm(hand - behind) < 0.008 and turned:
                self.phase = "down"
                self._behind = behind - offset
        if self.phase == "down" and np.linalg.norm(hand - cube) < reach + depth:
            self.phase = "lift"  # the cube moved under the fingers: go round again
            self._set(self._up(ee))
            return
        if self.phase == "down":
            # come straight down where we were, not where a moving cube would put us
            self._set(
                Waypoint(
                    np.array([*self._behind, self.push_z]), 0.0, tol=0.004, speed=0.015, yaw=aim
                )
            )
            if ee[2] < self.push_z + 0.005:
                self.phase = "push"
            return
        if self.phase == "push":
            # aim at the contact point on the line through the cube towards the subgoal, a
            # little inside the cube, so the fingers push and steer at once
            speed = self.push_speed
            if self.gentle:  # slow down near the (sub)goal: each new target jolts the cube on
                near = np.linalg.norm(sub - cube) / (2 * task.radius)
                speed = float(np.clip(speed * near, 0.004, speed))
            contact = cube - d * (reach + depth) + d * 1.5 * speed - offset
            self._set(
                Waypoint(
                    np.array([*contact, self.push_z]),
                    0.0,
                    tol=0.001,
                    speed=speed,
                    yaw=aim,
                )
            )
