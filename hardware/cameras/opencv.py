"""OpenCVCamera: a USB/V4L2 camera, network stream or video file behind the HAL's Camera contract.

A background thread grabs frames continuously into a one-frame slot, so a slow or stuck camera
never blocks the control loop: `read()` waits a bounded time (`timeout_s`) for a frame it has
not returned before and raises DeviceError otherwise; it never hands back a repeat or a frame
older than `max_age_s` (unless `allow_repeat`).

Capture time. OpenCV offers no timestamp that means the same thing on every backend
(CAP_PROP_POS_MSEC is the driver's buffer time on V4L2, the stream position on files and 0 on
some webcams), so the thread stamps each frame with `time.monotonic()` when `grab()` returns:
the moment the driver handed the frame over, on the same clock as robolearn's `WallClock`.
That is later than the exposure by the camera's pipeline latency (exposure, USB transfer,
driver queue; typically 30–100 ms for a UVC webcam); measure it once (film a clock on the
screen) and set `latency_s`, which is subtracted from every capture time.

Sources: a device index (`0`), a device path (`/dev/video2`, or a stable
`/dev/v4l/by-id/...` link), a URL (`rtsp://...`), or a video file. A file replays like a device:
paced at its own frame rate (`realtime`) and, at its end, started again (`loop`).

Reconnection: when grabs fail (camera unplugged, stream dropped, file ended with `loop=False`)
the thread releases the device and reopens it with exponential backoff; meanwhile `read()`
raises DeviceError, and frames flow again once the device is back. `reconnect_attempts=0` makes
a loss final (a file then plays once).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from robolearn.hal import Camera, DeviceError
from robolearn.loop import latency_slice
from robolearn.spec import Feature

log = logging.getLogger(__name__)

# OpenCV capture backends by the name a config uses.
BACKENDS: dict[str, int] = {
    "any": cv2.CAP_ANY,
    "v4l2": cv2.CAP_V4L2,
    "ffmpeg": cv2.CAP_FFMPEG,
    "gstreamer": cv2.CAP_GSTREAMER,
    "dshow": cv2.CAP_DSHOW,
    "msmf": cv2.CAP_MSMF,
    "avfoundation": cv2.CAP_AVFOUNDATION,
}
ROTATIONS: dict[int, int | None] = {
    0: None,
    90: cv2.ROTATE_90_CLOCKWISE,
    180: cv2.ROTATE_180,
    270: cv2.ROTATE_90_COUNTERCLOCKWISE,
}
COLOR_ORDERS = ("rgb", "bgr")
SETUP_HINT = (
    "check the cable, that your user may open video devices (the 'video' group on Linux: "
    "`sudo usermod -aG video $USER`, then log in again) and that no other program holds the "
    "camera; `robolearn find-cameras` lists what can be opened"
)
HINTS = {
    "device": SETUP_HINT,
    "stream": "check the URL, the network and that the stream is running",
    "file": (
        "check that the file exists and is a video OpenCV can decode (a file with loop: false "
        "and reconnect_attempts: 0 plays once)"
    ),
}


class CameraConfigError(DeviceError, ValueError):
    """A camera config that cannot work: bad values, or a camera that delivers something else."""


@dataclass
class OpenCVCameraConfig:
    """One camera. `width`/`height`/`fps`/`fourcc` are requested from a device; a file or stream
    delivers what it holds, and a size other than `width`×`height` is an error (nothing is
    resized silently: the policy was trained on one size).

    The frames `read()` returns are `height`×`width`×3 uint8, turned by `rotation` degrees
    clockwise (90/270 swap height and width) after capture.
    """

    name: str
    source: int | str = 0  # device index, /dev path, URL or video file
    width: int = 640
    height: int = 480
    fps: float | None = None  # request from a device; for a file: replay rate (None: the file's)
    fourcc: str | None = None  # e.g. "MJPG": many USB cameras reach 30 fps at 720p only in MJPG
    backend: str = "any"  # one of BACKENDS
    color_order: str = "rgb"  # of the frames read() returns; "bgr" un-swaps a driver that swaps
    rotation: int = 0  # degrees clockwise: 0, 90, 180, 270
    warmup_frames: int = 5  # grabbed and dropped at connect, while auto-exposure settles
    max_age_s: float = 0.5  # read() never returns a frame grabbed longer ago than this
    timeout_s: float = 0.2  # how long read() waits for a frame it has not returned yet
    latency_s: float = 0.0  # subtracted from capture times (see the module docstring)
    allow_repeat: bool = False  # read() may return the newest frame again (if not too old)
    loop: bool = True  # a file starts again at its end
    realtime: bool = True  # a file is paced at its frame rate, as a device would deliver it
    reconnect_attempts: int | None = None  # reopen attempts after a loss (None: forever)
    reconnect_backoff_s: float = 0.1  # first wait between attempts; doubles up to the max
    reconnect_backoff_max_s: float = 2.0

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> CameraConfigError:
            return CameraConfigError(f"camera {self.name!r}: {key}={getattr(self, key)!r} {why}")

        if isinstance(self.source, str) and self.source.strip().isdigit():
            self.source = int(self.source)  # "0" from a command line or YAML string
        if isinstance(self.source, bool) or not isinstance(self.source, int | str):
            raise bad("source", "is neither a device index, a /dev path, a URL nor a file")
        for key in ("width", "height"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) <= 0:
                raise bad(key, "must be a positive number of pixels")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise bad("fps", "must be a positive number of frames per second (or null)")
        if self.fourcc is not None and len(self.fourcc) != 4:
            raise bad("fourcc", "must be four characters such as 'MJPG' or 'YUYV' (or null)")
        if self.backend not in BACKENDS:
            raise bad("backend", f"is not one of {sorted(BACKENDS)}")
        if self.color_order not in COLOR_ORDERS:
            raise bad("color_order", f"is not one of {COLOR_ORDERS}")
        if self.rotation not in ROTATIONS:
            raise bad("rotation", f"is not one of {sorted(ROTATIONS)} (degrees clockwise)")
        if self.warmup_frames < 0:
            raise bad("warmup_frames", "must be ≥ 0")
        for key in ("max_age_s", "timeout_s", "reconnect_backoff_s", "reconnect_backoff_max_s"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise bad(key, "must be a positive number of seconds")
        if not (math.isfinite(self.latency_s) and self.latency_s >= 0):
            raise bad("latency_s", "must be ≥ 0 seconds")
        if self.reconnect_attempts is not None and self.reconnect_attempts < 0:
            raise bad("reconnect_attempts", "must be ≥ 0 (or null to retry forever)")

    @property
    def kind(self) -> str:
        """'device', 'stream' or 'file': a file is paced and looped, the others deliver live."""
        if isinstance(self.source, int) or self.source.startswith("/dev/"):
            return "device"
        if "://" in self.source:
            return "stream"
        return "file"

    @property
    def shape(self) -> tuple[int, int, int]:
        """The shape of the frames `read()` returns (after rotation)."""
        if self.rotation in (90, 270):
            return (self.width, self.height, 3)
        return (self.height, self.width, 3)


@dataclass
class CameraStats:
    """Counters since `connect()`.

    Every grabbed frame is either read, dropped (replaced by a newer one before anyone read it)
    or still the newest: grabbed = read + dropped + (1 if the newest is unread else 0).
    """

    frames_grabbed: int = 0
    frames_read: int = 0  # distinct frames read() returned
    frames_dropped: int = 0
    reconnects: int = 0  # losses recovered by reopening the source
    loops: int = 0  # times a file started again at its end


@dataclass
class _Frame:
    image: np.ndarray
    grabbed_at: float  # time.monotonic() when grab() returned: what max_age_s measures
    capture_time: float  # grabbed_at - latency_s: what read() reports
    seq: int


@dataclass
class _Link:
    """The open capture and what the thread knows about it; only the capture thread touches it."""

    cap: Any  # cv2.VideoCapture
    fps: float  # the rate a file is paced at (0 for live sources)
    next_due: float = 0.0  # when a paced file's next frame is due (time.monotonic())
    frames: int = 0


class OpenCVCamera(Camera):
    """A camera read through OpenCV; see the module docstring for timing and reconnection.

    Build it from a config (`OpenCVCamera(OpenCVCameraConfig(name="top", source=0))`) or from the
    config's fields (`OpenCVCamera(name="top", source=0)`, as hydra's `_target_` does).
    """

    def __init__(self, config: OpenCVCameraConfig | None = None, /, **fields: Any) -> None:
        if config is None:
            config = OpenCVCameraConfig(**fields)
        elif fields:
            config = replace(config, **fields)
        self.config = config
        self.name = config.name
        self._feature = Feature(config.shape, "uint8", "image")
        self._cond = threading.Condition()
        self._latest: _Frame | None = None
        self._last_read_seq = -1
        self._stats = CameraStats()
        self._state = "not connected"
        self._failure: DeviceError | None = None  # set by the thread when it gives up
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ contract
    @property
    def feature(self) -> Feature:
        return self._feature

    @property
    def is_connected(self) -> bool:
        return self._thread is not None

    @property
    def stats(self) -> CameraStats:
        """A snapshot of the counters."""
        with self._cond:
            return replace(self._stats)

    @property
    def state(self) -> str:
        """What the capture thread is doing: streaming, reconnecting (and why), stopped."""
        with self._cond:
            return self._state

    def connect(self) -> None:
        """Open the source, drop the warm-up frames and check the first frame's size and type.

        Raises DeviceError when the source cannot be opened or delivers nothing, and
        CameraConfigError (a DeviceError) when its frames do not match the config.
        """
        if self.is_connected:
            return
        cfg = self.config
        link = self._open()
        try:
            for _ in range(cfg.warmup_frames):
                if not link.cap.grab():
                    raise DeviceError(
                        f"camera {self.name!r} ({self._describe()}) opened but delivered no "
                        f"frame during its {cfg.warmup_frames} warm-up frames; {HINTS[cfg.kind]}"
                    )
            first = self._grab(link)
            if first is None:
                raise DeviceError(
                    f"camera {self.name!r} ({self._describe()}) opened but delivered no frame; "
                    f"{HINTS[cfg.kind]}"
                )
        except BaseException:
            link.cap.release()
            raise
        with self._cond:
            self._stats = CameraStats(frames_grabbed=1)
            self._latest = _Frame(first[0], first[1], first[1] - cfg.latency_s, seq=0)
            self._last_read_seq = -1
            self._failure = None
            self._state = "streaming"
        # a stop event per connection: a thread left blocked in a driver by an earlier
        # disconnect() must not start publishing again when the camera is reconnected
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(link, self._stop), name=f"camera-{self.name}", daemon=True
        )
        self._thread.start()
        log.info("camera %r connected: %s", self.name, self._describe())

    def disconnect(self) -> None:
        """Stop the capture thread and release the device."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        with self._cond:
            self._cond.notify_all()  # readers waiting for a frame give up now
        # A grab blocks until the driver delivers or times out (V4L2: 10 s); wait that long
        # rather than release the device under a thread that is still inside it.
        thread.join(timeout=12.0)
        if thread.is_alive():
            log.warning(
                "camera %r: the capture thread is still blocked in the driver; leaving it behind "
                "(it releases the device when the driver returns)",
                self.name,
            )
        self._thread = None
        with self._cond:
            self._state = "not connected"

    def __enter__(self) -> OpenCVCamera:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    def read(self) -> tuple[np.ndarray, float]:
        """The newest frame (H×W×3 uint8) and its capture time (time.monotonic() seconds).

        Waits at most `timeout_s` for a frame that has not been returned before and is younger
        than `max_age_s`; raises DeviceError naming the camera otherwise.
        """
        cfg = self.config
        deadline = time.monotonic() + cfg.timeout_s
        with self._cond:
            while True:
                if self._thread is None or self._stop.is_set():
                    raise DeviceError(
                        f"camera {self.name!r} is not connected; call connect() first"
                    )
                if self._failure is not None:
                    failure = self._failure  # a fresh exception: re-raising one grows its traceback
                    raise type(failure)(str(failure)) from failure
                now = time.monotonic()
                latest = self._latest
                if (
                    latest is not None
                    and (latest.seq != self._last_read_seq or cfg.allow_repeat)
                    and now - latest.grabbed_at <= cfg.max_age_s
                ):
                    if latest.seq != self._last_read_seq:
                        self._stats.frames_read += 1
                        self._last_read_seq = latest.seq
                    return latest.image, latest.capture_time
                left = deadline - now
                if left <= 0:
                    raise DeviceError(self._no_frame_message(latest, now))
                self._cond.wait(left)

    def _no_frame_message(self, latest: _Frame | None, now: float) -> str:
        cfg = self.config
        if latest is None:
            age = "no frame yet"
        else:
            age = f"the newest frame is {now - latest.grabbed_at:.2f} s old"
        return (
            f"camera {self.name!r} ({self._describe()}) delivered no new frame within "
            f"timeout_s={cfg.timeout_s:g} s ({age}; max_age_s={cfg.max_age_s:g}; capture "
            f"state: {self._state}). If it is merely slow, raise timeout_s / max_age_s; "
            f"otherwise {HINTS[cfg.kind]}"
        )

    # ------------------------------------------------------------------ opening
    def _describe(self) -> str:
        cfg = self.config
        return f"{cfg.kind} {cfg.source!r}"

    def _open(self) -> _Link:
        """Open and configure the source, or raise DeviceError saying why it failed."""
        cfg = self.config
        if cfg.kind == "file" and not Path(cfg.source).exists():
            raise DeviceError(
                f"camera {self.name!r}: video file {str(cfg.source)!r} does not exist; "
                "fix the camera's `source`"
            )
        if cfg.kind == "device" and isinstance(cfg.source, str) and not os.path.exists(cfg.source):
            raise DeviceError(
                f"camera {self.name!r}: there is no device {cfg.source!r}; {HINTS[cfg.kind]}"
            )
        if (
            cfg.kind == "device"
            and isinstance(cfg.source, str)
            and not os.access(cfg.source, os.R_OK | os.W_OK)
        ):
            raise DeviceError(
                f"camera {self.name!r}: no permission to open {cfg.source!r}; add your user to "
                "the 'video' group (`sudo usermod -aG video $USER`, then log in again)"
            )
        cap = cv2.VideoCapture(cfg.source, BACKENDS[cfg.backend])
        if not cap.isOpened():
            cap.release()
            raise DeviceError(
                f"camera {self.name!r}: OpenCV cannot open {self._describe()}; {HINTS[cfg.kind]}"
            )
        if cfg.kind == "device":
            # fourcc first: on V4L2 the pixel format decides which sizes and rates exist
            if cfg.fourcc is not None:
                cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*cfg.fourcc))
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
            if cfg.fps is not None:
                cap.set(cv2.CAP_PROP_FPS, cfg.fps)
            got_fps = cap.get(cv2.CAP_PROP_FPS)
            if cfg.fps is not None and got_fps > 0 and abs(got_fps - cfg.fps) > 0.5:
                log.warning(
                    "camera %r: asked for %g fps, the driver runs at %g fps",
                    self.name,
                    cfg.fps,
                    got_fps,
                )
            got_fourcc = fourcc_name(cap.get(cv2.CAP_PROP_FOURCC))
            if cfg.fourcc is not None and got_fourcc and got_fourcc != cfg.fourcc:
                log.warning(
                    "camera %r: asked for fourcc %s, the driver uses %s",
                    self.name,
                    cfg.fourcc,
                    got_fourcc,
                )
        fps = 0.0
        if cfg.kind == "file" and cfg.realtime:
            fps = cfg.fps or cap.get(cv2.CAP_PROP_FPS)
            if not (fps > 0 and math.isfinite(fps)):
                cap.release()
                raise CameraConfigError(
                    f"camera {self.name!r}: video file {cfg.source!r} states no frame rate; "
                    "set the camera's `fps` to replay it in real time (or realtime: false)"
                )
        return _Link(cap, fps, next_due=time.monotonic())

    # ------------------------------------------------------------------ capture
    def _grab(self, link: _Link) -> tuple[np.ndarray, float] | None:
        """One frame as read() returns it and the time grab() returned; None when grabs fail.

        Raises CameraConfigError when the frame does not match the config.
        """
        if not link.cap.grab():
            return None
        grabbed_at = time.monotonic()
        ok, raw = link.cap.retrieve()
        if not ok or raw is None:
            return None
        link.frames += 1
        return self._convert(raw), grabbed_at

    def _convert(self, raw: np.ndarray) -> np.ndarray:
        cfg = self.config
        if raw.dtype != np.uint8:
            raise CameraConfigError(
                f"camera {self.name!r} delivers {raw.dtype} frames; robolearn cameras deliver "
                "uint8 colour images (a depth or 16-bit camera needs its own driver)"
            )
        if raw.ndim == 2 or raw.shape[2] == 1:
            raw = cv2.cvtColor(raw, cv2.COLOR_GRAY2BGR)
        elif raw.shape[2] == 4:
            raw = cv2.cvtColor(raw, cv2.COLOR_BGRA2BGR)
        h, w = raw.shape[:2]
        if (h, w) != (cfg.height, cfg.width):
            raise CameraConfigError(
                f"camera {self.name!r} ({self._describe()}) delivers {w}×{h} frames "
                f"(width×height) but its config asks for {cfg.width}×{cfg.height}; set "
                f"`width: {w}` and `height: {h}` in the camera's config, or pick a mode the "
                "camera supports (`robolearn find-cameras` lists what each camera delivers)"
            )
        # OpenCV delivers BGR; a driver that swaps channels already delivers RGB
        frame = cv2.cvtColor(raw, cv2.COLOR_BGR2RGB) if cfg.color_order == "rgb" else raw
        rotate = ROTATIONS[cfg.rotation]
        if rotate is not None:
            frame = cv2.rotate(frame, rotate)
        return np.ascontiguousarray(frame)

    def _set_state(self, state: str) -> None:
        with self._cond:
            self._state = state

    def _run(self, link: _Link, stop: threading.Event) -> None:
        # a driver thread is latency-bound like the control loop (see robolearn.testing.synthetic)
        with latency_slice(1e-4):
            try:
                self._capture(link, stop)
            except Exception as e:  # keep readers informed whatever the driver raised
                failure = e if isinstance(e, DeviceError) else None
                if failure is None:
                    log.exception("camera %r: the capture thread failed", self.name)
                    failure = DeviceError(f"camera {self.name!r}: capture failed: {e!r}")
                else:
                    log.error("%s", failure)
                with self._cond:
                    if not stop.is_set():
                        self._failure = failure
                        self._state = "stopped after an error"
                        self._cond.notify_all()

    def _capture(self, first: _Link, stop: threading.Event) -> None:
        cfg = self.config
        link: _Link | None = first
        link.next_due += 1.0 / link.fps if link.fps else 0.0  # the first frame came at connect
        attempt = 0
        seq = 0
        try:
            while not stop.is_set():
                if link is None:
                    link = self._reopen(attempt, stop)
                    if link is None:
                        attempt += 1
                        continue
                    attempt = 0
                    with self._cond:
                        self._stats.reconnects += 1
                        self._state = "streaming"
                    log.info("camera %r is back (%s)", self.name, self._describe())
                if link.fps and self._pace(link, stop):
                    break
                got = self._grab(link)
                if got is None:
                    link.cap.release()
                    link = self._after_end(link)
                    continue
                image, grabbed_at = got
                seq += 1
                with self._cond:
                    if stop.is_set():  # disconnected while this grab was in the driver
                        break
                    if self._latest is not None and self._latest.seq != self._last_read_seq:
                        self._stats.frames_dropped += 1
                    self._latest = _Frame(image, grabbed_at, grabbed_at - cfg.latency_s, seq)
                    self._stats.frames_grabbed += 1
                    self._cond.notify_all()
        finally:
            if link is not None:
                link.cap.release()

    def _pace(self, link: _Link, stop: threading.Event) -> bool:
        """Wait until a file's next frame is due; True when asked to stop meanwhile."""
        now = time.monotonic()
        if now - link.next_due > 1.0 / link.fps:
            link.next_due = now  # fell behind (a stall): go on from now rather than burst
        stopped = stop.wait(max(0.0, link.next_due - now))
        link.next_due += 1.0 / link.fps
        return stopped

    def _after_end(self, link: _Link) -> _Link | None:
        """Grabs failed: start a looping file again at once, or mark the source lost."""
        cfg = self.config
        if cfg.kind == "file" and cfg.loop and link.frames > 0:
            try:
                again = self._open()
            except DeviceError as e:
                log.warning("camera %r: the file cannot be opened again: %s", self.name, e)
            else:
                again.next_due = link.next_due  # keep the pace across the seam
                with self._cond:
                    self._stats.loops += 1
                return again
        log.warning("camera %r lost (%s); reconnecting", self.name, self._describe())
        self._set_state("lost, reconnecting")
        return None

    def _reopen(self, attempt: int, stop: threading.Event) -> _Link | None:
        """One reopen attempt after `attempt` failed ones (waiting the backoff first)."""
        cfg = self.config
        if cfg.reconnect_attempts is not None and attempt >= cfg.reconnect_attempts:
            raise DeviceError(
                f"camera {self.name!r} ({self._describe()}) was lost and did not come back after "
                f"{attempt} reconnect attempt(s) (reconnect_attempts={cfg.reconnect_attempts}); "
                f"{HINTS[cfg.kind]}"
            )
        if attempt > 0:  # the first attempt is immediate: a file that ended is there at once
            backoff = min(cfg.reconnect_backoff_s * 2 ** (attempt - 1), cfg.reconnect_backoff_max_s)
            if stop.wait(backoff):
                return None
        try:
            link = self._open()
        except DeviceError as e:
            reason = str(e).split(";")[0]  # the hint is in read()'s message already
            self._set_state(f"lost, reconnecting (attempt {attempt + 1} failed: {reason})")
            return None
        if cfg.kind == "device":  # exposure starts over on a replugged camera
            for _ in range(cfg.warmup_frames):
                link.cap.grab()
        link.next_due = time.monotonic()
        return link


def fourcc_name(code: float) -> str:
    """The four characters of an OpenCV FOURCC property value ('' when the backend gives none)."""
    n = int(code)
    if n <= 0:
        return ""
    chars = "".join(chr((n >> (8 * i)) & 0xFF) for i in range(4))
    return chars if chars.isprintable() else ""
