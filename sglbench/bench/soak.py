"""Soak: `sglbench serve` under good, bad and disconnecting clients for a set time, then an integrity check.

The server runs as a subprocess (`python -m sglbench serve`, loopback, with an API key and the hermes tool-call
format): its RSS is its own (not the clients' buffers), a runaway allocation can be stopped by killing it without
taking the report along (the RSS watchdog, `--max-server-rss-mb`), and its stop on SIGTERM is checked as an operator
sends it. The clients are asyncio tasks over one httpx client, each with its own seeded random stream:
- good: /generate (text, batch, n > 1, regex, json_schema, logprobs, streaming), /v1/completions and
  /v1/chat/completions (streaming with include_usage, tools with tool_choice "required", json_object), /health;
- bad: malformed JSON, wrong types, unknown model, out-of-vocabulary ids, oversize n, bad regex, a recursive
  required schema, huge stop lists, bad seeds, impossible parameters, oversize prompts, missing or wrong key;
- disconnecting: long requests, streaming or not, whose client hangs up after a random short delay.
Statuses are classified generically (2xx, 4xx by code, 5xx by code, connection error, timeout). A failure is a 5xx
anywhere, a connection error or timeout on a request the client did not leave, a good request refused, aborted or
with a broken stream, a dead or runaway server, or a failed end check (idle, pool full after a flush, /metrics
parses, /health and /health_generate answer, SIGTERM stops it); any failure makes the command exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from sglbench.bench.common import print_table
from sglbench.server.background import free_port
from sglbench.viz.latency import percentile

KINDS = ("good", "bad", "disconnect")
ROLE_CYCLE = ("good", "bad", "disconnect", "good")  # client i plays ROLE_CYCLE[i % 4]: half the clients are good
API_KEY = "soak-key"
TOOL_CALL_PARSER = "hermes"  # so tools work whatever the model folder says
RECURSIVE_SCHEMA = {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]}
CITY_SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                                "population": {"type": "integer"}},
               "required": ["name", "population"], "additionalProperties": False}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
PROMPTS = ("Once upon a time", "The capital of France is", "def fibonacci(n):", "Q: What is 2 + 2?\nA:",
           "A list of fruits: apple,", "Write a haiku about the sea.", "The quick brown fox")
REGEXES = (r"(yes|no|maybe)", r"[0-9]{1,4}", r"[A-Z][a-z]{2,8}( [A-Z][a-z]{2,8})?")
BAD_REGEXES = ("([a-z", "a{5,2}", "(?<=a)b", "*abc")


# ---------------------------------------------------------------------------- what a client sends
@dataclass(frozen=True)
class Target:
    """What the probes need to know about the served model."""

    model: str
    vocab_size: int
    context_length: int
    max_new_tokens: int  # the most a good request asks for


@dataclass(frozen=True)
class Call:
    """One HTTP request: a JSON body (or raw bytes), which key it carries, and when (if ever) its client leaves."""

    kind: str
    probe: str
    path: str
    body: Any = None
    content: bytes | None = None  # sent as is (malformed JSON) instead of body
    method: str = "POST"
    auth: str = "key"  # "key", "none" or "wrong"
    stream: bool = False
    expect_usage: bool = False  # an OpenAI stream asked for include_usage: a usage chunk must come
    hang_up_after: float | None = None  # seconds after sending, the client disconnects

    @property
    def route(self) -> str:
        return f"{self.path} (stream)" if self.stream else self.path


def _prompt(rng: random.Random) -> str:
    return f"{rng.choice(PROMPTS)} #{rng.randrange(1000)}"


def _tokens(rng: random.Random, t: Target) -> int:
    return rng.randint(4, t.max_new_tokens)


def _gen(rng: random.Random, t: Target, **params: Any) -> dict:
    return {"text": _prompt(rng), "sampling_params": {"max_new_tokens": _tokens(rng, t), "temperature": 0.8, **params}}


def _completion(rng: random.Random, t: Target, **fields: Any) -> dict:
    return {"model": t.model, "prompt": _prompt(rng), "max_tokens": _tokens(rng, t), **fields}


def _chat(rng: random.Random, t: Target, **fields: Any) -> dict:
    return {"model": t.model, "messages": [{"role": "user", "content": _prompt(rng)}],
            "max_tokens": _tokens(rng, t), **fields}


_USAGE = {"stream_options": {"include_usage": True}}
Probe = Callable[[random.Random, Target], Call]

GOOD: dict[str, Probe] = {
    "generate_text": lambda r, t: Call("good", "generate_text", "/generate", _gen(r, t)),
    "generate_batch": lambda r, t: Call("good", "generate_batch", "/generate", {
        "text": [_prompt(r) for _ in range(3)], "sampling_params": {"max_new_tokens": _tokens(r, t)}}),
    "generate_n": lambda r, t: Call("good", "generate_n", "/generate", _gen(r, t, n=3, temperature=1.0)),
    "generate_regex": lambda r, t: Call("good", "generate_regex", "/generate",
                                        _gen(r, t, regex=r.choice(REGEXES), max_new_tokens=24)),
    "generate_json_schema": lambda r, t: Call("good", "generate_json_schema", "/generate",
                                              _gen(r, t, json_schema=json.dumps(CITY_SCHEMA), max_new_tokens=48)),
    "generate_logprobs": lambda r, t: Call("good", "generate_logprobs", "/generate", {
        **_gen(r, t), "return_logprob": True, "top_logprobs_num": 3, "return_text_in_logprobs": True}),
    "generate_stream": lambda r, t: Call("good", "generate_stream", "/generate", {**_gen(r, t), "stream": True},
                                         stream=True),
    "completions": lambda r, t: Call("good", "completions", "/v1/completions", _completion(r, t, logprobs=2)),
    "completions_stream": lambda r, t: Call("good", "completions_stream", "/v1/completions",
                                            _completion(r, t, stream=True, **_USAGE), stream=True,
                                            expect_usage=True),
    "chat": lambda r, t: Call("good", "chat", "/v1/chat/completions", _chat(r, t, temperature=0.7)),
    "chat_stream": lambda r, t: Call("good", "chat_stream", "/v1/chat/completions",
                                     _chat(r, t, stream=True, **_USAGE), stream=True, expect_usage=True),
    "chat_tools_required": lambda r, t: Call("good", "chat_tools_required", "/v1/chat/completions",
                                             _chat(r, t, tools=[WEATHER_TOOL], tool_choice="required",
                                                   max_tokens=48)),
    "chat_json_object": lambda r, t: Call("good", "chat_json_object", "/v1/chat/completions",
                                          _chat(r, t, response_format={"type": "json_object"})),
    "health": lambda r, t: Call("good", "health", "/health", method="GET"),
}


def _bad(probe: str, path: str, body: Any = None, **kw: Any) -> Call:
    return Call("bad", probe, path, body, **kw)


def _malformed(r: random.Random, t: Target) -> Call:
    raw = r.choice([b'{"text": "hi", "sampling_params": {', b"{'text': 'single quotes'}", b"\xff\xfe not json",
                    b'{"text": "\\ud800 lone surrogate"}', b"[1, 2,]", b""])
    return _bad("malformed_json", r.choice(["/generate", "/v1/completions", "/v1/chat/completions"]), content=raw)


def _wrong_types(r: random.Random, t: Target) -> Call:
    return r.choice([
        _bad("wrong_types", "/generate", {"text": 42}),
        _bad("wrong_types", "/generate", {"text": "hi", "sampling_params": {"max_new_tokens": "many"}}),
        _bad("wrong_types", "/generate", {"text": "hi", "sampling_params": {"temperature": [1]}}),
        _bad("wrong_types", "/v1/chat/completions", {"model": t.model, "messages": "hello"}),
        _bad("wrong_types", "/v1/completions", {"model": t.model, "prompt": {"a": 1}, "max_tokens": -3}),
    ])


def _out_of_vocab(r: random.Random, t: Target) -> Call:
    ids = r.choice([[1, t.vocab_size + r.randrange(100)], [2**40], [-5, 3], []])
    return _bad("out_of_vocab_ids", "/generate", {"input_ids": ids, "sampling_params": {"max_new_tokens": 4}})


def _oversize_n(r: random.Random, t: Target) -> Call:
    n = r.choice([0, -1, 4096, 10**6])
    if r.random() < 0.5:
        return _bad("oversize_n", "/v1/completions", {"model": t.model, "prompt": "hi", "n": n, "max_tokens": 1})
    return _bad("oversize_n", "/generate", {"text": "hi", "sampling_params": {"n": n, "max_new_tokens": 1}})


def _bad_regex(r: random.Random, t: Target) -> Call:
    return _bad("bad_regex", "/generate", _gen(r, t, regex=r.choice(BAD_REGEXES)))


def _recursive_schema(r: random.Random, t: Target) -> Call:
    if r.random() < 0.5:
        return _bad("recursive_schema", "/generate", _gen(r, t, json_schema=json.dumps(RECURSIVE_SCHEMA)))
    schema = {"type": "json_schema", "json_schema": {"name": "loop", "schema": RECURSIVE_SCHEMA}}
    return _bad("recursive_schema", "/v1/chat/completions", _chat(r, t, response_format=schema))


def _huge_stop(r: random.Random, t: Target) -> Call:
    stops = [f"stop{i}-{r.randrange(10**6)}" for i in range(10_000)]
    if r.random() < 0.5:
        return _bad("huge_stop", "/v1/completions", _completion(r, t, stop=stops))
    return _bad("huge_stop", "/generate", _gen(r, t, stop=stops))


def _bad_seed(r: random.Random, t: Target) -> Call:
    seed = r.choice([1.5, 2**64, -(2**70), "seven"])
    if r.random() < 0.5:
        return _bad("bad_seed", "/v1/completions", _completion(r, t, seed=seed))
    return _bad("bad_seed", "/generate", _gen(r, t, seed=seed))


def _impossible(r: random.Random, t: Target) -> Call:
    params = r.choice([{"top_k": 10**30}, {"stop": [1]}, {"stop_token_ids": [t.vocab_size + 5], "min_new_tokens": 3},
                       {"max_new_tokens": t.context_length * 4}, {"temperature": -1.0}, {"top_p": 7}])
    if r.random() < 0.3:
        return _bad("impossible_params", "/generate", {**_gen(r, t), "return_logprob": True,
                                                       "top_logprobs_num": t.vocab_size * 4})
    return _bad("impossible_params", "/generate", _gen(r, t, **params))


def _oversize_prompt(r: random.Random, t: Target) -> Call:
    size = r.choice([t.context_length * 8, 2_000_000])  # past the context; rarely a body of megabytes
    return _bad("oversize_prompt", "/v1/completions", {"model": t.model, "prompt": "word " * (size // 5),
                                                       "max_tokens": 4})


BAD: dict[str, Probe] = {
    "malformed_json": _malformed,
    "wrong_types": _wrong_types,
    "unknown_model": lambda r, t: _bad("unknown_model", r.choice(["/v1/completions", "/v1/chat/completions"]),
                                       {**_chat(r, t), "prompt": "hi", "model": f"no-such-model-{r.randrange(99)}"}),
    "out_of_vocab_ids": _out_of_vocab,
    "oversize_n": _oversize_n,
    "bad_regex": _bad_regex,
    "recursive_schema": _recursive_schema,
    "huge_stop": _huge_stop,
    "bad_seed": _bad_seed,
    "impossible_params": _impossible,
    "oversize_prompt": _oversize_prompt,
    "missing_key": lambda r, t: _bad("missing_key", "/generate", _gen(r, t), auth="none"),
    "wrong_key": lambda r, t: _bad("wrong_key", "/v1/chat/completions", _chat(r, t), auth="wrong"),
}


def _leaving(probe: str, path: str, body: dict, r: random.Random, stream: bool = False) -> Call:
    return Call("disconnect", probe, path, body, stream=stream, hang_up_after=r.uniform(0.05, 1.5))


DISCONNECT: dict[str, Probe] = {
    "generate_long": lambda r, t: _leaving("generate_long", "/generate",
                                           _gen(r, t, max_new_tokens=400, ignore_eos=True), r),
    "generate_stream_long": lambda r, t: _leaving("generate_stream_long", "/generate", {
        **_gen(r, t, max_new_tokens=400, ignore_eos=True), "stream": True}, r, stream=True),
    "completions_long": lambda r, t: _leaving("completions_long", "/v1/completions",
                                              _completion(r, t, max_tokens=400, ignore_eos=True), r),
    "chat_stream_long": lambda r, t: _leaving("chat_stream_long", "/v1/chat/completions",
                                              _chat(r, t, max_tokens=400, ignore_eos=True, stream=True), r,
                                              stream=True),
}
PROBES: dict[str, dict[str, Probe]] = {"good": GOOD, "bad": BAD, "disconnect": DISCONNECT}
WEIGHTS = {"oversize_prompt": 0.2, "health": 0.5}  # others 1: the few expensive bad bodies stay rare


def pick_call(kind: str, rng: random.Random, target: Target, exclude: frozenset[str] = frozenset()) -> Call:
    """The next request of a client of this kind, drawn from its probes (minus excluded ones) by weight."""
    names = [n for n in PROBES[kind] if n not in exclude]
    if not names:
        raise ValueError(f"every {kind} probe is excluded")
    name = rng.choices(names, weights=[WEIGHTS.get(n, 1.0) for n in names])[0]
    return PROBES[kind][name](rng, target)


# ---------------------------------------------------------------------------- what comes back
@dataclass(frozen=True)
class Outcome:
    """How one call ended: an HTTP status (None if none came) and, when it did not end cleanly, why
    ("hung_up" by our client, "connection", "timeout", "aborted", "stream_error", "incomplete")."""

    kind: str
    probe: str
    route: str
    status: int | None
    problem: str | None
    latency_s: float
    detail: str = ""  # the start of an error body, an abort's message: what a failure's reader needs first

    @property
    def label(self) -> str:
        """The table row: 2xx, 4xx:CODE, 5xx:CODE, a 2xx whose body went wrong ("2xx aborted"), or the problem."""
        if self.status is None:
            return self.problem or "no_status"
        status = "2xx" if 200 <= self.status < 300 else f"{self.status // 100}xx:{self.status}"
        return f"{status} {self.problem}" if self.problem else status

    @property
    def served(self) -> bool:
        return self.status is not None and 200 <= self.status < 300 and self.problem is None

    @property
    def failure(self) -> str | None:
        """Why this outcome is a failure, or None. 4xx on a bad request is expected, 2xx on one is tolerated;
        429 on a good one is a limit doing its job."""
        if self.status is not None and self.status >= 500:
            return f"{self.status} on a {self.kind} request ({self.probe})"
        if self.problem in ("connection", "timeout", "stream_error"):
            return f"{self.problem} on a {self.kind} request ({self.probe})"
        if self.kind == "good" and self.problem in ("aborted", "incomplete"):
            return f"good request {self.problem} ({self.probe})"
        if self.kind == "good" and self.status is not None and 400 <= self.status < 500 and self.status != 429:
            return f"good request refused with {self.status} ({self.probe})"
        return None


DETAIL_CHARS = 200


def _abort_reason(payload: Any) -> str | None:
    """The finish reason of an SGLang-shaped answer (one result, a list, or a stream chunk) that reports an
    aborted request, as text; None when nothing in it was aborted."""
    for item in payload if isinstance(payload, list) else [payload]:
        meta = item.get("meta_info") if isinstance(item, dict) else None
        reason = (meta.get("finish_reason") or {}) if isinstance(meta, dict) else {}
        if reason.get("type") == "abort":
            return json.dumps(reason)[:DETAIL_CHARS]
    return None


def _headers(call: Call) -> dict[str, str]:
    headers = {"Content-Type": "application/json"} if call.content is not None else {}
    if call.auth == "key":
        headers["Authorization"] = f"Bearer {API_KEY}"
    elif call.auth == "wrong":
        headers["Authorization"] = "Bearer not-the-key"
    return headers


async def _stream_problem(response: httpx.Response, call: Call) -> tuple[str | None, str]:
    """Read an SSE answer to the end: ("stream_error", its event) for an error event, ("aborted", the reason) for
    an aborted result, "incomplete" without [DONE] or an asked-for usage chunk; (None, "") when whole."""
    done = usage = False
    problem, detail = None, ""
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            continue
        payload = json.loads(data)
        if isinstance(payload, dict) and "error" in payload:
            problem, detail = "stream_error", data[:DETAIL_CHARS]
        elif problem is None and (reason := _abort_reason(payload)):
            problem, detail = "aborted", reason
        usage = usage or (isinstance(payload, dict) and payload.get("usage") is not None and not payload.get("choices"))
    if problem:
        return problem, detail
    return (None, "") if done and (usage or not call.expect_usage) else ("incomplete", "no [DONE] or usage chunk")


async def _exchange(client: httpx.AsyncClient, call: Call) -> tuple[int, str | None, str]:
    """Send one call and read its whole answer: (status, problem, detail)."""
    kwargs: dict[str, Any] = {"headers": _headers(call)}
    if call.content is not None:
        kwargs["content"] = call.content
    elif call.body is not None:
        kwargs["json"] = call.body
    if call.stream:
        async with client.stream(call.method, call.path, **kwargs) as response:
            if response.status_code != 200:
                await response.aread()
                return response.status_code, None, response.text[:DETAIL_CHARS]
            return 200, *await _stream_problem(response, call)
    response = await client.request(call.method, call.path, **kwargs)
    if not response.is_success:
        return response.status_code, None, response.text[:DETAIL_CHARS]
    if call.kind == "good" and call.method == "POST" and (reason := _abort_reason(response.json())):
        return response.status_code, "aborted", reason
    return response.status_code, None, ""


async def send(client: httpx.AsyncClient, call: Call, timeout_s: float) -> Outcome:
    """One call, cut short when its client hangs up (hang_up_after) or when no whole answer came in timeout_s."""
    start = time.perf_counter()
    status, problem, detail = None, None, ""
    limit = call.hang_up_after if call.hang_up_after is not None else timeout_s
    try:
        status, problem, detail = await asyncio.wait_for(_exchange(client, call), limit)
    except asyncio.TimeoutError:
        problem = "hung_up" if call.hang_up_after is not None else "timeout"
    except httpx.TimeoutException:
        problem = "timeout"
    except (httpx.TransportError, httpx.StreamError) as exc:
        problem, detail = "connection", f"{type(exc).__name__}: {exc}"[:DETAIL_CHARS]
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        problem, detail = "stream_error", f"{type(exc).__name__}: {exc}"[:DETAIL_CHARS]
    return Outcome(call.kind, call.probe, call.route, status, problem, time.perf_counter() - start, detail)


# ---------------------------------------------------------------------------- the server under test
def rss_mb(pid: int) -> float | None:
    """A process's resident set size in MiB, from /proc/PID/status VmRSS (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


