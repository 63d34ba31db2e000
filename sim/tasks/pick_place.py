"""pick_place: lift a cube and put it down on a target disc."""

from __future__ import annotations

import numpy as np

from robolearn.hal import Observation
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
    """Picks `body` up and lets it go at `drop_point()`, aiming with the cube, not the hand.

    Per episode it draws a hover height, a speed, a noise level and a carrying route (straight,
    or arcing out to the left or right), so the demonstrations are multimodal.

    Like a person, it keeps its eyes on the cube rather than on a plan made at the start:

    - until it goes down for the grasp, it re-aims at the cube as it lies now, turned to the
      nearest quarter turn of the cube's yaw;
    - it shuts the jaws, waits until they stop on the cube, and then holds them a little further
      closed than that (see `hold_fraction`);
    - above the drop point it lowers the cube to just over its spot, then moves the hand slowly
      until the cube itself (not the hand) is over the spot and, where `place_yaw()` asks for
      it, turned to match; then it goes straight down, lets go, moves the open hand to where it
      would grasp the cube (clear of it on every side, so no jaw drags it) and lifts away;
    - if the cube is no longer in the hand while it should be, it starts again from where the
      cube lies (at most `MAX_RETRIES` times).

    With an arm that cannot hold the tool's orientation by itself (the 5-DoF SO-101) it sends
    joint targets, keeping the tool pointing down; with a fixed jaw (the SO-101's) it grasps
    with that jaw just clear of the cube's face.
    """

    align_tol = 0.003  # how close (m) the held cube must be over the drop point before release

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
        model = task.arm.model
        self.joint_space = not model.ik_orientation
        self.opened = model.grasp_open
        # where the tool centre goes to grasp, from the cube's centre along the tool's x axis:
        # with a fixed jaw, that jaw goes down just clear of the cube's face
        self.jaw_offset = 0.0 if model.fixed_jaw is None else task.half + 0.003 - model.fixed_jaw
        # how near and far from its base the arm carries things: its workspace, give or take
        (x0, x1), (y0, y1) = model.workspace
        bx, by = model.base_position[:2]
        near = np.hypot(np.clip(bx, x0, x1) - bx, np.clip(by, y0, y1) - by)
        far = max(np.hypot(x - bx, y - by) for x in (x0, x1) for y in (y0, y1))
        self.reach = (max(0.0, near - model.hover / 2), far + model.hover / 2)
        self.retries = 0
        self._nominal: list[np.ndarray] = []
        self._hold: float | None = None  # the gripper command that holds the cube, once known
        self._aimed = -1  # the last waypoint aimed with the held cube
        self._grip = (0.0, 0)  # the gripper reading and how many ticks it has been shutting

    def drop_point(self) -> np.ndarray:
        """Where the cube's centre should be when the hand lets go of it."""
        raise NotImplementedError

    def place_yaw(self) -> float | None:
        """The yaw the cube should have when let go (modulo 90°), or None if any will do."""
        return None

    def hold_fraction(self, obs: Observation) -> float:
        """The gripper command that holds the cube, from where the shut jaws stopped on it.

        Two sliding fingers told to shut completely both push as hard as they can, and the pair
        (with the cube between them) then floats freely along the closing axis: any sideways
        jerk of the hand slides the cube centimetres off centre. Told to close only `SQUEEZE`
        further than where they stopped, a finger pushed well past that target pushes back, and
        the cube stays near the centre. (Much less squeeze than that, and the SO-101's single
        jaw lets cubes slip.)
        """
        g0, g1 = self.robot.model.gripper_range  # the reading when closed, when open
        stopped = float((obs["state"][-1] - g0) / (g1 - g0))
        return max(0.0, stopped - SQUEEZE)

    def on_tick(self, obs: Observation) -> None:
        if not self._nominal:
            self._plan(obs)
        if self.done:
            return
        if self._lost(obs):
            # the cube slipped or was knocked away: start again from where it lies now
            self.retries += 1
            self._plan(obs)
        if self.index == GRASPED - 1:
            self._shutting(obs)
        elif self.index >= GRASPED and self._hold is None:
            self._hold = self.hold_fraction(obs)
            for w in self.waypoints[self.index :]:
                if w.gripper == 0.0:
                    w.gripper = self._hold
        wp, nominal = self.waypoints[self.index], self._nominal[self.index]
        if wp.aim == "hand":
            return
        ee = obs["ee_pose"][:3].astype(np.float64)
        cube, cube_yaw = pose(self.task.world.client, self.body)
        tool_yaw = _current_yaw(obs)
        if wp.aim == "grasp":
            # over the cube as it lies now; the way down and the grasp follow
            yaw = _grasp_yaw(cube_yaw, tool_yaw)
            xy = cube[:2] + self.jaw_offset * np.array([np.cos(yaw), np.sin(yaw)])
            for w in self.waypoints[self.index : GRASPED]:
                w.pos[:2], w.yaw = xy, (yaw if w.yaw is not None else None)
        elif wp.aim == "object" and self._aimed != self.index:
            # the waypoint is where the cube should go: put the hand where that takes the cube,
            # judging the cube's place in the hand once, as the waypoint begins (re-judging it
            # while moving would chase the small give of the grip back and forth)
            self._aimed = self.index
            wp.pos = nominal + ee - cube
            target = self.place_yaw()
            if target is not None:
                wp.yaw = tool_yaw + _wrap_quarter(target - cube_yaw)
        elif wp.aim == "over_object":
            # where the open hand would grasp the cube: clear of it on every side
            side = self.jaw_offset * np.array([np.cos(tool_yaw), np.sin(tool_yaw)])
            wp.pos = np.array([*(cube[:2] + side), nominal[2]])

    def _plan(self, obs: Observation) -> None:
        cube, yaw = pose(self.task.world.client, self.body)
        self.plan(
            pick_and_place_route(
                cube,
                yaw,
                self.task.half,
                self.drop_point(),
                _current_yaw(obs),
                self.hover,
                self.route,
                place_yaw=self.place_yaw(),
                align_tol=self.align_tol,
                opened=self.opened,
                jaw_offset=self.jaw_offset,
                reach=self.reach,
            )
        )
        self._nominal = [w.pos.copy() for w in self.waypoints]
        self._hold, self._aimed, self._grip = None, -1, (0.0, 0)

    def _shutting(self, obs: Observation) -> None:
        """Hold the hand still on the grasp until the jaws have stopped on the cube."""
        reading, ticks = self._grip
        now = float(obs["state"][-1])
        g0, g1 = self.robot.model.gripper_range
        if abs(now - reading) > 0.005 * abs(g1 - g0) and ticks < 20:
            self._dwell = 0
        self._grip = (now, ticks + 1)

    def _lost(self, obs: Observation) -> bool:
        """Whether the cube should be in the hand (lifted, not yet let go) but is not."""
        if self._hold is None or self.retries >= MAX_RETRIES:
            return False
        if self.waypoints[self.index].gripper != self._hold:  # let go of it already
            return False
        cube, _ = pose(self.task.world.client, self.body)
        return bool(np.linalg.norm(cube - obs["ee_pose"][:3]) > 3 * self.task.half)


