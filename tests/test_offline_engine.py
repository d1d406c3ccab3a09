"""`sgl.Engine`, SGLang's offline engine API, on the embedded default model: single, batch, n, input_ids,
streamed and async generation with SGLang's output shapes; server arguments; and `Runtime.generate` taking
SGLang's `sampling_params=` and `input_ids=`."""

from __future__ import annotations

import asyncio
import itertools
import logging

import pytest

import sglbench as sgl
from sglbench.runtime.offline_engine import Engine, FlushCacheReqOutput
from sglbench.runtime.sampling_params import FIELDS
from sglbench.runtime.server_args import ServerArgs
from tests.helpers import assert_pool_full

PROMPTS = ["Q: What is 2 + 3?\nA:", "The capital of France is", "Hello"]
GREEDY = {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def llm():
    with Engine(device="cpu", max_total_tokens=2048) as engine:
        yield engine


@pytest.fixture(autouse=True)
def no_leaks(request):
    yield
    if "llm" in request.fixturenames:
        assert_pool_full(request.getfixturevalue("llm").runtime)


def texts(results: list[dict]) -> list[str]:
    return [r["text"] for r in results]


# ---------------------------------------------------------------------------- Engine.generate
def test_the_engine_is_sglangs_public_name():
    assert sgl.Engine is Engine and sgl.ServerArgs is ServerArgs


def test_one_prompt_gives_one_result_dict(llm):
    out = llm.generate(PROMPTS[0], GREEDY)
    assert set(out) >= {"text", "output_ids", "meta_info"} and len(out["output_ids"]) == 6
    assert out["meta_info"]["completion_tokens"] == 6 and out["meta_info"]["finish_reason"]["type"] == "length"
    same = llm.runtime.generate(PROMPTS[0], **GREEDY)
    assert (out["text"], out["output_ids"]) == (same["text"], same["output_ids"])


def test_a_batch_gives_a_list_and_takes_one_sampling_dict_per_prompt(llm):
    shared = llm.generate(PROMPTS, GREEDY)
    assert texts(shared) == [llm.generate(p, GREEDY)["text"] for p in PROMPTS]
    each = llm.generate(PROMPTS, [{**GREEDY, "max_new_tokens": k} for k in (1, 2, 3)])
    assert [r["meta_info"]["completion_tokens"] for r in each] == [1, 2, 3]


def test_input_ids_replace_the_prompt(llm):
    ids = [llm.runtime.tokenizer.encode(p) for p in PROMPTS]
    assert llm.generate(input_ids=ids[0], sampling_params=GREEDY)["text"] == llm.generate(PROMPTS[0], GREEDY)["text"]
    assert texts(llm.generate(input_ids=ids, sampling_params=GREEDY)) == texts(llm.generate(PROMPTS, GREEDY))


def test_n_samples_come_as_one_flat_list_prompt_by_prompt(llm):
    params = {**GREEDY, "n": 2}
    single = llm.generate(PROMPTS[0], params)
    assert isinstance(single, list) and len(single) == 2
    batch = llm.generate(PROMPTS[:2], params)
    first, second = (llm.generate(p, GREEDY)["text"] for p in PROMPTS[:2])
    assert texts(batch) == [first, first, second, second]


def test_logprob_options_reach_the_runtime(llm):
    out = llm.generate(PROMPTS[0], GREEDY, return_logprob=True, top_logprobs_num=2, logprob_start_len=0)
    meta = out["meta_info"]
    assert len(meta["output_token_logprobs"]) == meta["completion_tokens"] == 6
    assert all(len(top) == 2 for top in meta["output_top_logprobs"]) and meta["input_token_logprobs"]
    mixed = llm.generate(PROMPTS[:2], GREEDY, return_logprob=[True, False])
    assert "output_token_logprobs" in mixed[0]["meta_info"] and "output_token_logprobs" not in mixed[1]["meta_info"]


def test_token_ids_logprob_is_taken_or_named(llm):
    if "token_ids_logprob" in FIELDS:
        out = llm.generate(PROMPTS[0], GREEDY, return_logprob=True, token_ids_logprob=[5, 7])
        assert out["meta_info"]["completion_tokens"] == 6
    else:
        with pytest.raises(NotImplementedError, match="token_ids_logprob"):
            llm.generate(PROMPTS[0], GREEDY, return_logprob=True, token_ids_logprob=[5, 7])


# ---------------------------------------------------------------------------- streaming and async
def test_a_stream_carries_the_text_so_far_then_the_result(llm):
    chunks = list(llm.generate(PROMPTS[0], GREEDY, stream=True))
    final = llm.generate(PROMPTS[0], GREEDY)
    for before, after in itertools.pairwise(chunks):
        assert after["text"].startswith(before["text"])
    assert all(c["meta_info"]["finish_reason"] is None for c in chunks[:-1]) and "index" not in chunks[-1]
    assert chunks[-1]["text"] == final["text"] and chunks[-1]["output_ids"] == final["output_ids"]
    assert chunks[-1]["meta_info"]["finish_reason"]["type"] == "length"


def test_a_batch_stream_tags_each_chunk_with_its_index(llm):
    chunks = list(llm.generate(PROMPTS, GREEDY, stream=True))
    last = {c["index"]: c for c in chunks if c["meta_info"]["finish_reason"] is not None}
    assert sorted(last) == [0, 1, 2]
    assert [last[i]["text"] for i in range(3)] == texts(llm.generate(PROMPTS, GREEDY))


def test_leaving_a_stream_early_frees_its_request(llm):
    stream = llm.generate(PROMPTS[1], {**GREEDY, "max_new_tokens": 200}, stream=True)
    next(stream)
    stream.close()  # the autouse check then finds every KV slot free


def test_async_generate_awaits_results_and_streams(llm):
    async def main():
        one = await llm.async_generate(PROMPTS[0], GREEDY)
        many = await llm.async_generate(PROMPTS, GREEDY)
        stream = await llm.async_generate(PROMPTS, GREEDY, stream=True)
        chunks = [chunk async for chunk in stream]
        return one, many, chunks

    one, many, chunks = asyncio.run(main())
    assert one["text"] == llm.generate(PROMPTS[0], GREEDY)["text"]
    assert texts(many) == texts(llm.generate(PROMPTS, GREEDY))
    final = {c["index"]: c["text"] for c in chunks if c["meta_info"]["finish_reason"] is not None}
    assert [final[i] for i in range(3)] == texts(many)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("kwargs", "named"), [
    ({"image_data": "cat.png"}, "image_data"), ({"lora_path": "adapter"}, "lora_path"),
    ({"return_hidden_states": True}, "return_hidden_states"), ({"custom_logit_processor": "{}"}, "custom_logit_processor"),
    ({"rid": "mine"}, "rid"), ({"audio_data": "a.wav"}, "audio_data"),
])
def test_arguments_this_engine_cannot_honour_are_named(llm, kwargs, named):
    with pytest.raises(NotImplementedError, match=named):
        llm.generate(PROMPTS[0], GREEDY, **kwargs)


