"""MMLU-style 5-shot multiple choice: per subject a shared prefix of 5 worked questions, then one question.

Three workloads on the same data: `mmlu-gen` generates the answer freely (2 tokens: tokenizers like the
default model's split " B" into " " and "B"; free text has no form to check, so no conformance), `mmlu-select`
picks " A".." D" with select (each choice scored by its length-normalised logprob) and `mmlu-select-decoded`
decodes the choice under a grammar (a regex of the four), the only way the peer systems have. Subjects are
interleaved in a shuffled order, as when a data set is evaluated in one batch. Shape (small / full): 4 / 16 subjects of 16 / 32 questions (64 / 512 programs); a
question has 20 / 30 words and four 2-word options, a subject's 5-shot prefix is ~520 / 670 tokens and
a question ~100 / 125 tokens (the default model's tokenizer; the random test tokenizer needs ~1.8x).

    python -m sglbench.bench mmlu --size small
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sglbench as sgl
from sglbench.bench.paper.base import Workload, WorkloadRun, alternation, greedy
from sglbench.bench.paper.cli import main as cli_main
from sglbench.bench.paper.runner import SuiteResult
from sglbench.bench.paper.text import ADJECTIVES, NOUNS, SUBJECTS, question

LETTERS = ("A", "B", "C", "D")
CHOICES = tuple(f" {letter}" for letter in LETTERS)
CHOICE_REGEX = alternation(CHOICES)
GEN_TOKENS = 2


@dataclass(frozen=True)
class Shape:
    subjects: int
    questions: int  # per subject
    shots: int = 5
    question_words: int = 30


SHAPES = {
    "tiny": Shape(2, 3, shots=2, question_words=12),
    "small": Shape(4, 16, question_words=20),
    "full": Shape(16, 32),
}


def _block(rng: random.Random, words: int) -> tuple[str, str]:
    """A question with lettered options ending in 'Answer:', and its answer letter."""
    options = "".join(f"{letter}. {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}\n" for letter in LETTERS)
    return f"{question(rng, words)}\n{options}Answer:", rng.choice(LETTERS)


def dataset(shape: Shape, seed: int = 0) -> list[dict[str, str]]:
    """One {prefix, question} per program, subjects interleaved in a shuffled order."""
    rng = random.Random(seed)
    items = []
    for subject in SUBJECTS[: shape.subjects]:
        shots = [_block(rng, shape.question_words) for _ in range(shape.shots)]
        prefix = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
        prefix += "".join(f"{q} {a}\n\n" for q, a in shots)
        items += [{"prefix": prefix, "question": _block(rng, shape.question_words)[0]} for _ in range(shape.questions)]
    rng.shuffle(items)
    return items


@sgl.function
def mmlu_gen(s, prefix, question):
    s += prefix + question
    s += sgl.gen("answer", max_tokens=GEN_TOKENS)


@sgl.function
def mmlu_select(s, prefix, question):
    s += prefix + question
    s += sgl.select("answer", choices=list(CHOICES))


@sgl.function
def mmlu_select_decoded(s, prefix, question):
    s += prefix + question
    s += sgl.gen("answer", max_tokens=4, regex=CHOICE_REGEX)


def conforms_select(arguments: Mapping[str, Any], outputs: Any) -> bool:
    """The answer is one of the choices, exactly."""
    return outputs["answer"] in CHOICES


def build_gen(size: str, fixed_lengths: bool) -> WorkloadRun:
    return WorkloadRun("mmlu-gen", mmlu_gen, tuple(dataset(SHAPES[size])), greedy(fixed_lengths), None,
                       {"max_tokens": GEN_TOKENS}, fixed_lengths)


def build_select(size: str, fixed_lengths: bool) -> WorkloadRun:
    return WorkloadRun("mmlu-select", mmlu_select, tuple(dataset(SHAPES[size])), greedy(fixed_lengths),
                       conforms_select, {"choices": CHOICES}, fixed_lengths)


def build_select_decoded(size: str, fixed_lengths: bool) -> WorkloadRun:
    # The grammar decides where the answer ends, so eos is never ignored here.
    return WorkloadRun("mmlu-select-decoded", mmlu_select_decoded, tuple(dataset(SHAPES[size])), greedy(False),
                       conforms_select, {"choices": CHOICES}, False)


WORKLOADS = (
    Workload("mmlu-gen", "MMLU-style 5-shot, answer letter by gen (2 tokens)", build_gen),
    Workload("mmlu-select", "MMLU-style 5-shot, answer letter by select (scored)", build_select),
    Workload("mmlu-select-decoded", "MMLU-style 5-shot, answer letter decoded under a grammar", build_select_decoded),
)


def main(argv: list[str] | None = None) -> SuiteResult:
    return cli_main(WORKLOADS, argv, prog="mmlu")
