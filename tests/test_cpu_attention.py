"""The CPU path's extend attention (sglbench/kernel/cpu_attention.py) against the plain-torch reference."""

from __future__ import annotations

import math
import time

import pytest
import torch

from sglbench.bench.kernels import few_shot_batch
from sglbench.kernel import cpu_attention, cpu_native, reference
from tests.helpers import EXTEND_CASES, GQA, make_batch

CASES = {
    **EXTEND_CASES,
    # a long chunk over a prefix next to a short one, and one new token over a long prefix
    "long_chunk_over_prefix": ([549, 3], [90, 0]),
    "one_token_over_prefix": ([1], [700]),
}


PLANS = cpu_attention.PLAN_KINDS  # chosen by cost ("auto"), or forced


def planned(args, dtype=torch.float32, kind="auto"):
    """plan_extend of a batch's indices (args as make_batch returns them)."""
    return cpu_attention.plan_extend(*args[3:], dtype, kind)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("group", list(GQA))
@pytest.mark.parametrize("head_dim", [32, 64])
@pytest.mark.parametrize("plan", PLANS)
def test_extend_attention_cpu_matches_reference(head_dim, group, case, plan):
    q_lens, prefix_lens = CASES[case]
    kv_heads = GQA[group]
    args = make_batch(q_lens, prefix_lens, kv_heads * group, kv_heads, head_dim)
    scale = 1 / math.sqrt(head_dim)
    torch.testing.assert_close(
        cpu_attention.extend_attention_cpu(*args, scale, planned(args, kind=plan)),
        reference.extend_attention_ref(*args, scale),
    )


def test_plan_kind_follows_the_batch():
    """Forks of one state: one block over their shared slots; alike requests over their own contexts: a
    block each; one long chunk beside short requests over long contexts: the cut."""
    forks = shared_prefix_batch()  # 9 requests, 78 new tokens, contexts of at most 80 slots
    dense = planned(forks)
    assert isinstance(dense, cpu_attention.MaskedExtendPlan) and dense.rows is None
    alike = make_batch([20] * 8, [200] * 8, 4, 2, 32)
    padded = planned(alike)
    assert isinstance(padded, cpu_attention.MaskedExtendPlan) and padded.rows.shape == (8, 20)
    mixed = make_batch([1000, 4, 4, 4], [0, 900, 900, 900], 4, 2, 32)
    assert isinstance(planned(mixed), cpu_attention.ExtendPlan)
    # 15 questions of 30 tokens over one 600-token prefix at Qwen2.5-0.5B's heads (14 x 64): the cut in fp32,
    # where its merges cost little more per score than one dense call, the dense call in bf16, where they do
    few_shot = few_shot_batch(subjects=1, questions=15, prefix=600, suffix=30)
    assert isinstance(cpu_attention.plan_extend(*few_shot[3:], torch.float32, work_per_score=14 * 64),
                      cpu_attention.ExtendPlan)
    dense_bf16 = cpu_attention.plan_extend(*few_shot[3:], torch.bfloat16, work_per_score=14 * 64)
    assert isinstance(dense_bf16, cpu_attention.MaskedExtendPlan) and dense_bf16.rows is None
    with pytest.raises(ValueError, match="kind must be one of"):
        planned(forks, kind="fast")


@pytest.mark.parametrize("plan", PLANS)
def test_low_precision_inputs_compute_in_fp32(plan):
    q, kb, vb, qo, kvp, kvi = make_batch([9, 4], [20, 0], 4, 2, 32)
    out = cpu_attention.extend_attention_cpu(q.bfloat16(), kb.bfloat16(), vb.bfloat16(), qo, kvp, kvi, 0.2,
                                             cpu_attention.plan_extend(qo, kvp, kvi, torch.bfloat16, plan))
    expected = reference.extend_attention_ref(q.bfloat16(), kb.bfloat16(), vb.bfloat16(), qo, kvp, kvi, 0.2)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, atol=2e-2, rtol=2e-2)