def test_bad_arguments_are_clear_errors(llm):
    assert llm.generate(PROMPTS[:2], GREEDY, image_data=[None, None], routed_dp_rank=0)  # placeholders pass
    with pytest.raises(TypeError, match="no_such_argument"):
        llm.generate(PROMPTS[0], GREEDY, no_such_argument=1)
    with pytest.raises(ValueError, match="not both"):
        llm.generate(PROMPTS[0], GREEDY, input_ids=[1, 2, 3])
    with pytest.raises(ValueError, match="give a prompt"):
        llm.generate(sampling_params=GREEDY)
    with pytest.raises(ValueError, match="single request"):
        llm.generate(PROMPTS[0], [GREEDY])
    with pytest.raises(ValueError, match="2 entries for a batch of 3"):
        llm.generate(PROMPTS, [GREEDY, GREEDY])
    with pytest.raises(TypeError, match="no_such_param"):
        llm.generate(PROMPTS[0], {"no_such_param": 1})
    with pytest.raises(ValueError, match="temperature"):
        llm.generate(PROMPTS[0], {"temperature": -1}, stream=True)


# ---------------------------------------------------------------------------- control and server arguments
def test_server_info_flush_and_model_info(llm):
    info = llm.get_server_info()
    assert info["tp_size"] == 1 and info["device"] == "cpu" and info["max_total_num_tokens"] == 2048
    assert info["internal_states"][0]["pool_slots"] == 2048 and info["version"]
    assert info["cpu_memory"] == llm.runtime.model_info().cpu_memory
    assert llm.get_model_info()["is_generation"] is True
    flushed = llm.flush_cache()
    assert isinstance(flushed, FlushCacheReqOutput) and flushed.success and flushed


