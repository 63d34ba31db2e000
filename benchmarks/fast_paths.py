"""Policy inference with and without its CPU fast paths, interleaved call by call.

    .venv/bin/python benchmarks/fast_paths.py [--policy act|diffusion|flow] [--threads 2] [--calls 30]

ANCHORS.md's profile (14-dim state + one 96×96 camera, batch 1; ACT: ResNet-18, dim 512, 4+1
layers, chunk 100; diffusion: U-Net 256-512-1024, 10 DDIM steps; flow: the same, 5 steps).
ACT's fast path: folded BatchNorm, the cached query side of its decoder, oneDNN products on
weights reordered once. Diffusion and flow (fp32): their U-Net and ResNet convolutions as oneDNN
products on reordered weights against the same matmuls through `F.linear`. The two variants
alternate call by call in one process, so the machine's load weighs on both alike; prints p50
and min of each and checks that they agree.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import policies as profile  # noqa: E402

from robolearn.policies import cache  # noqa: E402
from robolearn.policies.act import ACTConfig  # noqa: E402
from robolearn.policies.act.model import ACTPolicy  # noqa: E402

ONEDNN = cache.ONEDNN_LINEAR


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="act", choices=["act", "diffusion", "flow"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.policy != "act":
        config = profile.configs()[args.policy]
        policy = profile.make_policy(config, profile.spec(True)).eval()
        obs = profile.observation(policy, 1)

        def use_unet(on: bool) -> None:
            cache.ONEDNN_LINEAR = on and ONEDNN

        return compare(policy, obs, use_unet, args.calls)
    policy = ACTPolicy(ACTConfig(), profile.spec(True)).eval()
    obs = profile.observation(policy, 1)
    fast = {
        name: getattr(policy, name)
        for name in ("_encode_inference", "_decode_inference", "_infer_backbone", "_linear")
    }

    def plain_decode(memory: torch.Tensor) -> torch.Tensor:
        queries = policy.queries.expand(memory.shape[0], -1, -1)
        return policy.decoder(queries, memory)

    plain = {
        "_encode_inference": policy.encoder,  # torch's fused encoder layers
        "_decode_inference": plain_decode,
        "_infer_backbone": lambda backbone: backbone,
        "_linear": torch.nn.functional.linear,
    }

    def use(on: bool) -> None:
        policy.__dict__.update(fast if on else plain)
        cache.ONEDNN_LINEAR = on and ONEDNN  # the ResNet's matmul convolutions

    return compare(policy, obs, use, args.calls)


def compare(policy: Any, obs: Any, use: Callable[[bool], None], calls: int) -> int:
    out = {}
    for on in (False, True):
        use(on)
        torch.manual_seed(0)  # the same initial noise for the generative policies
        out[on] = policy.predict_chunk(obs)
        for _ in range(3):
            policy.predict_chunk(obs)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(calls):
        for on in (False, True):
            use(on)
            t = time.perf_counter()
            policy.predict_chunk(obs)
            times[on].append(time.perf_counter() - t)
    diff = (out[True] - out[False]).abs().max().item()
    for on in (False, True):
        ts = sorted(times[on])
        name = "fast path" if on else "plain modules"
        print(f"{name:14s} p50 {ts[len(ts) // 2] * 1e3:6.1f} ms   min {ts[0] * 1e3:6.1f} ms")
    print(f"largest difference between the two chunks: {diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
