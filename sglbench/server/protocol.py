"""Request bodies the HTTP server accepts: SGLang's native /generate and the OpenAI-compatible ones.

Unknown fields are refused (`extra="forbid"`), so a typo is a 400 that names it, never ignored.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from sglbench.runtime.sampling_params import (
    FIELDS,
    SamplingParams,
    openai_server_fields,
    sglang_top_level_fields,
)

_STRICT = ConfigDict(extra="forbid")


# SGLang's top-level sampling fields (return_logprob, logprob_start_len, top_logprobs_num), from their definition.
_SGLangTopLevel = create_model("_SGLangTopLevel", __config__=_STRICT, **sglang_top_level_fields())


class GenerateRequest(_SGLangTopLevel):
    """SGLang's native /generate body; `sampling_params` is checked by `SamplingParams.from_kwargs`."""

    text: str | None = None
    input_ids: list[int] | None = None
    sampling_params: dict[str, Any] = Field(default_factory=dict)
    stream: bool = False
    rid: str | None = None

    def sampling(self) -> SamplingParams:
        """The request's sampling parameters: its sampling_params and the top-level ones."""
        top = {name: getattr(self, name) for name, spec in FIELDS.items() if spec.sglang == "request"}
        return SamplingParams.from_kwargs(**self.sampling_params, **top)


class _OpenAIBase(BaseModel):
    model_config = _STRICT
    model: str
    stream: bool = False
    user: str | None = None


# The standard OpenAI sampling fields (temperature, top_p, n, stop, seed, penalties), from their definition.
_OpenAISampling = create_model("_OpenAISampling", __base__=_OpenAIBase, **openai_server_fields())


class CompletionRequest(_OpenAISampling):
    """OpenAI /v1/completions."""

    prompt: str | list[int]
    max_tokens: int = 16
    logprobs: int | None = None
    echo: bool = False


class ChatMessage(BaseModel):
    model_config = _STRICT
    role: str
    content: str


class ChatCompletionRequest(_OpenAISampling):
    """OpenAI /v1/chat/completions."""

    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
