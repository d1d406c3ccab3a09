"""The tracer: run a program's Python code against recording states to get its graph.

Arguments left open become placeholders that can be added as text (also inside f-strings, through
markers) but not branched on; a generated variable read back is a placeholder too. The graph holds
one node per expression, per state, with edges for program order, fork, data and join; tracing stops
(graph.complete False) where the code needs a value only a run can give.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sglbench.lang.chat_template import ChatTemplate, Transcript
from sglbench.lang.ir import (
    SglArgument,
    SglConstantText,
    SglExpr,
    SglExprList,
    SglGen,
    SglImage,
    SglRoleBegin,
    SglRoleEnd,
    SglSelect,
    SglSeparateReasoning,
    SglVariable,
    SglVarScopeBegin,
    SglVarScopeEnd,
    SglVideo,
    TracingError,
    _Placeholder,
)
from sglbench.lang.state_api import StateGroupMethods, StateMethods, check_join_mode, fork_size

if TYPE_CHECKING:
    from sglbench.lang.function import SglFunction

_MARKER = re.compile("\ue000(\\d+)\ue001")
_local = threading.local()


def is_tracing() -> bool:
    """Whether this thread is inside `trace_program`."""
    return getattr(_local, "depth", 0) > 0


@contextmanager
def _tracing_scope() -> Iterator[None]:
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        yield
    finally:
        _local.depth -= 1


@dataclass(frozen=True)
class TraceNode:
    """One recorded expression. payload is what the compiler replays (an expression, a name, ...)."""

    id: int
    kind: str  # text argument gen select role_begin role_end var_scope_begin var_scope_end variable set_var
    #            image video separate_reasoning fork fork_item join
    state: int
    label: str
    payload: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class TraceEdge:
    src: int
    dst: int
    kind: str  # "next" (program order) | "fork" | "data" (variable read) | "join"


def _dot_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


_SHAPES = {"gen": "ellipse", "select": "ellipse", "fork": "diamond", "join": "diamond", "argument": "note"}
_EDGE_STYLES = {"next": "", "fork": " [style=bold]", "data": " [style=dashed, color=blue]", "join": " [style=bold]"}


@dataclass(frozen=True)
class ProgramGraph:
    """A traced program: nodes in program order, their edges, and whether tracing saw all of it."""

    name: str
    nodes: tuple[TraceNode, ...]
    edges: tuple[TraceEdge, ...]
    num_states: int
    complete: bool
    stop_reason: str | None = None

    def count(self, kind: str) -> int:
        return sum(n.kind == kind for n in self.nodes)

    def constant_prefix(self, template: ChatTemplate) -> str:
        """The text every run starts with: the root state's leading constant text and role markers."""
        transcript = Transcript(template)
        for node in self.nodes:
            if node.state != 0:
                continue
            if node.kind == "text":
                transcript.fill(node.payload)
            elif node.kind in ("role_begin", "role_end"):
                try:
                    (transcript.begin_role if node.kind == "role_begin" else transcript.end_role)(node.payload.role)
                except ValueError:
                    break
            else:
                break
        return transcript.text

    def to_dot(self) -> str:
        """Graphviz DOT text: one cluster per state, bold fork/join edges, dashed data edges."""
        lines = [f"digraph {_dot_string(self.name)} {{", "  rankdir=TB;",
                 '  node [shape=box, fontname="monospace", fontsize=10];']
        for state in range(self.num_states):
            title = "s" if state == 0 else f"state {state}"
            lines.append(f"  subgraph cluster_{state} {{")
            lines.append(f"    label={_dot_string(title)};")
            for n in self.nodes:
                if n.state == state:
                    shape = _SHAPES.get(n.kind, "box")
                    lines.append(f"    n{n.id} [label={_dot_string(n.label)}, shape={shape}];")
            lines.append("  }")
        for e in self.edges:
            lines.append(f"  n{e.src} -> n{e.dst}{_EDGE_STYLES[e.kind]};")
        if not self.complete:
            lines.append(f"  stopped [label={_dot_string('tracing stopped: ' + (self.stop_reason or ''))}, shape=plaintext];")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def __repr__(self) -> str:
        status = "complete" if self.complete else f"stopped: {self.stop_reason}"
        return f"ProgramGraph({self.name!r}, nodes={len(self.nodes)}, states={self.num_states}, {status})"


