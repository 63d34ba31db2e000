"""EpisodeWriter: streams frames into an episode store from a background thread.

The caller's thread only validates and copies a frame and puts it on a bounded queue, so a 50 Hz
control loop never waits for compression or disk. The writer thread keeps one chunk (or shard)
per key in memory and writes each one once it is full, so memory stays flat however long an
episode runs. `save()` flushes the partial chunks and commits the episode; `discard()` drops it.

`ProcessEpisodeWriter` (robolearn.data.procwriter) has the same API and does the same disk work
in a child process instead of a thread, so compression and zarr never hold the caller's GIL or
share its threads' time slices; the recorder uses it. Both front ends share `_WriterBase` (the
caller-side checks and the episode bookkeeping) and `_DiskWriter` (the chunk buffers and commits).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from robolearn.data.store import EpisodeInfo, EpisodeStore
from robolearn.errors import FrameError, WriterError
from robolearn.spec import Feature

log = logging.getLogger(__name__)


@dataclass
class WriterStats:
    """Counters of one writer: how often the caller had to wait for the disk, and for how long."""

    frames: int = 0
    episodes_saved: int = 0
    episodes_discarded: int = 0
    stalls: int = 0
    stall_seconds: float = 0.0
    bytes_queued_peak: int = 0


class _KeyBuffer:
    """The chunk (or shard) of one array being filled; `base` is its first frame.

    Frames already on disk (`written`) are never written again: rewriting them would decode
    and re-encode frames of committed episodes, which for JPEG means losing quality each time.
    """

    def __init__(self, store: EpisodeStore, name: str, time_array: bool = False) -> None:
        self.arr = store.time_array(name) if time_array else store.array(name)
        self.span = int(self.arr.shards[0] if self.arr.shards else self.arr.chunks[0])
        self.buf = np.empty((self.span, *self.arr.shape[1:]), dtype=self.arr.dtype)
        self.base = 0
        self.n = 0
        self.written = 0

    def load_tail(self, committed: int) -> None:
        """Continue after frame `committed`; the head of its chunk is already on disk."""
        self.base = committed - committed % self.span
        self.n = self.written = committed - self.base

    def append(self, value: np.ndarray) -> None:
        self.buf[self.n] = value
        self.n += 1
        if self.n == self.span:
            self.flush()
            self.base += self.span
            self.n = self.written = 0

    def flush(self) -> None:
        if self.n == self.written:
            return
        end = self.base + self.n
        if self.arr.shape[0] < end:
            self.arr.resize((end, *self.arr.shape[1:]))
        self.arr[self.base + self.written : end] = self.buf[self.written : self.n]
        self.written = self.n

    def truncate(self, length: int) -> None:
        if self.arr.shape[0] > length:
            self.arr.resize((length, *self.arr.shape[1:]))


class _DiskWriter:
    """The disk half of a writer: one chunk buffer per array, frame appends and episode commits.

    Runs on the writer thread (EpisodeWriter) or in the writer process (ProcessEpisodeWriter).
    """

    def __init__(self, store: EpisodeStore) -> None:
        self.store = store
        self.spec = store.spec
        self.buffers: dict[str, _KeyBuffer] = {"timestamp": _KeyBuffer(store, "timestamp")}
        for key, feature in self.spec.items():
            self.buffers[key] = _KeyBuffer(store, key)
            if feature.kind != "action":
                self.buffers[f"time/{key}"] = _KeyBuffer(store, key, time_array=True)
        for buf in self.buffers.values():
            buf.load_tail(store.num_frames)

    def frame(
        self, values: Mapping[str, np.ndarray], rel: float, times: Mapping[str, float]
    ) -> None:
        self.buffers["timestamp"].append(np.float64(rel))
        for key, value in values.items():
            self.buffers[key].append(value)
            tb = self.buffers.get(f"time/{key}")
            if tb is not None:
                tb.append(np.float64(times.get(key, rel)))

    def save(self, start_time: float, success: bool | None, info: dict[str, Any]) -> EpisodeInfo:
        for buf in self.buffers.values():
            buf.flush()
        end = self.buffers["timestamp"].base + self.buffers["timestamp"].n
        return self.store._commit_episode(end, start_time, success, info)

    def discard(self) -> None:
        committed = self.store.num_frames
        for buf in self.buffers.values():
            buf.truncate(committed)
            buf.load_tail(committed)


_STOP = object()


class _WriterBase:
    """What every writer does on the caller's side: the episode flow, frame checks, timing.

    A subclass moves checked frames to its disk half (`_put`), runs `save` / `discard` there
    (`_call`), reports a failure of that half by setting `_error`, and stops it (`_shutdown`).
    `_copy_images = False` hands `_put` the caller's own image arrays (checked, not copied).
    """

    _copy_images = True

    def __init__(self, store: EpisodeStore, *, max_queue_bytes: int = 512 << 20) -> None:
        store._require_writable()
        self.store = store
        self.spec = store.spec
        self.stats = WriterStats()
        self._max_queue_bytes = int(max_queue_bytes)
        self._error: BaseException | None = None
        self._closed = False
        self._in_episode = False
        self._t0: float | None = None
        self._last_rel = 0.0
        self._episode_frames = 0
        self._episode_meta: dict[str, Any] = {}
        self._frame_bytes = sum(
            int(np.prod(f.shape)) * np.dtype(f.dtype).itemsize for f in self.spec.values()
        )

    # ------------------------------------------------------------------ caller side
    @property
    def in_episode(self) -> bool:
        return self._in_episode

    @property
    def episode_frames(self) -> int:
        """Frames added to the episode in flight."""
        return self._episode_frames

    def start_episode(
        self,
        task: str = "",
        *,
        tags: tuple[str, ...] | list[str] = (),
        start_time: float | None = None,
    ) -> None:
        """Begin an episode. `task` is its task name or language instruction."""
        self._check_usable()
        if self._in_episode:
            raise WriterError("an episode is already in flight; save() or discard() it first")
        self._in_episode = True
        self._t0 = None
        self._last_rel = 0.0
        self._episode_frames = 0
        self._episode_meta = {
            "task": str(task),
            "tags": [str(t) for t in tags],
            "start_time": time.time() if start_time is None else float(start_time),
        }

    def add_frame(
        self,
        frame: Mapping[str, Any],
        *,
        timestamp: float | None = None,
        capture_times: Mapping[str, float] | None = None,
    ) -> None:
        """Queue one frame (every key of the spec) for writing; returns without touching disk."""
        self._check_usable()
        if not self._in_episode:
            raise WriterError("add_frame() before start_episode(); start an episode first")
        t = time.monotonic() if timestamp is None else float(timestamp)
        if not np.isfinite(t):
            raise FrameError(f"timestamp {timestamp!r} is not a finite number")
        values = self._validate(frame)
        if self._t0 is None:
            self._t0 = t
        times: dict[str, float] = {}
        for key, ct in (capture_times or {}).items():
            if key not in self.spec or self.spec[key].kind == "action":
                raise FrameError(
                    f"capture time given for {key!r}, which is not an observation key "
                    f"({self.spec.observation_keys})"
                )
            if not np.isfinite(ct):
                raise FrameError(f"capture time of {key!r} is not finite ({ct!r})")
            times[key] = float(ct) - self._t0
        rel = t - self._t0
        if self._episode_frames and rel < self._last_rel:
            raise FrameError(
                f"timestamp {t} goes back in time ({rel - self._last_rel:+.6f} s against the "
                "previous frame); pass timestamps from a monotonic clock"
            )
        self._last_rel = rel
        self._put(values, rel, times)
        self._episode_frames += 1
        self.stats.frames += 1

    def save(
        self, *, success: bool | None = None, extra: Mapping[str, Any] | None = None
    ) -> EpisodeInfo:
        """Commit the episode in flight; blocks until it is on disk and returns its info."""
        self._check_usable()
        if not self._in_episode:
            raise WriterError("save() with no episode in flight; call start_episode() first")
        if self._episode_frames == 0:
            raise WriterError("the episode has no frames; discard() it instead of saving it")
        meta = dict(self._episode_meta)
        info = {"task": meta["task"], "tags": meta["tags"], "extra": dict(extra or {})}
        result = self._call("save", (meta["start_time"], success, info))
        self._in_episode = False
        self.stats.episodes_saved += 1
        return result

    def discard(self) -> None:
        """Drop the episode in flight (nothing committed is touched)."""
        self._check_usable()
        if not self._in_episode:
            return
        self._call("discard", None)
        self._in_episode = False
        self.stats.episodes_discarded += 1

    def close(self) -> None:
        """Discard any episode in flight and stop the disk half (thread or process)."""
        if self._closed:
            return
        try:
            if self._in_episode and self._error is None:
                self.discard()
        finally:
            self._closed = True
            self._shutdown()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_usable(self) -> None:
        if self._error is not None:
            raise WriterError(
                f"the episode writer failed and stopped: {self._error!r}; committed episodes are "
                "intact, the episode in flight is lost (reopen the store to go on)"
            ) from self._error
        if self._closed:
            raise WriterError("the episode writer is closed")

    def _validate(self, frame: Mapping[str, Any]) -> dict[str, np.ndarray]:
        self._check_keys(frame)
        copy = self._copy_images
        return {
            key: _coerce(key, feature, frame[key], copy_image=copy)
            for key, feature in self.spec.items()
        }

    def _check_keys(self, frame: Mapping[str, Any]) -> None:
        if not isinstance(frame, Mapping):
            raise FrameError(f"a frame is a mapping key → array, got {type(frame).__name__}")
        unknown = [k for k in frame if k not in self.spec]
        if unknown:
            raise FrameError(
                f"unknown key(s) {unknown} in frame; the store's spec has {list(self.spec)}"
            )
        missing = [k for k in self.spec if k not in frame]
        if missing:
            raise FrameError(
                f"frame is missing {missing}; every frame carries every key of the spec"
            )

    # ------------------------------------------------------------------ the disk half
    def _put(self, values: dict[str, np.ndarray], rel: float, times: dict[str, float]) -> None:
        raise NotImplementedError

    def _call(self, op: str, arg: Any) -> Any:
        raise NotImplementedError

    def _shutdown(self) -> None:
        raise NotImplementedError


class EpisodeWriter(_WriterBase):
    """Appends episodes to an `EpisodeStore` opened with mode 'a'.

    Use::

        with store.writer() as writer:
            writer.start_episode(task="pick the cube")
            for ...:
                writer.add_frame({"state": s, "action": a, "cam": img}, timestamp=t)
            writer.save(success=True)

    `timestamp` is the frame's measured time in seconds on any monotonic clock (default: when
    `add_frame` is called); `capture_times` gives observation keys their own capture time (a
    camera frame taken before the tick). Both are stored relative to the episode's first frame.
    `max_queue_bytes` bounds the memory of frames waiting for the disk; past it `add_frame`
    waits, and the wait is counted in `stats`.

    The disk work runs on a thread of this process. `ProcessEpisodeWriter` runs it in a child
    process (same API, same guarantees), which keeps it off the caller's GIL.
    """

    def __init__(self, store: EpisodeStore, *, max_queue_bytes: int = 512 << 20) -> None:
        super().__init__(store, max_queue_bytes=max_queue_bytes)
        self._queued_bytes = 0
        self._cond = threading.Condition()
        self._queue: queue.Queue[Any] = queue.Queue()
        self._disk = _DiskWriter(store)
        self._thread = threading.Thread(
            target=self._run, name="robolearn-episode-writer", daemon=True
        )
        self._thread.start()

    def _put(self, values: dict[str, np.ndarray], rel: float, times: dict[str, float]) -> None:
        self._reserve(self._frame_bytes)
        self._queue.put(("frame", values, rel, times))

    def _shutdown(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=60)

    def _reserve(self, nbytes: int) -> None:
        with self._cond:
            if self._queued_bytes + nbytes > self._max_queue_bytes and self._queued_bytes > 0:
                t = time.perf_counter()
                self.stats.stalls += 1
                while (
                    self._queued_bytes + nbytes > self._max_queue_bytes and self._queued_bytes > 0
                ):
                    if self._error is not None:
                        break
                    self._cond.wait(0.1)
                waited = time.perf_counter() - t
                self.stats.stall_seconds += waited
                log.warning(
                    "episode writer is behind the frame rate: the caller waited %.3f s", waited
                )
            self._queued_bytes += nbytes
            self.stats.bytes_queued_peak = max(self.stats.bytes_queued_peak, self._queued_bytes)
        self._check_usable()

    def _call(self, op: str, arg: Any) -> Any:
        done = threading.Event()
        box: dict[str, Any] = {}
        self._queue.put((op, arg, done, box))
        while not done.wait(0.5):
            if not self._thread.is_alive():
                break
        self._check_usable()
        return box.get("result")

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                if self._error is None:
                    self._handle(item)
            except BaseException as e:  # reported to the caller on its next call
                log.error("episode writer failed: %r", e)
                self._error = e
                with self._cond:
                    self._cond.notify_all()
            finally:
                if item[0] != "frame":
                    item[2].set()

    def _handle(self, item: tuple[Any, ...]) -> None:
        op = item[0]
        if op == "frame":
            _, values, rel, times = item
            try:
                self._disk.frame(values, rel, times)
            finally:
                with self._cond:
                    self._queued_bytes -= self._frame_bytes
                    self._cond.notify_all()
        elif op == "save":
            item[3]["result"] = self._disk.save(*item[1])
        elif op == "discard":
            self._disk.discard()
        else:  # pragma: no cover - internal protocol
            raise WriterError(f"unknown writer operation {op!r}")


def _coerce(key: str, feature: Feature, value: Any, *, copy_image: bool = True) -> np.ndarray:
    """Check one value against its feature and return an owned copy in the feature's dtype.

    `copy_image=False` returns a checked image as given (its caller copies it elsewhere).
    """
    arr = np.asarray(value)
    if arr.shape != feature.shape:
        if arr.size == feature.size and arr.ndim <= 1 and len(feature.shape) == 1:
            arr = arr.reshape(feature.shape)
        else:
            raise FrameError(
                f"{feature.kind} {key!r} has shape {arr.shape} but the spec says {feature.shape}"
            )
    target = np.dtype(feature.dtype)
    if feature.kind == "image":
        _check_image(key, arr)
        return np.array(arr, copy=True) if copy_image else arr
    if arr.dtype.kind not in "biuf":
        raise FrameError(f"{feature.kind} {key!r} has non-numeric dtype {arr.dtype}")
    if target.kind in "iub" and arr.dtype.kind == "f":
        raise FrameError(
            f"{feature.kind} {key!r} is {arr.dtype} but the spec says {target}; round it first"
        )
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            names = feature.dim_names()
            where = [names[i] for i in np.flatnonzero(bad.reshape(-1))[:5]]
            raise FrameError(f"{feature.kind} {key!r} has NaN or infinite values in {where}")
    out = arr.astype(target, copy=True)
    if target.kind == "f" and not np.isfinite(out).all():
        raise FrameError(f"{feature.kind} {key!r} overflows {target}")
    return out


def _check_image(key: str, arr: np.ndarray) -> None:
    if arr.dtype != np.uint8:
        raise FrameError(
            f"image {key!r} is {arr.dtype}; images are stored as uint8 0..255 "
            "(convert with (x * 255).round().astype(np.uint8))"
        )
