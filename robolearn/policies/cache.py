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


def module_key(module: torch.nn.Module) -> tuple[object, ...]:
    """What a derived copy of a whole module must be rebuilt on: the version counter and storage
    of every parameter and buffer, and a value sample of its first and last parameters (the EMA
    swaps every parameter through `.data` at once, which bumps no version counter)."""
    params = list(module.parameters())
    tensors = [*params, *module.buffers()]
    ends = (weight_key(params[0]), weight_key(params[-1])) if params else ()
    return (tuple((t._version, t.data_ptr()) for t in tensors), *ends)
