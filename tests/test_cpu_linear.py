"""The CPU path's linear layers (sglbench/kernel/cpu_linear.py) against F.linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sglbench.kernel import cpu_linear


@pytest.mark.parametrize("rows", [1, cpu_linear.MIN_ROWS - 1, cpu_linear.MIN_ROWS, 300])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_matches_f_linear(rows, bias):
    g = torch.Generator().manual_seed(rows)
    x, w = torch.randn(rows, 48, generator=g), torch.randn(40, 48, generator=g)
    b = torch.randn(40, generator=g) if bias else None
    torch.testing.assert_close(cpu_linear.linear(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5)


def test_strided_and_batched_inputs():
    x = torch.randn(64, 96)[:, :48]  # a column slice: rows not contiguous
    w = torch.randn(40, 48)
    torch.testing.assert_close(cpu_linear.linear(x, w), F.linear(x, w), rtol=1e-5, atol=1e-5)
    x3 = torch.randn(2, 32, 48)  # not 2-D: F.linear's path
    torch.testing.assert_close(cpu_linear.linear(x3, w), F.linear(x3, w))


def test_module_keeps_nn_linear_parameters():
    layer = cpu_linear.Linear(48, 40)
    assert set(layer.state_dict()) == {"weight", "bias"}
    x = torch.randn(cpu_linear.MIN_ROWS * 2, 48)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