class ServerProcess:
    """`python -m sglbench serve` on a free loopback port with the soak's API key; its output goes to a log file."""

    def __init__(self, serve_args: list[str], log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.note = ""  # why the soak stopped it early, if it did
        command = [sys.executable, "-m", "sglbench", "serve", "--port", str(self.port), "--api-key", API_KEY,
                   "--tool-call-parser", TOOL_CALL_PARSER, *serve_args]
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode} while starting:\n{self.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.25)
        self.kill()
        raise RuntimeError(f"the server did not answer /health within {timeout_s:.0f} s:\n{self.log_tail()}")

    def rss_mb(self) -> float | None:
        return rss_mb(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout_s: float) -> tuple[bool, str]:
        """SIGTERM, then SIGKILL if it has not exited within timeout_s: (stopped on SIGTERM, what happened)."""
        if not self.alive():
            return False, f"had already exited with {self.proc.returncode}"
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return False, f"still running {timeout_s:.0f} s after SIGTERM: killed"
        return True, f"exited {time.monotonic() - start:.1f} s after SIGTERM"

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


# ---------------------------------------------------------------------------- the soak
@dataclass(frozen=True)
class SoakConfig:
    """How long, how many clients of which kinds, how big, and the server's command-line options."""

    seconds: float = 600.0
    clients: int = 16
    seed: int = 0
    max_new_tokens: int = 48
    think_s: float = 0.05  # mean pause of a client between requests
    request_timeout_s: float = 120.0
    settle_timeout_s: float = 120.0  # for the engine to go idle after the clients stop
    max_server_rss_mb: float = 8192.0  # the watchdog kills the server above this
    exclude: frozenset[str] = frozenset()
    serve_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.seconds <= 0 or self.clients < 1:
            raise ValueError("give a positive duration and at least one client")
        unknown = self.exclude - {n for probes in PROBES.values() for n in probes}
        if unknown:
            raise ValueError(f"unknown probe(s) to exclude: {sorted(unknown)}")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Recorder:
    """Outcomes as they come, and the server's RSS over time (seconds since start, MiB)."""

    outcomes: list[Outcome] = field(default_factory=list)
    rss: list[tuple[float, float]] = field(default_factory=list)


