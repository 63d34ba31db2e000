"""Plot an episode's state and action signals, and its frame timing, to PNG files for review."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Figure is used directly (not pyplot) so plotting never touches matplotlib's global backend
# or figure registry: safe in servers, threads and headless machines.
from matplotlib.figure import Figure

from robolearn.data.store import EpisodeInfo, EpisodeStore

# One definition of a gap, shared with the timing report, so plot and report agree.
from robolearn.data.timing import GAP_FACTOR
from robolearn.errors import SpecError, StoreError

log = logging.getLogger(__name__)

DPI = 100
FIG_WIDTH_IN = 10.0
ROW_HEIGHT_IN = 2.2
TITLE_HEIGHT_IN = 0.6
TIMING_HEIGHT_IN = 3.6
GAP_COLOR = "tab:red"
LEGEND_ROWS = 10
TITLE_TASK_CHARS = 80


def plot_episode(
    store: EpisodeStore,
    episode: int,
    out_path: str | os.PathLike[str],
    keys: list[str] | None = None,
) -> Path:
    """Plot the state and action keys of `episode` against measured time; write a PNG.

    One subplot per key (default: every state key, then every action key, in spec order), one
    line per dimension labelled with the feature's dimension names. Action limits in the spec
    are drawn as dashed lines in the colour of their dimension.
    """
    info = store.episode(episode)
    keys = _plot_keys(store, keys)
    data = store.read_episode(info.index, keys)
    t = data["timestamp"]

    height = TITLE_HEIGHT_IN + ROW_HEIGHT_IN * len(keys)
    fig = Figure(figsize=(FIG_WIDTH_IN, height), dpi=DPI, layout="constrained")
    axes = fig.subplots(len(keys), 1, sharex=True, squeeze=False)[:, 0]
    # A single frame would draw no line segment; markers make it visible.
    marker = "." if len(t) < 2 else None
    for ax, key in zip(axes, keys, strict=True):
        feature = store.spec[key]
        values = data[key].reshape(len(t), -1).astype(np.float64)
        names = feature.dim_names()
        for d in range(values.shape[1]):
            label = _legend_label(names[d])
            (line,) = ax.plot(t, values[:, d], lw=1.0, marker=marker, label=label)
            for limit in (feature.low, feature.high):
                # Infinite limits mean "unbounded" and would wreck the y scale.
                if limit is not None and math.isfinite(limit[d]):
                    ax.axhline(limit[d], color=line.get_color(), ls="--", lw=0.8, alpha=0.7)
        ax.set_title(f"{key} ({feature.kind})", fontsize=9, loc="left")
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=8)
        n_dims = values.shape[1]
        ax.legend(
            loc="upper left",
            bbox_to_anchor=(1.0, 1.0),
            fontsize=7,
            ncol=max(1, math.ceil(n_dims / LEGEND_ROWS)),
            frameon=False,
            handlelength=1.2,
            borderaxespad=0.2,
        )
    axes[-1].set_xlabel("time since episode start (s, measured)", fontsize=8)
    fig.suptitle(_title(info, t), fontsize=10)
    return _save(fig, out_path, f"episode {info.index} ({', '.join(keys)})")


def find_gaps(timestamps: np.ndarray, fps: float, factor: float = GAP_FACTOR) -> np.ndarray:
    """Indices i of the frames that came more than `factor` nominal periods after frame i-1."""
    periods = np.diff(np.asarray(timestamps, dtype=np.float64))
    return np.flatnonzero(periods > factor / fps) + 1


def plot_timing(
    store: EpisodeStore,
    episode: int,
    out_path: str | os.PathLike[str],
) -> Path:
    """Plot the measured frame period of `episode` against the nominal one; write a PNG.

    Periods longer than 1.5 nominal periods (dropped frames, stalls) are marked in red, so
    a glance shows whether the recorder kept up.
    """
    info = store.episode(episode)
    t = store.read("timestamp", info.start, info.end)
    nominal_ms = 1000.0 / store.fps
    periods_ms = np.diff(t) * 1000.0
    gaps = find_gaps(t, store.fps)

    fig = Figure(figsize=(FIG_WIDTH_IN, TIMING_HEIGHT_IN), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    # Each period is drawn at the time of the frame that ends it, so a gap sits where the
    # late frame arrived.
    ax.plot(t[1:], periods_ms, lw=1.0, color="tab:blue", label="measured period")
    ax.axhline(nominal_ms, color="black", ls="--", lw=0.8, label=f"nominal {nominal_ms:.1f} ms")
    ax.axhline(
        GAP_FACTOR * nominal_ms,
        color="gray",
        ls=":",
        lw=0.8,
        label=f"gap threshold ({GAP_FACTOR:g}× nominal)",
    )
    if len(gaps):
        ax.scatter(
            t[gaps],
            periods_ms[gaps - 1],
            s=25,
            color=GAP_COLOR,
            zorder=3,
            label=_count(len(gaps), "gap"),
        )
        for i in gaps:
            ax.axvspan(t[i - 1], t[i], color=GAP_COLOR, alpha=0.12, lw=0)
    if len(t) < 2:
        ax.text(0.5, 0.5, "single frame: no periods", ha="center", transform=ax.transAxes)
    ax.set_xlabel("time since episode start (s, measured)", fontsize=8)
    ax.set_ylabel("frame period (ms)", fontsize=8)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=7, loc="upper left", frameon=False)
    if len(periods_ms):
        rate = (len(t) - 1) / (t[-1] - t[0]) if t[-1] > t[0] else float("nan")
        summary = (
            f"mean rate {rate:.1f} Hz (nominal {store.fps:g}), "
            f"max period {periods_ms.max():.1f} ms, {_count(len(gaps), 'gap')}"
        )
    else:
        summary = "single frame"
    fig.suptitle(f"episode {info.index} frame timing: {summary}", fontsize=10)
    if len(gaps):
        log.info(
            "episode %d: %s longer than %.1f ms, at frames %s",
            info.index,
            _count(len(gaps), "gap"),
            GAP_FACTOR * nominal_ms,
            gaps[:10].tolist(),
        )
    return _save(fig, out_path, f"timing of episode {info.index}")


def _plot_keys(store: EpisodeStore, keys: Sequence[str] | None) -> list[str]:
    available = store.spec.keys_of("state", "action")
    if not available:
        raise StoreError(
            f"{store.path} has no state or action keys (only {list(store.spec)}); nothing to "
            "plot, export the cameras with robolearn.data.video.export_video"
        )
    if keys is None:
        return available
    keys = list(keys)
    if not keys:
        raise SpecError(f"keys is empty; pass some of {available} or None for all")
    for key in keys:
        if key not in store.spec:
            raise SpecError(f"no key {key!r} in {store.path}; the plottable keys are {available}")
        if store.spec[key].kind == "image":
            raise SpecError(
                f"{key!r} is an image; plot state or action keys ({available}), "
                "or export images with robolearn.data.video.export_video"
            )
    return keys


def _title(info: EpisodeInfo, t: np.ndarray) -> str:
    success = {True: "success", False: "failure", None: "outcome unknown"}[info.success]
    task = (
        info.task if len(info.task) <= TITLE_TASK_CHARS else info.task[: TITLE_TASK_CHARS - 1] + "…"
    )
    task = _plain_text(task) or "(no task)"
    duration = float(t[-1] - t[0]) if len(t) else 0.0
    return f"episode {info.index}: {task} | {success} | {info.length} frames, {duration:.2f} s"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _plain_text(text: str) -> str:
    """Text shown as written: a pair of '$' would otherwise start matplotlib math mode."""
    return text.replace("$", r"\$")


def _legend_label(name: str) -> str:
    # matplotlib leaves labels starting with '_' out of legends; a leading space keeps them in.
    return _plain_text(" " + name if name.startswith("_") else name)


def _save(fig: Figure, out_path: str | os.PathLike[str], what: str) -> Path:
    out_path = Path(out_path)
    if not out_path.suffix:
        out_path = out_path.with_suffix(".png")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # format= pins PNG whatever the suffix, since callers and tests rely on the format.
    fig.savefig(out_path, format="png", dpi=DPI)
    log.info("wrote %s: %s", out_path, what)
    return out_path
