"""LLM judge, branch-solve-merge: one fork per judging dimension over a shared question and answer, the
judgments appended back to the parent (join "concate_and_append"), then a merged grade from A to F
(decoded under the regex `[A-F]`).

Two workloads: `llm-judge` (judgments stop at eos or max_tokens) and `llm-judge-fixed`, whose judgments
ignore eos and run to a fixed length (decode-heavy fork-join). Shape (small / full): 16 / 128 answers of
100 / 400 words (~280 / 1,100 tokens), 6 dimensions, judgments of 16 / 128 tokens (fixed: 32 / 128).

    python -m sglbench.bench llm-judge --size small
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sglbench as sgl
from sglbench.bench.paper.base import Workload, WorkloadRun, greedy
from sglbench.bench.paper.cli import main as cli_main
from sglbench.bench.paper.runner import SuiteResult
from sglbench.bench.paper.text import paragraph, question
from sglbench.lang.function import SglFunction

SYSTEM = "You are a strict grader. You judge answers one aspect at a time and justify every judgment."
DIMENSIONS = ("clarity", "accuracy", "depth", "originality", "evidence", "style")
MERGE = "Merge the judgments above into one grade from A (best) to F (worst)."
GRADES = ("A", "B", "C", "D", "E", "F")
GRADE_REGEX = "[A-F]"


@dataclass(frozen=True)
class Shape:
    answers: int
    dimensions: int = 6
    answer_words: int = 150
    judgment_tokens: int = 24
    grade_tokens: int = 4
    fixed_tokens: int = 32  # llm-judge-fixed: every judgment runs to this length


SHAPES = {
    "tiny": Shape(2, dimensions=2, answer_words=20, judgment_tokens=4, grade_tokens=2, fixed_tokens=4),
    "small": Shape(16, answer_words=100, judgment_tokens=16),
    "full": Shape(128, answer_words=400, judgment_tokens=128, grade_tokens=8, fixed_tokens=128),
}


def ask(question_text: str, answer: str) -> str:
    return f"Question: {question_text}\n\nAnswer: {answer}"


def judge(dimension: str) -> str:
    return f"Judge the {dimension} of the answer."


def make_program(shape: Shape, judgment_tokens: int, fixed: bool) -> SglFunction:
    """fixed: judgments ignore eos (each runs to judgment_tokens); the grade always ends by its grammar."""

    @sgl.function
    def llm_judge(s, question, answer):
        s += sgl.system(SYSTEM)
        s += sgl.user(ask(question, answer))
        branches = s.fork(shape.dimensions)
        for branch, dimension in zip(branches, DIMENSIONS):
            branch += sgl.user(judge(dimension))
            branch += sgl.assistant(sgl.gen("judgment", max_tokens=judgment_tokens, ignore_eos=True if fixed else None))
        branches.join("concate_and_append")
        s += sgl.user(MERGE)
        s += sgl.assistant(sgl.gen("grade", max_tokens=shape.grade_tokens, regex=GRADE_REGEX, ignore_eos=False))

    return llm_judge


def conforms(arguments: Mapping[str, Any], outputs: Any) -> bool:
    """The grade is one letter from A to F."""
    return outputs["grade"] in GRADES


def _items(shape: Shape) -> tuple[dict, ...]:
    rng = random.Random(2)
    return tuple({"question": question(rng, 20), "answer": paragraph(rng, shape.answer_words)}
                 for _ in range(shape.answers))


def build(size: str, fixed_lengths: bool) -> WorkloadRun:
    shape = SHAPES[size]
    params = {"shape": shape, "judgment_tokens": shape.judgment_tokens, "ignore_eos": fixed_lengths}
    return WorkloadRun("llm-judge", make_program(shape, shape.judgment_tokens, fixed_lengths), _items(shape),
                       greedy(fixed_lengths), conforms, params, fixed_lengths)


def build_fixed(size: str, fixed_lengths: bool) -> WorkloadRun:
    shape = SHAPES[size]
    params = {"shape": shape, "judgment_tokens": shape.fixed_tokens, "ignore_eos": True}
    return WorkloadRun("llm-judge-fixed", make_program(shape, shape.fixed_tokens, True), _items(shape),
                       greedy(fixed_lengths), conforms, params, True)


WORKLOADS = (
    Workload("llm-judge", "branch-solve-merge: a fork per dimension, merged A-F grade", build),
    Workload("llm-judge-fixed", "the judge with every judgment forced to a fixed length (decode-heavy)", build_fixed),
)


def main(argv: list[str] | None = None) -> SuiteResult:
    return cli_main(WORKLOADS, argv, prog="llm-judge")
