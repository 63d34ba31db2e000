"""Shared body of the chunk-generating policies (diffusion, flow): observation encoder + denoiser."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

import torch

from robolearn.data.stats import KeyStats
from robolearn.policies.base import ObservationEncoder, Policy, PolicyConfig
from robolearn.policies.denoisers import DenoiserConfig, make_denoiser, set_fast_inference
from robolearn.policies.vision import VisionConfig
from robolearn.spec import FeatureSpec


@dataclasses.dataclass
class GenerativeConfig(PolicyConfig):
    denoiser: DenoiserConfig = dataclasses.field(default_factory=DenoiserConfig)
    vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
    num_inference_steps: int = 10
    # weights at CPU inference: float32 (as trained), float16 (every product: half the bytes,
    # TF32's rounding) or bfloat16 (the U-Net's convolutions as bf16 products: fast on CPUs with
    # bf16 matrix units — AMX, AVX512-BF16 — and slow elsewhere; actions to ~0.5 %)
    INFERENCE_DTYPES: ClassVar[tuple[str, ...]] = ("float32", "float16", "bfloat16")
    inference_dtype: str = "float32"


class GenerativePolicy(Policy):
    """Encodes the observation window once, then denoises a chunk conditioned on it."""

    config: GenerativeConfig

    def __init__(
        self,
        config: GenerativeConfig,
        spec: FeatureSpec,
        stats: Mapping[str, KeyStats] | None = None,
    ) -> None:
        super().__init__(config, spec, stats)
        self.obs_encoder = ObservationEncoder(self, config.vision)
        self.denoiser = make_denoiser(
            config.denoiser,
            self.action_dim,
            config.horizon,
            self.obs_encoder.dim,
            config.n_obs_steps,
        )
        # float16 weights come from the products themselves (cache.cpu_weights), on fp32 inputs
        fast = torch.bfloat16 if config.inference_dtype == "bfloat16" else torch.float32
        set_fast_inference(self.denoiser, fast)

    def encode(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, n_obs_steps, obs_dim) conditioning features."""
        return self.obs_encoder(self, obs)

    def noise(self, batch: int) -> torch.Tensor:
        return torch.randn(batch, self.horizon, self.action_dim, device=self.device)
