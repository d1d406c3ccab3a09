"""Interrupting a cell cancels what it started, and a batch's progress numbers.

A notebook's Interrupt is SIGINT to the kernel: Python raises KeyboardInterrupt in the main thread. These tests
send SIGINT to the main thread while `run`, `run_batch` (list and generator_style) or a streamed run waits on
the embedded default model, then check the engine is idle within a second, its KV pool back to full but for
what the radix cache keeps, the cache consistent, the line printed, and the runtime still serving. Progress
numbers are checked with a fake clock."""

from __future__ import annotations

import contextlib
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import sglbench as sgl
from sglbench.default_model import DEFAULT_MODEL_PATH
from sglbench.default_model.corpus import render_qa
from sglbench.lang.backend.base import BaseBackend
from sglbench.lang.cancel import CancelReport, CancelScope, ProgramCancelled, describe_interrupt
from sglbench.lang.chat_template import DEFAULT_CHAT_TEMPLATE
from sglbench.lang.progress import BatchProgressTracker, current_batch_progress, progress_text, rate_and_eta
from sglbench.lang.telemetry import CallRecord, ProgramTelemetry, recent_runs
from tests.helpers import assert_pool_full

needs_model = pytest.mark.skipif(
    not (DEFAULT_MODEL_PATH / "config.json").exists(),
    reason="the default model checkpoint is not trained yet (python -m sglbench.default_model.train)",
)
LINE = re.compile(r"(run|run_batch)\((\w+)\): interrupted: cancelled (\d+) programs? \((\d+) running"
                  r"(?:, (\d+) not started)?\), aborted (\d+) requests?")


@pytest.fixture(scope="module")
def rt():
    runtime = sgl.Runtime(device="cpu", max_total_tokens=16384)
    sgl.set_default_backend(runtime)
    yield runtime
    sgl.global_config.default_backend = None
    runtime.shutdown()


@sgl.function
def long_story(s, i):
    s += f"Story {i}: once upon a time"
    s += sgl.gen("story", max_tokens=128, ignore_eos=True, temperature=0)


@sgl.function
def three_stories(s):
    s += "Three stories: once upon a time"
    forks = s.fork(3)
    for i, f in enumerate(forks):
        f += f" the {i}th"
        f += sgl.gen("story", max_tokens=400, ignore_eos=True, temperature=0)
    forks.join()


@sgl.function
def add(s):
    s += render_qa([("What is 3 + 5?", "8")]) + "Q: What is 2 + 3?\nA:"
    s += sgl.gen("answer", max_tokens=4, stop="\n", temperature=0)


@contextlib.contextmanager
def interrupt_when(condition: Callable[[], bool], timeout: float = 60.0) -> Iterator[None]:
    """Send SIGINT to the main thread (a notebook's Interrupt) as soon as condition() holds."""
    main = threading.main_thread().ident
    assert threading.get_ident() == main, "the test must run on the main thread"
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    stop = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while not stop.is_set() and time.monotonic() < deadline:
            if condition():
                signal.pthread_kill(main, signal.SIGINT)
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
        signal.signal(signal.SIGINT, previous)


def running_at_least(rt, n: int) -> Callable[[], bool]:
    return lambda: rt.metrics().num_running >= n


def interrupted(capsys) -> re.Match:
    err = capsys.readouterr().err
    lines = [m for m in map(LINE.search, err.splitlines()) if m]
    assert len(lines) == 1, err
    return lines[0]


def assert_cancelled_cleanly(rt, caught_at: float, name: str) -> None:
    """Engine idle within 1 s of the interrupt, the pool full but for the cache, the cache consistent,
    the call's worker threads gone, and the runtime serving a new program."""
    while (m := rt.metrics()).num_running or m.num_waiting:
        assert time.monotonic() - caught_at < 1.0, f"engine still busy: {m.num_running} running, {m.num_waiting} waiting"
        time.sleep(0.01)
    assert m.cache_protected == 0
    assert m.pool_free + m.cache_evictable + m.cache_protected == m.pool_slots
    rt.check_integrity()
    deadline = time.monotonic() + 2.0
    while workers := [t.name for t in threading.enumerate()
                      if t.name.startswith(("sgl-state-", f"sgl-batch-{name}", f"sgl-program-{name}"))]:
        assert time.monotonic() < deadline, f"worker threads still alive: {workers[:5]}"
        time.sleep(0.01)
    st = add.run()
    assert st.error() is None and st["answer"].strip() == "5"
    assert_pool_full(rt)


def runs_of(name: str, since: float) -> list[ProgramTelemetry]:
    return [t for t in recent_runs() if t.name == name and t.started >= since]


def assert_nothing_starts_after(name: str, since: float) -> list[ProgramTelemetry]:
    """No program of the call starts after the interrupt, and every one that started has finished."""
    started = runs_of(name, since)
    time.sleep(0.3)
    assert len(runs_of(name, since)) == len(started)
    assert all(t.done for t in started)
    return started


