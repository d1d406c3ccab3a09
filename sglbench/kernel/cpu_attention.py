"""Extend attention for the CPU path: the contract of ``reference.extend_attention_ref`` on torch's fused
flash attention, cut so that no call needs a mask and a shared cached prefix is read once.

Each request's attention splits into parts whose softmax results merge exactly by their log-sum-exp:

* its new tokens over each other: plain causal. Requests of similar length go through one call, padded
  at the end (causality hides the padding from every real query);
* its new tokens over its cached prefix: every new token sees every cached slot. Requests whose contexts
  start with the same slots (few-shot prompts, forks of one state, one system prompt) attend to those
  slots in one call over all their new tokens.

``plan_extend`` finds that structure once per batch (a trie over the requests' slot lists); every layer
reuses it. A small batch is cheaper as one masked call (``MaskedExtendPlan``): over the distinct slots of
all its contexts when its requests share most of them (forks of one state), or each request over its own
context, padded, when their lengths are alike. Each call of the cut costs as much as tens of thousands of
score elements, and a tree-of-thought step of 14 requests and 130 new tokens made 14 of them per layer.
Against one bottom-right-masked SDPA call per request (``python -m sglbench.bench kernels`` on this repository's 2-core CPU): 40 requests of 20 new tokens over one 1,200-token prefix (HellaSwag-like)
take 40 % less time; 60 questions of 100 tokens over four 520-token prefixes (MMLU-like) the same time.

Decode (one query per request) goes through the same fused kernel: ``plan_decode`` gathers each request's
slots into one padded [batch, longest context] block once per step, and every layer reads its K/V rows
with one ``index_select`` and attends with each kv head's query group as a short query run (no GQA
expansion). Against the score-matrix reference, per layer at Qwen2.5-0.5B's 14/2 heads of 64, bf16, one
thread of this repository's CPU (noisy): batch 1 at 2,048 tokens 0.18 ms against 0.82, batch 32 at 2,048
tokens 11 ms against 144.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass

import torch

from sglbench.sequences import common_prefix_len

# Plan costs, in score elements of one dense masked call (~7-9 ns each with 8 heads of 32 in fp32 on this
# 2-core CPU, ~8 ns with 14 heads of 64 in bf16). Per element, a padded call's short query blocks and the
# cut's merges cost more: factors measured against the dense call (fp32, fp16/bf16) on a tree-of-thought
# step, a HellaSwag-like batch and a Qwen2.5-0.5B few-shot batch (15 questions over a 600-token prefix).
PER_ELEMENT = {"dense": (1.0, 1.0), "padded": (2.0, 2.5), "cut": (1.5, 2.0)}
REFERENCE_WORK = 8 * 32  # heads x head dim the call costs below were measured at (the embedded model)
MASKED_CALL_COST = 4_000  # a masked call's own cost (~20-40 us)
CUT_CALL_COST = 30_000  # one call of the cut: gather, attend, merge (~0.2-0.4 ms in a tree-of-thought step)
MASKED_MAX_ELEMENTS = 1 << 22  # a masked call's mask stays under 16 MB of fp32
MIN_SHARED_SLOTS = 16  # a shared run shorter than this is attended by each branch below it instead
BUCKET_SLACK = 1.25  # causal blocks padded to a common length at most this factor over the shortest


@dataclass(frozen=True)
class CausalBucket:
    """New tokens of requests of similar length, padded to one [batch, length] block for one causal call."""

    rows: torch.Tensor  # [batch, length] query rows; padding repeats a request's last row
    slots: torch.Tensor  # [batch, length] pool slots of those tokens, padded the same way
    valid: torch.Tensor  # [batch, length] bool, False on padding


@dataclass(frozen=True)
class PrefixSegment:
    """Cached slots that every listed query row sees in full."""

    slots: torch.Tensor  # [length]
    rows: torch.Tensor | slice  # query rows of the requests sharing these slots (a slice when contiguous)


@dataclass(frozen=True)
class ExtendPlan:
    """A batch's extend attention as causal calls over the new tokens and full calls over cached prefixes."""

    buckets: tuple[CausalBucket, ...]
    segments: tuple[PrefixSegment, ...]


