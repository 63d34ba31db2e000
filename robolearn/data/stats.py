"""Normalisation statistics of a store's features, computed once and kept in the store."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from robolearn.data.store import EpisodeStore, _DirLock, is_remote
from robolearn.errors import StoreError

log = logging.getLogger(__name__)

STATS_ATTR = "robolearn_stats"
STATS_VERSION = 1
STAT_NAMES = ("min", "max", "mean", "std", "p01", "p99")
MAX_IMAGE_FRAMES = 1000


@dataclass(frozen=True)
class KeyStats:
    """Per-dimension statistics of one key (per channel, in [0, 1], for images)."""

    min: np.ndarray
    max: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    p01: np.ndarray
    p99: np.ndarray
    count: int

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {name: getattr(self, name).tolist() for name in STAT_NAMES}
        d["count"] = int(self.count)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KeyStats:
        return cls(
            **{name: np.asarray(d[name], dtype=np.float64) for name in STAT_NAMES},
            count=int(d["count"]),
        )


def _stats_of(values: np.ndarray) -> KeyStats:
    """Statistics over axis 0 of a (N, ...) float64 array."""
    p01, p99 = np.percentile(values, [1.0, 99.0], axis=0)
    return KeyStats(
        min=values.min(axis=0),
        max=values.max(axis=0),
        mean=values.mean(axis=0),
        std=values.std(axis=0),
        p01=p01,
        p99=p99,
        count=int(values.shape[0]),
    )


def compute_stats(
    store: EpisodeStore, max_image_frames: int = MAX_IMAGE_FRAMES
) -> dict[str, KeyStats]:
    """Statistics of every key over all committed frames (images: per channel, on a subsample)."""
    n = store.num_frames
    if n == 0:
        raise StoreError(f"{store.path} has no committed episodes; record some before training")
    out: dict[str, KeyStats] = {}
    for key, feature in store.spec.items():
        if feature.kind == "image":
            frames = np.unique(
                np.linspace(0, n - 1, min(n, max_image_frames)).round().astype(np.int64)
            )
            pixels = store.read_frames(key, frames).astype(np.float32) / 255.0
            # Percentiles over every pixel would need tens of millions of values; a fixed
            # strided subset of pixels gives the same 1st/99th percentiles to within a level.
            flat = pixels.reshape(-1, feature.shape[-1])
            step = max(1, flat.shape[0] // 2_000_000)
            stats = _stats_of(flat[::step].astype(np.float64))
            out[key] = KeyStats(
                min=flat.min(axis=0).astype(np.float64),
                max=flat.max(axis=0).astype(np.float64),
                mean=flat.mean(axis=0, dtype=np.float64),
                std=flat.std(axis=0, dtype=np.float64),
                p01=stats.p01,
                p99=stats.p99,
                count=int(frames.size),
            )
        else:
            values = store.read(key, 0, n).reshape(n, -1).astype(np.float64)
            s = _stats_of(values)
            out[key] = KeyStats(
                **{name: getattr(s, name).reshape(feature.shape) for name in STAT_NAMES},
                count=n,
            )
    return out


def get_stats(store: EpisodeStore, *, persist: bool = True) -> dict[str, KeyStats]:
    """The store's statistics: read from the store when current, else computed (and kept).

    They are kept in the root attributes, tagged with the number of frames they describe, so a
    store that gained episodes since gets fresh ones. A read-only local store is updated when no
    writer holds it; a remote one is never written.
    """
    cached = store.group.attrs.asdict().get(STATS_ATTR)
    if (
        isinstance(cached, dict)
        and cached.get("version") == STATS_VERSION
        and cached.get("frames") == store.num_frames
        and set(cached.get("keys", {})) == set(store.spec)
    ):
        return {k: KeyStats.from_dict(v) for k, v in cached["keys"].items()}
    stats = compute_stats(store)
    if persist:
        _persist(store, stats)
    return stats


def _persist(store: EpisodeStore, stats: dict[str, KeyStats]) -> None:
    value = {
        "version": STATS_VERSION,
        "frames": store.num_frames,
        "episodes": store.num_episodes,
        "keys": {k: s.to_dict() for k, s in stats.items()},
    }
    if store.mode == "a":
        store.group.attrs[STATS_ATTR] = value
        return
    if is_remote(store.path):
        return
    try:
        lock = _DirLock(Path(store.path))
    except (StoreError, OSError):
        log.info("%s is being written; statistics are not kept this time", store.path)
        return
    try:
        with contextlib.suppress(OSError, PermissionError):
            zarr.open_group(store.path, mode="r+", zarr_format=3).attrs[STATS_ATTR] = value
    finally:
        lock.release()
