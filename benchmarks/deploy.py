"""The deployment runtime in real-time simulation: deadline misses, inference latency, action age,
skipped actions and safety interventions; success in real time against lock-step.

    .venv/bin/python benchmarks/deploy.py --checkpoint runs/demo/run_*/checkpoints/last [more …]
    .venv/bin/python benchmarks/deploy.py --seconds 30 --episodes 5     # a quicker run
    .venv/bin/python benchmarks/deploy.py --cases act --inference process  # model in a process

Cases (simulated Panda, pick_place scene, real-time clock, the safety filter on):

- `act@50Hz`: ACT at ANCHORS.md's profile (ResNet-18, dim 512, 4+1 layers, chunk 100) reading
  the state and a 96×96 camera running at 30 fps (`CameraConfig.fps`: a real camera's rate; the
  loop renders a frame only when one is due, and reads the latest one between frames),
  temporal ensembling, for `--seconds`;
- `diffusion@10Hz`: diffusion policy at ANCHORS.md's profile (ResNet-18 GroupNorm + spatial
  softmax, U-Net 256-512-1024, 10 DDIM steps) reading the same, blending, for `--seconds`;
- `floor@50Hz`: the simulator's and the loop's own cost, with next to no model: a fresh
  two-layer MLP (64 units) on the joint state alone, the same 96×96 camera still rendered at
  30 fps, blending, for `--seconds`. Its deadline misses are the floor under `act@50Hz`'s on the
  same machine: misses the model cannot be blamed for;
- `--checkpoint A B …` (trained policies, e.g. the demo's MLP and benchmarks/success.py's
  runs): `--episodes` real-time episodes on evaluation seeds, in the policy's own mode
  (`runner.mode=auto`), against a lock-step evaluation of the same checkpoint on the same
  seeds in the same mode (`robolearn eval mode=…`).

The ACT and diffusion cases use freshly initialised weights: they measure the runtime (timing,
scheduling, the filter), not task success — no trained network of that size exists here (it
takes a GPU to train one in reasonable time). Their actions are arbitrary, which exercises the
safety filter: its interventions are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from robolearn.bench import update_docs_section  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "deploy.json"
DOCS = ROOT / "docs" / "benchmarks.md"
CAMERA = {"name": "top", "width": 96, "height": 96, "fps": 30.0}  # a real camera's rate


def env(task: str, camera: bool) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from robolearn.config import compose
    from robolearn.train_app import resolve_env

    cfg = compose("record", [f"task={task}", "robot=sim_panda"])
    robot = OmegaConf.to_container(cfg.robot, resolve=True)
    task_cfg = OmegaConf.to_container(cfg.task, resolve=True)
    assert isinstance(robot, dict) and isinstance(task_cfg, dict)
    robot.pop("task", None)
    robot["cameras"] = [{"_target_": "sim.robot.CameraConfig", **CAMERA}] if camera else []
    return resolve_env(robot, task_cfg)


def cores() -> str:
    """The cores this process may run on (a `taskset` shows), of how many."""
    mine, total = len(os.sched_getaffinity(0)), os.cpu_count()
    return f"{mine} cores" if mine == total else f"{mine} of {total} cores"


def machine(device: str = "cpu") -> str:
    """Where a case ran: the cores, and the GPU when inference ran on one."""
    import torch

    where = cores()
    if device.startswith("cuda"):
        where += f", inference on {torch.cuda.get_device_name(torch.device(device))}"
    return where


def timing_case(
    name: str,
    config: Any,
    rate: float,
    mode: str,
    seconds: float,
    device: str = "cpu",
    inference: str = "thread",
    obs_keys: tuple[str, ...] = ("state", "top"),
    process: bool = True,
) -> dict[str, Any]:
    import torch

    from robolearn.deploy import SafeSource, connected, run_episode, summarize
    from robolearn.evaluate import EVAL_SEED, make_sim_robot
    from robolearn.policies import make_policy
    from robolearn.runner import PolicyRunner, RunnerConfig
    from robolearn.safety import SafetyFilter

    torch.manual_seed(0)
    e = env("pick_place", camera=True)
    with make_sim_robot(e, ["top"], clock="realtime", process=process) as robot:
        config.obs_keys = list(obs_keys)
        config.action_keys = ["action.joint"]
        policy = make_policy(config, robot.spec).to(device).eval()
        runner = PolicyRunner(
            policy, rate, RunnerConfig(mode=mode, inference=inference), clock=robot.clock
        )
        safety = SafetyFilter(robot.spec, runner.action_key, rate, clock=robot.clock)
        source = SafeSource(runner, safety)
        outcomes = []
        t0 = time.monotonic()
        with connected(source):
            ep = 0
            while time.monotonic() - t0 < seconds:
                left = seconds - (time.monotonic() - t0)
                outcomes.append(
                    run_episode(
                        robot,
                        source,
                        rate,
                        episode=ep,
                        seed=EVAL_SEED + ep,
                        max_seconds=min(20.0, max(left, 1.0)),
                        stop_on_success=False,
                    )
                )
                ep += 1
    s = summarize(outcomes)
    s.update(
        case=name,
        rate_hz=rate,
        mode=runner.mode if inference == "thread" else f"{runner.mode}, {inference}",
        seconds=sum(o.seconds for o in outcomes),
        machine=machine(device),
    )
    s.pop("success_rate", None), s.pop("successes", None), s.pop("ci95", None)
    print(json.dumps(s), flush=True)
    return s


def trained_on(run_dir: Path) -> str:
    """`6000 steps on pick_place.zarr`: which training run a trained case's checkpoint is."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(run_dir / "config.yaml")
    return f"{cfg.train.steps} steps on {Path(str(cfg.dataset)).name}"


