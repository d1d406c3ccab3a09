"""Remote backends against `sglbench serve` on loopback: `RuntimeEndpoint` (SGLang's native API) and
`OpenAI` (completion and chat models) give the in-process Runtime's greedy results on the same random
tiny model; auth, bad URLs, the server's messages, telemetry and the client-side prompt tree."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI

import sglbench as sgl
from sglbench.lang.backend import CallContext
from sglbench.lang.backend.prompt_tree import PromptTree
from sglbench.lang.ir import SglSamplingParams
from sglbench.runtime.models.synthetic import make_random_checkpoint
from sglbench.runtime.runtime import Runtime
from sglbench.runtime.sampling_params import SamplingParams
from sglbench.server.app import build_app
from sglbench.server.background import free_port
from sglbench.viz.adapters import graph_from_telemetry
from sglbench.viz.client_tree import PromptTreeView, RemoteLatencyView, latencies_from_runs
from sglbench.viz.tree import render_tree
from tests.helpers import assert_pool_full, serving

API_KEY = "test-key"
FEW_SHOT = "Q: What is 1 + 1?\nA: 2\n\nQ: What is 2 + 2?\nA: 4\n\nQ: What is 3 + 3?\nA: 6\n\n"
QUESTIONS = [f"What is {i} + {i}?" for i in (4, 5, 6)]
# Prompts whose last token merges with the choice's first: a trailing space (" 4" is one token), and a
# word the choice completes into one token that starts before select's 3-token window (the fallback).
PICKS = [("Q: What is 2 + 2? A: ", ["4", "5", "22"]), ("I said Structur", ["ed", "e", "al"])]
METHODS = (sgl.token_length_normalized, sgl.greedy_token_selection, sgl.unconditional_likelihood_normalized)


@pytest.fixture(scope="module")
def rt(tmp_path_factory):
    path = make_random_checkpoint(tmp_path_factory.mktemp("remote"), family="llama", seed=4)
    runtime = Runtime(str(path), device="cpu", max_total_tokens=4096)
    yield runtime
    runtime.shutdown()


@pytest.fixture(scope="module")
def server(rt):
    # sgl.RuntimeEndpoint loads the served folder's tokenizer and chat template, as SGLang's does: show the path
    with serving(build_app(rt, api_key=API_KEY, model_name="tiny", show_model_path=True)) as url:
        yield url


@pytest.fixture(scope="module")
def endpoint(server):
    backend = sgl.RuntimeEndpoint(server, api_key=API_KEY)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def completion(server):
    backend = sgl.OpenAI("tiny", base_url=f"{server}/v1", api_key=API_KEY, is_chat_model=False)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def chat(server):
    backend = sgl.OpenAI("tiny", base_url=f"{server}/v1", api_key=API_KEY, is_chat_model=True)
    yield backend
    backend.close()


@pytest.fixture(autouse=True)
def no_leaks(request):
    yield
    if "rt" in request.fixturenames:
        assert_pool_full(request.getfixturevalue("rt"))


# ---------------------------------------------------------------------------- programs
@sgl.function
def few_shot(s, question):
    s += FEW_SHOT + "Q: " + question + "\nA:" + sgl.gen("answer", max_tokens=6, stop="\n")


@sgl.function
def branches(s, topic):
    s += f"Write about {topic}.\n"
    forks = s.fork(2)
    for f, angle in zip(forks, ["history", "future"]):
        f += f"On its {angle}:" + sgl.gen("part", max_tokens=5)
    forks.join()
    s += "Summary:" + sgl.gen("summary", max_tokens=5)


@sgl.function
def judge(s, statement, method):
    s += "Statement: " + statement + "\nJudgement: "
    s += sgl.select("verdict", ["True", "False", "Unknown"], choices_method=method)


@sgl.function
def pick(s, prompt, choices):
    s += prompt + sgl.select("pick", choices)


@sgl.function
def number(s):
    s += "The answer is " + sgl.gen("n", max_tokens=6, regex=r"[0-9]{1,3}")


@sgl.function
def chat_turns(s, question):
    s += sgl.system("You are terse.")
    s += sgl.user(question)
    s += sgl.assistant(sgl.gen("a1", max_tokens=5))
    s += sgl.user("And then?")
    s += sgl.assistant(sgl.gen("a2", max_tokens=5))


def ok(*states):
    for st in states:
        assert st.error() is None, st.error()
    return states[0] if len(states) == 1 else states


def fails(state, kind: type, pattern: str) -> None:
    """The program failed in a backend call with a kind error whose message matches pattern."""
    error = state.error()
    assert isinstance(error, kind) and re.search(pattern, str(error)), repr(error)


def assert_same_picks(backend, expected: dict) -> None:
    """select scores exactly the tokens the in-process backend scores, where the boundary merges tokens."""
    for (prompt, choices), (want, meta) in zip(PICKS, expected["picks"]):
        st = ok(pick.run(prompt=prompt, choices=choices, backend=backend))
        got = st.get_meta_info("pick")
        assert st["pick"] == want
        assert [[t[2] for t in c] for c in got["input_token_logprobs"]] == [
            [t[2] for t in c] for c in meta["input_token_logprobs"]]
        assert got["normalized_prompt_logprobs"] == pytest.approx(meta["normalized_prompt_logprobs"], abs=1e-4)


def plain_outputs(backend) -> dict:
    """few-shot (run_batch) and fork/join results: what every text backend must reproduce."""
    batch = ok(*few_shot.run_batch([{"question": q} for q in QUESTIONS], backend=backend, temperature=0))
    tree = ok(branches.run(topic="rivers", backend=backend, temperature=0))
    return {"few_shot": [st["answer"] for st in batch], "parts": tree["part"], "summary": tree["summary"],
            "text": tree.text()}


@pytest.fixture(scope="module")
def expected(rt):
    """The in-process Runtime's greedy results."""
    out = plain_outputs(rt)
    verdicts = [ok(judge.run(statement="Rivers flow uphill.", method=m, backend=rt)) for m in METHODS]
    out["verdicts"] = [(st["verdict"], st.get_meta_info("verdict")) for st in verdicts]
    picks = [ok(pick.run(prompt=p, choices=c, backend=rt)) for p, c in PICKS]
    out["picks"] = [(st["pick"], st.get_meta_info("pick")) for st in picks]
    out["number"] = ok(number.run(backend=rt, temperature=0))["n"]
    chat_state = ok(chat_turns.run(question="Hello!", backend=rt, temperature=0))
    out["chat"] = [chat_state["a1"], chat_state["a2"]]
    return out