# ---------------------------------------------------------------------------- run_batch
@needs_model
@pytest.mark.parametrize("generator_style", [False, True])
def test_interrupt_cancels_run_batch(rt, capsys, generator_style):
    assert_pool_full(rt)
    since = time.time()
    results = []
    with interrupt_when(running_at_least(rt, 32)), pytest.raises(KeyboardInterrupt):
        out = long_story.run_batch([{"i": i} for i in range(200)], generator_style=generator_style)
        for st in out:  # a list is complete already; a generator is consumed as the cell would
            results.append(st)
    caught_at = time.monotonic()
    assert results == []  # interrupted during the first wave
    line = interrupted(capsys)
    kind, name, total, running, not_started, aborted = line.groups()
    assert (kind, name) == ("run_batch", "long_story")
    assert int(total) == int(running) + int(not_started)
    assert int(running) >= 32 and int(not_started) >= 200 - 64 and int(aborted) >= 32
    progress = current_batch_progress()
    assert progress.name == "long_story" and progress.finished
    assert progress.done + progress.cancelled == 200 and progress.cancelled >= int(total) - 1
    assert progress.eta_s is None and progress.running == 0
    started = assert_nothing_starts_after("long_story", since)
    assert len(started) <= 200 - int(not_started)
    assert all("cancelled" in (t.error or "") for t in started if t.error)
    assert_cancelled_cleanly(rt, caught_at, "long_story")


# ---------------------------------------------------------------------------- run and a streamed run
@needs_model
def test_interrupt_cancels_run(rt, capsys):
    assert_pool_full(rt)
    since = time.time()
    with interrupt_when(running_at_least(rt, 3)), pytest.raises(KeyboardInterrupt):
        three_stories.run()
    caught_at = time.monotonic()
    kind, name, total, running, not_started, aborted = interrupted(capsys).groups()
    assert (kind, name, total, running, not_started) == ("run", "three_stories", "1", "1", None)
    assert int(aborted) == 3
    [run] = assert_nothing_starts_after("three_stories", since)
    assert "ProgramCancelled" in run.error
    assert_cancelled_cleanly(rt, caught_at, "three_stories")


@needs_model
def test_interrupt_cancels_streamed_run(rt, capsys):
    assert_pool_full(rt)
    since = time.time()
    state = long_story.run(i=7, stream=True)
    pieces = []
    with interrupt_when(lambda: len(pieces) >= 5), pytest.raises(KeyboardInterrupt):
        for piece in state.text_iter("story"):
            pieces.append(piece)
    caught_at = time.monotonic()
    kind, name, total, running, not_started, aborted = interrupted(capsys).groups()
    assert (kind, name, total, running, not_started, aborted) == ("run", "long_story", "1", "1", None, "1")
    assert isinstance(state.error(), ProgramCancelled)
    assert_nothing_starts_after("long_story", since)
    assert_cancelled_cleanly(rt, caught_at, "long_story")


