"""The inference fast paths cache derived weight copies; writes through `.data` (how the EMA
swaps its averaged weights in and out) must not leave them stale."""

from __future__ import annotations

import torch

from robolearn.policies.denoisers import Conv1d
from robolearn.policies.vision import MatmulConv2d


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
