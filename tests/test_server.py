"""`sglbench serve` on loopback: native and OpenAI-compatible endpoints, auth, bad input, disconnects, load."""

from __future__ import annotations

import concurrent.futures
import json
import time

import httpx
import pytest

from sglbench.runtime.models.synthetic import make_random_checkpoint
from sglbench.runtime.runtime import Runtime
from sglbench.server.app import build_app
from tests.helpers import assert_pool_full, serving

API_KEY = "test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def rt(tmp_path_factory):
    path = make_random_checkpoint(tmp_path_factory.mktemp("served"), family="llama", seed=4)
    runtime = Runtime(str(path), device="cpu", max_total_tokens=4096)
    yield runtime
    runtime.shutdown()


@pytest.fixture(scope="module")
def server(rt):
    with serving(build_app(rt, api_key=API_KEY, model_name="tiny")) as url:
        yield url


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server, headers=AUTH, timeout=60) as c:
        yield c


@pytest.fixture(autouse=True)
def no_leaks(request):
    yield
    if "rt" in request.fixturenames:
        assert_pool_full(request.getfixturevalue("rt"))


def test_auth_refused_and_accepted(server):
    assert httpx.get(f"{server}/health").status_code == 200
    refused = httpx.post(f"{server}/generate", json={"text": "hi"})
    assert refused.status_code == 401 and "API key" in refused.json()["error"]["message"]
    wrong = httpx.get(f"{server}/v1/models", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert httpx.get(f"{server}/v1/models", headers=AUTH).json()["data"][0]["id"] == "tiny"


def test_generate_matches_in_process_runtime(client, rt):
    expected = rt.generate("hello world", max_new_tokens=8, temperature=0, ignore_eos=True)
    got = client.post("/generate", json={"text": "hello world",
                                         "sampling_params": {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True}})
    assert got.status_code == 200
    assert got.json()["text"] == expected["text"]
    assert got.json()["meta_info"]["cached_tokens"] > 0  # the prompt was cached by the first call


def test_generate_stream_and_select_style_logprobs(client, rt):
    with client.stream("POST", "/generate", json={"input_ids": [1, 5, 6, 7], "stream": True,
                                                  "sampling_params": {"max_new_tokens": 6, "temperature": 0}}) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    final = json.loads(events[-2])
    assert final["text"] == rt.generate([1, 5, 6, 7], max_new_tokens=6, temperature=0)["text"]
    scored = client.post("/generate", json={"input_ids": [1, 5, 6, 7], "return_logprob": True, "logprob_start_len": 2,
                                            "sampling_params": {"max_new_tokens": 0}}).json()
    assert [t[1] for t in scored["meta_info"]["input_token_logprobs"]] == [6, 7]  # SGLang: [logprob, id, text]


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ({"text": "hi", "sampling_params": {"max_new_tokens": -1}}, "max_new_tokens"),
        ({"text": "hi", "bogus_field": 1}, "bogus_field"),
        ({"text": "hi", "sampling_params": {"temprature": 1}}, "temprature"),
        ({"input_ids": [1] * 5000}, "context"),
        ({}, "exactly one"),
    ],
)
def test_bad_input_is_a_400_with_a_message(client, body, match):
    r = client.post("/generate", json=body)
    assert r.status_code == 400
    assert match in r.json()["error"]["message"]


def test_malformed_json_is_a_400(client):
    r = client.post("/generate", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400


def test_openai_client_completions_and_chat(server, rt):
    openai = pytest.importorskip("openai")
    oc = openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY)
    done = oc.completions.create(model="tiny", prompt="hello world", max_tokens=6, temperature=0)
    assert done.choices[0].text == rt.generate("hello world", max_new_tokens=6, temperature=0)["text"]
    pieces = [c.choices[0].text for c in oc.completions.create(model="tiny", prompt="hello world", max_tokens=6,
                                                                 temperature=0, stream=True)]
    assert "".join(pieces) == done.choices[0].text
    messages = [{"role": "user", "content": "Say hi"}]
    chat = oc.chat.completions.create(model="tiny", messages=messages, max_tokens=5, temperature=0)
    streamed = [c.choices[0].delta.content or "" for c in oc.chat.completions.create(
        model="tiny", messages=messages, max_tokens=5, temperature=0, stream=True) if c.choices]
    assert "".join(streamed) == chat.choices[0].message.content
    assert chat.usage.completion_tokens <= 5
    with pytest.raises(openai.BadRequestError):
        oc.completions.create(model="not-served", prompt="x", max_tokens=1)


def test_client_disconnect_mid_stream_frees_slots(server, rt):
    with httpx.Client(base_url=server, headers=AUTH, timeout=60) as c, c.stream(
        "POST", "/generate", json={"text": "a long story", "stream": True,
                                   "sampling_params": {"max_new_tokens": 2000, "ignore_eos": True}}
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break  # leave after the first event
    deadline = time.monotonic() + 30
    while rt.metrics().num_running:
        assert time.monotonic() < deadline, "the abandoned request kept running"
        time.sleep(0.05)
    assert rt.metrics().num_finished > 0


def test_64_concurrent_clients(server, rt):
    def one(i: int) -> str:
        with httpx.Client(base_url=server, headers=AUTH, timeout=120) as c:
            r = c.post("/generate", json={"input_ids": [1, 10 + i % 7, 20 + i], "sampling_params":
                                          {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True}})
            r.raise_for_status()
            return r.json()["text"]

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        texts = list(pool.map(one, range(64)))
    assert len(texts) == 64
    expected = [rt.generate([1, 10 + i % 7, 20 + i], max_new_tokens=8, temperature=0, ignore_eos=True)["text"]
                for i in (0, 13, 63)]
    assert [texts[0], texts[13], texts[63]] == expected
