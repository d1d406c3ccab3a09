"""SGLang 0.5.23's frontend, name for name: the public names of `sglang/__init__.py`, the parameters of
`lang/api.py`'s constructors and of `SglFunction`, the `ProgramState`/`ProgramStateGroup` methods and the
`global_config` fields, each listed here as SGLang defines them (no model needed)."""

from __future__ import annotations

import inspect

import pytest

import sglbench as sgl
from sglbench.lang.function import SglFunction
from sglbench.lang.interpreter import ProgramState, ProgramStateGroup

SGLANG_ALL = [
    "Anthropic", "Crusoe", "Engine", "LiteLLM", "OpenAI", "Runtime", "RuntimeEndpoint", "ServerArgs", "VertexAI",
    "__version__", "assistant", "assistant_begin", "assistant_end", "flush_cache", "function", "gen", "gen_int",
    "gen_string", "get_server_info", "global_config", "greedy_token_selection", "image", "select",
    "separate_reasoning", "set_default_backend", "system", "system_begin", "system_end", "token_length_normalized",
    "unconditional_likelihood_normalized", "user", "user_begin", "user_end", "video",
]

_SAMPLING = ["temperature", "top_p", "top_k", "min_p", "frequency_penalty", "presence_penalty", "ignore_eos",
             "return_logprob", "logprob_start_len", "top_logprobs_num", "return_text_in_logprobs"]
# Each constructor's parameters, in SGLang's order.
SIGNATURES = {
    "gen": ["name", "max_tokens", "min_tokens", "n", "stop", "stop_token_ids", "stop_regex", *_SAMPLING, "dtype",
            "choices", "choices_method", "regex", "json_schema"],
    "gen_int": ["name", "max_tokens", "n", "stop", "stop_token_ids", "stop_regex", *_SAMPLING],
    "gen_string": ["name", "max_tokens", "n", "stop", "stop_token_ids", "stop_regex", *_SAMPLING],
    "select": ["name", "choices", "temperature", "choices_method"],
    "function": ["func", "num_api_spec_tokens"],
    "image": ["expr"],
    "video": ["path", "num_frames"],
    "separate_reasoning": ["expr", "model_type"],
    "set_default_backend": ["backend"],
    "flush_cache": ["backend"],
    "get_server_info": ["backend"],
    "system": ["expr"], "user": ["expr"], "assistant": ["expr"],
    "system_begin": [], "system_end": [], "user_begin": [], "user_end": [], "assistant_begin": [],
    "assistant_end": [],
}
# Leading parameters of the backends' constructors (sglbench adds keyword-only ones after them).
BACKEND_SIGNATURES = {
    "RuntimeEndpoint": ["base_url", "api_key", "verify", "chat_template_name"],
    "OpenAI": ["model_name", "is_chat_model", "chat_template", "is_azure"],
    "Crusoe": ["model_name", "api_key", "base_url", "chat_template"],
}
PROGRAM_STATE_METHODS = [
    "system", "user", "assistant", "var_scope", "fork", "copy", "text", "messages", "sync", "error", "text_iter",
    "text_async_iter", "get_var", "set_var", "get_meta_info", "__iadd__", "__getitem__", "__setitem__",
    "__contains__", "__repr__",
]
GLOBAL_CONFIG = {"verbosity": 0, "default_backend": None, "skip_special_tokens_in_output": True,
                 "spaces_between_special_tokens_in_out": True, "enable_precache_with_tracing": True,
                 "enable_parallel_encoding": True}


def parameters(fn) -> list[str]:
    return [p.name for p in inspect.signature(fn).parameters.values() if p.kind is not p.VAR_KEYWORD]


def test_every_public_name_of_sglang_exists():
    missing = [name for name in SGLANG_ALL if name not in dir(sgl)]
    assert not missing, f"sglbench lacks SGLang's {missing}"


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_constructors_take_sglangs_parameters_in_order(name):
    assert parameters(getattr(sgl, name)) == SIGNATURES[name]


