"""Vision backbones: training throughput and batch-1 inference latency of one camera's encoder.

Run from the repository root::

    .venv/bin/python benchmarks/vision.py            # about 2 minutes on 2 cores
    .venv/bin/python benchmarks/vision.py --quick    # a smoke run

Each row is robolearn.policies.vision.ImageEncoder (augmentation, backbone, spatial softmax with
32 keypoints, projection to 64 features) on 96×96 RGB frames cropped to 86×86, as the policies
use it. Training: forward + backward + AdamW on a batch of frames (a policy with two
observation steps encodes two frames per sample). Inference: eval mode at batch 1, p50 / p90 of
the calls after warm-up, under torch.inference_mode. Multiply-adds are counted by
torch.utils.flop_counter. Results: benchmarks/results/vision.json and the `vision` section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from robolearn.bench import seconds_per_train_step, update_docs_section  # noqa: E402
from robolearn.policies.vision import BACKBONES, ImageEncoder, VisionConfig  # noqa: E402

FRAME = (96, 96, 3)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def measure(backbone: str, norm: str, batch: int, steps: int, calls: int) -> dict[str, Any]:
    torch.manual_seed(0)
    enc = ImageEncoder(FRAME, VisionConfig(backbone=backbone, norm=norm))  # type: ignore[arg-type]
    params = sum(p.numel() for p in enc.parameters())
    x = torch.rand(batch, 3, FRAME[0], FRAME[1])
    enc.train()
    train_s = seconds_per_train_step(
        lambda: enc(x, _identity).square().mean(), enc.parameters(), steps
    )
    enc.eval()
    one = x[:1]
    with FlopCounterMode(display=False) as counter:  # autograd on: the convolutions' own path
        enc(one, _identity)
    times = []
    with torch.inference_mode():
        for _ in range(5):
            enc(one, _identity)
        for _ in range(calls):
            t = time.perf_counter()
            enc(one, _identity)
            times.append((time.perf_counter() - t) * 1e3)
    return {
        "backbone": backbone,
        "norm": norm,
        "params_m": params / 1e6,
        "gmac_per_frame": counter.get_total_flops() / 2e9,
        "train_batch": batch,
        "train_step_ms": train_s * 1e3,
        "train_frames_per_s": batch / train_s,
        "infer_p50_ms": float(np.percentile(times, 50)),
        "infer_p90_ms": float(np.percentile(times, 90)),
    }


def table(res: dict[str, Any]) -> str:
    rows = res["rows"]
    base = {r["norm"]: r for r in rows if r["backbone"] == "resnet18"}
    lines = [
        "## Vision backbones (one camera's encoder)",
        "",
        f"Command: `.venv/bin/python benchmarks/vision.py`; {res['machine']}, "
        f"{res['threads']} threads, {res['date']}. ImageEncoder on 96×96 frames cropped to 86×86 "
        "(spatial softmax, 32 keypoints, 64 features). Training: forward + backward + AdamW, "
        f"batch {rows[0]['train_batch']} frames; inference: batch 1, eval mode.",
        "",
        "| backbone | norm | params | GMAC/frame | train frames/s | vs resnet18 | infer p50 | p90 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref = base.get(r["norm"])
        speedup = f"{r['train_frames_per_s'] / ref['train_frames_per_s']:.1f}×" if ref else "—"
        lines.append(
            f"| {r['backbone']} | {r['norm']} | {r['params_m']:.2f} M | "
            f"{r['gmac_per_frame']:.3f} | {r['train_frames_per_s']:,.0f} | {speedup} | "
            f"{r['infer_p50_ms']:.2f} ms | {r['infer_p90_ms']:.2f} ms |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few steps and calls: a smoke run")
    ap.add_argument("--batch", type=int, default=128, help="training batch (frames)")
    ap.add_argument(
        "--threads", type=int, default=2, help="torch threads (at most the CPUs this may use)"
    )
    ap.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args()
    # More threads than CPUs in this process's affinity mask only makes OpenMP's workers spin
    # against each other (a test runner that pins each worker to one core gives it one).
    args.threads = max(1, min(args.threads, len(os.sched_getaffinity(0))))
    torch.set_num_threads(args.threads)
    steps, calls = (1, 3) if args.quick else (5, 50)
    batch = 8 if args.quick else args.batch
    rows = []
    for backbone in BACKBONES:
        for norm in ("group", "batch"):
            row = measure(backbone, norm, batch, steps, calls)
            rows.append(row)
            print(json.dumps(row), flush=True)
    res = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "threads": args.threads,
        "torch": torch.__version__,
        "rows": rows,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "vision.json").write_text(json.dumps(res, indent=2) + "\n")
    if not args.no_docs:
        update_docs_section(args.docs, "vision", table(res))
    print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
