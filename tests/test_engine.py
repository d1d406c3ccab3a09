"""Engine behaviour on a random tiny Llama: batching, sampling options, logprobs, bad input, lifecycle."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch
import transformers

from sglbench.runtime.models.synthetic import make_random_checkpoint
from sglbench.runtime.runtime import Runtime
from sglbench.runtime.sampling_params import SamplingParams
from tests.helpers import assert_pool_full, hf_greedy

PROMPTS = [[1, 5, 9, 13, 40, 41], [1, 100, 7], [1, *range(50, 90)], [1, 300, 301, 302, 9, 9, 9, 12]]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_random_checkpoint(tmp_path_factory.mktemp("llama"), family="llama", seed=3)


@pytest.fixture(scope="module")
def rt(model_path):
    runtime = Runtime(str(model_path), device="cpu", max_total_tokens=2048)
    yield runtime
    runtime.shutdown()


@pytest.fixture(autouse=True)
def no_leaks(request):
    yield
    if "rt" in request.fixturenames:
        assert_pool_full(request.getfixturevalue("rt"))


def greedy(rt, prompt, n=24, **kw):
    return rt.generate(prompt, max_new_tokens=n, temperature=0, ignore_eos=True, **kw)


def test_batch_invariance(rt):
    alone = [greedy(rt, p)["output_ids"] for p in PROMPTS]
    together = [r["output_ids"] for r in greedy(rt, PROMPTS)]
    assert together == alone
    # Late arrivals join while the first requests decode (continuous batching).
    early = [rt.submit(p, rt_params(24)) for p in PROMPTS[:2]]
    time.sleep(0.02)
    late = [rt.submit(p, rt_params(24)) for p in PROMPTS[2:]]
    staggered = [h.result(timeout=60)["output_ids"] for h in early + late]
    assert staggered == alone


def rt_params(n):
    from sglbench.runtime.sampling_params import SamplingParams

    return SamplingParams(max_new_tokens=n, temperature=0, ignore_eos=True)


def test_chunked_prefill_matches_unchunked(model_path):
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32).eval()
    prompt = [1, *[(7 * i) % 390 + 3 for i in range(150)]]
    with Runtime(str(model_path), device="cpu", max_total_tokens=1024, chunked_prefill_size=32) as small:
        out = small.generate(prompt, max_new_tokens=8, temperature=0, ignore_eos=True)
        assert out["output_ids"] == hf_greedy(ref, prompt, 8)
        assert_pool_full(small)


def test_stop_string_across_token_boundary_is_cut_and_never_streamed(rt):
    full = greedy(rt, PROMPTS[0], n=16)
    ids = full["output_ids"]
    tok = rt.tokenizer
    # A stop string made of the end of token 4 and the start of token 5 straddles their boundary.
    left, right = tok.decode(ids[:5]), tok.decode(ids[:6])
    assert len(right) > len(left) > 0
    stop = left[-1] + right[len(left)]
    expected = full["text"][: full["text"].find(stop)]
    out = greedy(rt, PROMPTS[0], n=16, stop=[stop])
    assert out["text"] == expected and stop not in out["text"]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    streamed = "".join(rt.generate_stream(PROMPTS[0], max_new_tokens=16, temperature=0, ignore_eos=True, stop=[stop]))
    assert streamed == expected


def test_stop_token_ids_and_min_new_tokens(rt):
    first = greedy(rt, PROMPTS[1], n=6)["output_ids"]
    stopped = greedy(rt, PROMPTS[1], n=6, stop_token_ids=[first[0]])
    assert stopped["output_ids"] == first[:1]
    assert stopped["meta_info"]["finish_reason"] == {"type": "stop", "matched": first[0]}
    held = greedy(rt, PROMPTS[1], n=6, stop_token_ids=[first[0]], min_new_tokens=4)
    assert len(held["output_ids"]) >= 4
    assert first[0] not in held["output_ids"][:3]


def test_eos_stops_unless_ignored(rt):
    eos = next(iter(rt.engine.eos_token_ids))
    # Make eos the likeliest token by asking for it as a stop token and checking finish handling.
    out = rt.generate(PROMPTS[0], max_new_tokens=5, temperature=0)
    assert out["meta_info"]["finish_reason"]["type"] in ("stop", "length")
    assert eos not in out["output_ids"][:-1]


def test_n_samples_are_seeded_and_distinct(rt):
    a = rt.generate(PROMPTS[2], max_new_tokens=12, temperature=1.0, n=3, seed=7, ignore_eos=True)
    b = rt.generate(PROMPTS[2], max_new_tokens=12, temperature=1.0, n=3, seed=7, ignore_eos=True)
    assert len(a) == 3 and [r["output_ids"] for r in a] == [r["output_ids"] for r in b]
    assert len({tuple(r["output_ids"]) for r in a}) > 1
    # n > 1 prefills the prompt once: the samples reuse it from the radix cache.
    assert all(r["meta_info"]["cached_tokens"] == len(PROMPTS[2]) - 1 for r in a)


def test_sampling_filters_restrict_choices(rt):
    greedy_first = greedy(rt, PROMPTS[3], n=1)["output_ids"][0]
    for kw in ({"top_k": 1}, {"top_p": 1e-6}, {"min_p": 1.0}):
        outs = {rt.generate(PROMPTS[3], max_new_tokens=1, temperature=1.5, seed=s, **kw)["output_ids"][0] for s in range(5)}
        assert outs == {greedy_first}, kw


def test_penalties_change_repetition(rt):
    plain = greedy(rt, PROMPTS[0], n=40)["output_ids"]
    penalised = greedy(rt, PROMPTS[0], n=40, frequency_penalty=2.0, presence_penalty=2.0)["output_ids"]
    assert len(set(penalised)) > len(set(plain))


def test_prompt_and_output_logprobs_match_transformers(rt, model_path):
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32).eval()
    prompt = PROMPTS[2]
    greedy(rt, prompt)  # the prompt is now cached: logprob_start_len must still recompute what it needs
    out = rt.generate(prompt, max_new_tokens=3, temperature=0, ignore_eos=True, return_logprob=True,
                      logprob_start_len=10, top_logprobs_num=2)
    with torch.no_grad():
        lp = torch.log_softmax(ref(torch.tensor([prompt + out["output_ids"]])).logits[0], dim=-1)
    got = out["meta_info"]["input_token_logprobs"]
    assert [t for _, t in got] == prompt[10:]
    for (value, token), pos in zip(got, range(10, len(prompt))):
        assert abs(value - lp[pos - 1, token].item()) < 1e-4
    for k, (value, token) in enumerate(out["meta_info"]["output_token_logprobs"]):
        assert abs(value - lp[len(prompt) - 1 + k, token].item()) < 1e-4
    assert out["meta_info"]["output_top_logprobs"][0][0][1] == out["output_ids"][0]


def test_prefill_only_request(rt):
    out = rt.generate(PROMPTS[1], max_new_tokens=0, return_logprob=True, logprob_start_len=0)
    assert out["output_ids"] == [] and out["meta_info"]["completion_tokens"] == 0
    logprobs = out["meta_info"]["input_token_logprobs"]
    assert logprobs[0][0] is None and len(logprobs) == len(PROMPTS[1])


def test_meta_info_timings(rt):
    meta = greedy(rt, PROMPTS[0], n=4)["meta_info"]
    assert meta["prompt_tokens"] == len(PROMPTS[0]) and meta["completion_tokens"] == 4
    assert meta["arrived"] <= meta["scheduled"] <= meta["first_token"] <= meta["finished"]
    assert meta["e2e_latency"] >= meta["ttft"] >= 0


@pytest.mark.parametrize(
    ("prompt", "kwargs", "match"),
    [
        ("", {}, "prompt is empty"),
        ([], {}, "prompt is empty"),
        ([1] * 600, {}, "context"),
        ([1, 2], {"max_new_tokens": -1}, "max_new_tokens"),
        ([1, 2], {"temperature": -0.5}, "temperature"),
        ([1, 2], {"top_p": 0.0}, "top_p"),
        ([1, 2], {"top_p": 1.5}, "top_p"),
        ([1, 2], {"top_k": 0}, "top_k"),
        ([1, 2], {"min_new_tokens": 5, "max_new_tokens": 2}, "min_new_tokens"),
        ([1, 99999], {}, "vocabulary"),
    ],
)
def test_bad_input_is_a_clear_error_and_engine_keeps_serving(rt, prompt, kwargs, match):
    background = rt.submit(PROMPTS[2], rt_params(16))
    with pytest.raises(ValueError, match=match):
        rt.generate(prompt, **kwargs)
    assert len(background.result(timeout=60)["output_ids"]) == 16


def test_unknown_sampling_parameter(rt):
    with pytest.raises(TypeError, match="temprature"):
        rt.generate(PROMPTS[0], temprature=0.5)


def test_stream_pieces_go_out_per_token_only_once_a_caller_iterates(rt):
    """A handle nobody iterates gets its text in one piece at the end; one iterated from the start gets a
    piece per token or so; either way the pieces add up to the result's text."""
    waited = rt.submit(PROMPTS[2], rt_params(24))
    text = waited.result(timeout=60)["text"]
    pieces = list(waited.iter_deltas(timeout=1))
    assert [p.text for p in pieces] == [text] and pieces[0].completion_tokens == 24
    streamed = rt.submit(PROMPTS[2], rt_params(300))
    pieces = list(streamed.iter_deltas(timeout=60))
    assert "".join(p.text for p in pieces) == streamed.result()["text"]
    assert len(pieces) > 10


