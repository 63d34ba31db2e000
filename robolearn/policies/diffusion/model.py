"""Diffusion policy (Chi et al. 2023): DDPM training, DDIM / DPM-Solver sampling, via diffusers."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from robolearn.data.stats import KeyStats
from robolearn.errors import SpecError
from robolearn.policies.base import masked_mean
from robolearn.policies.generative import GenerativeConfig, GenerativePolicy
from robolearn.spec import FeatureSpec

_SAMPLERS = {
    "ddim": DDIMScheduler,
    "dpmsolver": DPMSolverMultistepScheduler,
    "ddpm": DDPMScheduler,
}


@dataclasses.dataclass
class DiffusionConfig(GenerativeConfig):
    policy: ClassVar[str] = "robolearn.policies.diffusion.model:DiffusionPolicy"

    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: Literal["epsilon", "sample"] = "epsilon"
    clip_sample: bool = True  # normalised actions live in [-1, 1]
    sampler: Literal["ddim", "dpmsolver", "ddpm"] = "ddim"
    num_inference_steps: int = 10

    def validate(self) -> None:
        super().validate()
        if self.sampler not in _SAMPLERS:
            raise SpecError(f"diffusion sampler {self.sampler!r} is not one of {list(_SAMPLERS)}")
        if self.prediction_type not in ("epsilon", "sample"):
            raise SpecError(f"prediction_type {self.prediction_type!r} is not epsilon or sample")
        if not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            raise SpecError(
                f"num_inference_steps ({self.num_inference_steps}) must be between 1 and "
                f"num_train_timesteps ({self.num_train_timesteps})"
            )


class DiffusionPolicy(GenerativePolicy):
    """Learns to remove noise from action chunks; samples a chunk with a few DDIM steps."""

    config_class = DiffusionConfig
    config: DiffusionConfig

    def __init__(
        self,
        config: DiffusionConfig,
        spec: FeatureSpec,
        stats: Mapping[str, KeyStats] | None = None,
    ) -> None:
        super().__init__(config, spec, stats)
        schedule = dict(
            num_train_timesteps=config.num_train_timesteps,
            beta_schedule=config.beta_schedule,
            prediction_type=config.prediction_type,
            clip_sample=config.clip_sample,
        )
        self.train_scheduler = DDPMScheduler(**schedule)
        self.sampler = _SAMPLERS[config.sampler].from_config(self.train_scheduler.config)

    def compute_loss(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = self._to_device(batch, [*self.obs_keys, *self.action_keys, "action_is_pad"])
        actions = self.normalized_actions(batch)  # (B, H, A)
        cond = self.encode(batch)
        noise = torch.randn_like(actions)
        t = torch.randint(
            0, self.config.num_train_timesteps, (actions.shape[0],), device=actions.device
        )
        noisy = self.train_scheduler.add_noise(actions, noise, t)
        pred = self.denoiser(noisy, t, cond)
        target = noise if self.config.prediction_type == "epsilon" else actions
        err = F.mse_loss(pred, target, reduction="none")
        return {"loss": masked_mean(err, batch["action_is_pad"])}

    def _predict(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        cond = self.encode(obs)
        x = self.noise(cond.shape[0])
        self.sampler.set_timesteps(self.config.num_inference_steps, device=x.device)
        for t in self.sampler.timesteps:
            out = self.denoiser(x, t.expand(x.shape[0]), cond)
            x = self.sampler.step(out, t, x).prev_sample
        return x
