"""ReAct agent, replayed from recorded traces: a constant prefix (instructions and worked trajectories),
then per step a generated thought and action and the observation the trace recorded for that step.

Replaying the recorded observations (instead of calling a search tool) keeps every system's prompts
comparable while the program still interleaves generation with appended text, step after step.
Shape (small / full): 16 / 128 questions of 3 / 6 steps; the prefix (instructions and 1 / 3 worked
trajectories) is ~570 / 2,900 tokens, an observation 20 / 30 words (~55 / 85 tokens); thoughts of 16 / 48
tokens and actions of 8 / 12 tokens, both stopped at a newline.

    python -m sglbench.bench react --size small
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import sglbench as sgl
from sglbench.bench.paper.base import Workload, WorkloadRun, greedy, stop_unless_fixed
from sglbench.bench.paper.cli import main as cli_main
from sglbench.bench.paper.runner import SuiteResult
from sglbench.bench.paper.text import NOUNS, paragraph, phrase, question
from sglbench.lang.function import SglFunction

INSTRUCTIONS = (
    "Solve a question answering task with interleaving Thought, Action, Observation steps. Thought can reason "
    "about the current situation, and Action can be three types:\n(1) Search[entity], which searches the "
    "entity and returns its first paragraph.\n(2) Lookup[keyword], which returns the next sentence containing "
    "keyword in the current passage.\n(3) Finish[answer], which returns the answer and finishes the task.\n"
    "Here are some examples.\n\n"
)


@dataclass(frozen=True)
class Shape:
    questions: int
    steps: int = 4
    shots: int = 2
    thought_tokens: int = 24
    action_tokens: int = 8
    observation_words: int = 30


SHAPES = {
    "tiny": Shape(2, steps=2, shots=1, thought_tokens=4, action_tokens=2, observation_words=8),
    "small": Shape(16, steps=3, shots=1, thought_tokens=16, observation_words=20),
    "full": Shape(128, steps=6, shots=3, thought_tokens=48, action_tokens=12, observation_words=30),
}


@dataclass(frozen=True)
class Step:
    """One recorded step of a trajectory."""

    thought: str
    action: str
    observation: str


def record_trace(rng: random.Random, shape: Shape) -> tuple[str, tuple[Step, ...]]:
    """A question and the steps an agent took on it (the recording the benchmark replays)."""
    steps = []
    for i in range(shape.steps):
        entity = phrase(rng).split(" ", 1)[1]
        action = f"Finish[{rng.choice(NOUNS)}]" if i == shape.steps - 1 else f"Search[{entity}]"
        steps.append(Step(paragraph(rng, 12), action, paragraph(rng, shape.observation_words)))
    return question(rng, 16), tuple(steps)


def render(question_text: str, steps: tuple[Step, ...]) -> str:
    lines = [f"Question: {question_text}"]
    for i, step in enumerate(steps, start=1):
        lines += [f"Thought {i}: {step.thought}", f"Action {i}: {step.action}", f"Observation {i}: {step.observation}"]
    return "\n".join(lines) + "\n\n"


def make_program(prefix: str, shape: Shape, stop: str | None) -> SglFunction:
    @sgl.function
    def react(s, question, observations):
        s += prefix + f"Question: {question}\n"
        for i, observation in enumerate(observations, start=1):
            s += f"Thought {i}:" + sgl.gen(f"thought_{i}", max_tokens=shape.thought_tokens, stop=stop)
            s += f"\nAction {i}:" + sgl.gen(f"action_{i}", max_tokens=shape.action_tokens, stop=stop)
            s += f"\nObservation {i}: {observation}\n"

    return react


def conforms(stop: str | None, arguments: Mapping[str, Any], outputs: Any) -> bool:
    """A thought and an action per step, each cut at the stop string (a newline) when there is one."""
    texts = [outputs[f"{kind}_{i}"] for i in range(1, len(arguments["observations"]) + 1)
             for kind in ("thought", "action")]
    return all(isinstance(t, str) and (stop is None or stop not in t) for t in texts)


def build(size: str, fixed_lengths: bool) -> WorkloadRun:
    shape = SHAPES[size]
    rng = random.Random(5)
    prefix = INSTRUCTIONS + "".join(render(*record_trace(rng, shape)) for _ in range(shape.shots))
    traces = [record_trace(rng, shape) for _ in range(shape.questions)]
    items = tuple({"question": q, "observations": [step.observation for step in steps]} for q, steps in traces)
    stop = stop_unless_fixed("\n", fixed_lengths)
    return WorkloadRun("react", make_program(prefix, shape, stop), items, greedy(fixed_lengths),
                       partial(conforms, stop), {"prefix": prefix, "shape": shape, "stop": stop}, fixed_lengths)


WORKLOADS = (Workload("react", "ReAct agent replaying recorded observations", build),)


def main(argv: list[str] | None = None) -> SuiteResult:
    return cli_main(WORKLOADS, argv, prog="react")