def test_abort_frees_its_slots_and_returns_the_text_so_far(rt):
    """An abort ends the request with the text of every token it had (decoded at the end: nothing read it before)."""
    handle = rt.submit(PROMPTS[2], rt_params(400))
    time.sleep(0.05)
    rt.abort(handle.rid)
    result = handle.result(timeout=60)
    assert result["meta_info"]["finish_reason"]["type"] == "abort"
    assert result["text"] == rt.tokenizer.decode(result["output_ids"])


def test_engine_error_aborts_only_that_batch(rt, monkeypatch):
    original = rt.engine.model.forward
    calls = {"n": 0}

    def flaky(batch, backend):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected fault")
        return original(batch, backend)

    monkeypatch.setattr(rt.engine.model, "forward", flaky)
    failed = rt.generate(PROMPTS[0], max_new_tokens=4, temperature=0)
    assert failed["meta_info"]["finish_reason"]["type"] == "abort"
    assert "injected fault" in failed["meta_info"]["finish_reason"]["message"]
    assert len(greedy(rt, PROMPTS[0], n=4)["output_ids"]) == 4


def test_async_generate_and_stream(rt):
    expected = greedy(rt, PROMPTS[3], n=10)

    async def main():
        result = await rt.async_generate(PROMPTS[3], max_new_tokens=10, temperature=0, ignore_eos=True)
        pieces = [p async for p in rt.async_generate_stream(PROMPTS[3], max_new_tokens=10, temperature=0, ignore_eos=True)]
        return result, pieces

    result, pieces = asyncio.run(main())
    assert result["output_ids"] == expected["output_ids"]
    assert "".join(pieces) == expected["text"]


