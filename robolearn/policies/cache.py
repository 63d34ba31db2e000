"""Keys for caches of weights derived at inference (reshaped or bf16 copies)."""

from __future__ import annotations

import torch


def weight_key(weight: torch.Tensor, samples: int = 8) -> tuple[object, ...]:
    """What a derived copy of `weight` must be rebuilt on: its version counter and storage, and
    a strided sample of its values. The sample is needed because writes through `.data` (the
    EMA's swap of averaged weights in and out, some optimisers) change the values without
    bumping the version counter; a copy keyed on the version alone would go stale."""
    flat = weight.detach().reshape(-1)
    step = max(1, flat.numel() // samples)
    return (weight._version, weight.data_ptr(), tuple(flat[::step][:samples].tolist()))