async def _client(index: int, client: httpx.AsyncClient, cfg: SoakConfig, target: Target, deadline: float,
                  stop: asyncio.Event, rec: Recorder) -> None:
    kind = ROLE_CYCLE[index % len(ROLE_CYCLE)]
    rng = random.Random(f"{cfg.seed}:{index}")
    while not stop.is_set() and time.monotonic() < deadline:
        call = pick_call(kind, rng, target, cfg.exclude)
        rec.outcomes.append(await send(client, call, cfg.request_timeout_s))
        await asyncio.sleep(rng.uniform(0, 2 * cfg.think_s))


async def _watch(server: ServerProcess, cfg: SoakConfig, stop: asyncio.Event, done: asyncio.Event,
                 rec: Recorder, start: float) -> None:
    """Sample the server's RSS twice a second; stop the soak if the server dies, kill it past the RSS limit."""
    while not done.is_set():
        mb = server.rss_mb()
        if not server.alive() or mb is None:
            server.note = server.note or f"server exited with {server.proc.returncode} during the soak"
            stop.set()
            return
        rec.rss.append((time.monotonic() - start, mb))
        if mb > cfg.max_server_rss_mb:
            server.kill()
            server.note = f"server RSS {mb:,.0f} MiB passed the {cfg.max_server_rss_mb:,.0f} MiB limit: killed"
            stop.set()
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(done.wait(), 0.5)


