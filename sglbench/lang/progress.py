"""Progress of a `run_batch`: counts per finished program, a whole-run rate and ETA, and a tqdm bar.

The rate is finished programs over the time since the first program started (no smoothing: with programs
finishing in waves of the thread count, a smoothed rate swings between 0 and a burst); there is no ETA
before the first program finishes. Between waves the bar still moves: it shows the gen/select calls finished
so far (from the programs' telemetry) and the tokens generated (from the backend when it can tell).
`current_batch_progress()` reads the latest batch's numbers for dashboards.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from sglbench.lang.cancel import ProgramCancelled
from sglbench.lang.telemetry import ProgramTelemetry

Clock = Callable[[], float]


@dataclass(frozen=True)
class BatchProgress:
    """One reading of a batch's progress. done counts finished programs, failed ones included."""

    name: str
    total: int
    done: int
    failed: int
    cancelled: int
    running: int
    calls: int  # gen/select calls finished by the batch's programs
    tokens: int  # tokens generated since the batch started (the engine's count, else the finished calls')
    elapsed_s: float  # since the first program started
    rate: float | None  # programs per second over elapsed_s; None before the first finishes
    eta_s: float | None  # None before the first program finishes, and once cancelled
    finished: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def rate_and_eta(done: int, remaining: int, elapsed_s: float) -> tuple[float | None, float | None]:
    """Programs per second over the whole run and the seconds left at that rate; both None until one finished."""
    if done <= 0 or elapsed_s <= 0:
        return None, None
    rate = done / elapsed_s
    return rate, remaining / rate


class BatchProgressTracker:
    """Counts a batch's programs as they start and finish (thread-safe); `snapshot()` reads them."""

    def __init__(self, name: str, total: int, clock: Clock = time.monotonic,
                 generated_tokens: Callable[[], int | None] | None = None):
        self.name = name
        self.total = total
        self._clock = clock
        self._generated_tokens = generated_tokens
        self._tokens_at_start = self._engine_tokens()
        self._lock = threading.Lock()
        self._telemetry: list[ProgramTelemetry] = []
        self._first_start: float | None = None
        self._end: float | None = None
        self._running = self._done = self._failed = self._cancelled = 0

    def _engine_tokens(self) -> int | None:
        if self._generated_tokens is None:
            return None
        try:
            return self._generated_tokens()
        except Exception:  # a progress display never fails the batch
            return None

    def program_started(self, telemetry: ProgramTelemetry) -> None:
        with self._lock:
            if self._first_start is None:
                self._first_start = self._clock()
            self._running += 1
            self._telemetry.append(telemetry)

    def program_finished(self, error: BaseException | None) -> None:
        """A program ended (error set when it failed); a cancelled one, or any once the batch was cancelled,
        is left to `cancel` to count."""
        with self._lock:
            if self._end is not None:
                return
            self._running -= 1
            if isinstance(error, ProgramCancelled):
                return
            self._done += 1
            self._failed += error is not None
            if self._done == self.total:
                self._end = self._clock()

    def cancel(self) -> None:
        """The batch was cancelled: every program not finished (running or not started) counts as cancelled."""
        with self._lock:
            if self._end is None:
                self._cancelled, self._running, self._end = self.total - self._done, 0, self._clock()

    def close(self) -> None:
        """The batch call returned (or was abandoned): freeze the clock."""
        with self._lock:
            if self._end is None:
                self._end = self._clock()

    def snapshot(self) -> BatchProgress:
        engine_tokens = self._engine_tokens()
        with self._lock:
            telemetry = list(self._telemetry)
            now = self._end if self._end is not None else self._clock()
            elapsed = 0.0 if self._first_start is None else max(now - self._first_start, 0.0)
            done, failed, cancelled, running = self._done, self._failed, self._cancelled, self._running
            finished = self._end is not None
        calls = [c for t in telemetry for c in t.calls]
        if engine_tokens is not None and self._tokens_at_start is not None:
            tokens = engine_tokens - self._tokens_at_start
        else:
            tokens = sum(c.completion_tokens for c in calls)
        rate, eta = rate_and_eta(done, self.total - done - cancelled, elapsed)
        return BatchProgress(
            name=self.name, total=self.total, done=done, failed=failed, cancelled=cancelled, running=running,
            calls=len(calls), tokens=tokens, elapsed_s=elapsed, rate=rate,
            eta_s=None if cancelled else eta, finished=finished,
        )


# ---------------------------------------------------------------------------- rendering
def _clock_text(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


def progress_text(p: BatchProgress) -> str:
    """The bar's trailing text: elapsed<eta, rate, what is in flight, and failures."""
    eta = "?" if p.eta_s is None else _clock_text(p.eta_s)
    rate = "? programs/s" if p.rate is None else (f"{p.rate:.2f} programs/s" if p.rate >= 1 else
                                                   f"{1 / p.rate:.1f} s/program")
    parts = [f"{_clock_text(p.elapsed_s)}<{eta}", rate]
    if p.running:
        parts.append(f"{p.running} running")
    parts.append(f"{p.calls:,} calls")
    parts.append(f"{p.tokens:,} tok")
    if p.failed:
        parts.append(f"{p.failed} failed")
    if p.cancelled:
        parts.append(f"{p.cancelled} cancelled")
    return ", ".join(parts)


class ProgressBar:
    """Draws a tracker with tqdm (tqdm.auto: a widget in notebooks), at most once per min_interval seconds,
    also between program finishes (a ticker thread), so in-flight calls and tokens show as they grow."""

    def __init__(self, tracker: BatchProgressTracker, min_interval: float = 0.1, tick: float = 0.25):
        from tqdm.auto import tqdm

        self.tracker = tracker
        self._min_interval = min_interval
        self._last = float("-inf")
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._bar = tqdm(total=tracker.total, desc=tracker.name, smoothing=0, mininterval=min_interval,
                         bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}{postfix}")
        self._bar.set_postfix_str(progress_text(tracker.snapshot()), refresh=False)
        self._ticker = threading.Thread(target=self._tick, args=(tick,), name=f"sgl-progress-{tracker.name}",
                                        daemon=True)
        self._ticker.start()

    def _tick(self, interval: float) -> None:
        while not self._closed.wait(interval):
            self.render()

    def render(self, force: bool = False) -> None:
        """Redraw from a fresh snapshot unless the last redraw was under min_interval ago (force: always)."""
        with self._lock:
            now = time.monotonic()
            if self._bar.disable or (not force and now - self._last < self._min_interval):
                return
            self._last = now
            self._take_snapshot()
            self._bar.refresh()

    def _take_snapshot(self) -> None:
        p = self.tracker.snapshot()
        self._bar.n = p.done
        self._bar.set_postfix_str(progress_text(p), refresh=False)

    def close(self) -> None:
        """Stop the ticker, draw the final state and leave the bar in place."""
        self._closed.set()
        self._ticker.join(timeout=1)
        with self._lock:
            if not self._bar.disable:
                self._take_snapshot()
            self._bar.close()


# ---------------------------------------------------------------------------- the current batch
_current: BatchProgressTracker | None = None
_current_lock = threading.Lock()


def set_current(tracker: BatchProgressTracker) -> None:
    """tracker becomes the batch `current_batch_progress()` reads (the latest started)."""
    global _current
    with _current_lock:
        _current = tracker


def current_batch_progress() -> BatchProgress | None:
    """The latest started batch's progress (running or finished); None before any batch."""
    with _current_lock:
        tracker = _current
    return None if tracker is None else tracker.snapshot()