def success_case(
    checkpoint: Path, episodes: int, mode: str, process: bool = True, suffix: str = ""
) -> dict[str, Any]:
    import tempfile

    from omegaconf import OmegaConf

    from robolearn.deploy import SafeSource, connected, run_episode, summarize
    from robolearn.evaluate import EVAL_SEED, evaluate, make_sim_robot
    from robolearn.policies import Policy
    from robolearn.policies.base import preferred_mode
    from robolearn.runner import PolicyRunner, RunnerConfig
    from robolearn.safety import SafetyFilter

    run_dir = next(p for p in checkpoint.parents if (p / "config.yaml").is_file())
    e = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml").env)
    assert isinstance(e, dict)
    policy = Policy.load(checkpoint)
    if mode == "auto":
        mode = preferred_mode(policy.config)
    with tempfile.TemporaryDirectory() as tmp:  # the same seeds and mode, in lock-step
        lock = evaluate(checkpoint, e, episodes=episodes, videos=0, out_dir=tmp, mode=mode)  # type: ignore[arg-type]
    rate = float(e["task"]["config"]["control_hz"])
    with make_sim_robot(e, policy.image_keys, clock="realtime", process=process) as robot:
        runner = PolicyRunner(policy, rate, RunnerConfig(mode=mode), clock=robot.clock)
        safety = SafetyFilter(robot.spec, runner.action_key, rate, clock=robot.clock)
        source = SafeSource(runner, safety)
        with connected(source):
            outcomes = [
                run_episode(
                    robot,
                    source,
                    rate,
                    episode=i,
                    seed=EVAL_SEED + i,
                    max_seconds=float(e["task"]["config"]["max_seconds"]),
                )
                for i in range(episodes)
            ]
    s = summarize(outcomes)
    s.update(
        case=f"{policy.config.__class__.__name__.removesuffix('Config').lower()} (trained, "
        f"{sum(p.numel() for p in policy.parameters()) / 1e6:.1f} M"
        f"{', relative' if policy.config.relative_actions else ''}; {trained_on(run_dir)}) "
        f"@{rate:g}Hz{suffix}",
        rate_hz=rate,
        mode=runner.mode,
        checkpoint=str(checkpoint),
        machine=machine(),
        seconds=sum(o.seconds for o in outcomes),
        lockstep={
            "episodes": lock.episodes,
            "successes": lock.successes,
            "success_rate": lock.success_rate,
            "ci95": list(lock.ci95),
        },
    )
    print(json.dumps(s), flush=True)
    return s


