"""The CPU path's decode attention (sglbench/kernel/cpu_attention.py: plan_decode, decode_attention_cpu)
against the plain-torch reference, and the decode batch the model runner builds from the request table."""

from __future__ import annotations

import math

import pytest
import torch

from sglbench.kernel import cpu_attention, reference
from sglbench.runtime.forward_batch import ForwardMode
from sglbench.runtime.kv_pool import ReqToTokenTable
from sglbench.runtime.model_runner import ModelRunner
from sglbench.runtime.request import Request
from sglbench.runtime.sampling_params import SamplingParams
from tests.helpers import GQA, make_batch

LENGTHS = {"one": [1], "equal": [37, 37, 37], "ragged": [5, 300, 1, 64]}


def _decode_case(lengths, group, head_dim, dtype=torch.float32):
    kv_heads = GQA[group]
    q, kb, vb, _, kvp, kvi = make_batch([1] * len(lengths), [n - 1 for n in lengths], kv_heads * group, kv_heads,
                                        head_dim, dtype=dtype)
    return q, kb, vb, kvp, kvi


@pytest.mark.parametrize("lengths", list(LENGTHS))
@pytest.mark.parametrize("group", list(GQA))
@pytest.mark.parametrize("head_dim", [32, 64])
def test_decode_attention_cpu_matches_reference(lengths, group, head_dim):
    q, kb, vb, kvp, kvi = _decode_case(LENGTHS[lengths], group, head_dim)
    scale = 1 / math.sqrt(head_dim)
    plan = cpu_attention.plan_decode(kvp, kvi, q.dtype)
    assert (plan.mask is None) == (len(set(LENGTHS[lengths])) == 1)  # padding only where lengths differ
    out = cpu_attention.decode_attention_cpu(q, kb, vb, plan, scale)
    torch.testing.assert_close(out, reference.decode_attention_ref(q, kb, vb, kvp, kvi, scale))


def test_padded_slots_from_the_table_give_the_same_result():
    q, kb, vb, kvp, kvi = _decode_case(LENGTHS["ragged"], 4, 32)
    lens = (kvp[1:] - kvp[:-1]).tolist()
    stale = torch.randint(0, kb.shape[0], (len(lens), max(lens) + 9))  # past each length: any valid slot
    for i, (start, n) in enumerate(zip(kvp[:-1].tolist(), lens)):
        stale[i, :n] = kvi[start : start + n]
    plan = cpu_attention.plan_decode(kvp, kvi, q.dtype, padded=stale)
    torch.testing.assert_close(cpu_attention.decode_attention_cpu(q, kb, vb, plan, 0.2),
                               reference.decode_attention_ref(q, kb, vb, kvp, kvi, 0.2))


def test_bf16_decode_within_bf16_tolerance():
    q, kb, vb, kvp, kvi = _decode_case(LENGTHS["ragged"], 8, 64, dtype=torch.bfloat16)
    out = cpu_attention.decode_attention_cpu(q, kb, vb, cpu_attention.plan_decode(kvp, kvi, q.dtype), 0.125)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, reference.decode_attention_ref(q, kb, vb, kvp, kvi, 0.125), atol=2e-2, rtol=2e-2)


def test_prepare_decode_reads_contexts_from_the_table():
    """One gather of the requests' table rows gives the reference contract (kv_indptr/kv_indices), the new
    tokens' slots, and the padded block the backend reads."""
    table = ReqToTokenTable(8, 64)
    table.table.random_(1, 500)  # stale slots everywhere
    runner = ModelRunner.__new__(ModelRunner)  # prepare_decode needs only the device
    runner.device = "cpu"
    reqs = []
    for i, kv_len in enumerate([3, 40, 0, 17]):
        req = Request(f"r{i}", [5] * max(kv_len, 1), SamplingParams(max_new_tokens=4))
        req.row, req.kv_len, req.output_ids = table.alloc(), kv_len, [100 + i]
        reqs.append(req)
    batch = runner.prepare_decode(reqs, table)
    assert batch.mode is ForwardMode.DECODE and batch.max_q_len == 1
    assert batch.input_ids.tolist() == [100, 101, 102, 103] and batch.positions.tolist() == [3, 40, 0, 17]
    assert batch.kv_indptr.tolist() == [0, 4, 45, 46, 64]
    expected = torch.cat([table.slots(r.row, 0, r.kv_len + 1) for r in reqs])
    assert torch.equal(batch.kv_indices, expected)
    assert batch.out_cache_loc.tolist() == [int(table.table[r.row, r.kv_len]) for r in reqs]
    assert batch.logits_rows.tolist() == [0, 1, 2, 3] and batch.qo_indptr.tolist() == [0, 1, 2, 3, 4]
    assert batch.padded_kv_indices.shape == (4, 41)
