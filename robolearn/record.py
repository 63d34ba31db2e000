"""The recorder: teleoperated (or scripted) episodes from any HAL robot into an episode store.

Episode flow, repeated until `num_episodes` are saved or the operator quits:

1. reset: a simulated robot is reset to the episode's seed; a real one gets `reset_time_s` of
   free teleoperation (not recorded) to put the scene back, ended early by the start key;
2. record: the control loop runs at `fps` and every tick (observation with its capture times +
   the action as sent, in every representation) goes to the `EpisodeWriter`;
3. the episode ends on the save / discard / re-record key, when the teleoperator says so (a
   scripted expert that has finished), or after `episode_time_s`; it is then saved (with the
   loop's timing statistics in its metadata) or discarded, as asked.

Ctrl-C or SIGTERM ends the recording at the next tick boundary: committed episodes stay, the
episode in flight is discarded (`on_interrupt="save"` keeps it), the store is closed cleanly
and the robot is asked to hold still. A second Ctrl-C stops at once (the store stays consistent:
that is the writer's guarantee). A camera that stops delivering frames discards the episode and
stops with a message naming the camera.

Frames go to the store through a `ProcessEpisodeWriter` (compression and disk writes in a child
process, frames through shared memory), so recording never holds the control loop's GIL;
`RecordConfig.writer="thread"` keeps the writer on a thread of this process instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robolearn.data.procwriter import ProcessEpisodeWriter, process_writer_supported
from robolearn.data.store import EpisodeStore
from robolearn.data.writer import EpisodeWriter
from robolearn.errors import RobolearnError, SpecError
from robolearn.hal import DeviceError, EpisodeEvent, Observation, Robot, SimRobot, Teleoperator
from robolearn.loop import ControlLoop, LoopStats, Tick
from robolearn.preview import Preview
from robolearn.spec import FeatureSpec

_Writer = EpisodeWriter | ProcessEpisodeWriter


class RecordError(RobolearnError):
    """The recording was configured wrongly or had to stop."""


@dataclass
class RecordConfig:
    dataset: str | Path
    num_episodes: int = 10
    fps: float = 30.0
    episode_time_s: float = 60.0
    reset_time_s: float = 0.0
    task: str = ""  # the task name or language instruction stored with every episode
    keep: str = "all"  # "all" or "success" (drop episodes the robot's task reports as failed)
    seed: int = 0  # simulated robots: episode i is reset with seed + i (re-records reuse it)
    overrun: str = "skip"
    on_interrupt: str = "discard"  # or "save": what happens to the episode in flight
    codecs: Mapping[str, str] = field(default_factory=dict)
    max_attempts: int | None = None  # stop after this many episodes recorded (saved or not)
    # "process": compression and disk writes in a child process (frames through shared memory),
    # so they never hold the control loop's GIL; "thread": on a thread of this process.
    writer: str = "process"
    # JSON attributes stored at the store's root when it is created (`robolearn record` keeps
    # the robot and task configs there, so training and evaluation can rebuild the scene)
    attrs: Mapping[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        if self.overrun not in ("skip", "catch_up"):
            raise RecordError(f"overrun must be 'skip' or 'catch_up', got {self.overrun!r}")
        if int(self.num_episodes) < 1:
            raise RecordError(f"num_episodes must be at least 1, got {self.num_episodes}")
        if not (self.fps > 0 and np.isfinite(self.fps)):
            raise RecordError(f"fps must be a positive number, got {self.fps}")
        if not self.episode_time_s > 0:
            raise RecordError(f"episode_time_s must be positive, got {self.episode_time_s}")
        if self.keep not in ("all", "success"):
            raise RecordError(f"keep must be 'all' or 'success', got {self.keep!r}")
        if self.writer not in ("process", "thread"):
            raise RecordError(f"writer must be 'process' or 'thread', got {self.writer!r}")
        if self.on_interrupt not in ("discard", "save"):
            raise RecordError(
                f"on_interrupt must be 'discard' or 'save', got {self.on_interrupt!r}"
            )


@dataclass
class EpisodeResult:
    attempt: int
    seed: int | None
    outcome: str  # saved, discarded, rerecord, failed (keep=success), interrupted
    frames: int
    success: bool | None
    index: int | None = None  # index in the store when saved
    timing: dict[str, Any] = field(default_factory=dict)
    stopped: bool = False  # the operator quit or the process was interrupted during it


class StopSignals:
    """SIGINT/SIGTERM → a flag a loop checks between ticks or steps; a second signal stops at
    once (KeyboardInterrupt). Handlers are installed only in the main thread."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave handlers alone
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def recording_spec(robot: Robot) -> FeatureSpec:
    """What a recording of `robot` stores: its observations and every action representation."""
    return robot.spec


