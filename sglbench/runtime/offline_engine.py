"""`sgl.Engine`: SGLang's offline engine API over an in-process `Runtime`, so code written for
`sglang.Engine` runs unchanged: `generate` (one prompt or a batch; blocking or streamed), `async_generate`,
`flush_cache`, `get_server_info`, `shutdown`, and `with sgl.Engine(...) as llm:`.

Results have SGLang's shapes: a dict {"text", "output_ids", "meta_info"} per request, a flat list for a batch
(n samples of each prompt in a row), and stream chunks that carry the text so far, the last one the full
result (with "index" in a batch). There is no tokenizer manager or subprocess: the engine thread of the
`Runtime` (`engine.runtime`) does the work.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sglbench.runtime.generate_args import (
    GenerateCall,
    merge_sampling,
    parse_generate_call,
    per_request,
    split_prompts,
)
from sglbench.runtime.model_resolution import resolve_model_path
from sglbench.runtime.request import RequestHandle
from sglbench.runtime.runtime import Runtime
from sglbench.runtime.sampling_params import SamplingParams
from sglbench.runtime.server_args import ServerArgs
from sglbench.runtime.sglang_request_fields import PASSIVE_FIELDS, UNSUPPORTED_WHEN_SET, is_off
from sglbench.runtime.sglang_shapes import sglang_result

# generate() arguments SGLang has that this engine cannot honour: only their defaults (None, False, empty) pass.
# What sgl.Engine refuses beyond the GenerateReqInput fields it shares with the server (sglang_request_fields).
ENGINE_REFUSED: dict[str, str] = {
    "rid": "request ids are assigned by the engine (see meta_info['id'])",
    "session_id": "sessions are not supported (the radix cache shares common prefixes anyway)",
}
UNSUPPORTED: dict[str, str] = {**UNSUPPORTED_WHEN_SET, **ENGINE_REFUSED}
_DONE = object()  # a handle's stream ended


@dataclass(frozen=True)
class FlushCacheReqOutput:
    """What `flush_cache()` returns, as in SGLang (truthy when the cache was flushed)."""

    success: bool
    message: str = ""

    def __bool__(self) -> bool:
        return self.success


class Engine:
    """SGLang's offline engine in this process: `sgl.Engine(model_path=..., **server_args)`.

    >>> with sgl.Engine() as llm:                     # the embedded default model
    ...     llm.generate("Q: 2 + 3?\\nA:", {"max_new_tokens": 4, "temperature": 0})["text"]
    """

    def __init__(self, **kwargs: Any) -> None:
        args = kwargs.pop("server_args", None)
        if args is not None and (kwargs or not isinstance(args, ServerArgs)):
            raise TypeError("give server_args=ServerArgs(...) alone, or the server arguments as keywords")
        self.server_args: ServerArgs = args or ServerArgs.from_kwargs(**kwargs)
        self.server_args.apply_log_level()
        sa = self.server_args
        model_path = None if sa.model_path is None else resolve_model_path(sa.model_path, sa.revision,
                                                                           sa.download_dir)
        self.runtime = Runtime(**sa.runtime_kwargs(model_path))

    # ------------------------------------------------------------------ generation
    def generate(self, prompt: str | list[str] | None = None, sampling_params: dict | list[dict] | None = None,
                 input_ids: list[int] | list[list[int]] | None = None, image_data: Any = None,
                 return_logprob: bool | list[bool] = False, logprob_start_len: int | list[int] | None = None,
                 top_logprobs_num: int | list[int] | None = None, token_ids_logprob: list | None = None,
                 lora_path: Any = None, custom_logit_processor: Any = None, return_hidden_states: Any = False,
                 stream: bool = False, **more: Any) -> dict | list[dict] | Iterator[dict]:
        """Generate for one prompt (a dict; a list of n dicts when n > 1) or a batch (a flat list), or with
        stream=True a generator of chunks. Arguments as SGLang's `Engine.generate`."""
        options = {"return_logprob": return_logprob, "logprob_start_len": logprob_start_len,
                   "top_logprobs_num": top_logprobs_num, "token_ids_logprob": token_ids_logprob}
        unsupported = {"image_data": image_data, "lora_path": lora_path, "return_hidden_states": return_hidden_states,
                       "custom_logit_processor": custom_logit_processor, **more}
        params = self._sampling(prompt, sampling_params, input_ids, options, unsupported)
        if stream:
            return self._stream(*self._submit(prompt, params, input_ids))
        call = parse_generate_call(prompt, params, input_ids)
        return _shaped(self.runtime.generate(prompt, sampling_params=params, input_ids=input_ids), call)

    async def async_generate(self, prompt: str | list[str] | None = None, sampling_params: dict | list[dict] | None = None,
                             input_ids: list[int] | list[list[int]] | None = None, image_data: Any = None,
                             return_logprob: bool | list[bool] = False, logprob_start_len: int | list[int] | None = None,
                             top_logprobs_num: int | list[int] | None = None, token_ids_logprob: list | None = None,
                             lora_path: Any = None, custom_logit_processor: Any = None,
                             return_hidden_states: Any = False, stream: bool = False,
                             **more: Any) -> dict | list[dict] | AsyncIterator[dict]:
        """Awaitable `generate`; with stream=True it returns an async iterator of chunks."""
        params = self._sampling(prompt, sampling_params, input_ids, {
            "return_logprob": return_logprob, "logprob_start_len": logprob_start_len,
            "top_logprobs_num": top_logprobs_num, "token_ids_logprob": token_ids_logprob,
        }, {"image_data": image_data, "lora_path": lora_path, "return_hidden_states": return_hidden_states,
            "custom_logit_processor": custom_logit_processor, **more})
        if stream:
            return self._astream(*self._submit(prompt, params, input_ids))
        call = parse_generate_call(prompt, params, input_ids)
        return _shaped(await self.runtime.async_generate(prompt, sampling_params=params, input_ids=input_ids), call)

    def _sampling(self, prompt: Any, sampling_params: Any, input_ids: Any, options: dict[str, Any],
                  unsupported: dict[str, Any]) -> dict | list[dict]:
        """Check the arguments and fold the per-request options into sampling_params (one dict per prompt in
        a batch, else one dict)."""
        _check_unsupported(unsupported)
        prompts, batch = split_prompts(prompt, input_ids)
        columns = {name: _option_values(name, value, len(prompts), batch) for name, value in options.items()}
        given = per_request(sampling_params, len(prompts), batch, "sampling_params")
        merged = [merge_sampling(sp, {k: col[i] for k, col in columns.items() if _given(col[i])})
                  for i, sp in enumerate(given)]
        return merged if batch else merged[0]

    def _submit(self, prompt: Any, params: dict | list[dict], input_ids: Any
                ) -> tuple[list[RequestHandle], list[SamplingParams], bool]:
        """One handle per sample (n of each prompt in a row), its params, and whether the chunks need an "index"."""
        call = parse_generate_call(prompt, params, input_ids)
        handles, per_handle = [], []
        for text, sp in zip(call.prompts, call.params):
            for i in range(sp.n):
                one = sp.replace(n=1, seed=None if sp.seed is None else sp.seed + i)
                handles.append(self.runtime.submit(text, one))
                per_handle.append(one)
        return handles, per_handle, call.batch or len(handles) > 1

    def _stream(self, handles: list[RequestHandle], params: list[SamplingParams], batch: bool) -> Iterator[dict]:
        pieces: queue.Queue = queue.Queue()
        _pump(handles, pieces.put)
        chunks = _Chunks(handles, params, batch)
        try:
            while not chunks.finished:
                yield chunks.next(*pieces.get())
        finally:
            self._abort_unfinished(handles)

    async def _astream(self, handles: list[RequestHandle], params: list[SamplingParams],
                       batch: bool) -> AsyncIterator[dict]:
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        _pump(handles, lambda item: loop.call_soon_threadsafe(pieces.put_nowait, item))
        chunks = _Chunks(handles, params, batch)
        try:
            while not chunks.finished:
                yield chunks.next(*await pieces.get())
        finally:
            self._abort_unfinished(handles)

    def _abort_unfinished(self, handles: list[RequestHandle]) -> None:
        """A stream closed early (break, an exception): free the KV of what still runs."""
        for handle in handles:
            if not handle.done() and self.runtime.is_running:
                self.runtime.abort(handle.rid)

    # ------------------------------------------------------------------ control and inspection
    def flush_cache(self) -> FlushCacheReqOutput:
        """Drop every cached prefix; not done (success False) while requests are running."""
        if self.runtime.flush_cache():
            return FlushCacheReqOutput(True)
        return FlushCacheReqOutput(False, "requests are running; flush when the engine is idle")

    def get_server_info(self) -> dict[str, Any]:
        """The server arguments, resolved to what the runtime uses, with the KV pool size, the engine's
        counters ("internal_states") and the version, as SGLang's `get_server_info`."""
        info, config = self.runtime.model_info(), self.runtime.config
        resolved = {
            "model_path": self.server_args.model_path or info.model_path, "device": info.device,
            "dtype": info.dtype.removeprefix("torch."), "context_length": info.context_length,
            "max_total_tokens": info.max_total_tokens, "attention_backend": info.attention_backend,
            "dtype_reason": info.dtype_reason, "cpu_features": info.cpu_features, "cpu_kernels": info.cpu_kernels,
            "cpu_memory": info.cpu_memory,
            "mem_fraction_static": config.mem_fraction_static, "max_running_requests": config.max_running_requests,
            "chunked_prefill_size": config.chunked_prefill_size, "max_prefill_tokens": config.max_prefill_tokens,
            "schedule_policy": config.schedule_policy, "schedule_conservativeness": config.schedule_conservativeness,
            "random_seed": config.random_seed,
        }
        metrics = self.runtime.metrics()
        return {
            **self.server_args.as_dict(), **resolved, "local_model_path": info.model_path,
            "max_total_num_tokens": info.max_total_tokens, "max_req_input_len": info.context_length - 1,
            "internal_states": [{**dataclasses.asdict(metrics), "hit_rate": metrics.hit_rate}],
            "version": _version(),
        }

    def get_model_info(self) -> dict[str, Any]:
        """What this engine serves, with SGLang's keys."""
        info = self.runtime.model_info()
        return {"model_path": self.server_args.model_path or info.model_path, "tokenizer_path": info.model_path,
                "is_generation": True, "architecture": info.architecture, "context_length": info.context_length,
                "vocab_size": info.vocab_size}

    def shutdown(self) -> None:
        """Stop the engine (unfinished requests are aborted) and free the model and KV pool."""
        self.runtime.shutdown()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> bool:
        self.shutdown()
        return False

    def __repr__(self) -> str:
        return f"Engine({self.runtime!r})"


