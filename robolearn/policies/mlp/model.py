"""The floor every generative policy must beat: observation features → MLP → action chunk.

Trained by regression, so where demonstrations disagree (left or right around an obstacle) it
predicts their average.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from robolearn.data.stats import KeyStats
from robolearn.policies.base import ObservationEncoder, Policy, PolicyConfig, masked_mean
from robolearn.spec import FeatureSpec


@dataclasses.dataclass
class MLPConfig(PolicyConfig):
    policy: ClassVar[str] = "robolearn.policies.mlp.model:MLPPolicy"

    hidden_dims: list[int] = dataclasses.field(default_factory=lambda: [512, 512, 512])
    dropout: float = 0.0
    loss: Literal["mse", "l1"] = "mse"


class MLPPolicy(Policy):
    config_class = MLPConfig
    config: MLPConfig

    def __init__(
        self, config: MLPConfig, spec: FeatureSpec, stats: Mapping[str, KeyStats] | None = None
    ) -> None:
        super().__init__(config, spec, stats)
        self.obs_encoder = ObservationEncoder(self, config.vision)
        layers: list[nn.Module] = []
        width = self.obs_encoder.dim * config.n_obs_steps
        for hidden in config.hidden_dims:
            layers += [nn.Linear(width, hidden), nn.Mish(), nn.Dropout(config.dropout)]
            width = hidden
        layers.append(nn.Linear(width, config.horizon * self.action_dim))
        self.net = nn.Sequential(*layers)

    def _forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        feats = self.obs_encoder(self, obs).flatten(1)  # (B, T·D)
        return self.net(feats).reshape(-1, self.horizon, self.action_dim)

    def compute_loss(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = self._to_device(batch, [*self.obs_keys, *self.action_keys, "action_is_pad"])
        target = self.normalized_actions(batch)
        loss_fn = F.mse_loss if self.config.loss == "mse" else F.l1_loss
        err = loss_fn(self._forward(batch), target, reduction="none")
        return {"loss": masked_mean(err, batch["action_is_pad"])}

    def _predict(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._forward(obs)
