"""Request bodies the HTTP server accepts: SGLang's native /generate and /abort_request, and the OpenAI-compatible ones.

In SGLang's native bodies unknown fields are refused (`extra="forbid"`), so a typo is a 400 that names it; the
OpenAI bodies ignore them with a warning in the log, as the servers that clients of that API meet do. /generate takes
SGLang's `GenerateReqInput` shapes: one prompt or a batch, with one value or a list (one per prompt) for
sampling_params, the logprob fields and rid. Its other fields are accepted while they ask for nothing this server
would have to do differently (null, false, 0, empty), and are a 400 naming them otherwise.
"""

from __future__ import annotations

import json
import re
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, create_model

from sglbench.runtime.generate_args import per_request, split_prompts
from sglbench.runtime.sampling_params import (
    SamplingParams,
    openai_server_extra_fields,
    openai_server_fields,
    sglang_top_level_fields,
)
from sglbench.runtime.sglang_request_fields import PASSIVE_FIELDS, UNSUPPORTED_WHEN_SET, is_off

_STRICT = ConfigDict(extra="forbid")

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # how a JSON body spells a UTF-16 surrogate
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # json.loads joins a proper pair into one character


def _lone_surrogate_at(value: Any, path: str) -> tuple[str, int, str] | None:
    """The first string in value holding a lone surrogate: (field path, character index, the surrogate)."""
    if isinstance(value, str):
        found = _LONE_SURROGATE.search(value)
        return (path or "body", found.start(), found.group()) if found else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        where = f"{path}.{key}" if path else str(key)
        hit = _lone_surrogate_at(key, f"{where} (a key)") or _lone_surrogate_at(item, where)
        if hit:
            return hit
    return None


def lone_surrogate_problem(body: bytes) -> str | None:
    """A 400 message naming the field of a JSON body whose string has a lone UTF-16 surrogate ("\\ud800"), which
    no tokenizer can encode; None for any other body (a malformed one is left to the JSON parser)."""
    if not _SURROGATE_ESCAPE.search(body):
        return None
    try:
        hit = _lone_surrogate_at(json.loads(body), "")
    except (ValueError, RecursionError):  # not JSON, or nested too deep: the body parser answers for it
        return None
    if hit is None:
        return None
    path, index, char = hit
    return (f"{path}: has a lone UTF-16 surrogate \\u{ord(char):04x} at character {index}; JSON strings must be "
            "valid Unicode (a character beyond U+FFFF is written as a surrogate pair)")

# The sampling fields SGLang carries beside sampling_params (return_logprob, logprob_start_len, ...): name -> type.
TOP_LEVEL: dict[str, Any] = {name: hint for name, (hint, _) in sglang_top_level_fields().items()}


def _takes_a_sequence(hint: Any) -> bool:
    """Whether a field's own value is a list (token_ids_logprob), so a list of lists means one per prompt."""
    return any(typing.get_origin(a) in (list, tuple) or a in (list, tuple) for a in (*typing.get_args(hint), hint))


def _is_per_prompt(name: str, value: Any) -> bool:
    """Whether a value is one per prompt: a list, or for a field whose own value is a list, a list of lists."""
    if not isinstance(value, list):
        return False
    nested = name in TOP_LEVEL and _takes_a_sequence(TOP_LEVEL[name])
    return not nested or (bool(value) and all(isinstance(v, (list, tuple)) for v in value))


def _per_prompt(name: str, value: Any, count: int, batch: bool) -> list:
    """One value per prompt: a per-prompt list as given (of the right length), any other value for every prompt."""
    return per_request(value, count, batch, name) if _is_per_prompt(name, value) else [value] * count


@dataclass(frozen=True)
class GenerateItem:
    """One prompt of a /generate body, with its own sampling parameters and request id."""

    prompt: str | list[int]
    params: SamplingParams
    rid: str | None


def _sampling_params(given: dict[str, Any], top: dict[str, Any]) -> SamplingParams:
    """SamplingParams from one prompt's sampling_params dict and top-level fields (unknown names: TypeError)."""
    misplaced = sorted(given.keys() & TOP_LEVEL.keys())
    if misplaced:
        raise ValueError(f"{misplaced} go at the top level of the /generate body, not in sampling_params")
    return SamplingParams.from_kwargs(**given, **{k: v for k, v in top.items() if v is not None})


_GenerateFields = create_model(
    "_GenerateFields", __config__=_STRICT,
    **{name: (hint | list[hint] | None, None) for name, hint in TOP_LEVEL.items()},
    **{name: (Any, None) for name in (*UNSUPPORTED_WHEN_SET, *PASSIVE_FIELDS)},
)


