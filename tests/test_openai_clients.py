"""`sglbench serve` driven by the clients people use: the openai SDK (sync, async, streaming with usage, tools,
parse), LangChain's ChatOpenAI (bind_tools, with_structured_output) and LiteLLM, on the embedded default model."""

from __future__ import annotations

import asyncio
import json
import logging
import os

import httpx
import pytest
from pydantic import BaseModel

import sglbench as sgl
from sglbench.runtime.runtime import Runtime
from sglbench.server.app import build_app
from tests.helpers import assert_pool_full, serving

openai = pytest.importorskip("openai")

MODEL = "default"
KEY = "sk-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
CALCULATOR = {"type": "function", "function": {
    "name": "calculator", "description": "Evaluate an arithmetic expression.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city today.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


class Person(BaseModel):
    """The record the default model writes about a person of its world."""

    name: str
    age: int
    city: str
    country: str
    job: str
    pet: str
    colour: str


@pytest.fixture(scope="module")
def rt():
    runtime = Runtime(device="cpu", max_total_tokens=8192)
    yield runtime
    runtime.shutdown()


@pytest.fixture(scope="module")
def url(rt):
    with serving(build_app(rt, api_key=KEY, model_name=MODEL)) as base:
        yield base


@pytest.fixture(scope="module")
def oc(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY)


@pytest.fixture(autouse=True)
def no_leaks(request):
    yield
    if "rt" in request.fixturenames:
        assert_pool_full(request.getfixturevalue("rt"))


def chat_prompt_ids(rt, messages, **kwargs) -> list[int]:
    return rt.tokenizer.encode_plain(rt.tokenizer.apply_chat_template(messages, **kwargs))


# ------------------------------------------------------------------------------------------ chat basics
def test_chat_matches_the_runtime_and_takes_content_parts_and_null(oc, rt):
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 7 + 5?"}]
    want = rt.generate(input_ids=chat_prompt_ids(rt, messages), sampling_params={"max_new_tokens": 12,
                                                                                  "temperature": 0})["text"]
    got = oc.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=12, temperature=0)
    assert got.choices[0].message.content == want
    parts = [{"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
             {"role": "user", "content": [{"type": "text", "text": "What is 7 + 5?"}]}]
    assert oc.chat.completions.create(model=MODEL, messages=parts, max_tokens=12,
                                      temperature=0).choices[0].message.content == want
    with_null = [*messages, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": "{\"expression\": \"7 + 5\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12"}]
    answer = oc.chat.completions.create(model=MODEL, messages=with_null, max_tokens=12, temperature=0)
    assert answer.choices[0].finish_reason in ("stop", "length")


def test_chat_n_seed_stop_user_metadata_and_usage(oc):
    messages = [{"role": "user", "content": "Tell me about Alice."}]
    kw = {"model": MODEL, "messages": messages, "max_tokens": 16, "temperature": 1.0, "seed": 7, "n": 3,
          "user": "u-1", "metadata": {"team": "x"}}
    a, b = oc.chat.completions.create(**kw), oc.chat.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]  # seeded
    assert a.usage.completion_tokens <= 3 * 16 and a.usage.prompt_tokens < a.usage.completion_tokens + 100
    assert a.usage.total_tokens == a.usage.prompt_tokens + a.usage.completion_tokens
    stopped = oc.chat.completions.create(model=MODEL, messages=messages, max_tokens=32, temperature=0, stop=["lives"])
    assert "lives" not in stopped.choices[0].message.content


def test_chat_logprobs_and_top_logprobs(oc, rt):
    messages = [{"role": "user", "content": "What is 3 + 4?"}]
    got = oc.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0, logprobs=True,
                                     top_logprobs=3)
    want = rt.generate(input_ids=chat_prompt_ids(rt, messages), sampling_params={"max_new_tokens": 6, "temperature": 0},
                       return_logprob=True, top_logprobs_num=3)
    entries = got.choices[0].logprobs.content
    assert len(entries) == len(want["meta_info"]["output_token_logprobs"])
    for entry, (lp, _tok), top in zip(entries, want["meta_info"]["output_token_logprobs"],
                                      want["meta_info"]["output_top_logprobs"]):
        assert entry.logprob == pytest.approx(lp, abs=1e-4)
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob == pytest.approx(top[0][0], abs=1e-4)
        assert entry.top_logprobs[0].token == entry.token  # greedy: the chosen token is the most likely
        assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token
    assert "".join(e.token for e in entries).startswith(got.choices[0].message.content[:5])


