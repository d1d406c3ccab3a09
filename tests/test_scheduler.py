"""The scheduler on its own: in-batch prefix deferral under the prefix-aware policies."""

from __future__ import annotations

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
