"""`OpenAI`: programs run on any OpenAI-compatible server (OpenAI, vLLM, SGLang, `sglbench serve`) through
the official `openai` client, with completion or chat models.

What the OpenAI API cannot do is a clear error, as in SGLang: no constrained decoding (regex, json_schema,
dtype); select only for completion models on servers that return prompt logprobs (`echo=True` with
`logprobs`, e.g. vLLM); chat models send the program's role messages, so a chat model's gen must come
right after `sgl.assistant_begin()`. Prefix hints are not needed (servers cache prefixes on their own).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sglbench.lang.backend.base import BaseBackend, CallContext
from sglbench.lang.backend.http_common import client_timings
from sglbench.lang.backend.prompt_tree import PromptTree
from sglbench.lang.backend.scoring import decide
from sglbench.lang.chat_template import DEFAULT_CHAT_TEMPLATE, ChatTemplate
from sglbench.lang.choices import ChoicesDecision, ChoicesSamplingMethod
from sglbench.lang.ir import SglSamplingParams
from sglbench.runtime.sampling_params import FIELDS as SAMPLING_FIELDS
from sglbench.runtime.sampling_params import openai_request

# OpenAI's own completion (non-chat) models; any other name counts as a chat model unless told.
COMPLETION_MODELS = frozenset({"gpt-3.5-turbo-instruct", "davinci-002", "babbage-002"})


def _server_words(exc: Any) -> str:
    """The message an OpenAI-style error body carries, else the client's text."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return str(getattr(exc, "message", exc))


def _usage_meta(usage: Any) -> dict[str, Any]:
    """prompt/completion/cached token counts from an OpenAI usage object (cached only when reported)."""
    if usage is None:
        return {"prompt_tokens": 0, "completion_tokens": 0}
    meta = {"prompt_tokens": usage.prompt_tokens or 0, "completion_tokens": usage.completion_tokens or 0}
    details = getattr(usage, "prompt_tokens_details", None)
    if details is not None and getattr(details, "cached_tokens", None) is not None:
        meta["cached_tokens"] = details.cached_tokens
    return meta