async def _check(name: str, probe: Callable[[], Any]) -> Check:
    """Run one end check; an exception is a failed check that names it."""
    try:
        ok, detail = await probe()
    except Exception as exc:
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    return Check(name, ok, detail)


async def end_checks(client: httpx.AsyncClient, settle_timeout_s: float) -> list[Check]:
    """After the clients stop: every request finished, the pool full and the tree empty after a flush, /metrics
    parses, /health and /health_generate answer."""
    auth = {"Authorization": f"Bearer {API_KEY}"}

    async def idle() -> tuple[bool, str]:
        deadline = time.monotonic() + settle_timeout_s
        while True:
            m = (await client.get("/engine_metrics", headers=auth)).json()
            if m["num_running"] == 0 and m["num_waiting"] == 0:
                return True, f"{m['num_finished']} requests finished, none running or waiting"
            if time.monotonic() > deadline:
                return False, f"{m['num_running']} running, {m['num_waiting']} waiting after {settle_timeout_s:.0f} s"
            await asyncio.sleep(0.25)

    async def pool() -> tuple[bool, str]:
        flushed = (await client.post("/flush_cache", headers=auth)).json().get("success")
        m = (await client.get("/engine_metrics", headers=auth)).json()
        full = m["pool_free"] == m["pool_slots"] and m["cache_evictable"] == 0 and m["cache_protected"] == 0
        return bool(flushed) and full, (f"flush {'ok' if flushed else 'refused'}; pool_free {m['pool_free']} of "
                                        f"{m['pool_slots']}, tree evictable {m['cache_evictable']}, protected "
                                        f"{m['cache_protected']}; {m['num_retractions']} retractions")

    async def metrics() -> tuple[bool, str]:
        from prometheus_client.parser import text_string_to_metric_families

        response = await client.get("/metrics", headers=auth)
        names = {f.name for f in text_string_to_metric_families(response.text)}
        return response.status_code == 200 and "sglang:num_requests" in names, f"{len(names)} metric families"

    async def health() -> tuple[bool, str]:
        response = await client.get("/health")
        return response.status_code == 200 and response.json().get("status") == "ok", response.text[:80]

    async def health_generate() -> tuple[bool, str]:
        response = await client.get("/health_generate", timeout=30)
        return response.status_code == 200, f"status {response.status_code}"

    return [await _check("all requests finished", idle), await _check("pool full, tree empty after flush", pool),
            await _check("/metrics parses", metrics), await _check("/health ok", health),
            await _check("/health_generate ok", health_generate)]


