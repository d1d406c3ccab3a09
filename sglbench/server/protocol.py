"""Request bodies the HTTP server accepts: SGLang's native /generate and the OpenAI-compatible ones.

Unknown fields are refused (`extra="forbid"`), so a typo is a 400 that names it, never ignored.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_STRICT = ConfigDict(extra="forbid")


class GenerateRequest(BaseModel):
    """SGLang's native /generate body."""

    model_config = _STRICT
    text: str | None = None
    input_ids: list[int] | None = None
    sampling_params: dict[str, Any] = Field(default_factory=dict)
    stream: bool = False
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    rid: str | None = None


class _OpenAISampling(BaseModel):
    """Sampling fields shared by the OpenAI completion and chat bodies."""

    model_config = _STRICT
    model: str
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    user: str | None = None


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
