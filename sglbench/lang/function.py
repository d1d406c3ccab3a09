"""`SglFunction`: a decorated program and the ways to execute it (run, run_batch, trace, cache, compile)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

from sglbench.lang.backend import BaseBackend, as_backend, resolve_backend
from sglbench.lang.global_config import global_config
from sglbench.lang.interpreter import Body, ProgramState, run_program, run_program_batch
from sglbench.lang.ir import SglSamplingParams, TracingError
from sglbench.lang.tracer import ProgramGraph, is_tracing, trace_program

# run() sampling options and their defaults; a gen() argument left as None inherits these.
RUN_OPTIONS: dict[str, Any] = {
    "max_new_tokens": 128, "n": 1, "stop": None, "stop_token_ids": None, "stop_regex": None, "temperature": 1.0,
    "top_p": 1.0, "top_k": -1, "min_p": 0.0, "frequency_penalty": 0.0, "presence_penalty": 0.0,
    "ignore_eos": False, "return_logprob": None, "logprob_start_len": None, "top_logprobs_num": None,
    "return_text_in_logprobs": None,
}


class SglFunction:
    """A program: a Python function whose first parameter is the state `s`."""

    def __init__(self, func: Callable, num_api_spec_tokens: int | None = None,
                 bind_arguments: dict[str, Any] | None = None):
        self.func = func
        self.num_api_spec_tokens = num_api_spec_tokens  # used by API backends that speculate; kept for parity
        self._signature = inspect.signature(func)
        params = list(self._signature.parameters.values())
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        if not params or params[0].name != "s" or params[0].kind not in positional:
            raise TypeError(
                f"the first parameter of an sgl.function must be the program state `s`; "
                f"{getattr(func, '__name__', func)}{self._signature} does not start with it"
            )
        variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        self.arg_names = [p.name for p in params[1:] if p.kind not in variadic]
        self.arg_defaults = [p.default for p in params[1:] if p.kind not in variadic and p.default is not p.empty]
        self.bind_arguments = dict(bind_arguments or {})
        if self.bind_arguments:
            self._bind((), self.bind_arguments, partial=True)
        functools.update_wrapper(self, func)

    @property
    def name(self) -> str:
        return getattr(self.func, "__name__", "program")

    def __repr__(self) -> str:
        return f"SglFunction({self.name}{self._signature})"

    # ------------------------------------------------------------------ arguments
    def _bind(self, args: tuple, kwargs: dict[str, Any], partial: bool = False) -> inspect.BoundArguments:
        merged = {**self.bind_arguments, **kwargs}
        try:
            bound = (self._signature.bind_partial if partial else self._signature.bind)(None, *args, **merged)
        except TypeError as exc:
            raise TypeError(
                f"{self.name}: {exc}. The program takes {self.arg_names}; run() also takes the options "
                f"{sorted(RUN_OPTIONS)}, stream and backend"
            ) from None
        bound.apply_defaults()
        return bound

    def resolve_arguments(self, kwargs: dict[str, Any], args: tuple = ()) -> dict[str, Any]:
        """Every named argument of a call with these arguments (defaults and bound values filled in)."""
        arguments = dict(self._bind(tuple(args), kwargs).arguments)
        arguments.pop("s")
        return arguments

    @staticmethod
    def split_options(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(run() sampling options, program arguments) from one keyword dict."""
        options = {k: v for k, v in kwargs.items() if k in RUN_OPTIONS}
        return options, {k: v for k, v in kwargs.items() if k not in RUN_OPTIONS}

    @staticmethod
    def sampling_defaults(options: dict[str, Any]) -> SglSamplingParams:
        unknown = sorted(set(options) - set(RUN_OPTIONS))
        if unknown:
            raise TypeError(f"unknown run option(s) {unknown}; known: {sorted(RUN_OPTIONS)}")
        return SglSamplingParams(**{**RUN_OPTIONS, **options})

    @staticmethod
    def check_batch(batch_kwargs: list[dict[str, Any]] | list[tuple]) -> list[tuple[tuple, dict[str, Any]]]:
        """Each run_batch item as (positional, keyword) arguments: a dict of keywords, or (as in SGLang) a
        list or tuple of the program's arguments in order."""
        if not isinstance(batch_kwargs, (list, tuple)):
            raise TypeError(f"run_batch takes a list of argument dicts (or tuples), got {type(batch_kwargs).__name__}")
        calls = []
        for i, item in enumerate(batch_kwargs):
            if isinstance(item, dict):
                calls.append(((), item))
            elif isinstance(item, (list, tuple)):
                calls.append((tuple(item), {}))
            else:
                raise TypeError(f"run_batch item {i} must be a dict of program arguments or a tuple of them, "
                                f"got {type(item).__name__}")
        return calls

    def _body(self, args: tuple, kwargs: dict[str, Any]) -> Body:
        """The program body for one call; it carries the call's arguments as short reprs (`inputs`), which the
        run's telemetry keeps so views can name a run by what it was given."""
        bound = self._bind(args, kwargs)

        def body(s):
            return self.func(s, *bound.args[1:], **bound.kwargs)

        names = list(bound.arguments)[1:]  # the first parameter is the state
        body.inputs = {name: _short_repr(bound.arguments[name]) for name in names}
        return body

    def _cache_prefix(self, graph: ProgramGraph | None, backend: BaseBackend) -> str:
        """Cache the constant prefix every run starts with (found by tracing) when it is long enough."""
        prefix = (graph or trace_program(self, {})).constant_prefix(backend.get_chat_template())
        if len(prefix) < global_config.precache_min_chars:
            return ""
        backend.cache_prefix(prefix)
        return prefix

    def precache(self, graph: ProgramGraph | None, backend: BaseBackend, batch_size: int) -> None:
        """Before a batch (global_config.enable_precache_with_tracing), cache the prefix its runs share."""
        if batch_size >= 2 and global_config.enable_precache_with_tracing:
            self._cache_prefix(graph, backend)

    # ------------------------------------------------------------------ execution
    def run(self, *args: Any, stream: bool = False, backend: Any = None, use_thread: bool = True,
            **kwargs: Any) -> ProgramState:
        """Run once. Keywords are program arguments or sampling options (the defaults of every gen):
        max_new_tokens=128, n=1, stop, stop_token_ids, stop_regex, temperature=1.0, top_p=1.0, top_k=-1,
        min_p=0.0, frequency_penalty=0.0, presence_penalty=0.0, ignore_eos=False, return_logprob,
        logprob_start_len, top_logprobs_num, return_text_in_logprobs. stream=True returns at once.
        use_thread=False: each `s += ...` returns once it has run and raises its error there (states still
        run on their own worker threads, so forks stay parallel)."""
        options, program_kwargs = self.split_options(kwargs)
        defaults = self.sampling_defaults(options)
        body = self._body(args, program_kwargs)
        return run_program(self.name, body, resolve_backend(backend), defaults, stream, use_thread=bool(use_thread))

    def run_batch(self, batch_kwargs: list[dict[str, Any]] | list[tuple], *, backend: Any = None,
                  num_threads: int | str = "auto", progress_bar: bool = False, generator_style: bool = False,
                  **options: Any) -> list[ProgramState] | Iterator[ProgramState]:
        """Run once per item (a dict of arguments, or a tuple of them in order) on a thread pool, after
        caching the shared prefix; a failing program's state carries its error. generator_style yields
        states in order as they finish."""
        defaults = self.sampling_defaults(options)
        bodies = [self._body(args, kw) for args, kw in self.check_batch(batch_kwargs)]
        resolved = resolve_backend(backend)
        self.precache(None, resolved, len(bodies))
        return run_program_batch(self.name, bodies, resolved, defaults, num_threads, progress_bar, generator_style)

    def bind(self, **kwargs: Any) -> SglFunction:
        """A copy with some arguments fixed."""
        return SglFunction(self.func, self.num_api_spec_tokens, {**self.bind_arguments, **kwargs})

    def trace(self, *, backend: Any = None, **kwargs: Any) -> ProgramGraph:
        """The program's graph; arguments not given stay open. The graph records roles, not their text, so
        it is the same for every backend; a backend given is only checked."""
        if backend is not None:
            as_backend(backend)
        self._bind((), kwargs, partial=True)
        return trace_program(self, kwargs)

    def cache(self, backend: Any = None) -> str:
        """Cache the constant prefix every run starts with (found by tracing) on the backend, as run_batch
        does first; returns that prefix ("" when shorter than global_config.precache_min_chars)."""
        return self._cache_prefix(None, resolve_backend(backend))

    def compile(self, *, backend: Any = None):
        """A `CompiledFunction`: the traced graph, run with independent branches in parallel."""
        from sglbench.lang.compiler import CompiledFunction

        return CompiledFunction(self, backend)

    def __call__(self, *args: Any, **kwargs: Any) -> ProgramState:
        if is_tracing():
            raise TracingError(f"the program calls program {self.name}, which tracing does not follow")
        return self.run(*args, **kwargs)


INPUT_REPR_CHARS = 200


def _short_repr(value: Any) -> str:
    """repr(value) cut to INPUT_REPR_CHARS characters (a repr that raises is named, never raised)."""
    try:
        text = repr(value)
    except Exception as exc:  # a user's object with a broken __repr__
        text = f"<{type(value).__name__}: repr failed: {type(exc).__name__}>"
    return text if len(text) <= INPUT_REPR_CHARS else text[:INPUT_REPR_CHARS - 1] + "…"
