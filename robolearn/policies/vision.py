"""Vision encoders: torchvision's ResNet-18 (BatchNorm or EMA-safe GroupNorm), spatial softmax, augmentation."""

from __future__ import annotations

import copy
import itertools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.transforms.v2 import functional as TF

from robolearn.errors import SpecError
from robolearn.policies.cache import PackedLinear, module_key, weight_key

log = logging.getLogger(__name__)

Norm = Literal["group", "batch"]
Pooling = Literal["spatial_softmax", "avg"]


@dataclass
class VisionConfig:
    """How camera frames become features. Shared by the policies that see images."""

    backbone: str = "resnet18"
    norm: Norm = "group"  # GroupNorm keeps EMA and small batches safe; "batch" for pretrained BN
    pretrained: str | None = None  # a local .safetensors / .pth of torchvision's ResNet weights
    pooling: Pooling = "spatial_softmax"
    num_keypoints: int = 32
    feature_dim: int = 64  # per camera, after pooling
    shared: bool = False  # one backbone for every camera, or one per camera
    crop: float | None = 0.9  # crop side as a fraction of the frame (random when training)
    color_jitter: float = 0.0  # brightness/contrast/saturation strength when training; 0 = off


class MatmulConv2d(nn.Conv2d):
    """nn.Conv2d whose small CPU inference convolutions run as unfold + one matmul.

    On deep, small feature maps at batch 1 (ResNet's layer3/4 on a 96×96 frame) PyTorch picks
    its slow convolution path, which also re-lays out the weights on every call (a 9 MB copy
    for a 512×512×3×3 kernel). Here the weight matrix is cached and the convolution is one
    matrix product. Training, autograd, CUDA and large inputs use the normal convolution.
    """

    SMALL = 12288  # input elements (per sample) up to which one matmul beats the convolution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            torch.is_grad_enabled()
            or self.training
            or x.device.type != "cpu"
            or x[0].numel() > self.SMALL
            or self.groups != 1
            or not isinstance(self.padding, tuple)
        ):
            return super().forward(x)
        key = weight_key(self.weight)
        if getattr(self, "_mm_key", None) != key:
            self._mm_w = self.weight.detach().reshape(self.weight.shape[0], -1).contiguous()
            self._mm_key = key
        if "_mm_linear" not in self.__dict__:
            self.__dict__["_mm_linear"] = PackedLinear()
        b, _, h, w = x.shape
        kh, kw = self.kernel_size
        oh = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        ow = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        # (B, L, C_out), bias included; a oneDNN product on a weight reordered once
        y = self._mm_linear(cols.transpose(1, 2), self._mm_w, self.bias, key)
        return y.transpose(1, 2).reshape(b, -1, oh, ow)


def use_matmul_convs(module: nn.Module) -> nn.Module:
    """Switch every plain nn.Conv2d in `module` to MatmulConv2d (same weights, same state_dict)."""
    for m in module.modules():
        if type(m) is nn.Conv2d:
            m.__class__ = MatmulConv2d
    return module


