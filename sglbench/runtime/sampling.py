"""The batched sampler run on the engine thread (parameters are defined in `sampling_params`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from sglbench.runtime.grammar import bitmask_bias, unpack_bitmask
from sglbench.runtime.sampling_params import SamplingParams


@dataclass
class SamplerRow:
    """What the sampler needs from one request at one step."""

    params: SamplingParams
    generator: torch.Generator | None
    output_counts: torch.Tensor | None  # [vocab] int, only when penalties are on
    block_eos: tuple[int, ...] = field(default_factory=tuple)  # eos ids masked until min_new_tokens
    allowed: torch.Tensor | None = None  # [vocab] bool on the CPU: the grammar's next-token mask
    logit_bias: tuple[torch.Tensor, torch.Tensor] | None = None  # (ids [k], biases [k]) added to the logits
    token_bitmask: torch.Tensor | None = None  # the grammar's mask packed, int32 [ceil(vocab / 32)]: when no `allowed`


def apply_grammar_masks(logits: torch.Tensor, rows: list[SamplerRow]) -> torch.Tensor:
    """-inf for the tokens each constrained row's grammar forbids, on a copy; unconstrained rows untouched.
    Packed masks become one additive bias for all their rows (`bitmask_bias`); a mask narrowed by refusals
    (rare) is applied from its bool form."""
    packed = [i for i, r in enumerate(rows) if r.allowed is None and r.token_bitmask is not None]
    narrowed = [i for i, r in enumerate(rows) if r.allowed is not None]
    if not packed and not narrowed:
        return logits
    if packed:
        bias = bitmask_bias(torch.stack([rows[i].token_bitmask for i in packed]), logits.shape[-1])
        bias = bias.to(logits.device, non_blocking=True)  # [p, vocab]
        if len(packed) == len(rows):
            return logits + bias
        idx = torch.tensor(packed, device=logits.device)
        logits = logits.index_add(0, idx, bias)
    else:
        logits = logits.clone()
    for i in narrowed:
        logits[i].masked_fill_(~rows[i].allowed.to(logits.device), float("-inf"))
    return logits


# Adjusted logits are clamped to this: finite at any temperature (>= 1e-6), so sampling never meets inf/nan.
_LOGIT_LIMIT = 1e30
# Temperatures are clamped to this (beyond it the distribution is uniform anyway): float32 holds it, so a
# forbidden token's -inf divided by it stays -inf rather than becoming nan.
_MAX_TEMPERATURE = 1e30


def apply_penalties(logits: torch.Tensor, rows: list[SamplerRow]) -> torch.Tensor:
    """Repetition/frequency/presence penalties over the output so far, logit_bias, and min_new_tokens eos
    masking (SGLang's order), on a copy when any row needs one. The penalized rows go through each formula
    together ([rows, vocab] at once), and the clamp is one op: one row at a time took 1.1-2.7 ms for 32 rows of
    4,096 here, this 0.4-1.4."""
    if not any(r.params.adjusts_logits or r.block_eos for r in rows):
        return logits
    logits = logits.clone()
    dev, dtype = logits.device, logits.dtype
    penalized = [i for i, r in enumerate(rows) if r.params.uses_penalties and r.output_counts is not None]
    if penalized:
        params = [rows[i].params for i in penalized]
        every = len(penalized) == len(rows)
        idx = None if every else torch.tensor(penalized, device=dev)
        sub = logits if every else logits[idx]  # [p, vocab]
        counts = torch.stack([rows[i].output_counts for i in penalized]).to(dev, dtype)  # [p, vocab]
        seen = counts.clamp(max=1)  # 1 for a token output so far, else 0 (counts are never negative)
        if any(p.repetition_penalty != 1 for p in params):  # HF/SGLang: positive logits divided, negative multiplied
            penalty = torch.tensor([[p.repetition_penalty] for p in params], device=dev, dtype=dtype)  # [p, 1]
            sub = torch.where(seen > 0, torch.where(sub > 0, sub / penalty, sub * penalty), sub)
        frequency = torch.tensor([[p.frequency_penalty] for p in params], device=dev, dtype=dtype)
        presence = torch.tensor([[p.presence_penalty] for p in params], device=dev, dtype=dtype)
        sub = sub - (frequency * counts + presence * seen)
        if every:
            logits = sub
        else:
            logits[idx] = sub
    adjusted = [i for i, r in enumerate(rows) if r.params.adjusts_logits]
    for i in adjusted:
        if rows[i].logit_bias is not None:
            ids, biases = rows[i].logit_bias
            logits[i].index_add_(0, ids.to(dev), biases.to(dev, dtype))
    if len(adjusted) == len(rows):
        logits.clamp_(-_LOGIT_LIMIT, _LOGIT_LIMIT)
    elif adjusted:
        at = torch.tensor(adjusted, device=dev)
        logits[at] = logits[at].clamp(-_LOGIT_LIMIT, _LOGIT_LIMIT)
    for i, r in enumerate(rows):
        if r.block_eos:
            logits[i, list(r.block_eos)] = float("-inf")
    return logits


def sample(logits: torch.Tensor, rows: list[SamplerRow]) -> torch.Tensor:
    """Pick one token per row: argmax for greedy rows, filtered multinomial for the others. [rows] int64."""
    logits = apply_grammar_masks(apply_penalties(logits, rows), rows)
    next_ids = argmax_rows(logits)
    stochastic = [i for i, r in enumerate(rows) if not r.params.greedy]
    if not stochastic:
        return next_ids
    idx = torch.tensor(stochastic, device=logits.device)
    sub = logits[idx]  # [s, vocab]
    temps = torch.tensor([min(rows[i].params.temperature, _MAX_TEMPERATURE) for i in stochastic],
                         device=logits.device)[:, None]  # [s, 1]
    probs = torch.softmax(sub / temps, dim=-1)
    probs = _filter_probs(probs, [rows[i].params for i in stochastic])
    next_ids[idx] = draw(probs, [rows[i].generator for i in stochastic]).to(next_ids.device)
    return next_ids


def draw(probs: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
    """One token per row of probs [s, vocab] by inverse transform: a uniform number from each row's generator (in
    row order), found in the row's running sum. A token of probability 0 is never drawn. torch.multinomial draws an
    exponential per token: 115 us a row of 4,096 here, where this takes about 150 us for 32 rows. [s] int64."""
    cdf = probs.cumsum(dim=-1)  # [s, vocab]
    total = cdf[:, -1]
    if not bool(torch.isfinite(total).all()):
        raise RuntimeError("sampling probabilities contain inf or nan")
    uniform = torch.cat([torch.rand(1, generator=g, device=probs.device) for g in generators])  # [s]
    # below the total, so the first running sum past it belongs to a token of nonzero probability
    target = torch.minimum(uniform * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target.unsqueeze(-1), right=True).squeeze(-1)


def argmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """logits.argmax(dim=-1) (the first maximum; a NaN counts as one), through numpy for fp32 on the CPU: torch's
    reduction took 67 us for [16, 4,096] here, numpy's 6, and a decode step runs one. [rows] int64."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.dim() == 2:
        return torch.from_numpy(logits.numpy().argmax(axis=-1).astype(np.int64, copy=False))
    return logits.argmax(dim=-1)


