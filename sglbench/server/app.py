"""`sglbench serve`: an HTTP face for an in-process Runtime.

SGLang's native API as SGLang 0.5.23 defines it (/generate with batches, n samples and SSE streaming,
/server_info, /model_info, /health_generate, /abort_request, /flush_cache: `sglang_routes.py`), the
OpenAI-compatible one (/v1/models, /v1/completions, /v1/chat/completions: `openai_routes.py`), /metrics
in Prometheus text under SGLang's metric names (`metrics.py`), and /engine_metrics (the engine's
`EngineMetrics` as JSON) plus /cache_snapshot so a notebook dashboard can attach to a served engine.
A client that disconnects cancels its requests, which frees their KV slots. Bad input is a 400
{"error": {"message": ...}} that names the field; a client over one of the server's limits (`limits.py`) gets a
413/400/429 naming the limit and the flag that raises it. Tokenizing and grammar compiling run on worker threads,
never on the event loop. While the engine thread is stopped every route answers 503 with the reason; on
SIGTERM/SIGINT `serve` refuses new work, lets in-flight requests finish for a while, then exits.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import threading
import weakref

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from sglbench.lang.reasoning import REASONING_FORMATS, ReasoningFormat, reasoning_format
from sglbench.runtime.runtime import Runtime
from sglbench.runtime.sampling_params import RequestLimits
from sglbench.server.limits import BodyLimit, ConcurrencyLimit, ServerLimits
from sglbench.server.metrics import ServerMetrics
from sglbench.server.openai_routes import add_openai_routes
from sglbench.server.protocol import lone_surrogate_problem
from sglbench.server.serving import RequestFailed, Serving, error, public_model_name
from sglbench.server.sglang_routes import add_sglang_routes
from sglbench.server.tool_calls import detect_tool_call_format, tool_call_format

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/health_generate"})  # as SGLang: health checks need no API key
ENGINE_STOP_WAIT_S = 5.0  # how long `serve` waits for the engine thread to stop before the process exits anyway


def _add_error_handlers(app: FastAPI, serving: Serving) -> None:
    """Bad bodies, values and types, and parameters this engine lacks: a 400 whose message names them. A server
    that cannot serve (shutting down, engine stopped or not answering): 503 with the reason."""

    @app.exception_handler(RequestValidationError)
    async def bad_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
                             for e in exc.errors())
        return error(400, problems)

    async def bad_request(_: Request, exc: Exception) -> JSONResponse:
        return error(400, str(exc))

    for kind in (ValueError, TypeError, NotImplementedError):  # NotImplementedError: a parameter this engine lacks
        app.add_exception_handler(kind, bad_request)

    @app.exception_handler(RequestFailed)
    async def failed(_: Request, exc: RequestFailed) -> JSONResponse:
        return error(exc.status, str(exc))

    @app.exception_handler(TimeoutError)
    async def engine_silent(_: Request, exc: TimeoutError) -> JSONResponse:
        return error(503, f"the engine did not answer in time: {exc or 'timed out'}")

    @app.exception_handler(RuntimeError)
    async def engine_gone(_: Request, exc: RuntimeError) -> JSONResponse:
        why = serving.unavailable()  # the engine stopped between the route's check and its call
        if why:
            return error(503, why)
        raise exc  # a fault of this server: a 500, logged with its traceback, as without this handler


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


class _RefuseWhenUnavailable:
    """Plain ASGI middleware answering 503 with the reason, at once, on every path but the health checks while
    the server cannot take work (its engine thread stopped, or it is shutting down)."""

    def __init__(self, app: ASGIApp, serving: Serving):
        self.app, self.serving = app, serving

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        why = self.serving.unavailable() if scope["type"] == "http" and scope["path"] not in OPEN_PATHS else None
        if why:
            await error(503, why)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _client_of(api_key: str | None):
    """Who a request counts against for the in-flight limit: the API key when the server has one (every client
    that passed the check holds it), else the client's address."""
    if api_key:
        return lambda scope: "api-key"
    return lambda scope: (scope.get("client") or ("unknown",))[0]


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
              reasoning_parser: str | None = None, limits: ServerLimits | None = None,
              show_model_path: bool = False) -> FastAPI:
    """The FastAPI application serving rt; with api_key set, every path but the health checks needs it.
    incremental_streaming_output (SGLang's server flag): /generate stream chunks carry only the logprob
    entries new since the previous chunk, instead of all so far. tool_call_parser / reasoning_parser (SGLang's
    flags): how chat completions read tool calls and reasoning; None: from the model folder, "none": off.
    limits: what one request and one client may ask (ServerLimits' defaults when None). show_model_path:
    /model_info and /server_info report the model folder's path, as SGLang does (SGLang's clients on this
    machine load the tokenizer from it), instead of only its name. The `Serving` behind the routes is
    `app.state.serving`."""
    _check_api_key(api_key)
    limits = limits or ServerLimits()
    tools, reasoning = _chat_formats(rt, tool_call_parser, reasoning_parser)
    app = FastAPI(title="sglbench", docs_url=None, redoc_url=None)
    app.state.serving = serving = Serving(
        rt, model_name or public_model_name(rt.config.model_path), limits=limits,
        incremental_streaming_output=incremental_streaming_output, tool_format=tools, reasoning_format=reasoning,
        show_model_path=show_model_path)
    # Runs before the runtime aborts its requests: they are answered 503 with its reason, new ones refused.
    # A weak reference: an app dropped while its runtime lives on (a notebook's servers) is not kept.
    serving_ref = weakref.ref(serving)
    rt.on_shutdown(lambda: (s := serving_ref()) is None or s.begin_shutdown("the runtime is shutting down", 0.0))

    # Outermost last: the key is checked first, then the engine's state, the client's requests in flight, and
    # last the body (read and counted before anything parses it).
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, check=lone_surrogate_problem)
    app.add_middleware(ConcurrencyLimit, limit=limits.max_concurrent_requests, client_of=_client_of(api_key),
                       exempt=OPEN_PATHS)
    app.add_middleware(_RefuseWhenUnavailable, serving=serving)
    if api_key:
        app.add_middleware(_RequireKey, api_key=api_key)

    _add_error_handlers(app, serving)

    @app.get("/health")
    async def health() -> Response:
        """200 while the engine runs; 503 with the reason once its thread stopped or the server shuts down."""
        why = serving.unavailable()
        return error(503, why) if why else JSONResponse({"status": "ok"})

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
        snapshot = await run_in_threadpool(rt.cache_snapshot)  # taken on the engine thread: not on the loop
        return dataclasses.asdict(snapshot)

    add_sglang_routes(app, serving)
    add_openai_routes(app, serving)
    return app


