"""push_cube and push_t: success checks that mean what they say, experts that succeed and vary."""

from __future__ import annotations

import numpy as np
import pybullet as p
import pytest

from sim.robot import PyBulletRobot
from sim.rollout import run_expert
from sim.tasks import make_task
from sim.tasks.objects import place
from sim.tasks.push_cube import Pusher


@pytest.mark.parametrize("arm", ["panda", "so101"])
@pytest.mark.parametrize("name", ["push_cube", "push_t"])
def test_pushing_experts_succeed_on_fresh_seeds(name: str, arm: str) -> None:
    task = make_task(name)
    with PyBulletRobot(arm, task=task) as robot:
        episodes = [run_expert(robot, seed) for seed in range(300, 312)]
    assert sum(e.success for e in episodes) >= 11, [e.seed for e in episodes if not e.success]
    # the experts push: the gripper never opens after the start (fingers closed as a pusher)
    assert all(e.steps < task.max_steps for e in episodes if e.success)


@pytest.mark.parametrize("name", ["push_cube", "push_t"])
def test_so101_pushing_experts_replay_exactly_from_a_seed(name: str) -> None:
    """The SO-101's experts solve IK for joint targets: an episode still depends on its seed
    only, not on the episodes before it."""
    task = make_task(name)
    with PyBulletRobot("so101", task=task) as robot:
        first = run_expert(robot, 5)
        other = run_expert(robot, 6)
        again = run_expert(robot, 5)
    assert (first.success, first.steps) == (again.success, again.steps)
    np.testing.assert_array_equal(first.path, again.path)
    n = min(len(first.path), len(other.path))
    assert not np.allclose(first.path[:n], other.path[:n])


def test_so101_push_footprint_matches_the_shut_jaws() -> None:
    """The pushing experts aim the SO-101's shut jaws by `ArmModel.push_footprint` (they lie to
    one side of the tool centre): probed on the arm, the jaws cover that rectangle."""
    with PyBulletRobot("so101") as robot:
        arm, model, c = robot.arm, robot.model, robot.world.client
        q = arm.inverse_position_first(
            np.array([0.2, 0.0, 0.05]), np.array(model.tool_down), np.array(model.home)
        )
        arm.reset(q, open_fraction=0.0)
        pos, quat = arm.ee_pose()
        m = np.array(p.getMatrixFromQuaternion(quat)).reshape(3, 3)
        assert m[2, 2] < -0.999  # pointing down
        probe = c.createMultiBody(0, c.createCollisionShape(p.GEOM_SPHERE, radius=0.0002))
        grid = np.arange(-0.03, 0.03, 0.001)
        hits = []
        for dz in (-0.006, 0.0):  # low over the table: the jaws' tips are 8 mm below the tool
            for a in grid:
                for b in grid:
                    c.resetBasePositionAndOrientation(
                        probe, (pos + a * m[:, 0] + b * m[:, 1] + [0, 0, dz]).tolist(), [0, 0, 0, 1]
                    )
                    if c.getClosestPoints(probe, arm.body, 0.0):
                        hits.append((a, b))
        hits_xy = np.array(hits)
        (x0, x1), (y0, y1) = model.push_footprint
        np.testing.assert_allclose(hits_xy.min(axis=0), [x0, y0], atol=0.0015)
        np.testing.assert_allclose(hits_xy.max(axis=0), [x1, y1], atol=0.0015)


def test_pusher_faces_square_to_the_push() -> None:
    pusher = Pusher((0.002, 0.013), (-0.0105, 0.011))
    d = np.array([np.cos(0.7), np.sin(0.7)])
    for wide, depth in ((True, 0.0055), (False, 0.01075)):
        for yaw in pusher.face_yaws(d, wide):
            assert pusher.depth(d, yaw) == pytest.approx(depth)
    # the footprint's centre turns with the tool (its y axis at yaw - 90° pointing down)
    np.testing.assert_allclose(pusher.centre(np.pi / 2), [0.00025, 0.0075], atol=1e-12)
    round_pusher = Pusher(radius=0.012)
    assert round_pusher.round and round_pusher.depth(d, 1.0) == 0.012
    np.testing.assert_array_equal(round_pusher.centre(1.0), [0.0, 0.0])


