"""Prometheus metrics for `sglbench serve`, under SGLang 0.5.23's names, labels and buckets so that its
Grafana dashboards read a served sglbench engine unchanged.

Two sources: `observe(result)` per finished request (token counters, latency histograms) and, at scrape
time, the engine's immutable `EngineMetrics` (queue, running requests, KV pool, cache, retractions). Each
app has its own registry, so many apps can live in one process. Only what this engine measures is
exported: no inter-token latency (a finished result holds no per-token times), no grammar, speculative or
disaggregation series.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from sglbench.runtime.records import EngineMetrics

if TYPE_CHECKING:
    from sglbench.runtime.runtime import Runtime

ENGINE_TYPE = "unified"  # SGLang's engine_type when prefill and decode run in one engine (no disaggregation)
CACHE_SOURCE = "device"  # SGLang's cache_source for prefix hits in the KV pool itself (no host/storage tier)

# SGLang's default bucket bounds: seconds, or tokens for the length histograms.
TTFT_BUCKETS = (0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400)
E2E_BUCKETS = (*TTFT_BUCKETS, 600, 1200, 1800, 2400)
TPOT_BUCKETS = (0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025, 0.030, 0.035, 0.040, 0.060,
                0.080, 0.100, 0.200, 0.400, 0.600, 0.800, 1.0, 2.0, 4.0, 6.0, 8.0)
QUEUE_BUCKETS = (0.0, 0.001, 0.005, 0.010, 0.050, 0.100, 0.200, 0.500, 1, 2, 3, 4, 5, 10, 15, 20, 30, 40,
                 50, 60, 70, 80, 90, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1200, 1400, 1600,
                 1800, 2000, 2500, 3000)
LENGTH_BUCKETS = (100, 300, 500, 700, 1000, 1500, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 10000,
                  12500, 15000, 17500, 20000, 22500, 25000, 27500, 30000, 35000, 40000, 60000, 80000,
                  100000, 200000, 300000, 400000, 600000, 800000, 1000000, 1100000)


def request_labels(model_name: str) -> dict[str, str]:
    """The labels of SGLang's per-request (tokenizer-side) metrics."""
    return {"model_name": model_name, "engine_type": ENGINE_TYPE}


def engine_labels(model_name: str) -> dict[str, str]:
    """The labels of SGLang's scheduler-side metrics; one process holds the whole model: every rank is 0."""
    return {**request_labels(model_name), "tp_rank": "0", "pp_rank": "0", "moe_ep_rank": "0"}


def time_per_output_token(meta: dict) -> float | None:
    """SGLang's TPOT: decode time over the tokens after the first, for a request that stopped or reached its
    length with two tokens or more; None otherwise (an abort's decode is cut short)."""
    reason = meta.get("finish_reason") or {}
    first, finished, tokens = meta.get("first_token"), meta.get("finished"), meta.get("completion_tokens", 0)
    if reason.get("type") not in ("stop", "length") or not first or not finished or tokens <= 1:
        return None
    decode = finished - first
    return decode / (tokens - 1) if decode > 0 else None


class EngineCollector:
    """The engine's gauges and counters, read from one `EngineMetrics` at each scrape. sglang:gen_throughput
    is the decode tokens per second since the previous scrape (since the collector was built, at first)."""

    def __init__(self, rt: Runtime, labels: dict[str, str]) -> None:
        self.rt, self.labels = rt, labels
        self._lock = threading.Lock()
        self._last = (time.time(), rt.metrics().decode_tokens)  # (wall time, decode tokens) at last scrape

    def _gen_throughput(self, decode_tokens: int) -> float:
        with self._lock:
            now = time.time()
            then, before = self._last
            self._last = (now, decode_tokens)
        return (decode_tokens - before) / (now - then) if now > then else 0.0

    def _one(self, kind: type[Metric], name: str, doc: str, value: float) -> Metric:
        family = kind(name, doc, labels=list(self.labels))
        family.add_metric(list(self.labels.values()), value)
        return family

    def collect(self) -> Iterator[Metric]:
        m: EngineMetrics = self.rt.metrics()
        used = m.pool_slots - m.pool_free - m.cache_evictable  # held by running requests or locked nodes
        gauge = GaugeMetricFamily
        yield self._one(gauge, "sglang:num_running_reqs", "The number of running requests.", m.num_running)
        yield self._one(gauge, "sglang:num_queue_reqs", "The number of requests in the waiting queue.",
                        m.num_waiting)
        yield self._one(gauge, "sglang:gen_throughput",
                        "The generation throughput (token/s): decode tokens since the previous scrape.",
                        self._gen_throughput(m.decode_tokens))
        yield self._one(gauge, "sglang:cache_hit_rate",
                        "The prefix cache hit rate: cached over queried prompt tokens since engine start.",
                        m.hit_rate)
        yield self._one(gauge, "sglang:token_usage", "The token usage: KV slots in use over all slots.",
                        used / m.pool_slots if m.pool_slots else 0.0)
        yield self._one(gauge, "sglang:num_used_tokens", "The number of used tokens.", used)
        yield self._one(gauge, "sglang:kv_used_tokens",
                        "Number of actively used token slots in the KV cache pool.", used)
        yield self._one(gauge, "sglang:kv_available_tokens",
                        "Number of free token slots in the KV cache pool.", m.pool_free)
        yield self._one(gauge, "sglang:kv_evictable_tokens",
                        "Number of evictable (radix-cached) token slots in the KV cache pool.",
                        m.cache_evictable)
        yield self._one(gauge, "sglang:max_total_num_tokens",
                        "Maximum total number of tokens in the KV cache pool.", m.pool_slots)
        yield self._one(CounterMetricFamily, "sglang:num_retracted_requests",
                        "Total number of retracted requests.", m.num_retractions)
        tokens = CounterMetricFamily("sglang:realtime_tokens",
                                     "Total number of tokens processed. mode: prefill_compute, "
                                     "prefill_cache, decode.", labels=[*self.labels, "mode"])
        for mode, value in (("prefill_compute", m.prefill_tokens), ("prefill_cache", m.cache.hit_tokens),
                            ("decode", m.decode_tokens)):
            tokens.add_metric([*self.labels.values(), mode], value)
        yield tokens