def table(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        "## Deployment runtime (real-time simulation)",
        "",
        f"Last command: `{meta['command']}` · {meta['date']} · torch {meta['torch']} "
        f"({meta['threads']} inference threads). Simulated Panda, pick_place "
        "scene, real-time clock, safety filter on; the simulated arm runs in a process of its own "
        "(deploy's default: it steps its physics and renders its 30 fps camera on its own "
        "clock, as a real arm does) unless the case says [sim in loop] (physics and renders "
        "inside the loop's observe()). ACT and diffusion: ANCHORS.md's networks with "
        "fresh weights (runtime figures only; their actions are arbitrary, so the filter works "
        "hard); floor: a 64-unit MLP on the joint state alone, the camera still rendered (what the "
        "simulator and the loop cost without a model). Deadline misses: ticks that ended after the next tick's deadline. Tick work: "
        "the loop's own time per tick (observe, the runner's decision, act, record), without "
        "the wait for the deadline; p50 is the median over episodes, p99 the worst episode's. "
        "Machine: where "
        "the case ran (cases keep their figures until they are run again; `2 cores` is the "
        "development machine, no GPU).",
        "",
        "| case | machine | mode | run | ticks | deadline misses | tick work p50 / p99 "
        "| inference p50 / p99 | action age p50 "
        "| skipped actions | starved ticks | safety interventions | success real time | "
        "success lock-step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in results["cases"]:
        inf, age = c["inference_ms"], c["action_age_ms"]
        work = c.get("work_ms") or {}
        work_text = (
            f"{work['p50_median']:.1f} / {work['p99_max']:.1f} ms"
            if work.get("p50_median") is not None
            else "—"
        )
        if c.get("interventions") is None:
            inter = "(not measured in this run)"
        else:
            inter = ", ".join(f"{k} {v}" for k, v in sorted(c["interventions"].items())) or "none"
        rt = lk = "—"
        if "lockstep" in c:
            lo, hi = c["ci95"]
            rt = f"{c['successes']}/{c['episodes']} = {c['success_rate']:.0%} ({lo:.0%}–{hi:.0%})"
            L = c["lockstep"]
            lk = (
                f"{L['successes']}/{L['episodes']} = {L['success_rate']:.0%} "
                f"({L['ci95'][0]:.0%}–{L['ci95'][1]:.0%})"
            )
        lines.append(
            f"| {c['case']} | {c.get('machine', '2 cores')} | {c['mode']} | {c['seconds']:.0f} s, {c['episodes']} episodes | "
            f"{c['ticks']} | **{c['overruns']}** | {work_text} | {inf['p50_median']:.1f} / "
            f"{inf['p99_max']:.1f} ms | {age['p50_median']:.0f} ms | {c['skipped_actions']} | "
            f"{c['starved_ticks']} | {inter} | {rt} | {lk} |"
        )
    traced = [c for c in results["cases"] if c.get("late_ticks")]
    if traced:
        lines += [
            "",
            "Each deadline miss, traced (`LoopStats.late`): how late the tick ended, how late it "
            "started (a late start is the OS waking the loop late), and its slowest stage.",
            "",
        ]
        for c in traced:
            for t in c["late_ticks"][:5]:
                stage, ms = max(t["stage_ms"].items(), key=lambda kv: kv[1] or 0)
                lines.append(
                    f"- {c['case']}: episode {t['episode']}, tick {t['tick']}: ended "
                    f"{t['late_ms']:.1f} ms late, started {t['start_lag_ms']:.1f} ms late; "
                    f"slowest stage {stage} {ms:.1f} ms"
                )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120.0, help="per timing case")
    ap.add_argument(
        "--checkpoint", type=Path, nargs="*", default=[], help="trained policies: success cases"
    )
    ap.add_argument("--episodes", type=int, default=20, help="success case: episodes each way")
    ap.add_argument("--cases", default="act,diffusion,floor,trained")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for inference")
    ap.add_argument("--device", default="cpu", help="inference device of the timing cases")
    ap.add_argument(
        "--inference",
        default="thread",
        choices=["thread", "process"],
        help="where the timing cases run the model: a thread beside the loop, or a process",
    )
    ap.add_argument(
        "--sim",
        default="process",
        choices=["process", "inline"],
        help="the simulated arm in a process of its own (deploy's default, as a real arm) or "
        "stepped and rendered inside the loop's observe()",
    )
    args = ap.parse_args()
    import torch

    from robolearn.policies.act import ACTConfig
    from robolearn.policies.diffusion import DiffusionConfig
    from robolearn.policies.mlp import MLPConfig
    from robolearn.policies.vision import VisionConfig

    torch.set_num_threads(args.threads)
    cases = args.cases.split(",")
    suffix = "" if args.device == "cpu" else f" ({args.device}, {cores()})"
    if args.device == "cpu" and os.cpu_count() != 2:
        suffix = f" ({cores()})"
    if args.inference != "thread":
        suffix += f" [{args.inference}]"
    process = args.sim == "process"
    if not process:
        suffix += " [sim in loop]"
    results: dict[str, Any] = {"cases": []}
    before = json.loads(RESULTS.read_text())["cases"] if RESULTS.exists() else []
    if "act" in cases:
        results["cases"].append(
            timing_case(
                "act@50Hz" + suffix,
                ACTConfig(),
                50.0,
                "ensemble",
                args.seconds,
                args.device,
                args.inference,
                process=process,
            )
        )
    if "floor" in cases:
        results["cases"].append(
            timing_case(
                "floor@50Hz" + suffix,
                MLPConfig(hidden_dims=[64, 64]),
                50.0,
                "blend",
                args.seconds,
                args.device,
                args.inference,
                obs_keys=("state",),
                process=process,
            )
        )
    if "diffusion" in cases:
        vision = VisionConfig(norm="group", pooling="spatial_softmax", num_keypoints=32, crop=0.875)
        results["cases"].append(
            timing_case(
                "diffusion@10Hz" + suffix,
                DiffusionConfig(vision=vision),
                10.0,
                "blend",
                args.seconds,
                args.device,
                args.inference,
                process=process,
            )
        )
    if "trained" in cases:
        for checkpoint in args.checkpoint:
            results["cases"].append(
                success_case(
                    checkpoint, args.episodes, "auto", process, "" if process else " [sim in loop]"
                )
            )
    # cases not run now keep their earlier figures
    names = {c["case"] for c in results["cases"]}
    results["cases"] = [c for c in before if c["case"] not in names] + results["cases"]
    results["cases"].sort(key=lambda c: c["case"])
    results["meta"] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cores": os.cpu_count(),
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "command": "python benchmarks/deploy.py " + " ".join(sys.argv[1:]),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    md = table(results)
    update_docs_section(DOCS, "deploy", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
