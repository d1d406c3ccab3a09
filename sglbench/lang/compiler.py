"""The compiler: replay a traced program graph onto interpreter states, all at once.

The graph's nodes are already in an order the program produced them, so replaying them in that order
is a valid schedule. Nothing in a replay waits on the model (variable reads become lazy `SglVariable`
expressions that the reading state's worker resolves), so every state's work is queued immediately
and independent branches run in parallel. Results equal the interpreter's: each state receives the
same expressions in the same order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sglbench.lang.backend import resolve_backend
from sglbench.lang.interpreter import Body, ProgramState, ProgramStateGroup, run_program, run_program_batch
from sglbench.lang.ir import SglVariable, TracingError
from sglbench.lang.tracer import ProgramGraph, trace_program

if TYPE_CHECKING:
    from sglbench.lang.function import SglFunction

_EXPRESSION_KINDS = frozenset({"gen", "select", "role_begin", "role_end", "var_scope_begin", "var_scope_end",
                               "image", "video", "separate_reasoning"})


def replay(graph: ProgramGraph, arguments: dict[str, Any]) -> Body:
    """A program body that adds the graph's expressions to a root state, with arguments filled in."""

    def body(s: ProgramState) -> None:
        states: dict[int, ProgramState] = {0: s}
        groups: dict[int, ProgramStateGroup] = {}
        for node in graph.nodes:
            state = states[node.state]
            if node.kind == "text":
                state += node.payload
            elif node.kind == "argument":
                state += arguments[node.payload]
            elif node.kind in _EXPRESSION_KINDS:
                state += node.payload
            elif node.kind == "variable":
                source, name = node.payload
                state += SglVariable(name, states[source])
            elif node.kind == "set_var":
                state[node.payload[0]] = node.payload[1]
            elif node.kind == "fork":
                group, children = node.payload
                groups[group] = state.fork(len(children))
                states.update(zip(children, groups[group].states))
            elif node.kind == "join":
                group, mode = node.payload
                groups[group].join(mode)
            # fork_item nodes need nothing: their state came into being with its fork

    return body


class CompiledFunction:
    """A program as a fixed graph: `run(**arguments)` queues the whole graph without running Python."""

    def __init__(self, program: SglFunction, backend: Any = None):
        self.program = program
        self.backend = backend
        self.graph = trace_program(program, {})
        if not self.graph.complete:
            raise TracingError(
                f"cannot compile {program.name}: tracing stopped at {self.graph.stop_reason}. A compiled program's "
                "control flow may not depend on generated values or arguments; run it with .run() instead."
            )

    def __repr__(self) -> str:
        return f"CompiledFunction({self.program.name}, {self.graph!r})"

    def run(self, *, stream: bool = False, backend: Any = None, **kwargs: Any) -> ProgramState:
        """Run with program arguments and run() sampling options as keywords."""
        options, arguments = self.program.split_options(kwargs)
        defaults = self.program.sampling_defaults(options)
        body = replay(self.graph, self.program.resolve_arguments(arguments))
        return run_program(self.program.name, body, resolve_backend(backend or self.backend), defaults, stream)

    def run_batch(self, batch_kwargs: list[dict[str, Any]] | list[tuple], *, backend: Any = None,
                  num_threads: int | str = "auto", progress_bar: bool = False, generator_style: bool = False,
                  **options: Any) -> list[ProgramState] | Iterator[ProgramState]:
        defaults = self.program.sampling_defaults(options)
        bodies = [replay(self.graph, self.program.resolve_arguments(kw, args))
                  for args, kw in self.program.check_batch(batch_kwargs)]
        resolved = resolve_backend(backend or self.backend)
        self.program.precache(self.graph, resolved, len(bodies))
        return run_program_batch(self.program.name, bodies, resolved, defaults, num_threads, progress_bar,
                                 generator_style)