# ---------------------------------------------------------------------------- a backend without aborts
class SlowBackend(BaseBackend):
    """Like an HTTP backend: each call takes a while and cannot be aborted once sent."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.calls: list[float] = []
        self.lock = threading.Lock()

    def generate(self, ctx, params):
        with self.lock:
            self.calls.append(time.monotonic())
        time.sleep(self.seconds)
        return " ok", {"prompt_tokens": 1, "completion_tokens": 1}

    def generate_stream(self, ctx, params):
        text, meta = self.generate(ctx, params)
        yield text, None
        yield "", meta

    def select(self, ctx, choices, temperature, choices_method):
        raise NotImplementedError

    def get_chat_template(self):
        return DEFAULT_CHAT_TEMPLATE

    def flush_cache(self) -> bool:
        return True

    def get_server_info(self):
        return {}


@sgl.function
def five_calls(s):
    for i in range(5):
        s += f" step {i}:" + sgl.gen(f"x{i}", max_tokens=1)


def test_interrupt_stops_new_calls_on_a_backend_without_aborts(capsys):
    backend = SlowBackend(0.2)
    with interrupt_when(lambda: len(backend.calls) >= 8), pytest.raises(KeyboardInterrupt):
        five_calls.run_batch([{}] * 40, backend=backend, num_threads=8)
    interrupted_at = time.monotonic()
    kind, name, _total, running, not_started, aborted = interrupted(capsys).groups()
    assert (kind, name, running, not_started, aborted) == ("run_batch", "five_calls", "8", "32", "0")
    time.sleep(0.5)  # the calls in flight return; no program makes another
    assert all(t < interrupted_at for t in backend.calls)
    assert len(backend.calls) <= 16


# ---------------------------------------------------------------------------- cancel scope
def test_cancel_scope_aborts_per_engine_and_refuses_late_submits():
    aborted: list[tuple[str, tuple[str, ...]]] = []

    class Engine:
        def __init__(self, name):
            self.name = name

        def abort_many(self, rids, message):
            aborted.append((self.name, tuple(rids)))

    a, b = Engine("a"), Engine("b")
    scope = CancelScope("run_batch(judge)")
    for rid in ("r1", "r2"):
        scope.register(rid, a.abort_many)
    scope.register("r3", b.abort_many)
    scope.release("r2")
    scope.on_cancel_pending(lambda: 123)
    report = scope.cancel()
    assert report == CancelReport(programs=0, not_started=123, requests=2)
    assert sorted(aborted) == [("a", ("r1",)), ("b", ("r3",))]
    assert scope.cancel() is None
    with pytest.raises(ProgramCancelled, match="judge"):
        scope.check()
    with pytest.raises(ProgramCancelled):
        scope.register("late", a.abort_many)
    assert aborted[-1] == ("a", ("late",))
    assert not scope.wait_released(0.01)
    scope.release("r1")
    scope.release("r3")
    assert scope.wait_released(0.01)
    assert describe_interrupt("run_batch(judge)", CancelReport(64, 123, 64)) == (
        "run_batch(judge): interrupted: cancelled 187 programs (64 running, 123 not started), aborted 64 requests")
    assert describe_interrupt("run(judge)", CancelReport(1, None, 1)) == (
        "run(judge): interrupted: cancelled 1 program (1 running), aborted 1 request")


# ---------------------------------------------------------------------------- progress numbers
class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def telemetry_with_call(name: str, completion_tokens: int) -> ProgramTelemetry:
    t = ProgramTelemetry(f"p-{name}", name)
    t.add_call(CallRecord(t.program_id, "s", "gen", "x", ("r",), 0.0, None, None, 1.0, 5, 0, completion_tokens))
    return t


def test_progress_rate_and_eta_count_from_the_first_start():
    clock = FakeClock()
    tracker = BatchProgressTracker("judge", 10, clock=clock)
    clock.now += 5  # setup before the first program is not counted
    p = tracker.snapshot()
    assert (p.done, p.elapsed_s, p.rate, p.eta_s, p.finished) == (0, 0.0, None, None, False)
    tel = [ProgramTelemetry(f"p{i}", "judge") for i in range(4)]
    for t in tel:
        tracker.program_started(t)
    clock.now += 2
    p = tracker.snapshot()
    assert (p.running, p.elapsed_s, p.rate, p.eta_s) == (4, 2.0, None, None)  # no ETA before a finish
    tel[0].add_call(CallRecord("p0", "s", "gen", "x", ("r",), 0.0, None, None, 1.0, 5, 0, 7))
    p = tracker.snapshot()
    assert (p.calls, p.tokens) == (1, 7)  # moves while programs are in flight
    tracker.program_finished(None)
    tracker.program_finished(RuntimeError("bad"))
    p = tracker.snapshot()
    assert (p.done, p.failed, p.running) == (2, 1, 2)
    assert p.rate == pytest.approx(1.0) and p.eta_s == pytest.approx(8.0)
    clock.now += 2
    p = tracker.snapshot()
    assert p.rate == pytest.approx(0.5) and p.eta_s == pytest.approx(16.0)  # no smoothing: whole-run average
    assert progress_text(p) == "00:04<00:16, 2.0 s/program, 2 running, 1 calls, 7 tok, 1 failed"
    assert p.as_dict()["eta_s"] == p.eta_s


def test_progress_finish_and_cancel():
    clock = FakeClock()
    tracker = BatchProgressTracker("judge", 3, clock=clock, generated_tokens=lambda: 1000 + clock.now)
    for i in range(3):
        tracker.program_started(telemetry_with_call(str(i), 3))
    clock.now += 4
    assert tracker.snapshot().tokens == 4  # the engine's count since the batch began, over the calls'
    tracker.program_finished(None)
    tracker.cancel()
    tracker.program_finished(ProgramCancelled("x"))  # counted by cancel already
    clock.now += 10
    p = tracker.snapshot()
    assert (p.done, p.cancelled, p.running, p.finished, p.elapsed_s, p.eta_s) == (1, 2, 0, True, 4.0, None)
    assert "2 cancelled" in progress_text(p)

    done = BatchProgressTracker("all", 2, clock=clock)
    for i in range(2):
        done.program_started(ProgramTelemetry(str(i), "all"))
        clock.now += 1
        done.program_finished(None)
    clock.now += 5
    p = done.snapshot()
    assert (p.done, p.finished, p.elapsed_s, p.rate, p.eta_s) == (2, True, 2.0, 1.0, 0.0)
    assert rate_and_eta(0, 5, 3.0) == (None, None)
    assert rate_and_eta(3, 3, 3.0) == (1.0, 3.0)
