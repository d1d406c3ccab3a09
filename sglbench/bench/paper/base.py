"""What a paper workload is: a program and its generated data set, built for one size, with the check
every system's outputs must pass."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from sglbench.lang.function import SglFunction

# tiny: tests; small: a CPU run in minutes (prompts fit a 2k context); full: the paper's shapes, for a GPU
# and a model with a context of at least 8k tokens (the timing presets)
SIZES = ("tiny", "small", "full")

# (a program's arguments, its outputs by variable name: a ProgramState or a dict) -> whether they conform
Conformance = Callable[[Mapping[str, Any], Any], bool]


@dataclass(frozen=True)
class WorkloadRun:
    """A workload ready to run: one program, one argument dict per program run, and run_batch options.

    `conforms` checks one program's outputs (answer in the choice set, JSON matching its regex ...);
    `params` is what a peer system needs to write the same program in its own API (the shape, the
    few-shot prefix, the regex), and `fixed_lengths` says that gens run to their max_tokens."""

    workload: str
    program: SglFunction
    arguments: tuple[Mapping[str, Any], ...]
    options: Mapping[str, Any]
    conforms: Conformance | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    fixed_lengths: bool = False

    def __post_init__(self) -> None:
        if not self.arguments:
            raise ValueError(f"workload {self.workload!r} has no programs to run")
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    def uses_select(self) -> bool:
        """Whether the program picks among choices with select (scored by sglbench, decoded by peers)."""
        return any(node.kind == "select" for node in self.program.trace(**self.arguments[0]).nodes)


@dataclass(frozen=True)
class Workload:
    """A named workload; build(size, fixed_lengths) makes its run. fixed_lengths (timing presets) drops
    stop strings and ignores eos, so every generation runs to its max_tokens."""

    name: str
    summary: str
    build: Callable[[str, bool], WorkloadRun]

    def run_for(self, size: str, fixed_lengths: bool = False) -> WorkloadRun:
        if size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {size!r}")
        return self.build(size, fixed_lengths)


def greedy(fixed_lengths: bool) -> dict[str, Any]:
    """run_batch options every workload uses: greedy decoding, eos ignored for timing presets."""
    return {"temperature": 0.0, "ignore_eos": fixed_lengths}


def stop_unless_fixed(stop: str, fixed_lengths: bool) -> str | None:
    """A gen's stop string, or none when every generation must run to its max_tokens."""
    return None if fixed_lengths else stop


def is_text(value: Any) -> bool:
    return isinstance(value, str)


def all_text(values: Any, count: int) -> bool:
    """`values` is a list of `count` strings (a variable gathered from `count` forks)."""
    return isinstance(values, list) and len(values) == count and all(isinstance(v, str) for v in values)


def alternation(choices: Sequence[str]) -> str:
    """A regex matching exactly one of `choices`: only regex metacharacters are escaped (spaces stay as
    they are, which every regex dialect reads alike)."""
    return "|".join(re.sub(r"([.^$*+?{}\[\]\\|()])", r"\\\1", c) for c in choices)