DROP = 0.004  # m: the height the cube falls from when let go
# how much further than where they stopped on the cube the jaws are told to close (of their travel)
SQUEEZE = 0.1
MAX_RETRIES = 2
GRASPED = 4  # waypoints up to and including shutting the jaws on the cube


class PickPlaceExpert(CarryExpert):
    align_tol = 0.008  # the target disc is wide: a rough aim will do

    def __init__(self, task: PickPlace, robot, rng: np.random.Generator) -> None:  # type: ignore[no-untyped-def]
        super().__init__(task, robot, rng, task.cube)

    def drop_point(self) -> np.ndarray:
        target, _ = pose(self.task.world.client, self.task.target)
        return np.array([target[0], target[1], self.task.half + DROP])


def pick_and_place_route(
    cube: np.ndarray,
    cube_yaw: float,
    half: float,
    drop: np.ndarray,
    tool_yaw: float,
    hover: float,
    route: int,
    *,
    place_yaw: float | None = None,
    align_tol: float = 0.003,
    opened: float = 1.0,
    jaw_offset: float = 0.0,
    reach: tuple[float, float] | None = None,
) -> list[Waypoint]:
    """Waypoints to grasp a cube from above and let the cube go with its centre at `drop`
    (route 0 straight, 1 or 2 arcing out to one side).

    Gripper 1.0 is fully open, `opened` the opening used to grasp, 0.0 shut. The hand grasps
    `jaw_offset` from the cube's centre along the tool's x axis. An arc's midpoint stays
    within `reach` (the least and greatest distance from the arm's base, if given). Waypoints
    are aimed as `Waypoint.aim` says (see `CarryExpert`).
    """
    grasp_yaw = _grasp_yaw(cube_yaw, tool_yaw)
    carry_yaw = None if place_yaw is None else grasp_yaw + _wrap_quarter(place_yaw - cube_yaw)
    up = np.array([0, 0, hover])
    beside = jaw_offset * np.array([np.cos(grasp_yaw), np.sin(grasp_yaw), 0.0])
    grasp = np.array([cube[0], cube[1], max(half * 0.8, 0.01)]) + beside
    # down over the cube, then the last few centimetres slowly and with a steadier hand
    low = np.array([0, 0, min(2.5 * half, hover / 2)])
    plan = [Waypoint(grasp + up, opened, tol=0.01, yaw=grasp_yaw, aim="grasp")]
    plan += [Waypoint(grasp + low, opened, tol=0.004, yaw=grasp_yaw, aim="grasp")]
    plan += [Waypoint(grasp, opened, tol=0.004, yaw=grasp_yaw, speed=0.01, noise=0.3)]
    plan += [Waypoint(grasp, 0.0, tol=0.01, dwell=4)]
    plan += [Waypoint(grasp + up, 0.0, tol=0.015)]
    if route:
        mid = (grasp + drop) / 2 + up
        side = np.array([-(drop - grasp)[1], (drop - grasp)[0], 0.0])
        side = side / (np.linalg.norm(side) + 1e-9) * (0.08 if route == 1 else -0.08) * half / 0.02
        via = mid + side
        if reach is not None:  # not so far out to the side that the arm cannot follow
            r = float(np.hypot(via[0], via[1]))
            via[:2] *= np.clip(r, *reach) / max(r, 1e-9)
        plan += [Waypoint(via, 0.0, tol=0.03, yaw=carry_yaw)]
    plan += [Waypoint(drop + up, 0.0, tol=0.01, yaw=carry_yaw)]
    # lower the cube to just over its spot, line it up there by the cube itself, slowly and
    # with a steady hand, go straight down, let go
    above = drop + np.array([0, 0, half])
    plan += [Waypoint(above, 0.0, tol=0.006, dwell=2, speed=0.01)]
    steady = {"aim": "object", "noise": 0.0}
    plan += [Waypoint(above, 0.0, tol=align_tol, dwell=1, speed=0.004, **steady)]
    plan += [Waypoint(drop, 0.0, tol=0.003, speed=0.004, **steady)]
    plan += [Waypoint(drop, opened, tol=0.02, dwell=3, **steady)]
    # clear of the cube on every side, then straight up
    plan += [Waypoint(drop, opened, tol=0.003, speed=0.004, aim="over_object", noise=0.0)]
    plan += [Waypoint(drop + up, 1.0, tol=0.02, aim="over_object")]
    return plan


def _grasp_yaw(cube_yaw: float, tool_yaw: float) -> float:
    """The jaws close across a face: of the cube's 4 quarter turns, the one nearest the tool's."""
    return float(cube_yaw + np.pi / 2 * np.round((tool_yaw - cube_yaw) / (np.pi / 2)))


def _wrap_quarter(a: float) -> float:
    """`a` folded into [-45°, 45°): a cube looks the same every quarter turn."""
    return float((a + np.pi / 4) % (np.pi / 2) - np.pi / 4)


def _current_yaw(obs: Observation) -> float:
    r = obs["ee_pose"][3:].astype(float)
    return float(np.arctan2(r[1], r[0]))
