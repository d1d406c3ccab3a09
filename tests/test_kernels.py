"""Triton kernels vs their plain-torch references (sglbench/kernel/reference.py).

On CPU the kernels run under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1),
in fp32 and with small shapes; fp16/bf16 and larger shapes run only where CUDA is available.
"""

from __future__ import annotations

import math

import pytest
import torch

triton = pytest.importorskip("triton")

from sglbench.kernel import reference  # noqa: E402
from sglbench.kernel.decode_attention import decode_attention  # noqa: E402
from sglbench.kernel.extend_attention import extend_attention  # noqa: E402
from sglbench.kernel.kv_indices import build_kv_indices  # noqa: E402
from sglbench.kernel.rms_norm import rms_norm  # noqa: E402
from sglbench.kernel.store_kv import store_kv  # noqa: E402
from tests.helpers import DEVICE, EXTEND_CASES, GQA, make_batch  # noqa: E402

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="fp16/bf16 and large shapes run only on CUDA")
LOW_PRECISION_TOL = {
    torch.float16: {"atol": 1e-2, "rtol": 1e-2},
    torch.bfloat16: {"atol": 3e-2, "rtol": 3e-2},
}


@pytest.mark.parametrize("case", list(EXTEND_CASES))
@pytest.mark.parametrize("group", list(GQA))
@pytest.mark.parametrize("head_dim", [64, 128])
def test_extend_attention_matches_reference(head_dim, group, case):
    q_lens, prefix_lens = EXTEND_CASES[case]
    kv_heads = GQA[group]
    q, kb, vb, qo, kvp, kvi = make_batch(q_lens, prefix_lens, kv_heads * group, kv_heads, head_dim)
    scale = 1 / math.sqrt(head_dim)
    out = extend_attention(q, kb, vb, qo, kvp, kvi, scale)
    torch.testing.assert_close(out, reference.extend_attention_ref(q, kb, vb, qo, kvp, kvi, scale))


# kv lengths per request: a single token, odd lengths, a few hundred
DECODE_KV_LENS = [1, 17, 300, 64]


@pytest.mark.parametrize("num_kv_splits", [1, 3, None])
@pytest.mark.parametrize("group", list(GQA))
@pytest.mark.parametrize("head_dim", [64, 128])
def test_decode_attention_matches_reference(head_dim, group, num_kv_splits):
    kv_heads = GQA[group]
    _, kb, vb, _, kvp, kvi = make_batch([0] * 4, DECODE_KV_LENS, kv_heads * group, kv_heads, head_dim)
    q = torch.randn(len(DECODE_KV_LENS), kv_heads * group, head_dim, device=DEVICE)  # [batch, heads, dim]
    scale = 1 / math.sqrt(head_dim)
    out = decode_attention(q, kb, vb, kvp, kvi, scale, num_kv_splits)
    torch.testing.assert_close(out, reference.decode_attention_ref(q, kb, vb, kvp, kvi, scale))


def test_non_power_of_two_head_dim_and_strided_q():
    """head_dim 80 is padded to 128 by the BLOCK_DMODEL mask; q may be a strided view (a qkv slice)."""
    q_lens, prefix_lens, head_dim = [3, 20], [9, 0], 80
    _, kb, vb, qo, kvp, kvi = make_batch(q_lens, prefix_lens, 4, 2, head_dim)
    qkv = torch.randn(sum(q_lens), 4 + 2 * 2, head_dim, device=DEVICE)  # [tokens, heads + 2 kv_heads, dim]
    q = qkv[:, :4]  # [tokens, heads, dim], not contiguous
    out = extend_attention(q, kb, vb, qo, kvp, kvi, 0.1)
    torch.testing.assert_close(out, reference.extend_attention_ref(q, kb, vb, qo, kvp, kvi, 0.1))
    qd = qkv[:2, :4]  # [batch, heads, dim]
    out = decode_attention(qd, kb, vb, kvp, kvi, 0.1, 2)
    torch.testing.assert_close(out, reference.decode_attention_ref(qd, kb, vb, kvp, kvi, 0.1))


