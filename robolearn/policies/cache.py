"""Weights derived once for CPU inference (reordered for oneDNN, or float16 for FBGEMM), and the
keys that tell when such a copy has gone stale."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

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


def _fp16_linear_available() -> bool:
    """FBGEMM's float16-weight products (x86 CPUs): fp16 weights, fp32 inputs and accumulation."""
    try:
        if "fbgemm" not in torch.backends.quantized.supported_engines:
            return False
        w = torch.ones(8, 8)
        y = torch.ops.quantized.linear_dynamic_fp16(
            torch.ones(2, 8), torch.ops.quantized.linear_prepack_fp16(w, None)
        )
        return bool(torch.equal(y, torch.full((2, 8), 8.0)))
    except (AttributeError, RuntimeError):
        return False


FP16_LINEAR = _fp16_linear_available()
INFERENCE_DTYPES = ("float32", "float16")
_WEIGHTS: contextvars.ContextVar[str] = contextvars.ContextVar("weights", default="float32")


@contextlib.contextmanager
def cpu_weights(dtype: str) -> Iterator[None]:
    """The precision of the weights in the CPU inference products run inside the block.

    `float32`: as trained, through oneDNN on a reordered copy. `float16`: a float16 copy of each
    weight through FBGEMM (inputs, outputs and accumulation stay float32): half the bytes read
    per call, the rounding of TF32 (10 mantissa bits, PyTorch's default for convolutions on
    NVIDIA GPUs): actions agree with float32 to about 1e-4 of their range. Where FBGEMM is
    missing (non-x86 CPUs) float16 runs as float32.
    """
    if dtype not in INFERENCE_DTYPES:
        raise ValueError(f"CPU inference weights {dtype!r}: choose one of {INFERENCE_DTYPES}")
    token = _WEIGHTS.set(dtype)
    try:
        yield
    finally:
        _WEIGHTS.reset(token)


def cpu_weights_dtype() -> str:
    """The weight precision `cpu_weights` set for the CPU products of the current block."""
    return _WEIGHTS.get()


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
        self._fp16 = False

    # The reordered weight is an opaque oneDNN tensor: copies and pickles start empty.
    def __deepcopy__(self, memo: dict[int, object]) -> PackedLinear:
        return type(self)()

    def __getstate__(self) -> dict[str, object]:
        return {"_key": None, "_packed": None, "_fp16": False}

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
        fp16 = FP16_LINEAR and _WEIGHTS.get() == "float16"
        key = (weight_key(weight) if key is None else key, fp16)
        if self._packed is None or key != self._key:
            w = weight.detach().contiguous()
            if fp16:
                self._packed = torch.ops.quantized.linear_prepack_fp16(w, None)
            else:
                self._packed = torch.ops.mkldnn._reorder_linear_weight(
                    w, max(1, x.numel() // x.shape[-1])
                )
            self._key, self._fp16 = key, fp16
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        if self._fp16:
            y = torch.ops.quantized.linear_dynamic_fp16(rows, self._packed)
            if bias is not None:
                y = y.add_(bias)
        else:
            y = torch.ops.mkldnn._linear_pointwise(rows, self._packed, bias, "none", [], "")
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
