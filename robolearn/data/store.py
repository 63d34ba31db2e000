"""The episode store: an append-only Zarr v3 store of demonstrations with crash recovery.

Layout (format version 1)::

    zarr.json                    attributes["robolearn"]: format, version, fps, features, codecs
    data/<key>                   every feature, all episodes concatenated along time (axis 0)
    data/timestamp               float64 seconds since the episode's first frame, as measured
    time/<key>                   float64 capture time of each observation key, same clock
    meta/episode_ends            int64 exclusive end frame of each episode; committed last
    meta/episode_start_time      float64 wall-clock (unix) time of each episode's start
    meta/episode_success         int8: 1 success, 0 failure, -1 unknown
    meta/episode_info            JSON string per episode: task, tags, extra

Everything an episode writes lands before its entry in `meta/episode_ends`, and zarr writes
each file atomically (temporary file + rename), so a process killed at any moment leaves the
committed episodes intact; whatever lies past the last committed end is the episode that was in
flight, and opening the store for writing cuts it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
import zarr.errors

from robolearn import __version__
from robolearn.data.codecs import CodecChoice
from robolearn.data.fastread import ShardFrameReader
from robolearn.errors import EpisodeIndexError, FormatVersionError, SpecError, StoreError
from robolearn.spec import FeatureSpec

if TYPE_CHECKING:
    from robolearn.data.writer import EpisodeWriter

log = logging.getLogger(__name__)

FORMAT_NAME = "robolearn.episodes"
FORMAT_VERSION = 1
META_KEYS = ("episode_ends", "episode_start_time", "episode_success", "episode_info")
LOWDIM_CHUNK_FRAMES = 8192
META_CHUNK = 1024
SHARD_TARGET_BYTES = 4 << 20
MAX_SHARD_FRAMES = 256


def image_shard_frames(shape: Sequence[int]) -> int:
    """Frames per shard for an image key: about 4 MiB raw, one frame per inner chunk."""
    frame_bytes = int(np.prod(shape))
    return int(max(1, min(MAX_SHARD_FRAMES, SHARD_TARGET_BYTES // frame_bytes)))


def is_remote(path: str | os.PathLike[str]) -> bool:
    return "://" in str(path)


@dataclass(frozen=True)
class EpisodeInfo:
    """What the store knows about one committed episode."""

    index: int
    start: int
    end: int
    task: str
    success: bool | None
    start_time: float
    tags: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class RecoveryReport:
    """What opening a store found: how many episodes are intact and what was cut."""

    episodes: int
    frames: int
    cut_frames: int = 0
    cut_episode_entries: int = 0
    removed_partial_files: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.cut_frames or self.cut_episode_entries or self.removed_partial_files)

    def __str__(self) -> str:
        text = f"recovered {self.episodes} committed episodes ({self.frames} frames)"
        if self.cut_frames:
            text += f"; cut {self.cut_frames} frames of an unfinished episode"
        if self.cut_episode_entries:
            text += f"; dropped {self.cut_episode_entries} uncommitted episode entries"
        if self.removed_partial_files:
            text += f"; removed {self.removed_partial_files} half-written temporary files"
        return text


class _DirLock:
    """An exclusive advisory lock on the store directory, released by the kernel on any exit."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise StoreError(
                f"{path} is open for writing in another process; close that recorder first "
                "(or open this store read-only)"
            ) from None

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


