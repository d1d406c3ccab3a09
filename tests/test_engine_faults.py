"""Hostile input and faults (issue #19): no request can stop the engine thread or change another request,
and a stopped or stopping runtime finishes every handle with its reason."""

from __future__ import annotations

import re
import threading

import pytest

import sglbench.runtime.output_processor as output_processor
from sglbench.runtime.models.synthetic import make_random_checkpoint
from sglbench.runtime.runtime import Runtime
from sglbench.runtime.sampling_params import RequestLimits, SamplingParams
from tests.helpers import assert_pool_full

VOCAB = 400  # the random tiny checkpoint's
FAULT = {"fault": True}  # custom_params (unused by the runtime) marks the request a test fault targets
SHORT_PROMPTS = [[1, 5, 9, 13, 40, 41], [1, 100, 7], [1, *range(50, 80)], [1, 300, 301, 302, 9, 9, 9, 12],
                 [1, 17, 18], [1, 220, 221, 222, 223], [1, 60, 61, 9, 9]]
LONG_PROMPT = [1, *[(7 * i) % 390 + 3 for i in range(119)]]  # 120 tokens: its positions alone reach 100


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return str(make_random_checkpoint(tmp_path_factory.mktemp("llama"), family="llama", seed=3))


@pytest.fixture(scope="module")
def rt(model_path):
    runtime = Runtime(model_path, device="cpu", max_total_tokens=4096, schedule_policy="fcfs")
    yield runtime
    runtime.shutdown()


@pytest.fixture(autouse=True)
def no_leaks(request):
    yield
    if "rt" in request.fixturenames:
        runtime = request.getfixturevalue("rt")
        assert runtime.is_running, "the engine thread stopped"
        assert_pool_full(runtime)


def greedy(n: int = 16, **kw) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, temperature=0, ignore_eos=True, **kw)


def seeded(seed: int, n: int = 16, **kw) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, temperature=0.9, top_k=40, seed=seed, ignore_eos=True, **kw)


# Seven innocent requests: greedy and seeded sampling (whose random generators a retried step must put back).
INNOCENT = [(p, greedy() if i % 2 else seeded(i)) for i, p in enumerate(SHORT_PROMPTS)]


def run_all(rt: Runtime, requests: list[tuple[list[int] | str, SamplingParams]]) -> list[dict]:
    handles = [rt.submit(p, s) for p, s in requests]
    return [h.result(timeout=120) for h in handles]


def reason(result: dict) -> dict:
    return result["meta_info"]["finish_reason"]


# ---------------------------------------------------------------------------- 1. validated on the caller's side
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": 1.5}, "seed must be an integer, got 1.5"),
        ({"seed": 2**64}, r"seed must be an integer in \[-2\*\*63, 2\*\*63\)"),
        ({"sampling_seed": 2**64}, "sampling_seed must be an integer in"),
        ({"seed": 2**63 - 1, "n": 2}, "seed"),  # sample i takes seed + i
        ({"top_k": 1.5}, "top_k must be an integer"),
        ({"stop": [1]}, "stop must be a string or a list of strings"),
        ({"stop": ["ok", b"x"]}, "stop must be a string or a list of strings"),
        ({"stop": ["a\ud800"]}, re.escape(r"stop[0] contains a lone surrogate (U+D800..U+DFFF) at position 1")),
        ({"stop_regex": [3]}, "stop_regex must be a string"),
        ({"stop_token_ids": [VOCAB + 5], "min_new_tokens": 2}, r"stop_token_ids has token ids outside the vocab"),
        ({"stop_token_ids": [1.5]}, "stop_token_ids must be a list of token ids"),
        ({"stop_token_ids": [-1]}, "stop_token_ids must be a list of token ids"),
        ({"logit_bias": {VOCAB: 1.0}}, "logit_bias has token ids outside the vocabulary"),
        ({"token_ids_logprob": [VOCAB], "return_logprob": True}, "token_ids_logprob has token ids outside"),
        ({"token_ids_logprob": [True], "return_logprob": True}, "token_ids_logprob must be a list of token ids"),
        ({"top_logprobs_num": VOCAB + 1, "return_logprob": True}, "top_logprobs_num must be at most the vocab"),
        ({"top_logprobs_num": 1.5, "return_logprob": True}, "top_logprobs_num must be an integer"),
        ({"logprob_start_len": 1.5, "return_logprob": True}, "logprob_start_len must be an integer"),
        ({"temperature": float("nan")}, "temperature must be a finite number"),
        ({"temperature": float("inf")}, "temperature must be a finite number"),
        ({"top_p": "0.5"}, "top_p must be a finite number"),
        ({"max_new_tokens": 4.0}, "max_new_tokens must be an integer"),
        ({"skip_special_tokens": "yes"}, "skip_special_tokens must be true or false"),
    ],
)
def test_a_bad_parameter_is_a_value_error_at_submission(rt, kwargs, message):
    with pytest.raises(ValueError, match=message):
        rt.generate(SHORT_PROMPTS[0], **{"max_new_tokens": 4, **kwargs})


