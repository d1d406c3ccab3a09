"""The language layer's traces and run telemetry as neutral `ProgramGraph`s for the graph view.

Fork branches are numbered as the trace numbers them: 0 .. n-1 within their fork, in creation order (the
`index` a `ForkEdge` records), never by the order in which the branch threads happened to start.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sglbench.viz.graph import GraphNode, ProgramGraph


@dataclass(frozen=True)
class Step:
    """One graph node with what the neutral `GraphNode` does not carry: its fork branch (None on the main
    state), its output tokens (None for states and joins) and a label without the token count."""

    node: GraphNode
    branch: int | None
    tokens: int | None
    name: str


def is_run(item: Any) -> bool:
    """Whether `item` looks like a program run's telemetry (`sglbench.lang.telemetry.ProgramTelemetry`)."""
    return all(hasattr(item, a) for a in ("states", "calls", "forks", "joins", "started"))


def is_trace(item: Any) -> bool:
    """Whether `item` looks like a traced program (`sglbench.lang.tracer.ProgramGraph`)."""
    return all(hasattr(item, a) for a in ("nodes", "edges", "num_states"))


def state_branches(run: Any) -> dict[str, int]:
    """Fork branch index of every forked state of a run (state id -> index within its fork)."""
    return {fork.child: int(getattr(fork, "index", 0)) for fork in run.forks}


def trace_branches(trace: Any) -> dict[int, int]:
    """Fork branch index of every forked state of a trace (state index -> index within its fork)."""
    return {n.state: int(n.payload[1]) if isinstance(n.payload, tuple) else int(n.label.rsplit(" ", 1)[-1])
            for n in trace.nodes if n.kind == "fork_item"}


def graph_from_trace(trace: Any) -> ProgramGraph:
    """A traced program (sglbench.lang.tracer.ProgramGraph): every traced step waiting to run."""
    nodes = tuple(GraphNode(str(n.id), n.label, n.kind) for n in trace.nodes)
    edges = tuple(dict.fromkeys((str(e.src), str(e.dst)) for e in trace.edges))
    return ProgramGraph(nodes, edges, name=trace.name)


def trace_steps(trace: Any) -> tuple[tuple[Step, ...], tuple[tuple[str, str], ...]]:
    """The steps of `graph_from_trace(trace)` with each node's fork branch."""
    graph = graph_from_trace(trace)
    branches = trace_branches(trace)
    states = {str(n.id): n.state for n in trace.nodes}
    steps = tuple(Step(node, branches.get(states[node.id]), None, node.label) for node in graph.nodes)
    return steps, graph.edges


def run_steps(run: Any) -> tuple[tuple[Step, ...], tuple[tuple[str, str], ...]]:
    """A program run's graph: per state, its start then its calls and joins in time order; fork edges into
    each child (in branch order), join edges out of each child's last step. Node ids come from (state
    creation order, position in state), not finish order, so parallel runs draw the same."""
    done = run.finished is not None
    steps: dict[str, Step] = {}
    timeline: dict[str, list[tuple[float, str]]] = defaultdict(list)  # state -> [(time, node id)]
    started = {fork.child: fork.time for fork in run.forks}
    branches = state_branches(run)
    rank = {state: i for i, state in enumerate(run.states)}  # creation order: stable across runs
    for index, state in enumerate(run.states):
        node_id = f"state:{index}"
        branch = branches.get(state)
        label = "program" if index == 0 else f"branch {branch if branch is not None else index}"
        steps[node_id] = Step(GraphNode(node_id, label, "state", "done" if done else "running"), branch, None, label)
        timeline[state].append((started.get(state, run.started), node_id))
    per_state: dict[str, int] = defaultdict(int)
    for call in sorted(run.calls, key=lambda c: (rank.get(c.state_id, len(rank)), c.queued)):
        node_id = f"call:{rank.get(call.state_id, '?')}.{per_state[call.state_id]}"
        per_state[call.state_id] += 1
        name = f"{call.kind} {call.name or ''}".strip()
        node = GraphNode(node_id, f"{name} ({call.completion_tokens} tok)", call.kind, "done",
                         call.finished - call.queued)
        steps[node_id] = Step(node, branches.get(call.state_id), call.completion_tokens, name)
        timeline[call.state_id].append((call.queued, node_id))
    # One join node per (parent, join call); its children join within a millisecond of each other.
    joins: dict[tuple[str, float], list[tuple[float, str]]] = defaultdict(list)
    for join in run.joins:
        joins[(join.parent, round(join.time, 3))].append((join.time, join.child))
    ordered = sorted(joins.items(), key=lambda kv: max(t for t, _ in kv[1]))
    for k, ((parent, _), members) in enumerate(ordered):
        node_id = f"join:{k}"
        steps[node_id] = Step(GraphNode(node_id, "join", "join", "done"), branches.get(parent), None, "join")
        timeline[parent].append((max(t for t, _ in members), node_id))  # the real time, never rounded up
    edges: list[tuple[str, str]] = []
    for steps_of_state in timeline.values():
        steps_of_state.sort()
        edges += [(a, b) for (_, a), (_, b) in itertools.pairwise(steps_of_state)]
    for fork in sorted(run.forks, key=lambda f: rank.get(f.child, len(rank))):  # branch order, not start order
        parent_steps = [n for t, n in timeline.get(fork.parent, []) if t <= fork.time]
        child = f"state:{rank.get(fork.child)}"
        if parent_steps and child in steps:
            edges.append((parent_steps[-1], child))
    for k, (_, members) in enumerate(ordered):
        for _, child in sorted(members, key=lambda m: rank.get(m[1], len(rank))):
            child_steps = [n for t, n in timeline.get(child, []) if n in steps]
            if child_steps:
                edges.append((child_steps[-1], f"join:{k}"))
    nodes = tuple(s.node for s in steps.values())
    try:
        ProgramGraph(nodes, tuple(dict.fromkeys(edges)), name=run.name)
        return tuple(steps.values()), tuple(dict.fromkeys(edges))
    except ValueError:  # clock ties made a fork/join edge point backwards: keep each state's own chain
        chains = tuple((a, b) for seq in timeline.values() for (_, a), (_, b) in itertools.pairwise(seq))
        return tuple(steps.values()), chains


def graph_from_telemetry(run: Any) -> ProgramGraph:
    """A program run (sglbench.lang.telemetry.ProgramTelemetry) as a graph (see `run_steps`)."""
    steps, edges = run_steps(run)
    return ProgramGraph(tuple(s.node for s in steps), edges, name=run.name)


def as_program_graph(item: Any) -> ProgramGraph:
    """A `ProgramGraph` from a graph, a program run's telemetry or a trace."""
    if isinstance(item, ProgramGraph):
        return item
    if is_run(item):
        return graph_from_telemetry(item)
    if is_trace(item):
        return graph_from_trace(item)
    raise TypeError(f"expected a ProgramGraph, a program run's telemetry or a trace, got {type(item).__name__}")


def recent_program_runs(limit: int = 24) -> list[Any]:
    """The latest program runs' telemetry, newest last (what the dashboard's Programs tab polls)."""
    from sglbench.lang.telemetry import recent_runs

    return recent_runs(limit)


def recent_program_graphs(limit: int = 8) -> list[ProgramGraph]:
    """Graphs of the latest program runs, newest last."""
    from sglbench.lang.telemetry import recent_runs

    return [graph_from_telemetry(run) for run in recent_runs(limit)]