async def _target(client: httpx.AsyncClient, max_new_tokens: int) -> Target:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    model = (await client.get("/v1/models", headers=auth)).json()["data"][0]["id"]
    info = (await client.get("/model_info", headers=auth)).json()
    return Target(model, info["vocab_size"], info["context_length"], max_new_tokens)


async def _soak(server: ServerProcess, cfg: SoakConfig, rec: Recorder) -> list[Check]:
    limits = httpx.Limits(max_connections=cfg.clients * 2, max_keepalive_connections=cfg.clients)
    async with httpx.AsyncClient(base_url=server.url, timeout=cfg.request_timeout_s, limits=limits) as client:
        target = await _target(client, cfg.max_new_tokens)
        start = time.monotonic()
        stop, done = asyncio.Event(), asyncio.Event()
        watcher = asyncio.create_task(_watch(server, cfg, stop, done, rec, start))
        await asyncio.gather(*(_client(i, client, cfg, target, start + cfg.seconds, stop, rec)
                               for i in range(cfg.clients)))
        if stop.is_set():
            done.set()
            await watcher
            return [Check("server alive", False, server.note)]
        checks = await end_checks(client, cfg.settle_timeout_s)
        done.set()
        await watcher
        end = server.rss_mb()
        if end is not None:
            rec.rss.append((time.monotonic() - start, end))
        return checks


