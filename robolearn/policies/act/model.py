"""ACT: Action Chunking with Transformers, as a conditional VAE.

Training: a VAE encoder reads [CLS, state, a_1..a_H] and gives the posterior of a style latent z
(32-D). The policy — a transformer encoder over [z, state, image feature tokens] and a decoder
with one query per chunk step — reconstructs the chunk; loss = masked L1 + kl_weight · KL.
Inference: z = 0 (the prior's mean), no VAE encoder.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robolearn.data.stats import KeyStats
from robolearn.errors import SpecError
from robolearn.policies.base import Policy, PolicyConfig, masked_mean
from robolearn.policies.cache import PackedLinear, PackedLinears, cpu_weights_dtype, module_key
from robolearn.policies.cache import weight_key as weight_key_of
from robolearn.policies.vision import (
    ImageAugment,
    InferenceBackbone,
    VisionConfig,
    crop_size,
    make_backbone,
    use_matmul_convs,
)
from robolearn.spec import FeatureSpec


def _act_vision() -> VisionConfig:
    return VisionConfig(norm="batch", crop=None, pooling="avg")


@dataclasses.dataclass
class ACTConfig(PolicyConfig):
    policy: ClassVar[str] = "robolearn.policies.act.model:ACTPolicy"
    # how the deployment runtime executes its chunks by default (robolearn.runner)
    execution: ClassVar[str] = "ensemble"

    n_obs_steps: int = 1
    horizon: int = 100  # the chunk size: 2 s at 50 Hz
    n_action_steps: int = 100
    normalization: dict[str, str] = dataclasses.field(
        default_factory=lambda: {"state": "mean_std", "action": "mean_std", "image": "mean_std"}
    )
    vision: VisionConfig = dataclasses.field(default_factory=_act_vision)
    dim_model: int = 512
    n_heads: int = 8
    dim_feedforward: int = 3200
    n_encoder_layers: int = 4
    n_decoder_layers: int = 1
    n_vae_encoder_layers: int = 4
    latent_dim: int = 32
    dropout: float = 0.1
    use_vae: bool = True
    kl_weight: float = 10.0
    # z at inference: "zero" (the prior's mean, as ACT does: deterministic, commits to the mode
    # the decoder ties to z = 0) or "prior" (z ~ N(0, I): samples among the demonstrated styles
    # when the latent carries them, which needs a kl_weight low enough that it is not ignored)
    latent: str = "zero"
    # Average-pool each camera's feature map by this factor before it becomes tokens. The
    # encoder's cost grows with the token count: the small `cnn` backbone (stride 8) gives a
    # 96×96 frame 12×12 = 144 tokens, and ACT trains ~4× slower on a CPU than with 6×6 (2) or
    # ResNet-18's 3×3 (4: stride 32, as ACT's own backbone).
    image_pool: int = 1

    def validate(self) -> None:
        super().validate()
        if self.n_obs_steps != 1:
            raise SpecError("ACT reads one observation (n_obs_steps: 1)")
        if self.image_pool < 1:
            raise SpecError(f"ACT image_pool {self.image_pool} must be 1 (none) or more")
        if self.latent not in ("zero", "prior"):
            raise SpecError(f"ACT latent {self.latent!r} is not 'zero' or 'prior'")
        if self.dim_model % self.n_heads:
            raise SpecError(
                f"dim_model {self.dim_model} must be a multiple of n_heads {self.n_heads}"
            )


def sinusoid_1d(n: int, d: int) -> torch.Tensor:
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(n, d)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div)
    return table


def sinusoid_2d(h: int, w: int, d: int) -> torch.Tensor:
    """(h·w, d): half the channels encode the row, half the column (DETR-style)."""
    rows = sinusoid_1d(h, d // 2)[:, None, :].expand(h, w, d // 2)
    cols = sinusoid_1d(w, d // 2)[None, :, :].expand(h, w, d // 2)
    return torch.cat([rows, cols], -1).reshape(h * w, d)


def _encoder(cfg: ACTConfig, layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        cfg.dim_model,
        cfg.n_heads,
        cfg.dim_feedforward,
        cfg.dropout,
        activation="relu",
        batch_first=True,
    )
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class ACTPolicy(Policy):
    config_class = ACTConfig
    config: ACTConfig

    def __init__(
        self, config: ACTConfig, spec: FeatureSpec, stats: Mapping[str, KeyStats] | None = None
    ) -> None:
        super().__init__(config, spec, stats)
        d, h = config.dim_model, config.horizon
        if not self.state_keys and not self.image_keys:
            raise SpecError("ACT needs at least one state or image observation")
        # --- VAE encoder: [CLS, state, actions] → q(z | state, actions)
        if config.use_vae:
            self.vae_cls = nn.Parameter(torch.zeros(1, 1, d))
            self.vae_state = nn.Linear(self.state_dim, d) if self.state_keys else None
            self.vae_action = nn.Linear(self.action_dim, d)
            self.vae_encoder = _encoder(config, config.n_vae_encoder_layers)
            self.vae_out = nn.Linear(d, 2 * config.latent_dim)
            n_vae = 1 + bool(self.state_keys) + h
            self.register_buffer("vae_pos", sinusoid_1d(n_vae, d)[None], persistent=False)
        # --- observation tokens
        self.latent_in = nn.Linear(config.latent_dim, d)
        self.state_in = nn.Linear(self.state_dim, d) if self.state_keys else None
        n_1d = 1 + bool(self.state_keys)
        self.pos_1d = nn.Parameter(torch.zeros(1, n_1d, d))
        self.image_tokens = 0
        if self.image_keys:
            # One backbone for every camera (as ACT); crops and positions are per camera.
            self.backbone, channels, stride = make_backbone(config.vision)
            self.image_proj = use_matmul_convs(nn.Conv2d(channels, d, 1))
            pool = config.image_pool
            # ceil_mode: a partial window at the edge is a token of its own (its mean)
            self.token_pool = nn.AvgPool2d(pool, ceil_mode=True) if pool > 1 else nn.Identity()
            self.augment = nn.ModuleList()
            for i, key in enumerate(self.image_keys):
                out_hw = crop_size(self.spec[key].shape, config.vision.crop)
                self.augment.append(ImageAugment(out_hw, config.vision.color_jitter))
                fh, fw = math.ceil(out_hw[0] / stride), math.ceil(out_hw[1] / stride)
                fh, fw = math.ceil(fh / config.image_pool), math.ceil(fw / config.image_pool)
                self.register_buffer(
                    f"image_pos_{i}", sinusoid_2d(fh, fw, d)[None], persistent=False
                )
                self.image_tokens += fh * fw
        # --- transformer
        self.encoder = _encoder(config, config.n_encoder_layers)
        layer = nn.TransformerDecoderLayer(
            d,
            config.n_heads,
            config.dim_feedforward,
            config.dropout,
            activation="relu",
            batch_first=True,
        )
        self.decoder = nn.TransformerDecoder(layer, config.n_decoder_layers)
        self.queries = nn.Parameter(torch.zeros(1, h, d))
        self.head = nn.Linear(d, self.action_dim)
        for p in (self.pos_1d, self.queries):
            nn.init.normal_(p, std=0.02)
        # inference-only derived weights, outside the module tree (never saved or trained)
        self.__dict__["_infer_backbone"] = InferenceBackbone()
        self.__dict__["_query_cache"] = (None, None)
        self.__dict__["_ffn_cache"] = (None, None)
        self.__dict__["_linear"] = PackedLinears()

    # ------------------------------------------------------------------ parts
    def _tokens(self, obs: Mapping[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        """[z, state, image tokens] with positions: (B, N, d)."""
        tokens = [self.latent_in(z)[:, None]]
        state = self.normalized_state(obs)
        if state is not None:
            tokens.append(self.state_in(state[:, -1])[:, None])
        out = torch.cat(tokens, 1) + self.pos_1d
        if self.image_keys:
            images = []
            for i, key in enumerate(self.image_keys):
                x = obs[key][:, -1].permute(0, 3, 1, 2).float().div_(255.0)  # (B, C, H, W)
                x = self.normalizer.image(key, self.augment[i](x))
                backbone = self._infer_backbone(self.backbone)  # BatchNorm folded at inference
                feats = self.image_proj(self.token_pool(backbone(x)))  # (B, d, h, w)
                pos = getattr(self, f"image_pos_{i}")
                images.append(feats.flatten(2).transpose(1, 2) + pos)
            out = torch.cat([out, *images], 1)
        return out

    def _decode(self, obs: Mapping[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        if not (self.training or torch.is_grad_enabled()):
            memory = self._encode_inference(self._tokens(obs, z))
            return self._linear(self._decode_inference(memory), self.head.weight, self.head.bias)
        memory = self.encoder(self._tokens(obs, z))
        queries = self.queries.expand(z.shape[0], -1, -1)
        return self.head(self.decoder(queries, memory))  # (B, H, A)

    def _encode_inference(self, x: torch.Tensor) -> torch.Tensor:
        """The transformer encoder at inference: the same function as `self.encoder(x)` (post-
        norm, ReLU, dropout off), its matrix products on weights reordered once for oneDNN."""
        lin = self._linear
        b, n, d = x.shape
        for layer in self.encoder.layers:
            mha = layer.self_attn
            heads = mha.num_heads
            qkv = lin(x, mha.in_proj_weight, mha.in_proj_bias)  # (B, N, 3d)
            q, k, v = qkv.view(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
            att = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
            x = layer.norm1(x + lin(att, mha.out_proj.weight, mha.out_proj.bias))
            ff = lin(x, layer.linear1.weight, layer.linear1.bias).relu_()
            x = layer.norm2(x + lin(ff, layer.linear2.weight, layer.linear2.bias))
        return x if self.encoder.norm is None else self.encoder.norm(x)

    def _query_side(self) -> tuple[torch.Tensor, torch.Tensor]:
        """What the first decoder layer computes from the queries alone: its self-attention
        block's output x1 (1, H, d) and x1's cross-attention query projection (1, H, d).

        The queries are parameters, so at inference this part does not depend on the
        observation; it is computed once per set of weights (a seventh of ACT's FLOPs)."""
        layer = self.decoder.layers[0]
        key = (*module_key(layer), weight_key_of(self.queries))
        cached_key, cached = self._query_cache
        if cached is None or cached_key != key:
            q = self.queries
            x1 = layer.norm1(q + layer._sa_block(q, None, None))
            d = x1.shape[-1]
            w, b = layer.multihead_attn.in_proj_weight, layer.multihead_attn.in_proj_bias
            cached = (x1, F.linear(x1, w[:d], None if b is None else b[:d]))
            self.__dict__["_query_cache"] = (key, cached)
        return cached

    def _ffn_side(self) -> tuple[torch.Tensor, ...]:
        """Weights derived once for the first decoder layer's factored feed-forward input (see
        `_decode_inference`): W1' = linear1.weight · diag(norm2.weight) and

        - base (H, d) = x1 + out_proj.bias, the part of each query's residual that does not
          depend on the observation, and C (H, F) = base · W1'ᵀ;
        - s (F) = W1' · 1 and c (F) = linear1.weight · norm2.bias + linear1.bias (LayerNorm's
          mean and shift, moved past the product);
        - M (heads, d_h, F): each head's slice of out_proj followed by W1'; Wo (heads, d_h, d):
          each head's slice of out_proj;
        - the key/value part of the cross-attention's input projection, as tensors of their own
          (a slice is a new tensor on every call: no reordered copy could be kept for it)."""
        layer = self.decoder.layers[0]
        key = (*module_key(layer), weight_key_of(self.queries))
        cached_key, cached = self._ffn_cache
        if cached is None or cached_key != key:
            x1, _ = self._query_side()
            mha, lin1, norm = layer.multihead_attn, layer.linear1, layer.norm2
            d = x1.shape[-1]
            heads, dh = mha.num_heads, d // mha.num_heads
            ones = torch.ones(d, device=x1.device)
            gamma = ones if norm.weight is None else norm.weight
            beta = torch.zeros_like(ones) if norm.bias is None else norm.bias
            w1 = lin1.weight * gamma  # (F, d)
            wo = mha.out_proj.weight  # (d, d)
            base = x1[0] if mha.out_proj.bias is None else x1[0] + mha.out_proj.bias
            c = lin1.weight @ beta
            c = c if lin1.bias is None else c + lin1.bias
            cached = (
                base,
                base @ w1.T,
                w1.sum(1),
                c,
                (w1 @ wo).view(-1, heads, dh).permute(1, 2, 0).contiguous(),
                wo.view(d, heads, dh).permute(1, 2, 0).contiguous(),
                mha.in_proj_weight[d:].contiguous(),
                None if mha.in_proj_bias is None else mha.in_proj_bias[d:].contiguous(),
            )
            self.__dict__["_kv_linear"] = PackedLinear()
            self.__dict__["_ffn_cache"] = (key, cached)
        return cached

    def _decode_inference(self, memory: torch.Tensor) -> torch.Tensor:
        """The decoder at inference: the same function as `self.decoder(queries, memory)` (post-
        norm layers, dropout off), with the first layer's query-only part taken from the cache.

        The first layer's feed-forward input is factored through its attention. With y = x1 +
        out_proj(attention) (H queries, d wide) and a the attention weights (H × heads·N, N ≈
        11 memory tokens), y = base + a·U, U holding each head's values through its slice of
        out_proj. LayerNorm is a per-row affine map, so linear1(norm2(y)) = (C + a·P − μ·s) /
        σ + c, where P = each head's values through M (N·heads × F, computed per call from
        11 tokens) and μ, σ are y's row mean and deviation. This replaces the H × d × F product
        (and out_proj's H × d × d one) with N·heads × d_h × F and H × heads·N × F products: a
        third of the multiply-adds at H = 100 (float32 weights only; with float16 weights the
        plain path reads half the bytes instead)."""
        layer = self.decoder.layers[0]
        mha = layer.multihead_attn
        x1, q = self._query_side()
        b, n, d = memory.shape
        heads = mha.num_heads
        w, bias = mha.in_proj_weight, mha.in_proj_bias
        factored = cpu_weights_dtype() == "float32" and memory.device.type == "cpu"
        if factored:
            base, c_q, s, c, m, wo, w_kv, b_kv = self._ffn_side()
            kv = self._kv_linear(memory, w_kv, b_kv, key=self._ffn_cache[0])
        else:
            kv = F.linear(memory, w[d:], None if bias is None else bias[d:])  # (B, N, 2d)
        k, v = kv.view(b, n, 2, heads, d // heads).permute(2, 0, 3, 1, 4)  # (B, heads, N, d_h)
        qh = q.view(1, -1, heads, d // heads).transpose(1, 2).expand(b, -1, -1, -1)
        lin = self._linear
        if factored:
            v = v.contiguous()
            a = torch.softmax(qh @ k.transpose(-1, -2) * (d // heads) ** -0.5, -1)
            a = a.transpose(1, 2).reshape(b, -1, heads * n)  # (B, H, heads·N)
            y = torch.baddbmm(base.expand(b, -1, -1), a, (v @ wo).reshape(b, heads * n, d))
            var, mu = torch.var_mean(y, -1, keepdim=True, correction=0)
            rstd = (var + layer.norm2.eps).rsqrt_()
            x = F.layer_norm(y, (d,), layer.norm2.weight, layer.norm2.bias, layer.norm2.eps)
            h = torch.baddbmm(c_q.expand(b, -1, -1), a, (v @ m).reshape(b, heads * n, -1))
            ff = h.sub_(mu * s).mul_(rstd).add_(c).relu_()
        else:
            att = F.scaled_dot_product_attention(qh, k, v)  # (B, heads, H, d_h)
            att = lin(att.transpose(1, 2).reshape(b, -1, d), mha.out_proj.weight, mha.out_proj.bias)
            x = layer.norm2(x1 + att)
            ff = lin(x, layer.linear1.weight, layer.linear1.bias).relu_()
        x = layer.norm3(x + lin(ff, layer.linear2.weight, layer.linear2.bias))
        for later in self.decoder.layers[1:]:
            x = later(x, memory)
        return x if self.decoder.norm is None else self.decoder.norm(x)

    def _posterior(
        self, obs: Mapping[str, torch.Tensor], actions: torch.Tensor, is_pad: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b = actions.shape[0]
        tokens = [self.vae_cls.expand(b, -1, -1)]
        pad = [torch.zeros(b, 1, dtype=torch.bool, device=actions.device)]
        state = self.normalized_state(obs)
        if state is not None and self.vae_state is not None:
            tokens.append(self.vae_state(state[:, -1])[:, None])
            pad.append(pad[0])
        tokens.append(self.vae_action(actions))
        pad.append(is_pad)
        x = torch.cat(tokens, 1) + self.vae_pos
        h = self.vae_encoder(x, src_key_padding_mask=torch.cat(pad, 1))
        mu, logvar = self.vae_out(h[:, 0]).chunk(2, -1)
        return mu, logvar

    # ------------------------------------------------------------------ contract
    def compute_loss(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = self._to_device(batch, [*self.obs_keys, *self.action_keys, "action_is_pad"])
        actions = self.normalized_actions(batch)
        is_pad = batch["action_is_pad"]
        b = actions.shape[0]
        if self.config.use_vae:
            mu, logvar = self._posterior(batch, actions, is_pad)
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
            kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(-1).mean()
        else:
            z = torch.zeros(b, self.config.latent_dim, device=actions.device)
            kl = torch.zeros((), device=actions.device)
        pred = self._decode(batch, z)
        l1 = masked_mean(F.l1_loss(pred, actions, reduction="none"), is_pad)
        return {"loss": l1 + self.config.kl_weight * kl, "l1": l1, "kl": kl}

    def _predict(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        b = obs[self.obs_keys[0]].shape[0]
        z = torch.zeros(b, self.config.latent_dim, device=self.device)
        if self.config.latent == "prior":
            z.normal_()
        return self._decode(obs, z)
