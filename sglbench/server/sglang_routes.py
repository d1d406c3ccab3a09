"""SGLang's native routes, shaped as SGLang 0.5.23 answers them: /generate (one prompt or a batch, n samples,
SSE streaming), /server_info, /model_info, /health_generate, /abort_request and /flush_cache (each also under its
older /get_... name), so that SGLang's own clients (`RuntimeEndpoint`, its tools) read them unchanged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from sglbench.runtime.sampling_params import SamplingParams
from sglbench.runtime.sglang_shapes import WEIGHT_VERSION, sglang_meta, sglang_result
from sglbench.server.protocol import AbortRequest, GenerateItem, GenerateRequest
from sglbench.server.serving import Serving, error, public_model_name, sse_response

HEALTH_CHECK_TIMEOUT_S = 20.0  # as SGLang's /health_generate


# ---------------------------------------------------------------------------- server and model information
def _model_type(model_path: str) -> str | None:
    """The model's Hugging Face model_type, from its config.json when the folder is on this machine."""
    try:
        return json.loads((Path(model_path) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None


def _model_path(serving: Serving, model_path: str) -> str:
    """The model_path clients see: the model's name (its folder's name, or its Hugging Face id), not where it
    lies on this machine, unless the server was asked to show it (SGLang's clients on this machine load the
    tokenizer from it)."""
    return model_path if serving.show_model_path else public_model_name(model_path)


def model_info(serving: Serving) -> dict:
    """SGLang's /model_info fields, then sglbench's own (architecture, context_length, vocab_size)."""
    info = serving.rt.model_info()
    name = _model_path(serving, info.model_path)
    return {
        "model_path": name, "served_model_name": serving.served_name, "tokenizer_path": name,
        "is_generation": True, "preferred_sampling_params": None, "weight_version": WEIGHT_VERSION,
        "load_format": "auto", "reasoning_parser": None, "tool_call_parser": None, "disaggregation_mode": "null",
        "has_image_understanding": False, "has_audio_understanding": False,
        "model_type": _model_type(info.model_path), "architectures": [info.architecture],
        "architecture": info.architecture, "context_length": info.context_length, "vocab_size": info.vocab_size,
    }


def _plain(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)


def server_info(serving: Serving) -> dict:
    """SGLang's /server_info: the runtime's arguments as resolved, the scheduler's limits and its live state."""
    rt, info, m = serving.rt, serving.rt.model_info(), serving.rt.metrics()
    used = m.pool_slots - m.pool_free - m.cache_evictable
    name = _model_path(serving, info.model_path)
    return {
        **{k: _plain(v) for k, v in dataclasses.asdict(rt.config).items()},
        "model_path": name, "tokenizer_path": name, "served_model_name": serving.served_name,
        "dtype": info.dtype.removeprefix("torch."), "device": info.device, "context_length": info.context_length,
        "attention_backend": info.attention_backend, "dtype_reason": info.dtype_reason,
        "cpu_features": info.cpu_features, "cpu_kernels": info.cpu_kernels, "cpu_memory": info.cpu_memory, "cuda_graph": info.cuda_graph,
        "tp_size": 1, "dp_size": 1, "pp_size": 1, "ep_size": 1, "page_size": 1, "skip_tokenizer_init": False, "speculative_algorithm": None, "enable_lora": False,
        "max_total_num_tokens": info.max_total_tokens, "max_req_input_len": info.context_length - 1,
        "internal_states": [{"num_running_reqs": m.num_running, "num_waiting_reqs": m.num_waiting,
                             "token_usage": used / m.pool_slots if m.pool_slots else 0.0,
                             "cache_hit_rate": m.hit_rate, "num_finished_reqs": m.num_finished}],
        "startup_time": serving.started, "version": "sglbench", "frontend": "python",
    }


# ---------------------------------------------------------------------------- /generate
def with_logprob_start(serving: Serving, item: GenerateItem) -> GenerateItem:
    """SGLang's logprob_start_len for an item that returns logprobs: -1 (or null) means the prompt's last token
    only; a start past the prompt's end is refused. Tokenizes a text prompt: call off the event loop."""
    params = item.params
    if not params.return_logprob:
        return item
    ids = serving.prompt_ids(item.prompt)
    if params.logprob_start_len > len(ids):
        raise ValueError(f"logprob_start_len={params.logprob_start_len} is past the end of the prompt ({len(ids)} tokens)")
    if params.logprob_start_len == -1 and not params.token_ids_logprob:
        params = params.replace(logprob_start_len=len(ids) - 1)
    return dataclasses.replace(item, prompt=ids, params=params)


def add_sglang_routes(app: FastAPI, serving: Serving) -> None:
    """Register SGLang's native routes for serving's runtime."""
    rt = serving.rt

    @functools.lru_cache(maxsize=65536)
    def token_text(token_id: int) -> str:
        return rt.tokenizer.decode([token_id], skip_special_tokens=False)

    @app.get("/model_info")
    @app.get("/get_model_info")
    async def get_model_info() -> dict:
        return model_info(serving)

    @app.get("/server_info")
    @app.get("/get_server_info")
    async def get_server_info() -> dict:
        return server_info(serving)

    @app.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush_cache() -> dict:
        return {"success": await run_in_threadpool(rt.flush_cache)}  # waits for the engine thread: not on the loop

    @app.get("/health_generate")
    async def health_generate() -> Response:
        """200 when the engine completes a one-token generation within SGLang's health-check timeout, else 503
        (with the reason when the engine has stopped or the server shuts down)."""
        why = serving.unavailable()
        if why:
            return error(503, why)
        handle = serving.submit([0], SamplingParams(max_new_tokens=1, temperature=0), f"HEALTH_CHECK_{uuid.uuid4().hex}")
        try:
            result = await asyncio.wait_for(handle.async_result(), HEALTH_CHECK_TIMEOUT_S)
        except asyncio.TimeoutError:
            serving.abort([handle])
            return Response(status_code=503)
        aborted = (result["meta_info"]["finish_reason"] or {}).get("type") == "abort"
        return Response(status_code=503 if aborted else 200)

    @app.post("/abort_request")
    async def abort_request(body: AbortRequest) -> Response:
        """Abort the request with this rid (or, with abort_all, every request this server runs); 200 either way."""
        if body.abort_all:
            serving.abort_all()
        elif body.rid:
            rt.abort(body.rid)
        return Response(status_code=200)

    @app.post("/concate_and_append_request")
    async def concate_and_append(body: dict[str, Any]) -> dict:
        """SGLang's client calls this when a program joins forks with mode="concate_and_append". The client
        appends the forks' text to the joined state itself; this engine does not splice the forks' KV
        into it, so the next request recomputes the appended text over the cached shared prefix."""
        if not isinstance(body.get("src_rids"), list) or not isinstance(body.get("dst_rid"), str):
            raise ValueError("concate_and_append_request takes {'src_rids': [str, ...], 'dst_rid': str}")
        return {"success": True, "kv_spliced": False}

    @app.api_route("/generate", methods=["POST", "PUT"])
    async def generate(body: GenerateRequest, request: Request):
        # Off the event loop: checking a body compiles its regexes, a logprob start tokenizes its prompt.
        items = await run_in_threadpool(lambda: [with_logprob_start(serving, item) for item in body.items()])
        handles = await serving.submit_all([(item.prompt, item.params, item.rid) for item in items], body.stream)
        params = [item.params for item in items for _ in range(item.params.n)]
        text = token_text if body.return_text_in_logprobs else None
        if body.stream:
            return sse_response(_stream(serving, request, handles, params, text, body.is_batch,
                                        serving.incremental_streaming_output))
        results = await serving.results(request, handles)
        if results is None:
            return error(499, "client disconnected")
        shaped = [sglang_result(r, p, text) for r, p in zip(results, params)]
        return shaped if body.is_batch else shaped[0]


async def _stream(serving: Serving, request: Request, handles: list, params: list[SamplingParams],
                  token_text: Callable[[int], str] | None, batch: bool, incremental: bool) -> AsyncIterator[dict]:
    """SGLang's stream chunks: the text so far, with meta_info {id, finish_reason: None, completion_tokens} and,
    with return_logprob, the output logprob entries so far (incremental: only those new since the previous
    chunk) and output_token_logprobs_length; the whole result when done (incremental: its logprob lists cut to
    what is new). In a batch each chunk names its request's position with "index"."""
    so_far = [""] * len(handles)
    sent = [{} for _ in handles]  # per request: logprob entries sent so far, by key
    async for i, delta, result in serving.events(request, handles):
        if result is None:
            so_far[i] += delta.text
            meta = {"id": handles[i].rid, "finish_reason": None, "completion_tokens": delta.completion_tokens}
            if params[i].return_logprob:
                for key in _STREAMED_LOGPROBS:
                    sent[i][key] = sent[i].get(key, []) + list(getattr(delta, key))
                    meta[key] = list(getattr(delta, key)) if incremental else sent[i][key]
                meta = sglang_meta(meta, params[i], token_text)
                meta["output_token_logprobs_length"] = len(sent[i]["output_token_logprobs"])
                meta.pop("input_top_logprobs", None)
            chunk = {"text": so_far[i], "meta_info": meta}
        else:
            chunk = sglang_result(result, params[i], token_text)
            if incremental and params[i].return_logprob:
                for key in _STREAMED_LOGPROBS:
                    if key in chunk["meta_info"]:
                        chunk["meta_info"][key] = chunk["meta_info"][key][len(sent[i].get(key, [])):]
        yield {**chunk, "index": i} if batch else chunk


_STREAMED_LOGPROBS = ("output_token_logprobs", "output_top_logprobs", "output_token_ids_logprobs")