def test_stream_with_usage_and_logprobs(oc):
    messages = [{"role": "user", "content": "Tell me about Bruno."}]
    whole = oc.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0)
    chunks = list(oc.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0,
                                             stream=True, stream_options={"include_usage": True}, logprobs=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    streamed_lp = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert len(streamed_lp) == whole.usage.completion_tokens
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]


def test_async_client_concurrent_requests(url):
    async def main() -> list[str]:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY)
        calls = [client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"What is {i} + 1?"}],
                                                max_tokens=10, temperature=0) for i in range(4)]
        out = await asyncio.gather(*calls)
        streamed = await client.chat.completions.create(model=MODEL, max_tokens=10, temperature=0, stream=True,
                                                        messages=[{"role": "user", "content": "What is 0 + 1?"}])
        pieces = [c.choices[0].delta.content or "" async for c in streamed if c.choices]
        await client.close()
        return [r.choices[0].message.content for r in out] + ["".join(pieces)]

    texts = asyncio.run(main())
    assert texts[0] == texts[-1] and all(texts)


def test_sglang_extras_in_the_body(oc):
    messages = [{"role": "user", "content": "Give me a number."}]
    got = oc.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0.8,
                                     extra_body={"regex": "[0-9]{3}", "top_k": 5, "min_p": 0.05,
                                                 "repetition_penalty": 1.1})
    assert len(got.choices[0].message.content) == 3 and got.choices[0].message.content.isdigit()
    schema = {"type": "object", "properties": {"n": {"type": "integer", "enum": [1, 2, 3]}}, "required": ["n"]}
    got = oc.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0,
                                     extra_body={"json_schema": schema})
    assert json.loads(got.choices[0].message.content)["n"] in (1, 2, 3)


def test_unknown_fields_are_ignored_with_a_warning_and_bad_values_are_400s(url, caplog):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "frobnicate": 1}
    with caplog.at_level(logging.WARNING, logger="sglbench.server.openai_routes"):
        r = httpx.post(f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 200
    assert "frobnicate" in caplog.text
    for bad, field in [({"temperature": "hot"}, "temperature"), ({"n": 0}, "n"), ({"n": 100000}, "samples"),
                       ({"top_logprobs": 2}, "logprobs"), ({"messages": []}, "messages"),
                       ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
                        "image_url"),
                       ({"response_format": {"type": "xml"}}, "response_format"),
                       ({"tool_choice": "sometimes", "tools": [CALCULATOR]}, "tool_choice")]:
        r = httpx.post(f"{url}/v1/chat/completions", json={**body, **bad}, headers=AUTH, timeout=60)
        assert r.status_code == 400, (bad, r.text)
        assert field in r.json()["error"]["message"], (bad, r.text)


# ------------------------------------------------------------------------------------------ structured outputs
def test_response_format_json_object_and_pydantic_parse(oc):
    messages = [{"role": "user", "content": "Give me Alice's record as JSON."}]
    got = oc.chat.completions.create(model=MODEL, messages=messages, max_tokens=200, temperature=0,
                                     response_format={"type": "json_object"})
    assert got.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(got.choices[0].message.content), dict)
    parsed = oc.chat.completions.parse(model=MODEL, messages=messages, max_tokens=200, temperature=0,
                                       response_format=Person)
    person = parsed.choices[0].message.parsed
    assert isinstance(person, Person) and person.name


# ------------------------------------------------------------------------------------------ tools
def test_required_and_named_tool_choice_always_parse(oc):
    messages = [{"role": "user", "content": "What is 17 * 3?"}]
    got = oc.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER, CALCULATOR],
                                     tool_choice="required", max_tokens=48, temperature=0)
    choice = got.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in ("calculator", "get_weather")
    assert isinstance(json.loads(call.function.arguments), dict)
    named = oc.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER, CALCULATOR],
                                       tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                       parallel_tool_calls=False, max_tokens=48, temperature=0)
    calls = named.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather"]
    assert set(json.loads(calls[0].function.arguments)) == {"city"}


