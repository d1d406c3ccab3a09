"""`sglbench serve` against a hostile client (issue #19), on loopback: heavy requests never stall the event loop,
limits answer 413/400/429 naming their flag, a stopped engine is a 503 with its reason on every route, shutdown
refuses new work and ends in-flight requests with a reason, SIGTERM ends the process even with the engine stuck,
lone surrogates are a 400 naming the field, and no answer shows where the model lies on disk."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from sglbench.runtime.models.synthetic import make_random_checkpoint
from sglbench.runtime.runtime import Runtime
from sglbench.server.app import build_app
from sglbench.server.background import free_port
from sglbench.server.limits import ServerLimits
from tests.helpers import assert_pool_full, serving

API_KEY = "hostile-test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
LONG = {"max_new_tokens": 30000, "ignore_eos": True}  # runs for many seconds: aborted by every test that sends it
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny random model with a long context, so a request can stay in flight for a while."""
    return make_random_checkpoint(tmp_path_factory.mktemp("hostile"), family="llama", seed=5,
                                  max_position_embeddings=65536)


@pytest.fixture(scope="module")
def rt(checkpoint):
    runtime = Runtime(str(checkpoint), device="cpu", max_total_tokens=65536)
    yield runtime
    runtime.shutdown()


@pytest.fixture(scope="module")
def server(rt):
    with serving(build_app(rt, api_key=API_KEY, model_name="tiny")) as url:
        yield url


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server, headers=AUTH, timeout=120) as c:
        yield c


@pytest.fixture(autouse=True)
def no_leaks(request):
    yield
    if "rt" in request.fixturenames:
        assert_pool_full(request.getfixturevalue("rt"))


def in_background(fn, *args, **kwargs) -> concurrent.futures.Future:
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(fn, *args, **kwargs)
    pool.shutdown(wait=False)
    return future


def wait_until(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@contextlib.contextmanager
def open_stream(c: httpx.Client, body: dict, path: str = "/generate"):
    """A streaming request, entered once its first event arrived (so it is in flight); closed on exit."""
    with c.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        yield r, lines


def sse_data(lines) -> list[str]:
    return [line[6:] for line in lines if line.startswith("data: ")]


def message(r: httpx.Response) -> str:
    return r.json()["error"]["message"]


# ---------------------------------------------------------------------------- nothing heavy on the event loop
def test_health_answers_while_a_10mb_prompt_is_tokenized(client):
    prompt = "hello world " * (10 * (1 << 20) // 12)  # ~2.6 M tokens: seconds of tokenizing, then refused
    heavy = in_background(client.post, "/generate", json={"text": prompt, "sampling_params": {"max_new_tokens": 1}})
    time.sleep(1.0)  # the body is sent and parsed; the tokenizer is busy
    assert [client.get("/health").status_code for _ in range(5)] == [200] * 5
    assert not heavy.done(), "/health waited for the tokenizer: it runs on the event loop"
    refused = heavy.result(timeout=120)
    assert refused.status_code == 400 and "context" in message(refused)


def test_health_answers_while_a_big_grammar_compiles(client):
    nonce = time.monotonic_ns()  # a new pattern each run: no compiled-grammar cache hit
    regex = f"w{nonce}(" + "|".join(f"x{i}" for i in range(30000)) + ")"  # within the grammar limits; seconds
    heavy = in_background(client.post, "/generate", json={"text": "w", "sampling_params": {
        "max_new_tokens": 1, "regex": regex}})
    time.sleep(0.5)
    assert [client.get("/health").status_code for _ in range(5)] == [200] * 5
    assert not heavy.done(), "/health waited for the grammar compiler: it runs on the event loop"
    assert heavy.result(timeout=120).status_code == 200


def test_a_refused_prompt_in_a_batch_aborts_the_ones_submitted_before_it(client, rt):
    r = client.post("/generate", json={"input_ids": [[1, 2, 3], [1, 99999]], "sampling_params": LONG})
    assert r.status_code == 400 and "vocabulary" in message(r)
    wait_until(lambda: rt.metrics().num_running == 0, "the first prompt's request to be aborted")


# ---------------------------------------------------------------------------- limits
@pytest.fixture(scope="module")
def limited(rt):
    limits = ServerLimits(max_body_bytes=4096, max_prompt_tokens=16, max_samples_per_request=4,
                          max_concurrent_requests=2)
    with serving(build_app(rt, api_key=API_KEY, model_name="tiny", limits=limits)) as url, httpx.Client(
            base_url=url, headers=AUTH, timeout=120) as c:
        yield c


def test_a_body_over_the_limit_is_a_413_whether_announced_or_not(limited):
    big = json.dumps({"text": "x" * 5000}).encode()
    announced = limited.post("/generate", content=big, headers={"Content-Type": "application/json"})
    chunked = limited.post("/generate", content=iter([big[:3000], big[3000:]]),  # no Content-Length
                           headers={"Content-Type": "application/json"})
    for r in (announced, chunked):
        assert r.status_code == 413 and "4096 bytes" in message(r) and "--max-body-mb" in message(r)
    ok = limited.post("/generate", json={"text": "x" * 10, "sampling_params": {"max_new_tokens": 1}})
    assert ok.status_code == 200


def test_a_prompt_over_the_token_limit_is_a_400_on_every_route(limited):
    refused = [
        limited.post("/generate", json={"input_ids": [5] * 17}),
        limited.post("/generate", json={"text": "a b c d e f g h i j k l m n o p q r s t"}),
        limited.post("/v1/completions", json={"model": "tiny", "prompt": [5] * 17, "max_tokens": 1}),
        limited.post("/v1/chat/completions", json={"model": "tiny", "max_tokens": 1, "messages": [
            {"role": "user", "content": "a b c d e f g h i j k l m n o p q r s t"}]}),
    ]
    for r in refused:
        assert r.status_code == 400 and "most this server takes is 16" in message(r), r.text
        assert "--max-prompt-tokens" in message(r)
    ok = limited.post("/generate", json={"input_ids": [5] * 16, "sampling_params": {"max_new_tokens": 1}})
    assert ok.status_code == 200


def test_samples_over_the_limit_are_a_400(limited):
    five = [limited.post("/generate", json={"text": "hi", "sampling_params": {"n": 5, "max_new_tokens": 1}}),
            limited.post("/generate", json={"text": ["a", "b", "c"], "sampling_params": {"n": 2, "max_new_tokens": 1}}),
            limited.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "n": 5, "max_tokens": 1})]
    for r in five:
        assert r.status_code == 400 and "--max-samples-per-request" in message(r), r.text
    four = limited.post("/generate", json={"text": ["a", "b"], "sampling_params": {"n": 2, "max_new_tokens": 1}})
    assert four.status_code == 200 and len(four.json()) == 4


