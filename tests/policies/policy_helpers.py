"""Small policy configs for the policy tests (each trains in seconds on a CPU)."""

from __future__ import annotations

from pathlib import Path

from robolearn.data.stats import get_stats
from robolearn.data.store import EpisodeStore
from robolearn.policies import Policy, PolicyConfig, make_policy
from robolearn.policies.act import ACTConfig
from robolearn.policies.denoisers import DenoiserConfig
from robolearn.policies.diffusion import DiffusionConfig
from robolearn.policies.flow import FlowConfig
from robolearn.policies.mlp import MLPConfig
from robolearn.policies.vision import VisionConfig

CAMERA = (32, 32)
SMALL_VISION = VisionConfig(num_keypoints=8, feature_dim=16)


def small_config(name: str, **overrides) -> PolicyConfig:
    """Each policy's architecture at a size that trains in seconds on a CPU."""
    unet = DenoiserConfig(down_dims=[32, 64, 128], time_embed_dim=32)
    configs = {
        "mlp": lambda: MLPConfig(hidden_dims=[128, 128], vision=SMALL_VISION),
        "diffusion": lambda: DiffusionConfig(denoiser=unet, vision=SMALL_VISION),
        "diffusion_transformer": lambda: DiffusionConfig(
            denoiser=DenoiserConfig(
                kind="transformer", d_model=64, n_layers=2, n_heads=4, dropout=0.0, attn_dropout=0.0
            ),
            vision=SMALL_VISION,
        ),
        "flow": lambda: FlowConfig(denoiser=unet, vision=SMALL_VISION),
        "act": lambda: ACTConfig(
            horizon=16,
            n_action_steps=8,
            dim_model=64,
            n_heads=4,
            dim_feedforward=256,
            n_encoder_layers=2,
            n_vae_encoder_layers=2,
        ),
    }
    config = configs[name]()
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


POLICIES = ["mlp", "diffusion", "diffusion_transformer", "flow", "act"]


def build(name: str, store_path: Path, **overrides) -> Policy:
    with EpisodeStore.open(store_path) as store:
        return make_policy(small_config(name, **overrides), store.spec, get_stats(store))