def test_a_lone_surrogate_in_a_prompt_is_a_clear_value_error(rt):
    with pytest.raises(ValueError, match=re.escape("prompt contains a lone surrogate (U+D800..U+DFFF) at position 2")):
        rt.generate("ab\udfffc", max_new_tokens=2)
    assert rt.generate("ab\U0001f600c", max_new_tokens=2, temperature=0)["meta_info"]["completion_tokens"] == 2


def test_request_ids_in_flight_are_unique(rt):
    first = rt.submit(SHORT_PROMPTS[0], greedy(400), rid="mine")
    with pytest.raises(ValueError, match="request id 'mine' is already in use"):
        rt.submit(SHORT_PROMPTS[1], greedy(4, regex="[0-9]+"), rid="mine")
    with pytest.raises(ValueError, match="rid must be a non-empty string"):
        rt.submit(SHORT_PROMPTS[1], greedy(4), rid=7)
    rt.abort("mine")
    assert reason(first.result(timeout=60))["type"] == "abort"
    assert len(rt.submit(SHORT_PROMPTS[1], greedy(4), rid="mine").result(timeout=60)["output_ids"]) == 4


def test_top_k_beyond_the_vocabulary_is_no_restriction(rt):
    free = rt.generate(SHORT_PROMPTS[0], max_new_tokens=12, temperature=1.0, seed=7, ignore_eos=True)
    for top_k in (VOCAB, VOCAB + 1, 10**30):
        out = rt.generate(SHORT_PROMPTS[0], max_new_tokens=12, temperature=1.0, seed=7, ignore_eos=True, top_k=top_k)
        assert reason(out)["type"] == "length" and out["output_ids"] == free["output_ids"], top_k


def test_request_limits_have_sane_defaults_and_name_how_to_raise_them(rt, model_path):
    limits = RequestLimits()
    assert limits.max_stop_strings == 64 and limits.max_top_logprobs_num == 64
    for kwargs, name in [({"stop": [f"s{i}" for i in range(65)]}, "max_stop_strings"),
                         ({"stop_regex": [f"x{i}" for i in range(65)]}, "max_stop_strings"),
                         ({"stop": ["x" * 1025]}, "max_stop_string_length"),
                         ({"top_logprobs_num": 65, "return_logprob": True}, "max_top_logprobs_num"),
                         ({"token_ids_logprob": [3] * 1025, "return_logprob": True}, "max_token_ids_logprob")]:
        with pytest.raises(ValueError, match=rf"over this runtime's limit .*{name}; raise it with RequestLimits"):
            rt.generate(SHORT_PROMPTS[0], max_new_tokens=2, **kwargs)
    with pytest.raises(ValueError, match="max_stop_strings must be a positive integer or None"):
        RequestLimits(max_stop_strings=0)
    lax = RequestLimits(max_stop_strings=None, max_top_logprobs_num=100)
    with Runtime(model_path, device="cpu", max_total_tokens=512, limits=lax) as wide:
        out = wide.generate(SHORT_PROMPTS[0], max_new_tokens=2, temperature=0, ignore_eos=True,
                            stop=[f"never{i}" for i in range(200)], return_logprob=True, top_logprobs_num=100)
        assert len(out["meta_info"]["output_top_logprobs"][0]) == 100


