"""The C kernels (sglbench/kernel/csrc/cpu_decode.c through kernel/cpu_native.py) against their plain-torch
references: GEMV and the fused SiLU-and-multiply against F.linear, decode attention against
reference.decode_attention_ref, RMSNorm against reference.rms_norm_ref, the rotary embedding against
llama.RotaryEmbedding's complex multiply; bad indices refused without a crash; the build and its fallbacks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sglbench.kernel import cpu_native, reference
from sglbench.runtime.model_config import ModelConfig
from sglbench.runtime.models.llama import RotaryEmbedding

needs_native = pytest.mark.skipif(not cpu_native.available(),
                                  reason=f"the C kernels are off here: {cpu_native.unavailable_reason()}")


def _bf16(*shape, seed=0, scale=1.0):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale).bfloat16()


def _rand(dtype, *shape, seed=0, scale=1.0):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale).to(dtype)


@needs_native
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, 8])
@pytest.mark.parametrize(("n", "k"), [(37, 96), (64, 100), (1152, 896), (40, 31)])
@pytest.mark.parametrize("bias", [False, True])
def test_gemv_matches_f_linear(dtype, rows, n, k, bias):
    """Every block shape (16/8/4/2 weight rows per block by batch), a row tail (N not a multiple of the block),
    a K tail (masked loads), bias: bf16 at most one rounding step from F.linear (summation order differs), fp32
    within float error of the exact product."""
    x, w = _rand(dtype, rows, k, seed=rows), _rand(dtype, n, k, seed=n, scale=0.2)
    b = _rand(dtype, n, seed=7) if bias else None
    ours, ref = cpu_native.gemv(x, w, b), F.linear(x, w, b)
    assert ours.dtype == dtype and ours.shape == (rows, n)
    exact = F.linear(x.double(), w.double(), None if b is None else b.double())
    if dtype == torch.float32:
        torch.testing.assert_close(ours.double(), exact, rtol=1e-5, atol=1e-5)
        return
    assert (ours.double() - exact).abs().max() <= (ref.double() - exact).abs().max() * 1.01 + 1e-6
    assert (ours != ref).float().mean() < 0.05  # all but a few equal torch's own bf16 result


@needs_native
def test_gemv_reads_strided_rows_and_refuses_what_it_cannot_take():
    wide = _bf16(3, 200, seed=1)
    x, w = wide[:, :96], _bf16(40, 96, seed=2)  # rows 200 apart
    torch.testing.assert_close(cpu_native.gemv(x, w), F.linear(x, w), rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match=rf"1\.\.{cpu_native.MAX_GEMV_ROWS}"):
        cpu_native.gemv(_bf16(cpu_native.MAX_GEMV_ROWS + 1, 96), w)
    with pytest.raises(ValueError, match="bf16 or fp32"):
        cpu_native.gemv(x.half(), w.half())
    with pytest.raises(ValueError, match="bf16 or fp32"):
        cpu_native.gemv(x.float(), w)  # mixed dtypes
    with pytest.raises(ValueError, match="columns"):
        cpu_native.gemv(_bf16(1, 95), w)


@needs_native
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows", [1, 3, 4, 6, 8])
@pytest.mark.parametrize("bias", [False, True])
def test_gemv_silu_mul_matches_the_unfused_ops(dtype, rows, bias):
    x, w = _rand(dtype, rows, 96, seed=rows), _rand(dtype, 2 * 37, 96, seed=3, scale=0.3)
    b = _rand(dtype, 2 * 37, seed=4) if bias else None
    gate, up = F.linear(x, w, b).chunk(2, dim=-1)
    ref = F.silu(gate) * up
    ours = cpu_native.gemv_silu_mul(x, w, b)
    assert ours.shape == (rows, 37) and ours.dtype == dtype
    tolerance = dict(rtol=1.6e-2, atol=1e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours, ref, **tolerance)
    with pytest.raises(ValueError, match="even"):
        cpu_native.gemv_silu_mul(x, w[:-1].contiguous())


def _paged(lens, kv_heads, dim, dtype, slots_total=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    slots = torch.randperm(slots_total - 1, generator=g)[: sum(lens)] + 1  # scattered over the pool
    k = torch.randn(slots_total, kv_heads, dim, generator=g).to(dtype)
    v = torch.randn(slots_total, kv_heads, dim, generator=g).to(dtype)
    indptr = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    width = max(lens)
    padded = torch.zeros(len(lens), width, dtype=torch.int64)
    for i, (a, b) in enumerate(zip(indptr[:-1].tolist(), indptr[1:].tolist())):
        padded[i, : b - a] = slots[a:b]
    return k, v, indptr, slots, padded, torch.tensor(lens, dtype=torch.int64)


@needs_native
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("heads", "kv_heads", "dim", "lens"), [
    (14, 2, 64, [40]),  # Qwen2.5-0.5B's grouping
    (8, 8, 32, [5, 17, 1]),  # no grouping, a context of one
    (16, 4, 128, [300, 2, 77, 1000]),
    (6, 3, 40, [9, 33]),  # a head size not a multiple of 16: the scalar loops
])
def test_decode_attention_matches_reference(dtype, heads, kv_heads, dim, lens):
    k, v, indptr, slots, padded, lens_t = _paged(lens, kv_heads, dim, dtype)
    qkv = torch.randn(len(lens), (heads + 2 * kv_heads) * dim, generator=torch.Generator().manual_seed(1)).to(dtype)
    q = qkv[:, : heads * dim].reshape(len(lens), heads, dim)  # a strided view, as Attention.forward hands it
    ref = reference.decode_attention_ref(q.contiguous(), k, v, indptr, slots, dim**-0.5)
    ours = cpu_native.decode_attention(q, k, v, padded, lens_t, dim**-0.5)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)


@needs_native
def test_decode_attention_refuses_slots_outside_the_pool_without_reading_them():
    k, v, _, _, padded, lens = _paged([4, 6], 2, 64, torch.bfloat16, slots_total=64)
    q = torch.randn(2, 4, 64).bfloat16()
    bad = padded.clone()
    bad[1, 5] = 64  # one past the pool
    with pytest.raises(RuntimeError, match="outside the KV pool"):
        cpu_native.decode_attention(q, k, v, bad, lens, 0.125)
    with pytest.raises(RuntimeError, match="outside the KV pool"):
        cpu_native.decode_attention(q, k, v, padded, torch.tensor([4, 7]), 0.125)  # longer than its slots
    with pytest.raises(ValueError, match="one dtype"):
        cpu_native.decode_attention(q.float(), k, v, padded, lens, 0.125)
    with pytest.raises(ValueError, match="int64"):
        cpu_native.decode_attention(q, k, v, padded.int(), lens, 0.125)
    ok = cpu_native.decode_attention(q, k, v, padded, lens, 0.125)  # the same call, in range, still works
    assert torch.isfinite(ok.float()).all()


@needs_native
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("heads", "kv_heads", "dim", "requests"), [
    (8, 2, 32, [(0, 5), (3, 17), (0, 1), (40, 0), (100, 33)]),  # (cached prefix, new tokens); one with none new
    (14, 2, 64, [(0, 50), (600, 32)]),
    (6, 3, 40, [(7, 20)]),  # a head size not a multiple of 16
    (4, 4, 16, [(0, 70)] * 3),  # more rows than a query block
    (8, 2, 32, [(30, 600)] * 3 + [(0, 3)]),  # blocks of the most rows a task takes, and a short last one
    (4, 1, 32, [(50, 300)]),  # one request and one KV head: its rows split so that every thread has tasks
])
@pytest.mark.parametrize("peaked", [False, True])  # peaked: softmax weights far below fp32's normal range
def test_extend_attention_matches_reference(dtype, heads, kv_heads, dim, requests, peaked):
    g = torch.Generator().manual_seed(len(requests))
    lens = [p + n for p, n in requests]
    _, _, kv_indptr, slots, _, _ = _paged(lens, kv_heads, dim, dtype)
    scale = 30.0 if peaked else 1.0
    k = (torch.randn(4000, kv_heads, dim, generator=g) * scale).to(dtype)
    v = torch.randn(4000, kv_heads, dim, generator=g).to(dtype)
    qo_indptr = torch.tensor([0, *torch.tensor([n for _, n in requests]).cumsum(0).tolist()])
    total = int(qo_indptr[-1])
    qkv = (torch.randn(total, (heads + 2 * kv_heads) * dim, generator=g) * scale).to(dtype)
    q = qkv[:, : heads * dim].reshape(total, heads, dim)  # a strided view, as Attention.forward hands it
    ref = reference.extend_attention_ref(q.contiguous(), k, v, qo_indptr, kv_indptr, slots, dim**-0.5)
    ours = cpu_native.extend_attention(q, k, v, qo_indptr, kv_indptr, slots, dim**-0.5)
    # peaked fp32: scores in the thousands carry fp32 rounding of ~1e-4 themselves, whatever the order of sums
    tol = (2e-3 if peaked else 2e-5) if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)


@needs_native
def test_extend_attention_refuses_bad_indices():
    k, v, kv_indptr, slots, _, _ = _paged([10, 6], 2, 32, torch.float32, slots_total=64)
    q = torch.randn(4, 4, 32)
    qo_indptr = torch.tensor([0, 2, 4])
    bad = slots.clone()
    bad[3] = 64
    with pytest.raises(RuntimeError, match="outside the KV pool"):
        cpu_native.extend_attention(q, k, v, qo_indptr, kv_indptr, bad, 0.2)
    with pytest.raises(RuntimeError, match="out of range"):  # more new tokens than its context holds
        cpu_native.extend_attention(q, k, v, torch.tensor([0, 1, 4]), torch.tensor([0, 10, 12]), slots, 0.2)
    with pytest.raises(ValueError, match="cover"):
        cpu_native.extend_attention(q, k, v, torch.tensor([0, 2, 3]), kv_indptr, slots, 0.2)
    assert torch.isfinite(cpu_native.extend_attention(q, k, v, qo_indptr, kv_indptr, slots, 0.2)).all()


@needs_native
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("rows", "dim"), [(1, 896), (4, 40), (100, 256)])
def test_rms_norm_and_fused_residual_add_match_the_reference(rows, dim, dtype):
    x, residual = _bf16(rows, dim, seed=1).to(dtype), _bf16(rows, dim, seed=2, scale=3.0).to(dtype)
    w = _bf16(dim, seed=3).to(dtype)
    ref = reference.rms_norm_ref if dtype == torch.bfloat16 else lambda t, w, eps: F.rms_norm(t, (dim,), w, eps)
    tol = {"rtol": 1.6e-2, "atol": 1e-2} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(cpu_native.add_rms_norm(x, w, 1e-6), ref(x, w, 1e-6), **tol)
    summed = residual + x  # torch's add: the residual stream's next value
    stream = residual.clone()
    out = cpu_native.add_rms_norm(x, w, 1e-6, residual=stream)
    assert torch.equal(stream, summed)  # updated in place, rounded as torch rounds
    torch.testing.assert_close(out, ref(summed, w, 1e-6), **tol)


@needs_native
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("head_dim", [32, 40, 64])
def test_rope_matches_the_complex_multiply(dtype, head_dim):
    config = ModelConfig(architecture="LlamaForCausalLM", vocab_size=64, hidden_size=4 * head_dim,
                         intermediate_size=256, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=head_dim,
                         rms_norm_eps=1e-6, max_position_embeddings=512, tie_word_embeddings=False, qkv_bias=False,
                         o_bias=False, mlp_bias=False, qk_norm=False, rope_theta=10000.0)
    rotary = RotaryEmbedding(config)
    qkv = _bf16(7, (4 + 2 + 2) * head_dim, seed=5).to(dtype)
    positions = torch.tensor([0, 1, 2, 100, 511, 3, 4])
    q, k, _ = qkv.split([4 * head_dim, 2 * head_dim, 2 * head_dim], dim=-1)
    q, k = q.reshape(7, 4, head_dim), k.reshape(7, 2, head_dim)  # strided views into qkv, as in Attention.forward
    cis = rotary.cis[positions].unsqueeze(1)
    expected = [torch.view_as_real(torch.view_as_complex(t.float().reshape(*t.shape[:-1], -1, 2)) * cis)
                .flatten(-2).to(dtype) for t in (q, k)]
    cpu_native.rope_(q, k, positions, torch.view_as_real(rotary.cis))
    tol = {"rtol": 1e-2, "atol": 1e-2} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(q, expected[0], **tol)
    torch.testing.assert_close(k, expected[1], **tol)
    with pytest.raises(RuntimeError, match="position"):
        cpu_native.rope_(q, k, torch.tensor([0, 1, 2, 3, 4, 5, 512]), torch.view_as_real(rotary.cis))


def test_build_reports_a_missing_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(RuntimeError, match="no-such-cc"):
        cpu_native.build(tmp_path / "kernels")


def test_build_is_cached_by_source(tmp_path):
    if cpu_native._compiler() is None:
        pytest.skip("no C compiler here")
    first = cpu_native.build(tmp_path)
    assert first.exists() and first.parent == tmp_path
    stamp = first.stat().st_mtime_ns
    assert cpu_native.build(tmp_path) == first and first.stat().st_mtime_ns == stamp  # not rebuilt


def test_switch_off_by_environment(monkeypatch):
    monkeypatch.setenv("SGLBENCH_NATIVE_KERNELS", "0")
    cpu_native._load.cache_clear()
    try:
        assert not cpu_native.available()
        assert cpu_native.unavailable_reason() == "SGLBENCH_NATIVE_KERNELS=0"
        assert cpu_native.describe().startswith("off")
    finally:
        monkeypatch.delenv("SGLBENCH_NATIVE_KERNELS")
        cpu_native._load.cache_clear()


@needs_native
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("rows", "inter"), [(1, 37), (3, 64), (512, 704)])
def test_silu_mul_matches_torch_ops(rows, inter, dtype):
    gate_up = torch.cat([_bf16(rows, inter, seed=1, scale=4.0), _bf16(rows, inter, seed=2)], dim=1).to(dtype)
    gate_up[0, :4] = torch.tensor([-100.0, 100.0, 0.0, -0.0])  # saturated and zero gates
    gate, up = gate_up.chunk(2, dim=-1)
    ref = F.silu(gate).mul_(up)
    ours = cpu_native.silu_mul(gate_up)
    if dtype == torch.bfloat16:
        torch.testing.assert_close(ours, ref, rtol=8e-3, atol=1e-3)  # a bf16 ulp: exp's last fp32 bits differ
        assert (ours != ref).float().mean() < 0.05
    else:
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


@needs_native
@pytest.mark.parametrize(("n", "k", "bias"), [(4096, 256, False), (100, 40, True), (16, 8, False)])
@pytest.mark.parametrize("rows", [0, 1, 5, 16, 64])
def test_gemm_packed_matches_linear(n, k, bias, rows):
    g = torch.Generator().manual_seed(n + rows)
    w = torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    x = torch.randn(rows, k, generator=g)
    out = cpu_native.gemm_packed(x, cpu_native.pack_columns(w), n, b)
    assert out.shape == (rows, n) and out.dtype == torch.float32
    torch.testing.assert_close(out, F.linear(x, w, b), rtol=1e-5, atol=1e-4)
    wide = torch.randn(3, 2 * k, generator=g)[:, :k]  # rows apart by more than K, as a view of hidden states
    torch.testing.assert_close(cpu_native.gemm_packed(wide, cpu_native.pack_columns(w), n, b), F.linear(wide, w, b),
                               rtol=1e-5, atol=1e-4)


@needs_native
@pytest.mark.parametrize(("k", "rows"), [(704, 300), (2048, 150), (256, 520)])
def test_gemm_packed_rows_in_passes(k, rows):
    """Rows beyond one pass of the GEMM (gemm_row_block: 88 rows at K=704, 64 at 2,048, 256 at 256), the last
    pass ragged: every row as F.linear gives it, and each row the same bits as when multiplied alone."""
    g = torch.Generator().manual_seed(k + rows)
    w, x = torch.randn(72, k, generator=g), torch.randn(rows, k, generator=g)
    packed = cpu_native.pack_columns(w)
    out = cpu_native.gemm_packed(x, packed, 72)
    torch.testing.assert_close(out, F.linear(x, w), rtol=1e-5, atol=1e-4)
    for row in (0, rows // 2, rows - 1):
        assert torch.equal(out[row], cpu_native.gemm_packed(x[row : row + 1], packed, 72)[0])


@needs_native
def test_gemm_packed_refuses_what_it_cannot_read():
    w = cpu_native.pack_columns(torch.randn(40, 8))
    with pytest.raises(ValueError, match="fp32"):
        cpu_native.gemm_packed(torch.randn(2, 8, dtype=torch.bfloat16), w, 40)
    with pytest.raises(ValueError, match="pack_columns"):
        cpu_native.gemm_packed(torch.randn(2, 8), w, 64)  # more columns than it was packed for
    with pytest.raises(ValueError, match="bias"):
        cpu_native.gemm_packed(torch.randn(2, 8), w, 40, torch.zeros(39))
    with pytest.raises(ValueError, match="unit column stride"):
        cpu_native.gemm_packed(torch.randn(8, 2).t(), w, 40)

