"""Tree-of-thought: a problem, `branches` plans, `branches` attempts per plan, and a yes/no check of each.

Every level forks from its parent (fork/join), so all plans share the problem, and the attempts of one
plan share that plan. Shape (small / full): 16 / 64 problems of 30 / 60 words (~85 / 170 tokens) and 3
branches: per problem 3 plans of 16 / 64 tokens, 9 attempts of 24 / 128 tokens and 9 yes/no selects.

    python -m sglbench.bench tree-of-thought --size small
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import sglbench as sgl
from sglbench.bench.paper.base import Workload, WorkloadRun, all_text, greedy
from sglbench.bench.paper.cli import main as cli_main
from sglbench.bench.paper.runner import SuiteResult
from sglbench.bench.paper.text import question
from sglbench.lang.function import SglFunction

SYSTEM = "You solve word problems. Think in small steps, try several plans and check every attempt."
PROPOSE = "Propose a plan."
CARRY_OUT = "Carry out the plan."
CHECK = "Is this attempt correct?"
VERDICTS = ("yes", "no")


@dataclass(frozen=True)
class Shape:
    problems: int
    branches: int = 3
    problem_words: int = 40
    plan_tokens: int = 24
    attempt_tokens: int = 32


SHAPES = {
    "tiny": Shape(2, branches=2, problem_words=12, plan_tokens=4, attempt_tokens=4),
    "small": Shape(16, problem_words=30, plan_tokens=16, attempt_tokens=24),
    "full": Shape(64, problem_words=60, plan_tokens=64, attempt_tokens=128),
}


def make_program(shape: Shape) -> SglFunction:
    @sgl.function
    def tree_of_thought(s, problem):
        s += sgl.system(SYSTEM)
        s += sgl.user(f"Problem: {problem}\n{PROPOSE}")
        plans = s.fork(shape.branches)
        for i, plan in enumerate(plans):
            plan += sgl.assistant(f"Plan {i + 1}:" + sgl.gen("plan", max_tokens=shape.plan_tokens))
            plan += sgl.user(CARRY_OUT)
            attempts = plan.fork(shape.branches)
            for j, attempt in enumerate(attempts):
                attempt += sgl.assistant(f"Attempt {j + 1}:" + sgl.gen("attempt", max_tokens=shape.attempt_tokens))
                attempt += sgl.user(CHECK)
                attempt += sgl.assistant(sgl.select("verdict", choices=list(VERDICTS)))
            attempts.join()
        plans.join()

    return tree_of_thought


def conforms(shape: Shape, arguments: Mapping[str, Any], outputs: Any) -> bool:
    """A plan per branch, an attempt and a yes/no verdict per plan and branch (variables gathered by the joins)."""
    n = shape.branches
    attempts, verdicts = outputs["attempt"], outputs["verdict"]
    return (all_text(outputs["plan"], n) and isinstance(attempts, list) and len(attempts) == n
            and all(all_text(a, n) for a in attempts) and isinstance(verdicts, list) and len(verdicts) == n
            and all(isinstance(v, list) and len(v) == n and all(x in VERDICTS for x in v) for v in verdicts))


def build(size: str, fixed_lengths: bool) -> WorkloadRun:
    shape = SHAPES[size]
    rng = random.Random(0)
    problems = tuple({"problem": question(rng, shape.problem_words)} for _ in range(shape.problems))
    return WorkloadRun("tree-of-thought", make_program(shape), problems, greedy(fixed_lengths),
                       partial(conforms, shape), {"shape": shape}, fixed_lengths)


WORKLOADS = (Workload("tree-of-thought", "plans x attempts x checks, forked at every level", build),)


def main(argv: list[str] | None = None) -> SuiteResult:
    return cli_main(WORKLOADS, argv, prog="tree-of-thought")
