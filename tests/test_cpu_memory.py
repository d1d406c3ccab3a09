"""CPU memory placement (runtime/cpu_memory.py): weights copied onto transparent huge pages keep their values,
identity and module wiring, and an engine with them decodes the same tokens as one without."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from sglbench.runtime import cpu_memory
from sglbench.runtime.kv_pool import KVPool, KVPoolConfig
from sglbench.runtime.runtime import Runtime

THP = cpu_memory.transparent_huge_pages() in ("always", "madvise")
needs_thp = pytest.mark.skipif(not THP, reason="this kernel has no transparent huge pages to advise")


@needs_thp
def test_a_huge_page_buffer_is_zeroed_writable_and_2_mib_aligned():
    buffer = cpu_memory.huge_page_buffer(3 * cpu_memory.HUGE_PAGE_BYTES + 5)
    assert buffer.dtype == torch.uint8 and buffer.numel() == 3 * cpu_memory.HUGE_PAGE_BYTES + 5
    assert buffer.data_ptr() % cpu_memory.HUGE_PAGE_BYTES == 0
    assert int(buffer.count_nonzero()) == 0
    buffer[-1] = 7
    assert int(buffer.sum()) == 7


@needs_thp
def test_moved_tensors_keep_their_values_identity_and_modules():
    torch.manual_seed(0)
    linear = nn.Linear(300, 700)
    frozen = nn.Parameter(torch.randn(33, 17, dtype=torch.bfloat16), requires_grad=False)
    plain = torch.arange(10, dtype=torch.int64)
    strided = torch.randn(8, 6).t()  # not contiguous: stays
    before = [t.detach().clone() for t in (linear.weight, linear.bias, frozen, plain, strided)]
    strided_ptr = strided.data_ptr()
    moved = cpu_memory.move_to_huge_pages([linear.weight, linear.bias, frozen, plain, strided, linear.weight])
    assert moved == linear.weight.nbytes + linear.bias.nbytes + frozen.nbytes + plain.nbytes
    for tensor, value in zip((linear.weight, linear.bias, frozen, plain, strided), before):
        assert torch.equal(tensor, value)
    assert strided.data_ptr() == strided_ptr
    assert all(t.data_ptr() % 64 == 0 for t in (linear.weight, linear.bias, frozen, plain))
    assert linear.weight.requires_grad and not frozen.requires_grad
    assert isinstance(linear.weight, nn.Parameter) and linear.weight is linear._parameters["weight"]
    x = torch.randn(4, 300)
    # the same op on the saved copies: addmm and matmul-then-add round differently on some CPUs' BLAS
    assert torch.equal(linear(x), torch.nn.functional.linear(x, before[0], before[1]))
    assert cpu_memory.move_to_huge_pages([linear.weight, frozen]) == 0  # already there
    assert cpu_memory.on_huge_pages(linear.weight) and not cpu_memory.on_huge_pages(strided)


def test_nothing_moves_where_the_kernel_has_no_huge_pages(monkeypatch):
    monkeypatch.setattr(cpu_memory, "transparent_huge_pages", lambda: "never")
    weight = torch.randn(64, 64)
    ptr = weight.data_ptr()
    assert cpu_memory.huge_page_buffer(1 << 20) is None
    assert cpu_memory.move_to_huge_pages([weight]) == 0 and weight.data_ptr() == ptr


@needs_thp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_kv_pool_on_huge_pages_is_zeroed_separate_buffers_in_one_mapping(dtype):
    config = KVPoolConfig(1000, 3, 2, 32, dtype, "cpu", huge_pages=True)
    pool, plain = KVPool(config), KVPool(KVPoolConfig(1000, 3, 2, 32, dtype, "cpu"))
    assert plain.huge_page_bytes == 0
    assert pool.huge_page_bytes == 6 * 1001 * 2 * 32 * dtype.itemsize
    buffers = pool.k_buffers + pool.v_buffers
    assert all(b.shape == (1001, 2, 32) and b.dtype == dtype and b.is_contiguous() for b in buffers)
    assert all(int(b.count_nonzero()) == 0 for b in buffers)
    starts = sorted(b.data_ptr() for b in buffers)
    assert all(later - earlier == buffers[0].nbytes for earlier, later in itertools.pairwise(starts))  # no overlap
    for i, b in enumerate(buffers):
        b[7] = i + 1
    assert [int(b[7, 0, 0]) for b in buffers] == list(range(1, 7))
    assert int(sum(b.count_nonzero() for b in buffers)) == 6 * 64


def _greedy(monkeypatch, huge_pages: bool) -> tuple[str, list[dict]]:
    if not huge_pages:
        monkeypatch.setattr(cpu_memory, "transparent_huge_pages", lambda: "never")
    with Runtime(device="cpu", max_total_tokens=512) as rt:
        memory = rt.model_info().cpu_memory
        model = rt.engine.runner.model
        fused = model.model.fused_decode_weights()
        placed = [cpu_memory.on_huge_pages(t) for t in (model.lm_head.weight, fused[0].qkv, fused[-1].down)]
        assert placed == [huge_pages] * 3  # the dense weights, and the packed copies the C decode reads
        outs = rt.generate(["The capital of France is", "Once upon a time"], max_new_tokens=12, temperature=0,
                           ignore_eos=True, return_logprob=True)
    return memory, [(o["text"], [t for _, t in o["meta_info"]["output_token_logprobs"]],
                     torch.tensor([lp for lp, _ in o["meta_info"]["output_token_logprobs"]])) for o in outs]


@needs_thp
def test_an_engine_on_huge_pages_decodes_as_one_without(monkeypatch):
    on, with_huge = _greedy(monkeypatch, True)
    off, without = _greedy(monkeypatch, False)
    assert on.startswith("on: ") and "MiB of dense weights (and the C decode's packed copies) and the " in on
    assert "MiB KV pool on transparent huge pages" in on
    assert off == "off: transparent huge pages are never on this kernel"
    for (text, tokens, logprobs), (text_off, tokens_off, logprobs_off) in zip(with_huge, without):
        assert text == text_off and tokens == tokens_off
        # MKL's sgemm may round the last bit differently for other data addresses (as between any two runs)
        torch.testing.assert_close(logprobs, logprobs_off, rtol=1e-5, atol=1e-6)
