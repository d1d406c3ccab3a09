"""The arguments of a generate call, read once for `Runtime` and `sgl.Engine`: text or input_ids, one request
or a batch, sampling parameters as SGLang's `sampling_params` dict (or one per prompt) and/or loose keywords.
Torch-free."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sglbench.runtime.sampling_params import SamplingParams

Prompt = str | list[int]


@dataclass(frozen=True)
class GenerateCall:
    """One (prompt, params) pair per request; `batch`: the caller gave a list, so gets a list back."""

    prompts: tuple[Prompt, ...]
    params: tuple[SamplingParams, ...]
    batch: bool


def parse_generate_call(prompt: Any = None, sampling_params: Any = None, input_ids: Any = None,
                        sampling_kwargs: Mapping[str, Any] | None = None) -> GenerateCall:
    """Check and normalize a generate call's arguments; ValueError/TypeError name what is wrong."""
    prompts, batch = split_prompts(prompt, input_ids)
    dicts = per_request(sampling_params, len(prompts), batch, "sampling_params")
    params = tuple(SamplingParams.from_kwargs(**merge_sampling(d, sampling_kwargs or {})) for d in dicts)
    return GenerateCall(tuple(prompts), params, batch)


def split_prompts(prompt: Any, input_ids: Any) -> tuple[list[Prompt], bool]:
    """The requests' prompts and whether they came as a batch. A prompt may itself be token ids, as before."""
    if prompt is not None and input_ids is not None:
        raise ValueError("give the prompt as text or as input_ids, not both")
    if input_ids is not None:
        if _is_ids(input_ids):
            return [list(input_ids)], False
        if isinstance(input_ids, (list, tuple)) and input_ids and all(_is_ids(ids) for ids in input_ids):
            return [list(ids) for ids in input_ids], True
        raise _bad_prompt("input_ids", input_ids, "a non-empty list of token ids, or a list of such lists")
    if prompt is None:
        raise ValueError("give a prompt: text (prompt=) or token ids (input_ids=)")
    if isinstance(prompt, str) or _is_ids(prompt):
        return [prompt], False
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) or _is_ids(p) for p in prompt):
        return list(prompt), True
    raise _bad_prompt("prompt", prompt, "a str, a list of token ids, or a list of those")


def per_request(value: Any, count: int, batch: bool, name: str) -> list:
    """One value per request: a list gives one each (a batch of the same length); anything else is shared."""
    if not isinstance(value, list):
        return [value] * count
    if not batch:
        raise ValueError(f"{name} is a list, but the prompt is a single request: give one value")
    if len(value) != count:
        raise ValueError(f"{name} has {len(value)} entries for a batch of {count} prompts")
    return value


def merge_sampling(params: Mapping[str, Any] | None, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A sampling_params dict and loose keyword arguments as one dict; a name given both ways with different
    values is a ValueError."""
    if params is None:
        return dict(kwargs)
    if not isinstance(params, Mapping):
        raise TypeError(f"sampling_params must be a dict (or, for a batch, a list of dicts), got {type(params).__name__}")
    clash = {k: (params[k], kwargs[k]) for k in sorted(params.keys() & kwargs.keys()) if params[k] != kwargs[k]}
    if clash:
        detail = ", ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in clash.items())
        raise ValueError(f"sampling parameter(s) {sorted(clash)} given both in sampling_params and as keyword "
                         f"arguments, with different values ({detail}); give each once")
    return {**params, **kwargs}


def _is_ids(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and bool(value)
            and all(isinstance(t, int) and not isinstance(t, bool) for t in value))


def _bad_prompt(name: str, value: Any, expected: str) -> Exception:
    if isinstance(value, (list, tuple, str)) and not value:
        return ValueError(f"{name} is empty: give a non-empty text or input_ids")
    return TypeError(f"{name} must be {expected}, got {type(value).__name__}")
