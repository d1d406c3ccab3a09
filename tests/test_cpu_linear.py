"""The CPU path's linear layers (sglbench/kernel/cpu_linear.py) against F.linear: dense weights on both
routes (F.linear below `min_rows` or for small weights, oneDNN above), packed bf16 weights at any row
count, the fallbacks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sglbench.kernel import cpu_linear, cpu_native

needs_packing = pytest.mark.skipif(not cpu_linear.packing_available(torch.bfloat16),
                                   reason="this CPU or torch build does not pack bf16 weights")


@pytest.mark.parametrize("rows", [1, 3, 4, cpu_linear.MIN_ROWS - 1, cpu_linear.MIN_ROWS, 300])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("small_weights_to_onednn", [False, True])
def test_linear_matches_f_linear(rows, bias, small_weights_to_onednn, monkeypatch):
    if small_weights_to_onednn:  # these test weights are small: let them take oneDNN's route too
        monkeypatch.setattr(cpu_linear, "MIN_ONEDNN_WEIGHT", 0)
    g = torch.Generator().manual_seed(rows)
    x, w = torch.randn(rows, 48, generator=g), torch.randn(40, 48, generator=g)
    b = torch.randn(40, generator=g) if bias else None
    torch.testing.assert_close(cpu_linear.linear(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5)


def test_min_rows_per_dtype():
    assert cpu_linear.min_rows(torch.float32) == 4  # fp32: torch's GEMV up to 3 rows, oneDNN from 4
    assert cpu_linear.min_rows(torch.float16) == cpu_linear.min_rows(torch.bfloat16) == cpu_linear.MIN_ROWS


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


def _bf16(*shape, seed=0):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.5).bfloat16()


@needs_packing
@pytest.mark.parametrize("rows", [1, 8, 32, 512])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_bf16_matches_f_linear(rows, bias):
    w, x = _bf16(72, 96, seed=1), _bf16(rows, 96, seed=rows)
    b = _bf16(72, seed=2) if bias else None
    packed = cpu_linear.pack_weight(w)
    assert packed is not None and packed.is_mkldnn and packed.shape == w.shape
    expected = F.linear(x.float(), w.float(), None if b is None else b.float())
    torch.testing.assert_close(cpu_linear.linear(x, packed, b).float(), expected, rtol=2e-2, atol=2e-2)
    x3 = x.reshape(1, rows, 96)  # any leading dims
    assert cpu_linear.linear(x3, packed, b).shape == (1, rows, 72)
    assert cpu_linear.linear(x[:0], packed, b).shape == (0, 72)  # a prefill chunk that needs no logits


@needs_packing
@pytest.mark.parametrize("keep_dense", [False, True])
def test_pack_swaps_or_keeps_the_weight_and_state_dict_stays_dense(keep_dense, monkeypatch):
    if keep_dense and not cpu_native.available():
        pytest.skip(f"the C kernels are off here: {cpu_native.unavailable_reason()}")
    monkeypatch.setattr(cpu_linear, "keeps_dense", lambda dtype, extra_bytes=0: keep_dense)
    layer = cpu_linear.Linear(96, 72, bias=True).bfloat16()
    dense = layer.weight.detach().clone()
    x = _bf16(5, 96, seed=3)
    before = layer(x)
    assert layer.pack() and layer.packed
    assert layer.weight.is_mkldnn is not keep_dense and not layer.pack()  # packed once
    assert (layer.packed_weight is not None) is keep_dense
    torch.testing.assert_close(layer(x), before, rtol=2e-2, atol=2e-2)  # 5 rows: the packed weight
    torch.testing.assert_close(layer(x[:2]), before[:2], rtol=2e-2, atol=2e-2)  # 2 rows: the C GEMV if kept
    state = layer.state_dict()
    assert set(state) == {"weight", "bias"}
    assert not state["weight"].is_mkldnn and torch.equal(state["weight"], dense)
    other = _bf16(72, 96, seed=4)
    layer.load_state_dict({"weight": other, "bias": state["bias"]})  # loads into the packed layer, repacks it
    assert layer.packed and torch.equal(layer.state_dict()["weight"], other)
    expected = F.linear(x.float(), other.float(), state["bias"].float())
    torch.testing.assert_close(layer(x).float(), expected, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(layer(x[:1]).float(), expected[:1], rtol=2e-2, atol=2e-2)


@pytest.mark.skipif(not cpu_native.available(), reason="the C kernels are off here")
@pytest.mark.parametrize("rows", [1, 4, 5])
def test_silu_mul_matches_the_unfused_mlp_activation(rows):
    layer = cpu_linear.Linear(96, 2 * 40, bias=True).bfloat16()
    layer.pack()
    x = _bf16(rows, 96, seed=rows)
    gate, up = F.linear(x, layer.weight, layer.bias).chunk(2, dim=-1)
    torch.testing.assert_close(layer.silu_mul(x), F.silu(gate) * up, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(layer.silu_mul(x.reshape(1, rows, 96)), (F.silu(gate) * up)[None], rtol=1e-2,
                               atol=1e-2)


def test_only_bf16_cpu_weights_are_packed():
    assert cpu_linear.pack_weight(torch.randn(8, 8)) is None  # fp32 stays dense (F.linear wins at one row)
    assert cpu_linear.pack_weight(torch.randn(8, 8).half()) is None
    assert cpu_linear.pack_weight(torch.randn(2, 8, 8).bfloat16()) is None


def test_falls_back_where_packing_is_unavailable(monkeypatch):
    monkeypatch.setitem(cpu_linear._packing, torch.bfloat16, False)
    layer = cpu_linear.Linear(16, 8).bfloat16()
    assert not layer.pack() and not layer.packed
    x = _bf16(3, 16)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))


def test_packing_probe_refuses_without_native_bf16(monkeypatch):
    from sglbench.kernel import cpu_features

    plain = cpu_features.features_from_flags(frozenset({"avx2"}), "AVX2")
    monkeypatch.setattr(cpu_features, "detect", lambda: plain)
    monkeypatch.setattr(cpu_linear, "_packing", {})
    assert not cpu_linear.packing_available(torch.bfloat16)
