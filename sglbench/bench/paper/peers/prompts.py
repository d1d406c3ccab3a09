"""The text sglbench sends for each step of a workload, for peers that take prompts as text (Outlines,
LMQL): the same strings, role blocks rendered with the model's chat template the way sglbench renders
them (prefix + content + suffix, no bos: the tokenizer adds it), so every system sees the same tokens."""

from __future__ import annotations

from dataclasses import dataclass

from sglbench.bench.paper import chat, json_regex, llm_judge, skeleton_of_thought, tree_of_thought
from sglbench.lang.chat_template import ChatTemplate


@dataclass(frozen=True)
class Roles:
    """Role blocks as text: `block` is a whole message, `open`/`close` surround a generated one."""

    template: ChatTemplate

    def block(self, role: str, content: str) -> str:
        prefix, suffix = self.template.get_prefix_and_suffix(role)
        return prefix + content + suffix

    def open(self, role: str) -> str:
        return self.template.get_prefix_and_suffix(role)[0]

    def close(self, role: str) -> str:
        return self.template.get_prefix_and_suffix(role)[1]


def mmlu(arguments) -> str:
    return arguments["prefix"] + arguments["question"]


def hellaswag(prefix: str, arguments) -> str:
    return prefix + arguments["context"]


def json_page(arguments) -> str:
    return json_regex.prompt(arguments["page"])


# ---------------------------------------------------------------------------- llm judge
def judge_head(roles: Roles, arguments) -> str:
    return roles.block("system", llm_judge.SYSTEM) + roles.block("user", llm_judge.ask(arguments["question"],
                                                                                       arguments["answer"]))


def judge_branch(roles: Roles, head: str, dimension: str) -> str:
    return head + roles.block("user", llm_judge.judge(dimension)) + roles.open("assistant")


def judge_merge(roles: Roles, head: str, dimensions, judgments) -> str:
    """The head, every branch's text appended in fork order (join "concate_and_append"), the merge request."""
    branches = "".join(roles.block("user", llm_judge.judge(d)) + roles.block("assistant", j)
                       for d, j in zip(dimensions, judgments))
    return head + branches + roles.block("user", llm_judge.MERGE) + roles.open("assistant")


# ---------------------------------------------------------------------------- tree of thought
def tot_head(roles: Roles, arguments) -> str:
    return (roles.block("system", tree_of_thought.SYSTEM)
            + roles.block("user", f"Problem: {arguments['problem']}\n{tree_of_thought.PROPOSE}"))


def tot_plan(roles: Roles, head: str, i: int) -> str:
    return head + roles.open("assistant") + f"Plan {i + 1}:"


def tot_attempt(roles: Roles, plan_prompt: str, plan: str, j: int) -> str:
    return (plan_prompt + plan + roles.close("assistant") + roles.block("user", tree_of_thought.CARRY_OUT)
            + roles.open("assistant") + f"Attempt {j + 1}:")


def tot_check(roles: Roles, attempt_prompt: str, attempt: str) -> str:
    return (attempt_prompt + attempt + roles.close("assistant") + roles.block("user", tree_of_thought.CHECK)
            + roles.open("assistant"))


# ---------------------------------------------------------------------------- skeleton of thought
def sot_skeleton(roles: Roles, shape, arguments) -> str:
    return (roles.block("system", skeleton_of_thought.SYSTEM)
            + roles.block("user", skeleton_of_thought.ask(arguments["question"], shape)) + roles.open("assistant"))


def sot_point(roles: Roles, skeleton_prompt: str, skeleton: str, i: int) -> str:
    return (skeleton_prompt + skeleton + roles.close("assistant")
            + roles.block("user", skeleton_of_thought.expand(i)) + roles.open("assistant"))


# ---------------------------------------------------------------------------- chat and react
def chat_turn(roles: Roles, history: str, message: str) -> str:
    """history: the conversation so far ('' before the first turn, which starts with the system prompt)."""
    start = history or roles.block("system", chat.SYSTEM)
    return start + roles.block("user", message) + roles.open("assistant")


def react_start(prefix: str, arguments) -> str:
    return prefix + f"Question: {arguments['question']}\n"