# ---------------------------------------------------------------------------- RuntimeEndpoint
def test_endpoint_programs_match_in_process(endpoint, expected):
    assert plain_outputs(endpoint) == {k: expected[k] for k in ("few_shot", "parts", "summary", "text")}
    st = ok(number.run(backend=endpoint, temperature=0))
    assert st["n"] == expected["number"] and st["n"].isdigit()
    # The served model's folder is on this machine: its chat template is derived, as in-process.
    st = ok(chat_turns.run(question="Hello!", backend=endpoint, temperature=0))
    assert [st["a1"], st["a2"]] == expected["chat"]
    assert endpoint.get_chat_template().role_prefix_and_suffix["user"] == ("<|user|>\n", "<|end|>\n")


def test_endpoint_select_matches_in_process(endpoint, expected):
    for method, (verdict, want) in zip(METHODS, expected["verdicts"]):
        st = ok(judge.run(statement="Rivers flow uphill.", method=method, backend=endpoint))
        meta = st.get_meta_info("verdict")
        assert st["verdict"] == verdict
        assert meta["normalized_prompt_logprobs"] == pytest.approx(want["normalized_prompt_logprobs"], abs=1e-4)
        for got, ref in zip(meta["input_token_logprobs"], want["input_token_logprobs"]):
            assert [t[1:] for t in got] == [t[1:] for t in ref]  # the same tokens scored, with their text
        if "unconditional_token_logprobs" in want:
            assert meta["normalized_unconditional_prompt_logprobs"] == pytest.approx(
                want["normalized_unconditional_prompt_logprobs"], abs=1e-4)
    assert_same_picks(endpoint, expected)