def test_extend_with_one_token_per_request_equals_decode():
    q, kb, vb, qo, kvp, kvi = make_batch([1, 1, 1], [0, 40, 7], 8, 2, 64)
    ext = extend_attention(q, kb, vb, qo, kvp, kvi, 0.125, max_q_len=1)
    torch.testing.assert_close(ext, decode_attention(q, kb, vb, kvp, kvi, 0.125))


def test_extend_all_requests_empty():
    q, kb, vb, qo, kvp, kvi = make_batch([0, 0], [5, 0], 2, 2, 64)
    assert extend_attention(q, kb, vb, qo, kvp, kvi, 0.125).shape == (0, 2, 64)


@pytest.mark.parametrize("src_dtype", [torch.float32, torch.float16])
def test_store_kv_matches_reference(src_dtype):
    tokens, kv_heads, head_dim = 7, 2, 64
    kb = torch.randn(20, kv_heads, head_dim, device=DEVICE)  # [slots, kv_heads, dim]
    vb = torch.randn(20, kv_heads, head_dim, device=DEVICE)
    kb_ref, vb_ref = kb.clone(), vb.clone()
    slots = torch.randperm(20, device=DEVICE)[:tokens]  # [tokens]
    kv = torch.randn(tokens, 2 * kv_heads, head_dim, device=DEVICE).to(src_dtype)  # fused k|v: strided views
    k, v = kv[:, :kv_heads], kv[:, kv_heads:]  # [tokens, kv_heads, dim] each
    store_kv(kb, vb, slots, k, v)
    reference.store_kv(kb_ref, vb_ref, slots, k, v)
    assert torch.equal(kb, kb_ref) and torch.equal(vb, vb_ref)


def test_build_kv_indices_matches_reference():
    """Contexts of several lengths (one past a block of 512, one of a single slot) from scattered table rows;
    the index buffer is longer than their total and its tail stays untouched."""
    table = torch.randint(1, 5000, (6, 1100), dtype=torch.int64, device=DEVICE)  # [rows, max_context]
    rows = torch.tensor([4, 0, 2, 5], dtype=torch.int64, device=DEVICE)
    lens = torch.tensor([700, 1, 513, 37], dtype=torch.int64, device=DEVICE)
    indptr = torch.zeros(5, dtype=torch.int64, device=DEVICE)
    indptr[1:] = torch.cumsum(lens, 0)
    out = torch.full((1300,), -1, dtype=torch.int64, device=DEVICE)
    expected = out.clone()
    build_kv_indices(table, rows, indptr, out)
    reference.build_kv_indices(table, rows, indptr, expected)
    assert torch.equal(out, expected)
    assert torch.equal(out[:700], table[4, :700]) and int(out[700]) == int(table[0, 0])
    assert (out[int(indptr[-1]):] == -1).all()
    with pytest.raises(TypeError, match="rows must be int64"):
        build_kv_indices(table, rows.int(), indptr, out)
    with pytest.raises(ValueError, match="kv_indptr must have"):
        build_kv_indices(table, rows, indptr[:3], out)


@pytest.mark.parametrize("hidden", [64, 100])
def test_rms_norm_matches_reference(hidden):
    x = torch.randn(3, 5, hidden, device=DEVICE)  # [batch, tokens, hidden]
    w = torch.randn(hidden, device=DEVICE)  # [hidden]
    torch.testing.assert_close(rms_norm(x, w, 1e-6), reference.rms_norm_ref(x, w, 1e-6))


# --- input contract ----------------------------------------------------------------------------


