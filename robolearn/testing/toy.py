"""Toy demonstrations for policy tests: a point goes left or right around an obstacle (50/50).

An averaging policy (regression) drives straight into the obstacle; a multimodal one commits to
a side. `classify` sorts predicted paths into left, right and averaged.
"""

from __future__ import annotations

import os

import numpy as np

from robolearn.data.store import EpisodeStore
from robolearn.spec import Feature, FeatureSpec

OBSTACLE = np.array([0.0, 0.5])
OBSTACLE_RADIUS = 0.2
SIDE = 0.45  # how far sideways the detour goes
FRAMES = 24


def obstacle_spec(camera: tuple[int, int] | None = None) -> FeatureSpec:
    features = {
        "pos": Feature((2,), "float32", "state", names=("x", "y")),
        "target": Feature(
            (2,),
            "float32",
            "action",
            names=("x", "y"),
            low=(-1, -0.5),
            high=(1, 1.5),
            representation="joint_position",
        ),
    }
    if camera:
        features["cam"] = Feature((*camera, 3), "uint8", "image")
    return FeatureSpec(features)


def _path(side: float, rng: np.random.Generator) -> np.ndarray:
    """(FRAMES + 1, 2) positions from near (0, 0) round the obstacle to (0, 1)."""
    start = np.array([rng.normal(0, 0.02), 0.0])
    via = np.array([side * SIDE * rng.uniform(0.9, 1.1), 0.5])
    goal = np.array([0.0, 1.0])
    # progress along the two legs (0..1 to the side point, 1..2 to the goal) at a random pace
    s = (2.0 * np.linspace(0.0, 1.0, FRAMES + 1) ** rng.uniform(0.85, 1.15))[:, None]
    return np.where(s < 1, start + s * (via - start), via + (s - 1) * (goal - via))


def _draw(pos: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    h, w = hw
    img = np.full((h, w, 3), 40, np.uint8)
    cy = round((1.25 - pos[1]) / 1.5 * (h - 1))
    cx = round((pos[0] + 0.75) / 1.5 * (w - 1))
    img[max(cy - 1, 0) : cy + 2, max(cx - 1, 0) : cx + 2] = (255, 200, 0)
    return img


def write_obstacle_store(
    path: str | os.PathLike[str],
    episodes: int = 100,
    *,
    seed: int = 0,
    camera: tuple[int, int] | None = None,
    sides: str = "both",
) -> EpisodeStore:
    """A real store of `episodes` demonstrations (closed).

    `sides`: "both" alternates left and right (the multimodal set), "left" only goes left.
    """
    rng = np.random.default_rng(seed)
    store = EpisodeStore.create(path, obstacle_spec(camera), fps=10.0, overwrite=True)
    with store, store.writer() as writer:
        for e in range(episodes):
            side = -1.0 if e % 2 == 0 or sides == "left" else 1.0
            path_xy = _path(side, rng).astype(np.float32)
            writer.start_episode(
                task="go around the obstacle", tags=["left" if side < 0 else "right"]
            )
            for t in range(FRAMES):
                frame = {"pos": path_xy[t], "target": path_xy[t + 1]}
                if camera:
                    frame["cam"] = _draw(path_xy[t], camera)
                writer.add_frame(frame, timestamp=t / 10.0)
            writer.save(success=True)
    return store


def start_observation(n_obs_steps: int, batch: int, camera: tuple[int, int] | None = None) -> dict:
    """The observation window at an episode's first frame (edge-padded like the dataset)."""
    pos = np.zeros((batch, n_obs_steps, 2), np.float32)
    obs = {"pos": pos}
    if camera:
        img = _draw(np.zeros(2), camera)
        obs["cam"] = np.broadcast_to(img, (batch, n_obs_steps, *img.shape)).copy()
    return obs


def classify(chunks: np.ndarray) -> dict[str, float]:
    """Fractions of predicted paths (B, H, 2) that pass left, right or through the obstacle.

    A path's side is read where it crosses the obstacle's height (its mean x over the steps
    with y in [0.35, 0.65]); through = within the obstacle's radius of its centre line.
    """
    out = {"left": 0, "right": 0, "averaged": 0, "other": 0}
    for path in np.asarray(chunks):
        near = (path[:, 1] > 0.35) & (path[:, 1] < 0.65)
        if not near.any():
            out["other"] += 1
            continue
        x = float(path[near, 0].mean())
        if abs(x) < OBSTACLE_RADIUS * 0.75:
            out["averaged"] += 1
        elif x < 0:
            out["left"] += 1
        else:
            out["right"] += 1
    n = max(len(chunks), 1)
    return {k: v / n for k, v in out.items()}
