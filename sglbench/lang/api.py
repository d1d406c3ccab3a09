"""The public constructors, named and shaped as in SGLang (`import sglbench as sgl`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sglbench.lang.backend import as_backend, resolve_backend
from sglbench.lang.choices import (
    ChoicesSamplingMethod,
    greedy_token_selection,
    token_length_normalized,
    unconditional_likelihood_normalized,
)
from sglbench.lang.function import SglFunction
from sglbench.lang.global_config import global_config
from sglbench.lang.ir import (
    SglExpr,
    SglExprList,
    SglGen,
    SglImage,
    SglRoleBegin,
    SglRoleEnd,
    SglSamplingParams,
    SglSelect,
    SglSeparateReasoning,
    SglVideo,
    as_expr,
)
from sglbench.lang.reasoning import reasoning_format

__all__ = [
    "Anthropic", "LiteLLM", "VertexAI", "assistant", "assistant_begin", "assistant_end", "flush_cache", "function",
    "gen", "gen_int", "gen_string", "get_server_info", "global_config", "greedy_token_selection", "image", "select",
    "separate_reasoning", "set_default_backend", "system", "system_begin", "system_end", "token_length_normalized",
    "unconditional_likelihood_normalized", "user", "user_begin", "user_end", "video",
]


def function(func: Callable | None = None, num_api_spec_tokens: int | None = None):
    """Decorator making a program: `@sgl.function` or `@sgl.function(num_api_spec_tokens=...)`."""
    if func is not None:
        return SglFunction(func, num_api_spec_tokens=num_api_spec_tokens)
    return lambda f: SglFunction(f, num_api_spec_tokens=num_api_spec_tokens)


def set_default_backend(backend: Any) -> None:
    """The backend programs use when run() gets none: a `sglbench.Runtime` or any BaseBackend."""
    global_config.default_backend = as_backend(backend)


def flush_cache(backend: Any = None) -> bool:
    """Drop the backend's cached prefixes (default: the default backend); False without a backend, as in SGLang."""
    if backend is None and global_config.default_backend is None:
        return False
    return resolve_backend(backend).flush_cache()


def get_server_info(backend: Any = None) -> dict[str, Any] | None:
    """The backend's description of its server (default: the default backend); None without a backend."""
    if backend is None and global_config.default_backend is None:
        return None
    return resolve_backend(backend).get_server_info()


def _check_name(name: Any) -> None:
    if name is not None and not isinstance(name, str):
        raise TypeError(f"a variable name must be a str, got {type(name).__name__}")


def gen(
    name: str | None = None, max_tokens: int | None = None, min_tokens: int | None = None, n: int | None = None,
    stop: str | list[str] | None = None, stop_token_ids: list[int] | None = None,
    stop_regex: str | list[str] | None = None, temperature: float | None = None, top_p: float | None = None,
    top_k: int | None = None, min_p: float | None = None, frequency_penalty: float | None = None,
    presence_penalty: float | None = None,
    ignore_eos: bool | None = None, return_logprob: bool | None = None, logprob_start_len: int | None = None,
    top_logprobs_num: int | None = None, return_text_in_logprobs: bool | None = None, dtype: Any = None,
    choices: list[str] | None = None, choices_method: ChoicesSamplingMethod | None = None,
    regex: str | None = None, json_schema: str | None = None,
) -> SglGen | SglSelect:
    """Generate into variable `name`; with choices, a `select` among them. Unset arguments inherit run()'s."""
    _check_name(name)
    if choices is not None:
        conflicts = [k for k, v in (("regex", regex), ("json_schema", json_schema), ("dtype", dtype)) if v is not None]
        if conflicts:
            raise ValueError(f"gen() takes either choices or {', '.join(conflicts)}, not both")
        return select(name, choices, 0.0 if temperature is None else temperature,
                      choices_method or token_length_normalized)
    params = SglSamplingParams(
        max_new_tokens=max_tokens, min_new_tokens=min_tokens, n=n, stop=stop, stop_token_ids=stop_token_ids,
        stop_regex=stop_regex, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
        frequency_penalty=frequency_penalty, presence_penalty=presence_penalty, ignore_eos=ignore_eos,
        return_logprob=return_logprob, logprob_start_len=logprob_start_len, top_logprobs_num=top_logprobs_num,
        return_text_in_logprobs=return_text_in_logprobs, dtype=dtype, regex=regex, json_schema=json_schema,
    )
    return SglGen(name, params)


def gen_int(
    name: str | None = None, max_tokens: int | None = None, n: int | None = None,
    stop: str | list[str] | None = None, stop_token_ids: list[int] | None = None,
    stop_regex: str | list[str] | None = None, temperature: float | None = None, top_p: float | None = None,
    top_k: int | None = None, min_p: float | None = None, frequency_penalty: float | None = None,
    presence_penalty: float | None = None, ignore_eos: bool | None = None, return_logprob: bool | None = None,
    logprob_start_len: int | None = None, top_logprobs_num: int | None = None,
    return_text_in_logprobs: bool | None = None,
) -> SglGen:
    """gen constrained to an integer."""
    return gen(**locals(), dtype=int)  # type: ignore[return-value]


