"""What a notebook user would run without sglbench: Hugging Face `generate` on the same weights.

The naive user batches prompts (left-padded) and calls `generate` per batch, with no prefix reuse
across calls. Greedy decoding with a fixed number of new tokens, so the work equals the engine's.
The careful user (`hf_generate_prefix_reuse`) runs the prompts' shared prefix once and continues every
batch from a copy of its KV cache.
"""

from __future__ import annotations

import copy
import inspect
import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BaselineResult:
    texts: list[str]
    latencies: list[float]  # seconds from the start of the run to the end of each prompt's batch
    wall: float
    prefill_tokens: int
    decode_tokens: int


def load_hf(model_path: str, device: str, dtype: torch.dtype | str):
    """The transformers model and a left-padding tokenizer for batched generation. dtype: a torch dtype or its
    name ('torch.float32', as `Runtime.model_info()` gives it, or 'float32')."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device).eval()
    return model, tokenizer


@torch.inference_mode()
def hf_generate_naive(model, tokenizer, prompts: list[str], new_tokens: int, batch_size: int = 16) -> BaselineResult:
    """Batched greedy `generate`, one call per batch of prompts."""
    texts: list[str] = []
    latencies: list[float] = []
    prefill = decode = 0
    start = time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        batch = prompts[i : i + batch_size]
        enc = tokenizer(batch, return_tensors="pt", padding=True).to(model.device)
        out = model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        new = out[:, enc["input_ids"].shape[1] :]
        texts.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
        latencies.extend([time.perf_counter() - start] * len(batch))
        prefill += int(enc["attention_mask"].sum())
        decode += new.numel()
    return BaselineResult(texts, latencies, time.perf_counter() - start, prefill, decode)


def shared_prefix_len(token_lists: list[list[int]]) -> int:
    """Tokens every list starts with, leaving each list at least one token of its own (its last logits)."""
    if not token_lists:
        return 0
    limit = min(len(t) for t in token_lists) - 1
    first = token_lists[0]
    n = 0
    while n < limit and all(t[n] == first[n] for t in token_lists):
        n += 1
    return n


@torch.inference_mode()
def hf_generate_prefix_reuse(model, tokenizer, prompts: list[str], new_tokens: int,
                             batch_size: int = 16) -> BaselineResult:
    """The careful transformers user: the prompts' shared prefix is run once, its KV cache kept, and each batch of
    prompts continues from a copy of it (suffixes left-padded after the prefix, greedy, fixed new tokens)."""
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    shared = shared_prefix_len(ids)
    device = model.device
    texts: list[str] = []
    latencies: list[float] = []
    # transformers 5.2x names the KV cache argument `cache`; earlier releases `past_key_values`.
    kv_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    start = time.perf_counter()
    first = model(torch.tensor([ids[0][:shared]], device=device), use_cache=True, logits_to_keep=1)
    prefix_cache = getattr(first, "cache", None) or first.past_key_values
    decode = 0
    for i in range(0, len(ids), batch_size):
        suffixes = [t[shared:] for t in ids[i : i + batch_size]]
        rows, width = len(suffixes), max(len(s) for s in suffixes)
        input_ids = torch.full((rows, width), tokenizer.pad_token_id, dtype=torch.long)
        suffix_mask = torch.zeros((rows, width), dtype=torch.long)
        for r, s in enumerate(suffixes):
            input_ids[r, width - len(s) :] = torch.tensor(s)
            suffix_mask[r, width - len(s) :] = 1
        mask = torch.cat([torch.ones((rows, shared), dtype=torch.long), suffix_mask], dim=1).to(device)
        positions = (shared + suffix_mask.cumsum(-1) - 1).clamp(min=shared).to(device)  # [rows, width]
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(rows)
        logits = model(input_ids=input_ids.to(device), attention_mask=mask, position_ids=positions,
                       use_cache=True, logits_to_keep=1, **{kv_arg: cache}).logits[:, -1]
        out = []
        for step in range(new_tokens):
            token = logits.argmax(-1)  # [rows]
            out.append(token)
            if step == new_tokens - 1:
                break
            mask = torch.cat([mask, mask.new_ones((rows, 1))], dim=1)
            positions = positions[:, -1:] + 1
            logits = model(input_ids=token[:, None], attention_mask=mask, position_ids=positions,
                           use_cache=True, logits_to_keep=1, **{kv_arg: cache}).logits[:, -1]
        new = torch.stack(out, dim=1) if out else torch.empty((rows, 0), dtype=torch.long)
        texts.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
        latencies.extend([time.perf_counter() - start] * rows)
        decode += new.numel()
    prefill = shared + sum(len(t) - shared for t in ids)
    return BaselineResult(texts, latencies, time.perf_counter() - start, prefill, decode)


class _TokenClock:
    """A `generate` streamer that only notes when each put arrives (the prompt first, then every new token)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


@torch.inference_mode()
def hf_decode_tok_s(model, input_ids: list[int], new_tokens: int) -> float:
    """Batch-1 greedy `generate` decode speed: tokens after the first over the time from first to last."""
    if new_tokens < 2:
        raise ValueError("new_tokens must be at least 2 to time decode steps")
    clock = _TokenClock()
    ids = torch.tensor([input_ids], device=model.device)
    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                   min_new_tokens=new_tokens, do_sample=False, streamer=clock,
                   pad_token_id=model.config.pad_token_id or 0)
    first, last = clock.times[1], clock.times[-1]  # times[0] is the prompt
    return (new_tokens - 1) / max(last - first, 1e-9)


@torch.inference_mode()
def hf_prefill_tok_s(model, input_ids: list[int]) -> float:
    """One forward over the prompt keeping only the last row's logits, as `generate`'s first step does."""
    ids = torch.tensor([input_ids], device=model.device)
    start = time.perf_counter()
    model(ids, use_cache=True, logits_to_keep=1)
    return len(input_ids) / (time.perf_counter() - start)