def test_launchers_reject_bad_inputs():
    q, kb, vb, qo, kvp, kvi = make_batch([2, 3], [1, 0], 4, 2, 64)
    qd = q[:2]
    with pytest.raises(TypeError, match="kv_indices must be int64"):
        decode_attention(qd, kb, vb, kvp, kvi.int(), 0.1)
    with pytest.raises(TypeError, match="qo_indptr must be int64"):
        extend_attention(q, kb, vb, qo.int(), kvp, kvi, 0.1)
    q_bad_heads = torch.randn(5, 3, 64, device=DEVICE)  # 3 heads over 2 kv heads
    with pytest.raises(ValueError, match=r"num_heads \(3\) must be a multiple of kv_heads \(2\)"):
        extend_attention(q_bad_heads, kb, vb, qo, kvp, kvi, 0.1)
    with pytest.raises(ValueError, match="must be a multiple of kv_heads"):
        decode_attention(q_bad_heads[:2], kb, vb, kvp, kvi, 0.1)
    with pytest.raises(TypeError, match="dtype must equal q's"):
        decode_attention(qd, kb.half(), vb.half(), kvp, kvi, 0.1)
    with pytest.raises(ValueError, match="head_dim mismatch"):
        extend_attention(q[..., :32], kb, vb, qo, kvp, kvi, 0.1)
    with pytest.raises(ValueError, match="kv_indptr must have batch \\+ 1 = 3 entries"):
        decode_attention(q[:2], kb, vb, kvp[:2], kvi, 0.1)
    with pytest.raises(ValueError, match="qo_indptr and kv_indptr must both have batch \\+ 1 entries"):
        extend_attention(q, kb, vb, qo[:2], kvp, kvi, 0.1)
    with pytest.raises(ValueError, match="num_kv_splits must be a positive int"):
        decode_attention(qd, kb, vb, kvp, kvi, 0.1, 0)
    with pytest.raises(TypeError, match="slots must be int64"):
        store_kv(kb, vb, kvi[:2].int(), kb[:2], vb[:2])
    with pytest.raises(ValueError, match="k and v must be"):
        store_kv(kb, vb, kvi[:2], kb[:3], vb[:3])
    with pytest.raises(ValueError, match="weight must be \\[hidden\\]"):
        rms_norm(torch.randn(2, 8, device=DEVICE), torch.randn(4, device=DEVICE), 1e-6)


# --- CUDA only: half precision and realistic sizes -------------------------------------------


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_extend_attention_half_precision_cuda(head_dim, group, dtype):
    q_lens, prefix_lens = [300, 0, 1, 129, 512], [0, 50, 1000, 256, 1]
    q, kb, vb, qo, kvp, kvi = make_batch(q_lens, prefix_lens, 8 * group, 8, head_dim, dtype)
    scale = 1 / math.sqrt(head_dim)
    out = extend_attention(q, kb, vb, qo, kvp, kvi, scale)
    torch.testing.assert_close(
        out, reference.extend_attention_ref(q, kb, vb, qo, kvp, kvi, scale), **LOW_PRECISION_TOL[dtype]
    )


@needs_cuda
@pytest.mark.parametrize("num_kv_splits", [1, 8, None])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_decode_attention_half_precision_cuda(head_dim, group, dtype, num_kv_splits):
    kv_lens = [1, 4096, 77, 1000, 2049, 3]
    _, kb, vb, _, kvp, kvi = make_batch([0] * len(kv_lens), kv_lens, 8 * group, 8, head_dim, dtype)
    q = torch.randn(len(kv_lens), 8 * group, head_dim, device=DEVICE, dtype=dtype)  # [batch, heads, dim]
    scale = 1 / math.sqrt(head_dim)
    out = decode_attention(q, kb, vb, kvp, kvi, scale, num_kv_splits)
    torch.testing.assert_close(
        out, reference.decode_attention_ref(q, kb, vb, kvp, kvi, scale), **LOW_PRECISION_TOL[dtype]
    )


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_store_kv_and_rms_norm_half_precision_cuda(dtype):
    kb = torch.zeros(4096, 8, 128, device=DEVICE, dtype=dtype)  # [slots, kv_heads, dim]
    vb = torch.zeros_like(kb)
    slots = torch.randperm(4096, device=DEVICE)[:1000]  # [tokens]
    k = torch.randn(1000, 8, 128, device=DEVICE, dtype=dtype)  # [tokens, kv_heads, dim]
    v = torch.randn_like(k)
    store_kv(kb, vb, slots, k, v)
    assert torch.equal(kb[slots], k) and torch.equal(vb[slots], v)
    x = torch.randn(37, 4096, device=DEVICE, dtype=dtype)  # [tokens, hidden]
    w = torch.randn(4096, device=DEVICE, dtype=dtype)  # [hidden]
    torch.testing.assert_close(
        rms_norm(x, w, 1e-5), reference.rms_norm_ref(x, w, 1e-5), **LOW_PRECISION_TOL[dtype]
    )