class EpisodeStore:
    """An episode store on disk (or, read-only, at any fsspec URL).

    Create one with `EpisodeStore.create(path, spec, fps)`, open one with
    `EpisodeStore.open(path, mode="r" | "a")`, write episodes with `store.writer()`.
    """

    def __init__(
        self,
        group: zarr.Group,
        path: str,
        mode: str,
        lock: _DirLock | None = None,
        report: RecoveryReport | None = None,
    ) -> None:
        self._group = group
        self.path = path
        self.mode = mode
        self._lock = lock
        self.recovery = report
        attrs = _check_attrs(group, path)
        self.spec = FeatureSpec.from_dict(attrs["features"])
        self.fps = float(attrs["fps"])
        self.codecs = {k: CodecChoice.parse(v, k) for k, v in attrs.get("codecs", {}).items()}
        self.attrs = attrs
        self._arrays: dict[str, zarr.Array] = {}
        self._readers: dict[str, ShardFrameReader | None] = {}
        self._load_meta()

    # ------------------------------------------------------------------ creation / opening
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        spec: FeatureSpec | Mapping[str, Any],
        fps: float,
        *,
        codecs: Mapping[str, str | CodecChoice] | None = None,
        overwrite: bool = False,
        attrs: Mapping[str, Any] | None = None,
    ) -> EpisodeStore:
        """Create an empty store for `spec`, recorded at nominal rate `fps`.

        `codecs` maps keys to 'lossless' (default), 'jpeg[:Q]' or 'jpegxl[:Q]' (images only).
        """
        if not isinstance(spec, FeatureSpec):
            spec = FeatureSpec.from_dict(spec)
        if not (np.isfinite(fps) and fps > 0):
            raise SpecError(f"fps must be a positive number, got {fps}")
        if is_remote(path):
            raise StoreError(
                f"{path}: stores are written to a local path; copy them to a URL after"
            )
        path = Path(path)
        if path.exists() and not overwrite:
            if (path / "zarr.json").exists():
                raise StoreError(
                    f"{path} already holds a store; open it with mode='a' to append, "
                    "or pass overwrite=True to replace it"
                )
            if path.is_file() or any(path.iterdir()):
                raise StoreError(f"{path} exists and is not empty; choose another path")
        choices = {k: CodecChoice("lossless") for k in spec}
        for key, text in (codecs or {}).items():
            if key not in spec:
                raise SpecError(f"codec given for {key!r}, which is not in the spec {list(spec)}")
            choice = CodecChoice.parse(text, key)
            if choice.name != "lossless" and spec[key].kind != "image":
                raise SpecError(f"{key!r} is a {spec[key].kind}; only images can use {choice}")
            if choice.name == "jpeg" and spec[key].shape[2] not in (1, 3):
                raise SpecError(
                    f"image {key!r} has {spec[key].shape[2]} channels; jpeg takes 1 or 3"
                )
            choices[key] = choice
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "fps": float(fps),
            "features": spec.to_dict(),
            "codecs": {k: str(v) for k, v in choices.items()},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "writer": f"robolearn {__version__}",
        }
        root = zarr.open_group(str(path), mode="w" if overwrite else "w-", zarr_format=3)
        data, times, metag = (
            root.create_group("data"),
            root.create_group("time"),
            root.create_group("meta"),
        )
        for key, feature in spec.items():
            image = feature.kind == "image"
            shape = (0, *feature.shape)
            kw = choices[key].zarr_codecs(image=image)
            if image:
                kw |= {
                    "chunks": (1, *feature.shape),
                    "shards": (image_shard_frames(feature.shape), *feature.shape),
                }
            else:
                kw |= {"chunks": (LOWDIM_CHUNK_FRAMES, *feature.shape)}
            data.create_array(key, shape=shape, dtype=feature.dtype, fill_value=0, **kw)
            if feature.kind != "action":
                times.create_array(
                    key, shape=(0,), dtype="float64", chunks=(LOWDIM_CHUNK_FRAMES,), fill_value=0.0
                )
        data.create_array(
            "timestamp", shape=(0,), dtype="float64", chunks=(LOWDIM_CHUNK_FRAMES,), fill_value=0.0
        )
        metag.create_array(
            "episode_ends", shape=(0,), dtype="int64", chunks=(META_CHUNK,), fill_value=0
        )
        metag.create_array(
            "episode_start_time", shape=(0,), dtype="float64", chunks=(META_CHUNK,), fill_value=0.0
        )
        metag.create_array(
            "episode_success", shape=(0,), dtype="int8", chunks=(META_CHUNK,), fill_value=-1
        )
        metag.create_array("episode_info", shape=(0,), dtype=str, chunks=(META_CHUNK,))
        root.attrs.update({"robolearn": meta, **dict(attrs or {})})
        log.info("created episode store %s (%d features, %.1f fps)", path, len(spec), fps)
        return cls(root, str(path), "a", lock=_DirLock(path), report=RecoveryReport(0, 0))

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        mode: str = "r",
        *,
        storage_options: Mapping[str, Any] | None = None,
    ) -> EpisodeStore:
        """Open a store read-only (`mode="r"`, any fsspec URL) or for appending (`"a"`, local).

        Opening for appending takes an exclusive lock and repairs what a killed writer left:
        the frames of the episode in flight and half-written temporary files are removed.
        """
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        remote = is_remote(path)
        if not remote:
            local = Path(path)
            if not local.exists():
                raise StoreError(f"{local} does not exist; create a store with EpisodeStore.create")
            if not (local / "zarr.json").is_file():
                raise StoreError(
                    f"{local} is not an episode store (no zarr.json in it); point to the .zarr folder"
                )
        elif mode == "a":
            raise StoreError(
                f"{path}: remote stores open read-only; copy the store locally to append"
            )
        try:
            group = zarr.open_group(
                str(path),
                mode="r",
                zarr_format=3,
                storage_options=dict(storage_options or {}) or None,
            )
        except (
            FileNotFoundError,
            zarr.errors.NodeTypeValidationError,
            zarr.errors.GroupNotFoundError,
        ) as e:
            raise StoreError(f"{path} is not an episode store: {e}") from e
        except ValueError as e:
            raise StoreError(f"{path} could not be opened as a Zarr v3 group: {e}") from e
        _check_attrs(group, str(path))
        if mode == "r":
            store = cls(group, str(path), "r")
            store.recovery = store._inspect_tail()
            return store
        lock = _DirLock(Path(path))
        try:
            report = _repair(Path(path))
            group = zarr.open_group(str(path), mode="r+", zarr_format=3)
            store = cls(group, str(path), "a", lock=lock, report=report)
        except BaseException:
            lock.release()
            raise
        if report.changed:
            log.warning("%s: %s", path, report)
        return store

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> EpisodeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"EpisodeStore({self.path!r}, episodes={self.num_episodes}, frames={self.num_frames}, "
            f"fps={self.fps:g}, keys={list(self.spec)})"
        )

    # ------------------------------------------------------------------ metadata
    def _load_meta(self) -> None:
        meta = self._group["meta"]
        ends = np.asarray(meta["episode_ends"][:], dtype=np.int64)
        n = _valid_prefix(ends, self._min_data_length())
        self._ends = ends[:n]
        self._start_time = np.asarray(meta["episode_start_time"][:n], dtype=np.float64)
        self._success = np.asarray(meta["episode_success"][:n], dtype=np.int8)
        self._info_json = [str(s) for s in meta["episode_info"][:n]]
        self._info_cache: dict[int, dict[str, Any]] = {}

    def _min_data_length(self) -> int:
        return min(int(a.shape[0]) for a in self._all_frame_arrays())

    def _all_frame_arrays(self) -> Iterator[zarr.Array]:
        yield self.array("timestamp")
        for key, feature in self.spec.items():
            yield self.array(key)
            if feature.kind != "action":
                yield self.time_array(key)

    def _inspect_tail(self) -> RecoveryReport:
        frames = self.num_frames
        extra = max(max(int(a.shape[0]) for a in self._all_frame_arrays()) - frames, 0)
        if extra:
            log.warning(
                "%s: %d frames past the last committed episode (an unfinished episode) are ignored",
                self.path,
                extra,
            )
        return RecoveryReport(self.num_episodes, frames, cut_frames=extra)

    def array(self, key: str) -> zarr.Array:
        """The zarr array `data/<key>` (all episodes concatenated); `timestamp` included."""
        name = f"data/{key}"
        if name not in self._arrays:
            if key != "timestamp" and key not in self.spec:
                raise KeyError(f"no key {key!r} in this store; it has {list(self.spec)}")
            self._arrays[name] = _frame_array(self._group, name)
        return self._arrays[name]

    def time_array(self, key: str) -> zarr.Array:
        """The capture times `time/<key>` of an observation key."""
        if key not in self.spec or self.spec[key].kind == "action":
            raise KeyError(f"{key!r} is not an observation key of this store")
        name = f"time/{key}"
        if name not in self._arrays:
            self._arrays[name] = _frame_array(self._group, name)
        return self._arrays[name]

    @property
    def group(self) -> zarr.Group:
        return self._group

    @property
    def num_episodes(self) -> int:
        return len(self._ends)

    def __len__(self) -> int:
        return self.num_episodes

    @property
    def num_frames(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def episode_ends(self) -> np.ndarray:
        return self._ends.copy()

    @property
    def episode_starts(self) -> np.ndarray:
        return np.concatenate([[0], self._ends[:-1]]).astype(np.int64)

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self._ends, prepend=0)

    def _check_episode(self, index: int) -> int:
        n = self.num_episodes
        if not -n <= index < n:
            hint = f"pick one of 0..{n - 1}" if n else "record an episode first"
            raise EpisodeIndexError(
                f"episode {index} does not exist; the store has {n} episodes ({hint})"
            )
        return index % n

    def bounds(self, index: int) -> tuple[int, int]:
        """(start, end) frame indices of episode `index` in the concatenated arrays."""
        index = self._check_episode(index)
        return (int(self._ends[index - 1]) if index else 0), int(self._ends[index])

    def episode(self, index: int) -> EpisodeInfo:
        index = self._check_episode(index)
        if index not in self._info_cache:
            try:
                self._info_cache[index] = json.loads(self._info_json[index] or "{}")
            except json.JSONDecodeError:
                log.warning("%s: episode %d has unreadable metadata", self.path, index)
                self._info_cache[index] = {}
        info = self._info_cache[index]
        start, end = self.bounds(index)
        success = int(self._success[index])
        return EpisodeInfo(
            index=index,
            start=start,
            end=end,
            task=str(info.get("task", "")),
            success=None if success < 0 else bool(success),
            start_time=float(self._start_time[index]),
            tags=tuple(info.get("tags", ())),
            extra=dict(info.get("extra", {})),
        )

    def episodes(self) -> list[EpisodeInfo]:
        return [self.episode(i) for i in range(self.num_episodes)]

    # ------------------------------------------------------------------ reading
    def read(self, key: str, start: int, stop: int) -> np.ndarray:
        """Frames [start, stop) of `key` from the concatenated arrays (bounds-checked)."""
        if not 0 <= start <= stop <= self.num_frames:
            raise IndexError(f"frames [{start}, {stop}) are outside the store's {self.num_frames}")
        return np.asarray(self.array(key)[start:stop])

    def read_frames(self, key: str, frames: np.ndarray) -> np.ndarray:
        """Arbitrary frames of `key` by global index, read in one batched zarr call."""
        frames = np.asarray(frames, dtype=np.int64)
        if frames.size and (frames.min() < 0 or frames.max() >= self.num_frames):
            raise IndexError(f"frame index outside the store's {self.num_frames} frames")
        reader = self._frame_reader(key)
        if reader is not None:
            return reader.read(frames).reshape(*frames.shape, *reader.frame_shape)
        unique, inverse = np.unique(frames, return_inverse=True)
        arr = self.array(key)
        if unique.size == 0:
            return np.empty((0, *arr.shape[1:]), dtype=arr.dtype)
        lo, hi = int(unique[0]), int(unique[-1]) + 1
        if hi - lo <= 2 * unique.size:
            block = np.asarray(arr[lo:hi])
            return block[frames - lo]
        return np.asarray(arr.oindex[unique])[inverse.reshape(frames.shape)]

    def _frame_reader(self, key: str) -> ShardFrameReader | None:
        """The direct shard reader for an image key of a local store, when its layout allows."""
        if key not in self._readers:
            reader = None
            arr = self.array(key)
            if (
                not is_remote(self.path)
                and self.spec[key].kind == "image"
                and ShardFrameReader.supports(arr)
            ):
                reader = ShardFrameReader(arr, Path(self.path))
            self._readers[key] = reader
        return self._readers[key]

    def read_episode(self, index: int, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """All frames of one episode: every key asked for, plus `timestamp`."""
        start, end = self.bounds(index)
        keys = list(self.spec) if keys is None else list(keys)
        out = {key: self.read(key, start, end) for key in keys}
        out["timestamp"] = self.read("timestamp", start, end)
        return out

    def capture_times(self, index: int, key: str) -> np.ndarray:
        start, end = self.bounds(index)
        return np.asarray(self.time_array(key)[start:end])

    # ------------------------------------------------------------------ writing
    def writer(self, **kwargs: Any) -> EpisodeWriter:
        """An EpisodeWriter appending to this store (which must be open with mode 'a')."""
        from robolearn.data.writer import EpisodeWriter

        return EpisodeWriter(self, **kwargs)

    def _require_writable(self) -> None:
        if self.mode != "a" or self._lock is None:
            raise StoreError(f"{self.path} is open read-only; open it with mode='a' to write")

    def _commit_episode(
        self, end: int, start_time: float, success: bool | None, info: Mapping[str, Any]
    ) -> EpisodeInfo:
        """Write one episode's metadata, then its end: the single step that commits it."""
        self._require_writable()
        meta = self._group["meta"]
        n = self.num_episodes
        text = json.dumps(dict(info), default=_json_default)
        code = -1 if success is None else int(bool(success))
        for name, value in (
            ("episode_start_time", start_time),
            ("episode_success", code),
            ("episode_info", text),
        ):
            arr = meta[name]
            arr.resize((n + 1,))
            arr[n] = value
        ends = meta["episode_ends"]
        ends.resize((n + 1,))
        ends[n] = end
        self._ends = np.append(self._ends, np.int64(end))
        self._start_time = np.append(self._start_time, start_time)
        self._success = np.append(self._success, np.int8(code))
        self._info_json.append(text)
        return self.episode(n)

    @property
    def user_attrs(self) -> dict[str, Any]:
        """The extra JSON attributes at the root (`create(attrs=…)`, `set_attrs`)."""
        return {k: v for k, v in self._group.attrs.asdict().items() if k != "robolearn"}

    def set_attrs(self, **values: Any) -> None:
        """Store extra JSON attributes at the root (beside, never inside, robolearn's own)."""
        self._require_writable()
        if "robolearn" in values:
            raise StoreError("the 'robolearn' attribute is managed by the store itself")
        self._group.attrs.update(values)


# ---------------------------------------------------------------------- helpers
def _frame_array(group: zarr.Group, name: str) -> zarr.Array:
    # Zarr skips chunks equal to the fill value by default; writing them all means a missing
    # chunk file is always damage that `verify` can report, never an all-zero gripper signal.
    return group[name].with_config({"write_empty_chunks": True})


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"episode metadata value {value!r} is not JSON-serialisable")