def test_recreating_runtimes_does_not_leak_threads(model_path):
    before = {t.name for t in threading.enumerate()}
    for _ in range(3):
        with Runtime(str(model_path), device="cpu", max_total_tokens=256) as r:
            assert greedy(r, PROMPTS[0], n=2)["meta_info"]["completion_tokens"] == 2
    time.sleep(0.1)
    after = {t.name for t in threading.enumerate() if t.name.startswith("sglbench-engine")}
    assert after <= before
    with pytest.raises(RuntimeError, match="shut down"):
        r.generate(PROMPTS[0])


def test_the_heap_is_frozen_while_a_runtime_runs_and_its_engine_is_collected_after(model_path):
    """A running runtime keeps the start-up heap out of the collector's full passes (gc.freeze); after shutdown
    the heap is handed back, and the stopped engine (the model's cycles included) is collected."""
    import gc
    import weakref

    with Runtime(str(model_path), device="cpu", max_total_tokens=256) as r:
        assert gc.get_freeze_count() > 0
        engine = weakref.ref(r.engine)
        assert greedy(r, PROMPTS[0], n=2)["meta_info"]["completion_tokens"] == 2
    assert gc.get_freeze_count() == 0
    del r
    gc.collect()
    assert engine() is None


def run_with_late_arrivals(engine, reqs) -> None:
    """Two requests first (their prefill, then two decode steps), then the rest arrive; run to the end."""
    for r in reqs[:2]:
        engine.add_request(r)
    for _ in range(3):
        engine.step()
    for r in reqs[2:]:
        engine.add_request(r)
    while engine.has_work():
        engine.step()
    engine.check_integrity()


