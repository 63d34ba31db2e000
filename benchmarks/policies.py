"""Policy benchmark on ANCHORS.md's profile: parameters, training step time, predict_chunk latency.

Run from the repository root::

    .venv/bin/python benchmarks/policies.py            # full run, about 10 minutes on 2 cores
    .venv/bin/python benchmarks/policies.py --quick    # fewer calls, a smoke run
    python benchmarks/policies.py --device cuda        # on a GPU: benchmarks/results/policies_cuda.json

On CUDA the latency includes the host-to-device copy of the observation and the copy of the
chunk back (what a deployment pays), each call ends with a synchronisation, and training steps
run under bf16 autocast as `robolearn train` does there (train.amp=auto).

Profile (../shared/ANCHORS.md): 14-dim state + one 96×96 RGB camera, 14-dim action, CPU,
`torch.set_num_threads(2)`; latency at batch 1 after warm-up, p50 / p90 of ≥ 20 calls.
ACT: ResNet-18, dim 512, 8 heads, FF 3200, 4 encoder / 1 decoder / 4 VAE layers, latent 32,
chunk 100. Diffusion: ResNet-18 GroupNorm + spatial softmax (32 keypoints), crop 84×84,
n_obs_steps 2, horizon 16, U-Net (256, 512, 1024) kernel 5 FiLM, DDIM 10 steps. Flow: the same
networks, 5 Euler steps. Training steps are forward + backward + AdamW (+ EMA for the
generative policies, as they train) on batches shaped like SequenceDataset's.

The compute bound is estimated from counted FLOPs (torch.utils.flop_counter) at ~175 GFLOP/s,
and the memory bound from the weights read per network call at ~32 GB/s (batch 1 inference
reads every weight once per denoising step).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from robolearn.bench import update_docs_section
from robolearn.policies import Policy, PolicyConfig, make_policy
from robolearn.policies.act import ACTConfig
from robolearn.policies.denoisers import DenoiserConfig, set_fast_inference
from robolearn.policies.diffusion import DiffusionConfig
from robolearn.policies.flow import FlowConfig
from robolearn.policies.mlp import MLPConfig
from robolearn.policies.vision import VisionConfig
from robolearn.spec import Feature, FeatureSpec
from robolearn.training import OptimConfig, Optimizer

ROOT = Path(__file__).resolve().parent.parent
GFLOPS = 175.0
GBPS = 32.0
# LeRobot 0.6.1 on this machine class (ANCHORS.md)
LEROBOT_INFER_MS = {"act": 34.0, "diffusion": 490.0}
LEROBOT_TRAIN_S = {
    ("act", "camera", 8): 1.13,
    ("diffusion", "camera", 8): 0.60,
    ("diffusion", "state", 64): 1.05,
    ("diffusion", "state", 256): 2.9,
}


DEVICE = torch.device("cpu")


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def spec(camera: bool) -> FeatureSpec:
    features = {"state": Feature((14,), "float32", "state")}
    if camera:
        features["top"] = Feature((96, 96, 3), "uint8", "image")
    features["action"] = Feature((14,), "float32", "action")
    return FeatureSpec(features)


DIFFUSION_VISION = VisionConfig(
    norm="group", pooling="spatial_softmax", num_keypoints=32, crop=0.875
)


def configs() -> dict[str, PolicyConfig]:
    return {
        "act": ACTConfig(),
        "diffusion": DiffusionConfig(vision=DIFFUSION_VISION),
        "diffusion-transformer": DiffusionConfig(
            vision=DIFFUSION_VISION, denoiser=DenoiserConfig(kind="transformer")
        ),
        "flow": FlowConfig(vision=DIFFUSION_VISION, num_inference_steps=5),
        "mlp": MLPConfig(vision=DIFFUSION_VISION),
    }


def observation(policy: Policy, batch: int) -> dict[str, torch.Tensor]:
    t = policy.n_obs_steps
    obs = {"state": torch.randn(batch, t, 14)}
    if "top" in policy.obs_keys:
        obs["top"] = torch.randint(0, 256, (batch, t, 96, 96, 3), dtype=torch.uint8)
    return obs


def training_batch(policy: Policy, batch: int) -> dict[str, torch.Tensor]:
    out = observation(policy, batch)
    out["action"] = torch.randn(batch, policy.horizon, 14)
    out["action_is_pad"] = torch.zeros(batch, policy.horizon, dtype=torch.bool)
    return {k: v.to(DEVICE) for k, v in out.items()}


def percentiles(times: list[float]) -> dict[str, float]:
    ms = np.asarray(times) * 1000
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "mean_ms": float(ms.mean()),
        "calls": len(ms),
    }


def network_calls(name: str, config: PolicyConfig) -> int:
    return getattr(config, "num_inference_steps", 1) if name != "act" and name != "mlp" else 1


def weight_bytes(policy: Policy, name: str) -> tuple[int, int]:
    """Bytes of weights read once per call (encoder) and once per denoising step (denoiser)."""

    def size(module: torch.nn.Module) -> int:
        return sum(p.numel() * p.element_size() for p in module.parameters())

    if hasattr(policy, "denoiser"):
        return size(policy) - size(policy.denoiser), size(policy.denoiser)
    if name == "act":  # the VAE encoder is not used at inference
        vae = sum(size(m) for n, m in policy.named_children() if n.startswith("vae_"))
        return size(policy) - vae, 0
    return size(policy), 0


def timed(fn: Callable[[], object], warmup: int, calls: int) -> list[float]:
    """Seconds per call of `fn`, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def bench_inference(name: str, policy: Policy, calls: int, dtype: torch.dtype) -> dict[str, Any]:
    policy.eval()
    obs = observation(policy, 1)
    bf16 = dtype == torch.bfloat16
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=bf16):
        return percentiles(timed(lambda: policy.predict_chunk(obs).cpu(), 3, calls))