class GenerateRequest(_GenerateFields):
    """SGLang's native /generate body (its GenerateReqInput); `items()` checks and splits it into prompts."""

    text: str | list[str] | None = None
    input_ids: list[int] | list[list[int]] | None = None
    sampling_params: dict[str, Any] | list[dict[str, Any]] | None = None
    return_text_in_logprobs: bool = False
    stream: bool = False
    rid: str | list[str] | None = None

    @property
    def _prompt_list(self) -> bool:
        return isinstance(self.text, list) or (bool(self.input_ids) and isinstance(self.input_ids[0], list))

    @property
    def is_batch(self) -> bool:
        """Whether the answer is a list: a list of prompts, or n > 1 samples of one (as SGLang answers)."""
        sampling = self.sampling_params if isinstance(self.sampling_params, list) else [self.sampling_params or {}]
        return self._prompt_list or any(p.get("n") not in (None, 1) for p in sampling)

    def _prompts(self) -> list[str | list[int]]:
        if (self.text is None) == (self.input_ids is None):
            raise ValueError("give exactly one of 'text' and 'input_ids'")
        return split_prompts(self.text, self.input_ids)[0]

    def _check_supported(self) -> None:
        for name, reason in UNSUPPORTED_WHEN_SET.items():
            value = getattr(self, name)
            if not is_off(value):
                raise ValueError(f"{name}={value!r} is not supported: {reason}")

    def _rids(self, count: int) -> list[str | None]:
        rid = self.rid
        if rid is None:
            rids: list[str | None] = [None] * count
        elif isinstance(rid, str):
            rids = [rid] if not self._prompt_list else [f"{rid}_{i}" for i in range(count)]
        elif len(rid) != count:
            raise ValueError(f"rid has {len(rid)} entries for {count} prompt(s)")
        else:
            rids = list(rid)
        named = [r for r in rids if r is not None]
        if len(set(named)) != len(named):
            raise ValueError(f"duplicate rid(s) in one request: {sorted({r for r in named if named.count(r) > 1})}")
        return rids

    def items(self) -> list[GenerateItem]:
        """One item per prompt, in order, each with its sampling parameters; ValueError/TypeError naming what is wrong."""
        self._check_supported()
        prompts = self._prompts()
        count = len(prompts)
        sampling = per_request(self.sampling_params or {}, count, self._prompt_list, "sampling_params")
        tops = {name: _per_prompt(name, getattr(self, name), count, self._prompt_list) for name in TOP_LEVEL}
        params = [_sampling_params(sampling[i], {k: v[i] for k, v in tops.items()}) for i in range(count)]
        if len({p.n for p in params}) > 1:
            raise ValueError("n must be the same in every sampling_params of one request")
        listed = [name for name in TOP_LEVEL if _is_per_prompt(name, getattr(self, name))]
        if params[0].n > 1 and listed:
            raise ValueError(f"{listed[0]} cannot be a list (one per prompt) when n > 1, as in SGLang")
        return [GenerateItem(p, s, r) for p, s, r in zip(prompts, params, self._rids(count))]


class AbortRequest(BaseModel):
    """SGLang's /abort_request body: one request id, or abort_all."""

    model_config = _STRICT
    rid: str | None = ""
    abort_all: bool = False
    finished_reason: dict[str, Any] | None = None
    abort_message: str | None = None


class StreamOptions(BaseModel):
    """OpenAI's stream_options: include_usage adds a last chunk with the usage and no choices."""

    model_config = ConfigDict(extra="allow")
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM's and SGLang's: every chunk carries the usage so far


class _OpenAIBase(BaseModel):
    """What both OpenAI routes take besides sampling. Unknown fields are ignored with a warning in the log, as
    SGLang's and vLLM's servers do (clients add fields faster than servers learn them); malformed known ones are
    a 400 naming the field."""

    model_config = ConfigDict(extra="allow")
    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    metadata: dict[str, Any] | None = None  # stored by OpenAI; accepted and unused here
    store: bool | None = None
    service_tier: str | None = None
    response_format: dict[str, Any] | None = None

    @property
    def ignored_fields(self) -> list[str]:
        return sorted(self.model_extra or {})


# The OpenAI sampling fields (temperature, top_p, n, stop, seed, penalties) and the extras SGLang's server takes in
# the same body (top_k, min_p, regex, json_schema, ebnf, ...), from their one definition.
_OpenAISampling = create_model("_OpenAISampling", __base__=_OpenAIBase, **openai_server_fields(),
                               **openai_server_extra_fields())


class CompletionRequest(_OpenAISampling):
    """OpenAI /v1/completions: one prompt or several, as text or token ids."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


class ChatCompletionRequest(_OpenAISampling):
    """OpenAI /v1/chat/completions, with tools, reasoning and SGLang's chat extras. Messages are checked and
    normalized by `chat_messages.normalize_messages`, which names the message and field at fault."""

    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    reasoning_effort: str | None = None  # accepted; the model's template decides how it reasons
    separate_reasoning: bool = True  # SGLang's: reasoning_content apart from content when a reasoning parser is set
    stream_reasoning: bool = True  # SGLang's: stream reasoning_content deltas (False: send it at the end)
    chat_template_kwargs: dict[str, Any] | None = None
    continue_final_message: bool = False
