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


def _onednn_linear_available() -> bool:
    ops = torch.ops.mkldnn
    try:
        return bool(
            torch.backends.mkldnn.is_available()
            and hasattr(ops, "_reorder_linear_weight")
            and hasattr(ops, "_linear_pointwise")
        )
    except (AttributeError, RuntimeError):
        return False


ONEDNN_LINEAR = _onednn_linear_available()


class PackedLinear:
    """`F.linear` at CPU inference through oneDNN, on a weight reordered for it once.

    At batch 1 the products are a few rows by a large weight, so their cost is reading the
    weight. MKL's sgemm re-packs the weight on every call and streams it at ~10 GB/s on a 2-core
    machine; a weight reordered once into oneDNN's blocked layout (as torch.compile's CPU weight
    prepacking does) streams about twice as fast. The reordered copy is rebuilt when the weight
    changes (`weight_key`: writes through `.data` too). Other cases — autograd, GPUs, other
    dtypes, builds without oneDNN — run plain `F.linear`.
    """

    def __init__(self) -> None:
        self._key: tuple[object, ...] | None = None
        self._packed: torch.Tensor | None = None

    # The reordered weight is an opaque oneDNN tensor: copies and pickles start empty.
    def __deepcopy__(self, memo: dict[int, object]) -> PackedLinear:
        return type(self)()

    def __getstate__(self) -> dict[str, object]:
        return {"_key": None, "_packed": None}

    def __call__(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        key: tuple[object, ...] | None = None,
    ) -> torch.Tensor:
        """`F.linear(x, weight, bias)`; `key` names the weight's state when the caller already
        keeps one (a derived weight copy made in inference mode has no version counter)."""
        if (
            not ONEDNN_LINEAR
            or torch.is_grad_enabled()
            or x.device.type != "cpu"
            or x.dtype != torch.float32
            or weight.dtype != torch.float32
        ):
            return torch.nn.functional.linear(x, weight, bias)
        key = weight_key(weight) if key is None else key
        if self._packed is None or key != self._key:
            w = weight.detach().contiguous()
            self._packed = torch.ops.mkldnn._reorder_linear_weight(
                w, max(1, x.numel() // x.shape[-1])
            )
            self._key = key
        rows = x.reshape(-1, x.shape[-1])
        y = torch.ops.mkldnn._linear_pointwise(
            rows.contiguous(), self._packed, bias, "none", [], ""
        )
        return y.reshape(*x.shape[:-1], y.shape[-1])


class PackedLinears:
    """One `PackedLinear` per weight tensor, for a module that runs several linear maps."""

    def __init__(self) -> None:
        self._by_weight: dict[int, PackedLinear] = {}

    def __deepcopy__(self, memo: dict[int, object]) -> PackedLinears:
        return type(self)()

    def __getstate__(self) -> dict[str, object]:
        return {"_by_weight": {}}

    def __call__(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        linear = self._by_weight.get(id(weight))
        if linear is None:
            linear = self._by_weight[id(weight)] = PackedLinear()
        return linear(x, weight, bias)