def test_decoding_requests_ride_along_with_a_prefill_step(model_path):
    """Requests arriving while others decode are prefilled in the same forward as the others' next tokens
    (a "mixed" step, no decode step of its own), with the outputs and token counts of an engine that does
    not mix (SGLang's enable_mixed_chunk=False)."""
    from sglbench.runtime.engine import Engine, EngineConfig
    from sglbench.runtime.request import Request

    def run(mixed: bool):
        engine = Engine(EngineConfig(str(model_path), max_total_tokens=2048, mixed_chunk=mixed))
        reqs = [Request(f"r{i}", list(p), rt_params(12)) for i, p in enumerate(PROMPTS)]
        run_with_late_arrivals(engine, reqs)
        steps = [e.data for e in engine.events.since(0, kinds=("batch.step",))]
        return [r.output_ids for r in reqs], steps, engine.metrics

    mixed_out, mixed_steps, mixed_metrics = run(True)
    plain_out, plain_steps, plain_metrics = run(False)
    assert mixed_out == plain_out and all(len(o) == 12 for o in mixed_out)
    riding = [s for s in mixed_steps if s["mode"] == "mixed"]
    late_new_tokens = sum(len(p) - 1 for p in PROMPTS[2:])  # each starts with token 1, which the cache holds
    assert riding == [{"mode": "mixed", "batch_size": 4, "tokens": late_new_tokens + 2, "decode_size": 2}]
    assert not any(s["mode"] == "mixed" for s in plain_steps)
    assert mixed_metrics.decode_tokens == plain_metrics.decode_tokens == 4 * 11
    assert mixed_metrics.prefill_tokens == plain_metrics.prefill_tokens


def test_extend_steps_run_each_layer_as_one_call_with_the_layer_by_layer_outputs(model_path, monkeypatch):
    """On packed weights (small fp32 models) an extend step of up to FUSED_EXTEND_MAX_ROWS new tokens runs each
    layer as one C call (cpu_native.decode_layers with qo_indptr: the extend's causal attention), mixed steps
    with decoding riders included. Same tokens and logprobs as layer by layer."""
    from sglbench.kernel import cpu_native
    from sglbench.runtime.engine import Engine, EngineConfig
    from sglbench.runtime.request import Request

    if not cpu_native.available():
        pytest.skip(f"C kernels: {cpu_native.unavailable_reason()}")
    stem = [1, *range(200, 240)]
    late = [[*stem, 7, 8, 9], [*stem, 11], [*stem, *range(300, 316)]]

    def run(fused: bool):
        monkeypatch.setattr(cpu_native, "FUSED_EXTEND_MAX_ROWS", 1536 if fused else 0)
        engine = Engine(EngineConfig(str(model_path), max_total_tokens=2048))
        extend_calls = []
        original = cpu_native.decode_layers
        monkeypatch.setattr(cpu_native, "decode_layers", lambda *a, **k: extend_calls.append(
            a[-1] is not None if len(a) > 10 else k.get("qo_indptr") is not None) or original(*a, **k))
        params = SamplingParams(max_new_tokens=10, temperature=0, ignore_eos=True, return_logprob=True)
        reqs = [Request(f"r{i}", list(p), params) for i, p in enumerate([[*stem, 5], PROMPTS[0], *late])]
        run_with_late_arrivals(engine, reqs)
        logprobs = [[lp for lp, _ in r.output_token_logprobs] for r in reqs]
        return [r.output_ids for r in reqs], logprobs, sum(extend_calls)

    fused_out, fused_logprobs, fused_extends = run(True)
    plain_out, plain_logprobs, plain_extends = run(False)
    assert fused_out == plain_out and all(len(o) == 10 for o in fused_out)
    torch.testing.assert_close(fused_logprobs, plain_logprobs, atol=1e-4, rtol=0)
    assert fused_extends >= 2 and plain_extends == 0  # the first prefill, and the late requests' mixed step


def test_lm_head_runs_packed_on_packed_models_with_torchs_tokens_and_logprobs(model_path, monkeypatch):
    """A small fp32 model's lm-head keeps a packed copy and runs through cpu_native.gemm_packed for up to
    PACKED_GEMM_MAX_ROWS rows (decode steps, sampled rows of a prefill); the same tokens and logprobs as
    torch's F.linear, and none under cpu_native.disabled()."""
    from sglbench.kernel import cpu_native
    from sglbench.runtime.engine import Engine, EngineConfig
    from sglbench.runtime.request import Request

    if not cpu_native.available():
        pytest.skip(f"C kernels: {cpu_native.unavailable_reason()}")

    def run(packed: bool):
        monkeypatch.setattr(cpu_native, "PACKED_GEMM_MAX_ROWS", 64 if packed else 0)
        engine = Engine(EngineConfig(str(model_path), max_total_tokens=2048))
        calls = []
        original = cpu_native.gemm_packed
        monkeypatch.setattr(cpu_native, "gemm_packed", lambda x, *a: calls.append(x.shape[0]) or original(x, *a))
        params = SamplingParams(max_new_tokens=8, temperature=0, ignore_eos=True, return_logprob=True)
        reqs = [Request(f"r{i}", list(p), params) for i, p in enumerate(PROMPTS)]
        run_with_late_arrivals(engine, reqs)
        logprobs = [[lp for lp, _ in r.output_token_logprobs] for r in reqs]
        return [r.output_ids for r in reqs], logprobs, calls, engine

    packed_out, packed_logprobs, packed_calls, engine = run(True)
    plain_out, plain_logprobs, plain_calls, _ = run(False)
    assert packed_out == plain_out and all(len(o) == 8 for o in packed_out)
    torch.testing.assert_close(packed_logprobs, plain_logprobs, atol=1e-4, rtol=0)
    assert packed_calls and not plain_calls
    model = engine.runner.model
    assert model.packed_lm_head() is not None
    with cpu_native.disabled():
        assert model.packed_lm_head() is None


