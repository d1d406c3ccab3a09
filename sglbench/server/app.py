"""`sglbench serve`: an HTTP face for an in-process Runtime.

SGLang-native endpoints (/generate, /flush_cache, /get_model_info, /get_server_info), the
OpenAI-compatible ones (/v1/models, /v1/completions, /v1/chat/completions, SSE streaming), and
/metrics plus /cache_snapshot so a notebook dashboard can attach to a served engine.
A client that disconnects cancels its request, which frees its KV slots.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from sglbench.runtime.request import RequestHandle
from sglbench.runtime.runtime import Runtime
from sglbench.runtime.sampling_params import SamplingParams, from_openai
from sglbench.server.protocol import ChatCompletionRequest, CompletionRequest, GenerateRequest

OPEN_PATHS = frozenset({"/health"})


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)


def _finish_reason(meta: dict) -> str:
    reason = (meta.get("finish_reason") or {}).get("type")
    return "length" if reason == "length" else "stop"


async def _result_or_cancel(rt: Runtime, request: Request, handle: RequestHandle) -> dict | None:
    """Wait for the result, aborting the request if the client goes away first (None then)."""
    result = asyncio.ensure_future(handle.async_result())
    while True:
        done, _ = await asyncio.wait({result}, timeout=0.25)
        if done:
            return result.result()
        if await request.is_disconnected():
            rt.abort(handle.rid)
            result.cancel()
            return None


def _sse(payload: Any) -> str:
    return f"data: {json.dumps(payload) if not isinstance(payload, str) else payload}\n\n"


def build_app(rt: Runtime, api_key: str | None = None, model_name: str | None = None) -> FastAPI:
    """The FastAPI application serving rt; with api_key set, every path but /health needs it."""
    app = FastAPI(title="sglbench", docs_url=None, redoc_url=None)
    served_name = model_name or Path(rt.config.model_path).name

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        if api_key and request.url.path not in OPEN_PATHS:
            bearer = request.headers.get("authorization", "")
            if bearer != f"Bearer {api_key}" and request.headers.get("x-api-key") != api_key:
                return _error(401, "missing or wrong API key", "authentication_error")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def bad_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
                             for e in exc.errors())
        return _error(400, problems)

    @app.exception_handler(ValueError)
    async def bad_value(_: Request, exc: ValueError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(TypeError)
    async def bad_type(_: Request, exc: TypeError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(NotImplementedError)
    async def unsupported(_: Request, exc: NotImplementedError) -> JSONResponse:  # a parameter this engine lacks
        return _error(400, str(exc))

    def submit(prompt, params: SamplingParams, rid: str | None = None) -> RequestHandle:
        return rt.submit(prompt, params, rid=rid)

    async def stream_events(request: Request, handle: RequestHandle, make_chunk, make_last) -> AsyncIterator[str]:
        try:
            async for piece in handle.aiter_text():
                if await request.is_disconnected():
                    rt.abort(handle.rid)
                    return
                yield _sse(make_chunk(piece))
            yield _sse(make_last(await handle.async_result()))
            yield _sse("[DONE]")
        finally:
            if not handle.done():  # the client went away mid-stream: free its KV
                rt.abort(handle.rid)

    # ------------------------------------------------------------------ SGLang native
    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/get_model_info")
    async def model_info() -> dict:
        info = rt.model_info()
        return {"model_path": info.model_path, "architecture": info.architecture, "is_generation": True,
                "context_length": info.context_length, "vocab_size": info.vocab_size}

    @app.get("/get_server_info")
    async def server_info() -> dict:
        config = {k: (str(v) if not isinstance(v, (int, float, str, bool, type(None))) else v)
                  for k, v in dataclasses.asdict(rt.config).items()}
        return {**config, "max_total_num_tokens": rt.model_info().max_total_tokens, "version": "sglbench"}

    @app.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush_cache() -> dict:
        return {"success": rt.flush_cache()}

    @app.get("/metrics")
    async def metrics() -> dict:
        m = rt.metrics()
        return {**dataclasses.asdict(m), "hit_rate": m.hit_rate}

    @app.get("/cache_snapshot")
    async def cache_snapshot() -> dict:
        return dataclasses.asdict(rt.cache_snapshot())

    @app.post("/generate")
    async def generate(body: GenerateRequest, request: Request):
        if (body.text is None) == (body.input_ids is None):
            raise ValueError("give exactly one of 'text' and 'input_ids'")
        params = body.sampling()
        if params.n != 1:
            raise ValueError("n > 1: send n requests (the radix cache shares their prompt)")
        handle = submit(body.text if body.text is not None else body.input_ids, params, body.rid)
        if body.stream:
            text = {"so_far": ""}

            def chunk(piece: str) -> dict:
                text["so_far"] += piece
                return {"text": text["so_far"], "meta_info": {"id": handle.rid}}

            return StreamingResponse(stream_events(request, handle, chunk, lambda result: result),
                                     media_type="text/event-stream")
        result = await _result_or_cancel(rt, request, handle)
        return result if result is not None else _error(499, "client disconnected")

    # ------------------------------------------------------------------ OpenAI compatible
    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": served_name, "object": "model", "owned_by": "sglbench",
                                            "created": 0, "root": rt.config.model_path}]}

    def check_model(name: str) -> None:
        if name != served_name:
            raise ValueError(f"model {name!r} is not served here; this server serves {served_name!r}")

    async def run_choices(request: Request, prompt, params: SamplingParams) -> list[dict] | None:
        """params.n samples, each its own request (seeds seed, seed + 1, ... when a seed is given)."""
        handles = [submit(prompt, params.replace(n=1, seed=None if params.seed is None else params.seed + i))
                   for i in range(params.n)]
        results = []
        for h in handles:
            r = await _result_or_cancel(rt, request, h)
            if r is None:
                for other in handles:
                    rt.abort(other.rid)
                return None
            results.append(r)
        return results

    def usage(results: list[dict]) -> dict:
        prompt = results[0]["meta_info"]["prompt_tokens"]
        completion = sum(r["meta_info"]["completion_tokens"] for r in results)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": results[0]["meta_info"]["cached_tokens"]}}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        check_model(body.model)
        params = from_openai(body.model_dump(), max_new_tokens=body.max_tokens)
        cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        echo = body.prompt if (body.echo and isinstance(body.prompt, str)) else ""
        if body.stream:
            if params.n != 1:
                raise ValueError("stream=true supports n=1 only")
            handle = submit(body.prompt, params)

            def chunk(piece: str) -> dict:
                return {"id": cid, "object": "text_completion", "created": created, "model": served_name,
                        "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": None}]}

            def last(result: dict) -> dict:
                return {"id": cid, "object": "text_completion", "created": created, "model": served_name,
                        "choices": [{"index": 0, "text": "", "logprobs": None,
                                     "finish_reason": _finish_reason(result["meta_info"])}],
                        "usage": usage([result])}

            return StreamingResponse(stream_events(request, handle, chunk, last), media_type="text/event-stream")
        results = await run_choices(request, body.prompt, params)
        if results is None:
            return _error(499, "client disconnected")
        return {"id": cid, "object": "text_completion", "created": created, "model": served_name,
                "choices": [{"index": i, "text": echo + r["text"], "logprobs": None,
                             "finish_reason": _finish_reason(r["meta_info"])} for i, r in enumerate(results)],
                "usage": usage(results)}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        check_model(body.model)
        if not body.messages:
            raise ValueError("messages must not be empty")
        prompt = rt.tokenizer.apply_chat_template([m.model_dump() for m in body.messages], add_generation_prompt=True)
        max_tokens = body.max_completion_tokens or body.max_tokens or 256
        params = from_openai(body.model_dump(), max_new_tokens=max_tokens)
        prompt_ids = rt.tokenizer.encode_plain(prompt)  # the template already holds bos
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            if params.n != 1:
                raise ValueError("stream=true supports n=1 only")
            handle = submit(prompt_ids, params)
            first = {"sent": False}

            def chunk(piece: str) -> dict:
                delta = {"content": piece} if first["sent"] else {"role": "assistant", "content": piece}
                first["sent"] = True
                return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": served_name,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}

            def last(result: dict) -> dict:
                return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": served_name,
                        "choices": [{"index": 0, "delta": {}, "finish_reason": _finish_reason(result["meta_info"])}],
                        "usage": usage([result])}

            return StreamingResponse(stream_events(request, handle, chunk, last), media_type="text/event-stream")
        results = await run_choices(request, prompt_ids, params)
        if results is None:
            return _error(499, "client disconnected")
        return {"id": cid, "object": "chat.completion", "created": created, "model": served_name,
                "choices": [{"index": i, "message": {"role": "assistant", "content": r["text"]},
                             "finish_reason": _finish_reason(r["meta_info"])} for i, r in enumerate(results)],
                "usage": usage(results)}

    return app


def serve(model_path: str | None, host: str = "127.0.0.1", port: int = 30000, api_key: str | None = None,
          **runtime_kwargs) -> None:
    """Start a Runtime and serve it until interrupted (loopback by default)."""
    import uvicorn

    rt = Runtime(model_path, **runtime_kwargs)
    try:
        uvicorn.run(build_app(rt, api_key=api_key), host=host, port=port, log_level="warning")
    finally:
        rt.shutdown()
