"""The interpreter: every program state is a stream of expressions run in order on its own worker thread.

Python code adds expressions and moves on; the worker calls the backend. Reading a variable waits
until the worker has set it. A fork hands each child a copy of the parent's state at the fork point
(after a prefix-cache hint); a join waits for the children on the parent's worker, so neither blocks
the Python thread.

    Python thread:  s += a; f = s.fork(2); f += b; f.join(); s += c; s["x"] (waits)
    parent worker:  a .. fork-point ............................ join(waits f0, f1) .. c
    fork workers:        (wait fork-point) b ...... end

Each `run` / `run_batch` call owns a cancel scope (cancel.py) that its programs and their requests join:
KeyboardInterrupt while the call blocks (a notebook's Interrupt) cancels the scope, which aborts the requests
in the engine, fails the programs' states with ProgramCancelled and keeps programs not started from starting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sglbench.ids import new_id
from sglbench.lang import cancel
from sglbench.lang.backend.base import BaseBackend, CallContext
from sglbench.lang.cancel import CancelScope, ProgramCancelled
from sglbench.lang.chat_template import Transcript
from sglbench.lang.global_config import global_config
from sglbench.lang.ir import (
    SglConstantText,
    SglExpr,
    SglExprList,
    SglGen,
    SglImage,
    SglRoleBegin,
    SglRoleEnd,
    SglSamplingParams,
    SglSelect,
    SglSeparateReasoning,
    SglVariable,
    SglVarScopeBegin,
    SglVarScopeEnd,
    SglVideo,
    as_expr,
)
from sglbench.lang.progress import BatchProgressTracker, ProgressBar, set_current
from sglbench.lang.reasoning import reasoning_format, split_reasoning
from sglbench.lang.state_api import StateGroupMethods, StateMethods, check_join_mode, fork_size
from sglbench.lang.telemetry import ForkEdge, JoinEdge, ProgramTelemetry, call_record, register_run

logger = logging.getLogger(__name__)


class MissingVariableError(KeyError):
    """A variable that no call of the state sets (or has set yet)."""

    def __str__(self) -> str:
        return str(self.args[0])


# ---------------------------------------------------------------------------- stream instructions
@dataclass(frozen=True)
class _Snapshot:
    transcript: Transcript
    variables: dict
    meta_info: dict


@dataclass(frozen=True, eq=False)
class _ForkPoint:
    """Parent side of a fork: hint the backend, then publish the state the children start from."""

    num_children: int
    future: Future


@dataclass(frozen=True, eq=False)
class _ForkStart:
    """Child side of a fork: wait for the parent's fork point and copy its state."""

    parent: StreamExecutor
    index: int
    future: Future


@dataclass(frozen=True, eq=False)
class _Join:
    children: tuple[StreamExecutor, ...]
    mode: str


@dataclass(frozen=True, eq=False)
class _SetVar:
    name: str
    value: Any


_END = object()


def _replace_last(transcript: Transcript, old: str, new: str) -> None:
    """Replace the last occurrence of old in the transcript, also in the closed message that holds it."""
    at = transcript.text.rfind(old)
    if at < 0 or old == new:
        return
    transcript.text = transcript.text[:at] + new + transcript.text[at + len(old):]
    if transcript.role is not None and at >= transcript.role_begin:
        return  # the open role's message is taken from the text when it ends
    if transcript.role is not None:
        transcript.role_begin += len(new) - len(old)
    message = next((m for m in reversed(transcript.messages) if old in m["content"]), None)
    if message is not None:
        head, _, tail = message["content"].rpartition(old)
        message["content"] = head + new + tail