@dataclass(frozen=True)
class MaskedExtendPlan:
    """A whole extend batch as one masked call over [groups] blocks: each block holds some requests' new
    tokens (padded to the longest block) over the distinct slots of their contexts (padded too), and an
    additive mask lets each token see its own context up to itself. One block of everything ("dense") suits
    requests that share most of their contexts; a block per request ("padded") suits similar lengths."""

    rows: torch.Tensor | None  # [groups, q_max] query rows (padding repeats a row); None: one block, rows in order
    valid: torch.Tensor | None  # [groups, q_max] False on padding rows; None with rows
    slots: torch.Tensor  # [groups, kv_max] pool slots (padding repeats a slot the mask hides)
    mask: torch.Tensor  # [groups, 1, q_max, kv_max] additive (0 / -inf) in the query dtype


PLAN_KINDS = ("auto", "cut", "dense", "padded")


def plan_extend(qo_indptr: torch.Tensor, kv_indptr: torch.Tensor, kv_indices: torch.Tensor,
                dtype: torch.dtype = torch.float32, kind: str = "auto",
                work_per_score: int = REFERENCE_WORK) -> ExtendPlan | MaskedExtendPlan:
    """Plan a batch (reference.py's indptr/indices contract) as one of PLAN_KINDS: one masked call over
    the distinct slots of all contexts ("dense") or over each request's own ("padded"), or causal buckets
    and prefix segments ("cut"); "auto" takes the cheapest by PER_ELEMENT and the call costs, which are a
    fixed time and so fewer elements the more work one is (work_per_score: heads x head dim). dtype: the
    queries' (the mask's)."""
    if kind not in PLAN_KINDS:
        raise ValueError(f"kind must be one of {PLAN_KINDS}, got {kind!r}")
    qo, kvp = qo_indptr.tolist(), kv_indptr.tolist()
    requests = [b for b in range(len(qo) - 1) if qo[b + 1] > qo[b]]
    if kind == "cut" or not requests:
        return _plan_cut(qo, kvp, requests, kv_indices)
    if kind == "padded":
        return _plan_padded(qo_indptr, kv_indptr, kv_indices, requests, dtype)
    slots, inverse = torch.unique(kv_indices, return_inverse=True)
    if kind == "dense":
        return _plan_dense(qo, kvp, requests, slots, inverse, dtype)
    low = int(dtype in (torch.float16, torch.bfloat16))
    scale = REFERENCE_WORK / work_per_score
    q_lens = [qo[b + 1] - qo[b] for b in requests]
    kv_lens = [kvp[b + 1] - kvp[b] for b in requests]
    sizes = {"dense": qo[-1] * slots.numel(), "padded": len(requests) * max(q_lens) * max(kv_lens)}
    costs = {k: n * PER_ELEMENT[k][low] + MASKED_CALL_COST * scale
             for k, n in sizes.items() if n <= MASKED_MAX_ELEMENTS}
    best = min(costs, key=costs.__getitem__) if costs else None
    needed = sum(q * kv for q, kv in zip(q_lens, kv_lens)) * PER_ELEMENT["cut"][low]  # scores the queries must see
    if best is None or costs[best] > needed + 2 * CUT_CALL_COST * scale:  # the cut makes 2 calls at least
        cut = _plan_cut(qo, kvp, requests, kv_indices)
        if best is None or costs[best] > needed + CUT_CALL_COST * scale * (len(cut.buckets) + len(cut.segments)):
            return cut
    if best == "padded":
        return _plan_padded(qo_indptr, kv_indptr, kv_indices, requests, dtype)
    return _plan_dense(qo, kvp, requests, slots, inverse, dtype)


def _additive(sees: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(sees.shape, dtype=dtype, device=sees.device).masked_fill_(~sees, float("-inf"))


def _plan_dense(qo: list[int], kvp: list[int], requests: list[int], slots: torch.Tensor, inverse: torch.Tensor,
                dtype: torch.dtype) -> MaskedExtendPlan:
    """One block: new token i of a request with p cached tokens sees its context's first p + i + 1 slots."""
    device = slots.device
    sees = torch.zeros(qo[-1], slots.numel(), dtype=torch.bool, device=device)  # [tokens, distinct]
    for b in requests:
        q_len, kv_len = qo[b + 1] - qo[b], kvp[b + 1] - kvp[b]
        horizon = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)  # last position each query sees
        sees[qo[b] : qo[b + 1]][:, inverse[kvp[b] : kvp[b + 1]]] = torch.arange(kv_len, device=device) <= horizon
    return MaskedExtendPlan(None, None, slots[None], _additive(sees, dtype)[None, None])


