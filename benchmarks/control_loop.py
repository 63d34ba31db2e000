"""Control-loop benchmark: period error of the loop, alone and while recording two 480×640 cameras.

Run from the repository root::

    .venv/bin/python benchmarks/control_loop.py            # full run, about 2 minutes
    .venv/bin/python benchmarks/control_loop.py --quick    # smoke run, about 20 s

The robot is `robolearn.testing.synthetic.SyntheticRobot` on the wall clock: a 7-joint arm and
`SyntheticCamera`s whose driver threads deliver camera-like 480×640 frames at 30 fps (reads wait
for a new frame, as the HAL contract asks). So the loop, the episode writer and the camera
threads compete for this machine's cores as they would on a robot computer; only the sensor is
drawn instead of exposed.

1. The loop alone at 50, 100 and 500 Hz (joint targets, no cameras): period error (tick start
   minus its absolute deadline) p50 / p99 / max, overruns.
2. The same loops while, in the same process, a 30 Hz recording of two 480×640 cameras writes
   to a real episode store (lossless codec) in a tmp folder, through the recorder's writer
   (`ProcessEpisodeWriter`); at 100 Hz also, right after, through the writer thread
   (`EpisodeWriter`, the old default), so that both meet the same machine.
3. That 30 fps recording itself: frames recorded vs due, ticks dropped after overruns, stale
   camera frames, writer stalls, and the stored timestamps' own verdict (`dataset info`'s gaps).

Every loop row also says where its late ticks (over 1 ms) came from and what else ran: the loop
reads its thread's run-queue wait (/proc/thread-self/schedstat) as it goes to sleep, and
/proc/stat against this benchmark's own CPU time gives the cores other people's jobs used
(the machine this was built on is a shared 2-core VM).

Design notes (measured here; diagnosis with perf sampling correlated with the late ticks):

- With the writer thread, late ticks were GIL waits behind the writer and zarr's event-loop and
  worker threads (p99 3-9 ms at 100 Hz). `sys.setswitchinterval` (1 ms, 0.2 ms) did not help:
  the holders were mostly descheduled or in C, not running bytecode.
- `ProcessEpisodeWriter` moves encoding and zarr to a child process; the loop's process copies
  frame bytes into shared memory (GIL released) and writes a 16-byte notice. The same late
  ticks then became waits for a CPU, for four reasons, each fixed where it arises:
  - one multi-megabyte write() (a shard file) holds a CPU for milliseconds on this kernel
    (`Dynamic Preempt: none`): the writer writes files in 256 KiB pieces (6.6 % → 0.6 % of
    ticks late beside a process writing 3 MiB files 15 times a second; 1.3 % with none);
  - zarr compresses a shard's chunks on several threads at once, and on 2 cores those bursts
    filled both just as the loop woke: while it keeps up, the writer may use every CPU but one
    (quiet machine: p99 0.8 → 0.09 ms);
  - under others' load the writer's threads outweighed the loop in the scheduler: the writer
    runs in its own session (its own autogroup) at niceness 10 while it keeps up; when frames
    back up it takes every CPU and niceness 0 until it has caught up (49 → 14 late ticks per
    600 with others' jobs on 1.3-1.5 cores);
  - the loop thread (and the camera driver threads) ask for a 0.1 ms EEVDF slice
    (`ControlLoop(latency_slice=)`): the loop alone under others' load went from p99 1.7-2.5 ms
    to 0.07-0.14 ms.
- The cyclic garbage collector walking every object of the process took 1-4 ms with the GIL
  held; the loop freezes the objects made before it starts (`ControlLoop(freeze_gc=)`).
- WallClock's 2 ms spin stays: 0.5 ms and 0 gave more late ticks (10 and 19 against 7 per 600
  on a quiet machine). Pinning the writer to one core and SCHED_BATCH made no difference beyond
  noise; SCHED_IDLE starves the writer whenever the cores are busy.
- Result, 100 Hz loop beside the recording, p99 with the process writer against the writer
  thread in the same run: quiet machine (two full runs) 0.087 / 0.092 ms against 2.5 / 4.8 ms,
  as good as the loop alone; others' jobs on ~1 of the 2 cores (two full runs, before the
  writer left a CPU free) 0.34 / 0.79 ms against 6.7 / 5.5 ms; two CPU-bound jobs of others on
  1.56 cores (3 runs of 6 s) 2.7 ms against 5.4 ms, late ticks 19 against 55 per 600. No
  frame dropped in any of them. What remains under load are waits for a CPU (the *for a CPU*
  column): the two cores also carry the writer's ~0.45 core of zstd, the recording loop and its
  camera threads, and no unprivileged setting puts the loop ahead of everyone's jobs; a robot
  computer with a spare core, or the loop on SCHED_FIFO (CAP_SYS_NICE or an rtprio limit), is
  the way past that.

Results go to `<out-dir>/control_loop.json` and the `control_loop` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from robolearn.bench import update_docs_section
from robolearn.data.procwriter import ProcessEpisodeWriter
from robolearn.data.store import EpisodeStore
from robolearn.data.timing import analyse
from robolearn.hal import WallClock
from robolearn.loop import ControlLoop, LoopStats, Tick, thread_slice
from robolearn.testing.synthetic import Sine, SyntheticCamera, SyntheticRobot

ROOT = Path(__file__).resolve().parent.parent
DOCS_START = "<!-- control_loop:start -->"
DOCS_END = "<!-- control_loop:end -->"
RATES = (50, 100, 500)
TARGET_P99_MS_AT_100 = 1.0
LATE_MS = 1.0
WRITERS = ("process", "thread")  # the recorder's default first; the thread writer for comparison


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class ProbeClock(WallClock):
    """The wall clock, noting for every tick how long its thread waited for a CPU.

    /proc/thread-self/schedstat's second field is the time the thread spent runnable but not
    running (in a run queue). It is read as the loop goes to sleep, before the next deadline, so
    the reading costs the measured period error nothing; the difference between two readings is
    the run-queue wait of one sleep + tick.
    """

    def __init__(self) -> None:
        super().__init__()
        self.rq_wait: list[float] = []
        self._last: float | None = None
        try:
            self._file = open("/proc/thread-self/schedstat", "rb", buffering=0)  # noqa: SIM115
        except OSError:
            self._file = None

    def sleep_until(self, t: float) -> None:
        if self._file is not None:
            self._file.seek(0)
            waited = int(self._file.read().split()[1]) / 1e9
            if self._last is not None:
                self.rq_wait.append(waited - self._last)
            self._last = waited
        super().sleep_until(t)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class CpuMeter:
    """CPU time used on the whole machine, by this process (and its reaped children), and so by
    everyone else (other users' jobs on a shared machine), over a stretch of wall time."""

    def __init__(self) -> None:
        self._t = time.monotonic()
        self._total = self._machine()
        self._ours = self._own()

    @staticmethod
    def _machine() -> float:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    def read(self) -> dict[str, float]:
        wall = time.monotonic() - self._t
        total = self._machine() - self._total
        ours = self._own() - self._ours
        return {
            "cores_busy": round(total / wall, 2),
            "cores_ours": round(ours / wall, 2),
            "cores_others": round(max(total - ours, 0.0) / wall, 2),
        }


def loop_alone(rate: float, seconds: float) -> dict[str, Any]:
    """The loop at `rate` for `seconds` on the wall clock, with where its late ticks waited."""
    clock = ProbeClock()
    with SyntheticRobot() as robot:
        loop = ControlLoop(robot, Sine(), rate, clock=clock, sinks=[_note_slice])
        stats = loop.run(duration=seconds)
    clock.close()
    out = stats.summary()
    late = [
        (err, rq)
        for err, rq in zip(stats.period_errors, clock.rq_wait, strict=False)
        if err * 1e3 > LATE_MS
    ]
    out["late_ticks"] = {
        "over_ms": LATE_MS,
        "count": len(late),
        # a late tick whose thread sat in a run queue for at least half its lateness: the CPU,
        # not the GIL or the loop itself, held it up
        "waiting_for_cpu": sum(rq >= err / 2 for err, rq in late),
    }
    out["thread_slice_ms"] = _SLICE.get("ms")
    return out


_SLICE: dict[str, float | None] = {}


def _note_slice(tick: Tick) -> None:
    if tick.index == 0:
        s = thread_slice()
        _SLICE["ms"] = None if s is None else round(s * 1e3, 3)


class Recording:
    """A 30 Hz recording of two 480×640 cameras on its own thread, into a real store.

    `writer` is "process" (ProcessEpisodeWriter, what the recorder uses) or "thread"
    (EpisodeWriter, the writer thread in this process).
    """

    def __init__(
        self, folder: Path, seconds: float, fps: float = 30.0, writer: str = "process"
    ) -> None:
        self.folder = folder
        self.writer = writer
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
            make_writer = ProcessEpisodeWriter if self.writer == "process" else EpisodeStore.writer
            with (
                self.robot,
                EpisodeStore.create(path, self.robot.spec, self.fps) as store,
                make_writer(store) as writer,
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
                frame_bytes = max(writer._frame_bytes, 1)
            with EpisodeStore.open(path, "r") as store:
                ts = store.read("timestamp", 0, store.num_frames)
                timing = analyse(ts, self.fps)
            due = round(self.seconds * self.fps)
            self.result = {
                "writer": self.writer,
                "frames_due": due,
                "frames_recorded": stats.ticks,
                "dropped_ticks": stats.skipped + max(0, due - stats.ticks - stats.skipped),
                "overruns": stats.overruns,
                "stale_camera_frames": stale["n"],
                "writer_stalls": ws.stalls,
                "writer_stall_s": round(ws.stall_seconds, 4),
                "writer_queue_peak_frames": round(ws.bytes_queued_peak / frame_bytes, 1),
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


def _load(case: dict[str, Any]) -> str:
    if case["load"] == "alone":
        return "alone"
    return f"recording 2×480×640@30, {case['writer']} writer"


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "## Control loop",
        "",
        f"Command: `{r['command']}` · {r['timestamp']} · {r['machine']['cpu_affinity']} cores · "
        f"Python {r['machine']['python']}. Robot: `SyntheticRobot` on the wall clock; cameras: "
        "driver threads delivering 480×640 frames at 30 fps; recording: lossless, real store. "
        "Writers: `process` = `ProcessEpisodeWriter` (what `robolearn record` uses), `thread` = "
        "`EpisodeWriter` (the writer thread in the loop's process, the old default).",
        "",
        "Design, diagnosis and figures under other people's load: the docstring of "
        "`benchmarks/control_loop.py`.",
        "",
        "Period error = tick start − its absolute deadline (ms). Late = over "
        f"{LATE_MS:g} ms; *for a CPU*: of those, the ticks whose thread waited in a run queue for at "
        "least half its lateness. Others' CPU: cores busy with other people's jobs on this shared "
        "machine during the run (`/proc/stat` minus this benchmark's own processes).",
        "",
        "| loop | load | p50 | p99 | max | late (for a CPU) | overruns | ticks | others' CPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case in r["loops"]:
        e = case["period_error_ms"]
        late = case.get("late_ticks", {})
        cpu = case.get("cpu", {})
        lines.append(
            f"| {case['rate_hz']:g} Hz | {_load(case)} | {e['p50']:.3f} | {e['p99']:.3f} | "
            f"{e['max']:.3f} | {late.get('count', '–')} ({late.get('waiting_for_cpu', '–')}) | "
            f"{case['overruns']} | {case['ticks']} | {cpu.get('cores_others', '–')} |"
        )
    rec = r["recording"]
    lines += [
        "",
        "Recording two 480×640 cameras at 30 fps (while the loops above ran, and alone):",
        "",
        "| case | writer | frames due | recorded | dropped ticks | stale camera frames |"
        " writer stalls | gaps in stored timestamps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, rr in rec.items():
        lines.append(
            f"| {name} | {rr.get('writer', 'thread')} | {rr['frames_due']} | "
            f"{rr['frames_recorded']} | {rr['dropped_ticks']} | {rr['stale_camera_frames']} | "
            f"{rr['writer_stalls']} | {rr['gaps_in_stored_timestamps']} |"
        )
    at100 = [
        c
        for c in r["loops"]
        if c["rate_hz"] == 100 and c["load"] != "alone" and c.get("writer", "process") == "process"
    ]
    worst = max(c["period_error_ms"]["p99"] for c in at100)
    dropped = sum(
        rr["dropped_ticks"] + rr["stale_camera_frames"]
        for rr in rec.values()
        if rr.get("writer", "process") == "process"
    )
    lines += [
        "",
        f"Targets (the recorder's process writer): p99 period error ≤ {TARGET_P99_MS_AT_100:g} ms "
        f"at 100 Hz while recording — worst measured {worst:.3f} ms "
        f"({'met' if worst <= TARGET_P99_MS_AT_100 else '**missed**'}); zero dropped frames at "
        f"2×480×640@30 fps — {dropped} ({'met' if dropped == 0 else '**missed**'}).",
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
            meter = CpuMeter()
            case = loop_alone(rate, seconds)
            results["loops"].append({**case, "load": "alone", "cpu": meter.read()})
        # the 100 Hz pair first and back to back, so both writers meet the same machine load
        cases = [(100, w) for w in WRITERS] + [(r, WRITERS[0]) for r in RATES if r != 100]
        for rate, writer in cases:
            log(f"loop at {rate} Hz while recording 2×480×640 @ 30 fps ({writer} writer)")
            meter = CpuMeter()
            rec = Recording(tmp, seconds + 1.0, writer=writer)
            rec.start()
            time.sleep(0.3)
            case = loop_alone(rate, seconds)
            out = rec.join()
            results["loops"].append(
                {**case, "load": "recording", "writer": writer, "cpu": meter.read()}
            )
            name = f"with the {rate} Hz loop" + ("" if writer == WRITERS[0] else f", {writer}")
            results["recording"][name] = out
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