def test_endpoint_stream_and_samples(endpoint, expected):
    st = few_shot.run(question=QUESTIONS[0], backend=endpoint, temperature=0, stream=True)
    assert "".join(st.text_iter("answer")) == expected["few_shot"][0]
    texts, metas = endpoint.generate(
        CallContext(FEW_SHOT + "Q: " + QUESTIONS[0] + "\nA:", (), "p", "s"),
        SglSamplingParams(max_new_tokens=6, stop=("\n",), temperature=0.0, n=2))
    assert texts == [expected["few_shot"][0]] * 2 and all(m["cached_tokens"] > 0 for m in metas)


def test_endpoint_telemetry_and_prompt_tree(endpoint, rt):
    endpoint.flush_cache()
    st = ok(branches.run(topic="lakes", backend=endpoint, temperature=0))
    calls = st.telemetry.calls
    assert [c.kind for c in calls] == ["gen"] * 3 and all(c.rids and c.queued <= c.finished for c in calls)
    assert sum(c.cached_tokens for c in calls) > 0  # the forks found the fork point's prefix cached
    graph = graph_from_telemetry(st.telemetry)
    assert sum(n.kind == "join" for n in graph.nodes) == 1 and len(graph.edges) >= 6
    snap = endpoint.prompt_tree.snapshot()
    fork_point = [n for n in snap.nodes if n.text_preview == "Write about lakes.\n"]
    assert fork_point and fork_point[0].hit_count >= 2 and snap.protected_size == 0
    assert snap.counters.hit_tokens > 0 and snap.counters.hit_rate > 0
    assert 'class="sgl-radix-tree"' in render_tree(snap) and "Write about lakes" in render_tree(snap)
    tree_view = PromptTreeView(endpoint, static=True)
    assert "Write about lakes" in tree_view.html
    # The live front end gets the same data as the engine's views: the prompt tree's nodes, the named calls.
    assert any(n["text"] == "Write about lakes.\n" for n in tree_view.widget.tree["nodes"])
    latencies = latencies_from_runs([st.telemetry])
    assert [c.e2e_s > 0 for c in latencies] == [True] * 3 and latencies[0].start_s == 0
    latency_view = RemoteLatencyView(lambda: [st.telemetry], static=True)
    assert "3 calls" in latency_view.html
    assert [c["program"] for c in latency_view.widget.calls] == ["branches"] * 3


def test_endpoint_errors(server, endpoint, rt):
    with pytest.raises(PermissionError, match="no API key was given"):
        sgl.RuntimeEndpoint(server)
    with pytest.raises(PermissionError, match="API key given was refused"):
        sgl.RuntimeEndpoint(server, api_key="wrong")
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionError, match=re.escape(closed)):
        sgl.RuntimeEndpoint(closed)
    with pytest.raises(ValueError, match=r"rejected the request: .*structural_tag"):  # known, not implemented
        endpoint._generate({"text": "Hi", "sampling_params": {"max_new_tokens": 2, "structural_tag": "{}"}})
    assert endpoint.get_server_info()["model_info"]["is_generation"] is True


# ---------------------------------------------------------------------------- OpenAI
def test_openai_completion_programs_match_in_process(completion, expected):
    assert plain_outputs(completion) == {k: expected[k] for k in ("few_shot", "parts", "summary", "text")}
    st = few_shot.run(question=QUESTIONS[1], backend=completion, temperature=0, stream=True)
    assert "".join(st.text_iter("answer")) == expected["few_shot"][1]
    fails(number.run(backend=completion, temperature=0), ValueError, r"gen\(regex=...\) needs constrained decoding")
    # select scores the choices with the server's echo=True prompt logprobs, as in process.
    for method, (verdict, want) in zip(METHODS[:2], expected["verdicts"][:2]):
        st = ok(judge.run(statement="Rivers flow uphill.", method=method, backend=completion))
        assert st["verdict"] == verdict
        assert st.get_meta_info("verdict")["normalized_prompt_logprobs"] == pytest.approx(
            want["normalized_prompt_logprobs"], abs=1e-3)
    fails(judge.run(statement="Rivers flow uphill.", method=METHODS[2], backend=completion), ValueError,
          "scores each choice without its prompt")


