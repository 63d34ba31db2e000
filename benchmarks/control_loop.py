"""Control-loop benchmark: period error of the loop, alone and while recording two 480×640 cameras.

Run from the repository root::

    .venv/bin/python benchmarks/control_loop.py            # full run, about 2 minutes
    .venv/bin/python benchmarks/control_loop.py --quick    # smoke run, about 20 s

The robot is `robolearn.testing.synthetic.SyntheticRobot` on the wall clock: a 7-joint arm and
`SyntheticCamera`s whose driver threads deliver camera-like 480×640 frames at 30 fps (reads wait
for a new frame, as the HAL contract asks). So the loop, the episode writer (compression and
disk on its thread) and the camera threads compete for this machine's cores as they would on a
robot computer; only the sensor is drawn instead of exposed.

1. The loop alone at 50, 100 and 500 Hz (joint targets, no cameras): period error (tick start
   minus its absolute deadline) p50 / p99 / max, overruns.
2. The same loops while, in the same process, a 30 Hz recording of two 480×640 cameras writes
   to a real episode store (lossless codec) in a tmp folder.
3. That 30 fps recording itself: frames recorded vs due, ticks dropped after overruns, stale
   camera frames, writer stalls, and the stored timestamps' own verdict (`dataset info`'s gaps).

Results go to `<out-dir>/control_loop.json` and the `control_loop` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from robolearn.bench import update_docs_section
from robolearn.data.store import EpisodeStore
from robolearn.data.timing import analyse
from robolearn.loop import ControlLoop, LoopStats, Tick
from robolearn.testing.synthetic import Sine, SyntheticCamera, SyntheticRobot

ROOT = Path(__file__).resolve().parent.parent
DOCS_START = "<!-- control_loop:start -->"
DOCS_END = "<!-- control_loop:end -->"
RATES = (50, 100, 500)
TARGET_P99_MS_AT_100 = 1.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def loop_alone(rate: float, seconds: float) -> dict[str, Any]:
    with SyntheticRobot() as robot:
        stats = ControlLoop(robot, Sine(), rate).run(duration=seconds)
    return stats.summary()


class Recording:
    """A 30 Hz recording of two 480×640 cameras on its own thread, into a real store."""

    def __init__(self, folder: Path, seconds: float, fps: float = 30.0) -> None:
        self.folder = folder
        self.seconds = seconds
        self.fps = fps
        self.cameras = [SyntheticCamera(n, 480, 640, fps, seed=i) for i, n in enumerate("ab")]
        self.robot = SyntheticRobot(self.cameras, seed=1)
        self.result: dict[str, Any] = {}
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name="recording", daemon=True)

    def start(self) -> None:
        self.thread.start()
        self.ready.wait(30)

    def join(self) -> dict[str, Any]:
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.result

    def _run(self) -> None:
        try:
            path = self.folder / "rec.zarr"
            if path.exists():
                shutil.rmtree(path)
            stale = {"n": 0}
            last: dict[str, float] = {}
            with (
                self.robot,
                EpisodeStore.create(path, self.robot.spec, self.fps) as store,
                store.writer() as writer,
            ):
                writer.start_episode("benchmark")

                def sink(tick: Tick) -> None:
                    obs = tick.observation
                    for cam in self.cameras:
                        t = obs.capture_times[cam.name]
                        stale["n"] += last.get(cam.name) == t
                        last[cam.name] = t
                    writer.add_frame(
                        {**obs.values, **tick.action},
                        timestamp=tick.start,
                        capture_times=obs.capture_times,
                    )

                loop = ControlLoop(self.robot, Sine(), self.fps, sinks=[sink])
                stats = LoopStats(self.fps)
                self.ready.set()
                loop.run(duration=self.seconds, stats=stats)
                writer.save()
                ws = writer.stats
            with EpisodeStore.open(path, "r") as store:
                ts = store.read("timestamp", 0, store.num_frames)
                timing = analyse(ts, self.fps)
            due = round(self.seconds * self.fps)
            self.result = {
                "frames_due": due,
                "frames_recorded": stats.ticks,
                "dropped_ticks": stats.skipped + max(0, due - stats.ticks - stats.skipped),
                "overruns": stats.overruns,
                "stale_camera_frames": stale["n"],
                "writer_stalls": ws.stalls,
                "writer_stall_s": round(ws.stall_seconds, 4),
                "gaps_in_stored_timestamps": timing.gaps,
                "camera_frames_delivered": [c.delivered for c in self.cameras],
                "loop": stats.summary(),
            }
        except BaseException as exc:  # reported by join()
            self.error = exc
            self.ready.set()


def machine_info() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "switch_interval_s": sys.getswitchinterval(),
    }


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "## Control loop",
        "",
        f"Command: `{r['command']}` · {r['timestamp']} · {r['machine']['cpu_affinity']} cores · "
        f"Python {r['machine']['python']}. Robot: `SyntheticRobot` on the wall clock; cameras: "
        "driver threads delivering 480×640 frames at 30 fps; recording: lossless, real store.",
        "",
        "Period error = tick start − its absolute deadline (ms).",
        "",
        "| loop | load | p50 | p99 | max | overruns | ticks |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in r["loops"]:
        e = case["period_error_ms"]
        lines.append(
            f"| {case['rate_hz']:g} Hz | {case['load']} | {e['p50']:.3f} | {e['p99']:.3f} | "
            f"{e['max']:.3f} | {case['overruns']} | {case['ticks']} |"
        )
    rec = r["recording"]
    lines += [
        "",
        "Recording two 480×640 cameras at 30 fps (while the 500 Hz loop also ran, and alone):",
        "",
        "| case | frames due | recorded | dropped ticks | stale camera frames | writer stalls |"
        " gaps in stored timestamps |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rr in rec.items():
        lines.append(
            f"| {name} | {rr['frames_due']} | {rr['frames_recorded']} | {rr['dropped_ticks']} | "
            f"{rr['stale_camera_frames']} | {rr['writer_stalls']} | "
            f"{rr['gaps_in_stored_timestamps']} |"
        )
    at100 = [c for c in r["loops"] if c["rate_hz"] == 100]
    worst = max(c["period_error_ms"]["p99"] for c in at100)
    dropped = sum(rr["dropped_ticks"] + rr["stale_camera_frames"] for rr in rec.values())
    lines += [
        "",
        f"Targets: p99 period error ≤ {TARGET_P99_MS_AT_100:g} ms at 100 Hz — worst measured "
        f"{worst:.3f} ms ({'met' if worst <= TARGET_P99_MS_AT_100 else '**missed**'}); zero "
        f"dropped frames at 2×480×640@30 fps — {dropped} "
        f"({'met' if dropped == 0 else '**missed**'}).",
    ]
    return "\n".join(lines)


def update_docs(path: Path, section: str) -> None:
    update_docs_section(path, "control_loop", section)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (about 20 s)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args(argv)
    if args.render_only:
        results = json.loads((args.out_dir / "control_loop.json").read_text())
        update_docs(args.docs, markdown(results))
        return 0
    seconds = 2.0 if args.quick else 10.0
    results: dict[str, Any] = {
        "benchmark": "control_loop",
        "command": ".venv/bin/python benchmarks/control_loop.py"
        + (" --quick" if args.quick else ""),
        "quick": args.quick,
        "timestamp": dt.datetime.now(dt.UTC).astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "loops": [],
        "recording": {},
    }
    tmp = Path(tempfile.mkdtemp(prefix="robolearn-bench-loop-"))
    try:
        for rate in RATES:
            log(f"loop alone at {rate} Hz for {seconds:g} s")
            results["loops"].append({**loop_alone(rate, seconds), "load": "alone"})
        for rate in RATES:
            log(f"loop at {rate} Hz while recording 2×480×640 @ 30 fps for {seconds:g} s")
            rec = Recording(tmp, seconds + 1.0)
            rec.start()
            time.sleep(0.3)
            case = loop_alone(rate, seconds)
            results["loops"].append({**case, "load": "recording 2×480×640@30"})
            out = rec.join()
            results["recording"][f"with the {rate} Hz loop"] = out
        log(f"recording alone for {seconds:g} s")
        rec = Recording(tmp, seconds)
        rec.start()
        results["recording"]["alone"] = rec.join()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "control_loop.json").write_text(json.dumps(results, indent=2) + "\n")
    section = markdown(results)
    print(section)
    if not args.no_docs:
        update_docs(args.docs, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