# ---------------------------------------------------------------------------- one program run
class ProgramRun:
    """One execution of a program: its backend, defaults, telemetry and every state it created."""

    def __init__(self, backend: BaseBackend, defaults: SglSamplingParams, stream: bool, name: str,
                 use_thread: bool = True, scope: CancelScope | None = None):
        self.scope = scope or CancelScope(f"run({name})")
        self.program_id = new_id()
        self.backend = backend
        self.defaults = defaults
        self.stream = stream
        self.use_thread = use_thread  # False: each `s += ...` returns once it has run (SGLang's use_thread)
        self.chat_template = backend.get_chat_template()
        self.telemetry = ProgramTelemetry(self.program_id, name)
        self.body_error: BaseException | None = None
        self._executors: list[StreamExecutor] = []
        self._closed = False
        self._done = threading.Event()
        self._lock = threading.Lock()
        self.scope.add_program(self)  # ProgramCancelled: the call was interrupted before this program began
        register_run(self.telemetry)
        backend.begin_program(self.program_id, name)

    def new_executor(self) -> StreamExecutor:
        self.scope.check()
        with self._lock:
            if self._closed:
                raise RuntimeError("this program has finished; it cannot create new states")
            executor = StreamExecutor(self)
            self._executors.append(executor)
        self.telemetry.add_state(executor.sid)
        return executor

    def close(self, body_error: BaseException | None) -> None:
        """The program's Python code is done (or cancelled): end every state (their queued work still runs).
        Only the first call counts."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.body_error = body_error
            executors = list(self._executors)
        for executor in executors:
            executor.end()
        self.on_executor_finished()

    def cancel(self, error: ProgramCancelled) -> None:
        """Stop the program (its scope was cancelled): each state fails with error, skipping what is queued,
        once its current backend call returns (its requests were aborted), and every state is ended."""
        with self._lock:
            executors = list(self._executors)
        for executor in executors:
            executor.cancel(error)
        self.close(error)

    def on_executor_finished(self) -> None:
        with self._lock:
            if self._done.is_set() or not self._closed or not all(e.finished for e in self._executors):
                return
            self._done.set()
        self.scope.remove_program(self)
        self.telemetry.finish(self.error())
        self.backend.end_program(self.program_id)

    def wait(self) -> None:
        self._done.wait()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def error(self) -> BaseException | None:
        """The program's first error: its Python code's, else its root state's, else any fork's."""
        if self.body_error is not None:
            return self.body_error
        return next((e.error for e in list(self._executors) if e.error is not None), None)


# ---------------------------------------------------------------------------- one state's stream
class StreamExecutor:
    """Runs one state's expressions on a worker thread; all fields are guarded by `_cond`."""

    def __init__(self, run: ProgramRun):
        self.run = run
        self.sid = new_id()
        self._cond = threading.Condition()
        self._transcript = Transcript(run.chat_template)
        self._variables: dict[str, Any] = {}
        self._meta_info: dict[str, Any] = {}
        self._partial: dict[str, str] = {}  # variables being streamed
        self._chunks: dict[str, list[tuple[str, dict | None]]] = {}  # streamed variables' (delta, meta so far)
        self._assigned: list[str] = []  # variables set since the state began (or forked)
        self._scopes: dict[str, int] = {}
        self._fork_pos = 0  # text length when this state was forked
        self._pending = 0  # submitted expressions not yet run
        self._last_active = time.monotonic()
        self._ended = False
        self._finished = False
        self.error: BaseException | None = None
        self._queue: list[Any] = []
        self._thread = threading.Thread(target=self._work, name=f"sgl-state-{self.sid}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ caller side
    def submit(self, item: Any) -> None:
        self.run.scope.check()
        with self._cond:
            if self._ended:
                raise RuntimeError("this state has finished (its program returned or its fork was joined)")
            self._enqueue(item)

    def _enqueue(self, item: Any) -> None:
        """Queue item for the worker (caller holds _cond)."""
        self._queue.append(item)
        self._pending += 1
        self._last_active = time.monotonic()
        self._cond.notify_all()

    def set_var(self, name: str, value: Any) -> None:
        """Set variable name after the work queued so far; on a finished state (SGLang allows it, e.g.
        `state["x"] = int(state["x"])` after run() returns) once its remaining work is done."""
        with self._cond:
            if not self._ended:
                self._enqueue(_SetVar(name, value))
                return
            self._cond.wait_for(lambda: self._finished)
            self._set(name, value, self._meta_info.get(name))
            self._cond.notify_all()

    def end(self) -> None:
        with self._cond:
            if not self._ended:
                self._ended = True
                self._queue.append(_END)
                self._cond.notify_all()

    def cancel(self, error: ProgramCancelled) -> None:
        """Fail the state with error unless it finished: its worker skips what is queued, readers stop waiting."""
        with self._cond:
            if not self._finished and self.error is None:
                self.error = error
                self._cond.notify_all()

    @property
    def finished(self) -> bool:
        return self._finished

    @contextlib.contextmanager
    def _interruptible(self) -> Iterator[None]:
        """A wait that KeyboardInterrupt (a notebook's Interrupt, on the main thread) breaks cancels the call that
        started the program (e.g. a streamed run read by the cell), unless the program is done."""
        try:
            yield
        except KeyboardInterrupt:
            if not self.run.done:
                cancel.interrupt(self.run.scope)
            raise

    def sync(self) -> None:
        with self._interruptible(), self._cond:
            self._cond.wait_for(lambda: self._pending == 0)

    def wait_finished(self) -> None:
        with self._interruptible(), self._cond:
            self._cond.wait_for(lambda: self._finished)

    def text(self) -> str:
        with self._cond:
            return self._transcript.text

    def messages(self) -> list[dict]:
        with self._cond:
            return [dict(m) for m in self._transcript.messages]

    def has_var(self, name: str) -> bool:
        with self._cond:
            return name in self._variables

    def meta_info(self, name: str) -> Any:
        with self._cond:
            return self._meta_info.get(name)

    def get_var(self, name: str, timeout: float | None = None) -> Any:
        """Wait until the state sets variable name. Fails at once if the state failed or finished
        without it, and after `timeout` seconds (default global_config.variable_timeout) of the state
        sitting idle without it."""
        timeout = global_config.variable_timeout if timeout is None else timeout
        with self._interruptible(), self._cond:
            while True:
                if name in self._variables:
                    return self._variables[name]
                if isinstance(self.error, ProgramCancelled):
                    raise ProgramCancelled(str(self.error))
                if self.error is not None:
                    raise RuntimeError(f"the program failed before setting variable {name!r}: {self.error!r}"
                                       ) from self.error
                if self._finished:
                    raise MissingVariableError(
                        f"variable {name!r} was never set: no gen/select/var_scope of this state is named "
                        f"{name!r} (it has {sorted(self._variables)})"
                    )
                if self._pending:
                    self._cond.wait()
                    continue
                idle = time.monotonic() - self._last_active
                if idle >= timeout:
                    raise TimeoutError(
                        f"variable {name!r} is not set and the state has been idle for {idle:.1f} s: no gen/"
                        f"select/var_scope named {name!r} was added before this read (it has "
                        f"{sorted(self._variables)}); global_config.variable_timeout sets this limit"
                    )
                self._cond.wait(timeout - idle)

    def wait_chunks(self, var: str, index: int) -> tuple[list[tuple[str, dict | None]], bool]:
        """A variable's stream items (delta, meta_info so far or None) from index on, and whether they are
        all; a variable set without streaming is one item (its value, its meta_info)."""
        with self._interruptible(), self._cond:
            while True:
                done = var in self._variables and var not in self._partial
                chunks = self._chunks.get(var)
                if chunks is None and done:
                    return ([(str(self._variables[var]), self._meta_info.get(var))] if index == 0 else []), True
                if chunks is not None and (len(chunks) > index or done):
                    return chunks[index:], done
                if self._finished:
                    return [], True
                self._cond.wait()

    def wait_stream(self, var: str | None, pos: int) -> tuple[str, bool]:
        """Text after pos of the whole state (var None) or of variable var, and whether it is final."""
        with self._interruptible(), self._cond:
            while True:
                if var is None:
                    current, final = self._transcript.text, self._finished
                elif var in self._variables and var not in self._partial:
                    current, final = str(self._variables[var]), True
                else:
                    current, final = self._partial.get(var, ""), self._finished
                if len(current) > pos or final:
                    return current[pos:], final
                self._cond.wait()

    # ------------------------------------------------------------------ worker side
    def _work(self) -> None:
        cancel.bind(self.run.scope)  # backends register this state's requests in its program's scope
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue))
                item = self._queue.pop(0)
                failed = self.error is not None
            if item is _END:
                break
            if failed:
                if isinstance(item, _ForkPoint):
                    item.future.set_exception(RuntimeError("the parent state failed before the fork"))
            else:
                try:
                    self._execute(item)
                except Exception as exc:
                    if not isinstance(exc, ProgramCancelled):
                        logger.warning("program %s: state %s failed: %r", self.run.telemetry.name, self.sid, exc)
                    with self._cond:
                        if self.error is None:
                            self.error = exc
            with self._cond:
                self._pending -= 1
                self._last_active = time.monotonic()
                self._cond.notify_all()
        with self._cond:
            self._finished = True
            self._cond.notify_all()
        self.run.on_executor_finished()

    def _execute(self, item: Any) -> None:
        if isinstance(item, SglExprList):
            for expr in item.exprs:
                self._execute(expr)
        elif isinstance(item, SglConstantText):
            self._update(lambda: self._transcript.fill(item.value))
        elif isinstance(item, SglGen):
            self._gen(item)
        elif isinstance(item, SglSelect):
            self._select(item)
        elif isinstance(item, SglRoleBegin):
            self._update(lambda: self._transcript.begin_role(item.role))
        elif isinstance(item, SglRoleEnd):
            self._update(lambda: self._transcript.end_role(item.role))
        elif isinstance(item, SglVarScopeBegin):
            self._update(lambda: self._scopes.__setitem__(item.name, len(self._transcript.text)))
        elif isinstance(item, SglVarScopeEnd):
            self._var_scope_end(item.name)
        elif isinstance(item, SglVariable):
            self._execute(as_expr(item.source.get_var(item.name)))
        elif isinstance(item, _SetVar):
            self._update(lambda: self._set(item.name, item.value, self._meta_info.get(item.name)))
        elif isinstance(item, SglSeparateReasoning):
            self._separate_reasoning(item)
        elif isinstance(item, _ForkPoint):
            self._fork_point(item)
        elif isinstance(item, _ForkStart):
            self._fork_start(item)
        elif isinstance(item, _Join):
            self._join(item)
        elif isinstance(item, (SglImage, SglVideo)):
            call = f"sgl.image({item.path!r})" if isinstance(item, SglImage) else \
                f"sgl.video({item.path!r}, {item.num_frames})"
            raise ValueError(f"{call}: {self.run.backend!r} serves a text-only model; images and videos need a "
                             "vision-language model, which sglbench does not run")
        else:
            raise TypeError(f"cannot execute {item!r}")

    def _update(self, change: Callable[[], Any]) -> None:
        with self._cond:
            change()
            self._cond.notify_all()

    def _set(self, name: str, value: Any, meta: Any) -> None:
        """Set a variable (caller holds _cond)."""
        self._variables[name] = value
        self._meta_info[name] = meta
        self._partial.pop(name, None)
        if name not in self._assigned:
            self._assigned.append(name)

    def _context(self) -> CallContext:
        """What the backend sees at a call; ProgramCancelled instead once the program's scope is cancelled
        (every backend call starts here, so no backend starts new work for a cancelled program)."""
        self.run.scope.check()
        with self._cond:
            return CallContext(self._transcript.text, tuple(dict(m) for m in self._transcript.messages),
                               self.run.program_id, self.sid)

    def _record(self, kind: str, name: str | None, meta: Any, started: float) -> None:
        self.run.telemetry.add_call(
            call_record(self.run.program_id, self.sid, kind, name, meta, started, time.time()))

    def _gen(self, expr: SglGen) -> None:
        params = expr.params.merged_over(self.run.defaults)
        ctx, started, name = self._context(), time.time(), expr.name
        if self.run.stream and params.n in (None, 1):
            pieces, meta = [], {}
            if name is not None:
                self._update(lambda: (self._partial.__setitem__(name, ""), self._chunks.__setitem__(name, [])))
            for delta, chunk_meta in self.run.backend.generate_stream(ctx, params):
                self.run.scope.check()  # stop reading (an HTTP stream is closed with its generator)
                pieces.append(delta)
                meta = chunk_meta if chunk_meta is not None else meta
                with self._cond:
                    self._transcript.fill(delta)
                    if name is not None:
                        self._partial[name] += delta
                        self._chunks[name].append((delta, chunk_meta))
                    self._cond.notify_all()
            comp: Any = "".join(pieces)
        else:
            comp, meta = self.run.backend.generate(ctx, params)
            self._update(lambda: self._transcript.fill(comp if isinstance(comp, str) else comp[0]))
        self._record("gen", name, meta, started)
        if name is not None:
            self._update(lambda: self._set(name, comp, meta))

    def _select(self, expr: SglSelect) -> None:
        ctx, started = self._context(), time.time()
        decision = self.run.backend.select(ctx, list(expr.choices), expr.temperature, expr.choices_method)
        self._record("select", expr.name, decision.meta_info, started)
        with self._cond:
            self._transcript.fill(decision.decision)
            if expr.name is not None:
                self._set(expr.name, decision.decision, decision.meta_info)
            self._cond.notify_all()

    def _separate_reasoning(self, item: SglSeparateReasoning) -> None:
        """Split each named output into its reasoning and answer variables; the program's text keeps only the
        answer, except when streaming (the reasoning was already streamed; SGLang then splits nothing)."""
        fmt = reasoning_format(item.model_type)
        with self._cond:
            for name in item.names:
                value = self._variables.get(name)
                if not isinstance(value, str):
                    raise ValueError(f"separate_reasoning: variable {name!r} holds {type(value).__name__}, not "
                                     "one generated text (n > 1 samples cannot be split)")
                reasoning, answer = split_reasoning(value, fmt)
                self._set(name, answer, self._meta_info.get(name))
                self._set(item.reasoning_name(name), reasoning, self._meta_info.get(name))
                if not self.run.stream:
                    _replace_last(self._transcript, value, answer)
            self._cond.notify_all()

    def _var_scope_end(self, name: str) -> None:
        with self._cond:
            if name not in self._scopes:
                raise ValueError(f"var_scope {name!r} ends without having begun")
            self._set(name, self._transcript.text[self._scopes.pop(name):], None)
            self._cond.notify_all()

    def _fork_point(self, item: _ForkPoint) -> None:
        try:
            self.run.backend.fork_program(self._context(), item.num_children)
            with self._cond:
                snapshot = _Snapshot(self._transcript.copy(), dict(self._variables), dict(self._meta_info))
            item.future.set_result(snapshot)
        except Exception as exc:
            item.future.set_exception(exc)
            raise

    def _fork_start(self, item: _ForkStart) -> None:
        snapshot: _Snapshot = item.future.result()
        with self._cond:
            self._transcript = snapshot.transcript.copy()
            self._variables, self._meta_info = dict(snapshot.variables), dict(snapshot.meta_info)
            self._assigned, self._fork_pos = [], len(self._transcript.text)
            self._cond.notify_all()
        self.run.telemetry.add_fork(ForkEdge(item.parent.sid, self.sid, item.index, time.time()))

    def since_fork(self) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """Text added since the fork point and the variables (with meta_info) set since then."""
        with self._cond:
            return (self._transcript.text[self._fork_pos:], {n: self._variables[n] for n in self._assigned},
                    {n: self._meta_info.get(n) for n in self._assigned})

    def _join(self, item: _Join) -> None:
        for child in item.children:
            child.wait_finished()
        for i, child in enumerate(item.children):
            if child.error is not None:
                raise RuntimeError(f"fork {i} failed: {child.error!r}") from child.error
        results = [child.since_fork() for child in item.children]
        with self._cond:
            if item.mode == "concate_and_append":
                for text, _, _ in results:
                    self._transcript.fill(text)
            else:
                for name in dict.fromkeys(n for _, variables, _ in results for n in variables):
                    self._set(name, [v.get(name) for _, v, _ in results], [m.get(name) for _, _, m in results])
            self._cond.notify_all()
        now = time.time()
        for child in item.children:
            self.run.telemetry.add_join(JoinEdge(child.sid, self.sid, item.mode, now))


