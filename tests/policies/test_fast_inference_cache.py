"""The inference fast paths give the plain modules' answers (float16 weights: to their rounding),
and cache derived weight copies that writes through `.data` (how the EMA swaps its averaged
weights in and out) must not leave stale."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from robolearn.errors import SpecError
from robolearn.policies import make_policy
from robolearn.policies.act.model import ACTConfig, ACTPolicy
from robolearn.policies.cache import FP16_LINEAR, PackedLinear, cpu_weights
from robolearn.policies.denoisers import (
    ConditionalUnet1D,
    Conv1d,
    ConvTranspose1d,
    DenoiserConfig,
    set_fast_inference,
)
from robolearn.policies.diffusion import DiffusionConfig
from robolearn.policies.vision import (
    ONEDNN_CONV,
    FusedResNet,
    MatmulConv2d,
    VisionConfig,
    fold_batchnorm,
    resnet18_backbone,
)
from robolearn.spec import Feature, FeatureSpec


def test_a_conv1d_fast_path_sees_weights_written_through_data() -> None:
    torch.manual_seed(0)
    conv = Conv1d(8, 16, 5, padding=2).eval()
    conv.fast_dtype = torch.float32
    x = torch.randn(2, 8, 16)
    with torch.no_grad():
        before = conv(x)
        new = torch.randn_like(conv.weight)
        conv.weight.data.copy_(new)  # no version bump, like EMAModel.copy_to
        after = conv(x)
        expected = torch.nn.functional.conv1d(x, new, conv.bias, padding=2)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)


def test_a_matmul_conv2d_sees_weights_written_through_data() -> None:
    torch.manual_seed(0)
    conv = MatmulConv2d(3, 4, 3, padding=1).eval()
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        conv(x)
        new = torch.randn_like(conv.weight)
        conv.weight.data.copy_(new)
        after = conv(x)
        expected = torch.nn.functional.conv2d(x, new, conv.bias, padding=1)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)


def _act_with_a_camera() -> tuple[ACTPolicy, dict[str, torch.Tensor]]:
    spec = FeatureSpec(
        {
            "state": Feature((5,), "float32", "state"),
            "cam": Feature((64, 64, 3), "uint8", "image"),
            "action": Feature((5,), "float32", "action"),
        }
    )
    cfg = ACTConfig(dim_model=64, n_heads=4, dim_feedforward=128, horizon=12, n_action_steps=12)
    torch.manual_seed(0)
    policy = ACTPolicy(cfg, spec)
    # BatchNorm with non-trivial running statistics, so folding them is not the identity
    for m in policy.backbone.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    obs = {
        "state": torch.randn(3, 1, 5),
        "cam": torch.randint(0, 256, (3, 1, 64, 64, 3), dtype=torch.uint8),
    }
    return policy, obs


def _reference(policy: ACTPolicy, obs: dict[str, torch.Tensor]) -> torch.Tensor:
    """ACT's decode through the plain modules (no folded BatchNorm, no query cache)."""
    policy.eval()
    with torch.no_grad():
        z = torch.zeros(3, policy.config.latent_dim)
        infer = policy._infer_backbone
        policy.__dict__["_infer_backbone"] = lambda backbone: backbone
        try:
            memory = policy.encoder(policy._tokens(obs, z))
        finally:
            policy.__dict__["_infer_backbone"] = infer
        queries = policy.queries.expand(3, -1, -1)
        tokens = policy.head(policy.decoder(queries, memory))
    return policy.unnormalize_actions(tokens)


