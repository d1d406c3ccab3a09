"""Skeleton-of-thought: write a skeleton of `points` short points, then expand every point in parallel
(one fork each) and join.

The forks share the question and the skeleton. Shape (small / full): 16 / 64 questions of 24 / 50
words (~65 / 140 tokens), 4 / 6 points, a skeleton of 24 / 64 tokens and expansions of 32 / 128 tokens.

    python -m sglbench.bench skeleton-of-thought --size small
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import sglbench as sgl
from sglbench.bench.paper.base import Workload, WorkloadRun, all_text, greedy, is_text
from sglbench.bench.paper.cli import main as cli_main
from sglbench.bench.paper.runner import SuiteResult
from sglbench.bench.paper.text import question
from sglbench.lang.function import SglFunction

SYSTEM = "You are a helpful assistant. You answer in a skeleton of short points first, then expand each point."


@dataclass(frozen=True)
class Shape:
    questions: int
    points: int = 4
    question_words: int = 30
    skeleton_tokens: int = 32
    point_tokens: int = 48


SHAPES = {
    "tiny": Shape(2, points=2, question_words=12, skeleton_tokens=4, point_tokens=4),
    "small": Shape(16, question_words=24, skeleton_tokens=24, point_tokens=32),
    "full": Shape(64, points=6, question_words=50, skeleton_tokens=64, point_tokens=128),
}


def ask(question_text: str, shape: Shape) -> str:
    return f"{question_text}\nFirst write a skeleton of {shape.points} short points."


def expand(i: int) -> str:
    return f"Expand point {i + 1} in two or three sentences."


def make_program(shape: Shape) -> SglFunction:
    @sgl.function
    def skeleton_of_thought(s, question):
        s += sgl.system(SYSTEM)
        s += sgl.user(ask(question, shape))
        s += sgl.assistant(sgl.gen("skeleton", max_tokens=shape.skeleton_tokens))
        points = s.fork(shape.points)
        for i, point in enumerate(points):
            point += sgl.user(expand(i))
            point += sgl.assistant(sgl.gen("point", max_tokens=shape.point_tokens))
        points.join()

    return skeleton_of_thought


def conforms(shape: Shape, arguments: Mapping[str, Any], outputs: Any) -> bool:
    """A skeleton and one expansion per point (gathered by the join)."""
    return is_text(outputs["skeleton"]) and all_text(outputs["point"], shape.points)


def build(size: str, fixed_lengths: bool) -> WorkloadRun:
    shape = SHAPES[size]
    rng = random.Random(1)
    questions = tuple({"question": question(rng, shape.question_words)} for _ in range(shape.questions))
    return WorkloadRun("skeleton-of-thought", make_program(shape), questions, greedy(fixed_lengths),
                       partial(conforms, shape), {"shape": shape}, fixed_lengths)


WORKLOADS = (Workload("skeleton-of-thought", "skeleton, then every point expanded in its own fork", build),)


def main(argv: list[str] | None = None) -> SuiteResult:
    return cli_main(WORKLOADS, argv, prog="skeleton-of-thought")
