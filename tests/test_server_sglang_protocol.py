"""`sglbench serve` speaks SGLang's native protocol as SGLang 0.5.23 defines it: GenerateReqInput's batch shapes,
n samples, logprob shapes, SSE chunks, /server_info, /model_info, /health_generate and /abort_request."""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import time
from pathlib import Path

import httpx
import pytest

from sglbench.runtime.models.synthetic import make_random_checkpoint
from sglbench.runtime.runtime import Runtime
from sglbench.server.app import build_app
from tests.helpers import assert_pool_full, serving

API_KEY = "sglang-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
GREEDY = {"temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A runtime on a random checkpoint and the base URL of `sglbench serve` for it on loopback."""
    path = make_random_checkpoint(tmp_path_factory.mktemp("sglang_protocol"), family="llama", seed=5)
    with Runtime(str(path), device="cpu", max_total_tokens=4096) as runtime, \
            serving(build_app(runtime, api_key=API_KEY, model_name="tiny")) as url:
        yield runtime, url


@pytest.fixture
def rt(served) -> Runtime:
    return served[0]


@pytest.fixture
def server(served) -> str:
    return served[1]


@pytest.fixture
def client(served):
    """An authorized client; afterwards no request holds KV slots."""
    with httpx.Client(base_url=served[1], headers=AUTH, timeout=120) as c:
        yield c
    assert_pool_full(served[0])


def generate(client: httpx.Client, **body) -> dict | list:
    r = client.post("/generate", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def sse_events(client: httpx.Client, **body) -> list:
    """The JSON payloads of a streamed /generate, checking SGLang's framing ("data: ...", then "data: [DONE]")."""
    with client.stream("POST", "/generate", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


# ---------------------------------------------------------------------------- batches and n
def test_a_batch_of_texts_takes_one_sampling_params_per_prompt(client, rt):
    prompts = ["hello world", "the quick brown fox"]
    got = generate(client, text=prompts, sampling_params=[{"max_new_tokens": 3, **GREEDY},
                                                          {"max_new_tokens": 5, **GREEDY}])
    assert [r["meta_info"]["completion_tokens"] for r in got] == [3, 5]
    want = [rt.generate(p, max_new_tokens=m, **GREEDY)["text"] for p, m in zip(prompts, (3, 5))]
    assert [r["text"] for r in got] == want
    shared = generate(client, text=prompts, sampling_params={"max_new_tokens": 2, **GREEDY})
    assert [r["meta_info"]["completion_tokens"] for r in shared] == [2, 2]


def test_a_batch_of_input_ids_with_rids(client, rt):
    ids = [[1, 5, 6, 7], [1, 9, 10]]
    got = generate(client, input_ids=ids, rid="job", sampling_params={"max_new_tokens": 4, **GREEDY})
    assert [r["meta_info"]["id"] for r in got] == ["job_0", "job_1"]
    assert [r["meta_info"]["prompt_tokens"] for r in got] == [4, 3]
    assert [r["output_ids"] for r in got] == [rt.generate(i, max_new_tokens=4, **GREEDY)["output_ids"] for i in ids]
    named = generate(client, input_ids=ids, rid=["a-1", "b-2"], sampling_params={"max_new_tokens": 1})
    assert [r["meta_info"]["id"] for r in named] == ["a-1", "b-2"]
    one = generate(client, input_ids=ids[0], rid="solo", sampling_params={"max_new_tokens": 1})
    assert isinstance(one, dict) and one["meta_info"]["id"] == "solo"


def test_n_samples_over_http_come_prompt_by_prompt(client, rt):
    one = generate(client, text="hello world", sampling_params={"n": 3, "max_new_tokens": 4, **GREEDY})
    assert isinstance(one, list) and len(one) == 3
    assert {r["text"] for r in one} == {rt.generate("hello world", max_new_tokens=4, **GREEDY)["text"]}
    assert all(r["meta_info"]["cached_tokens"] > 0 for r in one)  # the prompt was prefilled once for all
    prompts = ["a b", "a b c d e f"]
    got = generate(client, text=prompts, rid=["p", "q"],
                   sampling_params={"n": 2, "max_new_tokens": 3, "temperature": 1.0, "sampling_seed": 7})
    lengths = [len(rt.tokenizer.encode(p)) for p in prompts]
    assert [r["meta_info"]["prompt_tokens"] for r in got] == [lengths[0]] * 2 + [lengths[1]] * 2
    assert [r["meta_info"]["id"] for r in got] == ["p_0", "p_1", "q_0", "q_1"]


# ---------------------------------------------------------------------------- logprobs
def test_logprob_shapes_and_a_null_logprob_start_len(client, rt):
    ids = [1, 5, 6, 7, 8]
    got = generate(client, input_ids=ids, return_logprob=True, logprob_start_len=None, top_logprobs_num=2,
                   sampling_params={"max_new_tokens": 4, **GREEDY})
    meta = got["meta_info"]
    assert meta["finish_reason"] == {"type": "length", "length": 4}
    assert [e[1] for e in meta["input_token_logprobs"]] == [8]  # SGLang's default: the last prompt token only
    assert len(meta["output_token_logprobs"]) == meta["output_token_logprobs_length"] == 4
    assert all(len(e) == 3 and e[2] is None for e in meta["output_token_logprobs"])
    assert [e[1] for e in meta["output_token_logprobs"]] == got["output_ids"]
    assert all(len(top) == 2 and top[0] == meta["output_token_logprobs"][i]
               for i, top in enumerate(meta["output_top_logprobs"]))
    assert len(meta["input_top_logprobs"]) == len(meta["input_token_logprobs"])
    assert {"id", "prompt_tokens", "completion_tokens", "cached_tokens", "e2e_latency", "weight_version"} <= meta.keys()


def test_return_text_in_logprobs_and_per_prompt_logprob_fields(client, rt):
    texts = ["hello world", "one two three four"]
    got = generate(client, text=texts, return_logprob=[True, False], logprob_start_len=[0, 0],
                   return_text_in_logprobs=True, sampling_params={"max_new_tokens": 2, **GREEDY})
    first, second = (r["meta_info"] for r in got)
    assert "input_token_logprobs" not in second
    entries = first["input_token_logprobs"]
    assert entries[0][0] is None and len(entries) == first["prompt_tokens"]
    assert [e[2] for e in entries] == [rt.tokenizer.decode([e[1]], skip_special_tokens=False) for e in entries]
    assert "".join(e[2] for e in first["output_token_logprobs"]) == got[0]["text"]


def test_token_ids_logprob_one_list_or_one_per_prompt(client):
    one = generate(client, input_ids=[1, 5, 6, 7], return_logprob=True, logprob_start_len=0, token_ids_logprob=[5, 6],
                   sampling_params={"max_new_tokens": 2, **GREEDY})["meta_info"]
    assert one["input_token_ids_logprobs"][0] is None  # the first prompt token has no logprob, as in SGLang
    assert [[e[1] for e in pos] for pos in one["input_token_ids_logprobs"][1:]] == [[5, 6]] * 3
    assert [[e[1] for e in pos] for pos in one["output_token_ids_logprobs"]] == [[5, 6]] * 2
    each = generate(client, text=["a", "b"], return_logprob=True, token_ids_logprob=[[5], [6, 7]],
                    sampling_params={"max_new_tokens": 1})
    assert [[e[1] for e in r["meta_info"]["output_token_ids_logprobs"][0]] for r in each] == [[5], [6, 7]]


def test_select_as_sglangs_runtime_endpoint_sends_it(client):
    """The requests of SGLang's RuntimeEndpoint.select, read as it reads them."""
    prompt, choices = "The sky is", [" blue", " green"]
    prompt_len = generate(client, text=prompt, sampling_params={"max_new_tokens": 0})["meta_info"]["prompt_tokens"]
    start = max(prompt_len - 2, 0)
    scored = generate(client, text=[prompt + c for c in choices], sampling_params={"max_new_tokens": 0, "temperature": 0},
                      return_logprob=True, return_text_in_logprobs=True, logprob_start_len=start)
    for r in scored:
        lps = r["meta_info"]["input_token_logprobs"]
        assert len(lps) == r["meta_info"]["prompt_tokens"] - start and isinstance(lps[0][-1], str)
        assert r["meta_info"]["output_token_logprobs"] == []
    alone = generate(client, input_ids=[[t[1] for t in r["meta_info"]["input_token_logprobs"][1:]] for r in scored],
                     sampling_params={"max_new_tokens": 0}, return_logprob=True)
    assert all(len(r["meta_info"]["input_token_logprobs"]) == 1 for r in alone)


# ---------------------------------------------------------------------------- streaming
def test_stream_chunks_are_sglangs(client, rt):
    body = {"text": "hello world", "sampling_params": {"max_new_tokens": 6, **GREEDY}}
    chunks = sse_events(client, **body)
    texts = [c["text"] for c in chunks]
    assert all(b.startswith(a) for a, b in itertools.pairwise(texts))  # the text so far, as SGLang streams it
    assert all(c["meta_info"]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["meta_info"]["finish_reason"] == {"type": "length", "length": 6}
    assert chunks[-1]["text"] == generate(client, **body)["text"] and "index" not in chunks[-1]


def test_a_streamed_batch_names_each_chunks_request(client):
    chunks = sse_events(client, text=["a b", "c d e"], sampling_params={"n": 2, "max_new_tokens": 3, **GREEDY})
    assert {c["index"] for c in chunks} == {0, 1, 2, 3}
    finals = {c["index"]: c for c in chunks if c["meta_info"]["finish_reason"] is not None}
    assert sorted(finals) == [0, 1, 2, 3] and finals[0]["text"] == finals[1]["text"]


# ---------------------------------------------------------------------------- routes
def test_server_and_model_info_have_sglangs_fields(client, server, rt):
    info = client.get("/server_info").json()
    assert client.get("/get_server_info").json().keys() == info.keys()
    assert info["max_total_num_tokens"] == rt.model_info().max_total_tokens
    assert info["internal_states"][0]["num_running_reqs"] == 0
    assert (info["page_size"], info["tp_size"], info["disable_radix_cache"]) == (1, 1, False)
    assert info["cpu_memory"] == rt.model_info().cpu_memory and info["huge_pages"] is True  # what, and the switch
    model = client.get("/get_model_info").json()
    assert model == client.get("/model_info").json()
    assert model["model_path"] == Path(rt.config.model_path).name and model["served_model_name"] == "tiny"
    assert (model["is_generation"], model["weight_version"], model["model_type"]) == (True, "default", "llama")
    assert model["architectures"] == [rt.model_info().architecture] and model["vocab_size"] == rt.model_info().vocab_size
    assert httpx.get(f"{server}/health_generate").status_code == 200  # no API key needed, as in SGLang


def long_request(client: httpx.Client, rid: str) -> concurrent.futures.Future:
    """A /generate that would run for long, sent from a thread: its future JSON answer."""
    body = {"text": "a long story", "rid": rid, "sampling_params": {"max_new_tokens": 3000, "ignore_eos": True}}
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(lambda: client.post("/generate", json=body).json())
    pool.shutdown(wait=False)
    return future


def wait_running(rt: Runtime, count: int) -> None:
    deadline = time.monotonic() + 30
    while rt.metrics().num_running < count:
        assert time.monotonic() < deadline, "the request did not start"
        time.sleep(0.02)


def test_abort_request_cancels_by_rid_or_all(client, rt):
    pending = long_request(client, "to-abort")
    wait_running(rt, 1)
    assert client.post("/abort_request", json={"rid": "to-abort"}).status_code == 200
    meta = pending.result(timeout=60)["meta_info"]
    assert meta["finish_reason"]["type"] == "abort" and meta["completion_tokens"] < 3000
    both = [long_request(client, "x1"), long_request(client, "x2")]
    wait_running(rt, 2)
    assert client.post("/abort_request", json={"abort_all": True}).status_code == 200
    assert [f.result(timeout=60)["meta_info"]["finish_reason"]["type"] for f in both] == ["abort", "abort"]
    assert client.post("/abort_request", json={"rid": "no-such-request"}).status_code == 200


def test_a_rid_still_running_is_refused(client, rt):
    pending = long_request(client, "busy")
    wait_running(rt, 1)
    again = client.post("/generate", json={"text": "hi", "rid": "busy"})
    assert again.status_code == 400 and "busy" in again.json()["error"]["message"]
    client.post("/abort_request", json={"rid": "busy"})
    pending.result(timeout=60)


# ---------------------------------------------------------------------------- what is accepted, what is refused
def test_fields_that_ask_for_nothing_are_accepted(client):
    got = generate(client, text="hi", lora_path=None, custom_logit_processor=None, bootstrap_host=None,
                   bootstrap_room=None, log_metrics=False, session_id="s1", image_data=[], return_hidden_states=False,
                   routed_dp_rank=0, conversation_id="c", sampling_params={"max_new_tokens": 1})
    assert got["meta_info"]["completion_tokens"] == 1


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"text": "hi", "image_data": "cat.png"}, "image_data"),
        ({"text": "hi", "lora_path": "adapter"}, "lora_path"),
        ({"text": "hi", "session_params": {"id": "s"}}, "session_params"),
        ({"text": "hi", "return_hidden_states": True}, "return_hidden_states"),
        ({"text": "hi", "no_such_field": 1}, "no_such_field"),
        ({"text": "hi", "sampling_params": {"temprature": 0}}, "temprature"),
        ({"text": "hi", "sampling_params": {"return_logprob": True}}, "return_logprob"),
        ({"text": ["a", "b"], "sampling_params": [{}, {}, {}]}, "sampling_params"),
        ({"text": ["a", "b"], "rid": ["only-one"]}, "rid"),
        ({"text": ["a", "b"], "rid": ["same", "same"]}, "same"),
        ({"text": ["a", "b"], "return_logprob": [True, False], "sampling_params": {"n": 2}}, "return_logprob"),
        ({"text": ["a", "b"], "sampling_params": [{"n": 2}, {"n": 3}]}, "n must be the same"),
        ({"input_ids": [1, 2, 3], "return_logprob": True, "logprob_start_len": 9}, "logprob_start_len"),
        ({"text": "hi", "input_ids": [1, 2]}, "exactly one"),
        ({"input_ids": []}, "input_ids"),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_the_engine_keeps_serving(client, body, named):
    r = client.post("/generate", json=body)
    assert r.status_code == 400 and named in r.json()["error"]["message"]
    assert generate(client, text="still here", sampling_params={"max_new_tokens": 1})["meta_info"]["completion_tokens"] == 1


def test_openai_n_samples_still_share_the_prompt(client):
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": "hello world", "max_tokens": 3, "n": 2,
                                             "temperature": 0})
    assert r.status_code == 200 and [c["index"] for c in r.json()["choices"]] == [0, 1]
    assert r.json()["usage"]["completion_tokens"] <= 6


