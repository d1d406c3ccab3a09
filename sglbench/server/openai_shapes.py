"""OpenAI response shapes from engine results: finish reasons, usage, logprobs (chat and legacy completion forms),
and the sampling constraints a `response_format` asks for. Pure functions over result dicts; torch-free."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

TokenText = Callable[[int], str]  # a token id's own text (special tokens included), for logprob entries


def finish_reason(meta: dict, tool_calls: bool = False) -> str:
    """OpenAI's finish_reason: "tool_calls" when the answer is calls, "length" at the token limit, else "stop"."""
    if tool_calls:
        return "tool_calls"
    reason = (meta.get("finish_reason") or {}).get("type")
    return "length" if reason == "length" else "stop"


def usage(results: Sequence[dict], prompt_results: Sequence[dict] | None = None) -> dict:
    """The usage of one response: each prompt counted once (n samples share it), every sample's completion.
    prompt_results: one result per distinct prompt (default: the first result)."""
    prompts = prompt_results if prompt_results is not None else results[:1]
    prompt = sum(r["meta_info"]["prompt_tokens"] for r in prompts)
    completion = sum(r["meta_info"]["completion_tokens"] for r in results)
    cached = sum(r["meta_info"]["cached_tokens"] for r in prompts)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def response_format_constraint(response_format: dict[str, Any] | None) -> dict[str, Any]:
    """The sampling fields a response_format asks for: {} for text, {"json_schema": ...} for json_object (any
    JSON object) and json_schema (its schema, strict or not: this server always constrains). ValueError names a
    malformed one; structural_tag is refused as SGLang's engine-specific format this engine does not run."""
    if not response_format:
        return {}
    kind = response_format.get("type")
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"json_schema": '{"type": "object"}'}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict):
            raise ValueError("response_format.json_schema must be an object with 'name' and 'schema'")
        schema = spec.get("schema", spec.get("schema_"))
        if schema is None:
            schema = {}  # OpenAI: a missing schema allows any JSON
        if not isinstance(schema, dict):
            raise ValueError(f"response_format.json_schema.schema must be a JSON schema object, got {schema!r}")
        return {"json_schema": json.dumps(schema or {"type": "object"})}
    if kind == "structural_tag":
        raise NotImplementedError("response_format type 'structural_tag' is not available in this runtime; use "
                                  "'json_schema', or the regex/ebnf fields")
    raise ValueError(f"response_format.type must be 'text', 'json_object' or 'json_schema', got {kind!r}")


def _chat_entry(logprob: float, token: int, text: TokenText) -> dict:
    piece = text(token)
    return {"token": piece, "logprob": logprob, "bytes": list(piece.encode("utf-8"))}


def chat_logprobs(token_logprobs: Sequence, top_logprobs: Sequence, top_n: int, text: TokenText) -> dict:
    """Chat's `logprobs` object, {"content": [{token, logprob, bytes, top_logprobs}]}, from the engine's
    (logprob, id) entries of each output token and its top list."""
    content = []
    for i, (logprob, token) in enumerate(token_logprobs):
        entry = _chat_entry(logprob, token, text)
        top = top_logprobs[i] if top_n and i < len(top_logprobs) and top_logprobs[i] else []
        entry["top_logprobs"] = [_chat_entry(lp, t, text) for lp, t in top[:top_n]]
        content.append(entry)
    return {"content": content}


def text_offsets(decode: Callable[[list[int]], str], ids: Sequence[int], start: int = 0) -> list[int]:
    """Each token's character offset in the decoded text of ids (special tokens take no room), starting at
    start. Decodes a short window per token, so it is linear in len(ids) and a character split over tokens
    lands on the token that completes it."""
    offsets, pos = [], start
    for i in range(len(ids)):
        offsets.append(pos)
        lo = max(0, i - 4)
        pos += len(decode(list(ids[lo:i + 1]))) - len(decode(list(ids[lo:i])))
    return offsets


def completion_logprobs(token_logprobs: Sequence, top_logprobs: Sequence, offsets: Sequence[int],
                        text: TokenText) -> dict:
    """The legacy completions `logprobs` object (tokens, token_logprobs, top_logprobs, text_offset); entries
    are (logprob or None, id); a position without a top list (a prompt token) has top_logprobs None."""
    tokens = [text(token) for _, token in token_logprobs]
    tops: list[dict[str, float] | None] = []
    for i in range(len(token_logprobs)):
        top = top_logprobs[i] if i < len(top_logprobs) else None
        tops.append({text(t): lp for lp, t in top} if top else None)
    return {"tokens": tokens, "token_logprobs": [lp for lp, _ in token_logprobs], "top_logprobs": tops,
            "text_offset": list(offsets)}
