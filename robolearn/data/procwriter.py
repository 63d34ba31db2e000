"""ProcessEpisodeWriter: the episode writer with its disk half in a child process.

Why: the thread writer (`EpisodeWriter`) compresses and writes on a thread of the caller's
process, and zarr does that through its own event-loop and worker threads. All of them share one
GIL with the control loop, so a loop thread waking for its deadline waits behind them (measured
on a 2-core VM: p99 period error 3-9 ms at 100 Hz while recording two 480×640 cameras at 30 fps;
benchmarks/control_loop.py). Here the caller's process only checks a frame, copies its bytes
into shared memory and writes a 16-byte notice; encoding and zarr run in another interpreter.

Design:

- Shared memory is an anonymous `memfd` (no name in /dev/shm, so nothing leaks whoever is
  killed) mapped by both processes and cut into slots of one frame each (every key, 64-byte
  aligned, the frame's timestamps in front). `max_queue_bytes` sets the slot count: it bounds
  the frames waiting for the disk, as in the thread writer, and when no slot is free
  `add_frame` waits and counts a stall. Free slots are reused last-in first-out, so only as many
  pages are ever touched as frames were ever waiting at once; the first few are touched at start.
- Image bytes are copied with `ctypes.memmove`, which releases the GIL while it copies.
- Frame notices (slot, sequence number) and pickled control messages (save / discard / close,
  results, errors) go over a socket pair. The child acknowledges each frame by writing its
  sequence number into the shared header once the frame is in its chunk buffer, so a free slot
  costs the caller no message and no thread.
- The child shares the store's lock: it inherits the parent's locked file descriptor (the same
  open file description), so the store stays locked as long as either process lives. A parent
  killed while the child still writes cannot let another recorder in to "repair" under it.
- Crash safety is the store's: the child commits an episode by writing `meta/episode_ends` last,
  only when asked to save. Killing either process loses at most the episode in flight; the next
  `EpisodeStore.open(path, "a")` cuts its frames.
- The parent dying (SIGKILL included) closes the socket; the child then drops the episode in
  flight (best effort) and exits. The child runs in its own session and ignores SIGINT and
  SIGTERM: Ctrl-C and a terminal's hang-up go to the recorder, which still needs its writer to
  save or discard the episode in flight.
- Errors in the child (an I/O error, a full disk) come back as the original exception (with the
  child's traceback as a note) and are raised by the caller's next call as a `WriterError`
  (`__cause__` = the original), exactly like the thread writer; a child that dies without a
  word (killed) is reported with its signal.
- CPU (`_Priority`, no privilege needed): while it keeps up, the child's threads may use every
  CPU but one, which the control loop then always finds free (zarr compresses a shard's chunks
  on several threads at once, and on 2 cores those bursts filled both just as the loop woke:
  p99 of a 100 Hz loop beside the recording 0.8 → 0.09 ms on a quiet machine), and its own
  session makes it its own autogroup (the kernel's per-session scheduling group), run at
  niceness `nice` (10): the control loop's process comes first when the CPUs are busy (late
  ticks 49 → 14 per 600 with others' jobs on 1.3-1.5 of 2 cores). Once frames back up (an
  eighth of the slots) it takes every CPU and niceness 0, its fair share, until it has caught
  up: a busy machine costs latency before it costs frames.
- Large files go to the kernel in 256 KiB pieces (`_PacedLocalStore`): on a kernel without
  preemption one multi-megabyte write() holds its CPU for milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import mmap
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback
import uuid
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.core.buffer import Buffer
from zarr.storage import LocalStore

from robolearn.data.store import EpisodeStore
from robolearn.data.writer import _DiskWriter, _WriterBase
from robolearn.errors import WriterError

log = logging.getLogger(__name__)

_HEADER = 64  # the shared header: two int64 sequence numbers (frame taken, frame sent), padding
_ALIGN = 64
_MEMMOVE_MIN = 64 << 10  # copies at least this large run without the GIL
_MAX_SLOTS = 4096
_MSG = struct.Struct("<BxxxIq")  # kind, slot, sequence number (frames) or payload length
_FRAME, _OBJECT = 1, 2
_PIECE = 256 << 10  # bytes per write() of a large file
_PRETOUCH_SLOTS = 4
_THREAD_NICE = 5  # the writer threads' niceness cap where there are no autogroups


def process_writer_supported() -> bool:
    """Whether this platform can run the writer in a child process (Linux: memfd, fd passing)."""
    return hasattr(os, "memfd_create") and sys.platform.startswith("linux")


class _Layout:
    """Where everything of one frame lies in its slot: times first, then every key."""

    def __init__(self, store: EpisodeStore) -> None:
        self.obs_keys = [k for k, f in store.spec.items() if f.kind != "action"]
        offset = -(-8 * (1 + len(self.obs_keys)) // _ALIGN) * _ALIGN  # rel + capture times
        self.keys: dict[str, tuple[int, tuple[int, ...], str]] = {}
        for key, feature in store.spec.items():
            nbytes = int(np.prod(feature.shape)) * np.dtype(feature.dtype).itemsize
            self.keys[key] = (offset, tuple(feature.shape), str(np.dtype(feature.dtype)))
            offset += -(-nbytes // _ALIGN) * _ALIGN
        self.slot_bytes = offset

    def size(self, slots: int) -> int:
        return _HEADER + slots * self.slot_bytes

    def views(self, mem: mmap.mmap, slots: int) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Per slot: its times (float64: rel, then each observation key) and its key arrays."""
        out = []
        for s in range(slots):
            at = _HEADER + s * self.slot_bytes
            times = np.ndarray((1 + len(self.obs_keys),), np.float64, buffer=mem, offset=at)
            arrays = {
                key: np.ndarray(shape, np.dtype(dtype), buffer=mem, offset=at + off)
                for key, (off, shape, dtype) in self.keys.items()
            }
            out.append((times, arrays))
        return out


