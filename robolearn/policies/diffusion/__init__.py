"""Diffusion policy: a denoising diffusion model over action chunks (U-Net or transformer denoiser)."""

from robolearn.policies.diffusion.model import DiffusionConfig, DiffusionPolicy

__all__ = ["DiffusionConfig", "DiffusionPolicy"]