def _short(text: str, limit: int = 32) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _label(expr: SglExpr) -> str:
    if isinstance(expr, SglGen):
        extra = f" max_tokens={expr.params.max_new_tokens}" if expr.params.max_new_tokens is not None else ""
        return f"gen {expr.name or ''}{extra}".rstrip()
    if isinstance(expr, SglSelect):
        return f"select {expr.name or ''} [{'|'.join(expr.choices)}]"
    if isinstance(expr, SglRoleBegin):
        return f"<{expr.role}>"
    if isinstance(expr, SglRoleEnd):
        return f"</{expr.role}>"
    if isinstance(expr, SglVarScopeBegin):
        return f"var_scope {expr.name} {{"
    if isinstance(expr, SglVarScopeEnd):
        return f"}} {expr.name}"
    if isinstance(expr, SglSeparateReasoning):
        return f"separate_reasoning {' '.join(expr.names)} ({expr.model_type})"
    if isinstance(expr, SglVideo):
        return f"video {expr.path} x{expr.num_frames}"
    assert isinstance(expr, SglImage)
    return f"image {expr.path}"


def _produced(expr: SglExpr) -> tuple[str, ...]:
    """The variables an expression sets."""
    if isinstance(expr, SglSeparateReasoning):
        return (*expr.names, *map(expr.reasoning_name, expr.names))
    name = getattr(expr, "name", None)
    return () if name is None or isinstance(expr, SglVarScopeBegin) else (name,)


_KINDS = {SglGen: "gen", SglSelect: "select", SglRoleBegin: "role_begin", SglRoleEnd: "role_end",
          SglVarScopeBegin: "var_scope_begin", SglVarScopeEnd: "var_scope_end", SglImage: "image",
          SglVideo: "video", SglSeparateReasoning: "separate_reasoning"}


@dataclass(frozen=True)
class _Produced:
    """A variable whose value a run computes, made by trace node `node`."""

    node: int


class _Recorder:
    """The nodes and edges of one trace, and the placeholders its markers stand for."""

    def __init__(self) -> None:
        self.nodes: list[TraceNode] = []
        self.edges: list[TraceEdge] = []
        self.num_states = 0
        self.num_groups = 0
        self.placeholders: list[_Placeholder] = []

    def new_state(self) -> int:
        self.num_states += 1
        return self.num_states - 1

    def add(self, kind: str, state: int, label: str, payload: Any, after: int | None, edge: str = "next") -> int:
        node = TraceNode(len(self.nodes), kind, state, label, payload)
        self.nodes.append(node)
        if after is not None:
            self.edges.append(TraceEdge(after, node.id, edge))
        return node.id

    def marker(self) -> str:
        return f"\ue000{len(self.placeholders)}\ue001"

    def argument(self, name: str) -> SglArgument:
        arg = SglArgument(name, marker=self.marker())
        self.placeholders.append(arg)
        return arg

    def variable(self, name: str, source: TracerState, node: int) -> SglVariable:
        var = SglVariable(name, source, marker=self.marker(), node=node)
        self.placeholders.append(var)
        return var