# ---------------------------------------------------------------------------- 2. a fault fails its request alone
def check_only_the_culprit_failed(rt: Runtime, results: list[dict], undisturbed: list[dict], fault: str) -> None:
    *innocent, culprit = results
    assert reason(culprit)["type"] == "abort" and fault in reason(culprit)["message"], reason(culprit)
    assert [r["output_ids"] for r in innocent] == [r["output_ids"] for r in undisturbed]
    assert all(reason(r)["type"] == "length" for r in innocent)
    rt.check_integrity()


def test_a_forward_fault_in_a_batch_of_8_fails_only_its_request(rt, monkeypatch):
    undisturbed = run_all(rt, INNOCENT)
    original = rt.engine.model.forward

    def forward(batch, backend):  # only the long prompt's positions reach 100: prefill and decode fail for it
        if bool((batch.positions >= 100).any()):
            raise RuntimeError("injected forward fault")
        return original(batch, backend)

    monkeypatch.setattr(rt.engine.model, "forward", forward)
    results = run_all(rt, [*INNOCENT, (LONG_PROMPT, greedy())])
    check_only_the_culprit_failed(rt, results, undisturbed, "injected forward fault")


def test_a_sampler_fault_mid_decode_fails_only_its_request(rt, monkeypatch):
    undisturbed = run_all(rt, INNOCENT)
    original = output_processor.sample
    calls = {"marked": 0}

    def sample(logits, rows):  # from the culprit's 4th token on, sampling any batch holding it raises
        if any(r.params.custom_params == FAULT for r in rows):
            calls["marked"] += 1
            if calls["marked"] > 3:
                raise RuntimeError("injected sampler fault")
        return original(logits, rows)

    monkeypatch.setattr(output_processor, "sample", sample)
    results = run_all(rt, [*INNOCENT, (SHORT_PROMPTS[0], greedy(custom_params=FAULT))])
    check_only_the_culprit_failed(rt, results, undisturbed, "injected sampler fault")
    assert len(results[-1]["output_ids"]) == 3


def test_a_fault_after_the_token_is_appended_fails_only_its_request(rt, monkeypatch):
    """The culprit comes first in the batch: the requests after it, constrained and seeded ones among them,
    were sampled and their grammars advanced when it raised; they must be put back and rerun unchanged."""
    constrained = [("The date:", seeded(20 + i, n=24, regex=r"\d{4}-\d{2}-\d{2}")) for i in range(2)]
    constrained.append(("A number:", greedy(24, regex=r"-?\d{1,4}\.\d{1,4}")))
    undisturbed = run_all(rt, INNOCENT + constrained)
    original = rt.engine.outputs.check_finished

    def check_finished(req, token):
        if req.params.custom_params == FAULT and len(req.output_ids) >= 3:
            raise RuntimeError("injected stop-check fault")
        return original(req, token)

    monkeypatch.setattr(rt.engine.outputs, "check_finished", check_finished)
    culprit = rt.submit(SHORT_PROMPTS[0], greedy(custom_params=FAULT))
    results = run_all(rt, INNOCENT + constrained)
    failed = culprit.result(timeout=60)
    assert reason(failed)["type"] == "abort" and "injected stop-check fault" in reason(failed)["message"]
    assert [r["output_ids"] for r in results] == [r["output_ids"] for r in undisturbed]
    assert [r["text"] for r in results[-3:]] == [r["text"] for r in undisturbed[-3:]]
    rt.check_integrity()


def test_a_fault_while_queuing_a_request_fails_only_it(rt, monkeypatch):
    original = rt.engine.outputs.register

    def register(req, matcher):
        if req.params.custom_params == FAULT:
            raise RuntimeError("injected register fault")
        return original(req, matcher)

    monkeypatch.setattr(rt.engine.outputs, "register", register)
    bad = rt.submit(SHORT_PROMPTS[1], greedy(4, custom_params=FAULT))
    good = rt.submit(SHORT_PROMPTS[1], greedy(4))
    assert "injected register fault" in reason(bad.result(timeout=60))["message"]
    assert len(good.result(timeout=60)["output_ids"]) == 4


def test_a_done_callback_that_raises_does_not_stop_the_engine(rt):
    handle = rt.submit(SHORT_PROMPTS[1], greedy(4))
    handle.add_done_callback(lambda result: 1 / 0)
    assert len(handle.result(timeout=60)["output_ids"]) == 4
    assert len(rt.generate(SHORT_PROMPTS[1], max_new_tokens=3, temperature=0, ignore_eos=True)["output_ids"]) == 3


