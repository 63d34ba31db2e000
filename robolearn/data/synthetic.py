"""Camera-like synthetic episodes (a moving 7-joint arm seen by cameras) for demos and benchmarks.

The frames are drawn, not recorded, but they carry what makes real frames hard to store: texture,
sensor noise, motion and lighting that differs between cameras. Until the simulator lands this is
the data `robolearn demo` records; benchmarks use it so codec figures are not flattered by
constant frames.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from robolearn.spec import Feature, FeatureSpec

JOINTS = 7


def sample_spec(
    cameras: dict[str, tuple[int, int]] | None = None, state_dim: int = 2 * JOINTS
) -> FeatureSpec:
    """State (joint positions + velocities), an absolute joint-target action, and RGB cameras."""
    cameras = {"top": (96, 96), "wrist": (96, 96)} if cameras is None else cameras
    half = state_dim // 2
    state_names = [f"joint{i}.pos" for i in range(half)] + [
        f"joint{i}.vel" for i in range(state_dim - half)
    ]
    features = {
        "state": Feature((state_dim,), "float32", "state", names=state_names),
        "action": Feature(
            (state_dim,),
            "float32",
            "action",
            names=[f"joint{i}.target" for i in range(state_dim)],
            low=[-3.0] * state_dim,
            high=[3.0] * state_dim,
        ),
    }
    for name, (h, w) in cameras.items():
        features[name] = Feature((h, w, 3), "uint8", "image")
    return FeatureSpec(features)


@dataclass
class _Camera:
    background: np.ndarray
    noise: np.ndarray
    origin: tuple[float, float]
    scale: float
    tint: np.ndarray


class SyntheticArm:
    """Generates frames of a smoothly moving arm; deterministic for a given seed."""

    def __init__(self, spec: FeatureSpec, seed: int = 0) -> None:
        self.spec = spec
        self.rng = np.random.default_rng(seed)
        self.state_dim = spec["state"].shape[0]
        self.cameras: dict[str, _Camera] = {}
        for i, key in enumerate(spec.image_keys):
            h, w, c = spec[key].shape
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            base = np.stack(
                [60 + 80 * yy / h, 70 + 40 * xx / w, 90 + 30 * (yy + xx) / (h + w)], axis=-1
            )
            texture = cv2.GaussianBlur(self.rng.normal(0, 25, (h, w)).astype(np.float32), (0, 0), 2)
            background = np.clip(base + texture[..., None], 0, 255)
            noise = self.rng.normal(0, 4, (8, h, w, 1)).astype(np.float32)
            origin = (w * (0.3 + 0.4 * (i % 2)), h * 0.85)
            tint = np.array([1.0 - 0.1 * i, 1.0, 1.0 + 0.1 * i], dtype=np.float32)
            self.cameras[key] = _Camera(background[..., :c], noise, origin, min(h, w) / 4.5, tint)
        self.freqs = self.rng.uniform(0.1, 0.6, JOINTS)
        self.phases = self.rng.uniform(0, 2 * np.pi, JOINTS)

    def joints(self, t: float) -> np.ndarray:
        return 0.8 * np.sin(2 * np.pi * self.freqs * t + self.phases)

    def frame(self, t: float, index: int) -> dict[str, np.ndarray]:
        q = self.joints(t)
        dq = (self.joints(t + 1e-3) - q) / 1e-3
        full = np.concatenate([q, dq])
        state = np.resize(full, self.state_dim).astype(np.float32)
        action = (np.resize(np.concatenate([self.joints(t + 0.1), dq]), self.state_dim)).astype(
            np.float32
        )
        out: dict[str, np.ndarray] = {"state": state, "action": action}
        for key, cam in self.cameras.items():
            out[key] = self._render(cam, q, index)
        return out

    def _render(self, cam: _Camera, q: np.ndarray, index: int) -> np.ndarray:
        img = cam.background.copy()
        x, y = cam.origin
        angle = -np.pi / 2
        thickness = max(1, int(cam.scale / 6))
        for j in range(4):
            angle += q[j]
            nx, ny = x + cam.scale * 0.6 * np.cos(angle), y + cam.scale * 0.6 * np.sin(angle)
            color = (200 - 30 * j, 120 + 25 * j, 60 + 40 * j)[: img.shape[-1]]
            cv2.line(img, (int(x), int(y)), (int(nx), int(ny)), color, thickness, cv2.LINE_AA)
            cv2.circle(
                img,
                (int(nx), int(ny)),
                thickness,
                (240, 240, 240)[: img.shape[-1]],
                -1,
                cv2.LINE_AA,
            )
            x, y = nx, ny
        cube = (int(cam.origin[0] + cam.scale), int(cam.origin[1] - cam.scale * 0.3))
        half = max(2, int(cam.scale / 5))
        cv2.rectangle(
            img,
            (cube[0] - half, cube[1] - half),
            (cube[0] + half, cube[1] + half),
            (40, 160, 220)[: img.shape[-1]],
            -1,
        )
        img = img * cam.tint[: img.shape[-1]] + cam.noise[index % len(cam.noise)]
        return np.clip(img, 0, 255).astype(np.uint8)

    def episode(
        self, num_frames: int, fps: float, *, jitter: float = 0.0, drop_every: int = 0
    ) -> Iterator[tuple[float, dict[str, np.ndarray]]]:
        """(timestamp, frame) pairs on a simulated clock: period jitter and a dropped frame every
        `drop_every` frames, so timing reports have something to find."""
        t = 0.0
        for i in range(num_frames):
            yield t, self.frame(t, i)
            step = 1.0 / fps
            if drop_every and i % drop_every == drop_every - 1:
                step *= 2
            t += step * (1.0 + jitter * float(self.rng.standard_normal()))


def record_realtime(writer, arm: SyntheticArm, seconds: float, fps: float, task: str) -> None:  # type: ignore[no-untyped-def]
    """Record one episode at `fps` against absolute deadlines, stamping measured times."""
    writer.start_episode(task=task)
    period = 1.0 / fps
    t0 = time.monotonic()
    i = 0
    while True:
        deadline = t0 + i * period
        now = time.monotonic()
        if now < deadline:
            time.sleep(deadline - now)
        now = time.monotonic()
        if now - t0 >= seconds:
            break
        writer.add_frame(arm.frame(now - t0, i), timestamp=now)
        i += 1