def test_act_fast_inference_equals_the_plain_modules_and_follows_weight_swaps() -> None:
    policy, obs = _act_with_a_camera()
    expected = _reference(policy, obs)
    got = policy.predict_chunk(obs)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # weights written through .data (the EMA's swap): the folded backbone and the query cache
    # are rebuilt, and the answer follows the new weights
    with torch.no_grad():
        for p in policy.parameters():
            p.data.add_(0.05 * torch.randn_like(p))
    expected2 = _reference(policy, obs)
    assert not torch.allclose(expected, expected2, atol=1e-3)
    torch.testing.assert_close(policy.predict_chunk(obs), expected2, rtol=1e-4, atol=1e-4)
    # a used policy copies and pickles (the derived oneDNN weights start empty in the copy)
    import copy
    import pickle

    for clone in (copy.deepcopy(policy), pickle.loads(pickle.dumps(policy))):
        torch.testing.assert_close(clone.predict_chunk(obs), expected2, rtol=1e-4, atol=1e-4)
    # derived copies stay out of the saved state
    assert set(policy.state_dict()) == set(ACTPolicy(policy.config, policy.spec).state_dict())


def test_folding_batchnorm_gives_the_same_backbone_output() -> None:
    policy, _ = _act_with_a_camera()
    x = torch.rand(2, 3, 64, 64)
    backbone = policy.backbone.eval()
    with torch.no_grad():
        folded = fold_batchnorm(backbone)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        torch.testing.assert_close(folded(x), backbone(x), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not ONEDNN_CONV, reason="this PyTorch build has no oneDNN convolutions")
def test_the_fused_resnet_equals_the_folded_backbone_for_any_input_size() -> None:
    policy, _ = _act_with_a_camera()
    with torch.no_grad():
        folded = fold_batchnorm(policy.backbone.eval())
        assert FusedResNet.supports(folded)
        fused = FusedResNet(folded)
        for shape in [(1, 3, 96, 96), (2, 3, 64, 64), (1, 3, 96, 96), (3, 3, 84, 100)]:
            x = torch.rand(shape)
            torch.testing.assert_close(fused(x), folded(x), rtol=1e-4, atol=1e-4)
        assert len(fused._packed) == 3  # weights reordered once per input size
    x = torch.rand(1, 3, 32, 32, requires_grad=True)  # autograd: the module, differentiable
    fused(x).sum().backward()
    assert x.grad is not None
    # GroupNorm (not foldable) and unfolded BatchNorm backbones are not this runner's layout
    assert not FusedResNet.supports(resnet18_backbone("group"))
    assert not FusedResNet.supports(policy.backbone)


def test_packed_linear_equals_f_linear_follows_weight_swaps_and_copies_empty() -> None:
    import copy
    import pickle

    torch.manual_seed(0)
    linear = PackedLinear()
    weight, bias = torch.randn(48, 32), torch.randn(48)
    with torch.inference_mode():
        for rows in (1, 11, 100):  # packed for the first call's size, right for any
            x = torch.randn(rows, 32)
            torch.testing.assert_close(linear(x, weight, bias), F.linear(x, weight, bias))
        x = torch.randn(2, 5, 32)  # leading dimensions kept
        torch.testing.assert_close(linear(x, weight), F.linear(x, weight))
        weight.data.copy_(torch.randn_like(weight))  # the EMA's swap: no version bump
        torch.testing.assert_close(linear(x, weight, bias), F.linear(x, weight, bias))
    assert copy.deepcopy(linear)._packed is None
    assert pickle.loads(pickle.dumps(linear))._packed is None
    x = torch.randn(3, 32, requires_grad=True)  # autograd: the plain product, differentiable
    linear(x, weight, bias).sum().backward()
    assert x.grad is not None


def test_a_transposed_conv1d_fast_path_equals_the_module_and_sees_weight_writes() -> None:
    torch.manual_seed(0)
    for c_in, c_out, k, s, p, op in [(16, 16, 4, 2, 1, 0), (3, 5, 3, 2, 1, 1), (8, 4, 5, 1, 2, 0)]:
        conv = ConvTranspose1d(c_in, c_out, k, s, p, output_padding=op).eval()
        x = torch.randn(2, c_in, 7)
        with torch.no_grad():
            expected = torch.nn.ConvTranspose1d.forward(conv, x)
            conv.fast_dtype = torch.float32
            torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)
            new = torch.randn_like(conv.weight)
            conv.weight.data.copy_(new)  # no version bump, like EMAModel.copy_to
            expected = F.conv_transpose1d(x, new, conv.bias, s, p, output_padding=op)
            torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)


