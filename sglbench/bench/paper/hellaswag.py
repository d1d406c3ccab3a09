"""HellaSwag-style 20-shot select: one constant prefix of 20 completed contexts, then a context and four
candidate endings scored by select.

The prefix is a constant of the program, so run_batch's frontend hint caches it before the batch.
`hellaswag` scores the endings (select, length-normalised logprob); `hellaswag-decoded` decodes the
ending under a grammar (a regex of the four), the only way the peer systems have.
Shape (small / full): 64 / 512 questions; contexts of 8 / 30 words and endings of 6 / 12 words, so
the prefix is ~850 / 2,400 tokens, a context ~25 / 85 and an ending ~17 / 34 tokens (the default
model's tokenizer).

    python -m sglbench.bench hellaswag --size small
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
from sglbench.bench.paper.text import paragraph, sentence
from sglbench.lang.function import SglFunction


@dataclass(frozen=True)
class Shape:
    questions: int
    shots: int = 20
    context_words: int = 30
    ending_words: int = 12


SHAPES = {
    "tiny": Shape(4, shots=3, context_words=8, ending_words=4),
    "small": Shape(64, context_words=8, ending_words=6),
    "full": Shape(512),
}


def dataset(shape: Shape, seed: int = 0) -> tuple[str, list[dict]]:
    """The few-shot prefix and one {context, endings} per program."""
    rng = random.Random(seed)
    prefix = "".join(
        f"{paragraph(rng, shape.context_words)} {sentence(rng, shape.ending_words)}\n\n" for _ in range(shape.shots)
    )
    items = [
        {"context": paragraph(rng, shape.context_words),
         "endings": [f" {sentence(rng, shape.ending_words)}" for _ in range(4)]}
        for _ in range(shape.questions)
    ]
    return prefix, items


def make_program(prefix: str) -> SglFunction:
    """The program with the few-shot prefix as a constant (what tracing finds and precaches)."""

    @sgl.function
    def hellaswag(s, context, endings):
        s += prefix + context
        s += sgl.select("ending", choices=endings)

    return hellaswag


def make_decoded_program(prefix: str, max_tokens: int) -> SglFunction:
    """The same choice decoded under a grammar: a regex matching the four endings."""

    @sgl.function
    def hellaswag_decoded(s, context, endings):
        s += prefix + context
        s += sgl.gen("ending", max_tokens=max_tokens, regex=alternation(endings))

    return hellaswag_decoded


def conforms(arguments: Mapping[str, Any], outputs: Any) -> bool:
    """The ending is one of the four, exactly."""
    return outputs["ending"] in arguments["endings"]


def build(size: str, fixed_lengths: bool) -> WorkloadRun:
    prefix, items = dataset(SHAPES[size])
    return WorkloadRun("hellaswag", make_program(prefix), tuple(items), greedy(fixed_lengths), conforms,
                       {"prefix": prefix}, fixed_lengths)


def build_decoded(size: str, fixed_lengths: bool) -> WorkloadRun:
    shape = SHAPES[size]
    prefix, items = dataset(shape)
    max_tokens = 8 * shape.ending_words  # a bound the tokens of an ending never reach
    # The grammar decides where the ending stops, so eos is never ignored here.
    return WorkloadRun("hellaswag-decoded", make_decoded_program(prefix, max_tokens), tuple(items), greedy(False),
                       conforms, {"prefix": prefix, "max_tokens": max_tokens}, False)


WORKLOADS = (
    Workload("hellaswag", "HellaSwag-style 20-shot, 4 endings by select (scored)", build),
    Workload("hellaswag-decoded", "HellaSwag-style 20-shot, the ending decoded under a grammar", build_decoded),
)


def main(argv: list[str] | None = None) -> SuiteResult:
    return cli_main(WORKLOADS, argv, prog="hellaswag")
