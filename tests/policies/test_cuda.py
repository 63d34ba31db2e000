"""Every policy on a CUDA device: training (fp32 and bf16 autocast), prediction, save on the GPU →
load on the CPU, agreement with the CPU, and `robolearn train` end to end with bf16 autocast.

These need a CUDA device and run on a GPU machine (`pytest tests/policies/test_cuda.py`); CI has
none, so there they are reported as skipped with that reason. The CPU paths they are compared
against run in every CI run (test_policy_api.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from policy_helpers import CAMERA, POLICIES, build

from robolearn.policies import Policy
from robolearn.testing.toy import start_observation
from robolearn.training import OptimConfig, Optimizer

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (run it on a GPU machine)"
)


def _train(policy: Policy, store: Path, steps: int, amp: bool) -> list[float]:
    dataset = policy.dataset(store)
    opt = Optimizer(policy, OptimConfig(lr=1e-3, warmup_steps=10), steps)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(steps):
        batch = dataset.get_batch(rng.integers(0, len(dataset), 16))
        if amp:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                losses.append(opt.step(batch)["loss"])
        else:
            losses.append(opt.step(batch)["loss"])
    return losses


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", POLICIES)
def test_trains_and_predicts_on_cuda(name: str, amp: bool, camera_store: Path) -> None:
    torch.manual_seed(0)
    policy = build(name, camera_store).to("cuda")
    assert policy.device.type == "cuda"
    losses = _train(policy, camera_store, 60, amp)
    assert np.isfinite(losses).all(), (
        f"{name}: non-finite loss on CUDA ({'bf16' if amp else 'fp32'})"
    )
    assert np.mean(losses[-10:]) < np.mean(losses[:5]), f"{name}: {losses[:5]} → {losses[-10:]}"
    # numpy observations on the host: the policy moves them; the chunk comes back on the GPU
    chunk = policy.predict_chunk(start_observation(policy.n_obs_steps, 3, CAMERA))
    assert chunk.device.type == "cuda"
    assert chunk.shape == (3, policy.horizon, policy.action_dim)
    assert torch.isfinite(chunk).all()


@pytest.mark.parametrize("name", POLICIES)
def test_saved_on_cuda_loads_on_the_cpu_and_agrees(
    name: str, camera_store: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    policy = build(name, camera_store).to("cuda")
    _train(policy, camera_store, 5, amp=False)
    policy.save(tmp_path / "p")
    cpu = Policy.load(tmp_path / "p", device="cpu")
    again = Policy.load(tmp_path / "p", device="cuda")
    assert cpu.device.type == "cpu" and again.device.type == "cuda"
    obs = start_observation(policy.n_obs_steps, 2, CAMERA)
    torch.manual_seed(1)
    a = policy.predict_chunk(obs)
    torch.manual_seed(1)
    b = again.predict_chunk(obs)
    torch.testing.assert_close(a, b)  # same device, same seed: the same chunk
    if name in ("mlp", "act"):  # deterministic at inference: the CPU gives the same actions
        c = cpu.predict_chunk(obs)
        torch.testing.assert_close(a.cpu(), c, atol=2e-3, rtol=2e-3)


def test_the_trainer_runs_on_cuda_with_bf16_autocast(
    camera_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from robolearn.cli import main

    run = tmp_path / "run"
    code = main(
        [
            "train",
            f"dataset={camera_store}",
            f"run_dir={run}",
            "policy=diffusion",
            "policy.horizon=8",
            "policy.n_action_steps=4",
            "policy.denoiser.down_dims=[32,64,128]",
            "policy.vision.num_keypoints=8",
            "policy.vision.feature_dim=16",
            "train.device=cuda",
            "train.amp=auto",
            "train.steps=40",
            "train.batch_size=16",
            "train.val_every=20",
            "train.checkpoint_every=20",
            "train.log_every=10",
        ]
    )
    assert code == 0
    assert "bf16 autocast" in capsys.readouterr().err  # train.amp=auto picks bf16 on CUDA
    log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    train = [r for r in log if r["kind"] == "train"]
    assert [r["step"] for r in train] == [10, 20, 30, 40]
    assert [r["step"] for r in log if r["kind"] == "val"] == [20, 40]
    assert all(np.isfinite(r["loss"]) for r in log if "loss" in r)
    policy = Policy.load(run / "checkpoints" / "last", device="cpu")
    chunk = policy.predict_chunk(start_observation(policy.n_obs_steps, 1, CAMERA))
    assert chunk.shape == (1, 8, policy.action_dim) and torch.isfinite(chunk).all()
