"""Success rates of policies trained on scripted demonstrations: policy × task × observation ×
budget, each evaluated over lock-step rollouts on unseen seeds with a 95% Wilson interval.

    .venv/bin/python benchmarks/success.py                                 # the demo cell
    .venv/bin/python benchmarks/success.py --policies flow,mlp --tasks pick_place,push_t
    .venv/bin/python benchmarks/success.py --budget long --obs state,image
    .venv/bin/python benchmarks/success.py --reuse RUN_DIR --mode blend,ensemble  # no training

Every cell runs the real commands' code: `robolearn record` (scripted expert, lock-step), the
trainer of `robolearn train` with configs/train/<budget>.yaml, and `robolearn eval`'s
evaluation. Stores are cached under --work and reused; results are merged into
benchmarks/results/success.json cell by cell (so a long sweep can be run in parts, and sweeps
can run side by side, one per core) and the table in docs/benchmarks.md is rebuilt from all
cells measured so far.

Budgets: `demo` is what `robolearn demo` trains (about a minute for the MLP on 2 CPU cores);
`long` is configs/train/long.yaml (see its header for its length).

Networks: `--nets cpu` (default) uses the demo's small networks (robolearn/demo.py);
`--nets full` keeps configs/policy/<policy>.yaml's sizes (diffusion policy's U-Net 256-512-1024,
ACT's 512-wide transformer), for a GPU. Observations: `state` is the joint state + the task's
object state; `image` is the joint state + a 96×96 top camera (no object state; `--camera wrist` adds a
64×64 wrist camera), seen through
`--backbone` (default `cnn`, the small network of robolearn.policies.vision that trains at
hundreds of frames/s on a CPU; `resnet18` for a GPU); image cells train on every core.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from robolearn.bench import update_docs_section  # noqa: E402
from robolearn.demo import policy_overrides  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "success.json"
DOCS = ROOT / "docs" / "benchmarks.md"
# The image cells' cameras. `wide`: one 96×96 camera named `top` with sim.robot.CameraConfig's
# default view (the workspace fills about a third of the frame; a cube is ~3 px). `framed`: the
# same camera looking at the Panda's workspace from the front at 38° (a cube is ~6 px, the hand
# rarely hides it). `wrist`: the wide top camera + a 64×64 camera riding on the hand, looking
# down past the fingers (configs/robot/sim_panda.yaml's mount), as diffusion policy's real-robot
# setups pair a static camera with a wrist one; 64×64 keeps the training cost at ~1.4× one camera.
TOP_WIDE = "{_target_: sim.robot.CameraConfig, name: top, width: 96, height: 96}"
CAMERAS = {
    "wide": [TOP_WIDE],
    "framed": [
        "{_target_: sim.robot.CameraConfig, name: top, width: 96, height: 96, "
        "eye: [1.05, 0.0, 0.7], target: [0.52, 0.0, 0.02], fov: 38}"
    ],
    "wrist": [
        TOP_WIDE,
        "{_target_: sim.robot.CameraConfig, name: wrist, mount: wrist, width: 64, height: 64, "
        "eye: [0.07, 0.0, 0.02], target: [0.0, 0.0, 0.25], up: [1.0, 0.0, 0.0]}",
    ],
}


def camera_names(camera: str) -> list[str]:
    """The observation keys of a --camera choice's cameras, in order."""
    return [c.split("name: ", 1)[1].split(",", 1)[0] for c in CAMERAS[camera]]


def record(task: str, obs: str, episodes: int, work: Path, camera: str = "wide") -> Path:
    from robolearn.cli import main as cli_main
    from robolearn.data.store import EpisodeStore

    view = f"-{camera}" if obs == "image" and camera != "wide" else ""
    path = work / f"{task}_{obs}{view}_{episodes}.zarr"
    have = 0
    if (path / "zarr.json").exists():
        with EpisodeStore.open(path) as store:
            have = store.num_episodes
    if have < episodes:
        args = [
            "record",
            "robot=sim_panda",
            f"task={task}",
            "teleop=expert",
            f"num_episodes={episodes - have}",
            f"seed={have}",
            f"dataset={path}",
            "keys=off",
            "status=off",
            f"robot.cameras=[{','.join(CAMERAS[camera])}]"
            if obs == "image"
            else "robot.cameras=[]",
        ]
        if cli_main(args) != 0:
            raise RuntimeError(f"recording {path} failed")
    return path


