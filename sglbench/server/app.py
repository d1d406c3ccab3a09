"""`sglbench serve`: an HTTP face for an in-process Runtime.

SGLang's native API as SGLang 0.5.23 defines it (/generate with batches, n samples and SSE streaming,
/server_info, /model_info, /health_generate, /abort_request, /flush_cache: `sglang_routes.py`), the
OpenAI-compatible one (/v1/models, /v1/completions, /v1/chat/completions: `openai_routes.py`), /metrics
in Prometheus text under SGLang's metric names (`metrics.py`), and /engine_metrics (the engine's
`EngineMetrics` as JSON) plus /cache_snapshot so a notebook dashboard can attach to a served engine.
A client that disconnects cancels its requests, which frees their KV slots. Bad input is a 400
{"error": {"message": ...}} that names the field.
"""

from __future__ import annotations

import dataclasses
import hmac
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from sglbench.lang.reasoning import REASONING_FORMATS, ReasoningFormat, reasoning_format
from sglbench.runtime.runtime import Runtime
from sglbench.server.metrics import ServerMetrics
from sglbench.server.openai_routes import add_openai_routes
from sglbench.server.serving import Serving, error
from sglbench.server.sglang_routes import add_sglang_routes
from sglbench.server.tool_calls import detect_tool_call_format, tool_call_format

OPEN_PATHS = frozenset({"/health", "/health_generate"})  # as SGLang: health checks need no API key


def _add_error_handlers(app: FastAPI) -> None:
    """Bad bodies, values and types, and parameters this engine lacks: a 400 whose message names them."""

    @app.exception_handler(RequestValidationError)
    async def bad_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
                             for e in exc.errors())
        return error(400, problems)

    async def bad_request(_: Request, exc: Exception) -> JSONResponse:
        return error(400, str(exc))

    for kind in (ValueError, TypeError, NotImplementedError):  # NotImplementedError: a parameter this engine lacks
        app.add_exception_handler(kind, bad_request)


def _check_api_key(api_key: str | None) -> None:
    """An empty key would silently serve without authentication: refuse it."""
    if api_key is not None and not api_key.strip():
        raise ValueError("api_key is empty: give a real key, or none to serve without authentication")


class _RequireKey:
    """Plain ASGI middleware answering 401 without the key. Not `@app.middleware("http")`: Starlette's
    BaseHTTPMiddleware hides the client's disconnect from the route, so a non-streaming request went on
    decoding after its client had left."""

    def __init__(self, app: ASGIApp, api_key: str):
        self.app, self.api_key = app, api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS and not _key_matches(Request(scope),
                                                                                               self.api_key):
            await error(401, "missing or wrong API key", "authentication_error")(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _key_matches(request: Request, api_key: str) -> bool:
    """Whether the request carries the key ('Authorization: Bearer KEY' or 'X-API-Key: KEY'), compared in
    constant time so response timing tells nothing about how much of a guess was right."""
    expected = api_key.encode()
    bearer = request.headers.get("authorization", "")
    given = [bearer[7:] if bearer[:7].lower() == "bearer " else "", request.headers.get("x-api-key", "")]
    return any(hmac.compare_digest(g.encode(), expected) for g in given)


def _chat_formats(rt: Runtime, tool_call_parser: str | None, reasoning_parser: str | None
                  ) -> tuple[object | None, ReasoningFormat | None]:
    """The tool-call and reasoning formats chat completions read: the named ones, else what the model folder
    and its chat template show ("none" turns either off). A template that writes `<think>` reads reasoning as
    Qwen3 does."""
    template = rt.tokenizer.chat_template or ""
    if tool_call_parser is None:
        tool_call_parser = detect_tool_call_format(rt.config.model_path, template)
    tools = None if tool_call_parser in (None, "none") else tool_call_format(tool_call_parser)
    if reasoning_parser is None:
        reasoning = REASONING_FORMATS["qwen3"] if "<think>" in template else None
    else:
        reasoning = None if reasoning_parser == "none" else reasoning_format(reasoning_parser)
    return tools, reasoning


def build_app(rt: Runtime, api_key: str | None = None, model_name: str | None = None,
              incremental_streaming_output: bool = False, tool_call_parser: str | None = None,
              reasoning_parser: str | None = None) -> FastAPI:
    """The FastAPI application serving rt; with api_key set, every path but the health checks needs it.
    incremental_streaming_output (SGLang's server flag): /generate stream chunks carry only the logprob
    entries new since the previous chunk, instead of all so far. tool_call_parser / reasoning_parser (SGLang's
    flags): how chat completions read tool calls and reasoning; None: from the model folder, "none": off."""
    _check_api_key(api_key)
    tools, reasoning = _chat_formats(rt, tool_call_parser, reasoning_parser)
    app = FastAPI(title="sglbench", docs_url=None, redoc_url=None)
    serving = Serving(rt, model_name or Path(rt.config.model_path).name,
                      incremental_streaming_output=incremental_streaming_output, tool_format=tools,
                      reasoning_format=reasoning)

    if api_key:
        app.add_middleware(_RequireKey, api_key=api_key)

    _add_error_handlers(app)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    # Prometheus metrics: engine gauges read at scrape time; each finished request is observe()d into it.
    app.state.server_metrics = server_metrics = serving.metrics = ServerMetrics(rt, serving.served_name)

    @app.get("/metrics")
    async def metrics() -> Response:
        body, content_type = server_metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/engine_metrics")
    async def engine_metrics() -> dict:
        m = rt.metrics()
        return {**dataclasses.asdict(m), "hit_rate": m.hit_rate}

    @app.get("/cache_snapshot")
    async def cache_snapshot() -> dict:
        return dataclasses.asdict(rt.cache_snapshot())

    add_sglang_routes(app, serving)
    add_openai_routes(app, serving)
    return app


def serve(model_path: str | None, host: str = "127.0.0.1", port: int = 30000, api_key: str | None = None,
          incremental_streaming_output: bool = False, tool_call_parser: str | None = None,
          reasoning_parser: str | None = None, **runtime_kwargs) -> None:
    """Start a Runtime and serve it until interrupted (loopback by default)."""
    import uvicorn

    _check_api_key(api_key)  # before the model loads
    if tool_call_parser not in (None, "none"):
        tool_call_format(tool_call_parser)  # a wrong name fails before the model loads
    if reasoning_parser not in (None, "none"):
        reasoning_format(reasoning_parser)
    rt = Runtime(model_path, **runtime_kwargs)
    try:
        app = build_app(rt, api_key=api_key, incremental_streaming_output=incremental_streaming_output,
                        tool_call_parser=tool_call_parser, reasoning_parser=reasoning_parser)
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        rt.shutdown()
