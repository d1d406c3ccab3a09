"""The soak benchmark (`python -m sglbench.bench soak`): its request mix, how it classifies what comes back (on a
tiny in-process app), its report, and a ten-second soak of a real `sglbench serve` subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import random

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse

from sglbench.bench import soak
from sglbench.bench.__main__ import WORKLOADS

TARGET = soak.Target(model="m", vocab_size=4096, context_length=2048, max_new_tokens=16)


# ---------------------------------------------------------------------------- the request mix
def test_soak_is_a_registered_workload():
    assert WORKLOADS["soak"] == "sglbench.bench.soak"


@pytest.mark.parametrize("kind", soak.KINDS)
def test_a_seed_fixes_each_clients_calls_and_every_probe_is_drawn(kind):
    def draws(seed):
        rng = random.Random(seed)
        return [soak.pick_call(kind, rng, TARGET) for _ in range(400)]

    first = draws(7)
    assert first == draws(7) and first != draws(8)
    assert {c.probe for c in first} == set(soak.PROBES[kind])
    assert all(c.kind == kind for c in first)


def test_the_mix_holds_what_the_soak_promises():
    rng = random.Random(0)
    calls = [soak.pick_call(k, rng, TARGET) for k in soak.KINDS for _ in range(600)]
    good = [c for c in calls if c.kind == "good"]
    bodies = [json.dumps(c.body) for c in calls if c.body is not None]
    assert all(c.auth == "key" and c.hang_up_after is None for c in good)
    assert any(c.stream and c.expect_usage and c.path == "/v1/chat/completions" for c in good)
    assert any(c.body.get("tool_choice") == "required" for c in good if c.body)
    assert any(json.dumps(soak.RECURSIVE_SCHEMA) in b or '"$ref": "#"' in b for b in bodies)
    assert {c.auth for c in calls if c.kind == "bad"} == {"key", "none", "wrong"}
    assert any(c.content is not None for c in calls if c.kind == "bad")  # raw, malformed bodies
    leaving = [c for c in calls if c.kind == "disconnect"]
    assert {c.stream for c in leaving} == {True, False} and all(0 < c.hang_up_after < 2 for c in leaving)


def test_excluded_probes_are_never_drawn():
    rng = random.Random(1)
    calls = [soak.pick_call("bad", rng, TARGET, frozenset({"recursive_schema", "bad_seed"})) for _ in range(300)]
    assert not {"recursive_schema", "bad_seed"} & {c.probe for c in calls}
    with pytest.raises(ValueError, match="every disconnect probe is excluded"):
        soak.pick_call("disconnect", rng, TARGET, frozenset(soak.DISCONNECT))
    with pytest.raises(ValueError, match="unknown probe"):
        soak.SoakConfig(exclude=frozenset({"no_such_probe"}))


# ---------------------------------------------------------------------------- classifying answers
def _app() -> FastAPI:
    app = FastAPI()

    @app.post("/status/{code}")
    async def status(code: int):
        return JSONResponse({"text": "x", "meta_info": {"finish_reason": {"type": "stop"}}}, status_code=code)

    @app.post("/aborted")
    async def aborted():
        return [{"text": "", "meta_info": {"finish_reason": {"type": "abort"}}}]

    @app.post("/slow")
    async def slow():
        await asyncio.sleep(5)
        return {}

    def sse(*events: str) -> StreamingResponse:
        async def body():
            for event in events:
                yield f"data: {event}\n\n"
        return StreamingResponse(body(), media_type="text/event-stream")

    @app.post("/stream/ok")
    async def stream_ok():
        return sse('{"choices": [{"text": "a"}]}', '{"choices": [], "usage": {"total_tokens": 3}}', "[DONE]")

    @app.post("/stream/no-usage")
    async def stream_no_usage():
        return sse('{"choices": [{"text": "a"}]}', "[DONE]")

    @app.post("/stream/error")
    async def stream_error():
        return sse('{"error": {"message": "boom"}}', "[DONE]")

    return app


def _send(call: soak.Call, timeout_s: float = 5.0) -> soak.Outcome:
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app()), base_url="http://soak") as client:
            return await soak.send(client, call, timeout_s)

    return asyncio.run(go())


@pytest.mark.parametrize(("kind", "path", "stream", "label", "failing"), [
    ("good", "/status/200", False, "2xx", False),
    ("bad", "/status/400", False, "4xx:400", False),  # a bad request refused: what should happen
    ("bad", "/status/200", False, "2xx", False),  # accepted: shown, not a failure
    ("good", "/status/429", False, "4xx:429", False),  # a limit doing its job
    ("good", "/status/400", False, "4xx:400", True),  # a good request refused
    ("bad", "/status/500", False, "5xx:500", True),
    ("good", "/status/503", False, "5xx:503", True),
    ("good", "/aborted", False, "2xx aborted", True),
    ("good", "/stream/ok", True, "2xx", False),
    ("good", "/stream/error", True, "2xx stream_error", True),
])
def test_outcomes_are_classified_by_status_class_not_message(kind, path, stream, label, failing):
    outcome = _send(soak.Call(kind, "probe", path, {"x": 1}, stream=stream, expect_usage=stream))
    assert outcome.label == label
    assert (outcome.failure is not None) == failing
    assert outcome.served == (label == "2xx")
    if failing:  # what a reader needs first: the error body or the abort's reason
        assert outcome.detail and ("abort" in outcome.detail or "boom" in outcome.detail or "text" in outcome.detail)


def test_a_stream_that_drops_the_usage_it_was_asked_for_is_incomplete():
    outcome = _send(soak.Call("good", "p", "/stream/no-usage", {}, stream=True, expect_usage=True))
    assert outcome.label == "2xx incomplete" and outcome.failure
    assert _send(soak.Call("good", "p", "/stream/no-usage", {}, stream=True)).served


def test_hanging_up_is_the_clients_choice_and_a_timeout_is_a_failure():
    left = _send(soak.Call("disconnect", "p", "/slow", {}, hang_up_after=0.05))
    assert left.label == "hung_up" and left.failure is None and left.status is None
    waited = _send(soak.Call("good", "p", "/slow", {}), timeout_s=0.05)
    assert waited.label == "timeout" and "timeout on a good request" in waited.failure


def test_a_refused_connection_is_a_failure():
    async def go():
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{soak.free_port()}") as client:
            return await soak.send(client, soak.Call("good", "p", "/health", method="GET"), 5.0)

    outcome = asyncio.run(go())
    assert outcome.label == "connection" and outcome.failure


def test_rss_is_read_from_proc():
    assert soak.rss_mb(os.getpid()) > 10
    assert soak.rss_mb(2**22 + 12345) is None  # past the kernel's default pid_max: no such process


# ---------------------------------------------------------------------------- the report
def test_the_report_lists_every_failure_and_only_failures():
    cfg = soak.SoakConfig(seconds=10, clients=3)
    rec = soak.Recorder(outcomes=[
        soak.Outcome("good", "chat", "/v1/chat/completions", 200, None, 0.1),
        soak.Outcome("good", "chat", "/v1/chat/completions", 200, None, 0.3),
        soak.Outcome("bad", "bad_seed", "/generate", 400, None, 0.01),
        soak.Outcome("bad", "oversize_n", "/generate", 500, None, 0.01),
        soak.Outcome("disconnect", "generate_long", "/generate", None, "hung_up", 0.5),
    ], rss=[(0.5, 600.0), (5.0, 700.0), (9.0, 650.0)])
    checks = [soak.Check("/health ok", True, "ok"), soak.Check("pool full, tree empty after flush", False, "leak")]
    report = soak.build_report(cfg, rec, checks, 10.0, 580.0, True, "exited")
    assert report["sent"] == {"good": 2, "bad": 2, "disconnect": 1}
    assert report["served"] == {"good": 2, "bad": 0, "disconnect": 0}
    assert report["outcomes"]["bad"] == {"4xx:400": 1, "5xx:500": 1}
    assert report["latency_good"]["/v1/chat/completions"]["count"] == 2
    assert report["rss_mb"] | {"samples": None} == {"start": 580.0, "warm": 700.0, "end": 650.0, "peak": 700.0,
                                                     "samples": None}
    assert not report["ok"] and len(report["failures"]) == 2
    assert "500 on a bad request (oversize_n)" in report["failures"][0]
    assert "pool full" in report["failures"][1]
    json.dumps(report)  # plain JSON throughout


# ---------------------------------------------------------------------------- a real, short soak
@pytest.mark.timeout(60)
def test_a_ten_second_soak_of_a_served_engine(tmp_path, capsys):
    """Four clients (good, bad, disconnecting, good) for ten seconds against `python -m sglbench serve`. The
    recursive schema is left out: until jump-forward is bounded it can grow the server by gigabytes (the soak's
    watchdog then kills it), and the multi-megabyte prompt costs seconds of tokenizing on two cores."""
    out = tmp_path / "soak.json"
    argv = ["--seconds", "10", "--clients", "4", "--max-new-tokens", "12", "--request-timeout", "20",
            "--settle-timeout", "15", "--max-server-rss-mb", "4000", "--exclude", "recursive_schema,oversize_prompt",
            "--json", str(out)]
    try:
        returned = soak.main(argv)
    except SystemExit as exit_:  # failures found: still a whole report, and it says why
        assert exit_.code == 1
        returned = None
    report = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert returned is None or returned["ok"]
    assert ("PASS" in printed) == report["ok"] == (not report["failures"])
    assert set(report["sent"]) == set(soak.KINDS) and all(report["sent"][k] > 0 for k in soak.KINDS)
    for kind in soak.KINDS:
        assert sum(report["outcomes"][kind].values()) == report["sent"][kind] >= report["served"][kind]
    assert report["served"]["good"] > 0 and report["latency_good"]
    assert all(s["p50_ms"] <= s["p99_ms"] for s in report["latency_good"].values())
    assert any(label.startswith("4xx") for label in report["outcomes"]["bad"])
    assert report["outcomes"]["disconnect"].get("hung_up", 0) > 0
    assert report["rss_mb"]["start"] > 0 and report["rss_mb"]["peak"] >= report["rss_mb"]["end"] > 0
    names = {c["name"] for c in report["checks"]}
    assert {"all requests finished", "pool full, tree empty after flush", "/metrics parses", "/health ok"} <= names
    assert "requests by kind and outcome" in printed and "End checks" in printed