# ---------------------------------------------------------------------------- user-facing states
class ProgramState(StateMethods):
    """The `s` of a program: add to it with `+=`, read variables with `s["name"]`."""

    def __init__(self, executor: StreamExecutor):
        self._executor = executor
        self.ret_value: Any = None

    def _add(self, expr: SglExpr) -> None:
        self._executor.submit(expr)
        if not self._executor.run.use_thread:
            self._executor.sync()
            if self._executor.error is not None:
                raise self._executor.error

    # variables
    def get_var(self, name: str) -> Any:
        return self._executor.get_var(name)

    def set_var(self, name: str, value: Any) -> None:
        """Set variable name, in program order; also allowed once the program has finished."""
        self._executor.set_var(name, value)

    def __getitem__(self, name: str) -> Any:
        return self.get_var(name)

    def __setitem__(self, name: str, value: Any) -> None:
        self.set_var(name, value)

    def __contains__(self, name: str) -> bool:
        self._executor.sync()
        return self._executor.has_var(name)

    def get_meta_info(self, name: str) -> Any:
        """The backend's meta_info of the call that set name (prompt/cached tokens, timings, logprobs)."""
        self.get_var(name)
        return self._executor.meta_info(name)

    # whole state
    def text(self) -> str:
        self._executor.sync()
        return self._executor.text()

    def messages(self) -> list[dict]:
        """The role blocks so far as an OpenAI-style message list."""
        self._executor.sync()
        return self._executor.messages()

    def sync(self) -> None:
        self._executor.sync()

    def error(self) -> BaseException | None:
        """The program's first error (its Python code's, else a state's), once this state's work is done."""
        self._executor.sync()
        return self._executor.run.error()

    @property
    def telemetry(self) -> ProgramTelemetry:
        return self._executor.run.telemetry

    @property
    def program_id(self) -> str:
        return self._executor.run.program_id

    @property
    def state_id(self) -> str:
        return self._executor.sid

    def fork(self, size: int = 1, position_ids_offset: list[int] | None = None) -> ProgramStateGroup:
        """size copies of this state as it is at this point of the program; returns at once.
        position_ids_offset is accepted for SGLang's signature; its interpreter does not use it either."""
        size = fork_size(size)
        children = [self._executor.run.new_executor() for _ in range(size)]
        future: Future = Future()
        self._executor.submit(_ForkPoint(size, future))
        for i, child in enumerate(children):
            child.submit(_ForkStart(self._executor, i, future))
        return ProgramStateGroup([ProgramState(c) for c in children], self)

    # streaming
    def text_iter(self, var_name: str | None = None) -> Iterator[Any]:
        """Yield text as it is generated (run(stream=True)); otherwise the final text or value once."""
        return self._stream(var_name, False)

    async def text_async_iter(self, var_name: str | None = None,
                              return_meta_data: bool = False) -> AsyncIterator[Any]:
        """`text_iter` for asyncio. With return_meta_data and a var_name, (text, meta_info) pairs in SGLang's
        streaming shape: each chunk's meta_info has the counts so far (completion_tokens, ...) and, with
        logprobs, that chunk's own output_token_logprobs and their running total output_token_logprobs_length."""
        loop = asyncio.get_running_loop()
        chunks = self._stream(var_name, return_meta_data)
        while (item := await loop.run_in_executor(None, next, chunks, _END)) is not _END:
            yield item

    def _stream(self, var_name: str | None, with_meta: bool) -> Iterator[Any]:
        with_meta = with_meta and var_name is not None
        if not self._executor.run.stream:
            value = self.text() if var_name is None else self.get_var(var_name)
            yield (value, self._executor.meta_info(var_name)) if with_meta else value
            return
        if with_meta:
            yield from _meta_chunks(self._executor, var_name)  # type: ignore[arg-type]
            return
        pos = 0
        while True:
            chunk, final = self._executor.wait_stream(var_name, pos)
            pos += len(chunk)
            if chunk:
                yield chunk
            if final:
                return

    def __repr__(self) -> str:
        return f"ProgramState({self.text()!r})"


