"""Multi-turn chat: each program is one conversation of `turns` user messages, each answered in turn.

Every turn's prompt is the whole conversation so far, so it starts with the previous turn's prompt and
answer (which the radix cache holds). Two workloads: `chat-short` (answers of 8 / 16 tokens, small /
full) and `chat-long` (48 / 256 tokens). Shape (small / full): 16 / 128 conversations of 4 / 6 turns,
user messages of 30 / 80 words (~85 / 220 tokens) and a 25-word system prompt shared by all.

    python -m sglbench.bench chat --size small
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sglbench as sgl
from sglbench.bench.paper.base import Workload, WorkloadRun, greedy, is_text
from sglbench.bench.paper.cli import main as cli_main
from sglbench.bench.paper.runner import SuiteResult
from sglbench.bench.paper.text import paragraph
from sglbench.lang.function import SglFunction

SYSTEM = ("You are a friendly assistant in a long conversation. Keep track of what the user said before, "
          "answer briefly and ask a question back when something is unclear.")


@dataclass(frozen=True)
class Shape:
    conversations: int
    turns: int = 4
    user_words: int = 40
    short_tokens: int = 8
    long_tokens: int = 64


SHAPES = {
    "tiny": Shape(2, turns=2, user_words=10, short_tokens=2, long_tokens=6),
    "small": Shape(16, user_words=30, long_tokens=48),
    "full": Shape(128, turns=6, user_words=80, short_tokens=16, long_tokens=256),
}


def make_program(answer_tokens: int) -> SglFunction:
    @sgl.function
    def chat(s, messages):
        s += sgl.system(SYSTEM)
        for i, message in enumerate(messages):
            s += sgl.user(message)
            s += sgl.assistant(sgl.gen(f"answer_{i}", max_tokens=answer_tokens))

    return chat


def conforms(arguments: Mapping[str, Any], outputs: Any) -> bool:
    """An answer to every user message."""
    return all(is_text(outputs[f"answer_{i}"]) for i in range(len(arguments["messages"])))


def _conversations(shape: Shape) -> tuple[dict, ...]:
    rng = random.Random(4)
    return tuple({"messages": [paragraph(rng, shape.user_words) for _ in range(shape.turns)]}
                 for _ in range(shape.conversations))


def build_short(size: str, fixed_lengths: bool) -> WorkloadRun:
    shape = SHAPES[size]
    return WorkloadRun("chat-short", make_program(shape.short_tokens), _conversations(shape), greedy(fixed_lengths),
                       conforms, {"max_tokens": shape.short_tokens}, fixed_lengths)


def build_long(size: str, fixed_lengths: bool) -> WorkloadRun:
    shape = SHAPES[size]
    return WorkloadRun("chat-long", make_program(shape.long_tokens), _conversations(shape), greedy(fixed_lengths),
                       conforms, {"max_tokens": shape.long_tokens}, fixed_lengths)


WORKLOADS = (
    Workload("chat-short", "multi-turn chat, short answers", build_short),
    Workload("chat-long", "multi-turn chat, long answers", build_long),
)


def main(argv: list[str] | None = None) -> SuiteResult:
    return cli_main(WORKLOADS, argv, prog="chat")
