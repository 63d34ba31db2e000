"""ACT with cameras on a CPU: training and inference speed by the number of image tokens.

Run from the repository root::

    .venv/bin/python benchmarks/act_tokens.py            # about 2 minutes on 2 cores
    .venv/bin/python benchmarks/act_tokens.py --quick    # a smoke run

The network is `benchmarks/success.py`'s image ACT: the demo's small ACT (dim 128, FF 512, 2
encoder / 1 decoder / 4 VAE layers, chunk 20) on the joint state, a 96×96 top camera and a
64×64 wrist camera, with the small `cnn` backbone (stride 8: 12×12 + 8×8 = 208 image tokens).
`policy.image_pool` averages each camera's feature map by its factor before the tokens are
made. Training: forward + backward + AdamW on a batch of 128 on one thread (as the success
cells train, one per core); inference: `predict_chunk` at batch 1 after warm-up, p50 of the
calls. Results: benchmarks/results/act_tokens.json and the `act_tokens` section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from robolearn.bench import seconds_per_train_step, update_docs_section  # noqa: E402
from robolearn.policies import make_policy  # noqa: E402
from robolearn.policies.act.model import ACTConfig  # noqa: E402
from robolearn.policies.vision import VisionConfig  # noqa: E402
from robolearn.spec import Feature, FeatureSpec  # noqa: E402

BATCH = 128
HORIZON = 20


def spec() -> FeatureSpec:
    return FeatureSpec(
        {
            "state": Feature((8,), "float32", "state"),
            "top": Feature((96, 96, 3), "uint8", "image"),
            "wrist": Feature((64, 64, 3), "uint8", "image"),
            "action": Feature((8,), "float32", "action"),
        }
    )


def config(pool: int) -> ACTConfig:
    return ACTConfig(
        horizon=HORIZON,
        n_action_steps=10,
        dim_model=128,
        dim_feedforward=512,
        n_encoder_layers=2,
        image_pool=pool,
        vision=VisionConfig(backbone="cnn", norm="batch", crop=None, pooling="avg"),
    )


def measure(pool: int, steps: int, calls: int) -> dict[str, Any]:
    torch.manual_seed(0)
    policy = make_policy(config(pool), spec())
    batch = {
        "state": torch.randn(BATCH, 1, 8),
        "top": torch.randint(0, 256, (BATCH, 1, 96, 96, 3), dtype=torch.uint8),
        "wrist": torch.randint(0, 256, (BATCH, 1, 64, 64, 3), dtype=torch.uint8),
        "action": torch.randn(BATCH, HORIZON, 8),
        "obs_is_pad": torch.zeros(BATCH, 1, dtype=torch.bool),
        "action_is_pad": torch.zeros(BATCH, HORIZON, dtype=torch.bool),
    }
    policy.train()
    train_s = seconds_per_train_step(
        lambda: policy.compute_loss(batch)["loss"], policy.parameters(), steps
    )
    policy.eval()
    obs = {k: batch[k][:1, 0].numpy() for k in ("state", "top", "wrist")}
    obs = {k: v[None] for k, v in obs.items()}
    times = []
    with torch.inference_mode():
        for i in range(calls + 3):
            t = time.perf_counter()
            policy.predict_chunk(obs)
            if i >= 3:
                times.append(time.perf_counter() - t)
    return {
        "image_pool": pool,
        "image_tokens": policy.image_tokens,
        "train_step_s": train_s,
        "train_samples_per_s": BATCH / train_s,
        "infer_ms_p50": 1000 * float(np.median(times)),
    }


def markdown(res: dict[str, Any], command: str) -> str:
    base = res["rows"][0]["train_samples_per_s"]
    lines = [
        "## ACT with cameras: image tokens and speed",
        "",
        f"Command: `{command}`; {res['machine']}, torch {res['torch']}, 1 thread, "
        f"{res['date']}. The success table's image ACT (dim 128, 2 encoder layers, chunk 20; "
        "96×96 top + 64×64 wrist camera, the small `cnn` backbone, stride 8), trained on "
        f"batches of {BATCH}; `image_pool` = `policy.image_pool`.",
        "",
        "| image_pool | image tokens | train samples/s | × pool 1 | inference p50 (batch 1) |",
        "|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['image_pool']} | {r['image_tokens']} | {r['train_samples_per_s']:.0f} | "
            f"{r['train_samples_per_s'] / base:.1f}× | {r['infer_ms_p50']:.1f} ms |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "act_tokens.json")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    steps, calls = (1, 3) if args.quick else (5, 30)
    rows = []
    for pool in (1, 2, 4):
        rows.append(measure(pool, steps, calls))
        print(json.dumps(rows[-1]), flush=True)
    res = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "torch": torch.__version__,
        "rows": rows,
    }
    command = ".venv/bin/python benchmarks/act_tokens.py" + (" --quick" if args.quick else "")
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    if not args.no_docs:
        update_docs_section(args.docs, "act_tokens", markdown(res, command))
    print(markdown(res, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