class ProgramStateGroup(StateGroupMethods):
    """The forks of one state; `join()` brings their results back to it."""

    def __init__(self, states: list[ProgramState], src_state: ProgramState):
        self.states = states
        self.src_state = src_state
        self._joined = False

    def join(self, mode: str = "gather_variable") -> None:
        """gather_variable: each variable set in the forks becomes a list in the parent;
        concate_and_append: the forks' new text is appended to the parent, in fork order."""
        check_join_mode(mode)
        if self._joined:
            raise RuntimeError("these forks were already joined")
        self._joined = True
        children = tuple(s._executor for s in self.states)
        self.src_state._executor.submit(_Join(children, mode))
        for child in children:
            child.end()


# ---------------------------------------------------------------------------- streaming with meta_info
_INCREMENTAL_META = ("output_token_logprobs", "output_top_logprobs", "output_token_ids_logprobs")


def _chunk_meta(meta: dict | None, consumed: dict[str, int]) -> dict:
    """A chunk's meta_info from the meta_info so far: the incremental lists cut to what is new since the
    last chunk (consumed counts what earlier chunks had), plus SGLang's output_token_logprobs_length."""
    out = dict(meta or {})
    for key in _INCREMENTAL_META:
        if isinstance(out.get(key), list):
            out[key] = out[key][consumed.get(key, 0):]
            consumed[key] = len(meta[key])  # type: ignore[index]
    if "output_token_logprobs" in out:
        out["output_token_logprobs_length"] = consumed["output_token_logprobs"]
    return out


