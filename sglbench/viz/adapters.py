"""The language layer's traces and run telemetry as neutral `ProgramGraph`s for the graph view."""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any

from sglbench.viz.graph import GraphNode, ProgramGraph


def graph_from_trace(trace: Any) -> ProgramGraph:
    """A traced program (sglbench.lang.tracer.ProgramGraph): every traced step waiting to run."""
    nodes = tuple(GraphNode(str(n.id), n.label, n.kind) for n in trace.nodes)
    edges = tuple(dict.fromkeys((str(e.src), str(e.dst)) for e in trace.edges))
    return ProgramGraph(nodes, edges, name=trace.name)


def graph_from_telemetry(run: Any) -> ProgramGraph:
    """A program run (sglbench.lang.telemetry.ProgramTelemetry): per state, its start then its calls
    and joins in time order; fork edges into each child, join edges out of each child's last step."""
    done = run.finished is not None
    nodes: dict[str, GraphNode] = {}
    timeline: dict[str, list[tuple[float, str]]] = defaultdict(list)  # state -> [(time, node id)]
    started = {fork.child: fork.time for fork in run.forks}
    rank = {state: i for i, state in enumerate(run.states)}  # creation order: stable across runs
    for index, state in enumerate(run.states):
        node_id = f"state:{index}"
        label = "program" if index == 0 else f"branch {index}"
        nodes[node_id] = GraphNode(node_id, label, "state", "done" if done else "running")
        timeline[state].append((started.get(state, run.started), node_id))
    # Ids and order from (state, position in state), not finish order, so parallel runs draw the same.
    per_state: dict[str, int] = defaultdict(int)
    for call in sorted(run.calls, key=lambda c: (rank.get(c.state_id, len(rank)), c.queued)):
        node_id = f"call:{rank.get(call.state_id, '?')}.{per_state[call.state_id]}"
        per_state[call.state_id] += 1
        label = f"{call.kind} {call.name or ''}".strip() + f" ({call.completion_tokens} tok)"
        nodes[node_id] = GraphNode(node_id, label, call.kind, "done", call.finished - call.queued)
        timeline[call.state_id].append((call.queued, node_id))
    # One join node per (parent, join call); its children join within a millisecond of each other.
    joins: dict[tuple[str, float], list[tuple[float, str]]] = defaultdict(list)
    for join in run.joins:
        joins[(join.parent, round(join.time, 3))].append((join.time, join.child))
    ordered = sorted(joins.items(), key=lambda kv: max(t for t, _ in kv[1]))
    for k, ((parent, _), members) in enumerate(ordered):
        node_id = f"join:{k}"
        nodes[node_id] = GraphNode(node_id, "join", "join", "done")
        timeline[parent].append((max(t for t, _ in members), node_id))  # the real time, never rounded up
    edges: list[tuple[str, str]] = []
    for steps in timeline.values():
        steps.sort()
        edges += [(a, b) for (_, a), (_, b) in itertools.pairwise(steps)]
    for fork in run.forks:
        parent_steps = [n for t, n in timeline.get(fork.parent, []) if t <= fork.time]
        child = f"state:{rank.get(fork.child)}"
        if parent_steps and child in nodes:
            edges.append((parent_steps[-1], child))
    for k, (_, members) in enumerate(ordered):
        for _, child in members:
            child_steps = [n for t, n in timeline.get(child, []) if n in nodes]
            if child_steps:
                edges.append((child_steps[-1], f"join:{k}"))
    try:
        return ProgramGraph(tuple(nodes.values()), tuple(dict.fromkeys(edges)), name=run.name)
    except ValueError:  # clock ties made a fork/join edge point backwards: keep each state's own chain
        chains = tuple((a, b) for steps in timeline.values() for (_, a), (_, b) in itertools.pairwise(steps))
        return ProgramGraph(tuple(nodes.values()), chains, name=run.name)


def recent_program_graphs(limit: int = 8) -> list[ProgramGraph]:
    """Graphs of the latest program runs, newest last (what the dashboard's Programs tab polls)."""
    from sglbench.lang.telemetry import recent_runs

    return [graph_from_telemetry(run) for run in recent_runs(limit)]