def test_server_args_map_onto_the_runtime():
    args = ServerArgs.from_kwargs(dtype="half", attention_backend="torch_native", chunked_prefill_size=-1,
                                  host="0.0.0.0", port=1234, disable_cuda_graph=True, tp_size=1)
    kwargs = args.runtime_kwargs("/some/folder")
    assert kwargs["dtype"] == "float16" and kwargs["attention_backend"] == "torch" and kwargs["device"] == "auto"
    assert kwargs["chunked_prefill_size"] == -1 and "schedule_policy" not in kwargs  # unset: the Runtime's default
    assert args.as_dict()["port"] == 1234 and args.as_dict()["dp_size"] == 1
    assert "enable_mixed_chunk" not in kwargs  # sglbench mixes by default, SGLang does not: only when asked
    assert ServerArgs.from_kwargs(enable_mixed_chunk=False).runtime_kwargs(None)["enable_mixed_chunk"] is False
    assert kwargs["disable_cuda_graph"] is True and "cuda_graph_max_bs" not in kwargs
    graphs = ServerArgs.from_kwargs(cuda_graph_max_bs=16, cuda_graph_bs=[1, 4, 16]).runtime_kwargs(None)
    assert graphs["cuda_graph_max_bs"] == 16 and graphs["cuda_graph_bs"] == [1, 4, 16]
    assert graphs["disable_cuda_graph"] is False
    assert "schedule_conservativeness" not in kwargs  # SGLang's scheduling knob reaches the scheduler when given
    assert ServerArgs.from_kwargs(schedule_conservativeness=1.3).runtime_kwargs(None)["schedule_conservativeness"] == 1.3


@pytest.mark.parametrize(("kwargs", "error", "named"), [
    ({"tp_size": 2}, ValueError, "tp_size=2 has no meaning here"),
    ({"dp_size": 2, "pp_size": 4}, ValueError, "dp_size=2.*pp_size=4"),
    ({"quantization": "fp8"}, ValueError, "quantization='fp8' is not available"),
    ({"attention_backend": "flashinfer"}, ValueError, "flashinfer"),
    ({"dtype": "int8"}, ValueError, "dtype"),
    ({"tokenizer_path": "/elsewhere"}, ValueError, "tokenizer_path"),
    ({"tp_sz": 2}, TypeError, "tp_sz.*did you mean 'tp_size'"),
])
def test_bad_server_arguments_fail_before_loading(kwargs, error, named):
    with pytest.raises(error, match=named):
        Engine(**kwargs)


@pytest.fixture
def sglbench_log_level():
    logger = logging.getLogger("sglbench")
    before = logger.level
    yield logger
    logger.setLevel(before)