def _check_attrs(group: zarr.Group, path: str) -> dict[str, Any]:
    attrs = group.attrs.asdict().get("robolearn")
    if not isinstance(attrs, dict) or attrs.get("format") != FORMAT_NAME:
        raise StoreError(
            f"{path} is a Zarr group but not a robolearn episode store "
            "(its attributes have no robolearn format entry)"
        )
    version = attrs.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise FormatVersionError(
            f"{path} uses store format version {version}, newer than the {FORMAT_VERSION} this "
            f"robolearn ({__version__}) reads; upgrade robolearn to open it"
        )
    for name in ("features", "fps"):
        if name not in attrs:
            raise StoreError(f"{path}: store attributes lack {name!r}; the store is damaged")
    return attrs


def _valid_prefix(ends: np.ndarray, data_length: int) -> int:
    """Number of leading episode ends that are positive, strictly increasing and backed by data.

    An entry past that is an end whose write was interrupted (it reads as the fill value 0).
    """
    n = 0
    prev = 0
    for value in ends.tolist():
        if value <= prev or value > data_length:
            break
        prev = value
        n += 1
    return n


def _shrink(arr: zarr.Array, length: int) -> None:
    """Cut an array to `length` rows, overwriting the cut rows with the fill value first.

    Zarr keeps chunks that straddle the new end, so without the overwrite a later resize would
    bring the cut values back as if they were written.
    """
    old = int(arr.shape[0])
    if old <= length:
        return
    fill = arr.metadata.fill_value
    stop = min(old, -(-length // arr.chunks[0]) * arr.chunks[0])
    if stop > length and arr.metadata.dtype.to_native_dtype().kind in "iufb":
        arr[length:stop] = np.full((stop - length, *arr.shape[1:]), fill, dtype=arr.dtype)
    arr.resize((length, *arr.shape[1:]))


def _repair(path: Path) -> RecoveryReport:
    """Bring a store back to its last committed episode (idempotent; only ever shrinks)."""
    removed = 0
    for partial in path.rglob("*.partial"):
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
            removed += 1
    root = zarr.open_group(str(path), mode="r+", zarr_format=3)
    attrs = _check_attrs(root, str(path))
    spec = FeatureSpec.from_dict(attrs["features"])
    frame_arrays = [root["data/timestamp"]]
    for key, feature in spec.items():
        frame_arrays.append(root[f"data/{key}"])
        if feature.kind != "action":
            frame_arrays.append(root[f"time/{key}"])
    data_length = min(int(a.shape[0]) for a in frame_arrays)
    meta = root["meta"]
    ends_arr = meta["episode_ends"]
    ends = np.asarray(ends_arr[:], dtype=np.int64)
    n = _valid_prefix(ends, data_length)
    frames = int(ends[n - 1]) if n else 0
    cut_entries = 0
    for name in META_KEYS:
        arr = meta[name]
        if int(arr.shape[0]) > n:
            cut_entries = max(cut_entries, int(arr.shape[0]) - n)
            if name == "episode_info":
                arr.resize((n,))
            else:
                _shrink(arr, n)
    cut_frames = max(int(a.shape[0]) for a in frame_arrays) - frames
    for arr in frame_arrays:
        if int(arr.shape[0]) > frames:
            arr.resize((frames, *arr.shape[1:]))
    return RecoveryReport(n, frames, cut_frames, cut_entries, removed)
