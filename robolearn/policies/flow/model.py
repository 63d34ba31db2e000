"""Flow matching (rectified flow) on diffusion policy's denoisers; few-step Euler or midpoint sampling.

The chunk moves along straight paths x_t = (1 - t)·noise + t·actions, t ∈ [0, 1]; the network
learns the velocity actions − noise, and sampling integrates it from noise (t = 0) to t = 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from robolearn.errors import SpecError
from robolearn.policies.base import masked_mean
from robolearn.policies.generative import GenerativeConfig, GenerativePolicy

# The denoisers embed time sinusoidally; spread t ∈ [0, 1] over the range diffusion steps use.
TIME_SCALE = 100.0


@dataclasses.dataclass
class FlowConfig(GenerativeConfig):
    policy: ClassVar[str] = "robolearn.policies.flow.model:FlowPolicy"

    num_inference_steps: int = 5
    integrator: Literal["euler", "midpoint"] = "euler"
    # beta: more training time near the noise end, where the velocity field is hardest (π0)
    time_sampling: Literal["uniform", "beta", "logit_normal"] = "beta"

    def validate(self) -> None:
        super().validate()
        if self.integrator not in ("euler", "midpoint"):
            raise SpecError(f"flow integrator {self.integrator!r} is not euler or midpoint")
        if self.time_sampling not in ("uniform", "beta", "logit_normal"):
            raise SpecError(
                f"time_sampling {self.time_sampling!r} is not uniform, beta or logit_normal"
            )
        if self.num_inference_steps < 1:
            raise SpecError("num_inference_steps must be ≥ 1")


class FlowPolicy(GenerativePolicy):
    config_class = FlowConfig
    config: FlowConfig

    def _sample_time(self, n: int, device: torch.device) -> torch.Tensor:
        kind = self.config.time_sampling
        if kind == "uniform":
            return torch.rand(n, device=device)
        if kind == "logit_normal":
            return torch.sigmoid(torch.randn(n, device=device))
        # Beta(1.5, 1) on (0.001, 1], mirrored so that low t (near noise) is drawn more often.
        b = torch.distributions.Beta(torch.tensor(1.5), torch.tensor(1.0)).sample((n,))
        return (0.001 + 0.999 * (1.0 - b)).to(device)

    def compute_loss(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = self._to_device(batch, [*self.obs_keys, *self.action_keys, "action_is_pad"])
        actions = self.normalized_actions(batch)
        cond = self.encode(batch)
        noise = torch.randn_like(actions)
        t = self._sample_time(actions.shape[0], actions.device)
        x_t = (1.0 - t)[:, None, None] * noise + t[:, None, None] * actions
        pred = self.denoiser(x_t, t * TIME_SCALE, cond)
        err = F.mse_loss(pred, actions - noise, reduction="none")
        return {"loss": masked_mean(err, batch["action_is_pad"])}

    def _velocity(self, x: torch.Tensor, t: float, cond: torch.Tensor) -> torch.Tensor:
        return self.denoiser(x, torch.full((x.shape[0],), t * TIME_SCALE, device=x.device), cond)

    def _predict(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        cond = self.encode(obs)
        x = self.noise(cond.shape[0])
        n = self.config.num_inference_steps
        dt = 1.0 / n
        for i in range(n):
            t = i * dt
            if self.config.integrator == "euler":
                x = x + dt * self._velocity(x, t, cond)
            else:
                mid = x + 0.5 * dt * self._velocity(x, t, cond)
                x = x + dt * self._velocity(mid, t + 0.5 * dt, cond)
        return x
