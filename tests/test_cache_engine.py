"""The radix cache inside the engine: fidelity (cache on == off), memory pressure, scheduling policies."""

from __future__ import annotations

import random

import pytest
import torch

from sglbench.runtime.models.synthetic import make_random_checkpoint
from sglbench.runtime.runtime import Runtime
from sglbench.runtime.sampling_params import SamplingParams
from tests.helpers import assert_pool_full

GREEDY = dict(temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_random_checkpoint(tmp_path_factory.mktemp("llama"), family="llama", seed=5, max_position_embeddings=1024)


def shared_prefix_workload(groups: int, per_group: int, prefix_len: int, question_len: int, seed: int = 0):
    rng = random.Random(seed)
    prompts = []
    for g in range(groups):
        prefix = [1] + [rng.randrange(3, 390) for _ in range(prefix_len)]
        for _ in range(per_group):
            prompts.append(prefix + [rng.randrange(3, 390) for _ in range(question_len)] + [g + 3])
    return prompts


def run_all(rt: Runtime, prompts, max_new_tokens=8):
    handles = [rt.submit(p, SamplingParams(max_new_tokens=max_new_tokens, **GREEDY)) for p in prompts]
    return [h.result(timeout=300) for h in handles]


def test_fidelity_cache_on_off_with_forks_chunks_and_retraction(model_path):
    prompts = shared_prefix_workload(groups=3, per_group=4, prefix_len=60, question_len=6)
    with Runtime(str(model_path), device="cpu", disable_radix_cache=True, max_total_tokens=4096) as off:
        expected = [r["output_ids"] for r in run_all(off, prompts, 12)]
        assert_pool_full(off)
    # Tiny pool + small chunks: chunked prefill, eviction and retraction all happen.
    with Runtime(str(model_path), device="cpu", max_total_tokens=200, chunked_prefill_size=16) as tight:
        results = run_all(tight, prompts, 12)
        assert [r["output_ids"] for r in results] == expected
        assert tight.metrics().cache.hit_tokens > 0
        assert tight.metrics().cache.evicted_tokens > 0
        assert tight.metrics().num_retractions > 0
        assert_pool_full(tight)
    with Runtime(str(model_path), device="cpu", max_total_tokens=4096) as roomy:
        results = run_all(roomy, prompts, 12)
        assert [r["output_ids"] for r in results] == expected
        # Every request but the first of each group reads the 61-token prefix from the cache.
        assert sum(r["meta_info"]["cached_tokens"] >= 61 for r in results) >= len(prompts) - 3
        # Forks: n samples of one prompt share its prefill.
        forks = roomy.generate(prompts[0], max_new_tokens=12, n=3, **GREEDY)
        assert all(f["output_ids"] == expected[0] for f in forks)
        assert_pool_full(roomy)


def test_pool_of_five_percent_of_demand(model_path):
    prompts = shared_prefix_workload(groups=8, per_group=5, prefix_len=40, question_len=10, seed=1)
    new_tokens = 16
    demand = sum(len(p) + new_tokens for p in prompts)
    with Runtime(str(model_path), device="cpu", disable_radix_cache=True, max_total_tokens=demand) as free:
        expected = [r["output_ids"] for r in run_all(free, prompts, new_tokens)]
    with Runtime(str(model_path), device="cpu", max_total_tokens=demand // 20) as pressed:
        results = run_all(pressed, prompts, new_tokens)
        assert all(r["meta_info"]["finish_reason"]["type"] == "length" for r in results)
        assert [r["output_ids"] for r in results] == expected
        assert_pool_full(pressed)


def test_one_request_needing_the_whole_pool_does_not_deadlock(model_path):
    with Runtime(str(model_path), device="cpu", max_total_tokens=64) as rt:
        out = rt.generate([1, *range(10, 50)], max_new_tokens=100, **GREEDY)
        assert out["meta_info"]["finish_reason"]["type"] == "length"
        assert len(out["output_ids"]) >= 20
        with pytest.raises(ValueError, match="KV pool"):
            rt.generate([1] * 80, max_new_tokens=1)
        assert_pool_full(rt)


def hit_rate(model_path, policy: str, prompts) -> float:
    with Runtime(str(model_path), device="cpu", schedule_policy=policy, max_total_tokens=400,
                 max_running_requests=4, random_seed=0) as rt:
        run_all(rt, prompts, 4)
        assert_pool_full(rt)
        return rt.metrics().hit_rate


def test_lpm_beats_fcfs_on_shuffled_shared_prefixes(model_path):
    prompts = shared_prefix_workload(groups=6, per_group=6, prefix_len=100, question_len=8, seed=2)
    random.Random(3).shuffle(prompts)
    rates = {policy: hit_rate(model_path, policy, prompts) for policy in ("lpm", "fcfs", "dfs-weight", "random")}
    print("hit rates:", {k: round(v, 3) for k, v in rates.items()})
    assert rates["lpm"] > rates["fcfs"]
    assert rates["dfs-weight"] > rates["fcfs"]


def test_cache_events_and_metrics(model_path):
    with Runtime(str(model_path), device="cpu", max_total_tokens=1024) as rt:
        prompt = [1, *range(20, 60)]
        rt.generate(prompt, max_new_tokens=2, **GREEDY)
        second = rt.generate([*prompt, 7, 8], max_new_tokens=2, **GREEDY)
        assert second["meta_info"]["cached_tokens"] == len(prompt)
        kinds = {e.kind for e in rt.events.since(0)}
        assert {"request.arrived", "request.finished", "batch.step", "cache.insert"} <= kinds
        m = rt.metrics()
        assert m.cache.query_tokens > m.cache.hit_tokens > 0
        assert 0 < m.hit_rate < 1
        assert_pool_full(rt)


def test_disabled_cache_reports_no_hits(model_path):
    with Runtime(str(model_path), device="cpu", disable_radix_cache=True, max_total_tokens=1024) as rt:
        prompt = [1, *range(20, 60)]
        rt.generate(prompt, max_new_tokens=2, **GREEDY)
        again = rt.generate(prompt, max_new_tokens=2, **GREEDY)
        assert again["meta_info"]["cached_tokens"] == 0
        assert rt.metrics().cache.hit_tokens == 0
        assert_pool_full(rt)


def test_cache_snapshot_shows_shared_prefix_tree(model_path):
    with Runtime(str(model_path), device="cpu", max_total_tokens=1024) as rt:
        base = [1, *range(20, 60)]
        rt.generate([[*base, 7, 8], [*base, 9, 10]], max_new_tokens=2, **GREEDY)
        snap = rt.cache_snapshot()
        assert snap.total_size == rt.metrics().pool_slots - rt.metrics().pool_free
        by_parent = {}
        for node in snap.nodes:
            by_parent.setdefault(node.parent_id, []).append(node)
        # The shared prompt is one node with two branches below it.
        assert any(len(children) == 2 for pid, children in by_parent.items() if pid is not None)
        assert all(isinstance(n.text_preview, str) for n in snap.nodes if n.num_tokens)
        assert_pool_full(rt)


def test_rewind_frees_a_running_requests_own_slots_past_a_point_but_never_the_caches():
    """CacheManager.rewind, as a jump-forward uses it: req keeps its first `keep` tokens' K/V and its row; the slots
    after them go back to the pool; a point inside the cache's locked part is refused, changing nothing."""
    from sglbench.runtime.cache_manager import CacheManager
    from sglbench.runtime.kv_pool import KVPoolConfig
    from sglbench.runtime.request import Request

    kv = CacheManager(KVPoolConfig(64, 1, 1, 4, torch.float32, "cpu"), max_running_requests=4, context_length=32,
                      disable_radix_cache=False, on_event=lambda event: None)

    def admitted(rid: str, ids: list[int]) -> Request:
        req = Request(rid=rid, input_ids=ids, params=SamplingParams(max_new_tokens=8))
        n = kv.admit(req, 32, reserve=0, alone=True)
        req.kv_len += n  # the forward ran
        return req

    first = admitted("a", list(range(10)))
    kv.release(first, insert=True)  # its 10 tokens cached, unlocked
    req = admitted("b", [*range(8), 50, 51, 52, 53])  # its first 8 tokens come from the cache
    req.output_ids = [60, 61, 62]
    kv.alloc_slots(req, 3)
    req.kv_len += 3
    assert (req.prefix_len, req.kv_len) == (8, 15)
    free = kv.pool.free_count
    kept = kv.req_to_token.slots(req.row, 0, 9).clone()
    assert kv.rewind(req, 9)
    assert (req.kv_len, req.alloc_len, kv.pool.free_count) == (9, 9, free + 6)
    assert torch.equal(kv.req_to_token.slots(req.row, 0, 9), kept)
    assert not kv.rewind(req, 6) and req.kv_len == 9  # inside the cache's 8 tokens: the caller requeues instead
    kv.check_integrity([req])
    kv.release(req, insert=True)
    kv.check_integrity([])