def _meta_chunks(executor: StreamExecutor, var: str) -> Iterator[tuple[str, dict]]:
    """A streamed variable as (text, meta_info) chunks whose text and logprobs agree: text waits for the
    meta_info that covers it, and each chunk is held until the next, so that meta_info arriving without
    text (e.g. the final token's) joins the last chunk."""
    index, pending, consumed = 0, "", {}
    held: tuple[str, dict | None] | None = None
    while True:
        items, final = executor.wait_chunks(var, index)
        index += len(items)
        for text, meta in items:
            pending += text
            if meta is None:
                continue
            if held is not None and held[0] and pending:
                yield held[0], _chunk_meta(held[1], consumed)
                held = None
            held = (held[0] if held is not None and not pending else pending, meta)
            pending = ""
        if final:
            break
    if held is not None or pending:
        text, meta = held if held is not None else ("", None)
        if text + pending:
            yield text + pending, _chunk_meta(meta, consumed)


# ---------------------------------------------------------------------------- running programs
Body = Callable[[ProgramState], Any]


def _run_body(run: ProgramRun, state: ProgramState, body: Body) -> BaseException | None:
    """Run the program's Python code, then close the run; returns the code's error (None if none)."""
    error = None
    try:
        state.ret_value = body(state)
    except Exception as exc:
        error = exc
    run.close(error)
    if global_config.verbosity >= 2:
        run.wait()
        print(state.text())
    return error


