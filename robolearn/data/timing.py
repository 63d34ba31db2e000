"""Timing analysis of recorded episodes: the real achieved rate, gaps and dropped frames."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GAP_FACTOR = 1.5


@dataclass(frozen=True)
class EpisodeTiming:
    """Measured timing of one episode against its nominal rate."""

    frames: int
    duration: float
    real_fps: float
    period_mean_ms: float
    period_std_ms: float
    period_max_ms: float
    gaps: int
    dropped: int

    def as_row(self) -> dict[str, float | int]:
        return {
            "frames": self.frames,
            "duration_s": round(self.duration, 3),
            "real_fps": round(self.real_fps, 2),
            "period_std_ms": round(self.period_std_ms, 2),
            "period_max_ms": round(self.period_max_ms, 2),
            "gaps": self.gaps,
            "dropped": self.dropped,
        }


def analyse(timestamps: np.ndarray, fps: float) -> EpisodeTiming:
    """Timing of one episode from its measured frame times (seconds).

    A gap is a period longer than 1.5 nominal periods; it is counted as round(period × fps) − 1
    dropped frames, the frames a loop at the nominal rate would have produced meanwhile.
    """
    t = np.asarray(timestamps, dtype=np.float64)
    n = int(t.size)
    if n < 2:
        return EpisodeTiming(n, 0.0, float("nan"), float("nan"), float("nan"), float("nan"), 0, 0)
    dt = np.diff(t)
    duration = float(t[-1] - t[0])
    real = (n - 1) / duration if duration > 0 else float("inf")
    gap = dt > GAP_FACTOR / fps
    dropped = int(np.maximum(np.round(dt[gap] * fps) - 1, 1).sum()) if gap.any() else 0
    return EpisodeTiming(
        frames=n,
        duration=duration,
        real_fps=float(real),
        period_mean_ms=float(dt.mean() * 1e3),
        period_std_ms=float(dt.std() * 1e3),
        period_max_ms=float(dt.max() * 1e3),
        gaps=int(gap.sum()),
        dropped=dropped,
    )


def stale_frames(capture_times: np.ndarray) -> int:
    """Frames whose capture time did not advance: a camera that handed out the same frame again."""
    ct = np.asarray(capture_times, dtype=np.float64)
    return int((np.diff(ct) <= 0).sum()) if ct.size > 1 else 0
