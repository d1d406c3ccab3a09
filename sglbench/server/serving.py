"""What the SGLang-native and the OpenAI routes share: submitting requests (n samples share their prompt's KV),
waiting for them while watching for the client to leave, streaming them as server-sent events, and aborting them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from sglbench.lang.reasoning import ReasoningFormat
from sglbench.runtime.request import RequestHandle, StreamDelta
from sglbench.runtime.runtime import Runtime
from sglbench.runtime.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

MAX_SAMPLES_PER_REQUEST = 256  # prompts x n of one HTTP request: a bound, so one body cannot flood the queue

# One request to submit: its prompt (text or token ids), sampling parameters (n samples) and request id.
Job = tuple[str | list[int], SamplingParams, str | None]


def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    """The error body every route answers with: {"error": {"message": ..., "type": ...}}."""
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)


def _sse(payload: Any) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def sse_response(payloads: AsyncIterator[Any]) -> StreamingResponse:
    """A text/event-stream of the payloads ("data: {...}" each), ended by "data: [DONE]" as SGLang and OpenAI do."""

    async def body() -> AsyncIterator[str]:
        try:
            async for payload in payloads:
                yield _sse(payload)
        except Exception as exc:  # headers are sent: the error goes in the stream, as SGLang does
            logger.exception("stream failed")
            yield _sse({"error": {"message": f"{type(exc).__name__}: {exc}", "type": "server_error"}})
        yield _sse("[DONE]")

    return StreamingResponse(body(), media_type="text/event-stream")


def _sample(params: SamplingParams, i: int) -> SamplingParams:
    """Sample i of params.n: n=1, seed + i when a seed is given (so the samples differ)."""
    return params.replace(n=1, seed=None if params.seed is None else params.seed + i)


@dataclass
class Serving:
    """A served runtime: its name, start time and the requests this server has running (by rid)."""

    rt: Runtime
    served_name: str
    started: float = field(default_factory=time.time)
    live: dict[str, RequestHandle] = field(default_factory=dict)
    incremental_streaming_output: bool = False  # SGLang's flag: stream chunks carry only their new logprobs
    tool_format: Any = None  # the ToolCallFormat chat completions parse tool calls with (None: no tools)
    reasoning_format: ReasoningFormat | None = None  # splits reasoning_content off chat answers (None: kept inline)
    metrics: Any = None  # a ServerMetrics that observes every request this server finishes (or None)

    def submit(self, prompt: str | list[int], params: SamplingParams, rid: str | None = None,
               stream: bool | None = False) -> RequestHandle:
        """Submit one request (n=1); ValueError if rid names a request still running here. Its result is
        observed into the metrics when it finishes, as a streamed one or not (stream=None: not at all)."""
        if rid is not None and rid in self.live:
            raise ValueError(f"rid {rid!r} is already in use by a running request")
        handle = self.rt.submit(prompt, params, rid=rid)
        self.live[handle.rid] = handle

        def finished(result: dict) -> None:
            self.live.pop(handle.rid, None)
            if self.metrics is not None and stream is not None:
                self.metrics.observe(result, is_streaming=stream)

        handle.add_done_callback(finished)
        return handle

    async def submit_all(self, jobs: list[Job], stream: bool = False) -> list[RequestHandle]:
        """Every job's params.n handles, job by job (sample i of a job with rid R is R_i). Prompts with n > 1 are
        prefilled first, together, so that their samples share the prompt's KV. If a job is refused, the
        requests already submitted are aborted."""
        total = sum(params.n for _, params, _ in jobs)
        if total > MAX_SAMPLES_PER_REQUEST:
            raise ValueError(f"this request asks for {total} samples (prompts x n); the most one request may ask "
                             f"for is {MAX_SAMPLES_PER_REQUEST}")
        handles: list[RequestHandle] = []
        try:
            if not self.rt.config.disable_radix_cache:
                handles = [self.submit(prompt, SamplingParams(max_new_tokens=0), stream=None)
                           for prompt, p, _ in jobs if p.n > 1]
                await asyncio.gather(*(h.async_result() for h in handles))
            handles = []
            for prompt, params, rid in jobs:
                rids = [rid] if params.n == 1 else [None if rid is None else f"{rid}_{i}" for i in range(params.n)]
                handles += [self.submit(prompt, _sample(params, i), r, stream) for i, r in enumerate(rids)]
        except BaseException:
            self.abort(handles)
            raise
        return handles

    def abort(self, handles: list[RequestHandle]) -> None:
        """Abort those of the handles that have not finished (their KV is freed)."""
        for handle in handles:
            if not handle.done():
                self.rt.abort(handle.rid)

    def abort_all(self) -> None:
        self.abort(list(self.live.values()))

    async def results(self, request: Request, handles: list[RequestHandle]) -> list[dict] | None:
        """Every handle's result, in order; None, with the unfinished ones aborted, if the client leaves first."""
        results = asyncio.gather(*(h.async_result() for h in handles))
        while True:
            done, _ = await asyncio.wait({results}, timeout=0.25)
            if done:
                return results.result()
            if await request.is_disconnected():
                self.abort(handles)
                results.cancel()
                results.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no log noise
                return None

    async def events(self, request: Request, handles: list[RequestHandle]
                     ) -> AsyncIterator[tuple[int, StreamDelta | None, dict | None]]:
        """(i, StreamDelta, None) as request i decodes and (i, None, result) when it finishes, the requests interleaved;
        those unfinished when the client leaves (or the stream is closed) are aborted."""
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, handle: RequestHandle) -> None:
            async for delta in handle.aiter_deltas():
                queue.put_nowait((i, delta, None))
            queue.put_nowait((i, None, await handle.async_result()))

        tasks = [asyncio.ensure_future(pump(i, h)) for i, h in enumerate(handles)]
        running = len(handles)
        try:
            while running:
                event = await queue.get()
                if await request.is_disconnected():
                    return
                running -= event[2] is not None
                yield event
        finally:
            for task in tasks:
                task.cancel()
            self.abort(handles)