class _PacedLocalStore(LocalStore):
    """A zarr LocalStore that hands large files to the kernel in pieces of `_PIECE` bytes.

    One multi-megabyte write() runs in the kernel for milliseconds, and a kernel built without
    preemption (this VM's says "Dynamic Preempt: none") lets nothing else onto that CPU until it
    returns: a control loop waking there is late by as much. Measured here with a process writing
    3 MiB files 15 times a second (two cameras' shards): 6.6 % of 100 Hz ticks over 1 ms late
    with whole-file writes, 0.6 % with 256 KiB pieces (1.3 % with no writer at all). Files are
    still written to a temporary name and renamed, as zarr does, so a kill never leaves half a
    file under its real name.
    """

    async def set(self, key: str, value: Buffer) -> None:
        if len(value) <= _PIECE:
            return await super().set(key, value)
        self._check_writable()
        if not self._is_open:
            await self._open()
        await asyncio.to_thread(_put_in_pieces, self.root / key, value)


def _put_in_pieces(path: Path, value: Buffer) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{uuid.uuid4().hex}.partial")
    view = memoryview(value.as_buffer_like()).cast("B")
    try:
        with open(tmp, "wb", buffering=0) as f:
            at = 0
            while at < len(view):
                at += f.write(view[at : at + _PIECE]) or 0
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class _Channel:
    """Messages over a stream socket: 16-byte frame notices and length-prefixed pickles."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)

    def send_frame(self, slot: int, seq: int) -> None:
        self._write(_MSG.pack(_FRAME, slot, seq))

    def send(self, obj: Any) -> None:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        self._write(_MSG.pack(_OBJECT, 0, len(data)) + data)

    def readable(self, timeout: float = 0.0) -> bool:
        return bool(self._poll.poll(timeout * 1e3))

    def recv(self) -> Any:
        """The next message: ("f", slot, seq) for a frame, else the object sent."""
        kind, slot, n = _MSG.unpack(self._read(_MSG.size))
        if kind == _FRAME:
            return ("f", slot, n)
        return pickle.loads(self._read(n))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def _read(self, n: int) -> bytes:
        parts = []
        while n:
            part = os.read(self.fd, n)
            if not part:
                raise EOFError("the other end of the episode writer's channel closed")
            parts.append(part)
            n -= len(part)
        return b"".join(parts)


class _InheritedLock:
    """The store lock as the child holds it: a duplicate of the parent's locked descriptor.

    Releasing only closes the duplicate (an unlock would also unlock the parent's); the kernel
    drops the lock when the last descriptor of it is closed, whichever process closes it.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class ProcessEpisodeWriter(_WriterBase):
    """An `EpisodeWriter` whose compression and disk writes run in a child process.

    Same API and guarantees as `EpisodeWriter` (see robolearn.data.writer); frames travel
    through shared memory. `nice` is the child's niceness while it keeps up (module docstring;
    0: the caller's share throughout); `cpus` pins it to those CPUs (default: all but one while
    it keeps up, all when behind); `session=False` keeps it in the caller's session (and so in
    its scheduling group, where only its threads' niceness, at most 5, sets it apart);
    `start_timeout` bounds its start-up (importing numpy and zarr). `pid` is its process id
    while it runs.
    """

    _copy_images = False  # copied once, straight into shared memory

    def __init__(
        self,
        store: EpisodeStore,
        *,
        max_queue_bytes: int = 512 << 20,
        nice: int = 10,
        cpus: set[int] | None = None,
        session: bool = True,
        start_timeout: float = 60.0,
    ) -> None:
        super().__init__(store, max_queue_bytes=max_queue_bytes)
        if not process_writer_supported():
            raise WriterError("the process writer needs Linux (memfd); use EpisodeWriter")
        layout = _Layout(store)
        self._slots = max(1, min(self._max_queue_bytes // layout.slot_bytes, _MAX_SLOTS))
        self._proc: subprocess.Popen[bytes] | None = None
        self._chan: _Channel | None = None
        self._mem: mmap.mmap | None = None
        self._views: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
        self._header: np.ndarray | None = None
        self._results: deque[Any] = deque()
        mem_fd = os.memfd_create("robolearn-episode-writer", os.MFD_CLOEXEC)
        ours, theirs = socket.socketpair()
        try:
            os.ftruncate(mem_fd, layout.size(self._slots))
            self._mem = mmap.mmap(mem_fd, layout.size(self._slots))
            # [sequence number of the last frame the child took, of the newest frame sent]
            self._header = np.ndarray((2,), np.int64, buffer=self._mem, offset=0)
            self._header[:] = -1
            lock_fd = store._lock._fd  # type: ignore[union-attr]  # writable: checked above
            root = str(Path(__file__).resolve().parents[2])
            path = os.environ.get("PYTHONPATH")
            env = {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}
            fds = (theirs.fileno(), mem_fd, lock_fd)
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "robolearn.data.procwriter", *map(str, fds)],
                pass_fds=fds,
                env=env,
                stdin=subprocess.DEVNULL,
                start_new_session=session,
            )
            self._chan = _Channel(ours.detach())
            sched = {"nice": int(nice), "cpus": sorted(cpus) if cpus else None}
            self._chan.send(("init", store.path, self._slots, sched))
        except BaseException:
            if self._chan is None:
                ours.close()
            self._closed = True
            self._shutdown()
            raise
        finally:
            theirs.close()
            os.close(mem_fd)
        self._obs_index = {k: i + 1 for i, k in enumerate(layout.obs_keys)}
        self._views = layout.views(self._mem, self._slots)
        for _, arrays in self._views[:_PRETOUCH_SLOTS]:  # fault the first slots in now
            for array in arrays.values():
                array.fill(0)
        self._free = list(range(self._slots - 1, -1, -1))  # a stack: slot 0 on top
        self._inflight: deque[tuple[int, int]] = deque()  # (sequence number, slot)
        self._seq = 0
        try:
            self._wait_result(start_timeout, "start")
        except BaseException:
            self._closed = True
            self._shutdown()
            raise

    @property
    def pid(self) -> int | None:
        """The writer process's id (None once it has been stopped)."""
        return None if self._proc is None else self._proc.pid

    # ------------------------------------------------------------------ frames
    def _put(self, values: dict[str, np.ndarray], rel: float, times: dict[str, float]) -> None:
        slot = self._take_slot()
        slot_times, arrays = self._views[slot]
        for key, value in values.items():
            dst = arrays[key]
            if dst.nbytes >= _MEMMOVE_MIN and value.dtype == dst.dtype:
                src = np.ascontiguousarray(value)
                ctypes.memmove(dst.ctypes.data, src.ctypes.data, dst.nbytes)  # without the GIL
            else:
                np.copyto(dst, value, casting="unsafe")
        slot_times.fill(np.nan)
        slot_times[0] = rel
        for key, t in times.items():
            slot_times[self._obs_index[key]] = t
        seq = self._seq
        self._seq += 1
        self._header[1] = seq  # type: ignore[index]
        self._inflight.append((seq, slot))
        self.stats.bytes_queued_peak = max(
            self.stats.bytes_queued_peak, len(self._inflight) * self._frame_bytes
        )
        self._send(self._chan.send_frame, slot, seq)  # type: ignore[union-attr]

    def _reclaim(self) -> None:
        acked = int(self._header[0])  # type: ignore[index]
        while self._inflight and self._inflight[0][0] <= acked:
            self._free.append(self._inflight.popleft()[1])

    def _take_slot(self) -> int:
        self._reclaim()
        if not self._free:
            t = time.perf_counter()
            self.stats.stalls += 1
            while not self._free:
                self._poll()
                if self._error is not None:
                    break
                time.sleep(0.001)
                self._reclaim()
            waited = time.perf_counter() - t
            self.stats.stall_seconds += waited
            log.warning("episode writer is behind the frame rate: the caller waited %.3f s", waited)
            self._check_usable()
        return self._free.pop()

    # ------------------------------------------------------------------ messages
    def _check_usable(self) -> None:
        if self._error is None and not self._closed:
            self._poll()
        super()._check_usable()

    def _send(self, send: Any, *args: Any) -> None:
        try:
            send(*args)
        except OSError:  # the child is gone; say why
            self._poll(wait=5.0)
            if self._error is None:
                self._error = WriterError("the episode writer process stopped reading")
            self._check_usable()

    def _poll(self, wait: float = 0.0) -> None:
        """Take every message the child has sent; notice if it has died."""
        chan, proc = self._chan, self._proc
        if chan is None or proc is None:
            return
        try:
            while chan.readable(wait):
                wait = 0.0
                kind, value = chan.recv()
                if kind == "error":
                    self._error = value
                    return
                self._results.append(value)
        except (EOFError, OSError):  # it closed its end: it has exited or is exiting
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5.0)
            if proc.poll() is None:
                self._error = WriterError("the episode writer process closed its channel")
        if self._error is None and proc.poll() is not None:
            self._error = WriterError(f"the episode writer process {_describe_exit(proc)}")

    def _wait_result(self, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while not self._results:
            if self._error is not None:
                break
            if time.monotonic() > deadline:
                self._error = WriterError(
                    f"the episode writer process did not answer {what} within {timeout:g} s"
                )
                break
            self._poll(wait=0.2)
        super()._check_usable()
        return self._results.popleft()

    def _call(self, op: str, arg: Any) -> Any:
        self._send(self._chan.send, (op, arg))  # type: ignore[union-attr]
        result = self._wait_result(24 * 3600.0, op)
        self._refresh_store()
        return result

    def _refresh_store(self) -> None:
        """The child changed the store: make the caller's store object read it again."""
        store = self.store
        store._arrays.clear()
        store._readers.clear()
        store._load_meta()

    def _shutdown(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None and self._error is None:
            try:
                self._send(self._chan.send, ("close", None))  # type: ignore[union-attr]
                proc.wait(timeout=60)
            except (WriterError, subprocess.TimeoutExpired):
                pass
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if self._chan is not None:
            self._chan.close()
            self._chan = None
        self._views = []
        self._header = None
        if self._mem is not None:
            self._mem.close()
            self._mem = None
        self._proc = None
        if proc is not None and self._error is None:
            self._refresh_store()


def _describe_exit(proc: subprocess.Popen[bytes]) -> str:
    code = proc.returncode
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"(pid {proc.pid}) was killed by {name}"
    return f"(pid {proc.pid}) exited with status {code}"


# ---------------------------------------------------------------------- the child
def _portable(exc: BaseException) -> BaseException:
    """The exception itself if it survives pickling, else a WriterError that names it."""
    exc.add_note(
        f"(in the episode writer process, pid {os.getpid()}):\n"
        + "".join(traceback.format_exception(exc)).rstrip()
    )
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return WriterError(f"{type(exc).__name__}: {exc}")


class _Priority:
    """The writer process's claim on the CPUs: small while it keeps up, fair when it falls behind.

    While fewer than `high` frames wait (background):

    - its threads may use every CPU this process may use but one, which the control loop then
      always finds free: zarr compresses a shard's chunks on several threads at once, and on a
      2-core machine those bursts otherwise fill both cores just as the loop wakes (measured on
      a quiet machine: p99 of a 100 Hz loop beside the recording 0.8 ms → 0.09 ms);
    - its session, which makes it its own scheduling group under the kernel's autogroups (the
      default on desktop Linux), runs at niceness `nice`: the control loop's process and
      everyone else come first when the CPUs are busy.

    Once `high` frames wait it takes every CPU and niceness 0, its fair share, until the backlog
    is down to `low`: a busy machine costs latency before it costs frames. Changing one's own
    affinity and an autogroup's niceness within 0..19 needs no privilege. Without autogroups the
    threads keep a fixed, milder niceness (a thread cannot lower its niceness again). `cpus`
    given by the caller fixes the affinity instead.
    """

    def __init__(self, nice: int, slots: int, cpus: list[int] | None) -> None:
        self.background = max(0, min(19, int(nice)))
        self.high = max(8, slots // 8)
        self.low = 2
        self.behind = False
        self.catch_ups = 0
        allowed = sorted(os.sched_getaffinity(0))
        self.all_cpus = set(cpus or allowed)
        self.few_cpus = set(cpus or (allowed[:-1] if len(allowed) > 1 else allowed))
        self.group = os.getsid(0) == os.getpid()  # its own session: its own autogroup
        self._set_group(self.background)
        if self.background:
            os.nice(min(self.background, _THREAD_NICE))
        self._set_cpus(self.few_cpus)

    def update(self, backlog: int) -> None:
        if not self.behind and backlog >= self.high:
            self.behind = True
            self.catch_ups += 1
            self._set_group(0)
            self._set_cpus(self.all_cpus)
        elif self.behind and backlog <= self.low:
            self.behind = False
            self._set_group(self.background)
            self._set_cpus(self.few_cpus)

    def _set_group(self, nice: int) -> None:
        if not self.group:
            return
        try:
            with open("/proc/self/autogroup", "w") as f:
                f.write(str(nice))
        except OSError:  # no autogroups here
            self.group = False

    @staticmethod
    def _set_cpus(cpus: set[int]) -> None:
        """Every thread of this process (threads started later inherit from their creator)."""
        try:
            tids = [int(t) for t in os.listdir("/proc/self/task")]
        except OSError:
            tids = [0]
        for tid in tids:
            with contextlib.suppress(OSError):  # a thread that has just ended
                os.sched_setaffinity(tid, cpus)


def _child(sock_fd: int, mem_fd: int, lock_fd: int) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    chan = _Channel(sock_fd)
    disk: _DiskWriter | None = None
    try:
        _, path, slots, sched = chan.recv()
        # before any thread starts (they inherit it)
        priority = _Priority(sched["nice"], slots, sched["cpus"])
        group = zarr.open_group(_PacedLocalStore(path), mode="r+", zarr_format=3)
        store = EpisodeStore(group, path, "a", lock=_InheritedLock(lock_fd))  # type: ignore[arg-type]
        layout = _Layout(store)
        mem = mmap.mmap(mem_fd, layout.size(slots))
        os.close(mem_fd)
        views = layout.views(mem, slots)
        header = np.ndarray((2,), np.int64, buffer=mem, offset=0)  # [taken, newest] sequence
        disk = _DiskWriter(store)
        chan.send(("ready", store.num_frames))
        while True:
            op, *args = chan.recv()
            if op == "f":
                slot, seq = args
                slot_times, arrays = views[slot]
                rel = float(slot_times[0])
                times = {
                    k: float(t)
                    for k, t in zip(layout.obs_keys, slot_times[1:].tolist(), strict=True)
                    if t == t  # NaN: no capture time given
                }
                disk.frame(arrays, rel, times)
                header[0] = seq
                priority.update(int(header[1]) - seq)
            elif op == "save":
                chan.send(("result", disk.save(*args[0])))
            elif op == "discard":
                disk.discard()
                chan.send(("result", None))
            elif op == "close":
                return 0
            else:
                raise WriterError(f"unknown writer operation {op!r}")
    except EOFError:  # the parent is gone: drop the episode in flight and stop
        if disk is not None:
            try:
                disk.discard()
            except Exception as exc:  # the next open for writing cuts it anyway
                log.warning("episode writer: could not drop the unfinished episode: %r", exc)
        return 0
    except BaseException as exc:
        log.error("episode writer process failed: %r", exc)
        with contextlib.suppress(OSError):
            chan.send(("error", _portable(exc)))
        return 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    sys.exit(_child(*(int(a) for a in sys.argv[1:4])))