def run_program(name: str, body: Body, backend: BaseBackend, defaults: SglSamplingParams, stream: bool = False,
                capture_errors: bool = False, use_thread: bool = True) -> ProgramState:
    """Run body(s) on a fresh state. Blocks until every state of the program finished, unless stream;
    an exception in body is re-raised unless capture_errors (then `state.error()` returns it).
    KeyboardInterrupt while it blocks (or while a streamed run's state is read) cancels the program: its
    requests are aborted, its states fail with ProgramCancelled, and a line on stderr says so."""
    scope = CancelScope(f"run({name})")
    run = ProgramRun(backend, defaults, stream, name, use_thread, scope)
    run.telemetry.inputs = getattr(body, "inputs", None)
    state = ProgramState(run.new_executor())
    if stream:
        threading.Thread(target=_run_body, args=(run, state, body), name=f"sgl-program-{name}", daemon=True).start()
        return state
    try:
        error = _run_body(run, state, body)
        run.wait()
    except KeyboardInterrupt:
        cancel.interrupt(scope)
        raise
    if error is not None and not capture_errors:
        raise error
    return state


def run_program_batch(name: str, bodies: list[Body], backend: BaseBackend, defaults: SglSamplingParams,
                      num_threads: int | str = "auto", progress_bar: bool = False,
                      generator_style: bool = False) -> list[ProgramState] | Iterator[ProgramState]:
    """Run many programs on a thread pool; a failing one reports its error in its state. Progress is counted
    per finished program (`sglbench.lang.progress.current_batch_progress()`, and a bar with progress_bar).
    KeyboardInterrupt while waiting for results cancels the batch: programs not started never start, running
    ones are cancelled and their requests aborted, and a line on stderr gives the counts."""
    if num_threads == "auto":
        num_threads = 64
    if not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be a positive integer or 'auto', got {num_threads!r}")
    scope = CancelScope(f"run_batch({name})")
    tracker = BatchProgressTracker(name, len(bodies), generated_tokens=backend.generated_tokens)
    set_current(tracker)
    bar = ProgressBar(tracker) if progress_bar else None
    pool = ThreadPoolExecutor(max(1, min(num_threads, len(bodies))), thread_name_prefix=f"sgl-batch-{name}")

    def job(body: Body) -> ProgramState:
        with cancel.bound(scope):
            run = ProgramRun(backend, defaults, False, name, True, scope)  # ProgramCancelled once cancelled
            run.telemetry.inputs = getattr(body, "inputs", None)
            tracker.program_started(run.telemetry)
            try:
                state = ProgramState(run.new_executor())
                _run_body(run, state, body)
                run.wait()
            except BaseException as exc:  # cancelled before its first state: nothing runs, end it
                run.close(exc)
                raise
            finally:
                tracker.program_finished(run.error())
            return state

    futures: list[Future] = []

    def cancel_pending() -> int:
        not_started = sum(f.cancel() for f in futures) + len(bodies) - len(futures)  # also those never queued
        tracker.cancel()
        return not_started

    scope.on_cancel_pending(cancel_pending)

    closed = threading.Event()

    def finish() -> None:
        if closed.is_set():
            return
        closed.set()
        pool.shutdown(wait=False)
        tracker.close()
        if bar is not None:
            bar.close()

    try:
        futures.extend(pool.submit(job, body) for body in bodies)
    except KeyboardInterrupt:
        cancel.interrupt(scope, before_print=finish)
        finish()
        raise

    def results() -> Iterator[ProgramState]:
        try:
            for f in futures:
                yield f.result()
        except KeyboardInterrupt:
            cancel.interrupt(scope, before_print=finish)  # the bar's final state, then the line
            raise
        finally:
            finish()

    return results() if generator_style else list(results())