def inference_flops(policy: Policy) -> float:
    obs = observation(policy, 1)
    policy.eval()
    # predict_chunk runs in inference mode, which the FLOP counter's module hooks cannot follow;
    # with autograd on they work, and the forward FLOPs are the same
    with FlopCounterMode(display=False) as counter:
        policy._predict(obs)
    return float(counter.get_total_flops())


def bench_training(policy: Policy, batch: int, steps: int, ema: bool) -> dict[str, Any]:
    opt = Optimizer(policy, OptimConfig(ema=ema, warmup_steps=10), 1000)
    data = training_batch(policy, batch)
    amp = DEVICE.type == "cuda"

    def step() -> None:
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=amp):
            opt.step(data)

    times = timed(step, 2, steps)
    with FlopCounterMode(display=False) as counter:
        policy.compute_loss(data)["loss"].backward()
    s = np.asarray(times)
    return {
        "step_s": float(np.median(s)),
        "samples_per_s": float(batch / np.median(s)),
        "steps": steps,
        "gflop_per_step": float(counter.get_total_flops()) / 1e9,
    }


def run(quick: bool, names: list[str] | None = None) -> dict[str, Any]:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    gpu = DEVICE.type == "cuda"
    calls = 5 if quick else (50 if gpu else 20)
    train_steps = 2 if quick else (20 if gpu else 5)
    results: dict[str, Any] = {"inference": {}, "training": {}, "parameters": {}}
    for name, config in configs().items():
        if names and name not in names:
            continue
        policy = make_policy(config, spec(camera=True)).to(DEVICE)
        results["parameters"][name] = sum(p.numel() for p in policy.parameters())
        log(f"{name}: {results['parameters'][name] / 1e6:.1f} M parameters")
        flops = inference_flops(policy)
        enc_bytes, step_bytes = weight_bytes(policy, name)
        steps = network_calls(name, config)
        mem_bound_ms = (enc_bytes + steps * step_bytes) / (GBPS * 1e9) * 1000
        row: dict[str, Any] = {
            "steps": steps,
            "gflop": flops / 1e9,
            "compute_bound_ms": flops / (GFLOPS * 1e9) * 1000,
            "memory_bound_ms": mem_bound_ms,
        }
        for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            if hasattr(policy, "denoiser"):  # the U-Net's own bf16 path (inference_dtype)
                set_fast_inference(policy.denoiser, dtype)
                row[label] = bench_inference(name, policy, calls, torch.float32)
                set_fast_inference(policy.denoiser, torch.float32)
            else:  # autocast for the others
                row[label] = bench_inference(name, policy, calls, dtype)
            log(
                f"  predict_chunk {label}: p50 {row[label]['p50_ms']:.1f} ms, p90 {row[label]['p90_ms']:.1f} ms"
            )
        results["inference"][name] = row
        cases = [("camera", 8)] + (
            [] if name.endswith("transformer") else [("state", 64), ("state", 256)]
        )
        for kind, batch in cases:
            pol = policy if kind == "camera" else make_policy(config, spec(camera=False)).to(DEVICE)
            r = bench_training(pol, batch, train_steps, ema=name != "act" and name != "mlp")
            results["training"][f"{name}|{kind}|{batch}"] = r
            log(
                f"  train {kind} batch {batch}: {r['step_s']:.3f} s/step ({r['samples_per_s']:.0f} samples/s)"
            )
    return results


