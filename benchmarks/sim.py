"""Simulation benchmark: lock-step control rate, render rate and scripted-expert success.

Run from the repository root::

    .venv/bin/python benchmarks/sim.py                          # full run, about 10 minutes
    .venv/bin/python benchmarks/sim.py --quick                  # smoke run, well under a minute
    .venv/bin/python benchmarks/sim.py --parts experts --tasks push_t   # re-measure one expert
    .venv/bin/python benchmarks/sim.py --render-only            # rebuild the docs from the JSON

1. Lock-step control on the Panda, per task: ticks per second at the task's control rate (10 Hz
   control over 240 Hz physics: 24 physics steps a tick), driven by the task's scripted expert,
   with no camera, one 96×96 camera and two 224×224 cameras (TinyRenderer); the time of a tick
   split into act (IK and motor commands), physics (the 24 steps) and observe (state and
   rendering); physics steps per second from the physics share alone.
2. Render frames per second of one camera at 96×96, 224×224 and 480×640, TinyRenderer against
   EGL, RGB alone and RGB with depth, on the Panda pick-and-place scene.
3. Expert success over seeds 0..N-1 with `sim.rollout.run_expert`: every task of `sim.tasks.TASKS`
   on the Panda; reach, push_cube, pick_place and push_t on the SO-101. A task whose module does
   not import (yet) is recorded as not available.

Results go to `<out-dir>/sim.json` and to the `sim` section of `docs/benchmarks.md`. A full run
restricted with `--parts` or `--tasks` merges its rows into the existing `sim.json` (each row
names the run that measured it); `--quick` always starts a fresh file.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder comes first on sys.path, where this very file would shadow
# the `sim` package: look in the repository root instead.
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "benchmarks":
    sys.path[0] = str(ROOT)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pybullet as p  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import (  # noqa: E402
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from robolearn.bench import update_docs_section  # noqa: E402
from sim.robot import CameraConfig, PyBulletRobot  # noqa: E402
from sim.tasks import TASKS, make_task  # noqa: E402
from sim.world import TABLE_HEIGHT, PhysicsConfig  # noqa: E402

DOCS_START = "<!-- sim:start -->"
DOCS_END = "<!-- sim:end -->"
PARTS = ("control", "render", "experts")
# renderer variants: TinyRenderer and EGL drawing the arm with its collision meshes (the
# default, sim/urdf.py), and TinyRenderer with the URDF's detailed visual meshes
RENDERERS = ("tiny", "egl", "tiny_full")
RESOLUTIONS = ((96, 96), (224, 224), (480, 640))  # height × width
SO101_TASKS = ("reach", "push_cube", "pick_place", "stack", "push_t")
RENDER_TASK = "pick_place"

# PyBullet on this machine class, Panda + cube (shared/ANCHORS.md).
ANCHOR_PHYSICS_STEPS_PER_S = 20_000.0
ANCHOR_TINY_FPS = {"96x96": 50.0, "480x640": 10.0}

# (min seconds, min count) per measurement: (full, quick)
CONTROL_BUDGET = {False: (6.0, 60), True: (0.1, 3)}
RENDER_BUDGET = {False: (3.0, 10), True: (0.05, 1)}  # per variant, over all its bursts


# The wrist camera in the Panda hand's frame: 7 cm off the approach axis, looking down it past
# the fingers. Keep it outside the hand's mesh: with the eye inside it (e.g. (0.05, 0, 0)),
# TinyRenderer spends seconds on some frames.
WRIST_EYE = (0.07, 0.0, 0.02)
WRIST_TARGET = (0.0, 0.0, 0.25)


def camera_sets() -> dict[str, list[CameraConfig]]:
    """The observation set-ups of the control benchmark (the wrist camera rides on the hand)."""
    return {
        "state only": [],
        "1 × 96×96": [CameraConfig("front", width=96, height=96)],
        "2 × 224×224": [
            CameraConfig("front", width=224, height=224),
            CameraConfig(
                "wrist",
                width=224,
                height=224,
                mount="wrist",
                eye=WRIST_EYE,
                target=WRIST_TARGET,
                up=(1.0, 0.0, 0.0),
            ),
        ],
    }


# ---------------------------------------------------------------------- helpers
def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def background_cpu_busy(seconds: float = 1.0) -> float:
    """Cores kept busy machine-wide (other tenants included) while this process sleeps."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
        return sum(fields), fields[3] + fields[4]

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    busy = 1.0 - (idle1 - idle0) / max(total1 - total0, 1)
    return busy * (os.cpu_count() or 1)