# ---------------------------------------------------------------------------- the report
def _percentiles(values: list[float]) -> dict:
    return {"count": len(values), "p50_ms": percentile(values, 50) * 1e3, "p99_ms": percentile(values, 99) * 1e3}


def build_report(cfg: SoakConfig, rec: Recorder, checks: list[Check], wall_s: float, rss_start: float | None,
                 stopped_on_sigterm: bool, stop_detail: str) -> dict:
    """Every number of a soak as plain JSON: outcomes by kind and label, by probe, latency of good requests by
    route, the server's RSS, the end checks and the failures (empty when the soak passed)."""
    by_kind = {k: Counter(o.label for o in rec.outcomes if o.kind == k) for k in KINDS}
    by_probe: dict[str, Counter] = defaultdict(Counter)
    latencies: dict[str, list[float]] = defaultdict(list)
    for o in rec.outcomes:
        by_probe[f"{o.kind}/{o.probe}"][o.label] += 1
        if o.kind == "good" and o.served:
            latencies[o.route].append(o.latency_s)
    failures = Counter(f for o in rec.outcomes if (f := o.failure))
    example = {o.failure: o.detail for o in reversed(rec.outcomes) if o.failure and o.detail}
    problems = [f"{n} x {why}" + (f", e.g. {example[why]}" if why in example else "")
                for why, n in failures.most_common()]
    problems += [f"end check failed: {c.name}: {c.detail}" for c in checks if not c.ok]
    if not stopped_on_sigterm:
        problems.append(f"server {stop_detail}")
    served_good = sum(o.served for o in rec.outcomes if o.kind == "good")
    if not served_good:
        problems.append("no good request was served")
    samples = [mb for _, mb in rec.rss]
    warm = [mb for t, mb in rec.rss if t >= 0.1 * cfg.seconds]  # after the first tenth: start-up allocations done
    return {
        "config": {**dataclasses.asdict(cfg), "exclude": sorted(cfg.exclude), "serve_args": list(cfg.serve_args)},
        "wall_s": wall_s,
        "sent": {k: sum(by_kind[k].values()) for k in KINDS},
        "served": {k: sum(o.served for o in rec.outcomes if o.kind == k) for k in KINDS},
        "outcomes": {k: dict(by_kind[k]) for k in KINDS},
        "by_probe": {name: dict(c) for name, c in sorted(by_probe.items())},
        "latency_good": {route: _percentiles(v) for route, v in sorted(latencies.items())},
        "rss_mb": {"start": rss_start, "warm": warm[0] if warm else None, "end": samples[-1] if samples else None,
                   "peak": max(samples) if samples else None, "samples": rec.rss},
        "checks": [dataclasses.asdict(c) for c in checks],
        "server_stop": {"on_sigterm": stopped_on_sigterm, "detail": stop_detail},
        "failures": problems,
        "ok": not problems,
    }


