"""One generation request as the engine tracks it, and the handle through which its caller reads it."""

from __future__ import annotations

import asyncio
import enum
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from sglbench.runtime.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


class ReqState(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"  # admitted: prefilling (maybe over several chunks) or decoding
    FINISHED = "finished"


@dataclass
class Timings:
    """Wall-clock times (time.time()) of a request's milestones; None until reached."""

    arrived: float = field(default_factory=time.time)
    scheduled: float | None = None
    first_token: float | None = None
    finished: float | None = None


@dataclass(eq=False)
class Request:
    rid: str
    input_ids: list[int]
    params: SamplingParams
    output_ids: list[int] = field(default_factory=list)
    state: ReqState = ReqState.WAITING
    timings: Timings = field(default_factory=Timings)
    # KV bookkeeping (engine thread only)
    row: int = -1  # row in the request-to-token table while admitted
    kv_len: int = 0  # tokens of fill_ids whose K/V sit in the pool
    alloc_len: int = 0  # table entries holding slots (>= kv_len while a step is in flight)
    prefix_len: int = 0  # leading tokens shared with the radix cache at admission (not owned)
    last_node: Any = None  # locked radix node covering the prefix
    cached_tokens: int = 0
    num_retractions: int = 0
    # outputs
    text: str = ""
    text_stale: bool = False  # output tokens came since `text` was decoded (OutputProcessor.settle_text)
    emitted_len: int = 0
    emitted_tokens: int = 0  # output tokens whose logprob entries went out with a streamed piece
    finish_reason: dict | None = None
    input_token_logprobs: list = field(default_factory=list)
    output_token_logprobs: list = field(default_factory=list)
    output_top_logprobs: list = field(default_factory=list)
    # per prompt / output position, [(logprob, id)] for the ids in params.token_ids_logprob
    input_token_ids_logprobs: list = field(default_factory=list)
    output_token_ids_logprobs: list = field(default_factory=list)
    generator: torch.Generator | None = None
    output_counts: torch.Tensor | None = None
    logit_bias: tuple[torch.Tensor, torch.Tensor] | None = None  # params.logit_bias as (ids [k], biases [k])
    handle: RequestHandle | None = None
    program_id: str | None = None  # set by the language layer for telemetry

    @property
    def fill_ids(self) -> list[int]:
        """Every token whose K/V the request needs: prompt then output."""
        return self.input_ids + self.output_ids

    @property
    def prefill_len(self) -> int:
        """Tokens to compute before decoding: the prompt, or for a resumed request everything but its
        last sampled token (whose K/V the next decode step computes)."""
        return len(self.input_ids) + max(len(self.output_ids) - 1, 0)

    @property
    def wants_prompt_logprobs(self) -> bool:
        return self.params.return_logprob and self.params.logprob_start_len >= 0

    @property
    def finished(self) -> bool:
        return self.state is ReqState.FINISHED

    def meta_info(self) -> dict:
        t = self.timings
        meta = {
            "id": self.rid,
            "prompt_tokens": len(self.input_ids),
            "completion_tokens": len(self.output_ids),
            "cached_tokens": self.cached_tokens,
            "finish_reason": self.finish_reason,
            "num_retractions": self.num_retractions,
            "arrived": t.arrived,
            "scheduled": t.scheduled,
            "first_token": t.first_token,
            "finished": t.finished,
            "queue_time": (t.scheduled - t.arrived) if t.scheduled else None,
            "ttft": (t.first_token - t.arrived) if t.first_token else None,
            "e2e_latency": (t.finished - t.arrived) if t.finished else None,
        }
        if self.params.return_logprob:
            meta["input_token_logprobs"] = list(self.input_token_logprobs)
            meta["output_token_logprobs"] = list(self.output_token_logprobs)
            meta["output_top_logprobs"] = list(self.output_top_logprobs)
            if self.params.token_ids_logprob:
                meta["input_token_ids_logprobs"] = list(self.input_token_ids_logprobs)
                meta["output_token_ids_logprobs"] = list(self.output_token_ids_logprobs)
        return meta

    def result(self) -> dict:
        return {"text": self.text, "output_ids": list(self.output_ids), "meta_info": self.meta_info()}

    def abandoned_result(self, message: str) -> dict:
        """The result of a request the engine will never finish (it stopped): what it has, ended by an abort."""
        result = self.result()
        result["meta_info"]["finish_reason"] = {"type": "abort", "message": message}
        return result


@dataclass(frozen=True)
class StreamDelta:
    """One streamed piece: new text, the output tokens so far, and the output logprob entries (token, top-k,
    chosen ids) produced since the previous piece, so each chunk can carry exactly its own logprobs."""

    text: str
    completion_tokens: int
    output_token_logprobs: tuple = ()
    output_top_logprobs: tuple = ()
    output_token_ids_logprobs: tuple = ()


_DELTA_LOGPROB_KEYS = ("output_token_logprobs", "output_top_logprobs", "output_token_ids_logprobs")


class RequestHandle:
    """Thread-safe view of a request for its caller: blocking result, a stream of text deltas, callbacks."""

    _END = object()

    def __init__(self, rid: str):
        # One lock guards the result and the stream, with a condition for each (a Queue plus an Event made four
        # conditions and four locks of a handle, and there is one per request): a caller waiting for the result
        # is not woken by every streamed piece.
        self.rid = rid
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # the result
        self._streamed = threading.Condition(lock)  # the deltas
        self._deltas: deque = deque()
        self._streaming = False  # a caller iterates the deltas (see `streaming`)
        self._finished = False
        self._result: dict | None = None
        self._callbacks: list[Callable[[dict], None]] = []

    # engine side
    @property
    def streaming(self) -> bool:
        """Whether a caller iterates this handle's deltas. Until one does the engine pushes no piece per token
        (most callers only wait for the result: skeleton-of-thought ran 5 % faster without those pieces); the
        text so far then goes out in one piece, at the next token or at the end."""
        return self._streaming

    def push_delta(self, text: str, completion_tokens: int = 0, **new_logprobs: list) -> None:
        """Queue a streamed piece (new logprob entries by their meta_info names, see `StreamDelta`)."""
        if text:
            logprobs = (tuple(new_logprobs.get(k, ())) for k in _DELTA_LOGPROB_KEYS) if new_logprobs else ()
            delta = StreamDelta(text, completion_tokens, *logprobs)
            with self._streamed:
                self._deltas.append(delta)
                self._streamed.notify_all()

    def finish(self, result: dict) -> bool:
        """Deliver the result (once: a later call is ignored and returns False). A callback that raises is
        logged, never passed on: it runs on the engine thread, which must not die of a caller's bug."""
        with self._cond:
            if self._finished:
                return False
            self._result, self._finished = result, True
            callbacks, self._callbacks = self._callbacks, []
            self._deltas.append(self._END)
            self._cond.notify_all()
            self._streamed.notify_all()
        for cb in callbacks:
            try:
                cb(result)
            except Exception:
                logger.exception("a done-callback of request %s raised", self.rid)
        return True

    # caller side
    def done(self) -> bool:
        return self._finished

    def result(self, timeout: float | None = None) -> dict:
        with self._cond:
            if not self._cond.wait_for(lambda: self._finished, timeout):
                raise TimeoutError(f"request {self.rid} did not finish within {timeout} s")
        assert self._result is not None
        return self._result

    def add_done_callback(self, fn: Callable[[dict], None]) -> None:
        with self._cond:
            if not self._finished:
                self._callbacks.append(fn)
                return
        fn(self._result)  # type: ignore[arg-type]

    async def async_result(self) -> dict:
        """Await the result without blocking the event loop."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def resolve(result: dict) -> None:
            if not future.done():
                future.set_result(result)

        self.add_done_callback(lambda result: loop.call_soon_threadsafe(resolve, result))
        return await future

    async def aiter_deltas(self):
        """Async iterator of `StreamDelta`s (a helper thread reads the blocking stream)."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()

        def pump() -> None:
            for delta in self.iter_deltas():
                loop.call_soon_threadsafe(pieces.put_nowait, delta)
            loop.call_soon_threadsafe(pieces.put_nowait, self._END)

        threading.Thread(target=pump, name=f"sglbench-stream-{self.rid[:8]}", daemon=True).start()
        while (delta := await pieces.get()) is not self._END:
            yield delta

    async def aiter_text(self):
        """Async iterator of text deltas."""
        async for delta in self.aiter_deltas():
            yield delta.text

    def iter_deltas(self, timeout: float | None = None):
        """Yield `StreamDelta`s as they are produced, until the request finishes (queue.Empty when none comes
        within timeout seconds)."""
        self._streaming = True
        while True:
            with self._streamed:
                if not self._streamed.wait_for(lambda: self._deltas, timeout):
                    raise queue.Empty
                item = self._deltas.popleft()
            if item is self._END:
                return
            yield item

    def iter_text(self, timeout: float | None = None):
        """Yield text deltas as they are produced, until the request finishes."""
        for delta in self.iter_deltas(timeout):
            yield delta.text
