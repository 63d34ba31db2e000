"""Dataset interop: import LeRobot and HDF5 datasets into episode stores, export stores to LeRobot.

The formats live in `robolearn.data.interop.lerobot` (LeRobotDataset v3, through lerobot's own
dataset API) and `robolearn.data.interop.hdf5` (ACT/ALOHA and robomimic files); `cli` is the
`robolearn dataset import|export` command. This module holds what every importer shares: a
source describes its episodes as blocks of frames, and `write_store` writes them into a new
store that appears at its destination only once every episode is committed (it is written to a
hidden sibling folder and renamed), so an interrupted or failed import never leaves a store
that looks complete.

Timestamps: a store recorded by robolearn holds *measured* frame and capture times. An imported
store holds the source's own times (LeRobot's per-frame `timestamp`, or `i / fps` for HDF5 files
that carry none); capture times equal the frame times unless the source had its own (a LeRobot
dataset exported by robolearn keeps them in its `robolearn.time` column).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robolearn.data.store import EpisodeStore
from robolearn.errors import RobolearnError
from robolearn.spec import FeatureSpec

log = logging.getLogger(__name__)

# progress(frames_done, frames_total)
Progress = Callable[[int, int], None]
# frames are moved in blocks of about this many bytes (ALOHA's four 480×640 cameras: 11 frames)
BLOCK_BYTES = 32 << 20
MAX_BLOCK_FRAMES = 4096


class InteropError(RobolearnError, ValueError):
    """A dataset cannot be imported or exported as asked (missing key, bad shape, no such path)."""


@dataclass
class Block:
    """Consecutive frames of one episode: `values[key]` is (n, *shape) for every spec key.

    `timestamps` are seconds on any clock (stored relative to the episode's first frame);
    `capture_times` optionally gives observation keys their own times on the same clock.
    """

    values: dict[str, np.ndarray]
    timestamps: np.ndarray
    capture_times: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.timestamps)


@dataclass
class SourceEpisode:
    """One episode of a source dataset: its metadata and a way to read its frames in blocks."""

    length: int
    blocks: Callable[[], Iterator[Block]]
    task: str = ""
    name: str = ""  # where it came from, for error messages ("episode_3.hdf5", "demo_7")
    success: bool | None = None
    tags: tuple[str, ...] = ()
    start_time: float = 0.0  # unix time of its start; 0 when the source does not say
    extra: dict[str, Any] = field(default_factory=dict)


def check_destination(dest: str | os.PathLike[str]) -> Path:
    """The destination path, refused if anything already exists there."""
    path = Path(dest)
    if "://" in str(dest):
        raise InteropError(f"{dest}: write to a local path; copy the result to a URL afterwards")
    if path.exists() or path.is_symlink():
        what = "a store" if (path / "zarr.json").exists() else "something"
        raise InteropError(
            f"{path} already holds {what}; choose a new destination or remove it first "
            "(imports and exports never overwrite)"
        )
    return path


@contextlib.contextmanager
def staging_dir(dest: Path, verb: str) -> Iterator[Path]:
    """A hidden empty folder beside `dest`, removed on any failure (also the parents it made).

    The caller builds its result at a path inside it and moves it to `dest` with `publish`.
    """
    created: list[Path] = []
    parent = dest.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{verb}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in created:  # innermost first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    shutil.rmtree(tmp, ignore_errors=True)


def publish(built: Path, dest: Path) -> None:
    """Move a finished result into place: one rename, so `dest` is never half there."""
    check_destination(dest)  # something may have appeared there while we worked
    os.rename(built, dest)


def write_store(
    dest: str | os.PathLike[str],
    spec: FeatureSpec,
    fps: float,
    episodes: Sequence[SourceEpisode],
    *,
    source: str,
    codecs: Mapping[str, str] | None = None,
    attrs: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> Path:
    """Write `episodes` into a new store at `dest`, which appears only once all are committed.

    `source` names the input in error messages. Every frame goes through the store's writer,
    so shapes, dtypes and NaN are checked exactly as for a recording.
    """
    from robolearn.errors import FrameError, WriterError

    path = check_destination(dest)
    if not episodes:
        raise InteropError(f"{source}: no episodes to import (check --episodes)")
    total = sum(ep.length for ep in episodes)
    done = 0
    obs_keys = set(spec.observation_keys)
    with staging_dir(path, "importing") as tmp:
        built = tmp / path.name
        store = EpisodeStore.create(built, spec, fps, codecs=dict(codecs or {}), attrs=attrs)
        with store, store.writer() as writer:
            for ep in episodes:
                writer.start_episode(task=ep.task, tags=ep.tags, start_time=ep.start_time)
                count = 0
                try:
                    for block in ep.blocks():
                        _check_block(block, spec, source, ep.name)
                        for i in range(len(block)):
                            writer.add_frame(
                                {k: v[i] for k, v in block.values.items()},
                                timestamp=float(block.timestamps[i]),
                                capture_times={
                                    k: float(v[i])
                                    for k, v in block.capture_times.items()
                                    if k in obs_keys
                                },
                            )
                        count += len(block)
                        done += len(block)
                        if progress is not None:
                            progress(done, total)
                    if count != ep.length:
                        raise InteropError(
                            f"{source}, {ep.name}: {count} frames read but the source says "
                            f"{ep.length}; the source is damaged"
                        )
                    writer.save(success=ep.success, extra=ep.extra)
                except (FrameError, WriterError) as e:
                    raise InteropError(f"{source}, {ep.name}: {e}") from e
        publish(built, path)
    log.info("imported %d episodes (%d frames) from %s into %s", len(episodes), total, source, path)
    return path


def _check_block(block: Block, spec: FeatureSpec, source: str, name: str) -> None:
    n = len(block)
    for key, value in [*block.values.items(), *block.capture_times.items()]:
        if len(value) != n:
            raise InteropError(
                f"{source}, {name}: {key!r} has {len(value)} frames where the timestamps have {n}"
            )
    missing = [k for k in spec if k not in block.values]
    if missing:
        raise InteropError(f"{source}, {name}: no values for {missing}")


def block_frames(spec: FeatureSpec) -> int:
    """How many frames of `spec` to read at once: about BLOCK_BYTES, at least one."""
    frame = sum(f.size * np.dtype(f.dtype).itemsize for f in spec.values())
    return int(max(1, min(MAX_BLOCK_FRAMES, BLOCK_BYTES // max(frame, 1))))


def select(count: int, episodes: Iterable[int] | None, source: str) -> list[int]:
    """The episode indices asked for (all when None), each checked against `count`."""
    if episodes is None:
        return list(range(count))
    chosen = [int(e) for e in episodes]
    bad = [e for e in chosen if not 0 <= e < count]
    if bad:
        raise InteropError(
            f"{source} has {count} episodes (0..{count - 1}); episode(s) {bad} do not exist"
        )
    if len(set(chosen)) != len(chosen):
        raise InteropError(f"episode list {chosen} names an episode twice")
    return chosen


def natural_key(text: str) -> tuple[Any, ...]:
    """Sort key that puts episode_2 before episode_10."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text))


def feature_name(name: str, what: str) -> str:
    """`name` if it is a valid robolearn feature name, else a clear error naming `what`."""
    try:
        FeatureSpec.from_dict({name: {"shape": [1], "dtype": "float32", "kind": "state"}})
    except RobolearnError as e:
        raise InteropError(
            f"{what} maps to the feature name {name!r}, which is refused: {e}"
        ) from e
    return name