def print_report(report: dict) -> None:
    """The outcome table (kinds side by side), latency by route, RSS and end checks, then the verdict."""
    labels = sorted({label for k in KINDS for label in report["outcomes"][k]},
                    key=lambda s: (s != "2xx", s.startswith("5") or s in ("connection", "timeout"), s))
    rows = [{"": "sent", **report["sent"]}, {"": "served (whole 2xx)", **report["served"]}]
    rows += [{"": label, **{k: report["outcomes"][k].get(label, 0) for k in KINDS}} for label in labels]
    print_table(rows, f"Soak: {report['wall_s']:.0f} s, {report['config']['clients']} clients, "
                      f"seed {report['config']['seed']}: requests by kind and outcome")
    print_table([{"probe": name, "outcomes": "  ".join(f"{label}:{n}" for label, n in sorted(c.items()))}
                 for name, c in report["by_probe"].items()], "By probe")
    print_table([{"route": route, **stats} for route, stats in report["latency_good"].items()],
                "Latency of served good requests")
    rss = report["rss_mb"]
    print_table([{k: ("-" if rss[k] is None else f"{rss[k]:,.0f}") for k in ("start", "warm", "end", "peak")}],
                "Server RSS (MiB; warm: after the first tenth of the run)")
    checks = [*report["checks"], {"name": "stops on SIGTERM", "ok": report["server_stop"]["on_sigterm"],
                                  "detail": report["server_stop"]["detail"]}]
    print_table([{"check": c["name"], "ok": "yes" if c["ok"] else "NO", "detail": c["detail"]} for c in checks],
                "End checks")
    print("\nPASS" if report["ok"] else "\nFAIL:\n  " + "\n  ".join(report["failures"]))


