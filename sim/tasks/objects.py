"""Primitive objects for task scenes: cubes, flat targets, and the randomisation of their looks."""

from __future__ import annotations

import numpy as np
import pybullet as p
from pybullet_utils import bullet_client

PALETTE = np.array(
    [[0.85, 0.2, 0.15], [0.15, 0.45, 0.85], [0.2, 0.7, 0.3], [0.95, 0.75, 0.1], [0.6, 0.3, 0.75]]
)


def make_box(
    client: bullet_client.BulletClient,
    half: tuple[float, float, float],
    rgba: tuple[float, ...],
    mass: float = 0.1,
    friction: float = 1.0,
) -> int:
    col = client.createCollisionShape(p.GEOM_BOX, halfExtents=half)
    vis = client.createVisualShape(p.GEOM_BOX, halfExtents=half, rgbaColor=rgba)
    body = client.createMultiBody(mass, col, vis, basePosition=[0, 0, half[2]])
    client.changeDynamics(
        body, -1, lateralFriction=friction, spinningFriction=0.001, rollingFriction=0.0001
    )
    return body


def make_target(client: bullet_client.BulletClient, radius: float, rgba: tuple[float, ...]) -> int:
    """A flat disc drawn on the table (visual only: objects slide over it)."""
    vis = client.createVisualShape(p.GEOM_CYLINDER, radius=radius, length=0.002, rgbaColor=rgba)
    return client.createMultiBody(0, -1, vis, basePosition=[0, 0, 0.001])


def place(client: bullet_client.BulletClient, body: int, xyz: np.ndarray, yaw: float = 0.0) -> None:
    client.resetBasePositionAndOrientation(
        body, xyz.tolist(), p.getQuaternionFromEuler([0, 0, yaw])
    )
    client.resetBaseVelocity(body, [0, 0, 0], [0, 0, 0])


def pose(client: bullet_client.BulletClient, body: int) -> tuple[np.ndarray, float]:
    """Position and yaw of a body."""
    pos, quat = client.getBasePositionAndOrientation(body)
    return np.array(pos), float(p.getEulerFromQuaternion(quat)[2])


def sample_apart(rng: np.random.Generator, ranges, n: int, min_dist: float) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    """n points in the x/y ranges at least `min_dist` apart (rejection sampling)."""
    (x0, x1), (y0, y1) = ranges
    for _ in range(1000):
        pts = [np.array([rng.uniform(x0, x1), rng.uniform(y0, y1)]) for _ in range(n)]
        if all(np.linalg.norm(a - b) >= min_dist for i, a in enumerate(pts) for b in pts[i + 1 :]):
            return pts
    raise RuntimeError(f"cannot place {n} objects {min_dist} m apart in {ranges}")
