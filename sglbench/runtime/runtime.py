"""`Runtime`: the in-kernel engine. One daemon thread owns the Engine; every other thread (notebook
cells, widget callbacks) only enqueues commands and reads immutable snapshots.

Its life is a state (`health()`): running, shutting down (from the moment `shutdown()` starts: nothing new is
taken), stopped (after shutdown, or when the engine thread died: `health().reason` says why). However the
engine thread ends, every request still in flight finishes with an abort naming the reason: no caller waits
forever.
"""

from __future__ import annotations

import concurrent.futures
import gc
import itertools
import logging
import queue
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sglbench.ids import new_id
from sglbench.runtime import extensions
from sglbench.runtime.engine import Engine, EngineConfig, EngineMetrics
from sglbench.runtime.generate_args import parse_generate_call
from sglbench.runtime.grammar import GrammarMatcher
from sglbench.runtime.model_resolution import resolve_model_path
from sglbench.runtime.records import ModelInfo, RuntimeHealth
from sglbench.runtime.request import Request, RequestHandle
from sglbench.runtime.sampling_params import RequestLimits, SamplingParams, check_no_lone_surrogate

logger = logging.getLogger(__name__)
Prompts = str | list[int] | list[str] | list[list[int]]
_instance_counter = itertools.count()
_STOP = object()  # sentinel command: leave the engine loop


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but no CUDA device is available")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    return device


SHUTTING_DOWN = "the runtime is shutting down"  # the abort message of what is in flight at shutdown
SHUT_DOWN = "the runtime has been shut down"


@dataclass(frozen=True)
class _Submit:
    """The engine-thread command that queues one request."""

    req: Request
    matcher: GrammarMatcher | None

    def __call__(self, engine: Engine) -> None:
        engine.add_request(self.req, self.matcher)


@dataclass(frozen=True)
class _Call:
    """The engine-thread command that runs fn(engine) for `Runtime.call` and sets its future."""

    fn: Callable[[Engine], Any]
    future: concurrent.futures.Future

    def __call__(self, engine: Engine) -> None:
        try:
            self.future.set_result(self.fn(engine))
        except BaseException as exc:
            self.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise


class _Lifecycle:
    """The runtime's state, shared by the threads that submit and the engine thread (not the Runtime itself,
    so a Runtime nobody holds is still collected). Commands are queued under its lock, so none lands behind
    the end of the engine loop unseen; the requests in flight are kept by id, so their ids are unique and,
    however the loop ends, each one finishes."""

    def __init__(self, commands: queue.Queue):
        self._lock = threading.Lock()
        self._commands = commands
        self.health = RuntimeHealth("running")
        self._live: dict[str, Request] = {}

    def check_open(self) -> None:
        """RuntimeError with the reason unless new requests are taken."""
        if self.health.stopped:
            raise RuntimeError(self.health.reason)

    def submit(self, req: Request, matcher: GrammarMatcher | None) -> None:
        """Queue req, unless the runtime takes no requests (RuntimeError) or its id is in flight (ValueError)."""
        with self._lock:
            self.check_open()
            other = self._live.get(req.rid)
            if other is not None and not (other.handle is not None and other.handle.done()):
                raise ValueError(f"request id {req.rid!r} is already in use by a request in flight")
            self._live[req.rid] = req
            self._commands.put(_Submit(req, matcher))
        assert req.handle is not None
        req.handle.add_done_callback(lambda _: self._forget(req))

    def _forget(self, req: Request) -> None:
        with self._lock:
            if self._live.get(req.rid) is req:
                del self._live[req.rid]

    def call(self, command: _Call) -> None:
        """Queue command while the engine thread runs (also while shutting down); RuntimeError once stopped."""
        with self._lock:
            if self.health.state == "stopped":
                raise RuntimeError(self.health.reason)
            self._commands.put(command)

    def put(self, command: Callable[[Engine], None]) -> None:
        """Queue a command nobody waits for (an abort); dropped once stopped."""
        with self._lock:
            if self.health.state != "stopped":
                self._commands.put(command)

    def begin_shutdown(self) -> None:
        with self._lock:
            if self.health.ok:
                self.health = RuntimeHealth("shutting_down", SHUTTING_DOWN)

    def close(self, engine: Engine | None, fault: BaseException | None) -> None:
        """Mark the runtime stopped and finish every request in flight: the engine's with an abort, then those
        still queued, then any handle left. Runs on the engine thread as its loop ends (or, engine None, on the
        thread that gave up waiting for a stuck one)."""
        if fault is None:
            reason, message = SHUT_DOWN, SHUTTING_DOWN
        else:
            reason = message = f"the runtime's engine thread stopped: {type(fault).__name__}: {fault}"
        with self._lock:
            if self.health.state != "stopped":
                self.health = RuntimeHealth("stopped", reason)
        if engine is not None:
            try:
                engine.abort_all(message)
                engine.publish()
            except Exception:
                logger.exception("aborting the requests in flight failed; their handles are ended directly")
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                break
            if isinstance(command, _Submit) and command.req.handle is not None:
                command.req.handle.finish(command.req.abandoned_result(message))
            elif isinstance(command, _Call):
                command.future.set_exception(RuntimeError(reason))
        with self._lock:
            left = list(self._live.values())
        for req in left:
            if req.handle is not None and not req.handle.done():
                req.handle.finish(req.abandoned_result(message))