def test_push_cube_success_needs_the_cube_upright_inside_the_target() -> None:
    task = make_task("push_cube")
    with PyBulletRobot("panda", task=task) as robot:
        robot.reset(0)
        assert not task.success()  # starts three radii away
        c = task.world.client
        target = np.array(c.getBasePositionAndOrientation(task.target)[0])
        place(c, task.cube, np.array([*target[:2], task.half]))
        assert task.success()
        place(c, task.cube, np.array([*(target[:2] + np.array([task.radius * 1.2, 0])), task.half]))
        assert not task.success()
        # on its edge inside the target: not a pushed cube any more
        c.resetBasePositionAndOrientation(
            task.cube, [*target[:2], task.half * 1.4], [0.3826834, 0, 0, 0.9238795]
        )
        assert not task.success()


def test_push_t_success_is_90_percent_coverage_of_the_drawn_t() -> None:
    task = make_task("push_t")
    with PyBulletRobot("panda", task=task) as robot:
        robot.reset(0)
        assert not task.success()
        c, h = task.world.client, task.shape.height / 2
        g, g_yaw = task.goal, task.goal_yaw

        def at(dx: float, dy: float, dyaw_deg: float) -> tuple[bool, float]:
            place(c, task.block, np.array([g[0] + dx, g[1] + dy, h]), g_yaw + np.radians(dyaw_deg))
            return task.success(), task.coverage()

        assert at(0, 0, 0) == (True, pytest.approx(1.0)) and task.keypoint_error() < 1e-3
        # near misses pass, small errors that leave a tenth of the T uncovered fail: the old
        # 2 cm / 10° window let a block at 60-70 % coverage count as a success
        assert at(0.002, 0, 0)[0] and at(0, -0.002, 0)[0] and at(0, 0, 3)[0]
        assert not at(0.006, 0, 0)[0] and not at(0, 0.006, 0)[0] and not at(0, 0, 7)[0]
        assert not at(0.004, 0.004, 0)[0]  # each alone would pass, together they do not
        assert not at(0, 0, 20)[0]  # right place, wrong heading
        assert not at(0.03, 0, 0)[0]  # right heading, wrong place
        place(c, task.block, np.array([*(g + np.array([0.03, 0])), h]), yaw=g_yaw)
        state = robot.observe()["task_state"]
        np.testing.assert_allclose(state[:2], task.goal + np.array([0.03, 0]), atol=1e-4)
        assert robot.spec["task_state"].names[:2] == ("block_x", "block_y")


def _path(robot: PyBulletRobot, reset_seed: int, expert_seed: int, ticks: int) -> np.ndarray:
    obs = robot.reset(reset_seed)
    expert = robot.task.expert(robot, np.random.default_rng(expert_seed))
    out = []
    for _ in range(ticks):
        robot.act(expert.read(obs))
        robot.clock.sleep_until(robot.clock.now() + 0.1)
        obs = robot.observe()
        out.append(obs["ee_pose"][:2].copy())
    return np.array(out)


@pytest.mark.parametrize("arm", ["panda", "so101"])
@pytest.mark.parametrize("name", ["push_cube", "push_t"])
def test_pushing_experts_take_different_routes_from_the_same_start(name: str, arm: str) -> None:
    """Demonstrations must be multimodal: from one start, experts differ in where they push."""
    task = make_task(name)
    with PyBulletRobot(arm, task=task) as robot:
        paths = [_path(robot, 7, s, 60) for s in range(4)]
    spread = max(np.abs(a - b).max() for a in paths for b in paths)
    # routes centimetres apart, not just noise (the SO-101's scene is about 0.6 times the size)
    assert spread > (0.05 if arm == "panda" else 0.03), spread