def resnet18_backbone(
    norm: Norm = "group", pretrained: str | os.PathLike[str] | None = None
) -> nn.Module:
    """torchvision's ResNet-18 up to layer4 (stride 32, 512 channels), weights from a local file."""
    norm_layer = (lambda c: nn.GroupNorm(c // 16, c)) if norm == "group" else nn.BatchNorm2d
    net = torchvision.models.resnet18(weights=None, norm_layer=norm_layer)
    if pretrained:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"pretrained weights {path} not found; robolearn never downloads weights: save "
                "torchvision's resnet18 state_dict to a local file and name it here"
            )
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        if norm == "group":  # GroupNorm has an affine part but no running statistics
            state = {
                k: v for k, v in state.items() if "running_" not in k and "num_batches" not in k
            }
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        try:
            missing, unexpected = net.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shapes that do not match
            raise SpecError(f"{path} is not a torchvision resnet18 state_dict: {e}") from None
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise SpecError(
                f"{path} is not a torchvision resnet18 state_dict: missing {missing[:4]}, "
                f"unexpected {unexpected[:4]}"
            )
        log.info("loaded ResNet-18 weights from %s", path)
    return use_matmul_convs(nn.Sequential(*list(net.children())[:-2]))


def fold_batchnorm(backbone: nn.Module) -> nn.Module:
    """An inference copy of a ResNet backbone with each BatchNorm folded into the convolution
    that feeds it (conv1→bn1 and conv2→bn2 in every block, the stem, the downsample paths).

    In eval mode a BatchNorm is a per-channel affine map with fixed running statistics, so it
    can be multiplied into the convolution's weights and bias: the same output, one pass over
    the feature map fewer. Pairs are found by ResNet's layout (a conv registered right before
    its BatchNorm in the same parent module).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    net = copy.deepcopy(backbone).eval()
    for parent in net.modules():
        names = list(parent._modules)
        for a, b in itertools.pairwise(names):
            conv, bn = parent._modules[a], parent._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                if bn.running_mean is None or bn.running_var is None:
                    continue  # a BatchNorm without running statistics normalises per batch
                parent._modules[a] = fuse_conv_bn_eval(conv, bn)
                parent._modules[b] = nn.Identity()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


class InferenceBackbone:
    """The backbone to run at inference: a BatchNorm-folded copy, rebuilt when weights change.

    Training, autograd and GroupNorm backbones use the module itself. The copy is kept outside
    the module tree, so it is neither saved nor trained.
    """

    def __init__(self) -> None:
        self._key: tuple[object, ...] | None = None
        self._net: nn.Module | None = None

    def __call__(self, backbone: nn.Module) -> nn.Module:
        if backbone.training or torch.is_grad_enabled():
            return backbone
        if not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules()):
            return backbone
        key = module_key(backbone)
        if self._net is None or key != self._key:
            with torch.inference_mode(False):  # real tensors: their caches key on versions
                self._net, self._key = fold_batchnorm(backbone), key
        return self._net


class SpatialSoftmax(nn.Module):
    """Feature map → expected image coordinates of `num_keypoints` learned keypoints (x, y each)."""

    def __init__(self, channels: int, num_keypoints: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, num_keypoints, 1)
        self.num_keypoints = num_keypoints

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, _, h, w = features.shape
        logits = self.proj(features).flatten(2)  # (B, K, H*W)
        attn = logits.softmax(-1)
        ys = torch.linspace(-1.0, 1.0, h, device=features.device, dtype=attn.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=features.device, dtype=attn.dtype)
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(h * w, 2)
        return (attn @ grid).reshape(b, 2 * self.num_keypoints)  # (B, 2K)


def crop_size(image_shape: tuple[int, ...], crop: float | None) -> tuple[int, int]:
    h, w = image_shape[0], image_shape[1]
    if not crop:
        return h, w
    if not 0.0 < crop <= 1.0:
        raise SpecError(f"vision crop must be a fraction in (0, 1], got {crop}")
    return max(8, round(h * crop)), max(8, round(w * crop))


class ImageAugment(nn.Module):
    """Random crop + optional colour jitter when training; centre crop at inference.

    Works on float images (N, C, H, W) in [0, 1]; every sample gets its own crop and jitter.
    """

    def __init__(self, out_hw: tuple[int, int], color_jitter: float = 0.0) -> None:
        super().__init__()
        self.out_hw = out_hw
        self.color_jitter = float(color_jitter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        ch, cw = self.out_hw
        if (ch, cw) != (h, w):
            if self.training:
                oy = torch.randint(0, h - ch + 1, (n,), device=x.device)
                ox = torch.randint(0, w - cw + 1, (n,), device=x.device)
                rows = (oy[:, None] + torch.arange(ch, device=x.device))[:, :, None]
                cols = (ox[:, None] + torch.arange(cw, device=x.device))[:, None, :]
                x = x[torch.arange(n, device=x.device)[:, None, None], :, rows, cols]  # N,ch,cw,C
                x = x.permute(0, 3, 1, 2)
            else:
                top, left = (h - ch) // 2, (w - cw) // 2
                x = x[:, :, top : top + ch, left : left + cw]
        if self.training and self.color_jitter > 0:
            s = self.color_jitter
            factors = 1.0 + (torch.rand(n, 3) * 2 - 1) * s
            x = torch.stack(
                [
                    TF.adjust_saturation(
                        TF.adjust_contrast(TF.adjust_brightness(img, float(f[0])), float(f[1])),
                        float(f[2]),
                    )
                    for img, f in zip(x, factors, strict=True)
                ]
            )
        return x


class ImageEncoder(nn.Module):
    """One camera's frames → a feature vector: augment, ResNet-18, pooling, projection."""

    def __init__(self, image_shape: tuple[int, ...], config: VisionConfig) -> None:
        super().__init__()
        if config.backbone != "resnet18":
            raise SpecError(f"vision backbone {config.backbone!r} is not available; use resnet18")
        self.augment = ImageAugment(crop_size(image_shape, config.crop), config.color_jitter)
        self.backbone = resnet18_backbone(config.norm, config.pretrained)
        if config.pooling == "spatial_softmax":
            self.pool: nn.Module = SpatialSoftmax(512, config.num_keypoints)
            pooled = 2 * config.num_keypoints
        elif config.pooling == "avg":
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            pooled = 512
        else:
            raise SpecError(f"vision pooling {config.pooling!r} is not one of spatial_softmax, avg")
        self.out = nn.Sequential(nn.Linear(pooled, config.feature_dim), nn.ReLU())
        self.feature_dim = config.feature_dim

    def forward(
        self, x: torch.Tensor, normalize: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """(N, C, H, W) float in [0, 1] → (N, feature_dim); `normalize` is applied after augmenting."""
        return self.out(self.pool(self.backbone(normalize(self.augment(x)))))
