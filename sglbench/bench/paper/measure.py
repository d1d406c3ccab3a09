"""One measurement: a workload's programs run by one system, from a cold cache.

programs/s is programs over the batch's wall time; a program's latency runs from its start to the end of
its last call (for sglbench, on a run_batch thread; for a stage-batched peer, from the batch's start).
The hit rate and its optimum come from the requests the system sent (see `optimal`); engine_hit_rate,
prefilled and decoded tokens are the differences of the system's counters over the batch. conformance is
the fraction of programs whose outputs pass the workload's check; note says how the system ran it (how
select chose, or why it did not run: missing, not expressible, failed).
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sglbench.bench.paper.base import WorkloadRun
from sglbench.bench.paper.optimal import RequestRecord, hit_rate, optimal_hit_rate
from sglbench.lang.backend.base import BaseBackend

COLUMNS = ("workload", "system", "programs", "programs_s", "latency_p50_s", "latency_p90_s", "hit_rate",
           "optimal_hit_rate", "engine_hit_rate", "prefill_tokens", "decode_tokens", "wall_s", "conformance",
           "note")

SELECT_SCORED = "select: scored by normalised logprob"
SELECT_DECODED = "select: decoded under a grammar"


@dataclass(frozen=True)
class Usage:
    """Cumulative token counters of a system; a window's are the difference of two readings."""

    query_tokens: int = 0
    hit_tokens: int = 0
    prefill_tokens: int = 0
    decode_tokens: int = 0

    def __sub__(self, earlier: Usage) -> Usage:
        return Usage(self.query_tokens - earlier.query_tokens, self.hit_tokens - earlier.hit_tokens,
                     self.prefill_tokens - earlier.prefill_tokens, self.decode_tokens - earlier.decode_tokens)

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.query_tokens if self.query_tokens else 0.0


@dataclass(frozen=True)
class ProgramOutput:
    """One program's outputs by variable name (a ProgramState, or a dict from a peer) and its latency."""

    outputs: Any
    latency_s: float


BatchRunner = Callable[[Sequence[Mapping[str, Any]]], list[ProgramOutput]]


class System(ABC):
    """Something that runs programs: by default it hands out sglbench backends that run_batch runs the
    workload's program on; it reads its own counters."""

    name: str
    tolerate_failures = False  # True: a failure is a row ("failed: ..."), not an exception

    @abstractmethod
    def open_backend(self) -> BaseBackend:
        """A fresh backend for one batch (its request records start empty)."""

    def unavailable(self, run: WorkloadRun) -> str | None:
        """Why this system cannot run the workload (missing, not expressible), or None."""
        return None

    def note(self, run: WorkloadRun) -> str:
        """How the system runs the workload, for the table (how select chooses)."""
        return SELECT_SCORED if run.uses_select() else ""

    def prepare(self, run: WorkloadRun) -> BatchRunner:
        """What runs one batch of the workload's programs (outputs in argument order), made before the clock
        starts: by default run_batch of the workload's program on a fresh backend."""
        backend = self.open_backend()

        def run_programs(arguments: Sequence[Mapping[str, Any]]) -> list[ProgramOutput]:
            states = _run_batch(run, arguments, backend)
            return [ProgramOutput(s, s.telemetry.finished - s.telemetry.started) for s in states]

        return run_programs

    def warm_up(self, run: WorkloadRun, count: int) -> None:
        """Run the workload's first `count` programs, untimed, and wait until they are done."""
        self.prepare(run)(run.arguments[:count])
        self.settle()

    def measure_once(self, run: WorkloadRun) -> Measurement:
        """Time the whole batch once from a cold cache."""
        return _measure_once(run, self)

    def usage(self) -> Usage | None:
        """Counters now; None when the system cannot tell (a remote endpoint)."""
        return None

    def records(self) -> list[RequestRecord] | None:
        """The requests the latest backend sent; None when unknown."""
        return None

    def settle(self) -> None:  # noqa: B027 (optional hook)
        """Wait until no request is in flight."""

    def reset(self) -> None:  # noqa: B027 (optional hook)
        """Drop cached prefixes, so the next batch starts cold."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release the model and threads."""


