"""Why a policy fails at pick_place or push_cube: lock-step rollouts of a checkpoint, each failure
put in a class.

    .venv/bin/python benchmarks/failures.py RUN_DIR [--episodes 200] [--mode sync]
        [--n-action-steps N] [--workers 2] [--out failures.json]

pick_place classes (from the cube's and the hand's positions when the episode timed out):

- `held in the air`: the cube is still in the hand above the table (the policy stopped short
  of putting it down);
- `dropped off target`: it was lifted, and now lies on the table off the target disc;
- `never lifted`: it never rose more than one cube height (a missed grasp);
- `on target, not resting`: over the disc but not down on it.

push_cube classes:

- `tipped or lifted`: the cube no longer rests upright on the table;
- `never moved`: the cube never left its start by more than 5 mm (the fingers never pushed it);
- `passed through`: its centre was inside the disc at some tick but ended outside (overshot,
  or pushed on past the target);
- `short of the target`: it ended nearer the target than it started, but not inside;
- `pushed away`: it ended at least as far from the target as it started.

Each row also has the closest the cube came to the target's centre (`closest_m`), so a policy
that hovers near the target tells apart from one that never got there, and, for push_cube, how
many ticks before the end the cube last moved (`idle_ticks`: a policy that stalls behind the
cube has many). Runs the same executor as `robolearn eval` (`robolearn.evaluate.ChunkExecutor`)
on the run's own robot config.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def classify(row: dict[str, Any], half: float) -> str:
    if row["success"]:
        return "success"
    if row["lifted_at"] is None:
        return "never lifted"
    if row["cube_z"] > 2 * half:
        return "held in the air"
    if row["final_m"] >= row["radius"]:
        return "dropped off target"
    return "on target, not resting"


MOVED = 0.005  # metres the cube must leave its start by for push_cube's `never moved`


def classify_push(row: dict[str, Any], half: float) -> str:
    if row["success"]:
        return "success"
    if abs(row["cube_z"] - half) >= 0.2 * half:
        return "tipped or lifted"
    if row["moved_at"] is None:
        return "never moved"
    if row["inside_at"] is not None:
        return "passed through"
    if row["final_m"] < row["start_m"]:
        return "short of the target"
    return "pushed away"


def rollouts(args: tuple[str, str, list[int], str, int | None]) -> list[dict[str, Any]]:
    checkpoint, run_dir, seeds, mode, n_action_steps = args
    import torch
    from omegaconf import OmegaConf

    from robolearn.evaluate import ChunkExecutor, _TickClock, make_sim_robot
    from robolearn.policies import Policy
    from robolearn.runner import PolicyRunner, RunnerConfig
    from sim.tasks.objects import pose

    torch.set_num_threads(1)
    env = OmegaConf.to_container(OmegaConf.load(Path(run_dir) / "config.yaml").env)
    policy = Policy.load(checkpoint)
    ex = ChunkExecutor(policy, None, mode)
    if n_action_steps:
        cfg = RunnerConfig(mode=mode, inference="inline", n_action_steps=n_action_steps)
        ex.runner = PolicyRunner(policy, 1.0, cfg, clock=_TickClock())
    rows = []
    with make_sim_robot(env, policy.image_keys) as robot:  # type: ignore[arg-type]
        task = robot.task
        if task.name not in ("pick_place", "push_cube"):
            raise SystemExit(
                f"this analysis is for pick_place and push_cube; the run's task is {task.name}"
            )
        client = task.world.client
        for seed in seeds:
            obs = robot.reset(seed)
            ex.reset()
            target = pose(client, task.target)[0][:2]
            start = pose(client, task.cube)[0]
            last = start
            closest = float(np.linalg.norm(start[:2] - target))
            steps, success, lifted_at = 0, False, None
            moved_at = inside_at = None
            last_moved = 0
            while not success and steps < task.max_steps:
                robot.act(ex(obs))
                robot.clock.sleep_until(robot.clock.now() + 1 / task.config.control_hz)
                obs = robot.observe()
                steps += 1
                success = bool(task.success())
                cube = pose(client, task.cube)[0]
                if lifted_at is None and cube[2] > 3 * task.half:
                    lifted_at = steps
                to_target = float(np.linalg.norm(cube[:2] - target))
                closest = min(closest, to_target)
                if moved_at is None and np.linalg.norm(cube[:2] - start[:2]) > MOVED:
                    moved_at = steps
                if inside_at is None and to_target < task.radius:
                    inside_at = steps
                if np.linalg.norm(cube - last) > 0.0005:  # half a millimetre in one tick
                    last_moved = steps
                last = cube
            cube = pose(client, task.cube)[0]
            row = {
                "seed": seed,
                "success": success,
                "steps": steps,
                "lifted_at": lifted_at,
                "cube_z": float(cube[2]),
                "start_m": float(np.linalg.norm(start[:2] - target)),
                "final_m": float(np.linalg.norm(cube[:2] - target)),
                "closest_m": closest,
                "hand_to_cube_m": float(np.linalg.norm(obs["ee_pose"][:3] - cube)),
                "radius": task.radius,
                "half": task.half,
                "moved_at": moved_at,
                "inside_at": inside_at,
                "idle_ticks": steps - last_moved,
            }
            push = task.name == "push_cube"
            row["class"] = (classify_push if push else classify)(row, task.half)
            rows.append(row)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("run_dir", type=Path, help="a training run directory")
    ap.add_argument("--checkpoint", help="default: RUN_DIR/checkpoints/last")
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--seed", type=int, default=100000, help="first evaluation seed")
    ap.add_argument("--mode", default="sync", help="sync | receding | blend | ensemble")
    ap.add_argument("--n-action-steps", type=int, help="actions per chunk instead of the policy's")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, help="write every episode's row here (JSON)")
    args = ap.parse_args()
    checkpoint = args.checkpoint or str(args.run_dir / "checkpoints" / "last")
    seeds = list(range(args.seed, args.seed + args.episodes))
    parts = [seeds[i :: args.workers] for i in range(args.workers)]
    jobs = [(checkpoint, str(args.run_dir), p, args.mode, args.n_action_steps) for p in parts]
    with mp.get_context("spawn").Pool(len(jobs)) as pool:
        rows = sorted(
            (r for part in pool.map(rollouts, jobs) for r in part), key=lambda r: r["seed"]
        )
    counts = Counter(r["class"] for r in rows)
    print(f"{checkpoint} · mode {args.mode} · {len(rows)} episodes from seed {args.seed}")
    for name, n in counts.most_common():
        near = [r["closest_m"] for r in rows if r["class"] == name]
        idle = [r["idle_ticks"] for r in rows if r["class"] == name]
        print(
            f"  {name:24s} {n:4d}  closest to the target's centre: median {np.median(near):.3f} m"
            f" · the cube still for the last {np.median(idle):.0f} ticks (median)"
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
