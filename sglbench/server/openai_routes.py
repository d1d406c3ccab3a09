"""The OpenAI-compatible routes: /v1/models, /v1/completions and /v1/chat/completions (SSE streaming, n samples,
logprobs, tools, reasoning, response_format), as the openai SDK, LangChain and LiteLLM send them."""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool

from sglbench.runtime.sampling_params import from_openai
from sglbench.server.chat_completion import ChatChoiceStream, chat_choice, plan_chat
from sglbench.server.openai_shapes import (
    chat_logprobs,
    completion_logprobs,
    finish_reason,
    text_offsets,
    usage,
)
from sglbench.server.protocol import ChatCompletionRequest, CompletionRequest, _OpenAIBase
from sglbench.server.serving import Serving, error, sse_response

logger = logging.getLogger(__name__)

MAX_COMPLETION_LOGPROBS = 20  # OpenAI allows 5; vLLM and SGLang take more


def _prompts(prompt: str | list) -> list[str | list[int]]:
    """/v1/completions' prompt forms as a list of prompts: a string, strings, token ids, lists of token ids."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise ValueError("prompt must not be empty")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    return list(prompt)


def add_openai_routes(app: FastAPI, serving: Serving) -> None:
    """Register the OpenAI-compatible routes for serving's runtime, under the model name serving.served_name."""
    rt, served_name = serving.rt, serving.served_name
    tokenizer = rt.tokenizer

    @functools.lru_cache(maxsize=1 << 16)
    def token_text(token: int) -> str:
        return tokenizer.decode([token], skip_special_tokens=False)

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids)

    def check(body: _OpenAIBase, route: str) -> None:
        if body.model != served_name:
            raise ValueError(f"model {body.model!r} is not served here; this server serves {served_name!r}")
        if body.ignored_fields:
            logger.warning("%s: ignoring unknown field(s) %s", route, ", ".join(body.ignored_fields))

    def envelope(cid: str, created: int, kind: str, choices: list[dict], **extra) -> dict:
        return {"id": cid, "object": kind, "created": created, "model": served_name, "choices": choices, **extra}

    def include_usage(body: _OpenAIBase) -> bool:
        return body.stream_options is not None and body.stream_options.include_usage

    def running_usage(body: _OpenAIBase, prompt_tokens: int, completion_tokens: int) -> dict:
        """continuous_usage_stats (vLLM's and SGLang's): the usage so far on every chunk."""
        if body.stream_options is None or not body.stream_options.continuous_usage_stats:
            return {}
        return {"usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": served_name, "object": "model", "owned_by": "sglbench",
                                            "created": int(serving.started), "root": served_name,
                                            "max_model_len": rt.model_info().context_length}]}

    # ------------------------------------------------------------------------------------ completions
    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        check(body, "/v1/completions")
        if body.suffix:
            raise NotImplementedError("suffix (fill-in-the-middle) is not supported: this server only continues "
                                      "a prompt; put the text before the gap in prompt")
        if body.best_of is not None and body.best_of != (body.n or 1):
            raise NotImplementedError("best_of would rank samples on the server, which this server does not do; "
                                      "ask for n samples and rank them with their logprobs")
        k = body.logprobs
        if k is not None and not 0 <= k <= MAX_COMPLETION_LOGPROBS:
            raise ValueError(f"logprobs must be in [0, {MAX_COMPLETION_LOGPROBS}], got {k}")
        extra = ({"return_logprob": True, "top_logprobs_num": k, "logprob_start_len": 0 if body.echo else -1}
                 if k is not None else {})
        params = await run_in_threadpool(lambda: from_openai(body.model_dump(), max_new_tokens=body.max_tokens,
                                                             **extra))  # compiles stop regexes
        prompts = _prompts(body.prompt)
        prompt_ids = await run_in_threadpool(lambda: [serving.prompt_ids(p) for p in prompts])
        echoes = [(p if isinstance(p, str) else decode(p)) if body.echo else "" for p in prompts]
        handles = await serving.submit_all([(ids, params, None) for ids in prompt_ids], body.stream)
        n = params.n
        cid, created, kind = f"cmpl-{uuid.uuid4().hex}", int(time.time()), "text_completion"

        def logprobs_of(i: int, meta: dict, text_start: int) -> dict | None:
            if k is None:
                return None
            outputs = meta.get("output_token_logprobs", [])
            out_ids = [t for _, t in outputs]
            entries, tops, offsets = list(outputs), list(meta.get("output_top_logprobs", [])), []
            if body.echo:
                prompt_entries = meta.get("input_token_logprobs", [])
                offsets = text_offsets(decode, [t for _, t in prompt_entries])
                entries, tops = [*prompt_entries, *entries], [*([None] * len(prompt_entries)), *tops]
            offsets += text_offsets(decode, out_ids, start=text_start)
            return completion_logprobs(entries, tops, offsets, token_text)

        def choice(i: int, text: str, reason: str | None, logprobs: dict | None = None) -> dict:
            return {"index": i, "text": text, "logprobs": logprobs, "finish_reason": reason}

        if not body.stream:
            results = await serving.results(request, handles)
            if results is None:
                return error(499, "client disconnected")
            choices = []
            for i, r in enumerate(results):
                echo = echoes[i // n]
                lp = await run_in_threadpool(logprobs_of, i, r["meta_info"], len(echo)) if k is not None else None
                choices.append(choice(i, echo + r["text"], finish_reason(r["meta_info"]), lp))
            return envelope(cid, created, kind, choices, usage=usage(results, results[::n]))

        async def payloads() -> AsyncIterator[dict]:
            done: dict[int, dict] = {}
            sent = [0] * len(handles)  # characters streamed per choice (for text_offset)
            for i in range(len(handles)):
                if echoes[i // n]:
                    sent[i] = len(echoes[i // n])
                    yield envelope(cid, created, kind, [choice(i, echoes[i // n], None)])
            async for i, delta, result in serving.events(request, handles):
                if result is not None:
                    done[i] = result
                    yield envelope(cid, created, kind, [choice(i, "", finish_reason(result["meta_info"]))],
                                   **running_usage(body, len(prompt_ids[i // n]),
                                                   result["meta_info"]["completion_tokens"]))
                    continue
                lp = None
                if k is not None:
                    ids = [t for _, t in delta.output_token_logprobs]
                    lp = completion_logprobs(delta.output_token_logprobs, delta.output_top_logprobs,
                                             text_offsets(decode, ids, start=sent[i]), token_text)
                sent[i] += len(delta.text)
                yield envelope(cid, created, kind, [choice(i, delta.text, None, lp)],
                               **running_usage(body, len(prompt_ids[i // n]), delta.completion_tokens))
            if include_usage(body):
                by_index = [done[i] for i in sorted(done)]
                yield envelope(cid, created, kind, [], usage=usage(by_index, by_index[::n]))

        return sse_response(payloads())

    # ------------------------------------------------------------------------------------ chat
    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        check(body, "/v1/chat/completions")
        plan = await run_in_threadpool(plan_chat, body, tokenizer, rt.model_info().context_length,
                                       serving.tool_format, serving.reasoning_format)
        handles = await serving.submit_all([(plan.prompt_ids, plan.params, None)], body.stream)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        if not body.stream:
            results = await serving.results(request, handles)
            if results is None:
                return error(499, "client disconnected")
            choices = [chat_choice(plan, i, r, token_text) for i, r in enumerate(results)]
            return envelope(cid, created, "chat.completion", choices, usage=usage(results))

        def chunk(i: int, delta: dict, reason: str | None = None, logprobs: dict | None = None, **extra) -> dict:
            return envelope(cid, created, "chat.completion.chunk",
                            [{"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": reason}], **extra)

        async def payloads() -> AsyncIterator[dict]:
            streams = [ChatChoiceStream(plan, body.stream_reasoning) for _ in handles]
            pending: list[list] = [[] for _ in handles]  # logprob entries not yet sent with a chunk
            seen = [0] * len(handles)  # logprob entries streamed into pending so far
            done: list[dict] = []
            prompt_tokens = len(plan.prompt_ids)

            def logprobs_for(i: int) -> dict | None:
                if not plan.logprobs or not pending[i]:
                    return None
                entries, tops = zip(*pending[i])
                pending[i] = []
                return chat_logprobs(entries, tops, plan.top_logprobs, token_text)

            for i in range(len(handles)):
                yield chunk(i, {"role": "assistant", "content": ""}, **running_usage(body, prompt_tokens, 0))
            async for i, delta, result in serving.events(request, handles):
                if result is None:
                    if plan.logprobs:
                        tops = delta.output_top_logprobs or [None] * len(delta.output_token_logprobs)
                        pending[i] += list(zip(delta.output_token_logprobs, tops))
                        seen[i] += len(delta.output_token_logprobs)
                    for piece in streams[i].feed(delta.text):
                        yield chunk(i, piece, logprobs=logprobs_for(i),
                                    **running_usage(body, prompt_tokens, delta.completion_tokens))
                    continue
                done.append(result)
                meta = result["meta_info"]
                if plan.logprobs:  # the last tokens (a stop token) may come with the result alone
                    rest = meta.get("output_token_logprobs", [])[seen[i]:]
                    tops = meta.get("output_top_logprobs", [])[seen[i]:] or [None] * len(rest)
                    pending[i] += list(zip(rest, tops))
                for piece in streams[i].finish():
                    yield chunk(i, piece, logprobs=logprobs_for(i))
                yield chunk(i, {}, finish_reason(meta, streams[i].called), logprobs_for(i),
                            **running_usage(body, prompt_tokens, meta["completion_tokens"]))
            if include_usage(body):
                yield envelope(cid, created, "chat.completion.chunk", [], usage=usage(done))

        return sse_response(payloads())
