"""Dataset tools behind `robolearn dataset`: info, merge, filter and verify."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from robolearn.data.codecs import CodecChoice
from robolearn.data.fastread import ShardFrameReader
from robolearn.data.stats import get_stats
from robolearn.data.store import EpisodeStore, _valid_prefix, is_remote
from robolearn.data.timing import EpisodeTiming, analyse, stale_frames
from robolearn.errors import SpecError, StoreError

log = logging.getLogger(__name__)
COPY_BLOCK = 256


# ---------------------------------------------------------------------- info
@dataclass
class StoreInfo:
    """Everything `robolearn dataset info` prints, as data (also written as JSON)."""

    path: str
    episodes: int
    frames: int
    nominal_fps: float
    duration_s: float
    real_fps: float
    dropped_frames: int
    gaps: int
    bytes_on_disk: int
    bytes_raw: int
    uncommitted_frames: int
    per_episode: list[dict[str, Any]] = field(default_factory=list)
    per_key: dict[str, dict[str, Any]] = field(default_factory=dict)


def store_info(store: EpisodeStore, *, with_stats: bool = True) -> StoreInfo:
    timestamps = np.asarray(store.array("timestamp")[: store.num_frames])
    per_episode = []
    timings: list[EpisodeTiming] = []
    for ep in store.episodes():
        timing = analyse(timestamps[ep.start : ep.end], store.fps)
        timings.append(timing)
        row: dict[str, Any] = {"episode": ep.index, "task": ep.task, **timing.as_row()}
        row["success"] = ep.success
        stale = {
            key: stale_frames(store.capture_times(ep.index, key)) for key in store.spec.image_keys
        }
        row["stale_camera_frames"] = sum(stale.values())
        per_episode.append(row)
    duration = float(sum(t.duration for t in timings))
    intervals = sum(max(t.frames - 1, 0) for t in timings)
    stats = get_stats(store) if with_stats and store.num_frames else {}
    per_key: dict[str, dict[str, Any]] = {}
    total_stored = total_raw = 0
    for key, feature in store.spec.items():
        arr = store.array(key)
        stored = int(arr.nbytes_stored())
        raw = int(store.num_frames * feature.size * np.dtype(feature.dtype).itemsize)
        total_stored += stored
        total_raw += raw
        entry: dict[str, Any] = {
            "kind": feature.kind,
            "shape": list(feature.shape),
            "dtype": feature.dtype,
            "codec": str(store.codecs.get(key, CodecChoice())),
            "bytes_on_disk": stored,
            "ratio": round(raw / stored, 2) if stored else None,
        }
        if key in stats:
            s = stats[key]
            for name in ("min", "max", "mean", "std"):
                entry[name] = np.round(getattr(s, name).reshape(-1), 4).tolist()
        per_key[key] = entry
    for extra in ("timestamp",):
        total_stored += int(store.array(extra).nbytes_stored())
    tail = store.recovery.cut_frames if store.recovery is not None and store.mode == "r" else 0
    return StoreInfo(
        path=store.path,
        episodes=store.num_episodes,
        frames=store.num_frames,
        nominal_fps=store.fps,
        duration_s=duration,
        real_fps=intervals / duration if duration > 0 else float("nan"),
        dropped_frames=sum(t.dropped for t in timings),
        gaps=sum(t.gaps for t in timings),
        bytes_on_disk=total_stored,
        bytes_raw=total_raw,
        uncommitted_frames=tail,
        per_episode=per_episode,
        per_key=per_key,
    )


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# ---------------------------------------------------------------------- copy (merge / filter)
def copy_episodes(
    sources: Sequence[tuple[EpisodeStore, Sequence[int]]],
    dest: str | os.PathLike[str],
    *,
    codecs: Mapping[str, str] | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> EpisodeStore:
    """Copy the chosen episodes of one or more stores, in order, into a new store at `dest`.

    Specs must be equal (a clear error names the first difference) and nominal rates alike.
    Frame data, measured timestamps, capture times and episode metadata are kept exactly;
    lossy image keys are decoded and encoded again (at the destination's codec). Root user
    attributes that all sources share (such as `recording`) are kept.
    """
    if not sources:
        raise ValueError("nothing to copy: give at least one source store")
    first = sources[0][0]
    for other, _ in sources[1:]:
        first.spec.check_fits(other.spec, what=first.path, other_what=other.path)
        other.spec.check_fits(first.spec, what=other.path, other_what=first.path)
        if not math.isclose(first.fps, other.fps, rel_tol=1e-6):
            raise SpecError(
                f"{other.path} was recorded at {other.fps:g} fps but {first.path} at {first.fps:g}; "
                "merge stores of one rate"
            )
    for src, eps in sources:
        for e in eps:
            src.bounds(e)  # raises IndexError naming the episode
    dest_path = Path(dest)
    for src, _ in sources:
        if not is_remote(src.path) and Path(src.path).resolve() == dest_path.resolve():
            raise StoreError(f"the destination {dest_path} is also a source; write to a new path")
    choice = {k: str(v) for k, v in first.codecs.items()}
    choice.update(codecs or {})
    # the user attributes (e.g. `recording`: which robot and task made the data, which train
    # and eval read to rebuild the simulation) that every source agrees on
    attrs = first.user_attrs
    for other, _ in sources[1:]:
        theirs = other.user_attrs
        attrs = {k: v for k, v in attrs.items() if k in theirs and theirs[k] == v}
    out = EpisodeStore.create(
        dest_path, first.spec, first.fps, codecs=choice, overwrite=overwrite, attrs=attrs
    )
    total = sum(len(eps) for _, eps in sources)
    done = 0
    obs_keys = first.spec.observation_keys
    try:
        with out.writer() as writer:
            for src, eps in sources:
                for e in eps:
                    info = src.episode(e)
                    writer.start_episode(task=info.task, tags=info.tags, start_time=info.start_time)
                    for a in range(info.start, info.end, COPY_BLOCK):
                        b = min(a + COPY_BLOCK, info.end)
                        block = {k: src.read(k, a, b) for k in src.spec}
                        ts = src.read("timestamp", a, b)
                        cts = {k: np.asarray(src.time_array(k)[a:b]) for k in obs_keys}
                        for i in range(b - a):
                            writer.add_frame(
                                {k: v[i] for k, v in block.items()},
                                timestamp=float(ts[i]),
                                capture_times={k: float(v[i]) for k, v in cts.items()},
                            )
                    writer.save(success=info.success, extra=info.extra)
                    done += 1
                    if progress is not None:
                        progress(done, total)
    except BaseException:
        out.close()
        raise
    return out


def select_episodes(
    store: EpisodeStore,
    *,
    episodes: Iterable[int] | None = None,
    success: bool | None = None,
    task: str | None = None,
) -> list[int]:
    """Indices of episodes matching every criterion given (`episodes` as a whitelist)."""
    chosen = list(range(store.num_episodes)) if episodes is None else list(episodes)
    for e in chosen:
        store.bounds(e)
    result = []
    for e in chosen:
        info = store.episode(e)
        if success is not None and info.success is not success:
            continue
        if task is not None and info.task != task:
            continue
        result.append(e)
    return result


def parse_episode_list(text: str) -> list[int]:
    """'0,2,5-7' → [0, 2, 5, 6, 7]."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                lo, hi = (
                    part.split("-", 1)
                    if part[0] != "-"
                    else ("-" + part[1:].split("-")[0], part[1:].split("-", 1)[1])
                )
                out.extend(range(int(lo), int(hi) + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise ValueError(
                f"episode list {text!r}: {part!r} is not an index or a range a-b"
            ) from None
    return out


# ---------------------------------------------------------------------- verify
@dataclass
class VerifyReport:
    path: str
    episodes: int = 0
    frames: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(
    path: str | os.PathLike[str], *, progress: Callable[[int, int], None] | None = None
) -> VerifyReport:
    """Check a store end to end without changing it: metadata, every chunk, timestamps, values."""
    report = VerifyReport(str(path))
    try:
        store = EpisodeStore.open(path, "r")
    except StoreError as e:
        report.problems.append(str(e))
        return report
    report.episodes, report.frames = store.num_episodes, store.num_frames
    meta = store.group["meta"]
    ends_raw = np.asarray(meta["episode_ends"][:], dtype=np.int64)
    data_len = min(int(store.array(k).shape[0]) for k in [*store.spec, "timestamp"])
    n_valid = _valid_prefix(ends_raw, data_len)
    if n_valid < ends_raw.size:
        report.problems.append(
            f"meta/episode_ends: entries {n_valid}..{ends_raw.size - 1} are invalid "
            f"({ends_raw[n_valid : n_valid + 3].tolist()}...); opening the store for writing cuts them"
        )
    for name in ("episode_start_time", "episode_success", "episode_info"):
        if int(meta[name].shape[0]) < n_valid:
            report.problems.append(
                f"meta/{name} has {meta[name].shape[0]} entries for {n_valid} episodes"
            )
    tail = max(int(store.array(k).shape[0]) for k in [*store.spec, "timestamp"]) - store.num_frames
    if tail > 0:
        report.notes.append(
            f"{tail} frames past the last committed episode (an unfinished episode); "
            "opening the store for writing removes them"
        )
    if not is_remote(store.path):
        partial = list(Path(store.path).rglob("*.partial"))
        if partial:
            report.notes.append(
                f"{len(partial)} half-written temporary files (removed on the next append)"
            )
    arrays = [("timestamp", store.array("timestamp"))]
    for key, feature in store.spec.items():
        arrays.append((key, store.array(key)))
        if feature.kind != "action":
            arrays.append((f"time/{key}", store.time_array(key)))
    n = store.num_frames
    steps = sum(max(1, math.ceil(n / _block(arr))) for _, arr in arrays)
    done = 0
    for name, arr in arrays:
        block = _block(arr)
        _check_missing_chunks(store, name, arr, n, report)
        for a in range(0, n, block):
            b = min(a + block, n)
            try:
                values = np.asarray(arr[a:b])
            except Exception as e:  # any decode failure is damage to report, not to raise
                report.problems.append(
                    f"{name}: frames {a}..{b - 1} cannot be read ({type(e).__name__}: {e})"
                )
            else:
                if values.dtype.kind == "f" and not np.isfinite(values).all():
                    bad = np.flatnonzero(~np.isfinite(values.reshape(b - a, -1)).all(axis=1))
                    report.problems.append(
                        f"{name}: NaN or infinite values at frames {(bad + a)[:5].tolist()}"
                    )
            done += 1
            if progress is not None:
                progress(done, steps)
    ts = np.asarray(store.array("timestamp")[:n])
    for ep in store.episodes():
        t = ts[ep.start : ep.end]
        if t.size > 1 and (np.diff(t) < 0).any():
            report.problems.append(f"episode {ep.index}: timestamps go back in time")
    return report


def _block(arr: zarr.Array) -> int:
    return int(arr.shards[0] if arr.shards else arr.chunks[0])


def _check_missing_chunks(
    store: EpisodeStore, name: str, arr: zarr.Array, n: int, report: VerifyReport
) -> None:
    """Zarr reads a missing chunk as fill values without complaint; look for the files."""
    if is_remote(store.path) or n == 0:
        return
    root = Path(store.path) / arr.path
    block = _block(arr)
    zeros = [0] * (arr.ndim - 1)
    missing = []
    for i in range(math.ceil(n / block)):
        file = root / arr.metadata.encode_chunk_key((i, *zeros))
        if not file.exists():
            missing.append(i * block)
            continue
        if arr.shards and ShardFrameReader.supports(arr):
            raw = file.read_bytes()
            index = np.frombuffer(raw[-(block * 16 + 4) : -4], dtype="<u8").reshape(-1, 2)
            count = min(block, n - i * block)
            empty = np.flatnonzero(index[:count, 0] == np.uint64(2**64 - 1))
            if empty.size:
                report.problems.append(
                    f"{name}: frames {(empty + i * block)[:5].tolist()} are missing from their shard"
                )
    if missing:
        report.problems.append(
            f"{name}: chunk files for frames starting at {missing[:5]} are missing "
            f"({len(missing)} chunk(s)); those frames read as zeros"
        )
