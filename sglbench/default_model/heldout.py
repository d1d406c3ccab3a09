"""Held-out evaluation of the default model: templated prompts drawn with a seed the training never uses.

Tasks: few-shot Q/A over the world's facts, arithmetic, true/false/unknown judgements and reading comprehension.
A completion is right when its first word (on its first line) equals the answer.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sglbench.default_model.corpus import (
    QA,
    World,
    arithmetic_question,
    build_world,
    fact_question,
    judgement,
    passage,
    render_judgements,
    render_qa,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

HELDOUT_SEED = 7_919
N_SHOTS = 4


@dataclass(frozen=True)
class Example:
    task: str
    prompt: str
    answer: str


def few_shot(shots: list[QA], query: QA) -> tuple[str, str]:
    """A Q/A prompt: the shots in full, then the query's question with its answer left open."""
    return render_qa(shots) + f"Q: {query[0]}\nA:", query[1]


def qa_example(rng: random.Random, world: World) -> tuple[str, str]:
    return few_shot([fact_question(rng, world) for _ in range(N_SHOTS)], fact_question(rng, world))


def arithmetic_example(rng: random.Random, world: World) -> tuple[str, str]:
    return few_shot([arithmetic_question(rng) for _ in range(N_SHOTS)], arithmetic_question(rng))


def judgement_example(rng: random.Random, world: World) -> tuple[str, str]:
    shots = [judgement(rng, world) for _ in range(N_SHOTS)]
    text, verdict = judgement(rng, world)
    return render_judgements(shots) + f"Statement: {text}\nJudgement:", verdict


def reading_example(rng: random.Random, world: World) -> tuple[str, str]:
    text, pairs = passage(rng, world)
    return f"Text: {text}\n\n" + render_qa(pairs[:1]) + f"Q: {pairs[-1][0]}\nA:", pairs[-1][1]


TASKS: dict[str, Callable[[random.Random, World], tuple[str, str]]] = {
    "qa": qa_example, "arithmetic": arithmetic_example, "judgement": judgement_example, "reading": reading_example,
}


def heldout_examples(seed: int = HELDOUT_SEED, n_per_task: int = 25) -> list[Example]:
    """n_per_task prompts for every task, deterministic from seed."""
    rng, world = random.Random(seed), build_world()
    return [Example(task, *make(rng, world)) for task, make in TASKS.items() for _ in range(n_per_task)]


def first_word(completion: str) -> str:
    """The first word of the first non-empty line, without trailing punctuation."""
    lines = [line for line in completion.strip().splitlines() if line.strip()]
    words = lines[0].split() if lines else []
    return words[0].rstrip(".,;:!?") if words else ""


def score(examples: list[Example], generate: Callable[[list[str]], list[str]]) -> dict[str, float]:
    """Accuracy per task of generate's completions (one per prompt, in order)."""
    completions = generate([e.prompt for e in examples])
    hits: dict[str, list[bool]] = defaultdict(list)
    for example, completion in zip(examples, completions, strict=True):
        hits[example.task].append(first_word(completion) == example.answer)
    return {task: sum(h) / len(h) for task, h in hits.items()}


def transformers_generator(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_new_tokens: int = 8, batch_size: int = 32,
) -> Callable[[list[str]], list[str]]:
    """Greedy batched generation with transformers (left padding), as a `score`-ready callable."""
    import torch

    def generate(prompts: list[str]) -> list[str]:
        tokenizer.padding_side = "left"
        outputs: list[str] = []
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True)
            with torch.no_grad():
                ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            outputs += tokenizer.batch_decode(ids[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        return outputs

    return generate