def open_store(
    dataset: str | Path,
    spec: FeatureSpec,
    fps: float,
    codecs: Mapping[str, str] | None = None,
    attrs: Mapping[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> EpisodeStore:
    """Create the store at `dataset`, or open it to append after checking that its keys,
    shapes and rate match `spec` and `fps` (the recorder's and deploy's episodes)."""
    path = Path(dataset)
    if (path / "zarr.json").exists():
        store = EpisodeStore.open(path, "a")
        try:
            if set(store.spec) != set(spec):
                raise SpecError(
                    f"{path} was recorded with keys {sorted(store.spec)} but this robot has "
                    f"{sorted(spec)}; record into a new dataset path"
                )
            store.spec.check_fits(spec, what=str(path), other_what="this robot")
            if abs(store.fps - fps) > 1e-9:
                raise SpecError(
                    f"{path} was recorded at {store.fps:g} Hz, not {fps:g} Hz; "
                    f"record at fps={store.fps:g} or into a new dataset path"
                )
        except Exception:
            store.close()
            raise
        if store.recovery is not None and store.recovery.changed:
            log(f"{path}: {store.recovery}")
        log(f"appending to {path} ({store.num_episodes} episodes already there)")
        return store
    path.parent.mkdir(parents=True, exist_ok=True)
    return EpisodeStore.create(path, spec, fps, codecs=dict(codecs or {}), attrs=dict(attrs or {}))


class Recorder:
    """Records episodes of `robot` driven by `teleop` into the store at `config.dataset`.

    `keys` is an optional source of operator events (a function returning the EpisodeEvents
    since the last call, e.g. terminal keys); `status` an optional callback that receives a
    dict of live figures about every 0.25 s (the CLI draws it as a status line); `log` prints
    messages (overruns, saved episodes); `preview` an optional live camera view
    (`robolearn.preview`) that gets every recorded tick.
    """

    def __init__(
        self,
        robot: Robot,
        teleop: Teleoperator,
        config: RecordConfig,
        *,
        keys: Callable[[], list[EpisodeEvent]] | None = None,
        status: Callable[[dict[str, Any]], None] | None = None,
        log: Callable[[str], None] = print,
        preview: Preview | None = None,
    ) -> None:
        config.check()
        self.robot = robot
        self.teleop = teleop
        self.config = config
        self.keys = keys
        self.status = status
        self.log = log
        self.preview = preview
        self.results: list[EpisodeResult] = []
        self._interrupt = StopSignals()

    # ------------------------------------------------------------------ store
    def open_store(self) -> EpisodeStore:
        """Create the store, or open it to append after checking that the spec matches."""
        cfg = self.config
        return open_store(
            cfg.dataset, recording_spec(self.robot), cfg.fps, cfg.codecs, cfg.attrs, self.log
        )

    # ------------------------------------------------------------------ run
    def run(self) -> list[EpisodeResult]:
        cfg = self.config
        try:
            # the devices first: a missing gamepad must not leave an empty store behind
            with (
                self._teleop_connected(),
                self.open_store() as store,
                self._writer(store) as writer,
                self._interrupt,
            ):
                self._record_all(writer, store.num_episodes, _next_seed_index(store, cfg.seed))
        finally:
            self._hold()
        saved = sum(r.outcome == "saved" for r in self.results)
        self.log(
            f"{saved} episode(s) saved to {cfg.dataset}; "
            f"{len(self.results) - saved} not kept"
            + (" (interrupted)" if self._interrupt.signal is not None else "")
        )
        return self.results

    def _writer(self, store: EpisodeStore) -> _Writer:
        return make_writer(store, self.config.writer)

    @contextlib.contextmanager
    def _teleop_connected(self) -> Iterator[None]:
        self.teleop.connect()
        try:
            yield
        finally:
            self.teleop.disconnect()

    def _hold(self) -> None:
        hold = getattr(self.robot, "hold", None)
        if callable(hold) and self.robot.is_connected:
            try:
                hold()
            except Exception as exc:  # report it, never mask the original error
                self.log(f"warning: could not make the robot hold still: {exc}")

    def _record_all(self, writer: _Writer, saved_before: int, seed_index: int) -> None:
        cfg = self.config
        saved = 0
        attempt = 0
        while saved < cfg.num_episodes:
            if cfg.max_attempts is not None and attempt >= cfg.max_attempts:
                self.log(f"stopping after {attempt} attempts ({saved} saved)")
                break
            if self._interrupt.signal is not None:
                break
            seed = cfg.seed + seed_index if isinstance(self.robot, SimRobot) else None
            result = self._episode(writer, attempt, seed, saved_before + saved)
            self.results.append(result)
            attempt += 1
            if result.outcome == "saved":
                saved += 1
            if result.outcome != "rerecord":
                seed_index += 1
            if result.stopped or result.outcome == "quit":
                break

    def _show(self, tick: Tick) -> None:
        assert self.preview is not None
        self.preview.publish(tick.observation, tick.action)

    def _events(self) -> list[EpisodeEvent]:
        events = list(self.teleop.events())
        if self.keys is not None:
            events += self.keys()
        return events

    def _episode(
        self, writer: _Writer, attempt: int, seed: int | None, index: int
    ) -> EpisodeResult:
        cfg = self.config
        robot = self.robot
        # ---- reset phase
        if isinstance(robot, SimRobot):
            robot.reset(seed)
        self.teleop.reset(seed)
        if cfg.reset_time_s > 0:
            self._phase = "reset"
            started = {"go": False}

            def reset_stop() -> bool:
                for ev in self._events():
                    if ev in (EpisodeEvent.START, EpisodeEvent.SAVE):
                        started["go"] = True
                    elif ev is EpisodeEvent.QUIT:
                        self._quit = True
                return started["go"] or self._quit or self._interrupt.signal is not None

            self._quit = False
            sinks = [] if self.preview is None else [self._show]
            ControlLoop(robot, self.teleop, cfg.fps, sinks=sinks, overrun=cfg.overrun).run(
                duration=cfg.reset_time_s, stop=reset_stop
            )
            if self._quit:
                return EpisodeResult(attempt, seed, "quit", 0, None, stopped=True)
            self.teleop.reset(seed)
        # ---- record phase
        self._phase = "record"
        writer.start_episode(cfg.task, tags=(f"seed={seed}",) if seed is not None else ())
        outcome: dict[str, str | None] = {"end": None}
        live = _Live(self, attempt, index)

        def stop() -> bool:
            if self._interrupt.signal is not None:
                outcome["end"] = "interrupted"
                return True
            for ev in self._events():
                if ev is EpisodeEvent.SAVE:
                    outcome["end"] = "save"
                elif ev is EpisodeEvent.DISCARD:
                    outcome["end"] = "discard"
                elif ev is EpisodeEvent.RERECORD:
                    outcome["end"] = "rerecord"
                elif ev is EpisodeEvent.QUIT:
                    outcome["end"] = "quit"
            return outcome["end"] is not None

        def sink(tick: Tick) -> None:
            writer.add_frame(
                frame(tick.observation, tick.action),
                timestamp=tick.start,
                capture_times=tick.observation.capture_times,
            )
            live.tick(tick)
            if self.preview is not None:
                self._show(tick)

        def overrun(index: int, late: float) -> None:
            live.overrun(index, late)

        loop = ControlLoop(
            robot, self.teleop, cfg.fps, sinks=[sink], overrun=cfg.overrun, on_overrun=overrun
        )
        stats = LoopStats(cfg.fps)
        try:
            loop.run(duration=cfg.episode_time_s, stop=stop, stats=stats)
        except DeviceError as exc:
            writer.discard()
            self._hold()
            raise RecordError(
                f"episode {index} discarded: {exc}. Committed episodes are intact; check the "
                "device and run the same command again to append"
            ) from exc
        except BaseException:
            writer.discard()
            raise
        live.close()
        end = outcome["end"] or "timeout"
        success = task_success(robot)
        timing = {
            **stats.summary(),
            "stale_frames": live.stale,
            "writer_stalls": writer.stats.stalls,
        }
        frames = writer.episode_frames
        keep = end in ("save", "timeout") or (
            end in ("interrupted", "quit") and cfg.on_interrupt == "save"
        )
        if keep and cfg.keep == "success" and success is False:
            writer.discard()
            self.log(f"attempt {attempt} (seed {seed}): task failed, not kept")
            return EpisodeResult(attempt, seed, "failed", frames, success, timing=timing)
        stopped = end in ("interrupted", "quit")
        if keep and frames > 0:
            info = writer.save(success=success, extra={"timing": timing, "seed": seed})
            self.log(
                f"saved episode {info.index}: {frames} frames, {stats.real_rate:.1f} Hz, "
                f"{stats.overruns} overruns, {live.stale} stale frames"
                + ("" if success is None else f", success={success}")
                + (f" (kept on {end})" if stopped else "")
            )
            return EpisodeResult(
                attempt, seed, "saved", frames, success, info.index, timing, stopped
            )
        writer.discard()
        name = {"discard": "discarded", "rerecord": "rerecord"}.get(end, end)
        self.log(f"attempt {attempt}: {name}, nothing kept")
        return EpisodeResult(attempt, seed, name, frames, success, timing=timing, stopped=stopped)


def make_writer(store: EpisodeStore, kind: str = "process") -> _Writer:
    """The episode writer asked for (the process writer where the OS has one)."""
    if kind == "process" and process_writer_supported():
        return ProcessEpisodeWriter(store)
    return store.writer()


def frame(obs: Observation, action: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One stored frame: the observation's values and the action in every representation."""
    out = dict(obs.values)
    out.update(action)
    return out


def task_success(robot: Robot) -> bool | None:
    """A simulated task's success check now (None for robots without one)."""
    task = getattr(robot, "task", None)
    check = getattr(task, "success", None)
    return bool(check()) if callable(check) else None


class _Live:
    """Counts stale camera frames and feeds the status callback a few times a second."""

    def __init__(self, recorder: Recorder, attempt: int, index: int) -> None:
        self.recorder = recorder
        self.attempt = attempt
        self.index = index
        self.stale = 0
        self.overruns = 0
        self._last_capture: dict[str, float] = {}
        self._t_last = 0.0
        self._t_start = time.monotonic()
        self._frames = 0
        self._first: float | None = None
        self._last_tick: float | None = None
        self._disk = 0
        self._disk_t = 0.0

    def tick(self, tick: Tick) -> None:
        self._frames += 1
        if self._first is None:
            self._first = tick.start
        self._last_tick = tick.start
        spec = self.recorder.robot.spec
        for key in spec.image_keys:
            t = tick.observation.capture_times.get(key)
            if t is not None:
                if self._last_capture.get(key) == t:
                    self.stale += 1
                self._last_capture[key] = t
        self._report(False)

    def overrun(self, index: int, late: float) -> None:
        self.overruns += 1
        if self.overruns <= 3 or self.overruns % 50 == 0:
            self.recorder.log(
                f"overrun: tick {index} ended {late * 1e3:.1f} ms past the next deadline "
                f"({self.overruns} so far this episode)"
            )

    def _report(self, force: bool) -> None:
        status = self.recorder.status
        if status is None:
            return
        now = time.monotonic()
        if not force and now - self._t_last < 0.25:
            return
        self._t_last = now
        if now - self._disk_t > 2.0:
            self._disk, self._disk_t = _disk_bytes(Path(self.recorder.config.dataset)), now
        elapsed = (self._last_tick or 0.0) - (self._first or 0.0)
        rate = (self._frames - 1) / elapsed if elapsed > 0 else float("nan")
        status(
            {
                "episode": self.index,
                "attempt": self.attempt,
                "num_episodes": self.recorder.config.num_episodes,
                "frames": self._frames,
                "elapsed_s": elapsed,
                "episode_time_s": self.recorder.config.episode_time_s,
                "rate_hz": rate,
                "target_hz": self.recorder.config.fps,
                "overruns": self.overruns,
                "stale_frames": self.stale,
                "disk_bytes": self._disk,
                "wall_s": now - self._t_start,
            }
        )

    def close(self) -> None:
        self._report(True)


def _disk_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, f)).st_size
    return total


def _next_seed_index(store: EpisodeStore, base: int) -> int:
    """Where a resumed simulated recording continues the seed sequence (seed = base + index):
    after the highest seed already stored, so that no stored scene is recorded twice (episodes
    that failed or were discarded used seeds too, so the number of stored episodes is not
    enough), and never before the number of stored episodes."""
    seeds = [e.extra.get("seed") for e in store.episodes()]
    highest = max((int(x) for x in seeds if isinstance(x, int)), default=None)
    after = 0 if highest is None else highest - base + 1
    return max(store.num_episodes, after)
