"""Shared body of the chunk-generating policies (diffusion, flow): observation encoder + denoiser."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

from robolearn.data.stats import KeyStats
from robolearn.policies.base import ObservationEncoder, Policy, PolicyConfig
from robolearn.policies.denoisers import DenoiserConfig, make_denoiser
from robolearn.policies.vision import VisionConfig
from robolearn.spec import FeatureSpec


@dataclasses.dataclass
class GenerativeConfig(PolicyConfig):
    denoiser: DenoiserConfig = dataclasses.field(default_factory=DenoiserConfig)
    vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
    num_inference_steps: int = 10


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

    def encode(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, n_obs_steps, obs_dim) conditioning features."""
        return self.obs_encoder(self, obs)

    def noise(self, batch: int) -> torch.Tensor:
        return torch.randn(batch, self.horizon, self.action_dim, device=self.device)
