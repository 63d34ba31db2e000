"""ACT inference with and without its fast path (folded BatchNorm, cached query side), interleaved.

    .venv/bin/python benchmarks/act_fast_path.py [--threads 2] [--calls 30]

ANCHORS.md's profile (ResNet-18, dim 512, 4+1 layers, chunk 100; 14-dim state + one 96×96
camera), batch 1. The two paths alternate call by call in one process, so the machine's load
weighs on both alike; prints p50 and min of each and checks that they agree.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import policies as profile  # noqa: E402

from robolearn.policies.act import ACTConfig  # noqa: E402
from robolearn.policies.act.model import ACTPolicy  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    policy = ACTPolicy(ACTConfig(), profile.spec(True)).eval()
    obs = profile.observation(policy, 1)
    fast_decode, fast_backbone = policy._decode_inference, policy._infer_backbone

    def plain_decode(memory: torch.Tensor) -> torch.Tensor:
        queries = policy.queries.expand(memory.shape[0], -1, -1)
        return policy.decoder(queries, memory)

    def use(fast: bool) -> None:
        policy.__dict__["_decode_inference"] = fast_decode if fast else plain_decode
        policy.__dict__["_infer_backbone"] = fast_backbone if fast else (lambda b: b)

    out = {}
    for fast in (False, True):
        use(fast)
        out[fast] = policy.predict_chunk(obs)
        for _ in range(3):
            policy.predict_chunk(obs)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.calls):
        for fast in (False, True):
            use(fast)
            t = time.perf_counter()
            policy.predict_chunk(obs)
            times[fast].append(time.perf_counter() - t)
    diff = (out[True] - out[False]).abs().max().item()
    for fast in (False, True):
        ts = sorted(times[fast])
        name = "fast path" if fast else "plain modules"
        print(f"{name:14s} p50 {ts[len(ts) // 2] * 1e3:6.1f} ms   min {ts[0] * 1e3:6.1f} ms")
    print(f"largest difference between the two chunks: {diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
