"""robolearn against LeRobot on one machine, side by side, on ANCHORS.md's benchmark profile.

    .venv/bin/python benchmarks/vs_lerobot.py                 # inference and training
    .venv/bin/python benchmarks/vs_lerobot.py --only infer --calls 40

Both libraries build the same architectures (ANCHORS.md: ACT with ResNet-18, dim 512, 4+1
layers, chunk 100; diffusion policy with ResNet-18 GroupNorm + spatial softmax, crop 84×84,
U-Net 256-512-1024, 10 DDIM steps) from LeRobot 0.6.1's own `ACTPolicy` / `DiffusionPolicy`
(installed with `robolearn[hardware]` or the dev group) and robolearn's policies, on a 14-dim
state + one 96×96 camera with 14-dim actions, fresh weights (nothing is downloaded), fp32, batch 1.
The two alternate call by call (and step by step when training) in one process, so that the
load of a shared machine weighs on both alike (ANCHORS.md: figures drift by up to 25 % between
runs). Reported: p50 / p90 / min of each, and robolearn's time as a fraction of LeRobot's.

- Inference: LeRobot's `predict_action_chunk` on already normalised tensors (its processors
  normalise outside the policy) against robolearn's `predict_chunk` on raw uint8 images and
  states (normalisation included). Flow matching (5 Euler steps) is set against LeRobot's diffusion.
- Training: forward + backward + AdamW at batch 8 with the camera; robolearn's diffusion also
  updates its EMA of the weights (LeRobot keeps none), so it does more work per step.

Results: benchmarks/results/vs_lerobot.json and docs/benchmarks.md ("vs LeRobot").
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import policies as profile  # noqa: E402

from robolearn.bench import update_docs_section  # noqa: E402
from robolearn.training import OptimConfig, Optimizer  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "vs_lerobot.json"
DOCS = ROOT / "docs" / "benchmarks.md"
STATE, IMAGE = "observation.state", "observation.images.top"


def lerobot_policy(kind: str) -> torch.nn.Module:
    """LeRobot's own build of the profile's architecture (no pretrained backbone)."""
    from lerobot.configs.types import FeatureType, PolicyFeature

    features = {
        STATE: PolicyFeature(type=FeatureType.STATE, shape=(14,)),
        IMAGE: PolicyFeature(type=FeatureType.VISUAL, shape=(3, 96, 96)),
    }
    action = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(14,))}
    if kind == "act":
        from lerobot.policies.act.configuration_act import ACTConfig
        from lerobot.policies.act.modeling_act import ACTPolicy

        config = ACTConfig(
            input_features=features,
            output_features=action,
            device="cpu",
            pretrained_backbone_weights=None,
            chunk_size=100,
            n_action_steps=100,
        )
        return ACTPolicy(config)
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    config = DiffusionConfig(
        input_features=features,
        output_features=action,
        device="cpu",
        pretrained_backbone_weights=None,
        use_group_norm=True,
        crop_shape=(84, 84),
        down_dims=(256, 512, 1024),
        horizon=16,
        n_action_steps=8,
        noise_scheduler_type="DDIM",
        num_inference_steps=10,
    )
    return DiffusionPolicy(config)


def lerobot_observation(kind: str, batch: int) -> dict[str, torch.Tensor]:
    """Normalised inputs as LeRobot's pre-processor hands them to the policy."""
    if kind == "act":
        return {STATE: torch.randn(batch, 14), IMAGE: torch.randn(batch, 3, 96, 96)}
    return {STATE: torch.randn(batch, 2, 14), IMAGE: torch.randn(batch, 2, 3, 96, 96)}


def lerobot_batch(kind: str, batch: int) -> dict[str, torch.Tensor]:
    out = lerobot_observation(kind, batch)
    horizon = 100 if kind == "act" else 16
    out["action"] = torch.randn(batch, horizon, 14)
    out["action_is_pad"] = torch.zeros(batch, horizon, dtype=torch.bool)
    return out


def params(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def stats(times: list[float]) -> dict[str, float]:
    ms = np.asarray(times) * 1000
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "min_ms": float(ms.min()),
        "calls": len(ms),
    }


