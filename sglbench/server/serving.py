"""What the SGLang-native and the OpenAI routes share: submitting requests (n samples share their prompt's KV) off
the event loop, waiting for them while watching for the client to leave and for the engine to stop, streaming
them as server-sent events, aborting them, and the server's state (serving, shutting down, engine stopped).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from sglbench.lang.reasoning import ReasoningFormat
from sglbench.runtime.request import RequestHandle, StreamDelta
from sglbench.runtime.runtime import Runtime
from sglbench.runtime.sampling_params import SamplingParams, check_no_lone_surrogate
from sglbench.server.limits import ServerLimits, raise_hint

logger = logging.getLogger(__name__)

MAX_SAMPLES_PER_REQUEST = ServerLimits.max_samples_per_request  # the default bound on prompts x n of one request
POLL_S = 0.25  # how often a waiting route looks for its client leaving and the engine stopping
MAX_SEED = 2**63 - 1  # seeds are 64-bit signed integers

# One request to submit: its prompt (text or token ids), sampling parameters (n samples) and request id.
Job = tuple[str | list[int], SamplingParams, str | None]


class RequestFailed(Exception):
    """A request the server cannot serve for a reason of its own (503: shutting down, engine stopped), or one
    the engine ended with an error status: answered with `status` and the message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def error_kind(status: int) -> str:
    """The error body's "type" for an HTTP status, as OpenAI-style clients read it."""
    return {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error",
            503: "service_unavailable"}.get(
        status, "invalid_request_error" if status < 500 else "server_error")


def error(status: int, message: str, kind: str | None = None) -> JSONResponse:
    """The error body every route answers with: {"error": {"message": ..., "type": ...}}."""
    return JSONResponse({"error": {"message": message, "type": kind or error_kind(status)}}, status_code=status)


def engine_unavailable(rt: Runtime) -> str | None:
    """Why rt takes no request, from its health record: its reason while it shuts down, "engine stopped: <why>"
    once its engine thread stopped; None while it runs."""
    health = rt.health()
    if health.ok:
        return None
    if health.state == "shutting_down":
        return health.reason or "the runtime is shutting down"
    return f"engine stopped: {health.reason or 'the engine thread is not running'}"


def public_model_name(model_path: str) -> str:
    """The name a client sees for a model folder, never its path on this machine: "org/name" for a Hugging
    Face cache folder (.../models--org--name/snapshots/HASH), else the folder's name."""
    parts = Path(model_path).parts
    for part in reversed(parts):
        if part.startswith("models--"):
            return part.removeprefix("models--").replace("--", "/")
    return Path(model_path).name or "model"


def _sse(payload: Any) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def sse_response(payloads: AsyncIterator[Any]) -> StreamingResponse:
    """A text/event-stream of the payloads ("data: {...}" each), ended by "data: [DONE]" as SGLang and OpenAI do.
    A failure after the headers went out is an error event before the [DONE], as SGLang sends it."""

    async def body() -> AsyncIterator[str]:
        try:
            async for payload in payloads:
                yield _sse(payload)
        except RequestFailed as exc:
            yield _sse({"error": {"message": str(exc), "type": error_kind(exc.status), "code": exc.status}})
        except Exception as exc:
            logger.exception("stream failed")
            yield _sse({"error": {"message": f"{type(exc).__name__}: {exc}", "type": "server_error", "code": 500}})
        yield _sse("[DONE]")

    return StreamingResponse(body(), media_type="text/event-stream")


def _sample(params: SamplingParams, i: int) -> SamplingParams:
    """Sample i of params.n: n=1, seed + i when a seed is given (so the samples differ, as `Runtime.generate`)."""
    return params.replace(n=1, seed=None if params.seed is None else params.seed + i)


def _check_sample_seeds(params: SamplingParams) -> None:
    """Sample i takes seed + i, which must stay a 64-bit seed (as `Runtime.generate` refuses it)."""
    if params.seed is not None and params.seed + params.n > MAX_SEED + 1:
        raise ValueError(f"seed={params.seed} with n={params.n}: sample i takes seed + i, which must stay below "
                         "2**63")