def git_commit() -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    return ""


def git_dirty() -> bool:
    """Whether sim/ has uncommitted changes (the figures then belong to no commit exactly)."""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(
            ["git", "status", "--porcelain", "--", "sim"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return bool(out.strip())
    return False


def egl_gl_renderer() -> str:
    """The OpenGL implementation behind PyBullet's EGL plugin here (e.g. 'llvmpipe …'), or ''."""
    code = (
        "import importlib.util, pybullet as p\n"
        "c = p.connect(p.DIRECT)\n"
        "s = importlib.util.find_spec('eglRenderer')\n"
        "print(p.loadPlugin(s.origin, '_eglRendererPlugin') if s and s.origin else -1)\n"
    )
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        ).stdout
        for line in out.splitlines():
            if line.startswith("GL_RENDERER="):
                return line.split("=", 1)[1].strip()
    return ""


def machine_info() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    from importlib.metadata import version

    return {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "pybullet": version("pybullet"),
        "numpy": np.__version__,
        "egl_gl_renderer": egl_gl_renderer(),
    }


def task_names(selected: list[str] | None) -> list[str]:
    names = list(TASKS)
    if selected is None:
        return names
    unknown = [t for t in selected if t not in TASKS]
    if unknown:
        raise SystemExit(f"unknown task(s) {unknown}; TASKS has {names}")
    return [t for t in names if t in selected]


def load_task(name: str) -> tuple[Any, str | None]:
    """The task, or None and why not (its module may not exist yet or may be half-written)."""
    try:
        return make_task(name), None
    except (ImportError, AttributeError) as e:
        return None, f"not available ({type(e).__name__}: {e})"
    except Exception as e:  # a task that fails to construct is reported, not fatal
        return None, f"error ({type(e).__name__}: {e})"


def progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )


# ---------------------------------------------------------------------- 1. control
def bench_control(
    task_name: str, setup: str, cameras: list[CameraConfig], min_s: float, min_ticks: int
) -> dict[str, Any]:
    """Lock-step ticks driven by the task's expert (episodes restart on the next seed)."""
    row: dict[str, Any] = {"task": task_name, "arm": "panda", "observation": setup}
    task, why = load_task(task_name)
    if task is None:
        return {**row, "available": False, "reason": why}
    row.update(
        available=True,
        cameras=[f"{c.name} {c.height}×{c.width}" for c in cameras],
        renderer="tiny",
    )
    with PyBulletRobot("panda", task=task, cameras=cameras) as robot:
        clock, world = robot.clock, robot.world
        assert world is not None
        period = 1.0 / task.config.control_hz
        seed = 0
        obs = robot.reset(seed)
        if not cameras:
            # Physics alone with the arm holding its start pose and the objects at rest: the
            # set-up of the anchor figure (the expert's motion and grasps cost more).
            n = 240 if min_s < 1 else 4800
            t0 = time.perf_counter()
            world.step(n)
            row["physics_steps_per_s_at_rest"] = n / (time.perf_counter() - t0)
            obs = robot.reset(seed)
        expert = task.expert(robot, np.random.default_rng(seed))
        episode_ticks = 0
        spent = dict.fromkeys(("expert", "act", "physics", "observe"), 0.0)
        ticks = physics_steps = episodes = 0
        warmup = 3
        while True:
            t0 = time.perf_counter()
            action = expert.read(obs)
            t1 = time.perf_counter()
            robot.act(action)
            t2 = time.perf_counter()
            steps0 = world.steps
            clock.sleep_until(clock.now() + period)
            steps1 = world.steps
            t3 = time.perf_counter()
            obs = robot.observe()
            t4 = time.perf_counter()
            episode_ticks += 1
            if warmup > 0:
                warmup -= 1
            else:
                ticks += 1
                physics_steps += steps1 - steps0
                for key, a, b in (
                    ("expert", t0, t1),
                    ("act", t1, t2),
                    ("physics", t2, t3),
                    ("observe", t3, t4),
                ):
                    spent[key] += b - a
                sim_s = spent["act"] + spent["physics"] + spent["observe"]
                if sim_s >= min_s and ticks >= min_ticks:
                    break
            if expert.done or episode_ticks >= task.max_steps:
                seed += 1
                episodes += 1
                obs = robot.reset(seed)
                expert = task.expert(robot, np.random.default_rng(seed))
                episode_ticks = 0
    sim_s = spent["act"] + spent["physics"] + spent["observe"]
    row.update(
        control_hz=task.config.control_hz,
        physics_hz=robot.physics.hz,
        ticks=ticks,
        episodes_started=episodes + 1,
        physics_steps_per_tick=physics_steps / ticks,
        seconds=sim_s,
        ticks_per_s=ticks / sim_s,
        realtime_factor=ticks / sim_s / task.config.control_hz,
        ticks_per_s_with_expert=ticks / (sim_s + spent["expert"]),
        physics_steps_per_s=physics_steps / spent["physics"],
        ms_per_tick={k: v / ticks * 1e3 for k, v in spent.items()},
    )
    return row