def gen_string(
    name: str | None = None, max_tokens: int | None = None, n: int | None = None,
    stop: str | list[str] | None = None, stop_token_ids: list[int] | None = None,
    stop_regex: str | list[str] | None = None, temperature: float | None = None, top_p: float | None = None,
    top_k: int | None = None, min_p: float | None = None, frequency_penalty: float | None = None,
    presence_penalty: float | None = None, ignore_eos: bool | None = None, return_logprob: bool | None = None,
    logprob_start_len: int | None = None, top_logprobs_num: int | None = None,
    return_text_in_logprobs: bool | None = None,
) -> SglGen:
    """gen constrained to a double-quoted string."""
    return gen(**locals(), dtype=str)  # type: ignore[return-value]


def select(name: str | None = None, choices: list[str] | None = None, temperature: float = 0.0,
           choices_method: ChoicesSamplingMethod = token_length_normalized) -> SglSelect:
    """Choose one of choices (the likeliest continuation under choices_method) into variable `name`."""
    _check_name(name)
    if not choices:
        raise ValueError("select() needs a non-empty list of choices")
    if isinstance(choices, str) or not all(isinstance(c, str) and c for c in choices):
        raise ValueError(f"select() choices must be non-empty strings, got {choices!r}")
    if not isinstance(choices_method, ChoicesSamplingMethod):
        raise TypeError(f"choices_method must be a ChoicesSamplingMethod such as sgl.token_length_normalized, "
                        f"got {choices_method!r}")
    return SglSelect(name, tuple(choices), float(temperature), choices_method)


def image(expr: str) -> SglImage:
    """An image input, by path (needs a vision-language model: running it on a text-only one is an error)."""
    return SglImage(str(expr))


def video(path: str, num_frames: int) -> SglVideo:
    """A video input, num_frames sampled from it (needs a vision-language model, as image does)."""
    if not isinstance(num_frames, int) or isinstance(num_frames, bool) or num_frames < 1:
        raise ValueError(f"video() num_frames must be a positive integer, got {num_frames!r}")
    return SglVideo(str(path), num_frames)


def _output_names(expr: SglExpr) -> list[str]:
    """Names of the gen/select calls in expr, each required (its output is what gets split)."""
    exprs = expr.exprs if isinstance(expr, SglExprList) else (expr,)
    calls = [e for e in exprs if isinstance(e, (SglGen, SglSelect))]
    if not calls or any(e.name is None for e in calls):
        raise ValueError("separate_reasoning needs a named gen or select, e.g. "
                         "sgl.separate_reasoning(sgl.gen(\"answer\"), model_type=\"deepseek-r1\")")
    return [e.name for e in calls]  # type: ignore[misc]


def separate_reasoning(expr: SglExpr | None = None, model_type: str | None = None) -> SglExprList:
    """expr, then its named outputs split in two: the model's thinking into `{name}_reasoning_content`,
    the rest into `name` (and the program's text). model_type names the thinking markers (e.g. "qwen3")."""
    if expr is None:
        raise ValueError("separate_reasoning needs the gen whose output to split")
    reasoning_format(model_type)
    expr = as_expr(expr)
    return SglExprList((expr, SglSeparateReasoning(str(model_type), tuple(_output_names(expr)))))


def _role(role: str, expr: Any) -> SglExprList:
    inner = () if expr is None else (as_expr(expr),)
    return SglExprList((SglRoleBegin(role), *inner, SglRoleEnd(role)))


def system(expr: Any = None) -> SglExprList:
    return _role("system", expr)


def user(expr: Any = None) -> SglExprList:
    return _role("user", expr)


def assistant(expr: Any = None) -> SglExprList:
    return _role("assistant", expr)


def system_begin() -> SglExpr:
    return SglRoleBegin("system")


def system_end() -> SglExpr:
    return SglRoleEnd("system")


def user_begin() -> SglExpr:
    return SglRoleBegin("user")


def user_end() -> SglExpr:
    return SglRoleEnd("user")


def assistant_begin() -> SglExpr:
    return SglRoleBegin("assistant")


def assistant_end() -> SglExpr:
    return SglRoleEnd("assistant")


def _unavailable(name: str, sdk: str) -> type:
    """A stand-in for one of SGLang's hosted-API backends that sglbench does not carry."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            f"sgl.{name} is SGLang's backend for {sdk}, which sglbench does not include (it needs that SDK and an "
            "account). Run the program on sgl.OpenAI(model, base_url=...) against any OpenAI-compatible "
            "endpoint, sgl.RuntimeEndpoint(url) or an in-process sgl.Runtime()")

    return type(name, (), {"__init__": __init__, "__doc__": f"Not available in sglbench: {sdk}."})


Anthropic = _unavailable("Anthropic", "Anthropic's API (the `anthropic` SDK)")
LiteLLM = _unavailable("LiteLLM", "the `litellm` SDK's providers")
VertexAI = _unavailable("VertexAI", "Google Vertex AI (the `vertexai` SDK and a GCP project)")
