"""Export an episode's camera images from an episode store as an mp4 video for viewing."""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from robolearn.data.store import EpisodeStore
from robolearn.errors import SpecError, StoreError

log = logging.getLogger(__name__)

BLOCK_FRAMES = 64
FOURCC = "mp4v"


def export_video(
    store: EpisodeStore,
    episode: int,
    out_path: str | os.PathLike[str],
    keys: list[str] | None = None,
    fps: float | None = None,
    label: bool = True,
) -> Path:
    """Write the camera images of `episode` to an mp4 at `out_path` and return its path.

    `keys` picks the image keys (default: every image key, in spec order); several cameras are
    tiled left to right, each resized to the tallest one's height with its aspect kept. `fps`
    is the playback rate; by default the episode's measured rate, so the video plays in real
    time even when the recorder ran slower than its nominal rate. `label` draws the frame
    index and time in the top-left corner.
    """
    info = store.episode(episode)
    keys = _image_keys(store, keys)
    start, end = info.start, info.end
    n = info.length
    timestamps = store.read("timestamp", start, end)
    rate = _playback_rate(store, timestamps) if fps is None else _check_fps(fps)

    shapes = [store.spec[k].shape for k in keys]
    height = max(s[0] for s in shapes)
    widths = [max(1, round(s[1] * height / s[0])) for s in shapes]
    # yuv420 encoders halve the chroma resolution, so odd sizes get cropped silently;
    # pad to even instead so no image content is lost.
    out_w = _round_up_even(sum(widths))
    out_h = _round_up_even(height)

    out_path = Path(out_path)
    if not out_path.suffix:
        out_path = out_path.with_suffix(".mp4")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with _mp4(out_path, rate, (out_w, out_h), n) as writer:
        canvas = np.zeros((out_h, out_w, 3), dtype=np.uint8)
        for block_start in range(start, end, BLOCK_FRAMES):
            block_end = min(block_start + BLOCK_FRAMES, end)
            blocks = [_to_bgr(store.read(k, block_start, block_end)) for k in keys]
            for j in range(block_end - block_start):
                x = 0
                for block, w in zip(blocks, widths, strict=True):
                    canvas[:height, x : x + w] = _fit(block[j], height, w)
                    x += w
                frame = block_start - start + j
                if label:
                    _draw_label(canvas, f"{frame}  {timestamps[frame]:.2f}s")
                writer.write(canvas)
    log.info(
        "wrote %s: episode %d, %d frames of %s at %.2f fps (%dx%d)",
        out_path,
        info.index,
        n,
        "+".join(keys),
        rate,
        out_w,
        out_h,
    )
    return out_path


