"""The OpenAI-compatible routes: /v1/models, /v1/completions, /v1/chat/completions (with SSE streaming)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI, Request

from sglbench.runtime.sampling_params import SamplingParams, from_openai
from sglbench.server.protocol import ChatCompletionRequest, CompletionRequest
from sglbench.server.serving import Serving, error, sse_response


def _finish_reason(meta: dict) -> str:
    reason = (meta.get("finish_reason") or {}).get("type")
    return "length" if reason == "length" else "stop"


def _usage(results: list[dict]) -> dict:
    prompt = results[0]["meta_info"]["prompt_tokens"]
    completion = sum(r["meta_info"]["completion_tokens"] for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": results[0]["meta_info"]["cached_tokens"]}}


def add_openai_routes(app: FastAPI, serving: Serving) -> None:
    """Register the OpenAI-compatible routes for serving's runtime, under the model name serving.served_name."""
    rt, served_name = serving.rt, serving.served_name

    def check_model(name: str) -> None:
        if name != served_name:
            raise ValueError(f"model {name!r} is not served here; this server serves {served_name!r}")

    def envelope(cid: str, created: int, kind: str, choices: list[dict], **extra) -> dict:
        return {"id": cid, "object": kind, "created": created, "model": served_name, "choices": choices, **extra}

    async def answer(request: Request, stream: bool, prompt, params: SamplingParams, one_chunk: Callable[[str], dict],
                     last_chunk: Callable[[dict], dict], reply: Callable[[list[dict]], dict]):
        """A stream (n=1) of one_chunk(piece)... last_chunk(result), or the reply to all n results."""
        if not stream:
            results = await serving.results(request, await serving.submit_all([(prompt, params, None)]))
            return error(499, "client disconnected") if results is None else reply(results)
        if params.n != 1:
            raise ValueError("stream=true supports n=1 only")
        handles = await serving.submit_all([(prompt, params, None)])

        async def payloads() -> AsyncIterator[dict]:
            async for _, delta, result in serving.events(request, handles):
                yield one_chunk(delta.text) if result is None else last_chunk(result)

        return sse_response(payloads())

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": served_name, "object": "model", "owned_by": "sglbench",
                                            "created": 0, "root": rt.config.model_path}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        check_model(body.model)
        params = from_openai(body.model_dump(), max_new_tokens=body.max_tokens)
        cid, created, kind = f"cmpl-{uuid.uuid4().hex}", int(time.time()), "text_completion"
        echo = body.prompt if (body.echo and isinstance(body.prompt, str)) else ""

        def choice(i: int, text: str, reason: str | None) -> dict:
            return {"index": i, "text": text, "logprobs": None, "finish_reason": reason}

        return await answer(
            request, body.stream, body.prompt, params,
            lambda piece: envelope(cid, created, kind, [choice(0, piece, None)]),
            lambda r: envelope(cid, created, kind, [choice(0, "", _finish_reason(r["meta_info"]))], usage=_usage([r])),
            lambda rs: envelope(cid, created, kind, [choice(i, echo + r["text"], _finish_reason(r["meta_info"]))
                                                     for i, r in enumerate(rs)], usage=_usage(rs)))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        check_model(body.model)
        if not body.messages:
            raise ValueError("messages must not be empty")
        prompt = rt.tokenizer.apply_chat_template([m.model_dump() for m in body.messages], add_generation_prompt=True)
        params = from_openai(body.model_dump(), max_new_tokens=body.max_completion_tokens or body.max_tokens or 256)
        prompt_ids = rt.tokenizer.encode_plain(prompt)  # the template already holds bos
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        first = {"sent": False}

        def delta(piece: str) -> dict:
            out = {"content": piece} if first["sent"] else {"role": "assistant", "content": piece}
            first["sent"] = True
            return out

        def chunk(delta: dict, reason: str | None, **extra) -> dict:
            return envelope(cid, created, "chat.completion.chunk",
                            [{"index": 0, "delta": delta, "finish_reason": reason}], **extra)

        return await answer(
            request, body.stream, prompt_ids, params,
            lambda piece: chunk(delta(piece), None),
            lambda r: chunk({}, _finish_reason(r["meta_info"]), usage=_usage([r])),
            lambda rs: envelope(cid, created, "chat.completion",
                                [{"index": i, "message": {"role": "assistant", "content": r["text"]},
                                  "finish_reason": _finish_reason(r["meta_info"])} for i, r in enumerate(rs)],
                                usage=_usage(rs)))