def _build_and_serve(config: EngineConfig, built: concurrent.futures.Future, commands: queue.Queue,
                     life: _Lifecycle) -> None:
    """The engine thread: build the engine here, hand it to the constructor through `built`, then serve.

    Loading here rather than on the caller's thread keeps every parallel torch op of the engine on this one
    thread. Each thread that runs OpenMP work gets a thread pool of its own in libgomp (torch's CPU
    backend), and once a process holds more pool threads than cores libgomp stops spinning between
    parallel regions: on a 2-core CPU a model loaded on the caller's thread made every later decode step of
    the embedded model 1.7x slower (6.6 against 10.9 ms at batch 16, `python -m sglbench.bench decode`)."""
    try:
        engine = Engine(config)
    except BaseException as exc:
        built.set_exception(exc)
        return
    built.set_result(engine)
    _engine_loop(engine, commands, life)


def _engine_loop(engine: Engine, commands: queue.Queue, life: _Lifecycle) -> None:
    """Run the engine until the stop command or a fault, then close the lifecycle. Runs on the engine thread."""
    fault: BaseException | None = None
    try:
        _serve(engine, commands)
    except BaseException as exc:
        fault = exc
        if isinstance(exc, Exception):
            logger.error("the engine thread stopped", exc_info=exc)
    finally:
        life.close(engine, fault)
    if fault is not None and not isinstance(fault, Exception):
        raise fault  # KeyboardInterrupt, SystemExit...: everything is finished; let it go on


def _serve(engine: Engine, commands: queue.Queue) -> None:
    """Drain commands, step while there is work, block while idle; return at the stop command."""
    while True:
        try:
            cmd = commands.get(block=not engine.has_work())
        except queue.Empty:
            cmd = None
        handled = cmd is not None
        while cmd is not None:
            if cmd is _STOP:
                return
            cmd(engine)
            try:
                cmd = commands.get_nowait()
            except queue.Empty:
                cmd = None
        if engine.has_work():
            engine.step()
        elif handled:
            engine.publish()  # commands (abort, add) changed counts and maybe finished requests with no step to follow


