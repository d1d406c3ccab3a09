"""Held-out evaluation of the default model: templated prompts drawn with a seed the training never uses.

Tasks: few-shot Q/A over the world's facts, arithmetic, true/false/unknown judgements and reading comprehension
(a completion is right when its first word, on its first line, equals the answer); and chats in the model's
template (`ChatExample`): a tool call (the reply is exactly the right `<tool_call>` block), the answer after a tool
result, an answer in thinking mode (`<think>` trace, `</think>`, then the answer) and a plain chat answer (no
`<think>`, no tool call). For tool calls and thinking the form alone is scored too (right tool and argument names;
a closed trace then an answer): the small model learns the forms well; copying arguments from the question
into a call works for names and cities, much less for expressions and values read from a tool's result.
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sglbench.default_model.corpus import (
    BOS,
    QA,
    SYSTEM_PROMPTS,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    Message,
    World,
    arithmetic_question,
    build_world,
    fact_question,
    judgement,
    offered_tools,
    passage,
    reasoned_question,
    render_chat,
    render_judgements,
    render_qa,
    tool_exchange,
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


@dataclass(frozen=True)
class ChatExample:
    """A chat prompt up to the assistant's turn (without the leading bos: the tokenizer adds it) and what a right
    reply holds: for "tool_call" the call as JSON, otherwise texts the reply contains."""
    task: str
    prompt: str
    expected: tuple[str, ...]


def chat_prompt(messages: list[Message], tools: list[dict] | None = None, enable_thinking: bool = False) -> str:
    return render_chat(messages, tools, add_generation_prompt=True, enable_thinking=enable_thinking)[len(BOS):]


def maybe_system(rng: random.Random) -> list[Message]:
    return [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < 0.5 else []


def tool_call_example(rng: random.Random, world: World) -> ChatExample:
    exchange = tool_exchange(rng, world, rng.randrange(100_000), parallel=False)
    (name, arguments), = exchange.calls
    tools = offered_tools(rng, {name})
    messages = [*maybe_system(rng), {"role": "user", "content": exchange.question}]
    call = json.dumps({"name": name, "arguments": arguments})
    return ChatExample("tool_call", chat_prompt(messages, tools), (call,))


def tool_answer_example(rng: random.Random, world: World) -> ChatExample:
    exchange = tool_exchange(rng, world, rng.randrange(100_000))
    tools = offered_tools(rng, {name for name, _ in exchange.calls})
    messages = [*maybe_system(rng), *exchange.messages()[:-1]]
    return ChatExample("tool_answer", chat_prompt(messages, tools), exchange.keys)


def thinking_example(rng: random.Random, world: World) -> ChatExample:
    reasoned = reasoned_question(rng, world)
    messages = [*maybe_system(rng), {"role": "user", "content": reasoned.question}]
    return ChatExample("thinking", chat_prompt(messages, enable_thinking=True), (reasoned.key,))


def plain_chat_example(rng: random.Random, world: World) -> ChatExample:
    reasoned = reasoned_question(rng, world)
    messages = [*maybe_system(rng), {"role": "user", "content": reasoned.question}]
    return ChatExample("chat", chat_prompt(messages), (reasoned.key,))


CHAT_TASKS: dict[str, Callable[[random.Random, World], ChatExample]] = {
    "tool_call": tool_call_example, "tool_answer": tool_answer_example, "thinking": thinking_example,
    "chat": plain_chat_example,
}
CHAT_MAX_NEW_TOKENS = 96


def heldout_chat_examples(seed: int = HELDOUT_SEED, n_per_task: int = 25) -> list[ChatExample]:
    """n_per_task chat prompts for every chat task, deterministic from seed."""
    rng, world = random.Random(seed), build_world()
    return [make(rng, world) for make in CHAT_TASKS.values() for _ in range(n_per_task)]


_TOOL_CALLS_RE = re.compile(f"(?:{re.escape(TOOL_CALL_OPEN)}(.*?){re.escape(TOOL_CALL_CLOSE)}\n?)+", re.DOTALL)
_TOOL_CALL_RE = re.compile(f"{re.escape(TOOL_CALL_OPEN)}(.*?){re.escape(TOOL_CALL_CLOSE)}", re.DOTALL)


def parse_tool_calls(reply: str) -> list[object] | None:
    """The JSON of each `<tool_call>` block of a reply made of nothing else; None for any other reply."""
    if not _TOOL_CALLS_RE.fullmatch(reply.strip()):
        return None
    try:
        return [json.loads(body) for body in _TOOL_CALL_RE.findall(reply)]
    except json.JSONDecodeError:
        return None


def chat_reply_right(example: ChatExample, reply: str) -> bool:
    """Whether a reply is right: exactly the expected call, or the expected texts in the answer (after the trace
    in thinking mode; without any tool call or trace otherwise)."""
    if example.task == "tool_call":
        return parse_tool_calls(reply) == [json.loads(e) for e in example.expected]
    if example.task == "thinking":
        _, closed, answer = reply.partition("</think>")
        return bool(closed) and all(text in answer for text in example.expected)
    return "<tool_call>" not in reply and "<think>" not in reply and all(text in reply for text in example.expected)


def chat_format_right(example: ChatExample, reply: str) -> bool | None:
    """Whether a reply has the right form, whatever its content: one call of the right tool with the right
    argument names, or a trace closed by `</think>` and followed by an answer; None for the other tasks."""
    if example.task == "tool_call":
        calls, (expected,) = parse_tool_calls(reply), [json.loads(e) for e in example.expected]
        if not calls or len(calls) != 1 or not isinstance(calls[0], dict):
            return False
        arguments = calls[0].get("arguments")
        return calls[0].get("name") == expected["name"] and isinstance(arguments, dict) \
            and set(arguments) == set(expected["arguments"])
    if example.task == "thinking":
        _, closed, answer = reply.partition("</think>")
        return bool(closed) and bool(answer.strip()) and "<think>" not in answer
    return None


def score_chat(examples: list[ChatExample], generate: Callable[[list[str]], list[str]]) -> dict[str, float]:
    """Accuracy per chat task of generate's replies (one per prompt, in order), and for tool calls and thinking
    also the share of replies of the right form ("tool_call_format", "thinking_format")."""
    replies = generate([e.prompt for e in examples])
    hits: dict[str, list[bool]] = defaultdict(list)
    for example, reply in zip(examples, replies, strict=True):
        hits[example.task].append(chat_reply_right(example, reply))
        form = chat_format_right(example, reply)
        if form is not None:
            hits[f"{example.task}_format"].append(form)
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
