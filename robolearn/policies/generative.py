"""Shared body of the chunk-generating policies (diffusion, flow): observation encoder + denoiser."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

from robolearn.data.stats import KeyStats
from robolearn.errors import SpecError
from robolearn.policies.base import ObservationEncoder, Policy, PolicyConfig
from robolearn.policies.denoisers import DenoiserConfig, make_denoiser, set_fast_inference
from robolearn.policies.vision import VisionConfig
from robolearn.spec import FeatureSpec


@dataclasses.dataclass
class GenerativeConfig(PolicyConfig):
    denoiser: DenoiserConfig = dataclasses.field(default_factory=DenoiserConfig)
    vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
    num_inference_steps: int = 10
    # weights of the U-Net's convolutions at CPU inference: float32 (as trained) or bfloat16
    # (about half the time per step on CPUs with bf16 matrix units; actions to ~0.5 %)
    inference_dtype: str = "float32"

    def validate(self) -> None:
        super().validate()
        if self.inference_dtype not in ("float32", "bfloat16"):
            raise SpecError(f"inference_dtype {self.inference_dtype!r} is not float32 or bfloat16")


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
        set_fast_inference(self.denoiser, getattr(torch, config.inference_dtype))

    def encode(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, n_obs_steps, obs_dim) conditioning features."""
        return self.obs_encoder(self, obs)

    def noise(self, batch: int) -> torch.Tensor:
        return torch.randn(batch, self.horizon, self.action_dim, device=self.device)