def test_harmless_server_arguments_work(sglbench_log_level):
    logger = sglbench_log_level
    with sgl.Engine(device="cpu", max_total_tokens=256, log_level="warning", random_seed=7, schedule_policy="fcfs",
                    mem_fraction_static=0.5, disable_radix_cache=True, port=30001, skip_server_warmup=True) as eng:
        config = eng.runtime.config
        assert (config.random_seed, config.schedule_policy, config.disable_radix_cache) == (7, "fcfs", True)
        assert logger.level == logging.WARNING
        sampled = [eng.generate(PROMPTS[2], {"max_new_tokens": 4, "seed": 3})["text"] for _ in range(2)]
        assert sampled[0] == sampled[1]
    assert not eng.runtime.is_running
    with pytest.raises(RuntimeError, match="shut down"):
        eng.generate(PROMPTS[0], GREEDY)


# ---------------------------------------------------------------------------- Runtime.generate, SGLang style
def test_runtime_generate_takes_sampling_params_and_input_ids(llm):
    rt = llm.runtime
    keywords = rt.generate(PROMPTS[0], **GREEDY)
    assert rt.generate(PROMPTS[0], sampling_params=GREEDY)["output_ids"] == keywords["output_ids"]
    assert rt.generate(PROMPTS[0], GREEDY)["output_ids"] == keywords["output_ids"]  # positional, as SGLang's
    ids = rt.tokenizer.encode(PROMPTS[0])
    assert rt.generate(input_ids=ids, sampling_params=GREEDY)["output_ids"] == keywords["output_ids"]
    assert rt.generate(PROMPTS[0], {"max_new_tokens": 6}, temperature=0, ignore_eos=True)["output_ids"] == \
        keywords["output_ids"]  # sampling_params and keywords together
    batch = rt.generate(input_ids=[ids, ids], sampling_params=[GREEDY, {**GREEDY, "max_new_tokens": 2}])
    assert [len(r["output_ids"]) for r in batch] == [6, 2]
    assert "".join(rt.generate_stream(input_ids=ids, sampling_params=GREEDY)) == keywords["text"]

    async def main():
        many = await rt.async_generate(PROMPTS[:2], sampling_params=GREEDY)
        pieces = [p async for p in rt.async_generate_stream(PROMPTS[0], sampling_params=GREEDY)]
        return many, pieces

    many, pieces = asyncio.run(main())
    assert many[0]["output_ids"] == keywords["output_ids"] and "".join(pieces) == keywords["text"]


def test_runtime_generate_refuses_ambiguous_calls(llm):
    rt = llm.runtime
    with pytest.raises(ValueError, match="not both"):
        rt.generate(PROMPTS[0], input_ids=[1, 2])
    with pytest.raises(ValueError, match=r"\['temperature'\].*0.5 vs 0.7"):
        rt.generate(PROMPTS[0], sampling_params={"temperature": 0.5}, temperature=0.7)
    assert rt.generate(PROMPTS[0], sampling_params={"max_new_tokens": 2}, max_new_tokens=2)  # the same twice is fine
    with pytest.raises(TypeError, match="sampling_params must be a dict"):
        rt.generate(PROMPTS[0], sampling_params="greedy")
    with pytest.raises(ValueError, match="one prompt, not a batch"):
        list(rt.generate_stream(PROMPTS[:2], max_new_tokens=2))
    with pytest.raises(ValueError, match="prompt is empty"):
        rt.generate([], max_new_tokens=2)


def test_results_have_sglangs_meta_shapes(llm):
    """The same shapes as `sglbench serve` answers: [logprob, id, text] entries, a length stop as its length."""
    out = llm.generate("Q: What is 2 + 3?\nA:", {"max_new_tokens": 3, "temperature": 0, "ignore_eos": True},
                       return_logprob=True, top_logprobs_num=2)
    meta = out["meta_info"]
    assert meta["finish_reason"] == {"type": "length", "length": 3}
    assert all(len(entry) == 3 and entry[2] is None for entry in meta["output_token_logprobs"])
    assert meta["output_token_logprobs_length"] == 3 and len(meta["output_top_logprobs"][0]) == 2
    last = list(llm.generate("Hi", {"max_new_tokens": 2, "temperature": 0, "ignore_eos": True},
                             return_logprob=True, stream=True))[-1]
    assert last["meta_info"]["finish_reason"] == {"type": "length", "length": 2}