class ServerMetrics:
    """One server's Prometheus metrics: `observe` each finished request's result, `render` for /metrics."""

    def __init__(self, rt: Runtime, model_name: str) -> None:
        self.registry = CollectorRegistry()
        self.labels, self.engine_labels = request_labels(model_name), engine_labels(model_name)
        names, streamed = list(self.labels), [*self.labels, "is_streaming"]

        def counter(name: str, doc: str, labels: list[str]) -> Counter:
            return Counter(name, doc, labels, registry=self.registry)

        def histogram(name: str, doc: str, labels: list[str], buckets: tuple) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=self.registry)

        self.num_requests = counter("sglang:num_requests_total", "Number of requests processed.", streamed)
        self.num_aborted = counter("sglang:num_aborted_requests_total", "Number of requests aborted.",
                                   names)
        self.prompt_tokens = counter("sglang:prompt_tokens_total", "Number of prefill tokens processed.",
                                     streamed)
        self.generation_tokens = counter("sglang:generation_tokens_total",
                                         "Number of generation tokens processed.", streamed)
        self.cached_tokens = counter("sglang:cached_tokens_total",
                                     "Number of cached prompt tokens by source.", [*names, "cache_source"])
        self.ttft = histogram("sglang:time_to_first_token_seconds",
                              "Histogram of time to first token in seconds.", streamed, TTFT_BUCKETS)
        self.e2e = histogram("sglang:e2e_request_latency_seconds",
                             "Histogram of End-to-end request latency in seconds", streamed, E2E_BUCKETS)
        self.tpot = histogram("sglang:request_time_per_output_token_seconds",
                              "Per-request TPOT in seconds: decode time / (completion_tokens - 1).",
                              streamed, TPOT_BUCKETS)
        self.queue_time = histogram("sglang:queue_time_seconds", "Histogram of queueing time in seconds.",
                                    list(self.engine_labels), QUEUE_BUCKETS)
        self.prompt_lengths = histogram("sglang:prompt_tokens_histogram", "Histogram of prompt token length.",
                                        names, LENGTH_BUCKETS)
        self.uncached_lengths = histogram("sglang:uncached_prompt_tokens_histogram",
                                          "Histogram of uncached (compute) prompt token length.", names,
                                          LENGTH_BUCKETS)
        self.generation_lengths = histogram("sglang:generation_tokens_histogram",
                                            "Histogram of generation token length.", names, LENGTH_BUCKETS)
        self.registry.register(EngineCollector(rt, self.engine_labels))

    def observe(self, result: dict, *, is_streaming: bool = False) -> None:
        """Count one finished request from its result ({"text", "output_ids", "meta_info"}); call it once per
        request. A latency meta_info lacks (no first token, an abort) stays out of its histogram."""
        meta = result["meta_info"]
        prompt, generated = meta["prompt_tokens"], meta["completion_tokens"]
        cached = meta.get("cached_tokens") or 0
        aborted = (meta.get("finish_reason") or {}).get("type") == "abort"
        streamed = {**self.labels, "is_streaming": "true" if is_streaming else "false"}
        self.num_requests.labels(**streamed).inc()
        self.prompt_tokens.labels(**streamed).inc(prompt)
        self.generation_tokens.labels(**streamed).inc(generated)
        if cached:
            self.cached_tokens.labels(**self.labels, cache_source=CACHE_SOURCE).inc(cached)
        if aborted:
            self.num_aborted.labels(**self.labels).inc()
        if meta.get("e2e_latency") is not None:
            self.e2e.labels(**streamed).observe(meta["e2e_latency"])
        if meta.get("ttft") is not None and not aborted:
            self.ttft.labels(**streamed).observe(meta["ttft"])
        if (tpot := time_per_output_token(meta)) is not None:
            self.tpot.labels(**streamed).observe(tpot)
        if meta.get("queue_time") is not None:
            self.queue_time.labels(**self.engine_labels).observe(meta["queue_time"])
        self.prompt_lengths.labels(**self.labels).observe(prompt)
        self.uncached_lengths.labels(**self.labels).observe(prompt - cached)
        self.generation_lengths.labels(**self.labels).observe(generated)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of every metric, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
