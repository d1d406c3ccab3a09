"""The systems a workload is compared on: the engine with and without its cache, scheduling policy and
frontend hints; Hugging Face transformers on the same weights; optionally an OpenAI-compatible endpoint.
"""

from __future__ import annotations

import threading

import torch

from sglbench.bench.baselines import load_hf
from sglbench.bench.paper.measure import System, Usage
from sglbench.bench.paper.optimal import RequestRecord
from sglbench.bench.paper.transformers_backend import TransformersBackend
from sglbench.lang.backend.base import BaseBackend, CallContext
from sglbench.lang.backend.runtime_backend import RuntimeBackend
from sglbench.runtime.request import RequestHandle
from sglbench.runtime.runtime import Runtime
from sglbench.runtime.sampling_params import SamplingParams


def runtime_record(input_ids: list[int], params: SamplingParams, result: dict, cached: int) -> RequestRecord:
    """What the engine's cache saw of a finished request: it looks up the prompt but its last token (or
    up to where prompt logprobs start) and holds KV for the prompt and all output tokens but the last."""
    output = result["output_ids"]
    query = len(input_ids) - 1
    if params.return_logprob and params.logprob_start_len >= 0:
        query = min(query, max(params.logprob_start_len - 1, 0))
    return RequestRecord(tuple(input_ids + output[:-1]), max(query, 0), cached)


class RecordingBackend(RuntimeBackend):
    """A RuntimeBackend that keeps every request it submits (hint requests too) for the hit rates; the
    tokens served at a request's first lookup come from its first 'request.scheduled' event."""

    def __init__(self, runtime: Runtime):
        super().__init__(runtime)
        self._lock = threading.Lock()
        self._submitted: list[tuple[list[int], SamplingParams, RequestHandle]] = []
        self._first_seq = runtime.events.next_seq

    def _submit(self, ids: list[int], params: SamplingParams, program_id: str | None) -> RequestHandle:
        handle = super()._submit(ids, params, program_id)
        with self._lock:
            self._submitted.append((ids, params, handle))
        return handle

    def records(self) -> list[RequestRecord]:
        with self._lock:
            submitted = list(self._submitted)
        events = self.runtime.events.since(self._first_seq)
        if events and events[0].seq > self._first_seq:
            raise RuntimeError(f"the engine's event log (the latest {self.runtime.events.capacity} events) no "
                               "longer holds this batch's first events; run a smaller size")
        cached: dict[str, int] = {}
        for event in events:
            if event.kind == "request.scheduled":
                cached.setdefault(event.data["rid"], event.data["cached_tokens"])
        return [runtime_record(ids, params, handle.result(), cached.get(handle.rid, 0))
                for ids, params, handle in submitted]


class NoHintsBackend(RecordingBackend):
    """Frontend hints off: a fork does not prefill its parent's prefix first and run_batch does not
    pre-cache the program's constant prefix. The engine still shares whatever its cache holds."""

    def fork_program(self, ctx: CallContext, num_forks: int) -> None:
        """The telemetry event only: the forks start without their shared prefix prefilled."""
        self.runtime.events.emit("program.fork", program_id=ctx.program_id, state_id=ctx.state_id,
                                 num_forks=num_forks)

    def cache_prefix(self, prefix: str) -> None:
        """No pre-caching."""


class RuntimeSystem(System):
    """The in-process engine; systems that differ only in frontend hints share one Runtime."""

    def __init__(self, name: str, runtime: Runtime, hints: bool = True):
        self.name = name
        self.runtime = runtime
        self.hints = hints
        self._backend: RecordingBackend | None = None

    def open_backend(self) -> BaseBackend:
        self._backend = RecordingBackend(self.runtime) if self.hints else NoHintsBackend(self.runtime)
        return self._backend

    def usage(self) -> Usage:
        m = self.runtime.metrics()
        return Usage(m.cache.query_tokens, m.cache.hit_tokens, m.prefill_tokens, m.decode_tokens)

    def records(self) -> list[RequestRecord] | None:
        return self._backend.records() if self._backend is not None else None

    def settle(self) -> None:
        self.runtime.wait_idle(timeout=600)

    def reset(self) -> None:
        if not self.runtime.flush_cache():
            raise RuntimeError("the engine refused to flush its cache: requests are still running")


class EndpointSystem(System):
    """Any OpenAI-compatible server through `sgl.OpenAI`: throughput and latency only."""

    def __init__(self, backend: BaseBackend, url: str):
        self.name = f"endpoint ({url})"
        self._backend = backend

    def open_backend(self) -> BaseBackend:
        return self._backend


class TransformersSystem(System):
    """Hugging Face transformers on the same weights, batched step by step (see TransformersBackend)."""

    def __init__(self, model_path: str, device: str, dtype: torch.dtype, batch_size: int = 16):
        self.name = "transformers (stage-batched)"
        self.model, self.tokenizer = load_hf(model_path, device, dtype)
        self.batch_size = batch_size
        self._backend: TransformersBackend | None = None

    def open_backend(self) -> BaseBackend:
        if self._backend is not None:
            self._backend.close()
        self._backend = TransformersBackend(self.model, self.tokenizer, self.batch_size)
        return self._backend

    def usage(self) -> Usage:
        return self._backend.usage() if self._backend is not None else Usage()

    def records(self) -> list[RequestRecord] | None:
        return self._backend.records() if self._backend is not None else None

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