@dataclass(frozen=True)
class Measurement:
    workload: str
    system: str
    wall_s: float  # NaN: not run (see note)
    latencies: tuple[float, ...]
    usage: Usage | None
    records: tuple[RequestRecord, ...] | None
    conformance: float = math.nan
    note: str = ""
    programs: int | None = None  # defaults to the number of latencies

    def row(self) -> dict:
        """One table row, in COLUMNS order (NaN where the system cannot tell or did not run)."""
        nan = math.nan
        u, records, lat = self.usage, self.records, self.latencies
        return {
            "workload": self.workload, "system": self.system,
            "programs": len(lat) if self.programs is None else self.programs,
            "programs_s": len(lat) / self.wall_s if lat else nan,
            "latency_p50_s": float(np.percentile(lat, 50)) if lat else nan,
            "latency_p90_s": float(np.percentile(lat, 90)) if lat else nan,
            "hit_rate": hit_rate(records) if records is not None else nan,
            "optimal_hit_rate": optimal_hit_rate(records) if records is not None else nan,
            "engine_hit_rate": u.hit_rate if u is not None else nan,
            "prefill_tokens": u.prefill_tokens if u is not None else nan,
            "decode_tokens": u.decode_tokens if u is not None else nan,
            "wall_s": self.wall_s, "conformance": self.conformance, "note": self.note,
        }


def not_run(run: WorkloadRun, system: System, note: str) -> Measurement:
    """The row of a system that did not run the workload, saying why."""
    return Measurement(run.workload, system.name, math.nan, (), None, None, math.nan, note, len(run.arguments))


def conformance(run: WorkloadRun, outputs: Sequence[ProgramOutput]) -> float:
    """Fraction of programs whose outputs pass the workload's check (NaN when it has none); a missing
    or malformed output fails."""
    if run.conforms is None or not outputs:
        return math.nan
    return sum(_passes(run, args, out.outputs) for args, out in zip(run.arguments, outputs)) / len(outputs)


def _passes(run: WorkloadRun, arguments: Mapping[str, Any], outputs: Any) -> bool:
    try:
        return bool(run.conforms(arguments, outputs))  # type: ignore[misc]
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return False


def _run_batch(run: WorkloadRun, arguments, backend: BaseBackend) -> list:
    states = run.program.run_batch([dict(a) for a in arguments], backend=backend, **run.options)
    failed = [s.error() for s in states if s.error() is not None]
    if failed:
        raise RuntimeError(f"{run.workload}: {len(failed)} of {len(states)} programs failed; first: {failed[0]!r}")
    return states


def measure(run: WorkloadRun, system: System, warmup: int = 1, repeats: int = 1) -> Measurement:
    """Warm up on the first `warmup` programs, then time the whole batch from a cold cache `repeats` times
    and keep the fastest run: the least disturbed by whatever else the machine did meanwhile."""
    return measure_round_robin(run, [system], warmup, repeats)[0]


def measure_round_robin(run: WorkloadRun, systems: Sequence[System], warmup: int = 1,
                        repeats: int = 1, tolerate_failures: bool = False) -> list[Measurement]:
    """`measure` for systems that are open together: each is warmed up, then every round times each system
    once, so a slow spell of a shared machine hits all of them alike; each keeps its fastest run. A system
    that cannot run the workload gets a row saying why; one that fails, where it tolerates failures or
    `tolerate_failures` says all do (a suite's table), gets a "failed: ..." row and sits out the later
    rounds."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    out: dict[int, Measurement] = {}
    for i, system in enumerate(systems):
        reason = system.unavailable(run)
        if reason is not None:
            out[i] = not_run(run, system, reason)
    timed: dict[int, list[Measurement]] = {i: [] for i in range(len(systems)) if i not in out}

    def attempt(i: int, step: Callable[[System], Any]) -> None:
        try:
            step(systems[i])
        except Exception as exc:
            if not (tolerate_failures or systems[i].tolerate_failures):
                raise
            systems[i].reset()
            out[i] = not_run(run, systems[i], f"failed: {type(exc).__name__}: {_short(str(exc))}")
            del timed[i]

    if warmup:
        for i in list(timed):
            attempt(i, lambda s: s.warm_up(run, warmup))
    for _ in range(repeats):
        for i in list(timed):
            attempt(i, lambda s, i=i: timed[i].append(s.measure_once(run)))
    for i, measured in timed.items():
        out[i] = min(measured, key=lambda m: m.wall_s)
    return [out[i] for i in range(len(systems))]


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _measure_once(run: WorkloadRun, system: System) -> Measurement:
    system.reset()
    run_programs = system.prepare(run)
    before = system.usage()
    start = time.perf_counter()
    outputs = run_programs(run.arguments)
    wall = time.perf_counter() - start
    system.settle()
    after = system.usage()
    records = system.records()
    system.reset()
    usage = after - before if after is not None and before is not None else None
    return Measurement(run.workload, system.name, wall, tuple(o.latency_s for o in outputs), usage,
                       tuple(records) if records is not None else None, conformance(run, outputs),
                       system.note(run))