class _Chunks:
    """SGLang's stream chunks for some requests: the text so far while decoding, then the full result."""

    def __init__(self, handles: list[RequestHandle], params: list[SamplingParams], batch: bool):
        self.handles, self.params, self.batch = handles, params, batch
        self.texts = [""] * len(handles)
        self.left = len(handles)

    @property
    def finished(self) -> bool:
        return self.left == 0

    def next(self, index: int, piece: Any) -> dict:
        handle = self.handles[index]
        if piece is _DONE:
            self.left -= 1
            chunk = sglang_result(handle.result(), self.params[index], None)
        else:
            self.texts[index] += piece
            chunk = {"text": self.texts[index], "meta_info": {"id": handle.rid, "finish_reason": None}}
        if self.batch:
            chunk["index"] = index
        return chunk


def _pump(handles: list[RequestHandle], put: Callable[[tuple[int, Any]], object]) -> None:
    """Forward every handle's text pieces, then _DONE, to put((index, piece)), one thread per handle."""

    def forward(index: int, handle: RequestHandle) -> None:
        try:
            for piece in handle.iter_text():
                put((index, piece))
            put((index, _DONE))
        except RuntimeError:  # the reader's event loop closed: nobody listens any more
            pass

    for index, handle in enumerate(handles):
        threading.Thread(target=forward, args=(index, handle), name=f"sglbench-engine-stream-{handle.rid[:8]}",
                         daemon=True).start()


