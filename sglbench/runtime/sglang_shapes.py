"""Results in SGLang's shapes (meta_info keys, [logprob, id, text] entries, finish reasons), torch-free: the
one place both SGLang faces (`sgl.Engine` in process and `sglbench serve`'s native API) shape results."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sglbench.runtime.sampling_params import SamplingParams

WEIGHT_VERSION = "default"  # SGLang's weight_version until an update names one


def sglang_finish_reason(reason: dict | None, completion_tokens: int) -> dict | None:
    """SGLang's shape of a finish reason: {"type": "length", "length": N} (not "matched") for a length stop."""
    if not reason or reason.get("type") != "length":
        return reason
    extra = {k: v for k, v in reason.items() if k not in ("type", "matched")}
    return {"type": "length", "length": completion_tokens, **extra}


def _sglang_entry(item: Any, text: Callable[[int], str | None]) -> list | None:
    """(logprob, id) as SGLang's [logprob, id, text]; a position's list of them (top or token_ids logprobs)
    likewise, and a position without any as None."""
    if not item:
        return None
    if isinstance(item[0], (list, tuple)):
        return [_sglang_entry(entry, text) for entry in item]
    return [item[0], item[1], text(item[1])]


def sglang_meta(meta: dict, params: SamplingParams, token_text: Callable[[int], str] | None) -> dict:
    """meta_info in SGLang's keys and shapes: logprob entries as [logprob, token_id, text] (text None unless
    return_text_in_logprobs), its finish_reason, weight_version, reasoning_tokens (0: no reasoning parser) and
    output_token_logprobs_length; sglbench's timings are kept beside them."""
    out = {"weight_version": WEIGHT_VERSION, "reasoning_tokens": 0, **meta,
           "finish_reason": sglang_finish_reason(meta.get("finish_reason"), meta.get("completion_tokens", 0))}
    text = token_text or (lambda _: None)
    for key, value in meta.items():
        if key.endswith("_logprobs") and isinstance(value, list):
            out[key] = [_sglang_entry(item, text) for item in value]
    if "output_token_logprobs" in out:
        out["output_token_logprobs_length"] = len(out["output_token_logprobs"])
    if params.return_logprob and params.top_logprobs_num and "input_top_logprobs" not in out:
        # This engine ranks the top tokens of outputs only; prompt positions have none, as SGLang's first one.
        out["input_top_logprobs"] = [None] * len(out.get("input_token_logprobs", []))
    return out


def sglang_result(result: dict, params: SamplingParams, token_text: Callable[[int], str] | None) -> dict:
    return {**result, "meta_info": sglang_meta(result["meta_info"], params, token_text)}
