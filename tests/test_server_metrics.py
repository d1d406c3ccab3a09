"""/metrics in Prometheus text under SGLang's names: request counters and histograms equal what the requests
did, engine gauges are read at scrape time, /engine_metrics keeps the JSON, and apps in one process keep apart."""

from __future__ import annotations

import dataclasses

import prometheus_client
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from sglbench.default_model import DEFAULT_MODEL_PATH
from sglbench.runtime.records import CacheCounters, EngineMetrics
from sglbench.runtime.runtime import Runtime
from sglbench.server import metrics as server_metrics
from sglbench.server.app import build_app
from sglbench.server.metrics import ServerMetrics
from tests.helpers import assert_pool_full

API_KEY = "metrics-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
PROMPTS = ["The capital of France is", "Once upon a time, in a small village,"]
GREEDY = {"max_new_tokens": 5, "temperature": 0, "ignore_eos": True}
# What SGLang's Grafana dashboard and its docs query, with the type SGLang gives each.
SGLANG_FAMILIES = {
    "sglang:num_requests": "counter", "sglang:prompt_tokens": "counter", "sglang:generation_tokens": "counter",
    "sglang:time_to_first_token_seconds": "histogram", "sglang:e2e_request_latency_seconds": "histogram",
    "sglang:request_time_per_output_token_seconds": "histogram", "sglang:queue_time_seconds": "histogram",
    "sglang:num_running_reqs": "gauge", "sglang:num_queue_reqs": "gauge", "sglang:gen_throughput": "gauge",
    "sglang:cache_hit_rate": "gauge", "sglang:token_usage": "gauge", "sglang:num_retracted_requests": "counter",
}


