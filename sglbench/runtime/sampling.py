"""The batched sampler run on the engine thread (parameters are defined in `sampling_params`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from sglbench.runtime.grammar import bitmask_bias
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
    masking (SGLang's order), in place on a copy when any row needs one."""
    if not any(r.params.adjusts_logits or r.block_eos for r in rows):
        return logits
    logits = logits.clone()
    for i, r in enumerate(rows):
        p = r.params
        if p.adjusts_logits:
            row = logits[i]  # [vocab], a view
            if p.uses_penalties and r.output_counts is not None:
                counts = r.output_counts.to(logits.device, logits.dtype)  # [vocab]
                seen = counts > 0  # [vocab] bool
                if p.repetition_penalty != 1:  # HF/SGLang: positive logits divided, negative ones multiplied
                    scaled = torch.where(row > 0, row / p.repetition_penalty, row * p.repetition_penalty)
                    row.copy_(torch.where(seen, scaled, row))
                row -= p.frequency_penalty * counts + p.presence_penalty * seen.to(logits.dtype)
            if r.logit_bias is not None:
                ids, biases = r.logit_bias
                row.index_add_(0, ids.to(logits.device), biases.to(logits.device, logits.dtype))
            row.clamp_(-_LOGIT_LIMIT, _LOGIT_LIMIT)
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
    for j, i in enumerate(stochastic):
        next_ids[i] = torch.multinomial(probs[j], 1, generator=rows[i].generator).squeeze(0)
    return next_ids


def argmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """logits.argmax(dim=-1) (the first maximum; a NaN counts as one), through numpy for fp32 on the CPU: torch's
    reduction took 67 us for [16, 4,096] here, numpy's 6, and a decode step runs one. [rows] int64."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.dim() == 2:
        return torch.from_numpy(logits.numpy().argmax(axis=-1).astype(np.int64, copy=False))
    return logits.argmax(dim=-1)


def _filter_probs(probs: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """top_k, top_p and min_p filtering on sorted probabilities; the top token always survives. A top_k
    beyond the vocabulary keeps every token."""
    if all(p.top_k == -1 and p.top_p >= 1 and p.min_p <= 0 for p in params):
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True)  # [s, vocab]
    vocab = probs.shape[-1]
    rank = torch.arange(vocab, device=probs.device)[None, :]
    top_k = torch.tensor([min(p.top_k, vocab) if p.top_k > 0 else vocab for p in params], device=probs.device)[:, None]
    top_p = torch.tensor([p.top_p for p in params], device=probs.device)[:, None]
    min_p = torch.tensor([p.min_p for p in params], device=probs.device)[:, None]
    drop = rank >= top_k
    drop |= (sorted_p.cumsum(dim=-1) - sorted_p) > top_p
    drop |= sorted_p < min_p * sorted_p[:, :1]
    drop[:, 0] = False
    sorted_p = sorted_p.masked_fill(drop, 0.0)
    filtered = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    return filtered / filtered.sum(dim=-1, keepdim=True)
