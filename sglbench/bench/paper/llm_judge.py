"""LLM judge, branch-solve-merge: one fork per judging dimension over a shared question and answer, the
judgments appended back to the parent (join "concate_and_append"), then a merged grade.

Shape (small / full): 16 / 128 answers of 100 / 400 words (~280 / 1,100 tokens), 6 dimensions,
judgments of 16 / 128 tokens and a grade of 4 / 8 tokens.

    python -m sglbench.bench llm-judge --size small
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import sglbench as sgl
from sglbench.bench.paper.base import Workload, WorkloadRun, greedy
from sglbench.bench.paper.cli import main as cli_main
from sglbench.bench.paper.runner import SuiteResult
from sglbench.bench.paper.text import paragraph, question
from sglbench.lang.function import SglFunction

SYSTEM = "You are a strict grader. You judge answers one aspect at a time and justify every judgment."
DIMENSIONS = ("clarity", "accuracy", "depth", "originality", "evidence", "style")


@dataclass(frozen=True)
class Shape:
    answers: int
    dimensions: int = 6
    answer_words: int = 150
    judgment_tokens: int = 24
    grade_tokens: int = 4


SHAPES = {
    "tiny": Shape(2, dimensions=2, answer_words=20, judgment_tokens=4, grade_tokens=2),
    "small": Shape(16, answer_words=100, judgment_tokens=16),
    "full": Shape(128, answer_words=400, judgment_tokens=128, grade_tokens=8),
}


def make_program(shape: Shape) -> SglFunction:
    @sgl.function
    def llm_judge(s, question, answer):
        s += sgl.system(SYSTEM)
        s += sgl.user(f"Question: {question}\n\nAnswer: {answer}")
        branches = s.fork(shape.dimensions)
        for branch, dimension in zip(branches, DIMENSIONS):
            branch += sgl.user(f"Judge the {dimension} of the answer.")
            branch += sgl.assistant(sgl.gen("judgment", max_tokens=shape.judgment_tokens))
        branches.join("concate_and_append")
        s += sgl.user("Merge the judgments above into one grade from 1 to 10.")
        s += sgl.assistant(sgl.gen("grade", max_tokens=shape.grade_tokens))

    return llm_judge


def build(size: str, fixed_lengths: bool) -> WorkloadRun:
    shape = SHAPES[size]
    rng = random.Random(2)
    items = tuple({"question": question(rng, 20), "answer": paragraph(rng, shape.answer_words)}
                  for _ in range(shape.answers))
    return WorkloadRun("llm-judge", make_program(shape), items, greedy(fixed_lengths))


WORKLOADS = (Workload("llm-judge", "branch-solve-merge: a fork per dimension, merged grade", build),)


def main(argv: list[str] | None = None) -> SuiteResult:
    return cli_main(WORKLOADS, argv, prog="llm-judge")
