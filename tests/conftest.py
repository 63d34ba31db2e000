"""Shared fixtures: small real episode stores on disk, written through the real writer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from robolearn.data.store import EpisodeStore
from robolearn.data.synthetic import SyntheticArm, sample_spec


def write_sample_store(
    path: Path,
    *,
    episodes: int = 4,
    frames: int | list[int] = 40,
    fps: float = 20.0,
    cameras: dict[str, tuple[int, int]] | None = None,
    codecs: dict[str, str] | None = None,
    drop_every: int = 0,
    seed: int = 0,
) -> EpisodeStore:
    """A store of camera-like synthetic episodes (closed; reopen it to read)."""
    spec = sample_spec({"top": (24, 32), "wrist": (24, 32)} if cameras is None else cameras)
    store = EpisodeStore.create(path, spec, fps, codecs=codecs)
    arm = SyntheticArm(spec, seed=seed)
    lengths = frames if isinstance(frames, list) else [frames] * episodes
    with store, store.writer() as writer:
        for e, n in enumerate(lengths):
            writer.start_episode(task=f"task{e % 2}", tags=["sample"])
            for t, frame in arm.episode(n, fps, drop_every=drop_every):
                writer.add_frame(frame, timestamp=t)
            writer.save(success=e % 3 != 2, extra={"operator": "test"})
    return store


@pytest.fixture
def sample_store(tmp_path: Path) -> Callable[..., Path]:
    """Factory: write a sample store under tmp_path and return its path."""
    counter = iter(range(1000))

    def make(**kwargs: object) -> Path:
        path = tmp_path / f"store{next(counter)}.zarr"
        write_sample_store(path, **kwargs)  # type: ignore[arg-type]
        return path

    return make


def frames_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