def _plan_padded(qo_indptr: torch.Tensor, kv_indptr: torch.Tensor, kv_indices: torch.Tensor, requests: list[int],
                 dtype: torch.dtype) -> MaskedExtendPlan:
    """A block per request: its new tokens over its own context, both padded to the batch's longest."""
    device = kv_indices.device
    index = torch.tensor(requests, device=device)
    first_row, first_slot = qo_indptr[index], kv_indptr[index]
    q_len, kv_len = qo_indptr[index + 1] - first_row, kv_indptr[index + 1] - first_slot  # [requests]
    i = torch.arange(int(q_len.max()), device=device)[None, :]
    j = torch.arange(int(kv_len.max()), device=device)[None, :]
    rows = first_row[:, None] + torch.minimum(i, q_len[:, None] - 1)  # [requests, q_max]
    slots = kv_indices[first_slot[:, None] + torch.minimum(j, kv_len[:, None] - 1)]  # [requests, kv_max]
    horizon = torch.minimum(i, q_len[:, None] - 1) + (kv_len - q_len)[:, None]  # [requests, q_max]
    sees = j[:, None, :] <= horizon[:, :, None]  # [requests, q_max, kv_max]
    return MaskedExtendPlan(rows, i < q_len[:, None], slots, _additive(sees, dtype)[:, None])


def _plan_cut(qo: list[int], kvp: list[int], requests: list[int], kv_indices: torch.Tensor) -> ExtendPlan:
    """Cut a batch into causal buckets and prefix segments."""
    q_len = {b: qo[b + 1] - qo[b] for b in requests}
    prefix_len = {b: kvp[b + 1] - kvp[b] - q_len[b] for b in requests}
    device = kv_indices.device

    buckets = []
    by_length = sorted(requests, key=lambda b: q_len[b])
    while by_length:
        shortest = q_len[by_length[0]]
        take = next((i for i, b in enumerate(by_length) if q_len[b] > shortest * BUCKET_SLACK), len(by_length))
        bucket, by_length = by_length[:take], by_length[take:]
        lengths = torch.tensor([q_len[b] for b in bucket], device=device)[:, None]
        step = torch.arange(q_len[bucket[-1]], device=device)[None, :]
        clamped = torch.minimum(step, lengths - 1)  # padding repeats a request's last token
        first_row = torch.tensor([qo[b] for b in bucket], device=device)[:, None]
        first_new_slot = torch.tensor([kvp[b] + prefix_len[b] for b in bucket], device=device)[:, None]
        buckets.append(CausalBucket(first_row + clamped, kv_indices[first_new_slot + clamped], step < lengths))

    segments = []
    shared = [b for b in requests if prefix_len[b]]
    for members, start, end in _shared_runs(kv_indices.tolist() if shared else [], kvp, prefix_len, shared):
        lead = kvp[members[0]]
        spans = [(qo[b], qo[b + 1]) for b in members]
        if all(a[1] == b[0] for a, b in itertools.pairwise(spans)):
            rows = slice(spans[0][0], spans[-1][1])
        else:
            rows = torch.cat([torch.arange(a, b, device=device) for a, b in spans])
        segments.append(PrefixSegment(kv_indices[lead + start : lead + end], rows))
    return ExtendPlan(tuple(buckets), tuple(segments))


def _shared_runs(slots: list[int], kvp: list[int], prefix_len: dict[int, int], requests: list[int]):
    """(members, start, end): every member's cached prefix holds the lead's slots [start, end), and the
    runs listed for a request cover its cached prefix exactly once. A walk down the trie of slot lists;
    runs shorter than MIN_SHARED_SLOTS are handed down to each branch rather than attended on their own."""
    runs = []
    stack = [(requests, 0, 0)]  # (members sharing slots [0, depth), depth, start of the run not yet listed)
    while stack:
        members, depth, pending = stack.pop()
        ended = [b for b in members if prefix_len[b] == depth]
        if ended and pending < depth:
            runs.append((ended, pending, depth))
        branches = defaultdict(list)
        for b in members:
            if prefix_len[b] > depth:
                branches[slots[kvp[b] + depth]].append(b)
        for branch in branches.values():
            lead = branch[0]
            end = prefix_len[lead]
            lead_slots = slots[kvp[lead] : kvp[lead] + end]
            for b in branch[1:]:
                end = depth + common_prefix_len(lead_slots[depth:end], slots[kvp[b] + depth : kvp[b] + prefix_len[b]])
            if len(branch) == 1:
                runs.append((branch, pending, end))
            elif end - depth >= MIN_SHARED_SLOTS:
                runs.append((branch, pending, end))
                stack.append((branch, end, end))
            else:
                stack.append((branch, end, pending))
    return runs


