"""Drawing the arm with its collision meshes: same physics, the same picture, a lighter URDF."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from sim.robot import JOINT_KEY, CameraConfig, PyBulletRobot
from sim.tasks import make_task
from sim.urdf import resolve, variant


def visual_meshes(urdf: str) -> list[str]:
    text = Path(urdf).read_text()
    return [
        m
        for v in re.findall(r"<visual\b.*?</visual>", text, re.S)
        for m in re.findall(r'<mesh\s+filename="([^"]+)"', v)
    ]


def test_simple_variant_draws_the_panda_with_its_collision_meshes() -> None:
    simple = variant("franka_panda/panda.urdf", "simple")
    meshes = visual_meshes(simple)
    assert len(meshes) == 11  # every link that has a mesh still draws one
    for mesh in meshes:
        assert Path(mesh).is_file(), mesh  # absolute, resolvable from anywhere
        assert "/collision/" in mesh
    source = resolve("franka_panda/panda.urdf")
    assert sum(Path(m).stat().st_size for m in meshes) < 0.1 * sum(
        (source.parent / m.removeprefix("package://")).stat().st_size
        for m in visual_meshes(str(source))
    )
    assert variant("franka_panda/panda.urdf", "simple") == simple  # written once, reused
    assert variant("franka_panda/panda.urdf", "full") == "franka_panda/panda.urdf"


def test_an_arm_of_primitives_is_drawn_as_it_is() -> None:
    so101 = str(Path(__file__).parents[2] / "sim" / "assets" / "so101" / "so101.urdf")
    assert variant(so101, "simple") == so101


def test_unknown_visuals_are_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"simple.*full"):
        PyBulletRobot("panda", visuals="low")
    with pytest.raises(ValueError, match="simple, full"):
        variant("franka_panda/panda.urdf", "low")


def rollout(visuals: str) -> tuple[np.ndarray, np.ndarray]:
    """A scripted joint sweep through the pick_place scene: states and the last frame."""
    cam = CameraConfig("top", width=96, height=96)
    task = make_task("pick_place")
    with PyBulletRobot("panda", task=task, cameras=[cam], seed=3, visuals=visuals) as robot:
        q0 = robot.observe()["state"].astype(float)
        states = []
        for k in range(30):
            target = q0 + 0.4 * np.sin(np.linspace(0, 3, len(q0)) + 0.2 * k)
            target[-1] = 0.08 * (k % 2)
            robot.act({JOINT_KEY: target})
            robot.clock.sleep_until(robot.clock.now() + 0.1)
            states.append(robot.observe()["state"])
        frame = robot.observe()["top"]
    return np.array(states), frame


def test_the_drawing_changes_neither_the_physics_nor_the_picture() -> None:
    states_full, frame_full = rollout("full")
    states_simple, frame_simple = rollout("simple")
    # collision shapes, masses and inertia are the same: the motion is identical to the bit
    np.testing.assert_array_equal(states_simple, states_full)
    # the arm's outline at 96×96 is the same; only shading inside the links differs a little
    diff = np.abs(frame_simple.astype(int) - frame_full.astype(int))
    assert 0 < diff.mean() < 3.0  # not 0: the light meshes were drawn
    assert (diff.max(axis=-1) > 40).mean() < 0.03