def run_control(tasks: list[str], quick: bool) -> list[dict[str, Any]]:
    min_s, min_ticks = CONTROL_BUDGET[quick]
    rows = []
    setups = camera_sets()
    with progress() as bar:
        job = bar.add_task("control", total=len(tasks) * len(setups))
        for name in tasks:
            for setup, cameras in setups.items():
                bar.update(job, description=f"control {name}, {setup}")
                try:
                    row = bench_control(name, setup, cameras, min_s, min_ticks)
                except Exception as e:
                    row = {"task": name, "arm": "panda", "observation": setup, "available": False}
                    row["reason"] = f"error ({type(e).__name__}: {e})"
                    log(traceback.format_exc())
                bar.advance(job)
                if row["available"]:
                    ms = row["ms_per_tick"]
                    log(
                        f"control {name:<10} {setup:<12} {row['ticks_per_s']:7.1f} ticks/s "
                        f"({row['realtime_factor']:.1f}× real time), physics "
                        f"{row['physics_steps_per_s']:,.0f} steps/s; ms/tick act {ms['act']:.2f} "
                        f"physics {ms['physics']:.2f} observe {ms['observe']:.2f} "
                        f"expert {ms['expert']:.2f}"
                    )
                else:
                    log(f"control {name:<10} {setup:<12} {row['reason']}")
                rows.append(row)
                if not row["available"] and row["reason"].startswith("not available"):
                    rows += [{**row, "observation": other} for other in setups if other != setup]
                    bar.advance(job, len(setups) - 1)
                    break
    return rows


# ---------------------------------------------------------------------- 2. render
def table_drawn(robot: PyBulletRobot) -> bool:
    """Whether the renderer draws the table: a top-down look at bare table must not read `far`."""
    cam = CameraConfig(
        "probe",
        width=16,
        height=16,
        fov=20.0,
        eye=(0.0, 0.7, 1.0),
        target=(0.0, 0.7, 0.0),
        up=(1.0, 0.0, 0.0),
    )
    _, depth = robot.render_depth(cam)
    return bool(np.median(depth) < 0.99 * cam.far)


def burst(fn: Any, min_s: float, min_n: int) -> tuple[int, float]:
    """Call `fn` for at least `min_s` seconds and `min_n` times: (calls, seconds)."""
    n = 0
    t0 = time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_s and n >= min_n:
            return n, elapsed