class _Submission:
    """The handles one HTTP request has submitted so far, shared with the worker thread submitting them; once
    `close()`d (the route gave up) the worker aborts what it submits and stops."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.handles: list[RequestHandle] = []
        self.closed = False

    def add(self, handle: RequestHandle) -> bool:
        with self._lock:
            if not self.closed:
                self.handles.append(handle)
            return not self.closed

    def close(self) -> list[RequestHandle]:
        with self._lock:
            self.closed = True
            return list(self.handles)


@dataclass
class Serving:
    """A served runtime: its name, limits, start time, the requests this server has running (by rid) and its
    state (`closing`: why it refuses new work while in-flight requests drain)."""

    rt: Runtime
    served_name: str
    limits: ServerLimits = field(default_factory=ServerLimits)
    started: float = field(default_factory=time.time)
    live: dict[str, RequestHandle] = field(default_factory=dict)
    incremental_streaming_output: bool = False  # SGLang's flag: stream chunks carry only their new logprobs
    tool_format: Any = None  # the ToolCallFormat chat completions parse tool calls with (None: no tools)
    reasoning_format: ReasoningFormat | None = None  # splits reasoning_content off chat answers (None: kept inline)
    metrics: Any = None  # a ServerMetrics that observes every request this server finishes (or None)
    show_model_path: bool = False  # /model_info and /server_info give the model folder's path, not only its name
    closing: str | None = None  # set by `begin_shutdown`: new requests are refused with this reason
    drain_until: float = float("inf")  # time.monotonic() after which requests still waiting end with `closing`
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _reserved: set[str] = field(default_factory=set, repr=False)  # client rids being submitted right now

    # ------------------------------------------------------------------------ state
    def unavailable(self) -> str | None:
        """Why this server takes no new request now (shutting down, engine stopped), or None."""
        return engine_unavailable(self.rt) or self.closing

    def begin_shutdown(self, reason: str = "the server is shutting down", grace_s: float = 10.0) -> None:
        """Refuse new requests from now on; the ones in flight get grace_s seconds to finish, then are aborted
        and answered with reason. Only sets two fields: safe from any thread, and from a signal handler."""
        self.drain_until = min(self.drain_until, time.monotonic() + grace_s)
        if self.closing is None:
            self.closing = reason

    def _stranded(self) -> str | None:
        """Why requests still waiting will never be answered by the engine (it stopped, the drain ended)."""
        why = engine_unavailable(self.rt)
        if why and not self.rt.is_running:  # shutting down: the runtime still finishes what is in flight
            return why
        return self.closing if self.closing and time.monotonic() >= self.drain_until else None

    def _failure(self, result: dict) -> RequestFailed | None:
        """A result the client must get as an error rather than an answer: an abort the engine marked with an
        HTTP status (as SGLang's FINISH_ABORT), or any abort while the server shuts down or its engine stops."""
        reason = result["meta_info"].get("finish_reason") or {}
        if reason.get("type") != "abort":
            return None
        message = str(reason.get("message") or "aborted")
        status = reason.get("status_code")
        if isinstance(status, int) and 400 <= status < 600:
            return RequestFailed(status, message)
        why = self.closing or self.unavailable()
        if not why:
            return None
        return RequestFailed(503, why if message in why else f"{why}: {message}")

    # ------------------------------------------------------------------------ submission
    def prompt_ids(self, prompt: str | list[int]) -> list[int]:
        """prompt as token ids (text is tokenized here: call off the event loop), within the prompt token limit."""
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt is empty: give a non-empty text or input_ids")
            check_no_lone_surrogate(prompt, "prompt")
            prompt = self.rt.tokenizer.encode(prompt)
        limit = self.limits.max_prompt_tokens
        if limit is not None and len(prompt) > limit:
            raise ValueError(f"prompt has {len(prompt)} tokens; the most this server takes is {limit}; "
                             f"{raise_hint('max_prompt_tokens')}")
        return prompt

    def submit(self, prompt: str | list[int], params: SamplingParams, rid: str | None = None,
               stream: bool | None = False) -> RequestHandle:
        """Submit one request (n=1) from any thread (a text prompt is tokenized and a grammar compiled on the
        calling thread: not the event loop). ValueError if rid names a request running here, RequestFailed (503)
        while the server shuts down or its engine is stopped. Its result is observed into the metrics when it
        finishes, as a streamed one or not (stream=None: not at all)."""
        why = self.unavailable()
        if why:
            raise RequestFailed(503, why)
        ids = self.prompt_ids(prompt)
        with self._lock:
            if rid is not None and (rid in self.live or rid in self._reserved):
                raise ValueError(f"rid {rid!r} is already in use by a running request")
            if rid is not None:
                self._reserved.add(rid)
        try:
            handle = self.rt.submit(ids, params, rid=rid)
        except RuntimeError as exc:  # the runtime refuses work once it stops
            why = self.unavailable()
            if why:
                raise RequestFailed(503, why) from exc
            raise
        finally:
            with self._lock:
                self._reserved.discard(rid)
        with self._lock:
            self.live[handle.rid] = handle

        def finished(result: dict) -> None:
            with self._lock:
                self.live.pop(handle.rid, None)
            if self.metrics is not None and stream is not None:
                self.metrics.observe(result, is_streaming=stream)

        handle.add_done_callback(finished)
        return handle

    def _submit_each(self, requests: Iterable[tuple[list[int], SamplingParams, str | None, bool | None]],
                     submission: _Submission) -> None:
        """Submit requests in order into submission (runs on a worker thread); stop once it is closed."""
        for ids, params, rid, stream in requests:
            if submission.closed:
                return
            handle = self.submit(ids, params, rid, stream)
            if not submission.add(handle):
                self.abort([handle])
                return

    async def submit_all(self, jobs: list[Job], stream: bool = False) -> list[RequestHandle]:
        """Every job's params.n handles, job by job (sample i of a job with rid R is R_i), tokenized and
        submitted on a worker thread so the event loop stays free. Prompts with n > 1 are prefilled first,
        together, so that their samples share the prompt's KV. If a job is refused, the requests already
        submitted are aborted."""
        total = sum(params.n for _, params, _ in jobs)
        limit = self.limits.max_samples_per_request
        if total > limit:
            raise ValueError(f"this request asks for {total} samples (prompts x n); the most one request may ask "
                             f"for is {limit}; {raise_hint('max_samples_per_request')}")
        for _, params, _ in jobs:
            _check_sample_seeds(params)
        why = self.unavailable()
        if why:
            raise RequestFailed(503, why)
        prepared = await run_in_threadpool(lambda: [(self.prompt_ids(prompt), params, rid)
                                                    for prompt, params, rid in jobs])
        submission = _Submission()
        try:
            warm = [(ids, SamplingParams(max_new_tokens=0), None, None) for ids, p, _ in prepared if p.n > 1]
            if warm and not self.rt.config.disable_radix_cache:
                await run_in_threadpool(self._submit_each, warm, submission)
                await self._wait(submission.handles, None)
            submission = _Submission()
            samples = []
            for ids, params, rid in prepared:
                rids = [rid] if params.n == 1 else [None if rid is None else f"{rid}_{i}" for i in range(params.n)]
                samples += [(ids, _sample(params, i), r, stream) for i, r in enumerate(rids)]
            await run_in_threadpool(self._submit_each, samples, submission)
        except BaseException:
            self.abort(submission.close())
            raise
        return submission.handles

    def abort(self, handles: list[RequestHandle]) -> None:
        """Abort those of the handles that have not finished (their KV is freed)."""
        for handle in handles:
            if not handle.done():
                self.rt.abort(handle.rid)

    def abort_all(self) -> None:
        with self._lock:
            handles = list(self.live.values())
        self.abort(handles)

    # ------------------------------------------------------------------------ waiting
    async def results(self, request: Request, handles: list[RequestHandle]) -> list[dict] | None:
        """Every handle's result, in order; None, with the unfinished ones aborted, if the client leaves first.
        RequestFailed when the engine stops or the server's drain ends first, or a result is an error (see
        `_failure`)."""
        return await self._wait(handles, request)

    async def _wait(self, handles: list[RequestHandle], request: Request | None) -> list[dict] | None:
        """`results`; with request None, no client to watch."""
        results = asyncio.gather(*(h.async_result() for h in handles))
        try:
            while True:
                done, _ = await asyncio.wait({results}, timeout=POLL_S)
                if done:
                    failures = [f for f in map(self._failure, results.result()) if f is not None]
                    if failures:
                        raise failures[0]
                    return results.result()
                if request is not None and await request.is_disconnected():
                    return None
                why = self._stranded()
                if why and not all(h.done() for h in handles):  # finished ones answer with their own reason
                    raise RequestFailed(503, why)
        finally:
            if not results.done():
                self.abort(handles)
                results.cancel()
                results.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no log noise

    async def events(self, request: Request, handles: list[RequestHandle]
                     ) -> AsyncIterator[tuple[int, StreamDelta | None, dict | None]]:
        """(i, StreamDelta, None) as request i decodes and (i, None, result) when it finishes, the requests interleaved;
        those unfinished when the client leaves (or the stream is closed) are aborted. RequestFailed as in
        `results`, for the stream's error event."""
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, handle: RequestHandle) -> None:
            async for delta in handle.aiter_deltas():
                queue.put_nowait((i, delta, None))
            queue.put_nowait((i, None, await handle.async_result()))

        tasks = [asyncio.ensure_future(pump(i, h)) for i, h in enumerate(handles)]
        running = len(handles)
        try:
            while running:
                try:
                    event = await asyncio.wait_for(queue.get(), POLL_S)
                except asyncio.TimeoutError:
                    event = None
                if await request.is_disconnected():
                    return
                why = self._stranded()
                if why and not all(h.done() for h in handles):  # finished ones stream their own ending
                    raise RequestFailed(503, why)
                if event is None:
                    continue
                if event[2] is not None:
                    failure = self._failure(event[2])
                    if failure is not None:
                        raise failure
                    running -= 1
                yield event
        finally:
            for task in tasks:
                task.cancel()
            self.abort(handles)
