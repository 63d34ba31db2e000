"""Denoising networks over an action chunk, shared by diffusion and flow matching.

Both map (noisy chunk (B, H, A), time (B,), observation features (B, T, D)) → (B, H, A):
the conditional U-Net 1D with FiLM of diffusion policy, and a transformer decoder that reads the
observation tokens through cross-attention.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from robolearn.errors import SpecError
from robolearn.policies.cache import PackedLinear, weight_key


@dataclass
class DenoiserConfig:
    kind: Literal["unet", "transformer"] = "unet"
    time_embed_dim: int = 128
    # U-Net
    down_dims: list[int] = field(default_factory=lambda: [256, 512, 1024])
    kernel_size: int = 5
    n_groups: int = 8
    # transformer
    d_model: int = 256
    n_layers: int = 8
    n_heads: int = 4
    dropout: float = 0.1
    attn_dropout: float = 0.3
    causal: bool = True


def make_denoiser(
    config: DenoiserConfig, action_dim: int, horizon: int, cond_dim: int, n_obs_steps: int
) -> nn.Module:
    if config.kind == "unet":
        return ConditionalUnet1D(action_dim, horizon, cond_dim * n_obs_steps, config)
    if config.kind == "transformer":
        return TransformerDenoiser(action_dim, horizon, cond_dim, n_obs_steps, config)
    raise SpecError(f"denoiser kind {config.kind!r} is not one of unet, transformer")


class SinusoidalEmbedding(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / (half - 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # computed in fp32 even when the network runs in bf16 (the phases need the precision)
        x = t.float()[:, None] * self.freqs.float()[None, :]
        return torch.cat([x.sin(), x.cos()], -1).to(self.freqs.dtype)


def time_mlp(dim: int) -> nn.Sequential:
    return nn.Sequential(
        SinusoidalEmbedding(dim), nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim)
    )


# ---------------------------------------------------------------------------------- U-Net
class Conv1d(nn.Conv1d):
    """nn.Conv1d whose CPU inference runs as one matrix product, optionally with bf16 weights.

    At batch 1 a U-Net step mostly reads its weights (a few activations per channel), and
    PyTorch sends such small 1-D convolutions to its slow (non-oneDNN) im2col path. With
    `fast_dtype` set and autograd off, the convolution becomes unfold + one matmul on a cached
    (C_out, k·C_in) weight copy: float32 gives the same result faster; bfloat16 (oneDNN, AMX
    where the CPU has it) also halves the bytes read, at bf16 precision. Training, CUDA and
    autograd use the normal convolution.
    """

    fast_dtype: torch.dtype | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self.fast_dtype is None
            or torch.is_grad_enabled()
            or self.training
            or x.device.type != "cpu"  # cuDNN has no such slow path
        ):
            return super().forward(x)
        key = (weight_key(self.weight), self.fast_dtype)
        if getattr(self, "_fast_key", None) != key:
            w = self.weight.detach()  # (C_out, C_in, k) → (C_out, k·C_in), tap-major
            self._fast_w = w.permute(0, 2, 1).reshape(w.shape[0], -1).to(self.fast_dtype)
            self._fast_key = key
        k, s, p = self.kernel_size[0], self.stride[0], self.padding[0]
        b, c, _ = x.shape
        cols = F.pad(x, (p, p)).unfold(2, k, s)  # (B, C_in, L_out, k)
        length = cols.shape[2]
        cols = cols.permute(0, 2, 3, 1).reshape(b * length, k * c).to(self.fast_dtype)
        if self.fast_dtype == torch.float32:  # a oneDNN product on a weight reordered once
            if "_fast_linear" not in self.__dict__:
                self.__dict__["_fast_linear"] = PackedLinear()
            y = self._fast_linear(cols, self._fast_w, None, key)  # (B·L_out, C_out)
        else:
            y = F.linear(cols, self._fast_w).to(x.dtype)  # (B·L_out, C_out)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(b, length, -1).transpose(1, 2)


class ConvTranspose1d(nn.ConvTranspose1d):
    """nn.ConvTranspose1d (the U-Net's upsampling) whose CPU inference is one matrix product.

    PyTorch runs a small transposed 1-D convolution through its slow path (about a tenth of a
    diffusion step at batch 1). With `fast_dtype` set and autograd off it becomes one product of
    the input's columns with a cached (C_out·k, C_in) weight, whose per-tap outputs are then
    overlap-added (`F.fold`) into place. Training, CUDA and autograd use the normal module.
    """

    fast_dtype: torch.dtype | None = None

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if (
            self.fast_dtype is None
            or output_size is not None
            or torch.is_grad_enabled()
            or self.training
            or x.device.type != "cpu"
            or self.groups != 1
            or self.dilation[0] != 1
            or x.dim() != 3
        ):
            return super().forward(x, output_size)
        key = (weight_key(self.weight), self.fast_dtype)
        if getattr(self, "_fast_key", None) != key:
            w = self.weight.detach()  # (C_in, C_out, k) → (C_out·k, C_in), channel-major
            self._fast_w = w.permute(1, 2, 0).reshape(-1, w.shape[0]).to(self.fast_dtype)
            self._fast_key = key
        b, c, length = x.shape
        k, s, p = self.kernel_size[0], self.stride[0], self.padding[0]
        rows = x.transpose(1, 2).reshape(b * length, c).to(self.fast_dtype)
        if self.fast_dtype == torch.float32:
            if "_fast_linear" not in self.__dict__:
                self.__dict__["_fast_linear"] = PackedLinear()
            taps = self._fast_linear(rows, self._fast_w, None, key)  # (B·L, C_out·k)
        else:
            taps = F.linear(rows, self._fast_w).to(x.dtype)
        full = (length - 1) * s + k
        y = F.fold(
            taps.reshape(b, length, -1).transpose(1, 2),  # (B, C_out·k, L)
            output_size=(1, full),
            kernel_size=(1, k),
            stride=(1, s),
        ).reshape(b, -1, full)
        y = y[:, :, p : full - p + self.output_padding[0]]
        if self.bias is not None:
            y = y + self.bias[:, None]
        return y


def set_fast_inference(module: nn.Module, dtype: torch.dtype | None) -> None:
    """Run the U-Net's convolutions at inference with `dtype` weights (None: as trained)."""
    for m in module.modules():
        if isinstance(m, (Conv1d, ConvTranspose1d)):
            m.fast_dtype = dtype


class Conv1dBlock(nn.Sequential):
    """Conv1d → GroupNorm → Mish."""

    def __init__(self, c_in: int, c_out: int, kernel: int, groups: int) -> None:
        super().__init__(
            Conv1d(c_in, c_out, kernel, padding=kernel // 2),
            nn.GroupNorm(groups, c_out),
            nn.Mish(),
        )


class FiLMResBlock(nn.Module):
    """Two conv blocks; the conditioning scales and shifts the first one's output per channel."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.block1 = Conv1dBlock(c_in, c_out, kernel, groups)
        self.block2 = Conv1dBlock(c_out, c_out, kernel, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.residual = Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor, film: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`film`: this block's FiLM output when the caller computed it (fused at inference)."""
        h = self.block1(x)  # (B, C, L)
        film = self.film(cond) if film is None else film
        scale, bias = film.unsqueeze(-1).chunk(2, dim=1)
        h = self.block2(scale * h + bias)
        return h + self.residual(x)


class ConditionalUnet1D(nn.Module):
    """Diffusion policy's temporal U-Net: 1-D convolutions over the chunk, FiLM-conditioned."""

    def __init__(
        self, action_dim: int, horizon: int, global_cond_dim: int, config: DenoiserConfig
    ) -> None:
        super().__init__()
        dims = [action_dim, *config.down_dims]
        if horizon % (2 ** (len(config.down_dims) - 1)):
            raise SpecError(
                f"the U-Net halves the horizon {len(config.down_dims) - 1} times: horizon "
                f"{horizon} must be a multiple of {2 ** (len(config.down_dims) - 1)}"
            )
        k, g = config.kernel_size, config.n_groups
        self.time = time_mlp(config.time_embed_dim)
        cond_dim = config.time_embed_dim + global_cond_dim
        pairs = list(itertools.pairwise(dims))
        self.down = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(pairs):
            last = i == len(pairs) - 1
            self.down.append(
                nn.ModuleList(
                    [
                        FiLMResBlock(c_in, c_out, cond_dim, k, g),
                        FiLMResBlock(c_out, c_out, cond_dim, k, g),
                        Conv1d(c_out, c_out, 3, 2, 1) if not last else nn.Identity(),
                    ]
                )
            )
        mid = dims[-1]
        self.mid = nn.ModuleList(
            [FiLMResBlock(mid, mid, cond_dim, k, g), FiLMResBlock(mid, mid, cond_dim, k, g)]
        )
        self.up = nn.ModuleList()
        # every level but the deepest was halved on the way down, so each is doubled on the way up
        for c_in, c_out in reversed(pairs[1:]):
            self.up.append(
                nn.ModuleList(
                    [
                        FiLMResBlock(2 * c_out, c_in, cond_dim, k, g),
                        FiLMResBlock(c_in, c_in, cond_dim, k, g),
                        ConvTranspose1d(c_in, c_in, 4, 2, 1),
                    ]
                )
            )
        self.final = nn.Sequential(
            Conv1dBlock(dims[1], dims[1], k, g), Conv1d(dims[1], action_dim, 1)
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """x (B, H, A), t (B,), obs (B, T, D) → (B, H, A)."""
        cond = torch.cat([self.time(t), obs.flatten(1)], -1)
        films = iter(self._fused_films(cond) or ())
        h = x.transpose(1, 2)  # (B, A, H): channels are action dimensions
        skips = []
        for res1, res2, down in self.down:
            h = res2(res1(h, cond, next(films, None)), cond, next(films, None))
            skips.append(h)
            h = down(h)
        for res in self.mid:
            h = res(h, cond, next(films, None))
        for res1, res2, up in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            h = up(res2(res1(h, cond, next(films, None)), cond, next(films, None)))
        return self.final(h).transpose(1, 2)

    def _blocks(self) -> list[FiLMResBlock]:
        """The FiLM blocks in the order forward runs them."""
        return [
            *(b for d in self.down for b in d[:2]),
            *self.mid,
            *(b for u in self.up for b in u[:2]),
        ]

    def _fused_films(self, cond: torch.Tensor) -> list[torch.Tensor] | None:
        """Every block's FiLM output from one product on the stacked weights (CPU inference).

        The blocks all read the same conditioning, so their 14 small linear maps are one matrix
        product per denoising step (one weight stream, one call) instead of 14."""
        first = self.down[0][0].block1[0]
        if (
            first.fast_dtype is None
            or torch.is_grad_enabled()
            or self.training
            or cond.device.type != "cpu"
        ):
            return None
        linears = [b.film[1] for b in self._blocks()]
        key = (
            tuple((m.weight._version, m.weight.data_ptr()) for m in linears),
            weight_key(linears[0].weight),
            weight_key(linears[-1].weight),
        )
        if getattr(self, "_film_key", None) != key:
            self._film_w = torch.cat([m.weight.detach() for m in linears]).contiguous()
            self._film_b = torch.cat([m.bias.detach() for m in linears])
            self._film_sizes = [m.out_features for m in linears]
            self._film_key = key
        if "_film_linear" not in self.__dict__:
            self.__dict__["_film_linear"] = PackedLinear()
        out = self._film_linear(F.mish(cond), self._film_w, self._film_b, key)
        return list(out.split(self._film_sizes, dim=1))


# ---------------------------------------------------------------------------------- transformer
class TransformerDenoiser(nn.Module):
    """Action tokens attend to each other (causally) and to [time, obs_1..obs_T] tokens."""

    def __init__(
        self,
        action_dim: int,
        horizon: int,
        obs_dim: int,
        n_obs_steps: int,
        config: DenoiserConfig,
    ) -> None:
        super().__init__()
        d = config.d_model
        self.action_in = nn.Linear(action_dim, d)
        self.action_pos = nn.Parameter(torch.zeros(1, horizon, d))
        self.time = time_mlp(d)
        self.obs_in = nn.Linear(obs_dim, d)
        self.cond_pos = nn.Parameter(torch.zeros(1, 1 + n_obs_steps, d))
        self.cond_encoder = nn.Sequential(nn.Linear(d, 4 * d), nn.Mish(), nn.Linear(4 * d, d))
        layer = nn.TransformerDecoderLayer(
            d,
            config.n_heads,
            4 * d,
            config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # attention dropout is heavier than the residual one, as diffusion policy found best
        for attn in (layer.self_attn, layer.multihead_attn):
            attn.dropout = config.attn_dropout
        self.decoder = nn.TransformerDecoder(layer, config.n_layers)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, action_dim)
        self.dropout = nn.Dropout(config.dropout)
        mask = (
            torch.triu(torch.full((horizon, horizon), float("-inf")), 1) if config.causal else None
        )
        self.register_buffer("mask", mask, persistent=False)
        nn.init.normal_(self.action_pos, std=0.02)
        nn.init.normal_(self.cond_pos, std=0.02)

    def forward(self, x: torch.Tensor, t: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """x (B, H, A), t (B,), obs (B, T, D) → (B, H, A)."""
        tokens = self.dropout(self.action_in(x) + self.action_pos)
        cond = torch.cat([self.time(t)[:, None], self.obs_in(obs)], 1) + self.cond_pos
        memory = self.cond_encoder(cond)
        h = self.decoder(tokens, memory, tgt_mask=self.mask, tgt_is_causal=self.mask is not None)
        return self.head(self.norm(h))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "ConditionalUnet1D",
    "DenoiserConfig",
    "TransformerDenoiser",
    "count_parameters",
    "make_denoiser",
]