def test_streamed_tool_calls_assemble_to_the_same_call(oc):
    kw = {"model": MODEL, "messages": [{"role": "user", "content": "What is 6 * 7?"}], "tools": [CALCULATOR],
          "tool_choice": "required", "max_tokens": 48, "temperature": 0}
    whole = oc.chat.completions.create(**kw).choices[0].message.tool_calls[0]
    name, args, ids = "", "", set()
    finish = None
    for chunk in oc.chat.completions.create(**kw, stream=True):
        if not chunk.choices:
            continue
        for delta in chunk.choices[0].delta.tool_calls or []:
            assert delta.index == 0
            ids |= {delta.id} if delta.id else set()
            name += (delta.function.name or "") if delta.function else ""
            args += (delta.function.arguments or "") if delta.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert (name, json.loads(args)) == (whole.function.name, json.loads(whole.function.arguments))
    assert len(ids) == 1 and finish == "tool_calls"


def test_agent_loop_round_trips_a_python_tool_result(oc, rt):
    """The loop a notebook runs: the model's call (required: it always parses), Python runs the tool, the result
    goes back as a `tool` message through the model's own template, and the model answers in text."""
    messages = [{"role": "user", "content": "What is 17 * 3?"}]
    first = oc.chat.completions.create(model=MODEL, messages=messages, tools=[CALCULATOR], tool_choice="required",
                                       parallel_tool_calls=False, max_tokens=48, temperature=0)
    call = first.choices[0].message.tool_calls[0]
    expression = json.loads(call.function.arguments)["expression"]
    result = "51"  # the test's tool: whatever the tiny model asked, the answer it is given
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": result}]
    final = oc.chat.completions.create(model=MODEL, messages=messages, tools=[CALCULATOR], tool_choice="none",
                                       max_tokens=16, temperature=0)
    assert final.choices[0].message.tool_calls is None and final.choices[0].finish_reason in ("stop", "length")
    want = chat_prompt_ids(rt, [messages[0], {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "calculator", "arguments": {"expression": expression}}}]},
        {"role": "tool", "content": result}])
    assert final.usage.prompt_tokens == len(want)  # the call and its result rendered by the template
    assert "<tool_response>\n51\n</tool_response>" in rt.tokenizer.decode(want, skip_special_tokens=False)


def test_tools_with_tool_choice_none_are_hidden(oc, rt):
    messages = [{"role": "user", "content": "What is 17 * 3?"}]
    plain = oc.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0)
    hidden = oc.chat.completions.create(model=MODEL, messages=messages, tools=[CALCULATOR], tool_choice="none",
                                        max_tokens=16, temperature=0)
    assert hidden.choices[0].message.content == plain.choices[0].message.content
    assert hidden.choices[0].message.tool_calls is None


# ------------------------------------------------------------------------------------------ reasoning
@pytest.mark.parametrize("opened", [True, False])
def test_reasoning_is_separated_streamed_and_not(oc, opened):
    """<think>...</think> goes to reasoning_content, whole and streamed; the output is held to a regex with the
    markers so the test reads the server's split, not the tiny model's habits. opened: the template writes
    `<think>` (enable_thinking) and the output starts inside the block."""
    start = "" if opened else "<think>\n"
    kw = {"model": MODEL, "messages": [{"role": "user", "content": "What is 8 + 9?"}], "max_tokens": 40,
          "temperature": 0, "extra_body": {"regex": start + "[a-z ]{3,12}\n</think>\n\n[0-9]{1,2}",
                                           "chat_template_kwargs": {"enable_thinking": opened}}}
    got = oc.chat.completions.create(**kw).choices[0].message
    reasoning = got.model_extra.get("reasoning_content")
    assert reasoning and "think>" not in reasoning and got.content.isdigit()
    chunks = [c for c in oc.chat.completions.create(**kw, stream=True) if c.choices]
    streamed_reasoning = "".join(c.choices[0].delta.model_extra.get("reasoning_content") or "" for c in chunks)
    streamed_content = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert (streamed_reasoning, streamed_content) == (reasoning, got.content)
    kept = oc.chat.completions.create(**{**kw, "extra_body": {**kw["extra_body"], "separate_reasoning": False}})
    assert "</think>" in kept.choices[0].message.content
    assert kept.choices[0].message.model_extra.get("reasoning_content") is None


