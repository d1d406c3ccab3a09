"""RequestHandle, the caller's view of a request: one lock with a condition for the result and one for the stream,
so a caller waiting for the result is not woken by each streamed piece (a woken thread takes the GIL from the
engine thread: skeleton-of-thought ran 12 % slower with a single condition)."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from sglbench.runtime.request import RequestHandle


def test_the_stream_and_the_result_arrive_whole_and_in_order():
    handle = RequestHandle("r1")
    got: dict = {}
    waiter = threading.Thread(target=lambda: got.setdefault("result", handle.result(timeout=10)))
    waiter.start()
    for i in range(500):
        handle.push_delta(f"{i},", completion_tokens=i + 1, output_token_logprobs=[(-0.5, i)])
    assert not handle.done()
    assert handle.finish({"text": "done"}) and not handle.finish({"text": "again"})
    waiter.join(10)
    assert got["result"] == {"text": "done"} and handle.done()
    deltas = list(handle.iter_deltas(timeout=1))
    assert "".join(d.text for d in deltas) == "".join(f"{i}," for i in range(500))
    assert [d.completion_tokens for d in deltas] == list(range(1, 501))
    assert deltas[7].output_token_logprobs == ((-0.5, 7),)


def test_a_result_waiter_sleeps_through_streamed_pieces(monkeypatch):
    handle = RequestHandle("r2")
    wakeups = []
    real_wait = handle._cond.wait

    def counting_wait(timeout=None):
        wakeups.append(1)
        return real_wait(timeout)

    monkeypatch.setattr(handle._cond, "wait", counting_wait)
    waiter = threading.Thread(target=handle.result, kwargs={"timeout": 10})
    waiter.start()
    while not wakeups:  # the waiter is asleep in result()
        threading.Event().wait(0.001)
    for _ in range(100):
        handle.push_delta("x")
        time.sleep(0.0005)  # lets a woken waiter run, as the engine's forward does between pieces
    handle.finish({"text": "x" * 100})
    waiter.join(10)
    assert len(wakeups) <= 2  # asleep once, woken by the finish (not by 100 pieces)


def test_timeouts_name_what_did_not_come():
    handle = RequestHandle("r3")
    with pytest.raises(TimeoutError, match="r3"):
        handle.result(timeout=0.01)
    with pytest.raises(queue.Empty):
        next(handle.iter_deltas(timeout=0.01))
    calls = []
    handle.add_done_callback(calls.append)
    handle.finish({"text": ""})
    handle.add_done_callback(calls.append)  # after the finish: called at once
    assert calls == [{"text": ""}, {"text": ""}]