def interleaved_rates(
    fns: dict[str, Any], min_s: float, min_n: int, bursts: int, warmup: int
) -> dict[str, dict[str, Any]]:
    """Frames/s of each function, measured in alternating bursts; the median burst counts.

    Alternating spreads the other tenants' load over every variant alike, so that ratios
    between them (RGB against RGB + depth, TinyRenderer against EGL) are fair.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    per: dict[str, list[tuple[int, float]]] = {k: [] for k in fns}
    for _ in range(bursts):
        for key, fn in fns.items():
            per[key].append(burst(fn, min_s / bursts, max(1, min_n // bursts)))
    out = {}
    for key, runs in per.items():
        fps = [n / sec for n, sec in runs]
        out[key] = {
            "frames": sum(n for n, _ in runs),
            "seconds": sum(sec for _, sec in runs),
            "burst_fps": fps,
            "fps": float(np.median(fps)),
        }
    return out


def connect_renderer(renderer: str) -> tuple[PyBulletRobot | None, dict[str, Any]]:
    """A connected Panda in the pick-and-place scene rendering with `renderer`, or why not."""
    info: dict[str, Any] = {"renderer": renderer}
    task, why = load_task(RENDER_TASK)
    if task is None:
        return None, {**info, "available": False, "reason": f"{RENDER_TASK} {why}"}
    backend, _, visuals = renderer.partition("_")
    info["visuals"] = visuals or "simple"
    robot = PyBulletRobot(
        "panda",
        task=task,
        physics=PhysicsConfig(renderer=backend),
        seed=0,
        visuals=visuals or "simple",
    )
    try:
        robot.connect()
    except Exception as e:  # EGL that does not load is recorded, not fatal
        return None, {**info, "available": False, "reason": f"{type(e).__name__}: {e}"}
    world = robot.world
    assert world is not None
    info["available"] = True
    info["backend"] = "ER_TINY_RENDERER" if world.renderer == p.ER_TINY_RENDERER else "EGL"
    drawn = table_drawn(robot)
    info["table_drawn"] = drawn
    info["table_readded"] = False
    if not drawn:
        # The EGL plugin only draws bodies loaded after it, and SimWorld loads the table
        # first: add a second table so that both renderers draw the same scene.
        plane = world.client.loadURDF("plane.urdf", [0, 0, TABLE_HEIGHT])
        world.client.changeVisualShape(plane, -1, rgbaColor=[0.78, 0.72, 0.62, 1])
        info["table_readded"] = table_drawn(robot)
    info["rows"] = []
    return robot, info


def run_render(quick: bool) -> dict[str, Any]:
    """Every renderer's robot stays connected; each resolution's variants alternate in bursts."""
    min_s, min_n = RENDER_BUDGET[quick]
    bursts, warmup = (1, 1) if quick else (6, 2)
    result: dict[str, Any] = {
        "scene": f"panda + {RENDER_TASK}, front camera",
        "bursts": bursts,
        "renderers": {},
    }
    robots: dict[str, PyBulletRobot] = {}
    try:
        for renderer in RENDERERS:
            robot, info = connect_renderer(renderer)
            result["renderers"][renderer] = info
            if robot is None:
                log(f"render {renderer}: {info['reason']}")
            else:
                robots[renderer] = robot
        for h, w in RESOLUTIONS:
            cam = CameraConfig("bench", width=w, height=h)
            fns = {}
            for renderer, robot in robots.items():
                fns[renderer, "rgb"] = lambda robot=robot, cam=cam: robot.render(cam)
                fns[renderer, "depth"] = lambda robot=robot, cam=cam: robot.render_depth(cam)
            rates = interleaved_rates(fns, min_s, min_n, bursts, warmup)
            for renderer in robots:
                rgb, depth = rates[renderer, "rgb"], rates[renderer, "depth"]
                result["renderers"][renderer]["rows"].append(
                    {
                        "resolution": f"{h}x{w}",
                        "rgb": rgb,
                        "rgb_depth": depth,
                        "fps": rgb["fps"],
                        "fps_with_depth": depth["fps"],
                        "ms_per_frame": 1e3 / rgb["fps"],
                    }
                )
                log(
                    f"render {renderer:<4} {h}×{w}: {rgb['fps']:7.1f} fps, with depth "
                    f"{depth['fps']:7.1f} fps"
                )
    finally:
        for robot in robots.values():
            robot.disconnect()
    return result


# ---------------------------------------------------------------------- 3. experts
def bench_expert(arm: str, task_name: str, seeds: int, bar: Progress) -> dict[str, Any]:
    row: dict[str, Any] = {"task": task_name, "arm": arm, "seeds": seeds}
    task, why = load_task(task_name)
    if task is None:
        return {**row, "available": False, "reason": why}
    from sim.rollout import run_expert

    row["available"] = True
    job = bar.add_task(f"expert {arm} {task_name}", total=seeds)
    successes: list[bool] = []
    steps: list[int] = []
    scores: list[float] = []
    t0 = time.perf_counter()
    with PyBulletRobot(arm, task=task) as robot:
        for seed in range(seeds):
            episode = run_expert(robot, seed)
            successes.append(bool(episode.success))
            steps.append(int(episode.steps))
            scores.append(float(task.score()))  # push_t: area coverage; 1/0 for the others
            bar.advance(job)
    wall = time.perf_counter() - t0
    bar.remove_task(job)
    ok = np.array(successes)
    n_steps = np.array(steps)
    row.update(
        control_hz=task.config.control_hz,
        max_steps=task.max_steps,
        episodes=seeds,
        success=int(ok.sum()),
        success_rate=float(ok.mean()),
        mean_steps=float(n_steps.mean()),
        mean_steps_success=float(n_steps[ok].mean()) if ok.any() else None,
        mean_score=float(np.mean(scores)),
        timeouts=int((n_steps >= task.max_steps).sum()),
        wall_seconds=wall,
        seconds_per_episode=wall / seeds,
        failed_seeds=[s for s, good in enumerate(successes) if not good],
    )
    return row


def run_experts(tasks: list[str], seeds: int) -> list[dict[str, Any]]:
    combos = [("panda", t) for t in tasks] + [("so101", t) for t in tasks if t in SO101_TASKS]
    rows = []
    with progress() as bar:
        for arm, name in combos:
            try:
                row = bench_expert(arm, name, seeds, bar)
            except Exception as e:
                log(traceback.format_exc())
                row = {"task": name, "arm": arm, "seeds": seeds, "available": False}
                row["reason"] = f"error ({type(e).__name__}: {e})"
            if row["available"]:
                log(
                    f"expert {arm:<5} {name:<10} {row['success']}/{row['episodes']} "
                    f"mean {row['mean_steps']:.1f} steps, {row['wall_seconds']:.1f} s"
                )
            else:
                log(f"expert {arm:<5} {name:<10} {row['reason']}")
            rows.append(row)
    return rows


# ---------------------------------------------------------------------- merging runs
def merge(old: dict[str, Any], new: dict[str, Any], parts: list[str]) -> dict[str, Any]:
    """`new`'s rows replace `old`'s rows of the same key; rows no run re-measured stay."""
    runs = list(old.get("runs", []))
    index = len(runs)
    runs.append(new["runs"][0])
    out = dict(old)
    out.update({k: v for k, v in new.items() if k not in PARTS and k != "runs"})
    for part in ("control", "experts"):
        if part not in parts:
            continue
        key = ("task", "arm", "observation") if part == "control" else ("task", "arm")
        fresh = [{**r, "run": index} for r in new[part]]
        seen = {tuple(r.get(k) for k in key) for r in fresh}
        kept = [r for r in old.get(part, []) if tuple(r.get(k) for k in key) not in seen]
        order = {n: i for i, n in enumerate(TASKS)}
        out[part] = sorted(
            kept + fresh,
            key=lambda r: (r["arm"] != "panda", order.get(r["task"], 99), r.get("observation", "")),
        )
    if "render" in parts:
        out["render"] = {**new["render"], "run": index}
    # Drop runs no row refers to any more, and renumber.
    used = sorted(
        {r["run"] for part in ("control", "experts") for r in out.get(part, [])}
        | ({out["render"]["run"]} if "render" in out else set())
    )
    renumber = {old_i: i for i, old_i in enumerate(used)}
    out["runs"] = [runs[i] for i in used]
    for part in ("control", "experts"):
        for r in out.get(part, []):
            r["run"] = renumber[r["run"]]
    if "render" in out:
        out["render"]["run"] = renumber[out["render"]["run"]]
    return out


# ---------------------------------------------------------------------- report
def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def _f(x: float | None, digits: int = 0) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def _run_tag(results: dict[str, Any], row: dict[str, Any]) -> list[str]:
    return [str(row.get("run", 0) + 1)] if len(results["runs"]) > 1 else []


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    runs = results["runs"]
    multi = len(runs) > 1
    lines = ["## Simulation (PyBullet)", ""]
    for i, run in enumerate(runs):
        lines.append(
            (f"{i + 1}. " if multi else "")
            + f"`{run['command']}` — {run['timestamp']}, commit {run['git_commit'] or '?'}"
            + (" with uncommitted changes under sim/" if run.get("dirty") else "")
            + (" — **quick mode** (tiny runs, rough figures)" if run.get("quick") else "")
            + "."
        )
    if multi:
        lines += ["", "Rows name the run (above) that measured them."]
    busy = results.get("background_cores_busy", {})
    lines += [
        "",
        f"{m['cpu_model'] or 'unknown CPU'} ({m['cpu_affinity']} cores usable), Python "
        f"{m['python']}, pybullet {m['pybullet']}, one process. Physics and TinyRenderer run on "
        "one core; Mesa's llvmpipe (EGL here) rasterises on several threads. Timings "
        "on these shared 2-core machines drift by up to 25% between runs"
        + (
            "; other tenants kept "
            + ("(in the latest run) " if multi else "")
            + ", ".join(f"{v:.1f}" for v in busy.values())
            + f" of the {m['cpu_count']} cores busy (machine-wide, sampled for "
            f"{results.get('background_sample_seconds', 1.0):g} s while this benchmark slept: "
            + ", ".join(k.replace("_", " ") for k in busy)
            + ")"
            if busy
            else ""
        )
        + ".",
    ]

    control = results.get("control")
    if control:
        lines += [
            "",
            "### Lock-step control on the Panda (10 Hz control, 240 Hz physics)",
            "",
            "Cameras: `front` 1.1 m in front of the arm and 0.7 m up; `wrist` on the Panda "
            f"hand (eye {WRIST_EYE} looking at {WRIST_TARGET} in the hand's frame, past the "
            "fingers). A wrist camera whose eye is inside the hand's mesh makes TinyRenderer take "
            "seconds over some frames: keep it outside. "
            "Each tick: the task's scripted expert picks an action (not counted in ticks/s), "
            "`robot.act` (IK, motor targets), `clock.sleep_until` one control period ahead (24 "
            "physics steps) and `robot.observe()` (state, task state and TinyRenderer frames). "
            "Episodes restart on the next seed when the expert is done. Physics steps/s counts the "
            "physics share of the tick alone; “at rest” steps the scene after a reset with the arm "
            "holding its start pose (no motion, no grasp), as in the anchor figure.",
            "",
        ]
        rows = []
        for r in control:
            if not r["available"]:
                rows.append(
                    [*_run_tag(results, r), r["task"], r["observation"], r["reason"]] + [""] * 6
                )
                continue
            ms = r["ms_per_tick"]
            rows.append(
                [
                    *_run_tag(results, r),
                    r["task"],
                    r["observation"],
                    _f(r["ticks_per_s"], 1),
                    _f(r["realtime_factor"], 1) + "×",
                    _f(r["physics_steps_per_s"]),
                    _f(r.get("physics_steps_per_s_at_rest")),
                    f"{ms['act']:.2f} / {ms['physics']:.2f} / {ms['observe']:.2f}",
                    _f(ms["expert"], 2),
                    _f(r["ticks"]),
                ]
            )
        lines += _table(
            [
                *(["run"] if multi else []),
                "task",
                "observation",
                "ticks/s",
                "× real time",
                "physics steps/s",
                "physics steps/s at rest",
                "ms/tick act / physics / observe",
                "expert ms/tick",
                "ticks timed",
            ],
            rows,
        )

    render = results.get("render")
    if render:
        lines += [
            "",
            "### Rendering one camera (frames/s)"
            + (f" — run {render.get('run', 0) + 1}" if multi else ""),
            "",
            f"Scene: {render['scene']} (eye 1.1 m in front of the arm, 0.7 m up), "
            "`robot.render(cam)` in a loop after 2 warm-up frames; “+ depth” is "
            "`robot.render_depth(cam)` (RGB and metric depth from the same render). The arm is "
            "drawn with its collision meshes (`visuals: simple`, the default) except in the "
            "“full meshes” column (`visuals: full`: the URDF's detailed visual meshes). Every "
            "variant's world stays open and, per resolution, the variants take turns in "
            f"{render.get('bursts', 1)} bursts each; the figure is the median burst, so that "
            "the other tenants' load weighs on every variant alike.",
            "",
        ]
        tiny = render["renderers"].get("tiny", {})
        egl = render["renderers"].get("egl", {})
        full = render["renderers"].get("tiny_full", {})
        header = [
            "resolution (H×W)",
            "TinyRenderer",
            "Tiny + depth",
            "Tiny, full meshes",
            "simple / full",
            "EGL",
            "EGL + depth",
            "EGL / Tiny",
            "anchor: TinyRenderer",
        ]
        rows = []
        for i, (h, w) in enumerate(RESOLUTIONS):
            res = f"{h}x{w}"
            t = tiny["rows"][i] if tiny.get("available") else None
            e = egl["rows"][i] if egl.get("available") else None
            f = full["rows"][i] if full.get("available") else None
            anchor = ANCHOR_TINY_FPS.get(res)
            rows.append(
                [
                    f"{h}×{w}",
                    _f(t["fps"], 1) if t else "n/a",
                    _f(t["fps_with_depth"], 1) if t else "n/a",
                    _f(f["fps"], 1) if f else "not measured",
                    f"{t['fps'] / f['fps']:.2f}×" if (t and f) else "—",
                    _f(e["fps"], 1) if e else "n/a",
                    _f(e["fps_with_depth"], 1) if e else "n/a",
                    f"{e['fps'] / t['fps']:.2f}×" if (t and e) else "—",
                    f"≈ {anchor:.0f}" if anchor else "—",
                ]
            )
        lines += _table(header, rows)
        gl = m.get("egl_gl_renderer") or "unknown"
        notes = []
        if egl.get("available"):
            notes.append(
                f"EGL here is Mesa's **{gl}**, a software rasteriser on the CPU (this machine has "
                "no GPU): it is not what EGL gives on a GPU."
            )
            if not egl.get("table_drawn", True):
                notes.append(
                    "The EGL plugin only draws bodies loaded after it, and `SimWorld` loads the "
                    "table before choosing the renderer, so **EGL frames from `SimWorld` miss the "
                    "table**; for these figures the benchmark loads a second table after the "
                    "plugin so that both renderers draw the same scene."
                )
        else:
            notes.append(f"EGL: {egl.get('reason', 'not measured')}.")
        lines += ["", " ".join(notes)]

    experts = results.get("experts")
    if experts:
        seeds = sorted({r["seeds"] for r in experts})
        seed_text = " or ".join(f"0..{s - 1}" for s in seeds)
        lines += [
            "",
            f"### Scripted experts (seeds {seed_text})",
            "",
            "`sim.rollout.run_expert(robot, seed)` per seed, lock-step, no camera. Success is the "
            "task's own check after the expert is done and the scene settled; a timeout is an "
            "episode that reached the task's step limit; the final score is the task's score when "
            "the episode ends (push_t: the T's area coverage; other tasks: 1 on success). These figures change as the experts "
            "improve: re-measure one task with `.venv/bin/python benchmarks/sim.py --parts "
            "experts --tasks NAME`.",
            "",
        ]
        rows = []
        for r in experts:
            arm = "Panda" if r["arm"] == "panda" else "SO-101"
            if not r["available"]:
                rows.append([*_run_tag(results, r), arm, r["task"], r["reason"]] + [""] * 7)
                continue
            failed = r["failed_seeds"]
            rows.append(
                [
                    *_run_tag(results, r),
                    arm,
                    r["task"],
                    f"{r['success']}/{r['episodes']}",
                    f"{r['success_rate']:.0%}",
                    _f(r["mean_steps"], 1),
                    _f(r["mean_steps_success"], 1),
                    _f(r.get("mean_score"), 2),
                    str(r["timeouts"]),
                    _f(r["wall_seconds"], 1),
                    (", ".join(map(str, failed[:12])) + (" …" if len(failed) > 12 else "")) or "—",
                ]
            )
        lines += _table(
            [
                *(["run"] if multi else []),
                "arm",
                "task",
                "success",
                "rate",
                "mean steps",
                "mean steps (successes)",
                "final score",
                "timeouts",
                "wall s",
                "failed seeds",
            ],
            rows,
        )

    comp = comparison(results)
    if comp:
        lines += [
            "",
            "### Against the anchors (shared/ANCHORS.md, PyBullet on this machine class)",
            "",
        ]
        lines += _table(
            ["measure", "robolearn", "anchor", "ratio"],
            [[c["measure"], c["robolearn"], c["anchor"], c["ratio"]] for c in comp],
        )
    return "\n".join(lines)


def comparison(results: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    for r in results.get("control", []):
        if r["task"] == "pick_place" and r["observation"] == "state only" and r["available"]:
            for label, v in (
                ("at rest", r.get("physics_steps_per_s_at_rest")),
                ("expert-driven", r["physics_steps_per_s"]),
            ):
                if v is None:
                    continue
                out.append(
                    {
                        "measure": f"physics steps/s, Panda + cube (pick_place, {label})",
                        "robolearn": _f(v),
                        "anchor": f"~{ANCHOR_PHYSICS_STEPS_PER_S:,.0f}",
                        "ratio": f"{v / ANCHOR_PHYSICS_STEPS_PER_S:.2f}×",
                    }
                )
    tiny = results.get("render", {}).get("renderers", {}).get("tiny", {})
    if tiny.get("available"):
        for row in tiny["rows"]:
            anchor = ANCHOR_TINY_FPS.get(row["resolution"])
            if anchor:
                out.append(
                    {
                        "measure": f"TinyRenderer fps, {row['resolution'].replace('x', '×')}",
                        "robolearn": _f(row["fps"], 1),
                        "anchor": f"≈ {anchor:.0f}",
                        "ratio": f"{row['fps'] / anchor:.2f}×",
                    }
                )
    return out


def update_docs(path: Path, section: str) -> None:
    update_docs_section(path, "sim", section)


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny runs (a smoke test)")
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated parts to measure, of {','.join(PARTS)} (default: all)",
    )
    parser.add_argument(
        "--tasks", default=None, help="comma-separated tasks for the control and expert parts"
    )
    parser.add_argument(
        "--seeds", type=int, default=None, help="expert seeds 0..N-1 (default 100, quick 3)"
    )
    parser.add_argument(
        "--out-dir", type=Path, default=ROOT / "benchmarks" / "results", help="where sim.json goes"
    )
    parser.add_argument(
        "--docs", type=Path, default=ROOT / "docs" / "benchmarks.md", help="markdown file to update"
    )
    parser.add_argument("--no-docs", action="store_true", help="do not touch the markdown file")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="measure nothing: rewrite the markdown section from <out-dir>/sim.json",
    )
    args = parser.parse_args(argv)
    out = args.out_dir / "sim.json"

    if args.render_only:
        results = json.loads(out.read_text())
        update_docs(args.docs, markdown(results))
        log(f"rewrote the sim section of {args.docs} from {out}")
        return 0

    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    bad = [s for s in parts if s not in PARTS]
    if bad or not parts:
        parser.error(f"--parts takes some of {','.join(PARTS)}; got {args.parts!r}")
    tasks = task_names([t.strip() for t in args.tasks.split(",")] if args.tasks else None)
    quick = bool(args.quick)
    seeds = args.seeds if args.seeds is not None else (3 if quick else 100)
    if seeds < 1:
        parser.error("--seeds must be at least 1")
    command = " ".join(
        [".venv/bin/python benchmarks/sim.py", *(argv if argv is not None else sys.argv[1:])]
    )
    logging.getLogger("sim").setLevel(logging.WARNING)

    started = time.perf_counter()
    run = {
        "command": command,
        "timestamp": dt.datetime.now(dt.UTC).astimezone().isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "dirty": git_dirty(),
        "quick": quick,
        "parts": parts,
        "tasks": tasks,
        "seeds": seeds,
    }
    results: dict[str, Any] = {
        "benchmark": "sim",
        "machine": machine_info(),
        "anchors": {
            "physics_steps_per_s": ANCHOR_PHYSICS_STEPS_PER_S,
            "tiny_fps": ANCHOR_TINY_FPS,
        },
        "runs": [run],
    }
    log(f"sim benchmark ({'quick' if quick else 'full'}): parts {parts}, tasks {tasks}")
    sample_s = 0.25 if quick else 1.0
    results["background_sample_seconds"] = sample_s
    busy = results["background_cores_busy"] = {"start": background_cpu_busy(sample_s)}
    log(f"background load: {busy['start']:.2f} cores busy machine-wide while idle")
    if "control" in parts:
        results["control"] = run_control(tasks, quick)
    if "render" in parts:
        results["render"] = run_render(quick)
    if "experts" in parts:
        busy["before_experts"] = background_cpu_busy(sample_s)
        results["experts"] = run_experts(tasks, seeds)
    busy["end"] = background_cpu_busy(sample_s)
    run["seconds"] = time.perf_counter() - started

    partial = set(parts) != set(PARTS) or tasks != list(TASKS)
    if not quick and partial and out.exists():
        with contextlib.suppress(ValueError, KeyError):
            old = json.loads(out.read_text())
            if not any(r.get("quick") for r in old.get("runs", [])):
                results = merge(old, results, parts)
                log(f"merged into the earlier results of {out}")
    for part in ("control", "experts"):
        for row in results.get(part, []):
            row.setdefault("run", len(results["runs"]) - 1)
    if "render" in results:
        results["render"].setdefault("run", len(results["runs"]) - 1)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {out}")
    section = markdown(results)
    if not args.no_docs:
        update_docs(args.docs, section)
        log(f"updated the sim section of {args.docs}")
    print()
    print(section)
    print()
    log(f"done in {run['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
