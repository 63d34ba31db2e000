"""`robolearn find-cameras`: list the cameras OpenCV can open, with their mode, and save test frames."""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from hardware.cameras.opencv import BACKENDS, fourcc_name

GROUP_HINT = (
    "On Linux a camera is a /dev/video* device that your user needs permission to open: check "
    "that `groups` lists 'video' (if not: `sudo usermod -aG video $USER`, then log in again), "
    "that `ls -l /dev/video*` shows the devices (`v4l2-ctl --list-devices` names them) and, in a "
    "container, that the device was passed in (`docker run --device /dev/video0 ...`)."
)


@dataclass
class CameraProbe:
    """What one source delivered when opened with OpenCV's defaults."""

    source: int | str
    opened: bool
    width: int = 0
    height: int = 0
    fps: float = 0.0
    fourcc: str = ""
    backend: str = ""
    error: str = ""
    frame_bgr: np.ndarray | None = None  # one frame as OpenCV delivers it (BGR)

    def describe(self) -> str:
        if not self.opened:
            return f"{self.source}: {self.error}"
        fps = f"{self.fps:g} fps" if self.fps > 0 else "fps unknown"
        fourcc = f", {self.fourcc}" if self.fourcc else ""
        return f"{self.source}: {self.width}×{self.height} @ {fps}{fourcc}, backend {self.backend}"


def video_devices() -> list[str]:
    """The /dev/video* nodes of this machine, in numeric order."""

    def number(path: str) -> int:
        m = re.search(r"(\d+)$", path)
        return int(m.group(1)) if m else -1

    return sorted(glob.glob("/dev/video*"), key=number)


@contextlib.contextmanager
def quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's warnings for sources that do not exist (probing indices makes many)."""
    old = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(old)


def probe(source: int | str, backend: str = "any") -> CameraProbe:
    """Open `source`, read its mode and one frame, and release it."""
    if isinstance(source, str) and "://" not in source:
        if not os.path.exists(source):
            return CameraProbe(source, False, error="no such device or file")
        if source.startswith("/dev/") and not os.access(source, os.R_OK | os.W_OK):
            return CameraProbe(source, False, error="no permission (is your user in 'video'?)")
    cap = cv2.VideoCapture(source, BACKENDS[backend])
    try:
        if not cap.isOpened():
            # UVC cameras have a second node for metadata that no program can capture from
            return CameraProbe(source, False, error="cannot open (busy, or not a capture node)")
        found = CameraProbe(
            source,
            True,
            width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            fps=float(cap.get(cv2.CAP_PROP_FPS)),
            fourcc=fourcc_name(cap.get(cv2.CAP_PROP_FOURCC)),
            backend=cap.getBackendName(),
        )
        ok, frame = cap.read()
        if not ok or frame is None:
            found.error = "opened but delivered no frame"
        else:
            found.frame_bgr = frame
            found.height, found.width = frame.shape[:2]  # what it delivers, whatever it claims
        return found
    finally:
        cap.release()


def _png_name(source: int | str) -> str:
    text = str(source).strip("/") if isinstance(source, str) else f"index{source}"
    return "camera_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", text) + ".png"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robolearn find-cameras",
        description="List the cameras OpenCV can open (/dev/video* devices, else device indices) "
        "with their resolution, frame rate and backend.",
    )
    parser.add_argument(
        "--source",
        action="append",
        default=None,
        help="probe this source instead of searching (an index, /dev path, URL or video file; "
        "repeatable)",
    )
    parser.add_argument(
        "--max-index",
        type=int,
        default=10,
        help="device indices to try where there are no /dev/video* nodes (default 10)",
    )
    parser.add_argument(
        "--backend", choices=sorted(BACKENDS), default="any", help="OpenCV backend to open with"
    )
    parser.add_argument("--save", type=Path, help="save one test frame per camera as PNG here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    explicit = args.source is not None
    sources: list[int | str]
    if explicit:
        sources = [int(s) if s.isdigit() else s for s in args.source]
    else:
        nodes = video_devices()
        # on Linux index i is /dev/video<i>: try indices only where there are no nodes (other OSes)
        sources = list(nodes) if nodes else list(range(args.max_index))
    with quiet_opencv():
        probes = [probe(s, args.backend) for s in sources]
    found = [p for p in probes if p.opened]
    if args.save is not None and found:
        args.save.mkdir(parents=True, exist_ok=True)
    for p in probes:
        if not p.opened and not explicit and isinstance(p.source, int):
            continue  # an index with nothing behind it is not worth a line
        line = p.describe()
        if p.opened and p.error:
            line += f" ({p.error})"
        if args.save is not None and p.frame_bgr is not None:
            path = args.save / _png_name(p.source)
            cv2.imwrite(str(path), p.frame_bgr)
            line += f"; saved {path}"
        print(line)
    if not found:
        searched = (
            ", ".join(map(str, sources))
            if explicit
            else (
                "/dev/video* nodes: " + ", ".join(map(str, sources))
                if sources and isinstance(sources[0], str)
                else f"no /dev/video* nodes, device indices 0..{args.max_index - 1}"
            )
        )
        print(f"No cameras found (searched {searched}).")
        print(GROUP_HINT)
        return 1 if explicit else 0
    print(
        "\nUse one in a robot config (configs/camera/opencv.yaml): source, width and height as "
        "listed above."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