def test_openai_chat_program_matches_in_process(chat, expected):
    st = ok(chat_turns.run(question="Hello!", backend=chat, temperature=0))
    assert [st["a1"], st["a2"]] == expected["chat"]
    first, second = st.telemetry.calls
    assert second.prompt_tokens > first.prompt_tokens and second.cached_tokens > 0  # the server's usage
    fails(judge.run(statement="x", method=sgl.token_length_normalized, backend=chat), ValueError,
          "select needs the choices' token logprobs")
    fails(few_shot.run(question=QUESTIONS[0], backend=chat), ValueError, "right after sgl.assistant_begin")


def test_openai_select_through_echo_logprobs(rt, expected):
    """A server that echoes prompt logprobs (as vLLM does), here computed by the same runtime."""
    app = FastAPI()

    @app.post("/v1/completions")
    async def completions(body: dict) -> dict:
        ids = rt.tokenizer.encode(body["prompt"])
        scored = rt.submit(ids, SamplingParams(max_new_tokens=0, return_logprob=True, logprob_start_len=0))
        lps = (await scored.async_result())["meta_info"]["input_token_logprobs"]
        offsets = [len(rt.tokenizer.decode(ids[:i])) for i in range(len(ids))]
        tokens = [rt.tokenizer.decode(ids[: i + 1])[offsets[i]:] for i in range(len(ids))]
        return {"id": "cmpl-echo", "object": "text_completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "text": body["prompt"], "finish_reason": "length",
                             "logprobs": {"tokens": tokens, "token_logprobs": [lp for lp, _ in lps],
                                          "text_offset": offsets, "top_logprobs": None}}],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids)}}

    with serving(app) as url:
        backend = sgl.OpenAI("tiny", base_url=f"{url}/v1", is_chat_model=False)
        for method, (verdict, want) in zip(METHODS[:2], expected["verdicts"]):
            st = ok(judge.run(statement="Rivers flow uphill.", method=method, backend=backend))
            assert st["verdict"] == verdict
            meta = st.get_meta_info("verdict")
            assert meta["normalized_prompt_logprobs"] == pytest.approx(want["normalized_prompt_logprobs"], abs=1e-4)
            assert [[t[2] for t in c] for c in meta["input_token_logprobs"]] == [
                [t[2] for t in c] for c in want["input_token_logprobs"]]  # the same tokens scored
        assert_same_picks(backend, expected)
        fails(judge.run(statement="x", method=sgl.unconditional_likelihood_normalized, backend=backend),
              ValueError, "needs token ids")
        backend.close()


def test_openai_errors(server):
    denied = sgl.OpenAI("tiny", base_url=f"{server}/v1", api_key="wrong", is_chat_model=False, max_retries=0)
    fails(few_shot.run(question="x", backend=denied), PermissionError, "refused the API key")
    closed = f"http://127.0.0.1:{free_port()}/v1"
    gone = sgl.OpenAI("tiny", base_url=closed, is_chat_model=False, max_retries=0)
    fails(few_shot.run(question="x", backend=gone), ConnectionError, re.escape(closed))
    unknown = sgl.OpenAI("not-served", base_url=f"{server}/v1", api_key=API_KEY, is_chat_model=False)
    fails(few_shot.run(question="x", backend=unknown), ValueError, "not served here")


# ---------------------------------------------------------------------------- the prompt tree alone
def test_prompt_tree_shares_prefixes_locks_in_flight_and_bounds_its_size():
    tree = PromptTree(max_chars=10)
    first = tree.send("abcd")
    tree.done(first, {"prompt_tokens": 4, "cached_tokens": 0})
    second = tree.send("abxy")
    snap = tree.snapshot()
    by_text = {n.text_preview: n for n in snap.nodes}
    assert set(by_text) == {"", "ab", "cd", "xy"} and by_text["ab"].hit_count == 1
    assert by_text["xy"].lock_ref == 1 and by_text["ab"].lock_ref == 1 and by_text["cd"].lock_ref == 0
    assert snap.protected_size == 4 and snap.total_size == 6
    tree.done(second, {"prompt_tokens": 4, "cached_tokens": 2})
    assert tree.snapshot().counters.hit_rate == 0.25
    tree.done(tree.send("zzzzzz"), None)  # 12 characters > 10: the least recently used leaf goes
    texts = {n.text_preview for n in tree.snapshot().nodes}
    assert "cd" not in texts and "zzzzzz" in texts and tree.snapshot().total_size <= 10
