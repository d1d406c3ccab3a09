"""Every paper workload in one run: `python -m sglbench.bench all --size small`."""

from __future__ import annotations

from sglbench.bench.paper import (
    chat,
    hellaswag,
    json_regex,
    llm_judge,
    mmlu,
    react,
    skeleton_of_thought,
    tree_of_thought,
)
from sglbench.bench.paper.base import Workload
from sglbench.bench.paper.cli import main as cli_main
from sglbench.bench.paper.runner import SuiteResult

WORKLOADS: tuple[Workload, ...] = (
    *mmlu.WORKLOADS, *hellaswag.WORKLOADS, *tree_of_thought.WORKLOADS, *skeleton_of_thought.WORKLOADS,
    *llm_judge.WORKLOADS, *json_regex.WORKLOADS, *chat.WORKLOADS, *react.WORKLOADS,
)


def main(argv: list[str] | None = None) -> SuiteResult:
    return cli_main(WORKLOADS, argv, prog="all")
