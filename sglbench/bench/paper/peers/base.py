"""The seam between the paper suite and a peer system (Outlines, Guidance, LMQL): a peer cannot run
sglbench programs, so each workload is written again in the peer's own API and run as a whole batch.

A `PeerSystem` maps workload names to `PeerProgram`s (the batch in the peer's API) and to reasons for
the workloads it cannot express; a peer whose library is missing or broken is an `UnavailablePeer`, whose
every row says so. Both are `System`s, so `measure_round_robin` times them beside sglbench.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sglbench.bench.paper.base import WorkloadRun
from sglbench.bench.paper.measure import SELECT_DECODED, BatchRunner, ProgramOutput, System
from sglbench.lang.backend.base import BaseBackend

PeerOutput = ProgramOutput  # a peer program's outputs by variable name (a dict) and its latency
MISSING = "missing: pip install -e '.[peers]'"

# (the run, its programs' arguments) -> one PeerOutput per program, in order
PeerProgram = Callable[[WorkloadRun, Sequence[Mapping[str, Any]]], list[PeerOutput]]


class PeerSystem(System):
    """A structured-generation library driving the checkpoint through its own transformers backend."""

    tolerate_failures = True  # a peer's failure is a row of the table, never an abort of the suite
    notes: Mapping[str, str] = {}  # workload -> how the peer runs it, beyond how select chooses
    general_note = ""  # how the peer runs every workload (shown on each row)
    fixed_length_reason: str | None = None  # why gens cannot run past eos, if they cannot

    def __init__(self, name: str, programs: Mapping[str, PeerProgram], not_expressible: Mapping[str, str]):
        self.name = name
        self.programs = dict(programs)
        self.not_expressible = dict(not_expressible)

    def open_backend(self) -> BaseBackend:
        raise TypeError(f"{self.name} runs whole batches in its own API; it has no sglbench backend")

    def unavailable(self, run: WorkloadRun) -> str | None:
        if run.workload not in self.programs:
            reason = self.not_expressible.get(run.workload, "no program written for this workload")
            return f"not expressible in {self.name}: {reason}"
        if run.fixed_lengths and self.fixed_length_reason:
            return f"not expressible in {self.name}: {self.fixed_length_reason}"
        return None

    def note(self, run: WorkloadRun) -> str:
        parts = [SELECT_DECODED if run.uses_select() else "", self.notes.get(run.workload, ""), self.general_note]
        return "; ".join(p for p in parts if p)

    def prepare(self, run: WorkloadRun) -> BatchRunner:
        program = self.programs[run.workload]
        return lambda arguments: program(run, arguments)


class UnavailablePeer(PeerSystem):
    """A peer that is not installed, or does not load: every workload's row gives the reason."""

    def __init__(self, name: str, reason: str):
        super().__init__(name, {}, {})
        self.reason = reason

    def unavailable(self, run: WorkloadRun) -> str:
        return self.reason


class StageClock:
    """Latencies of stage-batched programs: a program's latency runs from the batch's start to the end of
    the last call that served it."""

    def __init__(self, programs: int):
        self.start = time.perf_counter()
        self.finished = [self.start] * programs

    def served(self, programs: Sequence[int]) -> None:
        now = time.perf_counter()
        for i in programs:
            self.finished[i] = now

    def outputs(self, values: Sequence[Mapping[str, Any]]) -> list[PeerOutput]:
        return [PeerOutput(dict(v), end - self.start) for v, end in zip(values, self.finished)]


def chunks(n: int, size: int) -> list[range]:
    """Index ranges of at most `size` covering range(n): the rows of each batched call."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def cut_at(text: str, stop: str | None) -> str:
    """Text before the first stop string, as sglbench returns a gen with stop (the stop is not kept)."""
    if not stop:
        return text
    at = text.find(stop)
    return text if at < 0 else text[:at]