@pytest.mark.parametrize("name", sorted(BACKEND_SIGNATURES))
def test_backends_start_with_sglangs_parameters(name):
    expected = BACKEND_SIGNATURES[name]
    assert parameters(getattr(sgl, name))[:len(expected)] == expected


def test_sgl_function_methods_take_sglangs_keywords():
    assert {"stream", "backend", "use_thread"} <= set(parameters(SglFunction.run))
    assert {"batch_kwargs", "backend", "num_threads", "progress_bar", "generator_style"} <= set(
        parameters(SglFunction.run_batch))
    assert "backend" in parameters(SglFunction.trace) and parameters(SglFunction.cache) == ["self", "backend"]
    assert parameters(SglFunction.bind)[0] == "self" and callable(SglFunction.__call__)
    program = sgl.function(lambda s, a, b=2: None)
    assert program.arg_names == ["a", "b"] and program.arg_defaults == [2] and program.num_api_spec_tokens is None


def test_program_state_and_group_methods():
    assert [m for m in PROGRAM_STATE_METHODS if not hasattr(ProgramState, m)] == []
    assert parameters(ProgramState.fork) == ["self", "size", "position_ids_offset"]
    assert parameters(ProgramState.copy) == ["self", "position_ids_offset"]
    assert parameters(ProgramState.text_iter) == ["self", "var_name"]
    assert parameters(ProgramState.text_async_iter) == ["self", "var_name", "return_meta_data"]
    assert [m for m in ("join", "__getitem__", "__setitem__", "__iadd__") if not hasattr(ProgramStateGroup, m)] == []
    assert parameters(ProgramStateGroup.join) == ["self", "mode"]


def test_global_config_has_sglangs_fields_and_defaults():
    config = type(sgl.global_config)()
    assert {name: getattr(config, name) for name in GLOBAL_CONFIG} == GLOBAL_CONFIG


def test_expressions_keep_sglangs_attribute_names():
    g = sgl.gen("x", max_tokens=3, stop_regex=["a+", "b"])
    assert g.name == "x" and g.sampling_params.max_new_tokens == 3 and g.sampling_params.stop_regex == ("a+", "b")
    assert sgl.gen_int("n", stop_regex=r"\n").sampling_params.stop_regex == r"\n"
    assert sgl.gen_string("t", stop_regex="!").params.dtype is str
    v = sgl.video("clip.mp4", 8)
    assert (v.path, v.num_frames) == ("clip.mp4", 8) and sgl.image("cat.png").path == "cat.png"


@pytest.mark.parametrize("name", ["Anthropic", "LiteLLM", "VertexAI"])
def test_hosted_backends_without_an_sdk_are_clear_errors(name):
    with pytest.raises(NotImplementedError, match=rf"sgl\.{name} .*sglbench does not include.*sgl\.OpenAI"):
        getattr(sgl, name)("some-model")


def test_crusoe_is_the_openai_backend_with_crusoes_defaults(monkeypatch):
    monkeypatch.delenv("CRUSOE_API_KEY", raising=False)
    with pytest.raises(ValueError, match="CRUSOE_API_KEY"):
        sgl.Crusoe("meta-llama/Llama-3.1-8B-Instruct")
    backend = sgl.Crusoe("meta-llama/Llama-3.1-8B-Instruct", api_key="k")
    assert isinstance(backend, sgl.OpenAI) and "crusoecloud.com" in backend.base_url
    assert backend.get_model_name() == "meta-llama/Llama-3.1-8B-Instruct" and backend.is_chat_model
    backend.close()


def test_bad_reasoning_and_video_arguments():
    with pytest.raises(ValueError, match=r"model_type, one of .*deepseek-r1"):
        sgl.separate_reasoning(sgl.gen("a"), model_type="nope")
    with pytest.raises(ValueError, match="named gen"):
        sgl.separate_reasoning(sgl.gen(), model_type="qwen3")
    with pytest.raises(ValueError, match="num_frames"):
        sgl.video("clip.mp4", 0)


def test_flush_cache_and_server_info_without_a_backend(monkeypatch):
    monkeypatch.setattr(sgl.global_config, "default_backend", None)
    assert sgl.flush_cache() is False and sgl.get_server_info() is None