def run_soak(cfg: SoakConfig, log_path: Path | None = None) -> dict:
    """Start the server, soak it, check it, stop it; the report (see build_report)."""
    log_path = log_path or Path(tempfile.mkstemp(prefix="sglbench-soak-", suffix=".log")[1])
    server = ServerProcess(list(cfg.serve_args), log_path)
    try:
        server.wait_ready(timeout_s=600)
        rss_start = server.rss_mb()
        rec = Recorder()
        start = time.monotonic()
        checks = asyncio.run(_soak(server, cfg, rec))
        wall = time.monotonic() - start
        on_sigterm, detail = server.stop(timeout_s=30)
    finally:
        server.kill()
    report = build_report(cfg, rec, checks, wall, rss_start, on_sigterm, detail)
    report["server_log"] = str(log_path)
    if not report["ok"]:
        report["server_log_tail"] = server.log_tail()
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m sglbench.bench soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="local Hugging Face folder (default: the embedded model)")
    parser.add_argument("--device", default=None, help="the server's --device (default: its own, auto)")
    parser.add_argument("--max-total-tokens", type=int, default=None, help="the server's KV pool size")
    duration = parser.add_mutually_exclusive_group()
    duration.add_argument("--minutes", type=float, default=10.0)
    duration.add_argument("--seconds", type=float, default=None, help="instead of --minutes (smoke tests)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=48, help="the most a good request asks for")
    parser.add_argument("--think-ms", type=float, default=50.0, help="mean pause of a client between requests")
    parser.add_argument("--request-timeout", type=float, default=120.0, help="seconds; longer is a failure")
    parser.add_argument("--settle-timeout", type=float, default=120.0,
                        help="seconds for the engine to go idle once the clients stop")
    parser.add_argument("--max-server-rss-mb", type=float, default=8192.0,
                        help="the watchdog kills the server past this (a failure)")
    parser.add_argument("--exclude", default="", help="comma-separated probe names to leave out")
    parser.add_argument("--json", default=None, help="write the report's numbers to this file")
    args = parser.parse_args(argv)
    serve_args = [*(["--model", args.model] if args.model else []), *(["--device", args.device] if args.device else []),
                  *(["--max-total-tokens", str(args.max_total_tokens)] if args.max_total_tokens else [])]
    cfg = SoakConfig(seconds=args.seconds if args.seconds is not None else args.minutes * 60, clients=args.clients,
                     seed=args.seed, max_new_tokens=args.max_new_tokens, think_s=args.think_ms / 1e3,
                     request_timeout_s=args.request_timeout, settle_timeout_s=args.settle_timeout,
                     max_server_rss_mb=args.max_server_rss_mb,
                     exclude=frozenset(n for n in args.exclude.split(",") if n), serve_args=tuple(serve_args))
    report = run_soak(cfg)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"server log: {report['server_log']}")
    if not report["ok"]:
        if report.get("server_log_tail"):
            print(f"server log tail:\n{report['server_log_tail']}")
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    main()
