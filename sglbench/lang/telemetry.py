"""Program telemetry for the viz layer: which state forked from which, and each gen/select call's timings.

Records are frozen; a `ProgramTelemetry` only ever swaps in longer tuples, so any thread may read its
attributes at any time without a lock. Recent runs stay reachable through `recent_runs()`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from sglbench.lang.global_config import global_config


@dataclass(frozen=True)
class CallRecord:
    """One gen or select call of one state; times are wall-clock (time.time())."""

    program_id: str
    state_id: str
    kind: str  # "gen" | "select"
    name: str | None
    rids: tuple[str, ...]
    queued: float  # the first request reached the engine
    scheduled: float | None
    first_token: float | None
    finished: float
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class ForkEdge:
    parent: str
    child: str
    index: int
    time: float


@dataclass(frozen=True)
class JoinEdge:
    child: str
    parent: str
    mode: str  # "gather_variable" | "concate_and_append"
    time: float


def _requests(meta: dict | list) -> list[dict]:
    """The per-request meta dicts behind one call (a select or an n > 1 gen has several)."""
    if isinstance(meta, list):
        return [r for m in meta for r in _requests(m)]
    return list(meta.get("requests", [meta]))


def call_record(program_id: str, state_id: str, kind: str, name: str | None, meta: dict | list,
                started: float, ended: float) -> CallRecord:
    """Summarize a call's meta_info; backends without engine timings fall back to the caller's clock."""
    reqs = _requests(meta)

    def times(key: str) -> list[float]:
        return [r[key] for r in reqs if r.get(key) is not None]

    return CallRecord(
        program_id=program_id, state_id=state_id, kind=kind, name=name,
        rids=tuple(str(r["id"]) for r in reqs if "id" in r),
        queued=min(times("arrived"), default=started),
        scheduled=min(times("scheduled"), default=None),
        first_token=min(times("first_token"), default=None),
        finished=max(times("finished"), default=ended),
        prompt_tokens=sum(int(r.get("prompt_tokens", 0)) for r in reqs),
        cached_tokens=sum(int(r.get("cached_tokens", 0)) for r in reqs),
        completion_tokens=sum(int(r.get("completion_tokens", 0)) for r in reqs),
    )


class ProgramTelemetry:
    """What one program run did. Attributes are immutable values (tuples, floats); writers hold a lock."""

    def __init__(self, program_id: str, name: str):
        self.program_id = program_id
        self.name = name
        self.started = time.time()
        self.finished: float | None = None
        self.error: str | None = None
        self.states: tuple[str, ...] = ()
        self.calls: tuple[CallRecord, ...] = ()
        self.forks: tuple[ForkEdge, ...] = ()
        self.joins: tuple[JoinEdge, ...] = ()
        self.inputs: dict[str, str] | None = None  # the program's arguments as short reprs (None: not known)
        self._lock = threading.Lock()

    def add_state(self, state_id: str) -> None:
        with self._lock:
            self.states = (*self.states, state_id)

    def add_call(self, record: CallRecord) -> None:
        with self._lock:
            self.calls = (*self.calls, record)

    def add_fork(self, edge: ForkEdge) -> None:
        with self._lock:
            self.forks = (*self.forks, edge)

    def add_join(self, edge: JoinEdge) -> None:
        with self._lock:
            self.joins = (*self.joins, edge)

    def finish(self, error: BaseException | None) -> None:
        with self._lock:
            self.error = None if error is None else repr(error)
            self.finished = time.time()

    @property
    def done(self) -> bool:
        return self.finished is not None

    def summary(self) -> dict[str, Any]:
        """Counts and totals for tables."""
        calls = self.calls
        return {
            "program_id": self.program_id, "name": self.name, "states": len(self.states), "calls": len(calls),
            "prompt_tokens": sum(c.prompt_tokens for c in calls), "cached_tokens": sum(c.cached_tokens for c in calls),
            "completion_tokens": sum(c.completion_tokens for c in calls),
            "duration": (self.finished or time.time()) - self.started, "error": self.error,
        }

    def __repr__(self) -> str:
        return (f"ProgramTelemetry(name={self.name!r}, states={len(self.states)}, calls={len(self.calls)}, "
                f"done={self.done})")


_recent: deque[ProgramTelemetry] = deque()
_recent_lock = threading.Lock()


def register_run(telemetry: ProgramTelemetry) -> None:
    with _recent_lock:
        _recent.append(telemetry)
        while len(_recent) > max(global_config.telemetry_history, 0):
            _recent.popleft()


def recent_runs(limit: int | None = None) -> list[ProgramTelemetry]:
    """The most recent program runs, oldest first (at most global_config.telemetry_history)."""
    with _recent_lock:
        runs = list(_recent)
    return runs if limit is None else runs[-limit:] if limit > 0 else []


def get_run(program_id: str) -> ProgramTelemetry | None:
    with _recent_lock:
        return next((t for t in reversed(_recent) if t.program_id == program_id), None)
