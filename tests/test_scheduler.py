"""The scheduler on its own: in-batch prefix deferral under the prefix-aware policies."""

from __future__ import annotations

import math

import pytest

from sglbench.runtime.request import Request
from sglbench.runtime.sampling_params import SamplingParams
from sglbench.runtime.scheduler import PrefixMatch, Scheduler, SchedulerConfig

CACHED = 5  # every request's prompt starts with 5 cached tokens


def plan(prompts: dict[str, list[int]], policy: str = "lpm", threshold: int = 8) -> list[str]:
    """rids admitted in one prefill step, each prompt matching CACHED tokens of the cache."""
    scheduler = Scheduler(SchedulerConfig(policy=policy, in_batch_prefix_threshold=threshold))
    for i, (rid, ids) in enumerate(prompts.items()):
        req = Request(rid=rid, input_ids=ids, params=SamplingParams())
        req.timings.arrived = float(i)
        scheduler.add(req)
    admitted = scheduler.plan_prefill(lambda req, budget: min(budget, len(req.input_ids) - CACHED),
                                      lambda req: PrefixMatch(CACHED, None))
    return [req.rid for req, _ in admitted]


SHARED = [1, 2, 3, 4, 5, *range(100, 120)]  # cached part, then 20 tokens not cached yet


def test_a_request_sharing_uncached_tokens_with_an_admitted_one_waits_a_step():
    prompts = {"a": [*SHARED, 7], "b": [*SHARED, 8], "c": [1, 2, 3, 4, 5, *list(range(200, 220))]}
    assert plan(prompts) == ["a", "c"]  # b runs next step and reads a's 20 tokens from the cache
    assert plan(prompts, policy="fcfs") == ["a", "b", "c"]  # no deferral outside prefix-aware policies
    assert plan(prompts, threshold=0) == ["a", "b", "c"]


@pytest.mark.parametrize(("shared_uncached", "deferred"), [(7, False), (8, True), (20, True)])
def test_deferral_starts_at_the_threshold(shared_uncached, deferred):
    a = [1, 2, 3, 4, 5, *list(range(100, 130))]
    b = a[: CACHED + shared_uncached] + [999] * 10
    assert plan({"a": a, "b": b}) == (["a"] if deferred else ["a", "b"])


def test_a_differing_cached_part_is_not_shared():
    """Same tokens right after the cached length, but different cached tokens: nothing shared."""
    a = [1, 2, 3, 4, 5, *list(range(100, 120))]
    b = [1, 2, 3, 4, 6, *list(range(100, 120))]
    assert plan({"a": a, "b": b}) == ["a", "b"]


# ---------------------------------------------------------------------------- memory kept for running outputs
def running(rid: str, prompt: int, max_new: int, outputs: int = 0, kv_len: int | None = None) -> Request:
    req = Request(rid=rid, input_ids=list(range(prompt)), params=SamplingParams(max_new_tokens=max_new))
    req.output_ids = list(range(outputs))
    req.kv_len = req.prefill_len if kv_len is None else kv_len
    return req


def test_tokens_to_keep_are_prompts_left_and_the_ratio_of_outputs_left():
    scheduler = Scheduler(SchedulerConfig())
    assert scheduler.new_token_ratio == pytest.approx(0.7)
    scheduler.running = [running("decoding", 100, 50, outputs=10), running("prefilling", 300, 20, kv_len=100)]
    new = running("new", 40, 30, kv_len=0)
    # prompts left: 200 (prefilling) + 40 (new); outputs left: 40 + 20 + 30 = 90, times 0.7 = 63
    assert scheduler.tokens_to_keep(new) == 200 + 40 + 63
    huge = running("huge", 10, 100_000, kv_len=0)  # estimated at most 4,096 new tokens, as SGLang clips it
    assert scheduler.tokens_to_keep(huge) == 200 + 10 + math.ceil((40 + 20 + 4096) * 0.7)


def test_the_ratio_relaxes_with_decode_steps_and_resets_after_a_retraction():
    scheduler = Scheduler(SchedulerConfig())
    scheduler.decode_ran()
    assert scheduler.new_token_ratio == pytest.approx(0.7 - (0.7 - 0.098) / 600)
    for _ in range(700):
        scheduler.decode_ran()
    assert scheduler.new_token_ratio == pytest.approx(0.098)  # 0.14 of the start, after 600 steps
    scheduler.retracted()
    assert scheduler.new_token_ratio == pytest.approx(0.7)


@pytest.mark.parametrize(("conservativeness", "ratio"), [(0.0, 0.0), (0.5, 0.35), (1.0, 0.7), (2.0, 1.0)])
def test_schedule_conservativeness_scales_the_ratio_as_in_sglang(conservativeness, ratio):
    config = SchedulerConfig(schedule_conservativeness=conservativeness)
    assert config.init_new_token_ratio == pytest.approx(ratio)
    assert config.min_new_token_ratio == pytest.approx(ratio * 0.14)


def test_negative_conservativeness_is_refused():
    with pytest.raises(ValueError, match="schedule_conservativeness"):
        SchedulerConfig(schedule_conservativeness=-1.0)
