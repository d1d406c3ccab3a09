"""What a notebook user would run without sglbench: Hugging Face `generate` on the same weights.

The naive user batches prompts (left-padded) and calls `generate` per batch, with no prefix reuse
across calls. Greedy decoding with a fixed number of new tokens, so the work equals the engine's.
"""

from __future__ import annotations

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
