"""Per-key normalisation of observations and actions, kept in the policy's weights."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import torch
from torch import nn

from robolearn.data.stats import KeyStats
from robolearn.errors import SpecError
from robolearn.spec import Feature

NormMode = Literal["min_max", "mean_std", "identity"]
NORM_MODES = ("min_max", "mean_std", "identity")
_EPS = 1e-6


class Normalizer(nn.Module):
    """Maps each key to a normalised range and back: x_n = (x - offset) / scale.

    `min_max` sends the data range to [-1, 1] (diffusion and flow sample in that box);
    `mean_std` standardises; `identity` leaves values alone. Images are first scaled to [0, 1]
    and normalised per channel. A dimension that never varies in the data gets scale 1, so it
    does not blow up to ±inf. Offsets and scales are buffers: they travel in the saved weights,
    so a loaded policy needs no dataset.
    """

    def __init__(
        self,
        spec: Mapping[str, Feature],
        modes: Mapping[str, NormMode],
        stats: Mapping[str, KeyStats] | None = None,
    ) -> None:
        super().__init__()
        self.keys = list(modes)
        self.modes = dict(modes)
        for i, key in enumerate(self.keys):
            mode = self.modes[key]
            if mode not in NORM_MODES:
                raise SpecError(
                    f"normalisation mode {mode!r} for {key!r} is not one of {NORM_MODES}"
                )
            feature = spec[key]
            shape = (feature.shape[-1],) if feature.kind == "image" else feature.shape
            offset = np.zeros(shape, np.float64)
            scale = np.ones(shape, np.float64)
            if stats is not None and mode != "identity":
                if key not in stats:
                    raise SpecError(f"no normalisation statistics for {key!r}")
                s = stats[key]
                if mode == "min_max":
                    lo, hi = np.asarray(s.min), np.asarray(s.max)
                    offset, scale = (hi + lo) / 2, (hi - lo) / 2
                else:
                    offset, scale = np.asarray(s.mean), np.asarray(s.std)
                scale = np.where(scale < _EPS, 1.0, scale)
                offset, scale = offset.reshape(shape), scale.reshape(shape)
            self.register_buffer(f"offset_{i}", torch.as_tensor(offset, dtype=torch.float32))
            self.register_buffer(f"scale_{i}", torch.as_tensor(scale, dtype=torch.float32))
        self._index = {key: i for i, key in enumerate(self.keys)}

    def _params(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        i = self._index[key]
        return getattr(self, f"offset_{i}"), getattr(self, f"scale_{i}")

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        offset, scale = self._params(key)
        return (x - offset) / scale

    def unnormalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        offset, scale = self._params(key)
        return x * scale + offset

    def image(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1], (..., C, H, W) → normalised per channel."""
        offset, scale = self._params(key)
        return (x - offset[:, None, None]) / scale[:, None, None]