def markdown_gpu(res: dict[str, Any], command: str) -> str:
    meta = res["meta"]
    lines = [
        f"## Policies on {meta['gpu']}",
        "",
        f"Command: `{command}` · {meta['date']} · torch {meta['torch']}. Same profile and "
        "networks as the CPU table; latency includes the observation's copy to the GPU and the "
        "chunk's copy back; training under bf16 autocast (train.amp=auto).",
        "",
        "| policy | parameters | network calls | predict_chunk p50 / p90 (fp32) | bf16 p50 |",
        "|---|---|---|---|---|",
    ]
    for name, row in res["inference"].items():
        lines.append(
            f"| {name} | {res['parameters'][name] / 1e6:.1f} M | {row['steps']} | "
            f"{row['fp32']['p50_ms']:.1f} / {row['fp32']['p90_ms']:.1f} ms | "
            f"{row['bf16']['p50_ms']:.1f} ms |"
        )
    lines += [
        "",
        "| policy | input | batch | s/step | samples/s | GFLOP/step |",
        "|---|---|---|---|---|---|",
    ]
    for key, r in res["training"].items():
        name, kind, batch = key.split("|")
        lines.append(
            f"| {name} | {kind} | {batch} | {r['step_s']:.4f} | {r['samples_per_s']:.0f} | "
            f"{r['gflop_per_step']:.1f} |"
        )
    return "\n".join(lines)


def markdown(res: dict[str, Any], command: str) -> str:
    meta = res["meta"]
    lines = [
        "## Policies",
        "",
        f"Command: `{command}` · {meta['date']} · {meta['cores']} cores, torch {meta['torch']} · "
        f"{meta['threads']} threads. Profile: 14-dim state + one 96×96 camera, 14-dim action "
        "(ANCHORS.md); batch-1 latency after warm-up.",
        "",
        "| policy | parameters | network calls | predict_chunk p50 / p90 (fp32) | bf16 p50 | LeRobot | compute bound | weight-read bound |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in res["inference"].items():
        lr = LEROBOT_INFER_MS.get(name.split("-")[0]) if name != "diffusion-transformer" else None
        if name == "flow":
            lr_text = f"{LEROBOT_INFER_MS['diffusion']:.0f} ms (its diffusion)"
        else:
            lr_text = f"{lr:.0f} ms" if lr else "—"
        lines.append(
            f"| {name} | {res['parameters'][name] / 1e6:.1f} M | {row['steps']} | "
            f"{row['fp32']['p50_ms']:.1f} / {row['fp32']['p90_ms']:.1f} ms | {row['bf16']['p50_ms']:.1f} ms | "
            f"{lr_text} | {row['compute_bound_ms']:.1f} ms ({row['gflop']:.2f} GFLOP) | {row['memory_bound_ms']:.1f} ms |"
        )
    lines += [
        "",
        "bf16: diffusion and flow with `inference_dtype: bfloat16` (the U-Net's convolutions as bf16 "
        "matmuls); ACT and MLP under `torch.autocast(bfloat16)`. Bounds: counted FLOPs at 175 GFLOP/s; "
        "fp32 weights read once per network call at 32 GB/s.",
        "",
        "Training step (forward + backward + AdamW, + EMA for diffusion and flow), median:",
        "",
        "| policy | input | batch | s/step | samples/s | GFLOP/step | LeRobot s/step |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, r in res["training"].items():
        name, kind, batch = key.split("|")
        lr = LEROBOT_TRAIN_S.get((name, kind, int(batch)))
        lines.append(
            f"| {name} | {kind} | {batch} | {r['step_s']:.3f} | {r['samples_per_s']:.0f} | "
            f"{r['gflop_per_step']:.1f} | {f'{lr:.2f}' if lr else '—'} |"
        )
    inf = res["inference"]
    targets = [
        (label, inf[name]["fp32"]["p50_ms"], inf[name]["bf16"]["p50_ms"], limit)
        for label, name, limit in (
            ("ACT ≤ 17 ms", "act", 17.0),
            ("diffusion (10 DDIM) ≤ 245 ms", "diffusion", 245.0),
            ("flow (5 steps) ≤ 122 ms", "flow", 122.5),
        )
        if name in inf
    ]
    if targets:
        lines += [
            "",
            "Targets (p50, fp32 / bf16): "
            + "; ".join(
                f"{label}: {a:.1f} / {b:.1f} ms ({'met' if a <= t else '**missed**'} / "
                f"{'met' if b <= t else '**missed**'})"
                for label, a, b, t in targets
            )
            + ".",
        ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument(
        "--policies", default="", help="comma-separated subset of " + ",".join(configs())
    )
    args = ap.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device here")
    names = [n for n in args.policies.split(",") if n]
    unknown = sorted(set(names) - set(configs()))
    if unknown:
        ap.error(f"unknown policies {unknown}; choose from {list(configs())}")
    res = run(args.quick, names)
    res["meta"] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "quick": args.quick,
        "device": str(DEVICE),
    }
    gpu = DEVICE.type == "cuda"
    if gpu:
        res["meta"]["gpu"] = torch.cuda.get_device_name(DEVICE)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = "policies_cuda" if gpu else "policies"
    (args.out_dir / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
    command = ".venv/bin/python benchmarks/policies.py" + (" --quick" if args.quick else "")
    command += f" --policies {args.policies}" if names else ""
    command += f" --device {args.device}" if gpu else ""
    md = (markdown_gpu if gpu else markdown)(res, command)
    print(md)
    if not args.no_docs:
        update_docs_section(args.docs, stem, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