# ------------------------------------------------------------------------------------------ completions
def test_completions_prompt_lists_token_ids_echo_and_logprobs(oc, rt):
    prompts = ["Q: What is 2 + 2?\nA:", "Q: What is 3 + 3?\nA:"]
    got = oc.completions.create(model=MODEL, prompt=prompts, max_tokens=4, temperature=0, n=2)
    assert [c.index for c in got.choices] == [0, 1, 2, 3]
    for i, prompt in enumerate(prompts):
        want = rt.generate(prompt, max_new_tokens=4, temperature=0)["text"]
        assert got.choices[2 * i].text == got.choices[2 * i + 1].text == want
    ids = rt.tokenizer.encode(prompts[0])
    by_ids = oc.completions.create(model=MODEL, prompt=ids, max_tokens=4, temperature=0)
    assert by_ids.choices[0].text == got.choices[0].text
    echoed = oc.completions.create(model=MODEL, prompt=prompts[0], max_tokens=3, temperature=0, echo=True, logprobs=2)
    lp = echoed.choices[0].logprobs
    assert echoed.choices[0].text.startswith(prompts[0])
    assert len(lp.tokens) == len(ids) + 3 and lp.token_logprobs[0] is None
    assert all(isinstance(x, float) for x in lp.token_logprobs[1:])
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[len(ids)] == len(prompts[0])
    assert all(len(t) == 2 for t in lp.top_logprobs[len(ids):])
    with pytest.raises(openai.BadRequestError, match="suffix"):
        oc.completions.create(model=MODEL, prompt="x", suffix="y", max_tokens=2)


def test_completions_stream_with_usage(oc):
    whole = oc.completions.create(model=MODEL, prompt="Q: What is 5 + 5?\nA:", max_tokens=6, temperature=0)
    chunks = list(oc.completions.create(model=MODEL, prompt="Q: What is 5 + 5?\nA:", max_tokens=6, temperature=0,
                                        stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_openai_backend_select_against_sglbench_serve(url, rt):
    @sgl.function
    def pick(s):
        s += "Q: What is 2 + 2?\nA: " + sgl.select("answer", choices=["4", "5", "22"])

    remote = sgl.OpenAI(MODEL, base_url=f"{url}/v1", api_key=KEY, is_chat_model=False)
    local = pick.run(backend=rt)
    there = pick.run(backend=remote)
    assert there["answer"] == local["answer"]
    assert there.get_meta_info("answer")["normalized_prompt_logprobs"] == pytest.approx(
        local.get_meta_info("answer")["normalized_prompt_logprobs"], abs=1e-3)


# ------------------------------------------------------------------------------------------ other clients
def test_langchain_chat_openai_tools_and_structured_output(url):
    langchain_openai = pytest.importorskip("langchain_openai")
    llm = langchain_openai.ChatOpenAI(model=MODEL, base_url=f"{url}/v1", api_key=KEY, temperature=0,
                                      max_tokens=48)
    assert llm.invoke("What is 2 + 3?").content
    with_tools = llm.bind_tools([CALCULATOR], tool_choice="calculator")
    message = with_tools.invoke("What is 17 * 3?")
    assert message.tool_calls and message.tool_calls[0]["name"] == "calculator"
    assert "expression" in message.tool_calls[0]["args"]
    structured = llm.with_structured_output(Person, method="json_schema").invoke("Give me Alice's record.")
    assert isinstance(structured, Person)


def test_litellm_completion(url):
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network lookups at import
    litellm = pytest.importorskip("litellm")
    response = litellm.completion(model=f"openai/{MODEL}", api_base=f"{url}/v1", api_key=KEY, max_tokens=8,
                                  temperature=0, messages=[{"role": "user", "content": "What is 1 + 1?"}])
    assert response.choices[0].message.content
    assert response.usage.total_tokens > 0


@pytest.mark.parametrize("route, body", [
    ("/generate", {"text": "Once", "sampling_params": {"max_new_tokens": 1900, "ignore_eos": True, "n": 2}}),
    ("/v1/completions", {"model": MODEL, "prompt": "Once", "max_tokens": 1900, "ignore_eos": True, "n": 2}),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1900,
                              "ignore_eos": True, "n": 2}),
])
def test_non_streaming_client_that_leaves_is_cancelled(url, rt, route, body):
    """A client that gives up on a non-streamed answer cancels its requests: they stop long before their
    2 x 1,900 tokens (the API-key middleware must not hide the disconnect from the route)."""
    decoded = rt.metrics().decode_tokens
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}{route}", headers=AUTH, json=body, timeout=1.0)
    rt.wait_idle(timeout=120)
    assert rt.metrics().decode_tokens - decoded < 1900