@dataclass(frozen=True)
class DecodePlan:
    """A decode batch's contexts as one padded block: every layer gathers its K/V rows with `slots`."""

    slots: torch.Tensor  # [batch * max_len] pool slots, row-major; padding repeats some valid slot
    batch: int
    max_len: int
    mask: torch.Tensor | None  # [batch, 1, 1, max_len] additive (0 / -inf) in the query dtype; None: no padding


def plan_decode(kv_indptr: torch.Tensor, kv_indices: torch.Tensor, dtype: torch.dtype,
                padded: torch.Tensor | None = None) -> DecodePlan:
    """Plan a decode batch (reference.py's indptr/indices contract). padded: the same slots already laid out
    as [batch, >= max_len] (model_runner builds it from the request-to-token table), anything past a row's
    length being some valid slot; without it they are gathered from kv_indices."""
    lens = kv_indptr[1:] - kv_indptr[:-1]  # [batch]
    batch = lens.numel()
    max_len = int(lens.max()) if batch else 0
    offsets = torch.arange(max_len, device=kv_indices.device)
    valid = offsets[None, :] < lens[:, None]  # [batch, max_len]
    if padded is None:
        at = (kv_indptr[:-1, None] + offsets[None, :]).clamp(max=max(kv_indices.numel() - 1, 0))
        padded = kv_indices[at] if kv_indices.numel() else torch.zeros_like(at)
    slots = padded[:, :max_len].reshape(-1)
    mask = None
    if batch and not bool(valid.all()):
        mask = torch.zeros(batch, 1, 1, max_len, dtype=dtype, device=kv_indices.device)
        mask.masked_fill_(~valid[:, None, None, :], float("-inf"))
    return DecodePlan(slots, batch, max_len, mask)


def decode_attention_cpu(
    q: torch.Tensor,  # [batch, num_heads, head_dim]
    k_buffer: torch.Tensor,  # [num_slots, kv_heads, head_dim]
    v_buffer: torch.Tensor,  # [num_slots, kv_heads, head_dim]
    plan: DecodePlan,
    sm_scale: float,
) -> torch.Tensor:
    """One query token per request over its whole context (`plan_decode`); returns [batch, heads, dim]."""
    batch, num_heads, head_dim = q.shape
    kv_heads = k_buffer.shape[1]
    if batch == 0 or plan.max_len == 0:
        return torch.zeros_like(q)
    shape = (batch, plan.max_len, kv_heads, head_dim)
    k = k_buffer.index_select(0, plan.slots).view(shape).to(q.dtype).transpose(1, 2)  # [batch, kv_heads, len, dim]
    v = v_buffer.index_select(0, plan.slots).view(shape).to(q.dtype).transpose(1, 2)
    groups = q.reshape(batch, kv_heads, num_heads // kv_heads, head_dim)  # a kv head's query heads as a query run
    if q.device.type == "cpu":
        out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(groups, k, v, attn_mask=plan.mask,
                                                                         scale=sm_scale)[0]
    else:
        out = torch.nn.functional.scaled_dot_product_attention(groups, k, v, attn_mask=plan.mask, scale=sm_scale)
    return out.reshape(batch, num_heads, head_dim)


def _rows(buffer: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """buffer[slots] for an index tensor of any shape, through index_select (4-6x faster on the CPU than
    advanced indexing, which goes element by element)."""
    return buffer.index_select(0, slots.reshape(-1)).view(*slots.shape, *buffer.shape[1:])


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float):
    """Softmax attention and each query's log-sum-exp: q [batch, heads, q_len, dim], k/v [batch, kv_heads,
    kv_len, dim] (causal: q_len == kv_len). torch's fused flash kernel on the CPU; elsewhere (this backend
    is not a GPU's fast path) the score matrix."""
    if q.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, is_causal=causal, scale=scale)
    return _attend_by_scores(q, k, v, causal, scale)


def _attend_by_scores(q, k, v, causal: bool, scale: float, mask: torch.Tensor | None = None):
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1).float(), v.repeat_interleave(group, dim=1).float()
    scores = q.float() @ k.transpose(-1, -2) * scale  # [batch, heads, q_len, kv_len]
    if mask is not None:
        scores = scores + mask.float()
    if causal:
        above = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(above, float("-inf"))
    lse = scores.logsumexp(-1)
    return (torch.exp(scores - lse[..., None]) @ v).to(q.dtype), lse