def run_cell(
    policy: str, task: str, obs: str, budget: str, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Record (or reuse) the store, train once, evaluate the last checkpoint in each mode."""
    from omegaconf import OmegaConf

    from robolearn.config import compose
    from robolearn.evaluate import evaluate
    from robolearn.train import find_checkpoint
    from robolearn.train_app import run_train

    work = Path(args.work)
    t0 = time.perf_counter()
    dataset = record(task, obs, args.demos, work, args.camera)
    record_s = time.perf_counter() - t0
    run_dir = work / "runs" / f"{policy}_{task}_{obs}_{budget}_{time.strftime('%m%d-%H%M%S')}"
    cfg = compose(
        "train",
        [f"dataset={dataset}", f"policy={policy}", f"train={budget}", f"run_dir={run_dir}"]
        + ([f"train.steps={args.steps}"] if args.steps else [])
        + ([f"train.batch_size={args.batch_size}"] if args.batch_size else [])
        + ([f"train.seed={args.seed}"] if args.seed else [])
        # the demo budget runs 1 thread, the long budget torch's default (every core);
        # image cells every core
        + (["train.threads=null"] if obs == "image" else [])
        + ([f"train.threads={args.threads}"] if args.threads else []),
    )
    overrides = policy_overrides(policy)
    if args.nets == "full":
        keep = ("obs_keys", "action_keys", "relative_actions")
        overrides = {k: v for k, v in overrides.items() if k in keep}
    if obs == "image":
        overrides["obs_keys"] = ["state", *camera_names(args.camera)]
        overrides["vision.backbone"] = args.backbone
    if args.actions != "auto":
        overrides["relative_actions"] = args.actions == "relative"
    overrides.update(policy_set(args.policy_set))
    for key, value in overrides.items():
        OmegaConf.update(cfg.policy, key, value, merge=False)
    t0 = time.perf_counter()
    assert run_train(cfg) == 0
    train_s = time.perf_counter() - t0
    log = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in log if r["kind"] == "train"]
    env = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml").env)
    cells = []
    for mode in args.mode.split(","):
        report = evaluate(
            find_checkpoint(run_dir, "last"),
            env,  # type: ignore[arg-type]
            episodes=args.episodes,
            videos=1,
            out_dir=run_dir
            / "eval"
            / (mode + (f"_{args.n_action_steps}" if args.n_action_steps else "")),
            mode=mode,
            n_action_steps=args.n_action_steps,
        )
        cells.append(_cell(policy, task, obs, budget, args, cfg, report, run_dir))
        cells[-1].update(record_s=record_s, train_s=train_s, samples_per_s=_median(rates))
    return cells


def reeval(run_dir: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Evaluate a run measured before (a cell in --results names it) in each of --mode's modes
    without training again: one cell per mode, with the run's own training figures, so that a
    difference between modes is the execution's alone (the same weights)."""
    from omegaconf import OmegaConf

    from robolearn.evaluate import evaluate
    from robolearn.train import find_checkpoint

    run_dir = run_dir.resolve()
    prior = [c for c in load(args.results)["cells"] if Path(c["run_dir"]).resolve() == run_dir]
    if not prior:
        raise SystemExit(
            f"--reuse {run_dir}: no cell in {args.results} was trained in this run; "
            "give the run_dir of a cell in the table (benchmarks/results/success.json)"
        )
    env = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml").env)
    cells = []
    for mode in args.mode.split(","):
        report = evaluate(
            find_checkpoint(run_dir, "last"),
            env,  # type: ignore[arg-type]
            episodes=args.episodes,
            videos=1,
            out_dir=run_dir
            / "eval"
            / (mode + (f"_{args.n_action_steps}" if args.n_action_steps else "")),
            mode=mode,
            n_action_steps=args.n_action_steps,
        )
        cell = {k: v for k, v in prior[0].items() if k not in _EVAL_FIELDS}
        cell.update(
            mode=report.mode,
            n_action_steps=report.n_action_steps,
            episodes=report.episodes,
            successes=report.successes,
            success_rate=report.success_rate,
            ci95=list(report.ci95),
            mean_score=report.mean_score,
            score_ci95=list(report.score_ci95) if report.score_ci95 else None,
            mean_steps=report.mean_steps,
            eval_s=report.wall_s,
            measured=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            evaluated_at=_commit(),  # the cell's `commit` stays the one it was trained at
        )
        cells.append(cell)
    return cells


# What an evaluation measures (replaced when --reuse evaluates a run again).
_EVAL_FIELDS = (
    "mode",
    "n_action_steps",
    "episodes",
    "successes",
    "success_rate",
    "ci95",
    "mean_score",
    "score_ci95",
    "mean_steps",
    "eval_s",
    "measured",
    "evaluated_at",
)


def policy_set(items: list[str] | None) -> dict[str, Any]:
    """`--policy-set KEY=VALUE` overrides of the policy config, the values parsed as YAML
    (`n_obs_steps=1`, `hidden_dims=[512,512]`); a bad item names the fix."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--policy-set {item!r}: write KEY=VALUE, e.g. n_obs_steps=1")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _median(xs: list[float]) -> float | None:
    return float(sorted(xs)[len(xs) // 2]) if xs else None


def _cell(policy, task, obs, budget, args, cfg, report, run_dir) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return {
        "policy": policy,
        "task": task,
        "obs": obs,
        "vision": cfg.policy.vision.backbone if obs == "image" else None,
        "camera": args.camera if obs == "image" else None,
        "budget": budget,
        "nets": args.nets,
        "actions": "relative" if cfg.policy.get("relative_actions") else "absolute",
        "mode": report.mode,
        "n_action_steps": report.n_action_steps,
        "policy_set": policy_set(args.policy_set) or None,
        "seed": int(cfg.train.seed),
        "device": _device(),
        "demos": args.demos,
        "steps": int(cfg.train.steps),
        "batch_size": int(cfg.train.batch_size),
        "episodes": report.episodes,
        "successes": report.successes,
        "success_rate": report.success_rate,
        "ci95": list(report.ci95),
        "mean_score": report.mean_score,
        "score_ci95": list(report.score_ci95) if report.score_ci95 else None,
        "mean_steps": report.mean_steps,
        "eval_s": report.wall_s,
        "run_dir": str(run_dir),
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": _commit(),
    }


def _device() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({os.cpu_count()} cores)"


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        )
        return out.stdout.strip()
    except OSError:
        return "?"


def load(path: Path = RESULTS) -> dict[str, Any]:
    if path.exists():
        return json.loads(path.read_text())
    return {"cells": []}


def save(results: dict[str, Any], path: Path = RESULTS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(path)


def merge(cell: dict[str, Any], path: Path = RESULTS) -> dict[str, Any]:
    """Put `cell` into the results at `path` (replacing the cell it re-measures) and rebuild the
    docs table. Reads the file afresh under a lock, so sweeps run side by side (one cell per
    core) do not overwrite each other's cells."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = load(path)
        results["cells"] = [c for c in results["cells"] if _key(c) != _key(cell)] + [cell]
        save(results, path)
        if path == RESULTS:
            update_docs_section(DOCS, "success", table(results))
    return results


def _key(cell: dict[str, Any]) -> tuple[Any, ...]:
    """One row per policy, task, observations, budget, network size, number of demos, actions
    and execution mode."""
    return (
        cell["policy"],
        cell["task"],
        cell["obs"],
        cell.get("vision"),
        cell.get("camera") or ("wide" if cell["obs"] == "image" else None),
        cell["budget"],
        cell.get("nets", "cpu"),
        cell["demos"],
        cell.get("actions", "absolute"),
        cell.get("mode", "sync"),
        cell.get("n_action_steps"),
        json.dumps(cell.get("policy_set"), sort_keys=True),
        cell.get("seed", 0),
    )


def _pct(rate: float) -> str:
    """92%, or 99.5% where a whole percent would round 199/200 up to 100%."""
    return f"{rate:.0%}" if abs(rate * 100 - round(rate * 100)) < 1e-9 else f"{rate:.1%}"


def _mode(cell: dict[str, Any]) -> str:
    """The execution mode, with the actions executed per chunk where they are not the policy's."""
    n = cell.get("n_action_steps")
    return cell.get("mode", "sync") + (f", {n} per chunk" if n else "")


def _nets(cell: dict[str, Any]) -> str:
    """The network sizes, with any `--policy-set` overrides of the cell and its training seed
    where it is not the default (0)."""
    extra = cell.get("policy_set") or {}
    seed = [f"seed {cell['seed']}"] if cell.get("seed") else []
    return ", ".join(
        [cell.get("nets", "cpu"), *(f"{k}={v}" for k, v in sorted(extra.items())), *seed]
    )


def _obs(cell: dict[str, Any]) -> str:
    """The observations, with the vision backbone of image cells."""
    if cell["obs"] != "image":
        return cell["obs"]
    camera = cell.get("camera") or "wide"
    view = "wide top + 64×64 wrist" if camera == "wrist" else f"{camera} view"
    return f"image ({cell.get('vision', 'resnet18')}, {view})"


def _score(cell: dict[str, Any]) -> str:
    """The mean score, with its 95 % interval where it says more than the success rate does
    (push_t's coverage)."""
    text = f"{cell['mean_score']:.2f}"
    ci = cell.get("score_ci95")
    if ci and abs(cell["mean_score"] - cell["success_rate"]) > 1e-9:
        text += f" ({ci[0]:.2f}–{ci[1]:.2f})"
    return text


SUMMARY_COLUMNS = [
    ("pick_place", "state"),
    ("push_cube", "state"),
    ("stack", "state"),
    ("push_t", "state"),
    ("reach", "state"),
    ("pick_place", "image"),
    ("push_t", "image"),
]
POLICIES = ["mlp", "flow", "diffusion", "act"]
_SHORT_MODE = {"ensemble": "ens", "blend": "blend", "sync": "sync", "receding": "reced"}


def _rank(cell: dict[str, Any]) -> tuple[float, float]:
    """What makes a cell the best of its policy × task × budget: push_t's mean coverage, the
    success rate elsewhere; then the interval's lower bound (more episodes win a tie)."""
    if cell["task"] == "push_t":
        return (cell["mean_score"], (cell.get("score_ci95") or [0.0])[0])
    return (cell["success_rate"], cell["ci95"][0])


def _summary_entry(cell: dict[str, Any]) -> str:
    value = f"{cell['mean_score']:.2f}" if cell["task"] == "push_t" else _pct(cell["success_rate"])
    n = cell.get("n_action_steps")
    how = [
        "rel" if cell.get("actions") == "relative" else "abs",
        _SHORT_MODE.get(cell.get("mode", "sync"), cell.get("mode", "sync"))
        + (f" {n}" if n else ""),
        str(cell["demos"]),
    ]
    if cell["obs"] == "image":
        how.append(cell.get("camera") or "wide")
    return f"**{value}** ({', '.join(how)})"


def summary(results: dict[str, Any]) -> str:
    """The best cell of each policy × task × budget, one row per policy and budget: the table
    the issue asks for, at a glance (the rows below hold every cell)."""
    best: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for c in results["cells"]:
        key = (c["policy"], c["budget"], c["task"], c["obs"])
        if key not in best or _rank(c) > _rank(best[key]):
            best[key] = c
    policies = POLICIES + sorted({c["policy"] for c in results["cells"]} - set(POLICIES))
    head = " | ".join(f"{t} ({o})" for t, o in SUMMARY_COLUMNS)
    lines = [
        "### The best cell of each policy × task × budget",
        "",
        "Success rate (push_t: mean coverage of the T) of the best row below for each policy, "
        "task and budget, with how it got there: (abs / rel joint targets, execution mode and "
        "actions per chunk where not the policy's own, demonstrations, and the camera for "
        "images). — : not measured. Each entry is one training seed; see the rows for the "
        "intervals.",
        "",
        f"| policy | budget | {head} |",
        "|---|---|" + "---|" * len(SUMMARY_COLUMNS),
    ]
    for policy in policies:
        for budget in ("demo", "long"):
            entries = [
                _summary_entry(best[(policy, budget, t, o)])
                if (policy, budget, t, o) in best
                else "—"
                for t, o in SUMMARY_COLUMNS
            ]
            lines.append(f"| {policy} | {budget} | {' | '.join(entries)} |")
    return "\n".join(lines)


def table(results: dict[str, Any]) -> str:
    rows = sorted(
        results["cells"],
        key=lambda c: (
            c["task"],
            c["obs"],
            c["budget"],
            c.get("nets", "cpu"),
            c["policy"],
            c.get("actions", "absolute"),
            c["demos"],
            c.get("mode", "sync"),
            c.get("n_action_steps") or 0,
        ),
    )
    lines = [
        "## Success rates (policies trained on scripted demonstrations)",
        "",
        "Command: `.venv/bin/python benchmarks/success.py [--policies …] [--tasks …] [--obs …] "
        "[--budget demo|long] [--nets cpu|full] [--mode auto|sync|blend|ensemble,…]`. Simulated Panda, lock-step; each cell records "
        "the scripted expert's demonstrations (seeds 0…), trains with "
        "configs/train/<budget>.yaml and evaluates the last checkpoint on unseen seeds 100000… "
        "Success: the task's own check (push_t: 90 % of the T covered, since 2026-12-06; "
        "earlier push_t cells used a 2 cm / 10° window and were dropped); score: push_t's best "
        "area coverage in the episode, its mean with a 95 % interval (1 on success for the "
        "other tasks). nets: `cpu` = the demo's small networks, `full` = the policy configs' "
        "own sizes; image cells name their vision backbone (`--backbone`). actions: absolute joint targets, or `relative` to the joint state "
        "(`policy.relative_actions`, `--actions`). mode: how the evaluation executed the chunks "
        "(robolearn.runner; the cells before 2026-12-06 ran `sync`, since then `robolearn "
        "eval`'s default `auto`, the policy's own; `--mode`), and, where named, how many "
        "actions of each chunk (`--n-action-steps`; otherwise the policy's own); rows "
        "of one run in several modes evaluate the same weights (`--reuse RUN_DIR` evaluates "
        "a measured run again). Trained on: the device of the training run "
        "(evaluation always on CPU worker processes). commit: the commit the run trained at.",
        "",
        summary(results),
        "",
        "### Every cell",
        "",
        "| task | obs | policy | nets | actions | mode | budget | demos | steps × batch "
        "| trained on | train min | samples/s | success | 95% CI | mean score | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in rows:
        lo, hi = c["ci95"]
        lines.append(
            f"| {c['task']} | {_obs(c)} | {c['policy']} | {_nets(c)} | "
            f"{c.get('actions', 'absolute')} | {_mode(c)} | {c['budget']} | {c['demos']} | {c['steps']} × {c['batch_size']} | "
            f"{c.get('device', 'CPU (2 cores)')} | {c['train_s'] / 60:.1f} | "
            f"{c['samples_per_s'] or 0:,.0f} | **{c['successes']}/{c['episodes']} = "
            f"{_pct(c['success_rate'])}** | {lo:.0%}–{hi:.0%} | {_score(c)} | "
            f"{c['commit']} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policies", default="flow")
    ap.add_argument("--tasks", default="pick_place")
    ap.add_argument("--obs", default="state", help="state, image or both (comma-separated)")
    ap.add_argument("--budget", default="demo", help="demo, long or both (comma-separated)")
    ap.add_argument("--episodes", type=int, default=50, help="evaluation rollouts per cell")
    ap.add_argument("--demos", type=int, default=200, help="demonstrations per store")
    ap.add_argument("--work", default="/tmp/robolearn_success", help="stores and runs")
    ap.add_argument("--nets", default="cpu", choices=["cpu", "full"], help="network sizes")
    ap.add_argument(
        "--backbone",
        default="cnn",
        choices=["cnn", "resnet18"],
        help="the image cells' vision backbone (policy.vision.backbone)",
    )
    ap.add_argument(
        "--camera", default="wide", choices=sorted(CAMERAS), help="the image cells' view"
    )
    ap.add_argument(
        "--actions",
        default="auto",
        choices=["auto", "absolute", "relative"],
        help="absolute joint targets or relative to the joint state (auto: the demo's choice)",
    )
    ap.add_argument(
        "--mode",
        default="auto",
        help="how evaluation executes the chunks (robolearn.runner's modes; auto: the policy's "
        "own); comma-separated evaluates the same checkpoint in each, one row per mode",
    )
    ap.add_argument(
        "--n-action-steps", type=int, help="actions executed per chunk (default: the policy's)"
    )
    ap.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads of the training (default: the budget's); 1 for cells run "
        "side by side, one per core",
    )
    ap.add_argument("--steps", type=int, help="training steps instead of the budget's")
    ap.add_argument("--batch-size", type=int, help="batch size instead of the budget's")
    ap.add_argument(
        "--seed",
        type=int,
        default=0,
        help="training seed (train.seed); each seed is its own row, so repeats of a cell "
        "measure how much its success depends on the training run",
    )
    ap.add_argument(
        "--policy-set",
        action="append",
        metavar="KEY=VALUE",
        help="override a policy config field for every cell (repeatable; e.g. n_obs_steps=1)",
    )
    ap.add_argument("--results", type=Path, default=RESULTS, help="JSON of all cells")
    ap.add_argument("--table-only", action="store_true", help="rebuild the docs table")
    ap.add_argument(
        "--reuse",
        type=Path,
        metavar="RUN_DIR",
        help="evaluate this measured run again in --mode's modes instead of training",
    )
    args = ap.parse_args()
    results = load(args.results)
    if args.reuse:
        for cell in reeval(args.reuse, args):
            results = merge(cell, args.results)
            print(json.dumps(cell), flush=True)
    elif not args.table_only:
        for budget in args.budget.split(","):
            for task in args.tasks.split(","):
                for obs in args.obs.split(","):
                    for policy in args.policies.split(","):
                        for cell in run_cell(policy, task, obs, budget, args):
                            results = merge(cell, args.results)
                            print(json.dumps(cell), flush=True)
    update_docs_section(DOCS, "success", table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