@dataclass
class TokenUsage:
    """Tokens a backend's requests used so far, as the server reported them (SGLang's `token_usage`)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def reset(self) -> None:
        self.prompt_tokens = self.completion_tokens = 0


class OpenAI(BaseBackend):
    """Runs programs on an OpenAI-compatible server.

    >>> sgl.set_default_backend(OpenAI("gpt-4o-mini"))                                   # api.openai.com
    >>> sgl.set_default_backend(OpenAI("Qwen/Qwen2.5-7B-Instruct", base_url="http://host:8000/v1",
    ...                                api_key="EMPTY"))                                   # e.g. vLLM

    The first four parameters are SGLang's. is_chat_model: None guesses from the name (OpenAI's completion
    models, else chat); is_azure: use `openai.AzureOpenAI` (pass its azure_endpoint, api_version, ...).
    client_kwargs go to the client (timeout, max_retries, organization, ...). `token_usage` adds up the
    tokens the server reports.
    """

    def __init__(self, model_name: str, is_chat_model: bool | None = None, chat_template: ChatTemplate | None = None,
                 is_azure: bool = False, *, base_url: str | None = None, api_key: str | None = None,
                 max_workers: int = 8, **client_kwargs: Any):
        import openai

        self.model = self.model_name = model_name
        self.is_chat_model = model_name not in COMPLETION_MODELS if is_chat_model is None else is_chat_model
        self.chat_template = chat_template or DEFAULT_CHAT_TEMPLATE
        if base_url is not None:
            client_kwargs["base_url"] = base_url
        client = openai.AzureOpenAI if is_azure else openai.OpenAI
        self.client = client(api_key=api_key or _env_key(base_url), **client_kwargs)
        self.base_url = str(self.client.base_url).rstrip("/")
        self.token_usage = TokenUsage()
        self._usage_lock = threading.Lock()
        self._openai = openai
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="sgl-openai")
        self.prompt_tree = PromptTree()

    def __repr__(self) -> str:
        kind = "chat" if self.is_chat_model else "completion"
        return f"OpenAI({self.model!r}, {kind}, base_url={self.base_url!r})"

    def close(self) -> None:
        """Close the client's connections and the worker threads."""
        self.client.close()
        self._pool.shutdown(wait=False)

    # ------------------------------------------------------------------ requests
    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """The client's exceptions as errors that name the server, the key or the server's message."""
        oa = self._openai
        try:
            yield
        except oa.APIConnectionError as exc:
            raise ConnectionError(f"cannot reach the OpenAI-compatible server at {self.base_url} ({exc})") from None
        except (oa.AuthenticationError, oa.PermissionDeniedError) as exc:
            raise PermissionError(f"{self.base_url} refused the API key ({_server_words(exc)}); pass api_key= "
                                  "or set OPENAI_API_KEY") from None
        except (oa.BadRequestError, oa.UnprocessableEntityError, oa.NotFoundError) as exc:
            raise ValueError(f"{self.base_url} rejected the request for model {self.model!r}: "
                             f"{_server_words(exc)}") from None
        except oa.APIStatusError as exc:
            raise RuntimeError(f"{self.base_url} failed (HTTP {exc.status_code}): {_server_words(exc)}") from None

    @staticmethod
    def _check(p: SglSamplingParams) -> None:
        """A clear error for what the OpenAI API cannot carry (constraints, logprobs)."""
        if p.dtype is not None:
            raise ValueError(f"gen(dtype=...) {SAMPLING_FIELDS['regex'].openai_missing}; run the program on "
                             "sgl.RuntimeEndpoint (an SGLang server) or an sgl.Runtime")
        openai_request(p.engine_values())

    @staticmethod
    def _kwargs(p: SglSamplingParams) -> dict[str, Any]:
        return openai_request(p.engine_values())

    def _messages(self, ctx: CallContext) -> list[dict]:
        """The program's role messages; the text must be exactly them plus an open assistant turn."""
        rendered = ""
        for m in ctx.messages:
            prefix, suffix = self.chat_template.get_prefix_and_suffix(m["role"])
            rendered += prefix + m["content"] + suffix
        if not ctx.messages or ctx.text != rendered + self.chat_template.get_prefix_and_suffix("assistant")[0]:
            raise ValueError("a chat model generates only a whole assistant turn: put sgl.gen right after "
                             "sgl.assistant_begin() (or alone in sgl.assistant(...)), with no text outside "
                             "role blocks; or use a completion model (is_chat_model=False)")
        return [{"role": m["role"], "content": m["content"]} for m in ctx.messages]

    def _create(self, ctx: CallContext, p: SglSamplingParams, stream: bool) -> Any:
        with self._errors():
            if self.is_chat_model:
                return self.client.chat.completions.create(model=self.model, messages=self._messages(ctx),
                                                           stream=stream, **self._kwargs(p))
            return self.client.completions.create(model=self.model, prompt=ctx.text, stream=stream, **self._kwargs(p))

    def _count(self, usage: dict[str, Any]) -> dict[str, Any]:
        """Add a response's usage to token_usage; returns it."""
        with self._usage_lock:
            self.token_usage.prompt_tokens += usage["prompt_tokens"]
            self.token_usage.completion_tokens += usage["completion_tokens"]
        return usage

    def _text(self, choice: Any) -> str:
        return (choice.message.content or "") if self.is_chat_model else choice.text

    # ------------------------------------------------------------------ BaseBackend
    def generate(self, ctx: CallContext, params: SglSamplingParams) -> tuple[str | list[str], dict | list[dict]]:
        """Continue ctx.text (completion) or its messages (chat). With n > 1 one request returns every
        sample; its usage (for all samples) is in the first sample's meta_info."""
        self._check(params)
        ticket, meta = self.prompt_tree.send(ctx.text), None
        try:
            sent = time.time()
            response = self._create(ctx, params, stream=False)
            received = time.time()
            usage = self._count(_usage_meta(response.usage))
            metas = [client_timings({"id": f"{response.id}-{c.index}" if (params.n or 1) > 1 else response.id,
                                     **(usage if i == 0 else {"prompt_tokens": 0, "completion_tokens": 0}),
                                     "finish_reason": {"type": c.finish_reason} if c.finish_reason else None},
                                    sent, None, received)
                     for i, c in enumerate(response.choices)]
            meta = metas[0]
        finally:
            self.prompt_tree.done(ticket, meta)
        texts = [self._text(c) for c in response.choices]
        return (texts[0], metas[0]) if (params.n or 1) == 1 else (texts, metas)

    def generate_stream(self, ctx: CallContext, params: SglSamplingParams) -> Iterator[tuple[str, dict | None]]:
        self._check(params)
        if (params.n or 1) != 1:
            raise ValueError("streaming supports n=1 only")
        ticket, meta = self.prompt_tree.send(ctx.text), None
        try:
            sent, first = time.time(), None
            rid, reason, usage = None, None, None
            chunks = self._create(ctx, params, stream=True)
            with self._errors():
                for chunk in chunks:
                    rid, usage = chunk.id, chunk.usage or usage
                    if not chunk.choices:
                        continue
                    choice = chunk.choices[0]
                    reason = choice.finish_reason or reason
                    piece = (choice.delta.content or "") if self.is_chat_model else (choice.text or "")
                    if piece:
                        first = first or time.time()
                        yield piece, None
            finish = {"type": reason} if reason else None
            meta = client_timings({"id": rid, **self._count(_usage_meta(usage)), "finish_reason": finish}, sent, first,
                                  time.time())
        finally:
            self.prompt_tree.done(ticket, meta)
        yield "", meta

    def select(self, ctx: CallContext, choices: list[str], temperature: float,
               choices_method: ChoicesSamplingMethod) -> ChoicesDecision:
        """Score each prompt + choice by the server's prompt logprobs (`echo=True`, completion models)."""
        if self.is_chat_model:
            raise ValueError(f"select needs the choices' token logprobs, which the chat model {self.model!r} cannot "
                             "return for a prompt; use a completion model (is_chat_model=False) on a server that "
                             "supports echo=True with logprobs (e.g. vLLM), or sgl.RuntimeEndpoint")
        if choices_method.requires_unconditional_logprobs:
            raise ValueError(f"{choices_method!r} scores each choice without its prompt, which needs token ids the "
                             "OpenAI API does not give; use token_length_normalized or greedy_token_selection here, "
                             "or sgl.RuntimeEndpoint")
        if temperature > 1e-5:
            raise ValueError(f"select scores choices greedily: temperature must be 0, got {temperature}")
        scored = list(self._pool.map(lambda c: self._echo(ctx.text, c), choices))
        requests = [m for _, m in scored]
        return decide(choices, choices_method, [lps for lps, _ in scored], None, requests, requests)

    def _echo(self, prompt: str, choice: str) -> tuple[list[tuple], dict]:
        """(logprob, None, token text) of the tokens from where prompt + choice departs from the prompt (the
        token that straddles the boundary counts as the choice's), and the request's meta_info."""
        text = prompt + choice
        ticket, meta = self.prompt_tree.send(text), None
        try:
            sent = time.time()
            with self._errors():
                # max_tokens=1: servers such as vLLM refuse 0; the sampled token is dropped below.
                response = self.client.completions.create(model=self.model, prompt=text, max_tokens=1, echo=True,
                                                          logprobs=1, temperature=0)
            meta = client_timings({"id": response.id, **self._count(_usage_meta(response.usage))}, sent, None,
                                  time.time())
        finally:
            self.prompt_tree.done(ticket, meta)
        lp = response.choices[0].logprobs
        if lp is None or not lp.token_logprobs or not lp.text_offset:
            raise ValueError(f"{self.base_url} returned no prompt logprobs for echo=True, logprobs=1, so select "
                             "cannot score choices there; use a server that supports it (e.g. vLLM) or "
                             "sgl.RuntimeEndpoint with an SGLang server")
        offsets = [o for o in lp.text_offset if o < len(text)]  # the prompt's tokens, not the sampled one
        ends = [*offsets[1:], len(text)]
        start = next((i for i, end in enumerate(ends) if end > len(prompt)), len(offsets) - 1)
        start = max(1, min(start, len(offsets) - 1))
        return [(lp.token_logprobs[i], None, lp.tokens[i]) for i in range(start, len(offsets))], meta

    def get_chat_template(self) -> ChatTemplate:
        return self.chat_template

    def get_model_name(self) -> str:
        return self.model_name

    def flush_cache(self) -> bool:
        """OpenAI-compatible servers offer no cache flush: always False."""
        return False

    def get_server_info(self) -> dict[str, Any]:
        return {"backend": "openai", "base_url": self.base_url, "model": self.model,
                "is_chat_model": self.is_chat_model, "chat_template": self.chat_template.name}


def _env_key(base_url: str | None) -> str | None:
    """OPENAI_API_KEY; for a custom base_url without one, "EMPTY" (local servers often need none)."""
    return os.environ.get("OPENAI_API_KEY") or (None if base_url is None else "EMPTY")


CRUSOE_BASE_URL = "https://managed-inference-api-proxy.crusoecloud.com/v1/"


class Crusoe(OpenAI):
    """SGLang's backend for Crusoe's managed inference: its OpenAI-compatible API, the key from
    api_key or CRUSOE_API_KEY."""

    def __init__(self, model_name: str, api_key: str | None = None, base_url: str | None = None,
                 chat_template: ChatTemplate | None = None, **kwargs: Any):
        key = api_key or os.environ.get("CRUSOE_API_KEY")
        if not key:
            raise ValueError("sgl.Crusoe needs a Crusoe API key: pass api_key= or set CRUSOE_API_KEY")
        super().__init__(model_name, chat_template=chat_template, api_key=key, base_url=base_url or CRUSOE_BASE_URL,
                         **kwargs)
