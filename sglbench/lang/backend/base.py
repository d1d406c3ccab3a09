"""The interface between programs and an engine, shaped like SGLang's `BaseBackend`.

The interpreter calls a backend from a state's worker thread with a `CallContext`: the state's text so far
and what identifies it. `generate`, `generate_stream`, `select`, `get_chat_template`, `flush_cache` and
`get_server_info` are required; the program hooks (`begin_program`, `fork_program`, `end_program`,
`cache_prefix`) are optional hints that a backend without a prefix cache may ignore.

Cancellation needs nothing from a backend: the interpreter checks the program's cancel scope before every
call, so a cancelled program starts no new call. A backend that can abort what it submitted registers each
request in `sglbench.lang.cancel.current_scope()` (see `RuntimeBackend`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sglbench.lang.chat_template import ChatTemplate
from sglbench.lang.choices import ChoicesDecision, ChoicesSamplingMethod
from sglbench.lang.ir import SglSamplingParams


@dataclass(frozen=True)
class CallContext:
    """What a backend sees of a program state at one call."""

    text: str
    messages: tuple[dict, ...]
    program_id: str
    state_id: str


class BaseBackend(ABC):
    @abstractmethod
    def generate(self, ctx: CallContext, params: SglSamplingParams) -> tuple[str | list[str], dict | list[dict]]:
        """Continue ctx.text; (text, meta_info), or lists of both when params.n > 1."""

    @abstractmethod
    def generate_stream(self, ctx: CallContext, params: SglSamplingParams) -> Iterator[tuple[str, dict | None]]:
        """Yield (text delta, meta_info so far or None) as text is decoded, then ("", meta_info) once at the
        end. A meta_info so far covers every delta up to its own: counts so far and, with logprobs, every
        output token's logprob so far (the interpreter cuts them into SGLang's per-chunk shape)."""

    @abstractmethod
    def select(self, ctx: CallContext, choices: list[str], temperature: float,
               choices_method: ChoicesSamplingMethod) -> ChoicesDecision:
        """Score each choice as a continuation of ctx.text and decide with choices_method."""

    @abstractmethod
    def get_chat_template(self) -> ChatTemplate: ...

    @abstractmethod
    def flush_cache(self) -> bool:
        """Drop cached prefixes; False when the engine refuses (busy)."""

    @abstractmethod
    def get_server_info(self) -> dict[str, Any]: ...

    def get_model_name(self) -> str:
        """The served model's name or path (SGLang's programs load its tokenizer from it)."""
        raise NotImplementedError(f"{type(self).__name__} does not tell its model's name")

    @property
    def endpoint(self) -> BaseBackend:
        """The backend itself: SGLang programs reach the backend of a `Runtime` (set as the default backend)
        as `global_config.default_backend.endpoint`, and sglbench stores that backend directly."""
        return self

    def begin_program(self, program_id: str, name: str) -> None:  # noqa: B027 (optional hook)
        """Hint: a program run starts."""

    def fork_program(self, ctx: CallContext, num_forks: int) -> None:  # noqa: B027 (optional hook)
        """Hint: ctx's state is about to fork; called before the forks start (e.g. to cache ctx.text)."""

    def end_program(self, program_id: str) -> None:  # noqa: B027 (optional hook)
        """Hint: every state of a program run has finished."""

    def cache_prefix(self, prefix: str) -> None:  # noqa: B027 (optional hook)
        """Hint: many programs will start with prefix."""

    def generated_tokens(self) -> int | None:
        """A running total of the tokens the engine behind this backend has generated, for progress displays
        (a batch shows its growth while calls are in flight); None when the backend cannot tell."""
        return None
