"""The CPU path's decode attention (sglbench/kernel/cpu_attention.py: plan_decode, decode_attention_cpu)
against the plain-torch reference, and the decode batch the model runner builds from the request table."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from sglbench.kernel import cpu_attention, cpu_native, reference
from sglbench.runtime.attention import TorchAttentionBackend
from sglbench.runtime.forward_batch import ForwardBatch, ForwardMode
from sglbench.runtime.kv_pool import KVPool, KVPoolConfig, ReqToTokenTable
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
    # the CPU builds it in numpy over the table's memory; torch's way (any device) gives the same batch
    table._array = None
    torch_built = runner.prepare_decode(reqs, table)
    for name in ("input_ids", "positions", "out_cache_loc", "qo_indptr", "kv_indptr", "kv_indices", "logits_rows",
                 "padded_kv_indices"):
        assert torch.equal(getattr(batch, name), getattr(torch_built, name)), name
    assert torch_built.max_q_len == 1


def _forked_batch(dtype=torch.float32, kv_heads=2, group=4, head_dim=32):
    """Decode contexts that start alike, in mixed order: three forks of a 100-slot state, two requests over a
    50-slot prefix, a chain (120 slots shared by two, 60 of them by a third), a lone context and a request
    with nothing cached (its new token only)."""
    gen = torch.Generator().manual_seed(7)
    free = iter(torch.randperm(4000, generator=gen).tolist())

    def take(n):
        return [next(free) for _ in range(n)]

    a, b, c = take(100), take(50), take(120)
    contexts = [a + take(3), b + take(9), c + take(5), a + take(20), take(70), a + take(1), b + take(30),
                c[:60] + take(11), c + take(2), take(1)]
    lens = [len(x) for x in contexts]
    kvp = torch.tensor([0, *itertools.accumulate(lens)])
    kvi = torch.tensor([s for x in contexts for s in x])
    heads = kv_heads * group
    q = torch.randn(len(contexts), heads, head_dim, generator=gen).to(dtype)
    kb = torch.randn(4000, kv_heads, head_dim, generator=gen).to(dtype)
    vb = torch.randn(4000, kv_heads, head_dim, generator=gen).to(dtype)
    return q, kb, vb, kvp, kvi


def test_requests_sharing_prefixes_read_them_once_and_match_the_reference():
    q, kb, vb, kvp, kvi = _forked_batch()
    assert cpu_attention.plan_decode(kvp, kvi, q.dtype).shared is None  # too small a batch to pay for two parts
    plan = cpu_attention.plan_decode(kvp, kvi, q.dtype, share_prefixes=True)
    shared = plan.shared
    assert shared is not None and shared.groups == 3 and shared.prefix_max == 100
    assert shared.members.shape == (3, 3)  # padded to the most members by repeating one
    assert sorted(sorted(set(group)) for group in shared.members.tolist()) == [[0, 3, 5], [1, 6], [2, 7, 8]]
    assert shared.grouped.flatten().tolist() == [True] * 4 + [False] + [True] * 4 + [False]
    out = cpu_attention.decode_attention_cpu(q, kb, vb, plan, 0.17)
    torch.testing.assert_close(out, reference.decode_attention_ref(q, kb, vb, kvp, kvi, 0.17))
    alone = cpu_attention.plan_decode(kvp, kvi, q.dtype, share_prefixes=False)
    assert alone.shared is None
    torch.testing.assert_close(cpu_attention.decode_attention_cpu(q, kb, vb, alone, 0.17), out)


def test_shared_prefix_decode_in_bf16_and_when_sharing_pays():
    q, kb, vb, kvp, kvi = _forked_batch(torch.bfloat16, kv_heads=2, group=7, head_dim=64)
    plan = cpu_attention.plan_decode(kvp, kvi, q.dtype, share_prefixes=True)
    assert plan.shared is not None
    out = cpu_attention.decode_attention_cpu(q, kb, vb, plan, 0.125)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, reference.decode_attention_ref(q, kb, vb, kvp, kvi, 0.125), atol=2e-2, rtol=2e-2)
    # an LLM judge's decode: 8 answers of 300 slots, 6 judgments of each 20 tokens in: two parts pay
    judge = [list(range(1000 * a + 1, 1000 * a + 301)) + list(range(1000 * a + 400 + 30 * j, 1000 * a + 420 + 30 * j))
             for a in range(8) for j in range(6)]
    kvp2 = torch.tensor([0, *itertools.accumulate(len(x) for x in judge)])
    judged = cpu_attention.plan_decode(kvp2, torch.tensor([s for x in judge for s in x]), torch.float32)
    assert judged.shared is not None and judged.shared.groups == 8 and judged.shared.suffix_max == 20
    # two requests over a 40-slot prefix with long contexts of their own: one padded block is cheaper
    common = list(range(1, 41))
    contexts = [common + list(range(100, 400)), common + list(range(500, 790))]
    kvp3 = torch.tensor([0, len(contexts[0]), len(contexts[0]) + len(contexts[1])])
    assert cpu_attention.plan_decode(kvp3, torch.tensor(contexts[0] + contexts[1]), torch.float32).shared is None


def test_table_writes_one_slot_per_request_the_same_in_numpy_and_torch():
    """write_one_each scatters a decode batch's new slots through the table's numpy view on the CPU, as torch's
    indexed write does (the path of any other device)."""
    written = []
    for numpy_path in (True, False):
        table = ReqToTokenTable(4, 16)
        if not numpy_path:
            table._array = None
        table.write(1, 0, torch.arange(5))
        table.write_one_each([1, 0, 3], [5, 0, 9], torch.tensor([50, 60, 70]))
        written.append(table.table.clone())
    assert torch.equal(written[0], written[1])
    assert written[0][1, :6].tolist() == [0, 1, 2, 3, 4, 50] and written[0][0, 0] == 60 and written[0][3, 9] == 70
    assert table.array is None and ReqToTokenTable(2, 4).array is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mixed_batch_riders_go_with_the_extend(monkeypatch, dtype):
    """A mixed extend batch (extend requests, then decode requests riding along) through the torch backend: the
    reference's answer for the whole batch as one extend batch. In fp32, where the extend part goes to the C
    kernel, the riders go in the same call (one call, the same bits as the extend and decode calls apart); in
    bf16 the parts run their own ways."""
    if dtype == torch.float32 and not cpu_native.available():
        pytest.skip(f"C kernels: {cpu_native.unavailable_reason()}")
    q_lens, prefixes = [20, 40, 1, 1, 1], [30, 0, 49, 6, 89]  # two extends, then three riders
    q, kb, vb, qo, kvp, kvi = make_batch(q_lens, prefixes, 8, 2, 32, dtype=dtype)
    backend = TorchAttentionBackend(KVPool(KVPoolConfig(8, 1, 2, 32, dtype, "cpu")), 32**-0.5)
    ids = lambda n: torch.zeros(n, dtype=torch.int64)  # noqa: E731 (no step reads them here)

    def batch(mode, lo, hi, parts=None):
        qo_part, kv_part = qo[lo : hi + 1] - qo[lo], kvp[lo : hi + 1] - kvp[lo]
        n = int(qo_part[-1])
        return ForwardBatch(mode, ids(n), ids(n), ids(n), qo_part, kv_part, kvi[kvp[lo] : kvp[hi]], ids(0),
                            parts=parts)

    head, tail = batch(ForwardMode.EXTEND, 0, 2), batch(ForwardMode.DECODE, 2, 5)
    whole = batch(ForwardMode.EXTEND, 0, 5, parts=(head, tail))
    calls = []
    counted = cpu_native._attention
    monkeypatch.setattr(cpu_native, "_attention", lambda *a: calls.append(a) or counted(*a))
    out = backend.extend(q, kb, vb, whole)
    ref = reference.extend_attention_ref(q, kb, vb, qo, kvp, kvi, 32**-0.5)
    tol = {} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(out, ref, **tol)
    if dtype == torch.float32:
        assert len(calls) == 1
        cut = head.num_tokens
        split = torch.cat([cpu_native.extend_attention(q[:cut], kb, vb, head.qo_indptr, head.kv_indptr,
                                                       head.kv_indices, 32**-0.5),
                           cpu_native.extend_attention(q[cut:], kb, vb, tail.qo_indptr, tail.kv_indptr,
                                                       tail.kv_indices, 32**-0.5)])
        assert torch.equal(out, split)
