"""Sampling parameters (validated at submission) and the batched sampler run on the engine thread."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from sglbench.runtime.grammar import GrammarSpec, normalize_json_schema

_EPS = 1e-6


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decoding settings, named as in SGLang's sampling params."""

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    n: int = 1
    seed: int | None = None
    skip_special_tokens: bool = True
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    regex: str | None = None  # the output must match it (compiled at submission)
    json_schema: str | None = None  # a JSON schema as a JSON string (a dict is serialized)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(s for s in (self.stop or ()) if s))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in (self.stop_token_ids or ())))
        if self.json_schema is not None:
            object.__setattr__(self, "json_schema", normalize_json_schema(self.json_schema))
        self._validate()

    def _validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        need(isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 0,
             f"max_new_tokens must be a non-negative integer, got {self.max_new_tokens!r}")
        need(isinstance(self.min_new_tokens, int) and self.min_new_tokens >= 0,
             f"min_new_tokens must be a non-negative integer, got {self.min_new_tokens!r}")
        need(self.min_new_tokens <= self.max_new_tokens,
             f"min_new_tokens ({self.min_new_tokens}) must not exceed max_new_tokens ({self.max_new_tokens})")
        need(self.temperature >= 0, f"temperature must be >= 0, got {self.temperature!r}")
        need(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p!r}")
        need(self.top_k == -1 or self.top_k >= 1, f"top_k must be -1 (off) or >= 1, got {self.top_k!r}")
        need(0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p!r}")
        need(-2 <= self.frequency_penalty <= 2, f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty!r}")
        need(-2 <= self.presence_penalty <= 2, f"presence_penalty must be in [-2, 2], got {self.presence_penalty!r}")
        need(isinstance(self.n, int) and self.n >= 1, f"n must be a positive integer, got {self.n!r}")
        need(self.top_logprobs_num >= 0, f"top_logprobs_num must be >= 0, got {self.top_logprobs_num!r}")
        need(self.logprob_start_len >= -1, f"logprob_start_len must be -1 (none) or >= 0, got {self.logprob_start_len!r}")
        need(self.regex is None or isinstance(self.regex, str), f"regex must be a string, got {self.regex!r}")
        need(self.regex is None or self.json_schema is None, "give regex or json_schema, not both")
        need(self.grammar is None or self.min_new_tokens == 0,
             "min_new_tokens cannot be combined with regex/json_schema (the grammar decides where the output ends)")

    @classmethod
    def from_kwargs(cls, **kwargs) -> SamplingParams:
        """Build from keyword arguments, rejecting unknown names with the list of known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown sampling parameter(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: v for k, v in kwargs.items() if v is not None})

    @property
    def greedy(self) -> bool:
        return self.temperature < _EPS or self.top_k == 1

    @property
    def grammar(self) -> GrammarSpec | None:
        """The constraint on the output, if any."""
        if self.regex is not None:
            return GrammarSpec("regex", self.regex)
        if self.json_schema is not None:
            return GrammarSpec("json_schema", self.json_schema)
        return None

    @property
    def uses_penalties(self) -> bool:
        return self.frequency_penalty != 0 or self.presence_penalty != 0

    def replace(self, **changes) -> SamplingParams:
        return dataclasses.replace(self, **changes)


@dataclass
class SamplerRow:
    """What the sampler needs from one request at one step."""

    params: SamplingParams
    generator: torch.Generator | None
    output_counts: torch.Tensor | None  # [vocab] int, only when penalties are on
    block_eos: tuple[int, ...] = field(default_factory=tuple)  # eos ids masked until min_new_tokens
    allowed: torch.Tensor | None = None  # [vocab] bool on the CPU: the grammar's next-token mask


def apply_grammar_masks(logits: torch.Tensor, rows: list[SamplerRow]) -> torch.Tensor:
    """-inf for the tokens each constrained row's grammar forbids, on a copy; unconstrained rows untouched."""
    masked = [i for i, r in enumerate(rows) if r.allowed is not None]
    if not masked:
        return logits
    allowed = torch.stack([rows[i].allowed for i in masked]).to(logits.device, non_blocking=True)  # [m, vocab]
    idx = torch.tensor(masked, device=logits.device)
    logits = logits.clone()
    logits[idx] = logits[idx].masked_fill(~allowed, float("-inf"))
    return logits


def apply_penalties(logits: torch.Tensor, rows: list[SamplerRow]) -> torch.Tensor:
    """Frequency/presence penalties and min_new_tokens eos masking, in place on a copy when needed."""
    if not any(r.params.uses_penalties or r.block_eos for r in rows):
        return logits
    logits = logits.clone()
    for i, r in enumerate(rows):
        if r.params.uses_penalties and r.output_counts is not None:
            counts = r.output_counts.to(logits.device, logits.dtype)
            logits[i] -= r.params.frequency_penalty * counts + r.params.presence_penalty * (counts > 0).to(logits.dtype)
        if r.block_eos:
            logits[i, list(r.block_eos)] = float("-inf")
    return logits


def sample(logits: torch.Tensor, rows: list[SamplerRow]) -> torch.Tensor:
    """Pick one token per row: argmax for greedy rows, filtered multinomial for the others. [rows] int64."""
    logits = apply_grammar_masks(apply_penalties(logits, rows), rows)
    next_ids = logits.argmax(dim=-1)
    stochastic = [i for i, r in enumerate(rows) if not r.params.greedy]
    if not stochastic:
        return next_ids
    idx = torch.tensor(stochastic, device=logits.device)
    sub = logits[idx]  # [s, vocab]
    temps = torch.tensor([rows[i].params.temperature for i in stochastic], device=logits.device)[:, None]
    probs = torch.softmax(sub / temps, dim=-1)
    probs = _filter_probs(probs, [rows[i].params for i in stochastic])
    for j, i in enumerate(stochastic):
        next_ids[i] = torch.multinomial(probs[j], 1, generator=rows[i].generator).squeeze(0)
    return next_ids


def _filter_probs(probs: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """top_k, top_p and min_p filtering on sorted probabilities; the top token always survives."""
    if all(p.top_k == -1 and p.top_p >= 1 and p.min_p <= 0 for p in params):
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True)  # [s, vocab]
    vocab = probs.shape[-1]
    rank = torch.arange(vocab, device=probs.device)[None, :]
    top_k = torch.tensor([p.top_k if p.top_k > 0 else vocab for p in params], device=probs.device)[:, None]
    top_p = torch.tensor([p.top_p for p in params], device=probs.device)[:, None]
    min_p = torch.tensor([p.min_p for p in params], device=probs.device)[:, None]
    drop = rank >= top_k
    drop |= (sorted_p.cumsum(dim=-1) - sorted_p) > top_p
    drop |= sorted_p < min_p * sorted_p[:, :1]
    drop[:, 0] = False
    sorted_p = sorted_p.masked_fill(drop, 0.0)
    filtered = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    return filtered / filtered.sum(dim=-1, keepdim=True)