def shared_prefix_batch(heads=4, kv_heads=2, head_dim=32, seed=1):
    """Requests whose contexts share slot runs, as the radix cache hands them out: a 6-slot root (shorter
    than MIN_SHARED_SLOTS) under two 40-slot few-shot prefixes; some members cache more of their own;
    one request has no prefix, one no new tokens, and new-token counts spread over several buckets."""
    g = torch.Generator().manual_seed(seed)
    num_slots = 600
    k_buffer = torch.randn(num_slots, kv_heads, head_dim, generator=g)
    v_buffer = torch.randn(num_slots, kv_heads, head_dim, generator=g)
    free = iter(torch.randperm(num_slots, generator=g).tolist())
    take = lambda n: [next(free) for _ in range(n)]  # noqa: E731
    root = take(6)
    shots = [root + take(34), root + take(34)]
    # (shared context slots, own cached slots, new tokens)
    requests = [(shots[0], 0, 7), (shots[1], 3, 1), (shots[0], 0, 30), (shots[1], 0, 12), ([], 0, 9),
                (shots[0], 5, 8), (shots[1], 0, 0), (root, 2, 4), (shots[0], 0, 7)]
    kv_indices, q_lens, kv_lens = [], [], []
    for shared, own, new in requests:
        kv_indices += shared + take(own + new)
        q_lens.append(new)
        kv_lens.append(len(shared) + own + new)
    q = torch.randn(sum(q_lens), heads, head_dim, generator=g)
    return (q, k_buffer, v_buffer, torch.tensor([0, *q_lens]).cumsum(0), torch.tensor([0, *kv_lens]).cumsum(0),
            torch.tensor(kv_indices))


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
@pytest.mark.parametrize("plan", PLANS)
def test_shared_prefixes_match_reference(kv_heads, plan):
    args = shared_prefix_batch(kv_heads=kv_heads)
    torch.testing.assert_close(cpu_attention.extend_attention_cpu(*args, 0.17, planned(args, kind=plan)),
                               reference.extend_attention_ref(*args, 0.17))


def test_plan_reads_each_shared_prefix_once_and_covers_every_cached_slot_once():
    q, _, _, qo, kvp, kvi = shared_prefix_batch()
    plan = cpu_attention.plan_extend(qo, kvp, kvi, kind="cut")
    qo_l, kvp_l = qo.tolist(), kvp.tolist()
    seen = {}  # query row -> cached slots it attends to through segments
    for seg in plan.segments:
        rows = range(q.shape[0])[seg.rows] if isinstance(seg.rows, slice) else seg.rows.tolist()
        for r in rows:
            seen.setdefault(r, []).extend(seg.slots.tolist())
    for b in range(len(qo_l) - 1):
        q_len = qo_l[b + 1] - qo_l[b]
        prefix = kvi[kvp_l[b] : kvp_l[b + 1] - q_len].tolist()
        for r in range(qo_l[b], qo_l[b + 1]):
            assert sorted(seen.get(r, [])) == sorted(prefix)
    # the two few-shot prefixes (6 root + 34 slots each) are attended once each, by all their requests
    few_shot = [s for s in plan.segments if len(s.slots) == 40]
    assert len(few_shot) == 2
    # every request with new tokens is in exactly one causal bucket, padded at most BUCKET_SLACK over its length
    in_buckets = sorted(r for b in plan.buckets for r in b.rows[b.valid].tolist())
    assert in_buckets == list(range(q.shape[0]))
    for bucket in plan.buckets:
        lengths = bucket.valid.sum(1)
        assert bucket.valid.shape[1] == lengths.max() <= lengths.min() * cpu_attention.BUCKET_SLACK


@pytest.mark.parametrize("plan", PLANS)
def test_shared_prefixes_in_bf16_merge_in_fp32(plan):
    q, kb, vb, qo, kvp, kvi = shared_prefix_batch()
    out = cpu_attention.extend_attention_cpu(q.bfloat16(), kb.bfloat16(), vb.bfloat16(), qo, kvp, kvi, 0.2,
                                             cpu_attention.plan_extend(qo, kvp, kvi, torch.bfloat16, plan))
    expected = reference.extend_attention_ref(q.bfloat16(), kb.bfloat16(), vb.bfloat16(), qo, kvp, kvi, 0.2)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("causal", [False, True])