class TracerState(StateMethods):
    """Records what a program adds instead of running it; mirrors `ProgramState`."""

    def __init__(self, recorder: _Recorder, variables: dict[str, Any]):
        self._rec = recorder
        self.index = recorder.new_state()
        self.last: int | None = None
        self._variables = variables
        self._assigned: list[str] = []
        self.ret_value: Any = None

    def _node(self, kind: str, label: str, payload: Any, edge: str = "next", after: int | None = None) -> int:
        self.last = self._rec.add(kind, self.index, label, payload, self.last if after is None else after, edge)
        return self.last

    def _add(self, expr: SglExpr) -> None:
        if isinstance(expr, SglExprList):
            for e in expr.exprs:
                self._add(e)
        elif isinstance(expr, SglConstantText):
            self._fill(expr.value)
        elif isinstance(expr, SglArgument):
            self._node("argument", f"arg {expr.name}", expr.name)
        elif isinstance(expr, SglVariable):
            node = self._node("variable", f"read {expr.name}", (expr.source.index, expr.name))
            self._rec.edges.append(TraceEdge(expr.node, node, "data"))
        elif type(expr) in _KINDS:
            node = self._node(_KINDS[type(expr)], _label(expr), expr)
            for name in _produced(expr):
                self._produce(name, node)
        else:
            raise TypeError(f"cannot trace {expr!r}")

    def _fill(self, text: str) -> None:
        pos = 0
        for m in _MARKER.finditer(text):
            index = int(m.group(1))
            if index >= len(self._rec.placeholders) or self._rec.placeholders[index].marker != m.group(0):
                continue
            if m.start() > pos:
                self._node("text", _short(text[pos:m.start()]), text[pos:m.start()])
            self._add(self._rec.placeholders[index])
            pos = m.end()
        if pos < len(text):
            self._node("text", _short(text[pos:]), text[pos:])

    def _produce(self, name: str, node: int) -> None:
        self._variables[name] = _Produced(node)
        if name not in self._assigned:
            self._assigned.append(name)

    # variables
    def get_var(self, name: str) -> Any:
        if name not in self._variables:
            raise TracingError(f"variable {name!r} is read before any call sets it")
        value = self._variables[name]
        return self._rec.variable(name, self, value.node) if isinstance(value, _Produced) else value

    def set_var(self, name: str, value: Any) -> None:
        if isinstance(value, _Placeholder) or (isinstance(value, str) and _MARKER.search(value)):
            raise TracingError(f"variable {name!r} is set to a value unknown while tracing")
        self._variables[name] = value
        if name not in self._assigned:
            self._assigned.append(name)
        self._node("set_var", f"{name} = {_short(repr(value), 16)}", (name, value))

    def __getitem__(self, name: str) -> Any:
        return self.get_var(name)

    def __setitem__(self, name: str, value: Any) -> None:
        self.set_var(name, value)

    def __contains__(self, name: str) -> bool:
        return name in self._variables

    def sync(self) -> None:
        """Nothing to wait for while tracing."""

    def _unknown(self, what: str):
        raise TracingError(f"s.{what}() needs generated output, which tracing does not have")

    def text(self) -> str:
        return self._unknown("text")

    def messages(self) -> list[dict]:
        return self._unknown("messages")

    def get_meta_info(self, name: str) -> Any:
        return self._unknown("get_meta_info")

    def fork(self, size: int = 1, position_ids_offset: list[int] | None = None) -> TracerGroup:
        size = fork_size(size)
        group = self._rec.num_groups
        self._rec.num_groups += 1
        children = [TracerState(self._rec, dict(self._variables)) for _ in range(size)]
        fork_node = self._node("fork", f"fork x{size}", (group, tuple(c.index for c in children)))
        for i, child in enumerate(children):
            child._node("fork_item", f"fork item {i}", (self.index, i), edge="fork", after=fork_node)
        return TracerGroup(children, self, group)


class TracerGroup(StateGroupMethods):
    def __init__(self, states: list[TracerState], src_state: TracerState, group: int):
        self.states = states
        self.src_state = src_state
        self.group = group
        self._joined = False

    def join(self, mode: str = "gather_variable") -> None:
        check_join_mode(mode)
        if self._joined:
            raise RuntimeError("these forks were already joined")
        self._joined = True
        src = self.src_state
        node = src._node("join", f"join {mode}", (self.group, mode))
        for child in self.states:
            src._rec.edges.append(TraceEdge(child.last, node, "join"))  # type: ignore[arg-type]
        if mode == "gather_variable":
            for name in dict.fromkeys(n for child in self.states for n in child._assigned):
                src._produce(name, node)


def trace_program(program: SglFunction, arguments: dict[str, Any]) -> ProgramGraph:
    """Trace program with the given arguments; the others (and not bound ones) stay placeholders."""
    recorder = _Recorder()
    args = {name: recorder.argument(name) for name in program.arg_names}
    args.update(program.bind_arguments)
    args.update(arguments)
    state = TracerState(recorder, {})
    complete, reason = True, None
    with _tracing_scope():
        try:
            state.ret_value = program.func(state, **args)
        except Exception as exc:
            complete, reason = False, f"{type(exc).__name__}: {exc}"
    return ProgramGraph(program.name, tuple(recorder.nodes), tuple(recorder.edges), recorder.num_states,
                        complete, reason)