def _check_unsupported(arguments: dict[str, Any]) -> None:
    unknown = sorted(set(arguments) - UNSUPPORTED.keys() - set(PASSIVE_FIELDS))
    if unknown:
        raise TypeError(f"generate() got unexpected keyword argument(s) {unknown}")
    given = sorted(k for k, v in arguments.items() if k in UNSUPPORTED and not is_off(v))
    if given:
        raise NotImplementedError("; ".join(f"{k}: {UNSUPPORTED[k]}" for k in given))


def _option_values(name: str, value: Any, count: int, batch: bool) -> list:
    """A per-request option's value for each request."""
    if name == "token_ids_logprob":  # a list of ids is one value; a batch may give one list per prompt
        nested = isinstance(value, list) and bool(value) and isinstance(value[0], list)
        value = (value or None) if not nested else value
        values = per_request(value, count, batch, name) if nested else [value] * count
    else:
        values = per_request(value, count, batch, name)
    return values


def _given(value: Any) -> bool:
    """Set by the caller: not None/False (0 is a value: logprob_start_len=0 starts at the prompt's first token)."""
    return value is not None and value is not False


def _shaped(results: dict | list, call: GenerateCall) -> dict | list[dict]:
    """SGLang's shapes: each result's meta_info as SGLang's, and a batch (or n > 1) one flat list with the n
    samples of each prompt in a row."""
    groups = results if call.batch else [results]
    out = [sglang_result(r, sp, None) for group, sp in zip(groups, call.params)
           for r in (group if isinstance(group, list) else [group])]
    return out if call.batch or len(out) > 1 else out[0]


def _version() -> str:
    try:
        return importlib.metadata.version("sglbench")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
