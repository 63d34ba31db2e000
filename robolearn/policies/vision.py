"""Vision encoders: torchvision's ResNet-18 (BatchNorm or EMA-safe GroupNorm) or a small
convolutional network for CPUs, spatial softmax, augmentation."""

from __future__ import annotations

import copy
import itertools
import logging
import math
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

    backbone: str = "resnet18"  # resnet18 | cnn (a 5-layer network, ~5x fewer operations)
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


BACKBONES = ("resnet18", "cnn")
CNN_LAYERS = ((16, 2), (32, 2), (32, 1), (64, 2), (64, 1))  # (channels, stride), 3×3 each


def cnn_backbone(
    norm: Norm = "group", layers: tuple[tuple[int, int], ...] | None = None
) -> nn.Module:
    """A small convolutional network: 3×3 convolutions, each followed by a normalisation and a
    ReLU, output stride 8 with 128 channels.

    For cameras of a few dozen pixels in simulation or on a CPU: on an 86×86 crop it is about
    55 M multiply-adds against ResNet-18's 270 M, and its 11×11 feature map gives a spatial
    softmax finer positions than ResNet's 3×3. It has no pretrained weights; it learns from the
    demonstrations alone.
    """
    mods: list[nn.Module] = []
    c_in = 3
    for c, stride in layers or CNN_LAYERS:
        mods += [
            nn.Conv2d(c_in, c, 3, stride, 1, bias=False),
            nn.GroupNorm(max(1, c // 16), c) if norm == "group" else nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
        ]
        c_in = c
    return use_matmul_convs(nn.Sequential(*mods))


def make_backbone(config: VisionConfig) -> tuple[nn.Module, int, int]:
    """The configured backbone, its output channels and its output stride."""
    if config.backbone == "resnet18":
        return resnet18_backbone(config.norm, config.pretrained), 512, 32
    if config.backbone == "cnn":
        if config.pretrained:
            raise SpecError(
                "vision.pretrained names ResNet-18 weights, but vision.backbone=cnn has none: "
                "set vision.backbone=resnet18 or vision.pretrained=null"
            )
        return cnn_backbone(config.norm), CNN_LAYERS[-1][0], math.prod(s for _, s in CNN_LAYERS)
    raise SpecError(
        f"vision backbone {config.backbone!r} is not available; use one of {', '.join(BACKBONES)}"
    )


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


def _onednn_conv_available() -> bool:
    """oneDNN convolutions on reordered weights with fused ReLU / residual add (x86 builds)."""
    ops = torch.ops.mkldnn
    try:
        if not (
            torch.backends.mkldnn.is_available()
            and hasattr(ops, "_reorder_convolution_weight")
            and hasattr(ops, "_convolution_pointwise")
        ):
            return False
        x, w = torch.ones(1, 2, 3, 3), torch.ones(2, 2, 1, 1)
        packed = ops._reorder_convolution_weight(w, [0, 0], [1, 1], [1, 1], 1, [1, 2, 3, 3])
        y = ops._convolution_pointwise.binary(
            x, -x, packed, None, [0, 0], [1, 1], [1, 1], 1, "add", 1.0, "relu", [], ""
        )
        return bool(torch.equal(y, torch.ones(1, 2, 3, 3)))
    except (AttributeError, RuntimeError):
        return False


ONEDNN_CONV = _onednn_conv_available()


class _PackedConv:
    """One convolution through oneDNN on its weight reordered once for one input size, with the
    ReLU and the residual addition that follow it fused in."""

    def __init__(self, conv: nn.Conv2d, input_size: list[int]) -> None:
        ops = torch.ops.mkldnn
        self.padding, self.stride = list(conv.padding), list(conv.stride)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.weight = ops._reorder_convolution_weight(
            conv.weight.detach().contiguous(),
            self.padding,
            self.stride,
            self.dilation,
            self.groups,
            input_size,
        )
        self.bias = None if conv.bias is None else conv.bias.detach()

    def __call__(
        self, x: torch.Tensor, relu: bool = False, add: torch.Tensor | None = None
    ) -> torch.Tensor:
        ops = torch.ops.mkldnn
        args = (self.padding, self.stride, self.dilation, self.groups)
        if add is None:
            return ops._convolution_pointwise(
                x, self.weight, self.bias, *args, "relu" if relu else "none", [], ""
            )
        return ops._convolution_pointwise.binary(
            x, add, self.weight, self.bias, *args, "add", 1.0, "relu" if relu else None, [], ""
        )


class FusedResNet:
    """A BatchNorm-folded ResNet backbone at CPU inference, block by block through oneDNN.

    Each convolution runs on a weight reordered once into oneDNN's blocked layout (PyTorch's
    eager convolution re-lays it out on every call, and picks a slow path for the small deep
    feature maps of a 96×96 frame), on channels-last activations, with the ReLU and the
    residual addition of each block fused into the convolution before them: what
    torch.compile's CPU weight prepacking does, without the compile. It halves the ResNet-18's
    time at batch 1. The same function as the folded module, to float32 rounding (tested);
    other devices, dtypes and autograd run the module.
    """

    def __init__(self, net: nn.Sequential) -> None:
        self.net = net
        self._packed: dict[tuple[int, ...], tuple[object, ...]] = {}

    @staticmethod
    def supports(net: nn.Module) -> bool:
        """Whether `net` has the folded layout this runner follows: torchvision's ResNet stem
        (conv, Identity, ReLU, MaxPool) and BasicBlocks, without any normalisation left."""
        if not ONEDNN_CONV or not isinstance(net, nn.Sequential) or len(net) < 5:
            return False
        stem = list(net)[:4]
        kinds = (nn.Conv2d, nn.Identity, nn.ReLU, nn.MaxPool2d)
        if not all(isinstance(m, k) for m, k in zip(stem, kinds, strict=True)):
            return False
        for layer in list(net)[4:]:
            for block in layer if isinstance(layer, nn.Sequential) else [layer]:
                if not isinstance(block, torchvision.models.resnet.BasicBlock):
                    return False
                if not (isinstance(block.bn1, nn.Identity) and isinstance(block.bn2, nn.Identity)):
                    return False
                ds = block.downsample
                if ds is not None and not (
                    isinstance(ds, nn.Sequential)
                    and isinstance(ds[0], nn.Conv2d)
                    and all(isinstance(m, nn.Identity) for m in list(ds)[1:])
                ):
                    return False
        return all(m.groups == 1 for m in net.modules() if isinstance(m, nn.Conv2d))

    def _pack(self, x: torch.Tensor) -> tuple[object, ...]:
        """The reordered convolutions for an input of x's shape (the reorder depends on it)."""
        modules = list(self.net)
        stem_conv, pool = modules[0], modules[3]
        stem = _PackedConv(stem_conv, list(x.shape))
        blocks = []
        h = pool(torch.relu(stem_conv(x)))
        for layer in modules[4:]:
            for block in layer if isinstance(layer, nn.Sequential) else [layer]:
                size = list(h.shape)
                mid = block.conv1(h)
                ds = None if block.downsample is None else _PackedConv(block.downsample[0], size)
                blocks.append(
                    (_PackedConv(block.conv1, size), _PackedConv(block.conv2, list(mid.shape)), ds)
                )
                h = block(h)
        return stem, pool, blocks

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32:
            return self.net(x)
        packed = self._packed.get(tuple(x.shape))
        if packed is None:
            packed = self._packed[tuple(x.shape)] = self._pack(x)
        stem, pool, blocks = packed
        y = pool(stem(x.contiguous(memory_format=torch.channels_last), relu=True))
        for conv1, conv2, downsample in blocks:
            identity = y if downsample is None else downsample(y)
            y = conv2(conv1(y, relu=True), relu=True, add=identity)
        return y.contiguous()


class InferenceBackbone:
    """The backbone to run at inference: a BatchNorm-folded copy run through oneDNN
    (`FusedResNet`), rebuilt when the weights change.

    Training, autograd and GroupNorm backbones use the module itself. The copy is kept outside
    the module tree, so it is neither saved nor trained.
    """

    def __init__(self) -> None:
        self._key: tuple[object, ...] | None = None
        self._net: Callable[[torch.Tensor], torch.Tensor] | None = None

    # The reordered weights are opaque oneDNN tensors: copies and pickles start empty.
    def __deepcopy__(self, memo: dict[int, object]) -> InferenceBackbone:
        return type(self)()

    def __getstate__(self) -> dict[str, object]:
        return {"_key": None, "_net": None}

    def __call__(self, backbone: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        if backbone.training or torch.is_grad_enabled():
            return backbone
        if not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules()):
            return backbone
        key = module_key(backbone)
        if self._net is None or key != self._key:
            with torch.inference_mode(False):  # real tensors: their caches key on versions
                folded = fold_batchnorm(backbone)
                self._net = FusedResNet(folded) if FusedResNet.supports(folded) else folded
                self._key = key
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
    """One camera's frames → a feature vector: augment, backbone, pooling, projection."""

    def __init__(self, image_shape: tuple[int, ...], config: VisionConfig) -> None:
        super().__init__()
        self.augment = ImageAugment(crop_size(image_shape, config.crop), config.color_jitter)
        self.backbone, channels, _ = make_backbone(config)
        if config.pooling == "spatial_softmax":
            self.pool: nn.Module = SpatialSoftmax(channels, config.num_keypoints)
            pooled = 2 * config.num_keypoints
        elif config.pooling == "avg":
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            pooled = channels
        else:
            raise SpecError(f"vision pooling {config.pooling!r} is not one of spatial_softmax, avg")
        self.out = nn.Sequential(nn.Linear(pooled, config.feature_dim), nn.ReLU())
        self.feature_dim = config.feature_dim

    def forward(
        self, x: torch.Tensor, normalize: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """(N, C, H, W) float in [0, 1] → (N, feature_dim); `normalize` is applied after augmenting."""
        return self.out(self.pool(self.backbone(normalize(self.augment(x)))))
