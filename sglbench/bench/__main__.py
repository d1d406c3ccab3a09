"""`python -m sglbench.bench WORKLOAD ...`: dispatch to one benchmark module."""

from __future__ import annotations

import importlib
import sys

WORKLOADS = {
    "cpu": "sglbench.bench.cpu",
    "decode": "sglbench.bench.decode",
    "device-check": "sglbench.bench.device_check",
    "fewshot": "sglbench.bench.fewshot",
    "json": "sglbench.bench.json_decode",
    "kernels": "sglbench.bench.kernels",
    "soak": "sglbench.bench.soak",
    "mmlu": "sglbench.bench.paper.mmlu",
    "hellaswag": "sglbench.bench.paper.hellaswag",
    "tree-of-thought": "sglbench.bench.paper.tree_of_thought",
    "skeleton-of-thought": "sglbench.bench.paper.skeleton_of_thought",
    "llm-judge": "sglbench.bench.paper.llm_judge",
    "json-regex": "sglbench.bench.paper.json_regex",
    "chat": "sglbench.bench.paper.chat",
    "react": "sglbench.bench.paper.react",
    "all": "sglbench.bench.paper.suite",
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in WORKLOADS:
        print(f"usage: python -m sglbench.bench {{{','.join(WORKLOADS)}}} [options]", file=sys.stderr)
        raise SystemExit(2)
    importlib.import_module(WORKLOADS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    main()