# ---------------------------------------------------------------------------- streamed logprobs
@pytest.mark.parametrize("incremental", [False, True])
def test_stream_chunks_carry_token_counts_and_logprobs(rt, incremental):
    """Each chunk says the output tokens so far and their logprob entries: all so far (SGLang's default) or,
    with incremental_streaming_output, only those new since the previous chunk (the last chunk too)."""
    with serving(build_app(rt, incremental_streaming_output=incremental)) as url, \
            httpx.Client(base_url=url, timeout=120) as c:
        chunks = sse_events(c, text="hello world", return_logprob=True, top_logprobs_num=2,
                            sampling_params={"max_new_tokens": 12, **GREEDY})
    assert len(chunks) >= 3 and chunks[-1]["meta_info"]["finish_reason"] is not None
    total, seen = chunks[-1]["meta_info"]["completion_tokens"], 0
    for chunk in chunks:
        meta = chunk["meta_info"]
        assert meta["output_token_logprobs_length"] == meta["completion_tokens"]
        new = meta["output_token_logprobs"] if incremental else meta["output_token_logprobs"][seen:]
        assert len(new) == meta["completion_tokens"] - seen
        assert len(meta["output_top_logprobs"]) == len(meta["output_token_logprobs"])
        assert all(len(entry) == 3 for entry in new)  # [logprob, token_id, text]
        seen = meta["completion_tokens"]
    assert seen == total == 12
    assert_pool_full(rt)