def test_the_unet_fast_path_with_fused_film_equals_the_plain_modules() -> None:
    torch.manual_seed(0)
    config = DenoiserConfig(down_dims=[16, 32, 64], time_embed_dim=8, n_groups=4)
    unet = ConditionalUnet1D(3, 8, 10, config).eval()
    x, t, obs = torch.randn(2, 8, 3), torch.tensor([3, 70]), torch.randn(2, 2, 5)
    with torch.no_grad():
        set_fast_inference(unet, None)
        expected = unet(x, t, obs)
        set_fast_inference(unet, torch.float32)
        assert unet._fused_films(torch.randn(2, 18)) is not None  # the fused path runs
        torch.testing.assert_close(unet(x, t, obs), expected, rtol=1e-4, atol=1e-5)
        for p in unet.parameters():  # the EMA's swap: every weight written through .data
            p.data.add_(0.05 * torch.randn_like(p))
        fast = unet(x, t, obs)
        set_fast_inference(unet, None)
        torch.testing.assert_close(fast, unet(x, t, obs), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not FP16_LINEAR, reason="FBGEMM's float16 products are x86-only")
def test_float16_weights_round_like_float16_and_switch_back() -> None:
    torch.manual_seed(0)
    linear = PackedLinear()
    weight, bias = torch.randn(64, 256) * 0.05, torch.randn(64)
    x = torch.randn(5, 256)
    with torch.inference_mode():
        exact = F.linear(x, weight, bias)
        with cpu_weights("float16"):
            half = linear(x, weight, bias)
        # what fp16 weights with fp32 inputs and accumulation give, and not the fp32 answer
        torch.testing.assert_close(half, F.linear(x, weight.half().float(), bias))
        assert not torch.equal(half, exact)
        assert (half - exact).abs().max() < 1e-3 * exact.abs().max()
        torch.testing.assert_close(linear(x, weight, bias), exact)  # back to float32: repacked
    with pytest.raises(ValueError, match="float32"), cpu_weights("int4"):
        pass


@pytest.mark.parametrize("name", ["diffusion", "act"])
def test_a_policy_with_float16_inference_weights_agrees_with_float32(name: str) -> None:
    import copy

    spec = FeatureSpec(
        {
            "state": Feature((5,), "float32", "state"),
            "cam": Feature((32, 32, 3), "uint8", "image"),
            "action": Feature((4,), "float32", "action"),
        }
    )
    vision = VisionConfig(num_keypoints=8, feature_dim=16)
    if name == "act":
        config = ACTConfig(
            dim_model=64, n_heads=4, dim_feedforward=128, horizon=8, n_action_steps=8
        )
    else:
        config = DiffusionConfig(
            denoiser=DenoiserConfig(down_dims=[32, 64, 128], time_embed_dim=16), vision=vision
        )
    torch.manual_seed(0)
    policy = make_policy(config, spec).eval()
    half = copy.deepcopy(policy)
    half.config.inference_dtype = "float16"
    obs = {
        "state": torch.randn(2, policy.n_obs_steps, 5),
        "cam": torch.randint(0, 256, (2, policy.n_obs_steps, 32, 32, 3), dtype=torch.uint8),
    }
    torch.manual_seed(1)
    a = policy.predict_chunk(obs)
    torch.manual_seed(1)
    b = half.predict_chunk(obs)
    # the actions' range is [-1, 1] in normalised units: agree to a small fraction of it
    assert (a - b).abs().max() < 1e-2
    if FP16_LINEAR:
        assert not torch.equal(a, b)
    with pytest.raises(SpecError, match="inference_dtype 'int8'"):
        make_policy(dataclasses.replace(config, inference_dtype="int8"), spec)