# ---------------------------------------------------------------------------- 3. the engine thread stops
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("fault", [RuntimeError, KeyboardInterrupt])
def test_a_stopped_engine_thread_ends_every_handle_and_refuses_new_work(model_path, fault):
    runtime = Runtime(model_path, device="cpu", max_total_tokens=1024)
    try:
        handles = [runtime.submit(p, greedy(400)) for p in SHORT_PROMPTS[:3]]
        step, started = runtime.engine.step, threading.Event()

        def crash() -> None:
            if started.is_set():
                raise fault("injected fatal fault")
            started.set()
            step()

        runtime.engine.step = crash
        why = f"the runtime's engine thread stopped: {fault.__name__}: injected fatal fault"
        for h in handles:
            assert reason(h.result(timeout=60)) == {"type": "abort", "message": why}
        runtime._thread.join(timeout=60)
        assert not runtime.is_running
        health = runtime.health()
        assert (health.ok, health.stopped, health.state) == (False, True, "stopped")
        assert health.reason == why
        with pytest.raises(RuntimeError, match=re.escape(why)):
            runtime.submit(SHORT_PROMPTS[0], greedy(2))
        with pytest.raises(RuntimeError, match=re.escape(why)):
            runtime.call(lambda engine: None)
    finally:
        runtime.shutdown()


# ---------------------------------------------------------------------------- 4. shutdown is a state
@pytest.mark.parametrize("attempt", range(3))
def test_shutdown_under_8_submitting_threads_ends_every_handle(model_path, attempt):
    runtime = Runtime(model_path, device="cpu", max_total_tokens=2048)
    handles, refusals, lock, enough = [], [], threading.Lock(), threading.Event()

    def submit_until_refused(k: int) -> None:
        while True:
            try:
                handle = runtime.submit(SHORT_PROMPTS[k % len(SHORT_PROMPTS)], greedy(8 + attempt))
            except RuntimeError as exc:
                refusals.append(str(exc))
                return
            with lock:
                handles.append(handle)
                if len(handles) >= 40:
                    enough.set()

    threads = [threading.Thread(target=submit_until_refused, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    assert enough.wait(timeout=60)
    runtime.shutdown()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()
    assert len(refusals) == 8
    assert set(refusals) <= {"the runtime is shutting down", "the runtime has been shut down"}
    for handle in handles:  # every handle returns; an unfinished one was aborted with the reason
        result = handle.result(timeout=60)
        if reason(result)["type"] == "abort":
            assert reason(result)["message"] == "the runtime is shutting down"
        else:
            assert len(result["output_ids"]) == 8 + attempt
    assert runtime.health().state == "stopped" and not runtime.is_running
    with pytest.raises(RuntimeError, match="has been shut down"):
        runtime.submit(SHORT_PROMPTS[0], greedy(2))


def test_submissions_are_refused_from_the_moment_shutdown_starts(model_path):
    runtime = Runtime(model_path, device="cpu", max_total_tokens=1024)
    running = runtime.submit(SHORT_PROMPTS[0], greedy(400))
    seen = []

    def during_shutdown() -> None:
        seen.append((runtime.is_running, runtime.health().state))
        with pytest.raises(RuntimeError, match="the runtime is shutting down"):
            runtime.submit(SHORT_PROMPTS[1], greedy(2))
        seen.append(runtime.call(lambda engine: engine.has_work()))  # the engine still answers calls

    runtime.on_shutdown(during_shutdown)
    runtime.shutdown()
    assert seen == [(True, "shutting_down"), True]
    assert reason(running.result(timeout=60)) == {"type": "abort", "message": "the runtime is shutting down"}


# ---------------------------------------------------------------------------- 5. metrics are current
def test_metrics_read_after_a_result_count_that_request(rt):
    for i in range(12):
        before = rt.metrics().num_finished
        rt.generate(SHORT_PROMPTS[i % 3], max_new_tokens=1 + i % 3, temperature=0)
        after = rt.metrics()
        assert after.num_finished == before + 1 and after.num_running == 0 and after.num_waiting == 0
    handle = rt.submit(SHORT_PROMPTS[2], greedy(400))
    before = rt.metrics().num_finished
    rt.abort(handle.rid)
    handle.result(timeout=60)
    assert rt.metrics().num_finished == before + 1
