"""What a paper workload is: a program and its generated data set, built for one size."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from sglbench.lang.function import SglFunction

# tiny: tests; small: a CPU run in minutes (prompts fit a 2k context); full: the paper's shapes, for a GPU
# and a model with a context of at least 8k tokens (the timing presets)
SIZES = ("tiny", "small", "full")


@dataclass(frozen=True)
class WorkloadRun:
    """A workload ready to run: one program, one argument dict per program run, and run_batch options."""

    workload: str
    program: SglFunction
    arguments: tuple[Mapping[str, Any], ...]
    options: Mapping[str, Any]

    def __post_init__(self) -> None:
        if not self.arguments:
            raise ValueError(f"workload {self.workload!r} has no programs to run")
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))


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
