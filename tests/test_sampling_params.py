"""Sampling parameters are defined once; the language, the HTTP translations and the server derive from it."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from sglbench.lang.ir import SglSamplingParams
from sglbench.runtime.sampling_params import (
    DEFAULTS,
    FIELDS,
    SamplingParams,
    from_openai,
    openai_request,
    openai_server_fields,
    sglang_request,
)
from sglbench.server.protocol import ChatCompletionRequest, CompletionRequest, GenerateRequest

LANGUAGE_ONLY = {"dtype", "return_text_in_logprobs"}  # the DSL's own; everything else is an engine parameter


def test_the_language_names_only_defined_parameters():
    names = {f.name for f in dataclasses.fields(SglSamplingParams)}
    assert names - LANGUAGE_ONLY <= FIELDS.keys()


def test_language_values_use_the_engine_names_and_dtype_becomes_a_regex():
    p = SglSamplingParams(max_new_tokens=4, stop="x", dtype=int, temperature=0)
    values = p.engine_values()
    assert values == {"max_new_tokens": 4, "stop": ("x",), "temperature": 0, "regex": values["regex"]}
    assert SamplingParams.from_kwargs(**values).grammar.kind == "regex"
    assert SglSamplingParams(dtype=int, regex="a").engine_values()["regex"] == "a"  # an explicit regex wins


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": -1}, "max_new_tokens must be a non-negative integer, got -1"),
        ({"temperature": -0.5}, "temperature must be >= 0, got -0.5"),
        ({"top_p": 0}, r"top_p must be in \(0, 1\], got 0"),
        ({"top_k": 0}, r"top_k must be -1 \(off\) or >= 1, got 0"),
        ({"n": 0}, "n must be a positive integer, got 0"),
        ({"min_new_tokens": 5, "max_new_tokens": 2}, "must not exceed max_new_tokens"),
        ({"regex": "a", "json_schema": "{}"}, "not both"),
        ({"json_schema": "{nope"}, "not valid JSON"),
    ],
)
def test_each_rule_is_a_value_error_naming_the_parameter(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams.from_kwargs(**kwargs)


def test_unknown_and_unimplemented_parameters():
    with pytest.raises(TypeError, match=r"unknown sampling parameter\(s\) \['temprature'\]"):
        SamplingParams.from_kwargs(temprature=1)
    with pytest.raises(NotImplementedError, match="structural_tag is not available in this runtime"):
        SamplingParams.from_kwargs(structural_tag="{}")


def test_sglang_body_places_each_parameter_where_sglang_reads_it():
    body = sglang_request({"max_new_tokens": 3, "stop": ("a", "b"), "return_logprob": True, "top_logprobs_num": 2,
                           "seed": 7, "stop_token_ids": ()})
    assert body == {"sampling_params": {"max_new_tokens": 3, "stop": ["a", "b"]}, "return_logprob": True,
                    "top_logprobs_num": 2}
    top_level = {name for name, spec in FIELDS.items() if spec.sglang == "request"}
    assert top_level == {"return_logprob", "logprob_start_len", "top_logprobs_num", "token_ids_logprob"}
    assert top_level <= GenerateRequest.model_fields.keys()


def test_openai_kwargs_standard_extra_and_refused():
    kwargs = openai_request({"max_new_tokens": 5, "temperature": 0, "stop": ("\n",), "top_k": 20, "min_p": 0.0,
                             "min_new_tokens": 2, "ignore_eos": False})
    assert kwargs == {"max_tokens": 5, "temperature": 0, "stop": ["\n"],
                      "extra_body": {"top_k": 20, "min_tokens": 2}}
    for name, value in [("regex", "a+"), ("json_schema", "{}"), ("stop_regex", "x"), ("return_logprob", True)]:
        with pytest.raises(ValueError, match=rf"gen\({name}=\.\.\.\)"):
            openai_request({name: value})


def test_server_models_take_the_openai_fields_and_map_them_back():
    standard = set(openai_server_fields())
    assert standard == {"temperature", "top_p", "n", "stop", "seed", "frequency_penalty", "presence_penalty",
                        "logit_bias"}
    assert standard <= CompletionRequest.model_fields.keys() and standard <= ChatCompletionRequest.model_fields.keys()
    body = CompletionRequest(model="m", prompt="hi", temperature=0.5, stop="x", n=2, seed=3)
    params = from_openai(body.model_dump(), max_new_tokens=body.max_tokens)
    assert (params.temperature, params.stop, params.n, params.seed, params.max_new_tokens) == (0.5, ("x",), 2, 3, 16)
    assert from_openai({}).temperature == DEFAULTS["temperature"]  # absent means this runtime's default


def test_the_definition_and_http_clients_load_without_torch():
    code = ("import sys, sglbench, sglbench.runtime.sampling_params, sglbench.lang.ir; "
            "sglbench.SamplingParams(max_new_tokens=1); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
