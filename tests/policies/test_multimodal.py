"""Multimodal demonstrations: half go left of an obstacle, half right, from the same start.

A generative policy must commit to a side (both sides across samples, few paths through the
obstacle); the regression baseline averages the two and drives into it. The measured fractions
are printed (pytest -s) and recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import pytest
import torch
from policy_helpers import build

from robolearn.policies.denoisers import DenoiserConfig
from robolearn.testing.toy import classify, start_observation
from robolearn.training import OptimConfig, fit

# steps and learning rate per policy on the 100-episode toy set (batch 64)
TRAIN = {
    "mlp": (300, 1e-3),
    "diffusion": (800, 1e-3),
    "flow": (400, 1e-3),
    "act": (800, 5e-4),
}
# The toy paths are 2-D: a U-Net of 16-32-64 channels holds both modes (the 32-64-128 of the
# other policy tests does too, at twice the training time; docs/benchmarks.md has both).
SMALL_UNET = DenoiserConfig(down_dims=[16, 32, 64], time_embed_dim=32)
# ACT commits to a style through its latent, sampled from the prior: with z = 0 (ACT's default)
# it gives one path per observation, and here that path is the average. The KL weight must be
# low enough that the latent is not ignored; a small latent leaves fewer holes between the two
# styles' posteriors (latent 32 reaches 7.5 % averaged after 1500 steps; see docs/benchmarks.md).
OVERRIDES = {
    "act": {"latent": "prior", "kl_weight": 0.1, "latent_dim": 4},
    "diffusion": {"denoiser": SMALL_UNET},
    "flow": {"denoiser": SMALL_UNET},
}


def modes_of(name: str, store) -> dict[str, float]:
    steps, lr = TRAIN[name]
    torch.manual_seed(0)  # the same initial weights whatever ran before
    policy = build(name, store, **OVERRIDES.get(name, {}))
    fit(
        policy,
        policy.dataset(store),
        steps,
        batch_size=64,
        config=OptimConfig(lr=lr, warmup_steps=50),
    )
    torch.manual_seed(0)
    chunks = policy.predict_chunk(start_observation(policy.n_obs_steps, 200))
    fractions = classify(chunks.numpy())
    print(f"\n{name}: {fractions}")
    return fractions


@pytest.mark.parametrize("name", ["diffusion", "flow", "act"])
def test_generative_policies_reproduce_both_modes(name, obstacle_store):
    f = modes_of(name, obstacle_store)
    assert f["left"] >= 0.25 and f["right"] >= 0.25, f
    assert f["averaged"] <= 0.10, f


def test_regression_baseline_averages_the_modes(obstacle_store):
    f = modes_of("mlp", obstacle_store)
    assert f["averaged"] >= 0.9, f


def test_act_with_zero_latent_gives_one_path(obstacle_store):
    """ACT's default inference (z = 0) is deterministic: every sample is the same path."""
    policy = build("act", obstacle_store, kl_weight=0.1, latent_dim=4)
    fit(policy, policy.dataset(obstacle_store), 50, batch_size=64)
    chunks = policy.predict_chunk(start_observation(1, 8))
    assert torch.equal(chunks[0], chunks[-1])
