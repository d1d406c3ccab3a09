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
tokens 11 ms against 144. When requests share long prefixes (an LLM judge's branches over their answer, a
ReAct step's requests over one prompt), ``plan_decode`` instead groups them (``SharedPrefixPlan``): each
group's queries attend to their shared prefix in one call that reads it once, each request attends to the
rest of its context alone, and the two parts merge by log-sum-exp. Per layer, 60 judge branches (10 answers
of 420 tokens x 6): 0.85 ms against 1.47 for the padded block (``python -m sglbench.bench kernels``).
"""

from __future__ import annotations

import functools
import itertools
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from sglbench.kernel import cpu_native
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
class SharedPrefixPlan:
    """Decode requests whose contexts start with the same slots (forks of one state, one few-shot prefix),
    attended in two parts that merge exactly by their log-sum-exp: each group's queries together over the
    prefix they share (read once, not once per member), and each request alone over the rest of its context.

    Groups are padded to the longest shared prefix and the most members; padded prefix slots are masked,
    padded member places repeat a real member and are dropped."""

    prefix_slots: torch.Tensor  # [groups * prefix_max] pool slots of each group's shared prefix, row-major
    groups: int
    prefix_max: int
    prefix_mask: torch.Tensor | None  # [groups, 1, 1, prefix_max] additive; None: every prefix is prefix_max long
    members: torch.Tensor  # [groups, members_max] request indices; padding repeats a member
    place: torch.Tensor  # [batch] each request's place (group * members_max + i) in the prefix part's output
    grouped: torch.Tensor  # [batch, 1, 1, 1] bool: the request has a shared part
    suffix_slots: torch.Tensor  # [batch * suffix_max] the rest of each context, padding repeats a valid slot
    suffix_max: int
    suffix_mask: torch.Tensor | None  # [batch, 1, 1, suffix_max] additive; None: no padding


@dataclass(frozen=True)
class DecodePlan:
    """A decode batch's contexts as one padded block: every layer gathers its K/V rows with `slots`; or, when
    requests share long prefixes, `shared` (the padded block then is not used)."""

    slots: torch.Tensor  # [batch * max_len] pool slots, row-major; padding repeats some valid slot
    batch: int
    max_len: int
    mask: torch.Tensor | None  # [batch, 1, 1, max_len] additive (0 / -inf) in the query dtype; None: no padding,
    # or a plan for the C kernels (`plan_in_place`), which read `lens` instead
    shared: SharedPrefixPlan | None = None
    lens: torch.Tensor | None = None  # [batch] int64 context lengths (the C kernel reads slots in place)


# A shared prefix shorter than this is not worth its own part; the two-part plan is taken when its elements
# (group prefixes + suffixes) times SHARED_ELEMENT_COST plus SHARED_CALL_COST are fewer than the padded
# block's: a second call and the merge cost about as much as 4,000 elements of a call on this 2-core CPU.
MIN_SHARED_DECODE = 32
SHARED_ELEMENT_COST = 1.5
SHARED_CALL_COST = 4_000


def plan_decode(kv_indptr: torch.Tensor, kv_indices: torch.Tensor, dtype: torch.dtype,
                padded: torch.Tensor | None = None, share_prefixes: bool | None = None) -> DecodePlan:
    """Plan a decode batch (reference.py's indptr/indices contract). padded: the same slots already laid out
    as [batch, >= max_len] (model_runner builds it from the request-to-token table), anything past a row's
    length being some valid slot; without it they are gathered from kv_indices. share_prefixes: read prefixes
    that requests share once (`SharedPrefixPlan`) when that is cheaper (None), whenever some are shared (True),
    or never (False); CPU only, the merge needs the fused kernel's log-sum-exp."""
    lens = kv_indptr[1:] - kv_indptr[:-1]  # [batch]
    batch = lens.numel()
    max_len = int(lens.max()) if batch else 0
    offsets = torch.arange(max_len, device=kv_indices.device)
    valid = offsets[None, :] < lens[:, None]  # [batch, max_len]
    if padded is None:
        at = (kv_indptr[:-1, None] + offsets[None, :]).clamp(max=max(kv_indices.numel() - 1, 0))
        padded = kv_indices[at] if kv_indices.numel() else torch.zeros_like(at)
    padded = padded[:, :max_len]
    shared = None
    if share_prefixes is not False and batch >= 2 and kv_indices.device.type == "cpu":
        shared = _plan_shared_prefixes(padded, lens, max_len, dtype, always=bool(share_prefixes))
    mask = _padding_mask(valid, dtype) if shared is None else None
    return DecodePlan(padded.reshape(-1), batch, max_len, mask, shared, lens.to(torch.int64))


def plan_in_place(kv_indptr: torch.Tensor, kv_indices: torch.Tensor, padded: torch.Tensor | None = None) -> DecodePlan:
    """The plan of a batch whose contexts the C kernels read in place (`cpu_native.decode_layers`, decode or
    extend form): each request's slots as a padded row (`padded` as model_runner lays a decode batch out,
    [batch, >= longest context], else gathered from the reference contract's kv_indptr/kv_indices) and the
    lengths, without plan_decode's padding mask and prefix analysis, which those kernels do not read (a tenth
    of a 16-request decode step's host time for the default model). CPU tensors."""
    lens = kv_indptr[1:] - kv_indptr[:-1]  # [batch]
    if padded is None:
        starts, flat = kv_indptr.numpy()[:-1], kv_indices.numpy()
        width = int(lens.max()) if lens.numel() else 0
        at = np.minimum(starts[:, None] + np.arange(width), max(flat.size - 1, 0))  # past a row's end: some slot
        padded = torch.from_numpy(flat[at]) if flat.size else torch.zeros(at.shape, dtype=torch.int64)
    return DecodePlan(padded.contiguous().reshape(-1), padded.shape[0], padded.shape[1], None, None, lens)


def _plan_shared_prefixes(padded: torch.Tensor, lens: torch.Tensor, max_len: int, dtype: torch.dtype,
                          always: bool = False) -> SharedPrefixPlan | None:
    """Group requests whose contexts start with the same slots; None when none do, or (unless `always`) when
    the two-part plan costs more than the padded block.

    A slot belongs to one node of the radix tree, so two contexts holding the same slot at a position hold
    the same slots before it. Sorting the contexts by their slots at positions 2^k - 1 (k >= 5), shallowest
    first, makes contexts that share 2^k or more leading slots neighbours at every depth, whatever order the
    batch has them in. Planned in numpy: a step's plan is a few dozen small array operations, each ~10x
    cheaper than a torch call on this scale."""
    batch = lens.numel()
    if max_len <= MIN_SHARED_DECODE:
        return None
    slots, lengths = padded.numpy(), lens.numpy()
    own = -1 - np.arange(batch)  # a key no other context has
    keys = [np.where(lengths - 1 > column, slots[:, column], own)
            for column in itertools.takewhile(lambda c: c < max_len - 1,
                                              (MIN_SHARED_DECODE * 2**k - 1 for k in itertools.count()))]
    if len(np.unique(keys[0])) == batch:
        return None  # no two contexts hold the same slot where sharing would start to pay
    order = np.lexsort(keys[::-1])  # the last key sorts first
    rows, sorted_lengths = slots[order], lengths[order]
    differ = rows[1:] != rows[:-1]  # [batch - 1, max_len]
    same = np.where(differ.any(1), differ.argmax(1), max_len)  # leading slots neighbours share
    limit = np.minimum(sorted_lengths[1:], sorted_lengths[:-1]) - 1  # a request's newest token is its own
    common = np.minimum(same, limit).tolist()
    sorted_lens = sorted_lengths.tolist()
    # Nested sharing (one system prompt under all, one parent state under each fork's branches) gives runs
    # of neighbours at several depths: cut at the depth whose groups make the cheapest two-part plan.
    depths = sorted({c for c in common if c >= MIN_SHARED_DECODE})
    if not depths:
        return None
    best: tuple[float, list[tuple[int, int, int]], int, int] | None = None
    for depth in depths[:: -(-len(depths) // 12)]:  # at most 12 candidates
        runs = _runs(common, depth, max_len)
        grouped = [False] * batch
        suffix_max = 0
        for first, last, shared in runs:
            suffix_max = max(suffix_max, max(sorted_lens[first : last + 1]) - shared)
            grouped[first : last + 1] = [True] * (last + 1 - first)
        suffix_max = max([suffix_max] + [n for n, g in zip(sorted_lens, grouped) if not g])
        prefix_max = max(shared for _, _, shared in runs)
        cost = (len(runs) * prefix_max + batch * suffix_max) * SHARED_ELEMENT_COST + SHARED_CALL_COST
        if best is None or cost < best[0]:
            best = (cost, runs, prefix_max, suffix_max)
    cost, runs, prefix_max, suffix_max = best
    if cost >= batch * max_len and not always:
        return None
    members_max = max(last + 1 - first for first, last, _ in runs)
    members = np.empty((len(runs), members_max), dtype=np.int64)
    place = np.zeros(batch, dtype=np.int64)
    start = np.zeros(batch, dtype=np.int64)
    prefix_lens = np.empty(len(runs), dtype=np.int64)
    for g, (first, last, shared) in enumerate(runs):
        group = order[first : last + 1]
        members[g] = group[np.minimum(np.arange(members_max), len(group) - 1)]  # padding repeats the last
        place[group] = g * members_max + np.arange(len(group))
        start[group] = shared
        prefix_lens[g] = shared
    at = np.minimum(start[:, None] + np.arange(suffix_max), lengths[:, None] - 1)  # padding: the newest slot
    prefix_slots = slots[members[:, 0], :prefix_max]  # past a group's own length: masked
    as_tensor = torch.from_numpy
    return SharedPrefixPlan(
        prefix_slots=as_tensor(np.ascontiguousarray(prefix_slots).reshape(-1)), groups=len(runs),
        prefix_max=prefix_max, prefix_mask=_padding_mask(np.arange(prefix_max) < prefix_lens[:, None], dtype),
        members=as_tensor(members), place=as_tensor(place), grouped=as_tensor(start > 0)[:, None, None, None],
        suffix_slots=as_tensor(np.take_along_axis(slots, at, 1).reshape(-1)), suffix_max=suffix_max,
        suffix_mask=_padding_mask(np.arange(suffix_max) < (lengths - start)[:, None], dtype),
    )


def _runs(common: list[int], depth: int, max_len: int) -> list[tuple[int, int, int]]:
    """(first, last, shared length) of each run of at least two neighbours sharing >= depth slots, as
    positions in the sorted order; common[i]: the slots neighbours i and i + 1 share."""
    runs, first, shared = [], 0, max_len
    for i, c in enumerate(common):
        if c >= depth:
            shared = min(shared, c)
            continue
        if i > first:
            runs.append((first, i, shared))
        first, shared = i + 1, max_len
    if len(common) > first:
        runs.append((first, len(common), shared))
    return runs


def _padding_mask(valid: np.ndarray | torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """[rows, 1, 1, width] additive mask (0 / -inf) of valid [rows, width]; None when all are valid."""
    if bool(valid.all()):
        return None
    return _additive(torch.as_tensor(valid), dtype)[:, None, None, :]


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
    if plan.shared is not None:
        return _decode_shared(q, k_buffer, v_buffer, plan.shared, sm_scale)
    if plan.lens is not None and cpu_native.attention_fits(q, k_buffer):  # K/V read in place, no gather
        return cpu_native.decode_attention(q, k_buffer, v_buffer, plan.slots.view(batch, plan.max_len), plan.lens,
                                           sm_scale)
    groups = q.reshape(batch, kv_heads, num_heads // kv_heads, head_dim)  # a kv head's query heads as a query run
    k, v = _gather_kv(k_buffer, v_buffer, plan.slots.view(batch, plan.max_len), q.dtype)
    if q.device.type == "cpu":
        out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(groups, k, v, attn_mask=plan.mask,
                                                                         scale=sm_scale)[0]
    else:
        out = torch.nn.functional.scaled_dot_product_attention(groups, k, v, attn_mask=plan.mask, scale=sm_scale)
    return out.reshape(batch, num_heads, head_dim)


def _gather_kv(k_buffer, v_buffer, slots: torch.Tensor, dtype: torch.dtype):
    """K and V of slots [rows, length] as [rows, kv_heads, length, dim] in dtype (one index_select each)."""
    return (_rows(k_buffer, slots).to(dtype).transpose(1, 2), _rows(v_buffer, slots).to(dtype).transpose(1, 2))


def _decode_shared(q, k_buffer, v_buffer, plan: SharedPrefixPlan, sm_scale: float) -> torch.Tensor:
    """The two-part decode of a SharedPrefixPlan: [batch, heads, dim]."""
    batch, num_heads, head_dim = q.shape
    kv_heads = k_buffer.shape[1]
    group = num_heads // kv_heads
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    runs = q.reshape(batch, kv_heads, group, head_dim)
    k, v = _gather_kv(k_buffer, v_buffer, plan.suffix_slots.view(batch, plan.suffix_max), q.dtype)
    own, own_lse = flash(runs, k, v, attn_mask=plan.suffix_mask, scale=sm_scale)[:2]  # [batch, kv_heads, group, (dim)]
    members = plan.members.shape[1]
    stacked = runs[plan.members]  # [groups, members, kv_heads, group, dim]
    stacked = stacked.permute(0, 2, 1, 3, 4).reshape(plan.groups, kv_heads, members * group, head_dim)
    k, v = _gather_kv(k_buffer, v_buffer, plan.prefix_slots.view(plan.groups, plan.prefix_max), q.dtype)
    pre, pre_lse = flash(stacked, k, v, attn_mask=plan.prefix_mask, scale=sm_scale)[:2]
    pre = pre.view(plan.groups, kv_heads, members, group, head_dim).permute(0, 2, 1, 3, 4)
    pre = pre.reshape(plan.groups * members, kv_heads, group, head_dim)[plan.place]
    pre_lse = pre_lse.view(plan.groups, kv_heads, members, group).permute(0, 2, 1, 3)
    pre_lse = pre_lse.reshape(plan.groups * members, kv_heads, group)[plan.place]
    share = torch.sigmoid(own_lse - pre_lse).unsqueeze(-1)  # the own part's weight in the merged softmax
    merged = pre.float() + (own.float() - pre.float()) * share
    out = torch.where(plan.grouped, merged, own.float()).to(q.dtype)
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


# fp32 extend goes to the C kernel (cpu_native) unless nearly all its scores are over prefixes that requests
# share: torch's flash kernel then takes all their queries against one K/V block, which a per-request kernel
# does not, while its causal calls over short new-token runs are slow. `bench kernels`, fp32, head size 32, C
# against the torch plan on the 2-core AMX Xeon: fork-like batches 1.5x faster in C, MMLU-like (84 % of scores
# over 4 shared 520-token prefixes, 100 new tokens each) 1.17x, HellaSwag-like (98 % over one 1,200-token
# prefix) 0.74x. How fast torch's flash kernel is depends on the CPU: it runs its blocks on the BLAS (MKL for
# fp32) and, in bf16, on oneDNN's AMX tiles where there are any. On a 2-core AMD EPYC with AVX512-BF16 and no
# AMX the C kernel was faster everywhere (`c_kernel_wins` below measures it per machine): HellaSwag-like 2.4x
# in fp32 and 3.9x in bf16 at Qwen2.5-0.5B's 14/2 heads of 64, fresh prompts 6-7x in both.
C_KERNEL_MAX_SHARED = 0.9


def _calibration_batch(shared: bool, heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> tuple:
    """A paged extend batch for `c_kernel_wins`: 16 questions of 16 tokens over one 512-token cached prefix
    (97 % of the scores over it), or 2 fresh prompts of 96 tokens."""
    g = torch.Generator().manual_seed(0)
    prefix, new = (512, [16] * 16) if shared else (0, [96, 96])
    slots = torch.randperm(prefix + sum(new), generator=g)
    own = torch.split(slots[prefix:], new)
    kv_indices = torch.cat([torch.cat([slots[:prefix], o]) for o in own])
    qo = torch.tensor([0, *new]).cumsum(0)
    kv = torch.tensor([0, *(prefix + n for n in new)]).cumsum(0)
    k, v = (torch.randn(len(slots), kv_heads, head_dim, generator=g).to(dtype) for _ in range(2))
    return torch.randn(sum(new), heads, head_dim, generator=g).to(dtype), k, v, qo, kv, kv_indices


@functools.cache
def c_kernel_wins(dtype: torch.dtype, heads: int, kv_heads: int, head_dim: int, shared: bool) -> bool:
    """Whether the C kernel runs an extend batch of this head shape at least as fast as torch's plan on this
    machine: a batch over one long shared prefix (shared) or fresh prompts. Timed once per process and shape
    (about 10-60 ms: each way's best of three, alternated), because which wins depends on the CPU's BLAS and
    AMX (see C_KERNEL_MAX_SHARED); a tie goes to the C kernel, which reads the pages in place."""
    if not cpu_native.available() or dtype not in (torch.float32, torch.bfloat16):
        return False
    q, k, v, qo, kv, kv_indices = _calibration_batch(shared, heads, kv_heads, head_dim, dtype)
    plan = plan_extend(qo, kv, kv_indices, dtype, work_per_score=heads * head_dim)
    ways = {"torch": lambda: extend_attention_cpu(q, k, v, qo, kv, kv_indices, 1.0, plan),
            "c": lambda: cpu_native.extend_attention(q, k, v, qo, kv, kv_indices, 1.0)}
    best = dict.fromkeys(ways, float("inf"))
    for counted in (False, True, True, True):  # the first round warms both up
        for name, way in ways.items():
            start = time.perf_counter()
            way()
            if counted:
                best[name] = min(best[name], time.perf_counter() - start)
    return best["c"] <= best["torch"]


@dataclass(frozen=True)
class NativeExtendPlan:
    """The C kernel's turn (cpu_native.extend_attention): it reads every context in place and needs no plan."""


def choose_extend(q: torch.Tensor, k_buffer: torch.Tensor, qo_indptr: torch.Tensor, kv_indptr: torch.Tensor,
                  kv_indices: torch.Tensor) -> ExtendPlan | MaskedExtendPlan | NativeExtendPlan:
    """An extend batch's plan: the C kernel where it runs (fp32; bf16 where it outruns torch's flash kernel on
    fresh prompts, `c_kernel_wins`), unless C_KERNEL_MAX_SHARED of the scores or more are over shared prefixes
    and torch's plan is the faster there, else `plan_extend`'s. Batches whose cached prefixes are too short to
    reach that share (whether shared or not) go to the C kernel without planning."""
    shape = (q.dtype, q.shape[1], k_buffer.shape[1], q.shape[2])
    native = cpu_native.attention_fits(q, k_buffer) and (q.dtype == torch.float32 or c_kernel_wins(*shape, False))
    if native:
        new = qo_indptr[1:] - qo_indptr[:-1]
        prefix_scores = int((new * (kv_indptr[1:] - kv_indptr[:-1] - new)).sum())  # the shared scores' bound
        if (prefix_scores < C_KERNEL_MAX_SHARED * _extend_scores(qo_indptr, kv_indptr)
                or c_kernel_wins(*shape, True)):
            return NativeExtendPlan()
    plan = plan_extend(qo_indptr, kv_indptr, kv_indices, q.dtype, work_per_score=q.shape[1] * q.shape[2])
    if native and shared_prefix_share(plan, qo_indptr, kv_indptr) < C_KERNEL_MAX_SHARED:
        return NativeExtendPlan()
    return plan


def _extend_scores(qo_indptr: torch.Tensor, kv_indptr: torch.Tensor) -> int:
    """An extend batch's scores: each request's new tokens times its context."""
    return int(((qo_indptr[1:] - qo_indptr[:-1]) * (kv_indptr[1:] - kv_indptr[:-1])).sum())


def shared_prefix_share(plan, qo_indptr: torch.Tensor, kv_indptr: torch.Tensor) -> float:
    """The fraction of an extend batch's scores (new tokens x context) over the plan's shared prefixes."""
    if not isinstance(plan, ExtendPlan) or not plan.segments:
        return 0.0
    total = _extend_scores(qo_indptr, kv_indptr)
    shared = sum((seg.rows.stop - seg.rows.start if isinstance(seg.rows, slice) else seg.rows.numel())
                 * seg.slots.numel() for seg in plan.segments)
    return shared / total if total else 0.0


def extend_attention_cpu(
    q: torch.Tensor,  # [total_q, num_heads, head_dim]
    k_buffer: torch.Tensor,  # [num_slots, kv_heads, head_dim]
    v_buffer: torch.Tensor,  # [num_slots, kv_heads, head_dim]
    qo_indptr: torch.Tensor,  # [batch + 1] int64
    kv_indptr: torch.Tensor,  # [batch + 1] int64
    kv_indices: torch.Tensor,  # [total_kv] int64
    sm_scale: float,
    plan: ExtendPlan | MaskedExtendPlan | NativeExtendPlan | None = None,  # choose_extend's, shared by the layers
) -> torch.Tensor:
    """Causal attention of new tokens over their cached prefix and each other; returns [total_q, heads, dim]."""
    if plan is None:
        plan = choose_extend(q, k_buffer, qo_indptr, kv_indptr, kv_indices)
    if isinstance(plan, NativeExtendPlan):
        return cpu_native.extend_attention(q, k_buffer, v_buffer, qo_indptr, kv_indptr, kv_indices, sm_scale)
    if isinstance(plan, MaskedExtendPlan):
        return _extend_masked(q, k_buffer, v_buffer, plan, sm_scale)
    work = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    out = torch.zeros(q.shape, dtype=work, device=q.device)  # rows of requests with no new tokens stay 0
    out_lse = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device) if plan.segments else None
    for bucket in plan.buckets:
        qb = q[bucket.rows].transpose(1, 2)  # [batch, heads, length, dim]
        kb, vb = _gather_kv(k_buffer, v_buffer, bucket.slots, q.dtype)  # [batch, kv_heads, length, dim]
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
    if plan.rows is None:
        qg = q.transpose(0, 1)[None]  # [1, heads, tokens, dim]
    else:
        qg = q[plan.rows].transpose(1, 2)  # [groups, heads, q_max, dim]
    k, v = _gather_kv(k_buffer, v_buffer, plan.slots, q.dtype)  # [groups, kv_heads, kv_max, dim]
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
