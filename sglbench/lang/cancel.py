"""Cancel scopes: what one `run` / `run_batch` call started, so that interrupting it stops all of it.

The call owns a `CancelScope`. Its programs join the scope while they run; backends register each request
they submit in the scope of the thread submitting it (`current_scope()`, bound on the programs' worker
threads) and check it before submitting. `cancel()` marks the scope, aborts its registered requests (grouped
per engine, one abort command each) and cancels its programs; from then on every submit in it raises
`ProgramCancelled`.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

Aborter = Callable[[list[str], str], object]  # aborter(rids, message), e.g. `Runtime.abort_many`


class ProgramCancelled(RuntimeError):
    """The program was cancelled (the call that started it was interrupted): it submits nothing more."""


class Cancellable(Protocol):
    def cancel(self, error: ProgramCancelled) -> None: ...


@dataclass(frozen=True)
class CancelReport:
    """What `CancelScope.cancel` stopped: programs running then, programs that never started (None for a call
    of one program) and requests in flight then."""

    programs: int
    not_started: int | None
    requests: int

    @property
    def total_programs(self) -> int:
        return self.programs + (self.not_started or 0)


class CancelScope:
    """Thread-safe set of the programs and engine requests one call started, and whether it was cancelled."""

    def __init__(self, label: str):
        self.label = label  # e.g. "run_batch(judge)"
        self._cond = threading.Condition()
        self._cancelled = False
        self._programs: set[Cancellable] = set()  # identity-hashed program runs still running
        self._requests: dict[str, Aborter] = {}  # rid -> how to abort it, until its handle is done
        self._pending: Callable[[], int] | None = None

    def __repr__(self) -> str:
        return (f"CancelScope({self.label!r}, cancelled={self._cancelled}, programs={len(self._programs)}, "
                f"requests={len(self._requests)})")

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def reason(self) -> str:
        return f"{self.label} was interrupted: its programs were cancelled"

    def error(self) -> ProgramCancelled:
        return ProgramCancelled(self.reason)

    def check(self) -> None:
        """ProgramCancelled once the scope is cancelled: nothing new may start or be submitted."""
        if self._cancelled:
            raise self.error()

    # ------------------------------------------------------------------ programs
    def on_cancel_pending(self, cancel_pending: Callable[[], int]) -> None:
        """cancel_pending() runs at `cancel`: it stops the programs not started yet and returns their number."""
        self._pending = cancel_pending

    def add_program(self, program: Cancellable) -> None:
        """program runs in this scope until `remove_program`; ProgramCancelled (it must not start) once cancelled."""
        with self._cond:
            self.check()
            self._programs.add(program)

    def remove_program(self, program: Cancellable) -> None:
        with self._cond:
            self._programs.discard(program)

    @property
    def num_programs(self) -> int:
        return len(self._programs)

    # ------------------------------------------------------------------ requests
    def register(self, rid: str, aborter: Aborter) -> None:
        """Track a submitted request until `release(rid)`. Submitted into a cancelled scope (a race with
        `cancel`), it is aborted at once and ProgramCancelled raised."""
        with self._cond:
            if not self._cancelled:
                self._requests[rid] = aborter
                return
        aborter([rid], self.reason)
        raise self.error()

    def release(self, rid: str) -> None:
        """The request is done (finished or aborted): forget it."""
        with self._cond:
            if self._requests.pop(rid, None) is not None and not self._requests:
                self._cond.notify_all()

    @property
    def num_requests(self) -> int:
        return len(self._requests)

    # ------------------------------------------------------------------ cancelling
    def cancel(self) -> CancelReport | None:
        """Cancel everything in the scope: what has not started, its requests in flight (aborted, one call per
        aborter) and its running programs. Returns what was stopped; None when it was already cancelled."""
        with self._cond:
            if self._cancelled:
                return None
            self._cancelled = True
            programs = list(self._programs)
            requests = dict(self._requests)
        not_started = None if self._pending is None else self._pending()
        by_aborter: dict[Aborter, list[str]] = {}
        for rid, aborter in requests.items():
            by_aborter.setdefault(aborter, []).append(rid)
        for aborter, rids in by_aborter.items():
            aborter(rids, self.reason)
        error = self.error()
        for program in programs:
            program.cancel(error)
        return CancelReport(programs=len(programs), not_started=not_started, requests=len(requests))

    def wait_released(self, timeout: float) -> bool:
        """Wait until every registered request is done (aborted requests included); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._requests:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def describe_interrupt(label: str, report: CancelReport) -> str:
    """The line printed when a call is interrupted, e.g. "run_batch(judge): interrupted: cancelled 187 programs
    (64 running, 123 not started), aborted 64 requests"."""
    detail = f"{report.programs} running" + ("" if report.not_started is None else
                                              f", {report.not_started} not started")
    return (f"{label}: interrupted: cancelled {_plural(report.total_programs, 'program')} ({detail}), "
            f"aborted {_plural(report.requests, 'request')}")


def interrupt(scope: CancelScope, wait_s: float = 1.0,
              before_print: Callable[[], None] | None = None) -> CancelReport | None:
    """What a call does when KeyboardInterrupt reaches it: cancel scope, give the engine up to wait_s to free
    the aborted requests, run before_print (e.g. close a progress bar) and print what was cancelled to stderr.
    Nothing (None) when scope was already cancelled; nothing printed when nothing was left to cancel."""
    report = scope.cancel()
    if report is None:
        return None
    scope.wait_released(wait_s)
    if before_print is not None:
        before_print()
    if report.total_programs or report.requests:
        print(describe_interrupt(scope.label, report), file=sys.stderr, flush=True)
    return report


# ---------------------------------------------------------------------------- the current thread's scope
_current: contextvars.ContextVar[CancelScope | None] = contextvars.ContextVar("sglbench_cancel_scope", default=None)


def current_scope() -> CancelScope | None:
    """The scope whose program this thread is working for (None outside programs)."""
    return _current.get()


def bind(scope: CancelScope) -> None:
    """Make scope this thread's current scope for the rest of its life (a thread dedicated to one program)."""
    _current.set(scope)


@contextlib.contextmanager
def bound(scope: CancelScope) -> Iterator[None]:
    """Make scope the current one inside the block (a pooled thread working for one program at a time)."""
    token = _current.set(scope)
    try:
        yield
    finally:
        _current.reset(token)
