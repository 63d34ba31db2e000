"""The inference fast paths cache derived weight copies; writes through `.data` (how the EMA
swaps its averaged weights in and out) must not leave them stale."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robolearn.policies.act.model import ACTConfig, ACTPolicy
from robolearn.policies.cache import PackedLinear
from robolearn.policies.denoisers import Conv1d
from robolearn.policies.vision import MatmulConv2d, fold_batchnorm
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