def test_score_matrix_fallback_matches_fused_kernel(causal):
    """Off the CPU, attention and its log-sum-exp come from the score matrix: the same numbers."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(3, 8, 21, 32, generator=g)
    k, v = torch.randn(3, 2, 21, 32, generator=g), torch.randn(3, 2, 21, 32, generator=g)
    out, lse = cpu_attention._attend(q, k, v, causal, 0.2)
    ref_out, ref_lse = cpu_attention._attend_by_scores(q, k, v, causal, 0.2)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(lse, ref_lse)


def test_score_matrix_fallback_takes_the_mask():
    """Off the CPU, a masked plan's call goes through the score matrix: the same numbers."""
    args = shared_prefix_batch()
    plan = planned(args, kind="dense")
    q, kb, vb = args[:3]
    qd = q.transpose(0, 1)[None]
    slots = plan.slots[0]
    k, v = kb.index_select(0, slots).transpose(0, 1)[None], vb.index_select(0, slots).transpose(0, 1)[None]
    fused = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qd, k, v, attn_mask=plan.mask, scale=0.2)[0]
    torch.testing.assert_close(cpu_attention._attend_by_scores(qd, k, v, False, 0.2, plan.mask)[0], fused)


@pytest.mark.skipif(not cpu_native.available(), reason="the C kernels are off here")
def test_c_kernel_wins_times_both_ways_once_per_shape(monkeypatch):
    """The machine check runs each way four times (one warm-up), once per dtype and head shape, and picks the
    faster: here made the slower by a sleep, each way in turn."""
    calls = {"c": 0, "torch": 0}
    c_way, torch_way = cpu_native.extend_attention, cpu_attention.extend_attention_cpu

    def slowed(name, way, delay):
        def run(*args):
            calls[name] += 1
            time.sleep(delay)
            return way(*args)
        return run

    try:
        for slow, expect in (("torch", True), ("c", False)):
            cpu_attention.c_kernel_wins.cache_clear()
            calls.update(c=0, torch=0)
            monkeypatch.setattr(cpu_native, "extend_attention", slowed("c", c_way, 0.02 * (slow == "c")))
            monkeypatch.setattr(cpu_attention, "extend_attention_cpu",
                                slowed("torch", torch_way, 0.02 * (slow == "torch")))
            for shared in (False, True):
                assert cpu_attention.c_kernel_wins(torch.float32, 4, 2, 16, shared) is expect
                assert cpu_attention.c_kernel_wins(torch.float32, 4, 2, 16, shared) is expect  # cached
            assert calls == {"c": 8, "torch": 8}
        cpu_attention.c_kernel_wins.cache_clear()
        with cpu_native.disabled():
            assert cpu_attention.c_kernel_wins(torch.bfloat16, 4, 2, 16, False) is False
    finally:
        cpu_attention.c_kernel_wins.cache_clear()  # later tests time the real ways


@pytest.mark.skipif(not cpu_native.available(), reason="the C kernels are off here")
def test_choose_extend_takes_the_c_kernel_unless_shared_prefixes_dominate(monkeypatch):
    """Where torch's plan wins the machine's timing (c_kernel_wins False: the AMX Xeon's flash kernel), fp32
    goes to the C kernel unless the scores are nearly all over shared prefixes, bf16 stays on torch's plan;
    where the C kernel wins both (an AMD EPYC here), every batch goes to it."""
    unshared = few_shot_batch(subjects=6, questions=6, prefix=0, suffix=80)  # prompts with nothing cached
    hellaswag_like = few_shot_batch(subjects=1, questions=40, prefix=1200, suffix=20)  # 98 % over one prefix
    mmlu_like = few_shot_batch(subjects=2, questions=8, prefix=100, suffix=60)  # 60 % shared: C
    for c_wins in (False, True):
        monkeypatch.setattr(cpu_attention, "c_kernel_wins", lambda *shape, c_wins=c_wins: c_wins)
        for batch, native in ((unshared, True), (hellaswag_like, c_wins), (mmlu_like, True)):
            q, k_buf, v_buf, qo, kv, kvi = batch
            plan = cpu_attention.choose_extend(q, k_buf, qo, kv, kvi)
            assert isinstance(plan, cpu_attention.NativeExtendPlan) is native
            out = cpu_attention.extend_attention_cpu(q, k_buf, v_buf, qo, kv, kvi, 0.2, plan)
            torch.testing.assert_close(out, reference.extend_attention_ref(q, k_buf, v_buf, qo, kv, kvi, 0.2),
                                       rtol=2e-5, atol=2e-5)
            bf16 = cpu_attention.choose_extend(q.bfloat16(), k_buf.bfloat16(), qo, kv, kvi)
            assert isinstance(bf16, cpu_attention.NativeExtendPlan) is (c_wins and native)
    with cpu_native.disabled():
        assert not isinstance(cpu_attention.choose_extend(*unshared[:2], *unshared[3:]), cpu_attention.NativeExtendPlan)