def test_a_client_over_its_concurrent_requests_gets_a_429(limited, rt):
    with open_stream(limited, {"input_ids": [1, 2, 3], "sampling_params": LONG}), \
            open_stream(limited, {"input_ids": [1, 2, 4], "sampling_params": LONG}):
        third = limited.post("/generate", json={"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 1}})
        assert third.status_code == 429 and third.headers["Retry-After"].isdigit()
        assert "--max-concurrent-requests" in message(third)
        assert limited.get("/health").status_code == 200  # health checks are not counted
    wait_until(lambda: rt.metrics().num_running == 0, "the closed streams to be aborted")
    again = limited.post("/generate", json={"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 1}})
    assert again.status_code == 200


def test_without_a_key_clients_are_counted_by_address(rt):
    with serving(build_app(rt, model_name="tiny", limits=ServerLimits(max_concurrent_requests=1))) as url, \
            httpx.Client(base_url=url, timeout=60) as first, \
            httpx.Client(base_url=url, timeout=60, transport=httpx.HTTPTransport(local_address="127.0.0.2")) as other, \
            open_stream(first, {"input_ids": [1, 2, 3], "sampling_params": LONG}):
        body = {"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 1}}
        assert first.post("/generate", json=body).status_code == 429
        assert other.post("/generate", json=body).status_code == 200


@pytest.mark.parametrize(("body", "named"), [
    ('{"text": "a\\ud800b", "sampling_params": {"max_new_tokens": 1}}', "text"),
    ('{"text": "hi", "sampling_params": {"stop": ["ok", "\\udfff"]}}', "sampling_params.stop.1"),
    ('{"model": "tiny", "messages": [{"role": "user", "content": "\\udc00"}]}', "messages.0.content"),
])
def test_a_lone_surrogate_is_a_400_naming_the_field(client, body, named):
    path = "/v1/chat/completions" if "messages" in body else "/generate"
    r = client.post(path, content=body.encode(), headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and message(r).startswith(f"{named}: ") and "surrogate" in message(r)


def test_a_surrogate_pair_is_a_character_not_an_error(client):
    r = client.post("/generate", content=b'{"text": "\\ud83d\\ude00", "sampling_params": {"max_new_tokens": 1}}',
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 200


# ---------------------------------------------------------------------------- model paths
def test_no_answer_shows_the_model_folder(client, rt, checkpoint):
    folder = str(checkpoint)
    for path in ("/model_info", "/get_model_info", "/server_info", "/get_server_info", "/v1/models"):
        r = client.get(path)
        assert r.status_code == 200 and folder not in r.text, path
    assert client.get("/model_info").json()["model_path"] == checkpoint.name
    with serving(build_app(rt)) as url:  # no model_name: the folder's name, not its path
        assert httpx.get(f"{url}/v1/models").json()["data"][0]["id"] == checkpoint.name
    with serving(build_app(rt, show_model_path=True)) as url:  # asked for: SGLang's clients load its tokenizer
        assert httpx.get(f"{url}/model_info").json()["model_path"] == folder


# ---------------------------------------------------------------------------- shutdown
def test_shutdown_refuses_new_work_and_ends_in_flight_requests_with_the_reason(rt):
    app = build_app(rt, model_name="tiny")
    with serving(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        short = in_background(c.post, "/generate", json={"input_ids": [1, 7], "sampling_params": {
            "max_new_tokens": 300, "ignore_eos": True}})
        waiting = in_background(c.post, "/generate", json={"input_ids": [1, 8], "sampling_params": LONG})
        with open_stream(c, {"input_ids": [1, 9], "sampling_params": LONG}) as (_, lines):
            wait_until(lambda: rt.metrics().num_running >= 3, "the requests to run")
            app.state.serving.begin_shutdown("the server is shutting down", grace_s=5.0)
            refused = c.post("/generate", json={"input_ids": [1, 2]})
            assert refused.status_code == 503 and "shutting down" in message(refused)
            assert c.get("/health").status_code == 503
            assert c.get("/v1/models").status_code == 503
            assert short.result(timeout=60).status_code == 200  # finished within the grace period
            ended = waiting.result(timeout=60)
            assert ended.status_code == 503 and "shutting down" in message(ended)
            events = sse_data(lines)
            assert events[-1] == "[DONE]" and "shutting down" in json.loads(events[-2])["error"]["message"]
    wait_until(lambda: rt.metrics().num_running == 0, "the aborted requests to free their KV")


def test_a_runtime_shut_down_under_the_server_ends_its_requests_with_the_reason(checkpoint):
    runtime = Runtime(str(checkpoint), device="cpu", max_total_tokens=4096)
    try:
        with serving(build_app(runtime, model_name="tiny")) as url, httpx.Client(base_url=url, timeout=60) as c:
            waiting = in_background(c.post, "/generate", json={"input_ids": [1, 8], "sampling_params": LONG})
            with open_stream(c, {"input_ids": [1, 9], "sampling_params": LONG}) as (_, lines):
                wait_until(lambda: runtime.metrics().num_running >= 2, "the requests to run")
                runtime.shutdown()
                events = sse_data(lines)
            assert events[-1] == "[DONE]" and "shut" in json.loads(events[-2])["error"]["message"]
            ended = waiting.result(timeout=30)
            assert ended.status_code == 503 and "shut" in message(ended)  # the runtime's reason, not a 200 "abort"
            refused = c.post("/generate", json={"text": "hi"})
            assert refused.status_code == 503 and "engine stopped" in message(refused)
    finally:
        runtime.shutdown()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_stopped_engine_is_a_503_with_its_reason_on_every_route(checkpoint):
    class EngineCrash(BaseException):
        """Nothing in the engine loop catches it: the engine thread stops."""

    runtime = Runtime(str(checkpoint), device="cpu", max_total_tokens=4096)
    try:
        with serving(build_app(runtime, model_name="tiny")) as url, httpx.Client(base_url=url, timeout=60) as c:
            waiting = in_background(c.post, "/generate", json={"input_ids": [1, 8], "sampling_params": LONG})
            with c.stream("POST", "/generate", json={"input_ids": [1, 9], "sampling_params": LONG, "stream": True}) as r:
                wait_until(lambda: runtime.metrics().num_running >= 2, "the requests to run")

                def crash() -> None:
                    raise EngineCrash("injected fault")

                runtime.engine.step = crash
                wait_until(lambda: not runtime.is_running, "the engine thread to stop")
                events = sse_data(r.iter_lines())
            assert events[-1] == "[DONE]" and "engine stopped" in json.loads(events[-2])["error"]["message"]
            ended = waiting.result(timeout=30)
            assert ended.status_code == 503 and message(ended).startswith("engine stopped")
            health = c.get("/health")
            assert health.status_code == 503 and message(health).startswith("engine stopped")
            assert c.get("/health_generate").status_code == 503
            for method, path, body in [("POST", "/generate", {"text": "hi"}), ("GET", "/v1/models", None),
                                       ("GET", "/server_info", None), ("POST", "/flush_cache", None),
                                       ("GET", "/cache_snapshot", None),
                                       ("POST", "/v1/completions", {"model": "tiny", "prompt": "hi"})]:
                r = c.request(method, path, json=body)
                assert r.status_code == 503 and message(r).startswith("engine stopped"), (path, r.text)
    finally:
        runtime.shutdown()


# ---------------------------------------------------------------------------- the process and its signals
SERVE_WITH_A_STUCK_ENGINE = """
import sys, threading
from sglbench.runtime.engine import Engine
Engine.step = lambda self: threading.Event().wait()  # the engine thread hangs in its first step
from sglbench.__main__ import main
main(sys.argv[1:])
"""


def start_serving(checkpoint: Path, log: Path, *extra: str, stuck: bool = False) -> tuple[subprocess.Popen, str]:
    """`python -m sglbench serve` (or, stuck, the same with an engine that hangs) on a free port, once healthy."""
    port = free_port()
    command = ["-c", SERVE_WITH_A_STUCK_ENGINE] if stuck else ["-m", "sglbench"]
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, *command, "serve", "--model", str(checkpoint), "--device", "cpu",
                                 "--port", str(port), *extra], cwd=REPO, env={**os.environ, "SGLBENCH_STATIC": "1"},
                                stdout=subprocess.DEVNULL, stderr=err)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the server did not start"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        time.sleep(0.2)


def assert_exits(proc: subprocess.Popen, log: Path, within_s: float) -> None:
    """proc ends within within_s seconds, as SIGTERM ends a process (uvicorn re-raises it once it has stopped)."""
    try:
        proc.wait(timeout=within_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"the server still ran {within_s} s after SIGTERM")
    assert proc.returncode in (0, -signal.SIGTERM), log.read_text()


def test_sigterm_stops_an_idle_server(checkpoint, tmp_path):
    proc, _ = start_serving(checkpoint, tmp_path / "serve.log")
    proc.send_signal(signal.SIGTERM)
    assert_exits(proc, tmp_path / "serve.log", within_s=30)


def test_sigterm_stops_a_server_whose_engine_is_stuck(checkpoint, tmp_path):
    log = tmp_path / "serve.log"
    proc, url = start_serving(checkpoint, log, "--shutdown-timeout", "1", stuck=True)
    try:
        answer: list[httpx.Response] = []
        request = threading.Thread(target=lambda: answer.append(httpx.post(
            f"{url}/generate", json={"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 4}}, timeout=60)))
        request.start()
        time.sleep(1.0)  # the request reaches the engine, which hangs
        assert not answer, "the engine was meant to hang"
        proc.send_signal(signal.SIGTERM)
        assert_exits(proc, log, within_s=30)
        request.join(timeout=30)
        assert answer and answer[0].status_code == 503 and "shutting down" in message(answer[0])
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_live_rid_cannot_be_taken_over_and_generated_ids_are_unguessable(client, rt):
    """#19 item 3: a second request naming a running request's rid is refused (it used to steer the victim's
    output with its own regex and detach it from cancellation); ids the server makes are random."""
    victim_body = {"text": "a long story", "rid": "victim", "stream": True,
                   "sampling_params": {"max_new_tokens": 200, "ignore_eos": True, "temperature": 0}}
    alone = client.post("/generate", json={**victim_body, "stream": False, "rid": "alone"}).json()["text"]
    with client.stream("POST", "/generate", json=victim_body) as stream:
        lines = stream.iter_lines()
        next(line for line in lines if line.startswith("data: "))  # the victim is running
        attack = client.post("/generate", json={"text": "x", "rid": "victim",
                                                "sampling_params": {"regex": "[0-9]+", "max_new_tokens": 4}})
        assert attack.status_code == 400 and "victim" in attack.json()["error"]["message"]
        chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert chunks[-1]["text"] == alone  # undisturbed
    ids = [client.post("/generate", json={"text": "hi", "sampling_params": {"max_new_tokens": 1}}).json()
           ["meta_info"]["id"] for _ in range(3)]
    assert len(set(ids)) == 3 and all(len(i) == 20 and int(i, 16) >= 0 for i in ids)
    assert len({int(i, 16) - int(j, 16) for i, j in zip(ids[1:], ids)}) == 2  # not a counter
