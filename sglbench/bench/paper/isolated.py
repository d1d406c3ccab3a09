"""Systems measured in processes of their own: the CPU suite's way of keeping them from slowing each other.

torch's CPU ops run on OpenMP (libgomp). Every thread that runs parallel work gets a pool of its own, and
once a process holds more pool threads than cores libgomp stops spinning between parallel regions, so the
small ops of a small model each pay a wake-up: on this repository's 2-core CPU a [16, 256] x [256, 1408]
matmul took 90 us alone and 190-210 us once a second thread had run torch work, whichever thread ran it.
In one process, sglbench's engine thread and a peer running on the caller's thread do exactly that. So
with `SuiteConfig.isolate` each group of systems lives in a spawned process whose torch work stays on one
thread; the parent still runs the rounds round-robin and only one process computes at a time.

A child builds a workload's run from the `Workload` itself (sent by pickle: module-level build functions),
so only workloads whose build function can be imported by name run isolated.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import traceback
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from sglbench.bench.paper.base import Workload, WorkloadRun
from sglbench.bench.paper.measure import Measurement, System
from sglbench.bench.paper.runner import GroupSpec, SuiteConfig, open_group
from sglbench.lang.backend.base import BaseBackend


def _serve_group(conn, config: SuiteConfig, spec: GroupSpec, workloads: tuple[Workload, ...], threads: int) -> None:
    """The child: open the group, report its systems, then run commands until "close" (or the pipe ends)."""
    torch.set_num_threads(threads)
    by_name = {w.name: w for w in workloads}
    runs: dict[str, WorkloadRun] = {}

    def run_of(name: str) -> WorkloadRun:
        if name not in runs:
            runs[name] = by_name[name].run_for(config.size, config.timing_only)
        return runs[name]

    try:
        with open_group(config, spec) as systems:
            conn.send(("ok", [(s.name, s.tolerate_failures) for s in systems]))
            while True:
                try:
                    op, index, name, *rest = conn.recv()
                except EOFError:
                    return
                if op == "close":
                    break
                try:
                    system = systems[index]
                    if op == "reset":
                        result: Any = system.reset()
                    else:
                        result = getattr(system, op)(run_of(name), *rest)
                    conn.send(("ok", result))
                except Exception as exc:
                    conn.send(("error", f"{type(exc).__name__}: {exc}"))
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        conn.close()


class _Child:
    """One spawned process serving a group; `ask` sends a command and returns its result or raises."""

    def __init__(self, config: SuiteConfig, spec: GroupSpec, workloads: Sequence[Workload]):
        context = multiprocessing.get_context("spawn")
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(
            target=_serve_group, args=(child_conn, config, spec, tuple(workloads), torch.get_num_threads()),
            name=f"sglbench-bench-{spec.kind}", daemon=True)
        self.process.start()
        child_conn.close()
        try:
            self.systems: list[tuple[str, bool]] = self._answer(f"opening {spec.kind} {spec.args}")
        except RuntimeError as exc:
            self.close()
            raise RuntimeError(f"opening {spec.kind} {spec.args} in a process of its own: {exc}") from None

    def _answer(self, what: str) -> Any:
        """The child's answer; RuntimeError with its error message when it failed."""
        try:
            status, value = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"{what}: the benchmark process ended (exit code {self.process.exitcode})") from None
        if status != "ok":
            raise RuntimeError(value)
        return value

    def ask(self, op: str, index: int, workload: str = "", *args: Any) -> Any:
        self.conn.send((op, index, workload, *args))
        return self._answer(f"{op} {workload}")

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self.conn.send(("close", -1, ""))
        self.process.join(timeout=60)
        if self.process.is_alive():
            self.process.kill()
        self.conn.close()


class IsolatedSystem(System):
    """A system that lives in a child process: measure_round_robin's calls go there and back."""

    def __init__(self, child: _Child, index: int, name: str, tolerate_failures: bool):
        self._child, self._index = child, index
        self.name = name
        self.tolerate_failures = tolerate_failures

    def open_backend(self) -> BaseBackend:
        raise TypeError(f"{self.name} runs in a process of its own: use warm_up and measure_once")

    def unavailable(self, run: WorkloadRun) -> str | None:
        return self._child.ask("unavailable", self._index, run.workload)

    def warm_up(self, run: WorkloadRun, count: int) -> None:
        self._child.ask("warm_up", self._index, run.workload, count)

    def measure_once(self, run: WorkloadRun) -> Measurement:
        return self._child.ask("measure_once", self._index, run.workload)

    def reset(self) -> None:
        self._child.ask("reset", self._index)


@contextlib.contextmanager
def open_isolated_group(config: SuiteConfig, spec: GroupSpec, workloads: Sequence[Workload]) -> Iterator[list[System]]:
    """open_group in a spawned process: yields proxies of its systems; the process ends on exit."""
    child = _Child(config, spec, workloads)
    try:
        yield [IsolatedSystem(child, i, name, tolerant) for i, (name, tolerant) in enumerate(child.systems)]
    finally:
        child.close()
