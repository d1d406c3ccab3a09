"""The interpreter: every program state is a stream of expressions run in order on its own worker thread.

Python code adds expressions and moves on; the worker calls the backend. Reading a variable waits
until the worker has set it. A fork hands each child a copy of the parent's state at the fork point
(after a prefix-cache hint); a join waits for the children on the parent's worker, so neither blocks
the Python thread.

    Python thread:  s += a; f = s.fork(2); f += b; f.join(); s += c; s["x"] (waits)
    parent worker:  a .. fork-point ............................ join(waits f0, f1) .. c
    fork workers:        (wait fork-point) b ...... end
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sglbench.ids import new_id
from sglbench.lang.backend.base import BaseBackend, CallContext
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
    SglVariable,
    SglVarScopeBegin,
    SglVarScopeEnd,
    as_expr,
)
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


# ---------------------------------------------------------------------------- one program run
class ProgramRun:
    """One execution of a program: its backend, defaults, telemetry and every state it created."""

    def __init__(self, backend: BaseBackend, defaults: SglSamplingParams, stream: bool, name: str):
        self.program_id = new_id()
        self.backend = backend
        self.defaults = defaults
        self.stream = stream
        self.chat_template = backend.get_chat_template()
        self.telemetry = ProgramTelemetry(self.program_id, name)
        self.body_error: BaseException | None = None
        self._executors: list[StreamExecutor] = []
        self._closed = False
        self._done = threading.Event()
        self._lock = threading.Lock()
        register_run(self.telemetry)
        backend.begin_program(self.program_id, name)

    def new_executor(self) -> StreamExecutor:
        with self._lock:
            if self._closed:
                raise RuntimeError("this program has finished; it cannot create new states")
            executor = StreamExecutor(self)
            self._executors.append(executor)
        self.telemetry.add_state(executor.sid)
        return executor

    def close(self, body_error: BaseException | None) -> None:
        """The program's Python code is done: end every state (their queued work still runs)."""
        with self._lock:
            self._closed = True
            self.body_error = body_error
            executors = list(self._executors)
        for executor in executors:
            executor.end()
        self.on_executor_finished()

    def on_executor_finished(self) -> None:
        with self._lock:
            if self._done.is_set() or not self._closed or not all(e.finished for e in self._executors):
                return
            self._done.set()
        self.telemetry.finish(self.error())
        self.backend.end_program(self.program_id)

    def wait(self) -> None:
        self._done.wait()

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
        with self._cond:
            if self._ended:
                raise RuntimeError("this state has finished (its program returned or its fork was joined)")
            self._queue.append(item)
            self._pending += 1
            self._last_active = time.monotonic()
            self._cond.notify_all()

    def end(self) -> None:
        with self._cond:
            if not self._ended:
                self._ended = True
                self._queue.append(_END)
                self._cond.notify_all()

    @property
    def finished(self) -> bool:
        return self._finished

    def sync(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._pending == 0)

    def wait_finished(self) -> None:
        with self._cond:
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
        with self._cond:
            while True:
                if name in self._variables:
                    return self._variables[name]
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

    def wait_stream(self, var: str | None, pos: int) -> tuple[str, bool]:
        """Text after pos of the whole state (var None) or of variable var, and whether it is final."""
        with self._cond:
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
                    logger.warning("program %s: state %s failed: %r", self.run.telemetry.name, self.sid, exc)
                    with self._cond:
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
            self._update(lambda: self._set(item.name, item.value, None))
        elif isinstance(item, _ForkPoint):
            self._fork_point(item)
        elif isinstance(item, _ForkStart):
            self._fork_start(item)
        elif isinstance(item, _Join):
            self._join(item)
        elif isinstance(item, SglImage):
            raise ValueError(f"sgl.image({item.path!r}): {self.run.backend!r} serves a text-only model; "
                             "images need a vision-language model")
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
            for delta, chunk_meta in self.run.backend.generate_stream(ctx, params):
                pieces.append(delta)
                meta = chunk_meta if chunk_meta is not None else meta
                with self._cond:
                    self._transcript.fill(delta)
                    if name is not None:
                        self._partial[name] = self._partial.get(name, "") + delta
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

    # variables
    def get_var(self, name: str) -> Any:
        return self._executor.get_var(name)

    def set_var(self, name: str, value: Any) -> None:
        self._executor.submit(_SetVar(name, value))

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

    def fork(self, size: int = 1) -> ProgramStateGroup:
        """size copies of this state as it is at this point of the program."""
        size = fork_size(size)
        children = [self._executor.run.new_executor() for _ in range(size)]
        future: Future = Future()
        self._executor.submit(_ForkPoint(size, future))
        for i, child in enumerate(children):
            child.submit(_ForkStart(self._executor, i, future))
        return ProgramStateGroup([ProgramState(c) for c in children], self)

    # streaming
    def text_iter(self, var: str | None = None) -> Iterator[Any]:
        """Yield text as it is generated (run(stream=True)); otherwise the final text or value once."""
        if not self._executor.run.stream:
            yield self.text() if var is None else self.get_var(var)
            return
        pos = 0
        while True:
            chunk, final = self._executor.wait_stream(var, pos)
            pos += len(chunk)
            if chunk:
                yield chunk
            if final:
                return

    async def text_async_iter(self, var: str | None = None, return_meta_data: bool = False) -> AsyncIterator[Any]:
        """`text_iter` for asyncio; with return_meta_data and a var, yields (text, meta_info) pairs."""
        loop = asyncio.get_running_loop()

        def item(chunk: Any) -> Any:
            return (chunk, self._executor.meta_info(var)) if return_meta_data and var is not None else chunk

        if not self._executor.run.stream:
            value = await loop.run_in_executor(None, self.text if var is None else lambda: self.get_var(var))
            yield item(value)
            return
        pos = 0
        while True:
            chunk, final = await loop.run_in_executor(None, self._executor.wait_stream, var, pos)
            pos += len(chunk)
            if chunk:
                yield item(chunk)
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