def alternate(fns: dict[str, Callable[[], object]], warmup: int, calls: int) -> dict[str, dict]:
    """Each function's times, called in turn (a, b, a, b, …) after `warmup` rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(calls):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: stats(t) for name, t in times.items()}


def inference(calls: int) -> list[dict[str, Any]]:
    rows = []
    ours_configs = profile.configs()
    for ours_name, theirs_name in (
        ("act", "act"),
        ("diffusion", "diffusion"),
        ("flow", "diffusion"),
    ):
        torch.manual_seed(0)
        theirs = lerobot_policy(theirs_name).eval()
        ours = profile.make_policy(ours_configs[ours_name], profile.spec(True)).eval()
        half = copy.deepcopy(ours)  # the same weights, float16 in the CPU products
        half.config.inference_dtype = "float16"
        lobs = lerobot_observation(theirs_name, 1)
        obs = profile.observation(ours, 1)

        def run_theirs(p: Any = theirs, o: dict = lobs) -> None:
            p.reset()
            p.predict_action_chunk(o)

        def run_ours(p: Any = ours, o: dict = obs) -> None:
            p.predict_chunk(o)

        def run_half(p: Any = half, o: dict = obs) -> None:
            p.predict_chunk(o)

        torch.manual_seed(1)
        a = ours.predict_chunk(obs)
        torch.manual_seed(1)
        b = half.predict_chunk(obs)
        span = (
            ours.unnormalize_actions(torch.ones(1, 14))
            - ours.unnormalize_actions(-torch.ones(1, 14))
        ).abs()
        fns = {"robolearn": run_ours, "robolearn_fp16": run_half, "lerobot": run_theirs}
        with torch.inference_mode():
            out = alternate(fns, 3, calls)
        row = {
            "kind": "inference",
            "robolearn": ours_name,
            "lerobot": theirs_name,
            "robolearn_params_m": params(ours),
            "lerobot_params_m": params(theirs),
            **{f"{k}_{name}": v for name, s in out.items() for k, v in s.items()},
        }
        row["ratio_p50"] = row["p50_ms_robolearn"] / row["p50_ms_lerobot"]
        row["ratio_p50_fp16"] = row["p50_ms_robolearn_fp16"] / row["p50_ms_lerobot"]
        # float16 against float32 weights, same noise: the largest difference, per action range
        row["fp16_max_diff_of_range"] = float(((a - b).abs() / span).max())
        print(json.dumps(row), flush=True)
        rows.append(row)
        del theirs, ours, half
    return rows


def training(steps: int) -> list[dict[str, Any]]:
    return [training_row(name, steps) for name in ("act", "diffusion")]


def training_row(name: str, steps: int) -> dict[str, Any]:
    torch.manual_seed(0)
    theirs = lerobot_policy(name).train()
    ours = profile.make_policy(profile.configs()[name], profile.spec(True)).train()
    their_opt = torch.optim.AdamW(theirs.parameters(), lr=1e-4, weight_decay=1e-4)
    our_opt = Optimizer(ours, OptimConfig(ema=name != "act", warmup_steps=10), 1000)
    their_batch = lerobot_batch(name, 8)
    our_batch = profile.training_batch(ours, 8)

    def step_theirs() -> None:
        loss, _ = theirs(their_batch)
        their_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 10.0)
        their_opt.step()

    def step_ours() -> None:
        our_opt.step(our_batch)

    out = alternate({"robolearn": step_ours, "lerobot": step_theirs}, 2, steps)
    row = {
        "kind": "training",
        "robolearn": name,
        "lerobot": name,
        "batch": 8,
        **{f"{k}_{n}": v for n, s in out.items() for k, v in s.items()},
    }
    row["ratio_p50"] = row["p50_ms_robolearn"] / row["p50_ms_lerobot"]
    print(json.dumps(row), flush=True)
    return row


def table(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        "## robolearn vs LeRobot, side by side on one machine",
        "",
        f"Command: `{meta['command']}` · {meta['date']} · {meta['cores']} cores, "
        f"{meta['threads']} threads, torch {meta['torch']}, lerobot {meta['lerobot']}. "
        "ANCHORS.md's profile (14-dim state + one 96×96 camera, 14-dim action), fresh weights, "
        "fp32; the two libraries' calls alternate in one process. LeRobot's policies get "
        "already-normalised tensors; robolearn's `predict_chunk` gets raw uint8 frames and "
        "normalises inside. robolearn's diffusion training step also updates its EMA. float16 "
        "weights: `inference_dtype: float16` (FBGEMM products on float16 copies of the weights, "
        "float32 inputs and accumulation), with its largest change to any action of the same "
        "seed's chunk, as a fraction of that action's normalised span (its min–max range; for "
        "ACT, which normalises by mean and standard deviation, 2 σ).",
        "",
        "| | robolearn | LeRobot | robolearn p50 / p90 / min | LeRobot p50 / p90 / min "
        "| robolearn ÷ LeRobot (p50) | target | robolearn, float16 weights: p50, ÷ LeRobot "
        "(largest action change) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    targets = {
        ("inference", "act"): 0.5,
        ("inference", "diffusion"): 0.5,
        ("inference", "flow"): 0.25,
        ("training", "act"): 1.0,
        ("training", "diffusion"): 1.0,
    }
    for r in results["rows"]:
        unit = "ms" if r["kind"] == "inference" else "ms/step"
        what = "batch-1 inference" if r["kind"] == "inference" else f"training, batch {r['batch']}"
        ours = f"{r['robolearn']} ({r.get('robolearn_params_m', 0):.1f} M)"
        theirs = f"{r['lerobot']} ({r.get('lerobot_params_m', 0):.1f} M)"
        if r["kind"] == "training":
            ours, theirs = r["robolearn"], r["lerobot"]
        target = targets.get((r["kind"], r["robolearn"]))
        verdict = ""
        if target is not None:
            verdict = f"≤ {target:g}: " + ("met" if r["ratio_p50"] <= target else "**missed**")
        half = "—"
        if "ratio_p50_fp16" in r:
            verdict16 = ""
            if target is not None:
                verdict16 = ", met" if r["ratio_p50_fp16"] <= target else ", **missed**"
            half = (
                f"{r['p50_ms_robolearn_fp16']:.1f} ms, **{r['ratio_p50_fp16']:.2f}**{verdict16} "
                f"({r['fp16_max_diff_of_range']:.1e} of the range)"
            )
        lines.append(
            f"| {what} | {ours} | {theirs} | "
            f"{r['p50_ms_robolearn']:.1f} / {r['p90_ms_robolearn']:.1f} / "
            f"{r['min_ms_robolearn']:.1f} {unit} | {r['p50_ms_lerobot']:.1f} / "
            f"{r['p90_ms_lerobot']:.1f} / {r['min_ms_lerobot']:.1f} {unit} | "
            f"**{r['ratio_p50']:.2f}** | {verdict} | {half} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=30, help="inference calls of each")
    ap.add_argument("--steps", type=int, default=8, help="training steps of each")
    ap.add_argument("--only", choices=["infer", "train"], help="one half")
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args()
    try:
        import lerobot
    except ImportError:
        ap.error("needs lerobot: `uv sync` (the dev group) or pip install 'robolearn[hardware]'")
    torch.set_num_threads(args.threads)
    rows = []
    if args.only != "train":
        rows += inference(args.calls)
    if args.only != "infer":
        rows += training(args.steps)
    before = json.loads(RESULTS.read_text())["rows"] if RESULTS.exists() else []
    keys = {(r["kind"], r["robolearn"]) for r in rows}
    rows = [r for r in before if (r["kind"], r["robolearn"]) not in keys] + rows
    rows.sort(key=lambda r: (r["kind"], r["robolearn"]))
    results = {
        "rows": rows,
        "meta": {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
            "lerobot": getattr(lerobot, "__version__", "?"),
            "command": "python benchmarks/vs_lerobot.py " + " ".join(sys.argv[1:]),
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    md = table(results)
    print(md)
    if not args.no_docs:
        update_docs_section(DOCS, "vs_lerobot", md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