def extend_attention_cpu(
    q: torch.Tensor,  # [total_q, num_heads, head_dim]
    k_buffer: torch.Tensor,  # [num_slots, kv_heads, head_dim]
    v_buffer: torch.Tensor,  # [num_slots, kv_heads, head_dim]
    qo_indptr: torch.Tensor,  # [batch + 1] int64
    kv_indptr: torch.Tensor,  # [batch + 1] int64
    kv_indices: torch.Tensor,  # [total_kv] int64
    sm_scale: float,
    plan: ExtendPlan | MaskedExtendPlan | None = None,  # plan_extend of these indices, shared by a batch's layers
) -> torch.Tensor:
    """Causal attention of new tokens over their cached prefix and each other; returns [total_q, heads, dim]."""
    if plan is None:
        plan = plan_extend(qo_indptr, kv_indptr, kv_indices, q.dtype)
    if isinstance(plan, MaskedExtendPlan):
        return _extend_masked(q, k_buffer, v_buffer, plan, sm_scale)
    work = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    out = torch.zeros(q.shape, dtype=work, device=q.device)  # rows of requests with no new tokens stay 0
    out_lse = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device) if plan.segments else None
    for bucket in plan.buckets:
        qb = q[bucket.rows].transpose(1, 2)  # [batch, heads, length, dim]
        kb = _rows(k_buffer, bucket.slots).to(q.dtype).transpose(1, 2)  # [batch, kv_heads, length, dim]
        vb = _rows(v_buffer, bucket.slots).to(q.dtype).transpose(1, 2)
        o, lse = _attend(qb, kb, vb, True, sm_scale)
        rows = bucket.rows[bucket.valid]
        out[rows] = o.transpose(1, 2)[bucket.valid].to(work)
        if out_lse is not None:
            out_lse[rows] = lse.transpose(1, 2)[bucket.valid]
    for seg in plan.segments:
        qs = q[seg.rows].transpose(0, 1)[None]  # [1, heads, tokens, dim]
        ks = _rows(k_buffer, seg.slots).to(q.dtype).transpose(0, 1)[None]  # [1, kv_heads, length, dim]
        vs = _rows(v_buffer, seg.slots).to(q.dtype).transpose(0, 1)[None]
        o, lse = _attend(qs, ks, vs, False, sm_scale)
        o, lse = o[0].transpose(0, 1).to(work), lse[0].transpose(0, 1)  # [tokens, heads, dim], [tokens, heads]
        acc, acc_lse = out[seg.rows], out_lse[seg.rows]
        share = torch.sigmoid(lse - acc_lse).unsqueeze(-1)  # this part's weight in the merged softmax
        out[seg.rows] = acc + (o - acc) * share
        out_lse[seg.rows] = torch.logaddexp(acc_lse, lse)
    return out.to(q.dtype)


def _extend_masked(q, k_buffer, v_buffer, plan: MaskedExtendPlan, sm_scale: float) -> torch.Tensor:
    """A masked plan's one call over its blocks; returns [tokens, heads, dim]."""
    groups, kv_max = plan.slots.shape
    if plan.rows is None:
        qg = q.transpose(0, 1)[None]  # [1, heads, tokens, dim]
    else:
        qg = q[plan.rows].transpose(1, 2)  # [groups, heads, q_max, dim]
    shape = (groups, kv_max, k_buffer.shape[1], k_buffer.shape[2])
    slots = plan.slots.reshape(-1)
    k = k_buffer.index_select(0, slots).view(shape).to(q.dtype).transpose(1, 2)  # [groups, kv_heads, kv_max, dim]
    v = v_buffer.index_select(0, slots).view(shape).to(q.dtype).transpose(1, 2)
    mask = plan.mask.to(q.dtype)
    if q.device.type == "cpu":
        out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qg, k, v, attn_mask=mask, scale=sm_scale)[0]
    else:
        out = _attend_by_scores(qg, k, v, False, sm_scale, mask)[0]
    out = out.transpose(1, 2).to(q.dtype)  # [groups, q_max, heads, dim]
    if plan.rows is None:
        return out[0]
    result = torch.empty_like(q)
    result[plan.rows[plan.valid]] = out[plan.valid]
    return result