def samples_of(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def metrics_text(client: TestClient) -> str:
    response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"] == prometheus_client.CONTENT_TYPE_LATEST
    return response.text


def scrape(client: TestClient) -> list[Sample]:
    return samples_of(metrics_text(client))


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples called name whose labels include labels (0 when there is none)."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def delta(after: list[Sample], before: list[Sample], name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


# ---------------------------------------------------------------------------- observe() and the engine collector
class FixedEngine:
    """A stand-in runtime whose metrics() answers a record the test sets."""

    def __init__(self, record: EngineMetrics) -> None:
        self.record = record

    def metrics(self) -> EngineMetrics:
        return self.record


ENGINE = EngineMetrics(time=0.0, num_waiting=3, num_running=2, pool_slots=1000, pool_free=600, cache_evictable=150,
                       cache_protected=50, cache=CacheCounters(query_tokens=400, hit_tokens=100),
                       prefill_tokens=300, decode_tokens=80, num_steps=12, num_finished=7, num_retractions=4)


def result(prompt: int, completion: int, cached: int, reason: str | None, *, first_token: float | None = 1.0,
           finished: float = 3.0) -> dict:
    """A finished request's result as the engine gives it (arrived at 0 s, scheduled at 0.5 s)."""
    meta = {"prompt_tokens": prompt, "completion_tokens": completion, "cached_tokens": cached,
            "finish_reason": None if reason is None else {"type": reason}, "arrived": 0.0,
            "first_token": first_token, "finished": finished, "queue_time": 0.5,
            "ttft": first_token, "e2e_latency": finished}
    return {"text": "x" * completion, "output_ids": list(range(completion)), "meta_info": meta}


def test_observe_counts_each_request_as_sglang_does():
    metrics = ServerMetrics(FixedEngine(ENGINE), "stub")
    metrics.observe(result(10, 5, 4, "stop"))
    metrics.observe(result(20, 1, 0, "length"), is_streaming=True)  # one token: no time per output token
    metrics.observe(result(7, 2, 0, "abort"))  # an abort: no TTFT, no TPOT
    metrics.observe(result(3, 0, 0, "abort", first_token=None))  # aborted while queued: no first token
    got = samples_of(metrics.render()[0].decode())
    unary, streamed = {"is_streaming": "false"}, {"is_streaming": "true"}
    assert value(got, "sglang:num_requests_total", **unary) == 3
    assert value(got, "sglang:num_requests_total", **streamed) == 1
    assert value(got, "sglang:num_aborted_requests_total") == 2
    assert value(got, "sglang:prompt_tokens_total", **unary) == 20 and value(got, "sglang:prompt_tokens_total") == 40
    assert value(got, "sglang:generation_tokens_total") == 8
    assert value(got, "sglang:cached_tokens_total", cache_source="device") == 4
    assert value(got, "sglang:time_to_first_token_seconds_count") == 2
    assert value(got, "sglang:e2e_request_latency_seconds_count") == 4
    assert value(got, "sglang:e2e_request_latency_seconds_sum") == 12.0
    assert value(got, "sglang:request_time_per_output_token_seconds_count") == 1
    assert value(got, "sglang:request_time_per_output_token_seconds_sum") == pytest.approx(2.0 / 4)
    assert value(got, "sglang:queue_time_seconds_count", tp_rank="0") == 4
    assert value(got, "sglang:prompt_tokens_histogram_sum") == 40
    assert value(got, "sglang:uncached_prompt_tokens_histogram_sum") == 36
    assert value(got, "sglang:generation_tokens_histogram_sum") == 8
    assert all(s.labels["model_name"] == "stub" and s.labels["engine_type"] == "unified" for s in got)


def test_the_engine_gauges_are_read_at_scrape_time(monkeypatch):
    clock = iter([100.0, 102.0, 105.0])  # wall time when built, then at each scrape
    monkeypatch.setattr(server_metrics.time, "time", lambda: next(clock))
    engine = FixedEngine(ENGINE)
    metrics = ServerMetrics(engine, "stub")
    engine.record = dataclasses.replace(ENGINE, decode_tokens=ENGINE.decode_tokens + 100)
    first = samples_of(metrics.render()[0].decode())
    engine.record = dataclasses.replace(ENGINE, num_running=0, num_waiting=0, num_retractions=5,
                                        decode_tokens=ENGINE.decode_tokens + 100)
    second = samples_of(metrics.render()[0].decode())
    used = 1000 - 600 - 150
    assert value(first, "sglang:num_running_reqs", tp_rank="0", pp_rank="0", moe_ep_rank="0") == 2
    assert value(first, "sglang:num_queue_reqs") == 3
    assert value(first, "sglang:token_usage") == used / 1000
    assert value(first, "sglang:kv_used_tokens") == value(first, "sglang:num_used_tokens") == used
    assert value(first, "sglang:kv_available_tokens") == 600
    assert value(first, "sglang:kv_evictable_tokens") == 150
    assert value(first, "sglang:max_total_num_tokens") == 1000
    assert value(first, "sglang:cache_hit_rate") == 0.25
    assert value(first, "sglang:num_retracted_requests_total") == 4
    assert value(first, "sglang:realtime_tokens_total", mode="prefill_compute") == 300
    assert value(first, "sglang:realtime_tokens_total", mode="prefill_cache") == 100
    assert value(first, "sglang:realtime_tokens_total", mode="decode") == 180
    assert value(first, "sglang:gen_throughput") == 50.0  # 100 decode tokens in 2 s
    assert value(second, "sglang:gen_throughput") == 0.0  # none since the previous scrape
    assert value(second, "sglang:num_running_reqs") == 0 and value(second, "sglang:num_retracted_requests_total") == 5


def test_apps_in_one_process_keep_their_metrics_apart():
    one, two = ServerMetrics(FixedEngine(ENGINE), "one"), ServerMetrics(FixedEngine(ENGINE), "two")
    one.observe(result(10, 5, 0, "stop"))
    got_one, got_two = (samples_of(m.render()[0].decode()) for m in (one, two))
    assert value(got_one, "sglang:num_requests_total", model_name="one") == 1
    assert value(got_two, "sglang:num_requests_total") == 0
    assert {s.labels["model_name"] for s in got_one + got_two} == {"one", "two"}
    assert not any(f.name.startswith("sglang:") for f in prometheus_client.REGISTRY.collect())  # kept private


# ---------------------------------------------------------------------------- through the app
@pytest.fixture(scope="module")
def rt():
    if not (DEFAULT_MODEL_PATH / "config.json").exists():
        pytest.skip("the default model checkpoint is not trained yet (python -m sglbench.default_model.train)")
    with Runtime(device="cpu", max_total_tokens=2048) as runtime:
        yield runtime


@pytest.fixture
def app(rt):
    yield build_app(rt, api_key=API_KEY, model_name="served")
    assert_pool_full(rt)


def generate(client: TestClient, prompt: str) -> dict:
    response = client.post("/generate", headers=AUTH, json={"text": prompt, "sampling_params": GREEDY})
    assert response.status_code == 200
    return response.json()


def test_metrics_scrape_counts_what_the_requests_did(rt, app):
    with TestClient(app) as client:
        results = [generate(client, p) for p in [*PROMPTS, PROMPTS[0]]]  # the repeat hits the cache
        assert results[2]["meta_info"]["cached_tokens"] > 0
        before = scrape(client)
        for r in results:
            app.state.server_metrics.observe(r)
        after = scrape(client)
        families = {f.name: f.type for f in text_string_to_metric_families(metrics_text(client))}
    assert {name: families.get(name) for name in SGLANG_FAMILIES} == SGLANG_FAMILIES
    metas = [r["meta_info"] for r in results]
    assert delta(after, before, "sglang:num_requests_total", model_name="served", is_streaming="false") == 3
    assert delta(after, before, "sglang:prompt_tokens_total") == sum(m["prompt_tokens"] for m in metas)
    assert delta(after, before, "sglang:generation_tokens_total") == 3 * GREEDY["max_new_tokens"]
    assert delta(after, before, "sglang:cached_tokens_total") == sum(m["cached_tokens"] for m in metas) > 0
    for histogram in ("time_to_first_token", "e2e_request_latency", "queue_time"):
        assert delta(after, before, f"sglang:{histogram}_seconds_count") == 3
    assert delta(after, before, "sglang:request_time_per_output_token_seconds_count") == 3
    assert delta(after, before, "sglang:e2e_request_latency_seconds_sum") == pytest.approx(
        sum(m["e2e_latency"] for m in metas))
    engine = rt.metrics()  # idle now: the gauges are the engine's own numbers
    assert value(after, "sglang:num_running_reqs") == value(after, "sglang:num_queue_reqs") == 0
    assert value(after, "sglang:max_total_num_tokens") == engine.pool_slots == 2048
    assert value(after, "sglang:kv_available_tokens") == engine.pool_free
    assert value(after, "sglang:kv_evictable_tokens") == engine.cache_evictable > 0
    assert value(after, "sglang:cache_hit_rate") == pytest.approx(engine.hit_rate) and engine.hit_rate > 0
    assert value(after, "sglang:realtime_tokens_total", mode="decode") == engine.decode_tokens


def test_every_served_request_is_observed_once(app):
    with TestClient(app) as client:
        before = scrape(client)
        generate(client, PROMPTS[1])
        after = scrape(client)
    assert delta(after, before, "sglang:num_requests_total") == 1


def test_metrics_need_the_key_and_engine_metrics_keep_the_json(rt, app):
    with TestClient(app) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/engine_metrics").status_code == 401
        body = client.get("/engine_metrics", headers=AUTH).json()
    assert set(body) == {f.name for f in dataclasses.fields(EngineMetrics)} | {"hit_rate"}
    assert body["pool_slots"] == 2048 and body["cache"].keys() == dataclasses.asdict(CacheCounters()).keys()


def test_two_apps_on_one_engine_have_their_own_registries(rt):
    first, second = build_app(rt, api_key=API_KEY, model_name="a"), build_app(rt, api_key=API_KEY, model_name="b")
    first.state.server_metrics.observe({"text": "", "output_ids": [], "meta_info": {
        "prompt_tokens": 4, "completion_tokens": 0, "cached_tokens": 0, "finish_reason": {"type": "length"}}})
    with TestClient(first) as one, TestClient(second) as two:
        got_one, got_two = scrape(one), scrape(two)
    assert value(got_one, "sglang:num_requests_total", model_name="a") == 1
    assert value(got_two, "sglang:num_requests_total") == 0
    assert {s.labels["model_name"] for s in got_two} == {"b"}
