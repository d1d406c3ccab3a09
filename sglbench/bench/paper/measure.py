"""One measurement: a workload's programs run by run_batch on one system, from a cold cache.

programs/s is programs over the batch's wall time; a program's latency runs from its start on a
run_batch thread to the end of its last call. The hit rate and its optimum come from the requests the
system sent (see `optimal`); engine_hit_rate, prefilled and decoded tokens are the differences of the
system's counters over the batch.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sglbench.bench.paper.base import WorkloadRun
from sglbench.bench.paper.optimal import RequestRecord, hit_rate, optimal_hit_rate
from sglbench.lang.backend.base import BaseBackend

COLUMNS = ("workload", "system", "programs", "programs_s", "latency_p50_s", "latency_p90_s", "hit_rate",
           "optimal_hit_rate", "engine_hit_rate", "prefill_tokens", "decode_tokens", "wall_s")


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


class System(ABC):
    """Something that runs programs: hands out backends and reads its own counters."""

    name: str

    @abstractmethod
    def open_backend(self) -> BaseBackend:
        """A fresh backend for one batch (its request records start empty)."""

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
    wall_s: float
    latencies: tuple[float, ...]
    usage: Usage | None
    records: tuple[RequestRecord, ...] | None

    def row(self) -> dict:
        """One table row, in COLUMNS order (NaN where the system cannot tell)."""
        nan = math.nan
        u, records = self.usage, self.records
        return {
            "workload": self.workload, "system": self.system, "programs": len(self.latencies),
            "programs_s": len(self.latencies) / self.wall_s,
            "latency_p50_s": float(np.percentile(self.latencies, 50)),
            "latency_p90_s": float(np.percentile(self.latencies, 90)),
            "hit_rate": hit_rate(records) if records is not None else nan,
            "optimal_hit_rate": optimal_hit_rate(records) if records is not None else nan,
            "engine_hit_rate": u.hit_rate if u is not None else nan,
            "prefill_tokens": u.prefill_tokens if u is not None else nan,
            "decode_tokens": u.decode_tokens if u is not None else nan,
            "wall_s": self.wall_s,
        }


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
                        repeats: int = 1) -> list[Measurement]:
    """`measure` for systems that are open together: each is warmed up, then every round times each system
    once, so a slow spell of a shared machine hits all of them alike; each keeps its fastest run."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup:
        for system in systems:
            _run_batch(run, run.arguments[:warmup], system.open_backend())
            system.settle()
    rounds = [[_measure_once(run, system) for system in systems] for _ in range(repeats)]
    return [min(timed, key=lambda m: m.wall_s) for timed in zip(*rounds)]


def _measure_once(run: WorkloadRun, system: System) -> Measurement:
    system.reset()
    backend = system.open_backend()
    before = system.usage()
    start = time.perf_counter()
    states = _run_batch(run, run.arguments, backend)
    wall = time.perf_counter() - start
    system.settle()
    after = system.usage()
    records = system.records()
    system.reset()
    latencies = tuple(s.telemetry.finished - s.telemetry.started for s in states)
    usage = after - before if after is not None and before is not None else None
    return Measurement(run.workload, system.name, wall, latencies, usage,
                       tuple(records) if records is not None else None)