def test_a_resumed_request_samples_in_its_prefill_step(model_path):
    """A retracted request re-prefills its tokens, its last sampled one included, and samples its next token
    from that step (as SGLang does), not from a decode step after it: as many forwards as tokens."""
    from sglbench.runtime.engine import Engine, EngineConfig
    from sglbench.runtime.request import Request

    def run(retract: bool):
        engine = Engine(EngineConfig(str(model_path), max_total_tokens=2048))
        req = Request("r", list(PROMPTS[2]), rt_params(12))
        engine.add_request(req)
        for _ in range(4):  # the prefill and three decode steps: four tokens
            engine.step()
        if retract:
            engine._retract(req)
        while engine.has_work():
            engine.step()
        engine.check_integrity()
        return req.output_ids, engine.metrics.num_steps, req.num_retractions

    assert run(True) == (run(False)[0], 12, 1)


@pytest.mark.parametrize("conservativeness", [0.0, 1.0, 1.5])
def test_admission_keeps_memory_for_running_outputs_so_nothing_is_retracted(model_path, conservativeness):
    """8 prompts of 20 tokens decoding 40 each need 480 slots; the pool has 200. Admitting whatever fits the
    prompts (conservativeness 0: no memory kept for outputs) retracts requests and prefills them again; SGLang's
    estimate (1.0: 0.7 of each running request's outputs left, less as decoding goes on) retracts far less, and
    1.5 (all of them) never.
    The greedy outputs are the same."""
    prompts = [[1, *range(10 + 20 * i, 29 + 20 * i)] for i in range(8)]
    with Runtime(str(model_path), device="cpu", max_total_tokens=200,
                 schedule_conservativeness=conservativeness) as small:
        outs = [o["output_ids"] for o in small.generate(prompts, max_new_tokens=40, temperature=0, ignore_eos=True)]
        retractions = small.metrics().num_retractions
        assert_pool_full(small)
    with Runtime(str(model_path), device="cpu", max_total_tokens=2048) as roomy:
        assert outs == [o["output_ids"] for o in roomy.generate(prompts, max_new_tokens=40, temperature=0,
                                                                ignore_eos=True)]
    # measured: 13 retractions at 0.0 (421 tokens prefilled for 160 of prompts), 2 at 1.0 (211), 0 at 1.5 (154)
    expected = {0.0: lambda n: n >= 5, 1.0: lambda n: n <= 3, 1.5: lambda n: n == 0}[conservativeness]
    assert expected(retractions), retractions


def test_context_length_past_the_models_is_refused_unless_allowed_as_sglang_does(model_path, monkeypatch):
    from sglbench.runtime.model_config import LONGER_CONTEXT_ENV, ModelConfig

    trained = ModelConfig.from_path(model_path).max_position_embeddings
    monkeypatch.delenv(LONGER_CONTEXT_ENV, raising=False)
    with pytest.raises(ValueError, match=LONGER_CONTEXT_ENV):
        Runtime(model_path, device="cpu", context_length=2 * trained)
    with Runtime(model_path, device="cpu", context_length=trained // 2, max_total_tokens=4 * trained) as rt:
        assert rt.engine.context_length == trained // 2  # shorter is taken as asked
        with pytest.raises(ValueError, match=f"the model's context is {trained // 2} tokens"):
            rt.generate([5] * trained, max_new_tokens=1)
    monkeypatch.setenv(LONGER_CONTEXT_ENV, "1")
    with Runtime(model_path, device="cpu", context_length=2 * trained, max_total_tokens=4 * trained) as rt:
        assert rt.engine.context_length == 2 * trained
        assert rt.engine.model.model.rotary_emb.cis.shape[0] == 2 * trained  # positions past the trained ones
        out = rt.generate([5 + i % 50 for i in range(trained + 10)], max_new_tokens=3, temperature=0, ignore_eos=True)
        assert len(out["output_ids"]) == 3