class Runtime:
    """An LLM engine inside this Python process (e.g. the Jupyter kernel).

    >>> rt = Runtime()                      # embedded default model on the CPU
    >>> rt.generate("Q: What is 2 + 3?\\nA:", max_new_tokens=4, temperature=0)["text"]
    """

    def __init__(
        self,
        model_path: str | None = None,
        device: str = "auto",
        dtype: str | torch.dtype = "auto",
        max_total_tokens: int | None = None,
        *,
        mem_fraction_static: float = 0.85,
        context_length: int | None = None,
        attention_backend: str = "auto",
        disable_radix_cache: bool = False,
        schedule_policy: str = "lpm",
        max_running_requests: int = 64,
        max_prefill_tokens: int = 8192,
        chunked_prefill_size: int = 2048,
        schedule_conservativeness: float = 1.0,
        random_seed: int = 0,
        disable_jump_forward: bool = False,
        enable_mixed_chunk: bool = True,
        disable_cuda_graph: bool = False,
        cuda_graph_max_bs: int | None = None,
        cuda_graph_bs: Sequence[int] | None = None,
        limits: RequestLimits | None = None,
    ):
        if model_path is None:
            from sglbench.default_model import default_model_path

            model_path = default_model_path()
        model_path = resolve_model_path(model_path)  # a Hugging Face id ("org/name") becomes its cached folder
        self.config = EngineConfig(
            model_path=model_path, device=resolve_device(device), dtype=dtype, max_total_tokens=max_total_tokens,
            mem_fraction_static=mem_fraction_static, context_length=context_length,
            attention_backend=attention_backend, disable_radix_cache=disable_radix_cache,
            schedule_policy=schedule_policy, max_running_requests=max_running_requests,
            max_prefill_tokens=max_prefill_tokens, chunked_prefill_size=chunked_prefill_size, random_seed=random_seed,
            schedule_conservativeness=schedule_conservativeness, jump_forward=not disable_jump_forward,
            mixed_chunk=enable_mixed_chunk,
            disable_cuda_graph=disable_cuda_graph, cuda_graph_max_bs=cuda_graph_max_bs,
            cuda_graph_bs=None if cuda_graph_bs is None else tuple(cuda_graph_bs),
        )
        self.limits = limits or RequestLimits()  # what one request may ask (stop strings, top logprobs...)
        self._commands: queue.Queue = queue.Queue()
        self._life = _Lifecycle(self._commands)
        built: concurrent.futures.Future = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=_build_and_serve, args=(self.config, built, self._commands, self._life),
            name=f"sglbench-engine-{next(_instance_counter)}", daemon=True,
        )
        self._thread.start()
        try:
            self.engine: Engine = built.result()
        except BaseException:
            self._commands.put(_STOP)  # interrupted while loading: the thread stops as soon as it could serve
            raise
        self.tokenizer = self.engine.tokenizer
        self._finalizer = weakref.finalize(self, _stop_thread, self._commands, self._thread, self._life)
        _freeze_heap()
        self._on_shutdown: list[Callable[[], object]] = []
        # Objects higher layers keep one of per runtime (the viz dashboard), by key; they live as long as it.
        self.attachments: dict[str, Any] = {}

    # ------------------------------------------------------------------ lifecycle
    def shutdown(self) -> None:
        """Refuse new requests at once, run the `on_shutdown` callbacks, then stop the engine thread (requests
        in flight finish with an abort, "the runtime is shutting down") and free the model and KV pool."""
        self._life.begin_shutdown()
        callbacks, self._on_shutdown = self._on_shutdown, []
        try:
            for callback in callbacks:
                callback()
        finally:
            if self._finalizer.alive:
                self._finalizer()
            self.engine.pool.k_buffers.clear()
            self.engine.pool.v_buffers.clear()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def on_shutdown(self, callback: Callable[[], object]) -> None:
        """Call `callback()` at `shutdown()`, while the engine still runs (e.g. a dashboard's final poll)."""
        self._on_shutdown.append(callback)

    @property
    def is_running(self) -> bool:
        """Whether the engine thread serves (also while shutdown runs its callbacks); False once it stopped."""
        return self._thread.is_alive() and self._life.health.state != "stopped"

    def health(self) -> RuntimeHealth:
        """running / shutting_down / stopped, and why it takes no requests (e.g. the engine thread's fault)."""
        health = self._life.health
        if health.ok and not self._thread.is_alive():
            return RuntimeHealth("stopped", "the runtime's engine thread stopped")
        return health

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        info = self.model_info()
        return (f"Runtime(model={Path(info.model_path).name!r}, arch={info.architecture}, "
                f"device={info.device!r}, dtype={info.dtype}, slots={info.max_total_tokens}, "
                f"radix_cache={'off' if self.config.disable_radix_cache else 'on'})")

    # ------------------------------------------------------------------ engine-thread calls
    def call(self, fn: Callable[[Engine], Any], timeout: float | None = 60.0) -> Any:
        """Run fn(engine) on the engine thread between steps and return its result."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._life.call(_Call(fn, future))
        return future.result(timeout)

    # ------------------------------------------------------------------ submission
    def submit(
        self, prompt: str | list[int], sampling: SamplingParams, rid: str | None = None, program_id: str | None = None
    ) -> RequestHandle:
        """Validate and enqueue one request (n is handled by `generate`); returns its handle at once.

        Everything the request brings is checked here, on the caller's thread, against the model and
        `self.limits` (ValueError naming the problem), and a regex or JSON schema is compiled here: nothing
        it asks can fail inside the engine's step. rid, when given, must not be in flight (ValueError).
        RuntimeError once shutdown has begun or the engine thread stopped."""
        self._life.check_open()
        if not isinstance(sampling, SamplingParams):
            raise TypeError(f"sampling must be a SamplingParams, got {type(sampling).__name__}")
        if rid is not None and not (isinstance(rid, str) and rid):
            raise ValueError(f"rid must be a non-empty string, got {rid!r}")
        input_ids = self._to_ids(prompt)
        self.engine.validate_prompt(input_ids, sampling.max_new_tokens)
        self.engine.validate_params(sampling)
        self.limits.check(sampling)
        spec = sampling.grammar
        matcher = self.engine.grammars.matcher(spec) if spec is not None else None
        rid = rid or new_id()
        handle = RequestHandle(rid)
        req = Request(rid=rid, input_ids=input_ids, params=sampling, handle=handle, program_id=program_id)
        self._life.submit(req, matcher)
        return handle

    def _to_ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt is empty: give a non-empty text or input_ids")
            check_no_lone_surrogate(prompt, "prompt")
            return self.tokenizer.encode(prompt)
        # set(map(type, ...)) runs in C: a program's every request passes here with its whole context
        if isinstance(prompt, (list, tuple)) and (set(map(type, prompt)) <= {int} or all(
                isinstance(t, int) and not isinstance(t, bool) for t in prompt)):
            return list(prompt)
        raise TypeError(f"prompt must be a str or a list of token ids, got {type(prompt).__name__}")

    def _submit_all(self, prompt, sampling: SamplingParams, program_id=None) -> list[RequestHandle]:
        """One handle per sample; with n > 1 the prompt is prefilled once first so samples share it."""
        if sampling.n == 1:
            return [self.submit(prompt, sampling, program_id=program_id)]
        if sampling.seed is not None and sampling.seed + sampling.n > 2**63:
            raise ValueError(f"seed={sampling.seed} with n={sampling.n}: sample i takes seed + i, which must stay "
                             "below 2**63")
        if not self.config.disable_radix_cache:
            self.submit(prompt, sampling.replace(n=1, max_new_tokens=0, min_new_tokens=0, return_logprob=False)).result()
        seeds = [None if sampling.seed is None else sampling.seed + i for i in range(sampling.n)]
        return [self.submit(prompt, sampling.replace(n=1, seed=s), program_id=program_id) for s in seeds]

    def generate(self, prompt: Prompts | None = None, sampling_params: dict | list[dict] | None = None,
                 input_ids: list[int] | list[list[int]] | None = None, **sampling_kwargs) -> dict | list:
        """Blocking generation. A single prompt gives a result dict (a list of n dicts when n > 1);
        a list of prompts gives a list of those. Sampling parameters come as keywords
        (`rt.generate(p, max_new_tokens=8)`) or SGLang style, `sampling_params={...}` (one dict, or one per
        prompt); the prompt as text or token ids, or as `input_ids=` instead."""
        call = parse_generate_call(prompt, sampling_params, input_ids, sampling_kwargs)
        groups = [self._submit_all(p, s) for p, s in zip(call.prompts, call.params)]
        results = [_collect(g, s.n) for g, s in zip(groups, call.params)]
        return results if call.batch else results[0]

    def generate_stream(self, prompt: str | list[int] | None = None, sampling_params: dict | None = None,
                        input_ids: list[int] | None = None, **sampling_kwargs) -> Iterator[str]:
        """Yield text pieces as they are decoded (stop strings are never shown); arguments as `generate`'s,
        for one request with n=1."""
        handle = self.submit(*_one_stream(prompt, sampling_params, input_ids, sampling_kwargs))
        yield from handle.iter_text()

    async def async_generate(self, prompt: Prompts | None = None, sampling_params: dict | list[dict] | None = None,
                             input_ids: list[int] | list[list[int]] | None = None, **sampling_kwargs) -> dict | list:
        """Awaitable `generate` (same arguments and results); the event loop stays free while the engine works."""
        call = parse_generate_call(prompt, sampling_params, input_ids, sampling_kwargs)
        groups = [self._submit_all(p, s) for p, s in zip(call.prompts, call.params)]
        results = []
        for handles, params in zip(groups, call.params):
            samples = [await h.async_result() for h in handles]
            results.append(samples[0] if params.n == 1 else samples)
        return results if call.batch else results[0]

    async def async_generate_stream(self, prompt: str | list[int] | None = None, sampling_params: dict | None = None,
                                    input_ids: list[int] | None = None, **sampling_kwargs) -> AsyncIterator[str]:
        """Async iterator of text pieces (arguments as `generate_stream`'s); the event loop stays free."""
        handle = self.submit(*_one_stream(prompt, sampling_params, input_ids, sampling_kwargs))
        async for piece in handle.aiter_text():
            yield piece

    def abort(self, rid: str) -> None:
        self._life.put(lambda engine: engine.abort(rid))

    def abort_many(self, rids: list[str], message: str = "aborted by the caller") -> None:
        """Abort several requests with one engine command (between two steps), e.g. everything an interrupted
        cell started; ids unknown or already finished are skipped. Each aborted handle finishes with an abort
        naming message, and the engine frees (or caches) its KV."""
        rids = list(rids)
        if rids:
            self._life.put(lambda engine: [engine.abort(rid, message) for rid in rids])

    # ------------------------------------------------------------------ inspection
    def model_info(self) -> ModelInfo:
        """What this runtime serves (model, dtype, device, attention kernels, KV pool size): fixed once built.
        Pool and cache occupancy change with every step: read them from `metrics()`."""
        engine, mc = self.engine, self.engine.model_config
        return ModelInfo(
            model_path=self.config.model_path, architecture=mc.architecture, num_params=mc.num_params(),
            context_length=engine.context_length, vocab_size=mc.vocab_size, dtype=str(engine.dtype),
            device=self.config.device, attention_backend=engine.attention.name,
            max_total_tokens=engine.pool.num_slots, dtype_reason=engine.dtype_choice.reason,
            cpu_features=engine.runner.cpu_features, packed_linears=engine.runner.packed_linears,
            cpu_kernels=engine.runner.cpu_kernels, cpu_memory=engine.runner.cpu_memory,
            cuda_graph_bs=engine.runner.graphs.sizes if engine.runner.graphs else (),
            cuda_graph=engine.cuda_graph_reason,
        )

    def metrics(self) -> EngineMetrics:
        """The latest immutable metrics record (no engine-thread round trip)."""
        return self.engine.metrics

    def check_integrity(self) -> None:
        self.call(lambda engine: engine.check_integrity())

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Block until no request is waiting or running."""

        deadline = time.monotonic() + timeout
        while self.call(lambda engine: engine.has_work()):
            if time.monotonic() > deadline:
                raise TimeoutError("engine still busy")
            time.sleep(0.005)

    def flush_cache(self) -> bool:
        """Drop every cached prefix; False (nothing done) while requests are running."""
        return self.call(lambda engine: engine.flush_cache())

    def cache_snapshot(self, with_text: bool = True):
        """An immutable copy of the radix tree (taken on the engine thread) for widgets and reports."""
        return self.call(lambda engine: engine.cache.snapshot(decode=engine.tokenizer.decode if with_text else None))

    @property
    def events(self):
        return self.engine.events

    # ------------------------------------------------------------------ workbench (lent by sglbench.viz)
    def dashboard(self, graphs=None):
        """Live widgets: radix tree, cache stats, per-call latency and program graphs (the latest
        program runs unless graphs is given). One dashboard per runtime; shown again if it exists."""
        return extensions.resolve("dashboard")(self, graphs)

    def report(self, path: str, graphs=None, bench=None):
        """Write one self-contained HTML report of this runtime's cache behaviour, calls and programs.

        bench: a benchmark result (`sglbench.bench.paper` SuiteResult) or a list of them, shown in a
        "Benchmarks" section with their charts and tables."""
        return extensions.resolve("report")(self, path, graphs=graphs, bench=bench)


def _one_stream(prompt, sampling_params, input_ids, sampling_kwargs) -> tuple[str | list[int], SamplingParams]:
    """The one (prompt, params) a streaming call takes: streams carry a single request with n=1."""
    call = parse_generate_call(prompt, sampling_params, input_ids, sampling_kwargs)
    if call.batch:
        raise ValueError("streaming takes one prompt, not a batch")
    if call.params[0].n != 1:
        raise ValueError("streaming supports n=1 only")
    return call.prompts[0], call.params[0]


def _collect(handles: list[RequestHandle], n: int) -> dict | list:
    results = [h.result() for h in handles]
    return results[0] if n == 1 else results


def _freeze_heap() -> None:
    """Collect, then move every object alive into the garbage collector's permanent generation (gc.freeze), as
    SGLang's and vLLM's servers do after start-up. The heap then holds torch, transformers and the model (about
    375 K objects with the embedded one), and each full collection walked all of them on whichever thread
    triggered it, the engine's included: 170-280 ms pauses in about every other tree-of-thought run.
    `_stop_thread` unfreezes, so a stopped runtime's cycles are collected again."""
    gc.collect()
    gc.freeze()


def _stop_thread(commands: queue.Queue, thread: threading.Thread, life: _Lifecycle) -> None:
    """Stop the engine loop and wait for it; if it is stuck in a step, end the requests in flight anyway. Then
    hand the frozen heap back to the collector (`_freeze_heap`)."""
    commands.put(_STOP)
    if thread is not threading.current_thread():
        thread.join(timeout=30)
        if thread.is_alive():
            life.close(None, None)
    gc.unfreeze()