@contextlib.contextmanager
def _mp4(
    out_path: Path, fps: float, size: tuple[int, int], frames: int
) -> Iterator[cv2.VideoWriter]:
    """An mp4 writer for `frames` frames of `size` (width, height). It writes beside the target
    and renames at the end, so a failed export never leaves a truncated video under the real
    name (the temporary name keeps the suffix: OpenCV chooses the container from it)."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = out_path.with_name(f".{out_path.stem}.partial{out_path.suffix}")
    writer = cv2.VideoWriter(str(tmp_path), cv2.VideoWriter.fourcc(*FOURCC), fps, size, True)
    if not writer.isOpened():
        raise OSError(
            f"OpenCV could not open {tmp_path} for writing with codec {FOURCC!r}; check that "
            "the folder is writable and the file name ends in .mp4"
        )
    try:
        yield writer
    except BaseException:
        writer.release()
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise
    writer.release()
    _check_readable(tmp_path, frames)
    tmp_path.replace(out_path)


def write_mp4(
    frames: Sequence[np.ndarray],
    out_path: str | os.PathLike[str],
    fps: float,
    title: str | None = None,
) -> Path:
    """Write RGB uint8 frames (H×W×3, all one size) to an mp4; `title` is drawn on every frame."""
    if not frames:
        raise ValueError("no frames to write")
    h, w = frames[0].shape[:2]
    out_h, out_w = _round_up_even(h), _round_up_even(w)
    out_path = Path(out_path).with_suffix(".mp4")
    canvas = np.zeros((out_h, out_w, 3), dtype=np.uint8)
    with _mp4(out_path, _check_fps(fps), (out_w, out_h), len(frames)) as writer:
        for i, frame in enumerate(frames):
            if frame.shape[:2] != (h, w):
                raise ValueError(f"frame {i} is {frame.shape[:2]}, the first was {(h, w)}")
            canvas[:h, :w] = _to_bgr(frame[None])[0]
            if title:
                _draw_label(canvas, f"{title}  t={i / fps:.1f}s")
            writer.write(canvas)
    return out_path


def _image_keys(store: EpisodeStore, keys: Sequence[str] | None) -> list[str]:
    available = store.spec.image_keys
    if not available:
        raise StoreError(
            f"{store.path} has no image keys (its keys are {list(store.spec)}), so there is no "
            "video to export; plot state and action with robolearn.data.plot.plot_episode"
        )
    if keys is None:
        return available
    keys = list(keys)
    if not keys:
        raise SpecError(f"keys is empty; pass some of the image keys {available} or None for all")
    for key in keys:
        if key not in store.spec:
            raise SpecError(f"no key {key!r} in {store.path}; its image keys are {available}")
        if store.spec[key].kind != "image":
            raise SpecError(
                f"{key!r} is a {store.spec[key].kind} key, not an image; "
                f"the image keys are {available}"
            )
    return keys


def _check_fps(fps: float) -> float:
    fps = float(fps)
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps}")
    return fps


def _playback_rate(store: EpisodeStore, timestamps: np.ndarray) -> float:
    """The episode's measured frame rate, or the store's nominal rate when it has no duration."""
    if len(timestamps) >= 2:
        duration = float(timestamps[-1] - timestamps[0])
        if math.isfinite(duration) and duration > 0:
            return (len(timestamps) - 1) / duration
    return store.fps


def _round_up_even(n: int) -> int:
    return n + (n % 2)


def _to_bgr(block: np.ndarray) -> np.ndarray:
    """A block of uint8 images (N×H×W×C, C in 1, 3, 4, RGB order) as N×H×W×3 BGR."""
    channels = block.shape[-1]
    if channels == 1:
        return np.repeat(block, 3, axis=-1)
    if channels == 3:
        return np.ascontiguousarray(block[..., ::-1])
    if channels == 4:
        # Alpha is dropped: a video has no transparency, and compositing over a colour
        # would change pixel values a viewer may want to compare against the data.
        return np.ascontiguousarray(block[..., 2::-1])
    raise SpecError(f"images have 1, 3 or 4 channels, got {channels}")


def _fit(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    # INTER_AREA averages when shrinking (no aliasing); INTER_LINEAR is smoother for enlarging.
    shrink = image.shape[0] > height
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)


def _draw_label(canvas: np.ndarray, text: str) -> None:
    height = canvas.shape[0]
    # About 3% of the frame height: readable at a glance without covering the scene.
    scale = max(0.4, height / 600)
    thickness = 1 if scale < 0.8 else 2
    (_, text_h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    origin = (4, 4 + text_h)
    # A dark outline under white text keeps it legible on both bright and dark images.
    for color, width in (((0, 0, 0), thickness + 2), ((255, 255, 255), thickness)):
        cv2.putText(
            canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, color, width, cv2.LINE_AA
        )


def _check_readable(path: Path, frames: int) -> None:
    """Fail now, not when someone opens the video, if OpenCV cannot read back what it wrote."""
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            raise OSError(f"the video written to {path} cannot be read back by OpenCV")
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()
    if count != frames:
        # The container's frame count is metadata; some builds report it approximately.
        log.warning("%s reports %d frames, %d were written", path, count, frames)