def _draining_server(config, serving: Serving, grace_s: float):
    """uvicorn's Server whose own SIGTERM/SIGINT handling also starts `Serving.begin_shutdown`: new requests get
    503 at once, in-flight ones get grace_s seconds, then end with the reason."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            serving.begin_shutdown("the server is shutting down", grace_s)  # sets two fields: signal-safe
            super().handle_exit(sig, frame)

    return DrainingServer(config)


def _stop_within(rt: Runtime, timeout_s: float) -> None:
    """rt.shutdown(), waited for at most timeout_s: a stuck engine thread (a daemon) must not keep the process."""
    stopper = threading.Thread(target=rt.shutdown, name="sglbench-shutdown", daemon=True)
    stopper.start()
    stopper.join(timeout_s)
    if stopper.is_alive():
        logger.warning("the engine did not stop within %.0f s; exiting without it", timeout_s)


def serve(model_path: str | None, host: str = "127.0.0.1", port: int = 30000, api_key: str | None = None,
          incremental_streaming_output: bool = False, tool_call_parser: str | None = None,
          reasoning_parser: str | None = None, limits: ServerLimits | None = None, shutdown_timeout: float = 10.0,
          show_model_path: bool = False, request_limits: RequestLimits | None = None, **runtime_kwargs) -> None:
    """Start a Runtime and serve it until SIGTERM/SIGINT (loopback by default). limits: what one request and
    one client may ask of the server; request_limits: what one request may ask of the runtime (stop strings,
    top logprobs); their defaults when None. On the signal new requests get 503 and in-flight ones have
    shutdown_timeout seconds to finish before they are aborted (answered 503 with the reason); then uvicorn
    raises the signal again: SIGTERM ends the process, SIGINT is a KeyboardInterrupt once the engine has had
    ENGINE_STOP_WAIT_S to stop (a stuck engine thread does not keep the process)."""
    import uvicorn

    _check_api_key(api_key)  # before the model loads
    if tool_call_parser not in (None, "none"):
        tool_call_format(tool_call_parser)  # a wrong name fails before the model loads
    if reasoning_parser not in (None, "none"):
        reasoning_format(reasoning_parser)
    if shutdown_timeout < 0:
        raise ValueError(f"shutdown_timeout must be >= 0 seconds, got {shutdown_timeout}")
    rt = Runtime(model_path, limits=request_limits, **runtime_kwargs)
    try:
        app = build_app(rt, api_key=api_key, incremental_streaming_output=incremental_streaming_output,
                        tool_call_parser=tool_call_parser, reasoning_parser=reasoning_parser, limits=limits,
                        show_model_path=show_model_path)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                                timeout_graceful_shutdown=shutdown_timeout + ENGINE_STOP_WAIT_S)
        _draining_server(config, app.state.serving, shutdown_timeout).run()
    finally:
        _stop_within(rt, ENGINE_STOP_WAIT_S)