def masked_argmax(logits: torch.Tensor, words: torch.Tensor) -> int:
    """`sample`'s pick for one greedy row ([vocab] fp32 on the CPU) under a packed grammar mask ([ceil(vocab / 32)]
    int32): the first best allowed token, in one numpy pass rather than a bias row, an add and an argmax (about
    20 us against 45 here)."""
    row = logits.numpy()
    return int(np.where(unpack_bitmask(words, row.shape[-1]).numpy(), row, -np.inf).argmax())


def _filter_probs(probs: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """top_k, top_p and min_p filtering: each row keeps its k most probable tokens, k the least of top_k, the
    first rank whose more probable tokens together pass top_p, and the count of tokens at least min_p times the
    top one; at least the top token, and every token for a top_k beyond the vocabulary. Kept probabilities are
    left as they were, not renormalized (`draw` scales by the row's total). Only the values are sorted, and the
    kept tokens are those above the k-th value, then ties at it in token order: torch's sort with indices and
    the scatter back took 10 ms for 32 rows of 4,096 here."""
    if all(p.top_k == -1 and p.top_p >= 1 and p.min_p <= 0 for p in params):
        return probs
    dev, vocab = probs.device, probs.shape[-1]
    sorted_p = _sorted_descending(probs)  # [s, vocab]
    kept = torch.tensor([min(p.top_k, vocab) if p.top_k > 0 else vocab for p in params], device=dev)  # [s]
    if any(p.top_p < 1 for p in params):
        top_p = torch.tensor([[p.top_p if p.top_p < 1 else math.inf] for p in params], device=dev)  # [s, 1]
        passed = torch.searchsorted(sorted_p.cumsum(dim=-1), top_p.to(sorted_p.dtype), right=True)[:, 0]
        kept = torch.minimum(kept, passed + 1)  # the token whose predecessors pass top_p is the first dropped
    if any(p.min_p > 0 for p in params):
        least = torch.tensor([[p.min_p] for p in params], device=dev, dtype=sorted_p.dtype) * sorted_p[:, :1]
        kept = torch.minimum(kept, torch.searchsorted(-sorted_p, -least, right=True)[:, 0])  # values >= least
    kept = kept.clamp(1, vocab)
    if bool((kept == vocab).all()):
        return probs
    floor = sorted_p.gather(1, (kept - 1)[:, None])  # [s, 1]: the k-th largest value
    keep = probs >= floor
    for i in torch.nonzero(keep.sum(dim=-1) > kept).flatten().tolist():  # ties at the floor past the k-th
        ties = torch.nonzero(probs[i] == floor[i]).flatten()
        keep[i, ties[int(kept[i]) - int((probs[i] > floor[i]).sum()):]] = False
    return torch.where(keep, probs, 0.0)


def _sorted_descending(probs: torch.Tensor) -> torch.Tensor:
    """Each row's values from largest to smallest; through numpy for fp32 on the CPU (its vectorized sort took
    0.3 ms for 32 rows of 4,096 here, torch's 4.7)."""
    if probs.device.type == "cpu" and probs.dtype == torch.float32 and probs.dim() == 2:
        return torch.from_numpy(np.ascontiguousarray(np.sort(probs.numpy(), axis=-1)[:, ::-1]))
    return probs.sort(dim=-1, descending=True).values