# ---------------------------------------------------------------------------- running programs
Body = Callable[[ProgramState], Any]


def run_program(name: str, body: Body, backend: BaseBackend, defaults: SglSamplingParams, stream: bool = False,
                capture_errors: bool = False) -> ProgramState:
    """Run body(s) on a fresh state. Blocks until every state of the program finished, unless stream;
    an exception in body is re-raised unless capture_errors (then `state.error()` returns it)."""
    run = ProgramRun(backend, defaults, stream, name)
    state = ProgramState(run.new_executor())

    def execute() -> BaseException | None:
        error = None
        try:
            state.ret_value = body(state)
        except Exception as exc:
            error = exc
        run.close(error)
        return error

    if stream:
        threading.Thread(target=execute, name=f"sgl-program-{name}", daemon=True).start()
        return state
    error = execute()
    run.wait()
    if error is not None and not capture_errors:
        raise error
    return state


def run_program_batch(name: str, bodies: list[Body], backend: BaseBackend, defaults: SglSamplingParams,
                      num_threads: int | str = "auto", progress_bar: bool = False,
                      generator_style: bool = False) -> list[ProgramState] | Iterator[ProgramState]:
    """Run many programs on a thread pool; a failing one reports its error in its state."""
    if num_threads == "auto":
        num_threads = 64
    if not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be a positive integer or 'auto', got {num_threads!r}")
    pool = ThreadPoolExecutor(max(1, min(num_threads, len(bodies))), thread_name_prefix=f"sgl-batch-{name}")
    pbar = None
    if progress_bar:
        from tqdm.auto import tqdm

        pbar = tqdm(total=len(bodies), desc=name)
    futures = [pool.submit(run_program, name, body, backend, defaults, False, True) for body in bodies]
    if pbar is not None:
        for f in futures:
            f.add_done_callback(lambda _: pbar.update(1))

    def results() -> Iterator[ProgramState]:
        try:
            for f in futures:
                yield f.result()
        finally:
            pool.shutdown(wait=False)
            if pbar is not None:
                pbar.close()

    return results() if generator_style else list(results())
