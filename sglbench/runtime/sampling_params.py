"""Sampling parameters, defined once: name, default, validation, and which backends take each.

`SamplingParams` is the one definition. Every field carries a `Spec` (its rule, what it means, and
where SGLang's /generate and the OpenAI API carry it); the language's translations (to this
runtime, to an SGLang server, to an OpenAI-compatible server) and the HTTP server's request models
are derived from these fields, so a new parameter is one field here. Torch-free: HTTP clients and
the server's protocol import it without loading the engine.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

GRAMMAR_KINDS = ("regex", "json_schema", "ebnf")  # also the names of the fields that give each (one at most)
_EPS = 1e-6


@dataclass(frozen=True)
class GrammarSpec:
    """What a request's output must match: kind "regex" (Python's dialect), "json_schema" (a JSON string) or
    "ebnf" (xgrammar's EBNF, rule `root` first)."""

    kind: str
    pattern: str

    def __post_init__(self) -> None:
        if self.kind not in GRAMMAR_KINDS:
            raise ValueError(f"grammar kind must be one of {GRAMMAR_KINDS}, got {self.kind!r}")


def normalize_json_schema(schema: str | dict) -> str:
    """A JSON schema as a JSON string (dicts are serialized, key order kept); ValueError if not JSON."""
    if isinstance(schema, dict):
        return json.dumps(schema)
    if not isinstance(schema, str):
        raise ValueError(f"json_schema must be a JSON string or a dict, got {type(schema).__name__}")
    try:
        json.loads(schema)
    except json.JSONDecodeError as exc:
        raise ValueError(f"json_schema {schema!r} is not valid JSON: {exc}") from exc
    return schema


def lone_surrogate_at(text: str) -> int | None:
    """The index of the first lone UTF-16 surrogate (U+D800..U+DFFF) in text, or None: such a string is not
    valid Unicode, so no tokenizer or UTF-8 encoder takes it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def check_no_lone_surrogate(text: str, what: str) -> None:
    """ValueError naming `what` when text holds a lone surrogate (see `lone_surrogate_at`)."""
    at = lone_surrogate_at(text)
    if at is not None:
        raise ValueError(f"{what} contains a lone surrogate (U+D800..U+DFFF) at position {at}")


def _text_list(name: str) -> Callable[[Any], tuple[str, ...]]:
    """stop, stop_regex: one string or a list of them, empty ones dropped; anything else is a ValueError
    naming the field (a stop of [1] used to fail inside a batch)."""

    def convert(value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = (value,)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be a string or a list of strings, got {value!r}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise ValueError(f"{name} must be a string or a list of strings, got {item!r} at index {i}")
            check_no_lone_surrogate(item, f"{name}[{i}]")
        return tuple(s for s in value if s)

    return convert


_strings = _text_list("stop")


def _token_ids(name: str) -> Callable[[Any], tuple[int, ...]]:
    """stop_token_ids, token_ids_logprob: a list of token ids (integers >= 0; not floats, strings or bools).
    The vocabulary bound is the engine's (`Engine.validate_params`)."""

    def convert(value: Any) -> tuple[int, ...]:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be a list of token ids, got {value!r}")
        bad = [t for t in value if not _is_int(t) or t < 0]
        if bad:
            raise ValueError(f"{name} must be a list of token ids (integers >= 0), got {bad[:5]}")
        return tuple(int(t) for t in value)

    return convert


def _stop_regexes(value: Any) -> tuple[str, ...]:
    """stop_regex: one Python regex or several, each checked here so a bad one fails at submission."""
    patterns = _text_list("stop_regex")(value)
    for pattern in patterns:
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"stop_regex {pattern!r} is not a valid regular expression: {exc}") from None
        if compiled.search("") is not None:
            raise ValueError(f"stop_regex {pattern!r} matches the empty string: it would stop at once")
    return patterns


def _token_id(key: Any) -> int:
    """A logit_bias key: a token id, as an int or (JSON object keys are strings) its decimal string."""
    if isinstance(key, int) and not isinstance(key, bool):
        token = key
    elif isinstance(key, str) and key.strip().isdigit():
        token = int(key)
    else:
        raise ValueError(f"logit_bias keys must be token ids (int or decimal string), got {key!r}")
    if token < 0:
        raise ValueError(f"logit_bias keys must be token ids >= 0, got {key!r}")
    return token


def _logit_bias(value: Any) -> dict[int, float]:
    """logit_bias: {token id: bias added to its logit}, keys as ints; each bias a finite number."""
    if not isinstance(value, Mapping):
        raise ValueError(f"logit_bias must be a dict of token id -> bias, got {value!r}")
    bias = {}
    for key, b in value.items():
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b):
            raise ValueError(f"logit_bias[{key!r}] must be a finite number, got {b!r}")
        bias[_token_id(key)] = float(b)
    return bias


def _is_int(value: Any) -> bool:
    """An integer (numpy's too), bools excluded (True is not a token id or a count)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite real number, bools excluded: NaN and inf would reach the sampler's tensors."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_seed(value: Any) -> bool:
    return _is_int(value) and -(2**63) <= value < 2**63


_SEED_RULE = "an integer in [-2**63, 2**63)"  # SGLang's; torch.Generator takes it and seed + i for n > 1


@dataclass(frozen=True)
class Spec:
    """One sampling parameter's contract.

    rule/valid: the message "NAME must be RULE, got VALUE" when valid(value) is false.
    convert: normalizes a given value (e.g. one stop string -> a tuple).
    sglang: where SGLang's /generate body carries it: inside "sampling_params", at the top level
      ("request"), or not at all (None).
    openai: its name in the OpenAI API; openai_extra: its name in the request body of servers that
      take it beyond the API (vLLM, SGLang), sent only when it differs from the default;
      openai_missing: why the OpenAI API cannot carry it (set only where a user may ask for it).
    serve_extra: whether `sglbench serve`'s OpenAI routes take it in the body under its own name, beyond
      the API (as SGLang's server takes regex, ebnf, stop_regex...); openai_extra fields are taken too.
    json_type: the type a JSON body carries when it differs from the field's (stop: str | list[str]).
    runtime: whether this engine implements it (a value other than the default is a NotImplementedError);
      runtime_missing: what to use instead.
    kind: "int", "number" or "bool" when the value must be one, checked before the rule ("top_k must be an integer,
      got 1.5"): a float where an int belongs, or NaN, would fail later inside the engine's step.
    """

    rule: str = ""
    valid: Callable[[Any], bool] | None = None
    convert: Callable[[Any], Any] | None = None
    sglang: Literal["sampling_params", "request"] | None = "sampling_params"
    openai: str | None = None
    openai_extra: str | None = None
    openai_missing: str = ""
    serve_extra: bool = False
    json_type: Any = None
    runtime: bool = True
    runtime_missing: str = ""
    kind: Literal["int", "number", "bool"] | None = None


_KIND_NAMES = {"int": "an integer", "number": "a finite number", "bool": "true or false"}
_KIND_CHECKS = {"int": _is_int, "number": _is_number, "bool": lambda v: isinstance(v, bool)}


def _param(default: Any, **spec: Any) -> Any:
    return field(default=default, metadata={"spec": Spec(**spec)})


def _int_at_least(low: int) -> Callable[[Any], bool]:
    return lambda v: _is_int(v) and v >= low


_CONSTRAINED = "needs constrained decoding, which the OpenAI API does not offer"
_NO_LOGPROBS = "is not supported on the OpenAI backend"


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decoding settings, named as in SGLang's sampling params (the one definition)."""

    max_new_tokens: int = _param(128, rule="a non-negative integer", valid=_int_at_least(0), openai="max_tokens",
                                 kind="int")
    min_new_tokens: int = _param(0, rule="a non-negative integer", valid=_int_at_least(0), openai_extra="min_tokens",
                                 kind="int")
    temperature: float = _param(1.0, rule=">= 0", valid=lambda v: v >= 0, openai="temperature", kind="number")
    top_p: float = _param(1.0, rule="in (0, 1]", valid=lambda v: 0 < v <= 1, openai="top_p", kind="number")
    # Larger than the vocabulary means no restriction (the sampler clamps it).
    top_k: int = _param(-1, rule="-1 (off) or >= 1", valid=lambda v: v == -1 or v >= 1, openai_extra="top_k",
                        kind="int")
    min_p: float = _param(0.0, rule="in [0, 1]", valid=lambda v: 0 <= v <= 1, openai_extra="min_p", kind="number")
    frequency_penalty: float = _param(0.0, rule="in [-2, 2]", valid=lambda v: -2 <= v <= 2, openai="frequency_penalty",
                                      kind="number")
    presence_penalty: float = _param(0.0, rule="in [-2, 2]", valid=lambda v: -2 <= v <= 2, openai="presence_penalty",
                                     kind="number")
    stop: tuple[str, ...] = _param((), convert=_strings, openai="stop", json_type=str | list[str])
    stop_token_ids: tuple[int, ...] = _param((), convert=_token_ids("stop_token_ids"), openai_extra="stop_token_ids")
    stop_regex: tuple[str, ...] = _param((), convert=_stop_regexes, openai_missing=_CONSTRAINED,
                                         serve_extra=True, json_type=str | list[str])
    ignore_eos: bool = _param(False, openai_extra="ignore_eos", kind="bool")
    n: int = _param(1, rule="a positive integer", valid=_int_at_least(1), openai="n", kind="int")
    seed: int | None = _param(None, rule=_SEED_RULE, valid=_is_seed, sglang=None, openai="seed", kind="int")
    skip_special_tokens: bool = _param(True, serve_extra=True, kind="bool")
    return_logprob: bool = _param(False, sglang="request", openai_missing=_NO_LOGPROBS, kind="bool")
    logprob_start_len: int = _param(-1, rule="-1 (none) or >= 0", valid=lambda v: v >= -1, sglang="request",
                                    openai_missing=_NO_LOGPROBS, kind="int")
    # At most the vocabulary (`Engine.validate_params`) and `RequestLimits.max_top_logprobs_num`.
    top_logprobs_num: int = _param(0, rule=">= 0", valid=lambda v: v >= 0, sglang="request",
                                   openai_missing=_NO_LOGPROBS, kind="int")
    regex: str | None = _param(None, rule="a string", valid=lambda v: isinstance(v, str), openai_missing=_CONSTRAINED,
                               serve_extra=True)
    json_schema: str | None = _param(None, convert=normalize_json_schema, openai_missing=_CONSTRAINED,
                                     serve_extra=True, json_type=str | dict[str, Any])
    # SGLang's further fields (its srt/sampling/sampling_params.py and GenerateReqInput)
    repetition_penalty: float = _param(1.0, rule="in (0, 2]", valid=lambda v: 0 < v <= 2,
                                       openai_extra="repetition_penalty", kind="number")
    no_stop_trim: bool = _param(False, openai_extra="no_stop_trim", kind="bool")
    logit_bias: Mapping[int, float] | None = _param(None, convert=_logit_bias, openai="logit_bias",
                                                    json_type=dict[str, float])
    sampling_seed: int | None = _param(None, rule=_SEED_RULE, valid=_is_seed, openai_extra="seed", kind="int")
    spaces_between_special_tokens: bool = _param(True, openai_extra="spaces_between_special_tokens", kind="bool")
    ebnf: str | None = _param(None, rule="a string", valid=lambda v: isinstance(v, str),
                              openai_missing=_CONSTRAINED, serve_extra=True)
    # Returned with return_logprob (ignored without, as SGLang), like top_logprobs_num.
    token_ids_logprob: tuple[int, ...] = _param((), convert=_token_ids("token_ids_logprob"), sglang="request",
                                                openai_missing=_NO_LOGPROBS)
    stream_interval: int | None = _param(None, rule="a positive integer", valid=_int_at_least(1),
                                         kind="int")  # k tokens
    # Data for a custom logit processor, which this runtime does not run (nor SGLang without one): unused.
    custom_params: Mapping[str, Any] | None = _param(None, rule="a dict",
                                                     valid=lambda v: isinstance(v, Mapping))
    structural_tag: str | None = _param(
        None, openai_missing=_CONSTRAINED, runtime=False,
        runtime_missing="constrain the output with regex=, json_schema= or ebnf= instead")
    beam_width: int = _param(
        1, rule="a positive integer", valid=_int_at_least(1), runtime=False, kind="int",
        runtime_missing="beam search is not implemented; sample with n=... or score with select()")
    watermark: Mapping[str, Any] | bool | None = _param(
        None, runtime=False, runtime_missing="this runtime does not watermark its output")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            spec, value = f.metadata["spec"], getattr(self, f.name)
            if value is None and f.default is not None:  # None means the default
                object.__setattr__(self, f.name, f.default)
                continue
            if value is None or _is_default(value, f.default):
                continue
            if spec.convert is not None:
                value = spec.convert(value)
                object.__setattr__(self, f.name, value)
            if spec.kind is not None and not _KIND_CHECKS[spec.kind](value):
                raise ValueError(f"{f.name} must be {_KIND_NAMES[spec.kind]}, got {value!r}")
            if spec.valid is not None and not spec.valid(value):
                raise ValueError(f"{f.name} must be {spec.rule}, got {value!r}")
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"min_new_tokens ({self.min_new_tokens}) must not exceed max_new_tokens ({self.max_new_tokens})")
        grammars = [kind for kind in GRAMMAR_KINDS if getattr(self, kind) is not None]
        if len(grammars) > 1:
            raise ValueError(f"give one of {', '.join(GRAMMAR_KINDS)}, not both {' and '.join(grammars)}")
        if self.grammar is not None and self.min_new_tokens:
            raise ValueError("min_new_tokens cannot be combined with regex/json_schema/ebnf "
                             "(the grammar decides where the output ends)")
        if self.sampling_seed is not None:  # SGLang's name for seed: folded into seed, what the runtime reads
            if self.seed is not None and self.seed != self.sampling_seed:
                raise ValueError(f"seed={self.seed} and sampling_seed={self.sampling_seed} differ: "
                                 "sampling_seed is SGLang's name for seed, give one")
            object.__setattr__(self, "seed", self.sampling_seed)
            object.__setattr__(self, "sampling_seed", None)

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> SamplingParams:
        """Build from keyword arguments (None means the default), rejecting unknown names with the
        list of known ones and, with NotImplementedError, parameters this runtime does not implement."""
        unknown = sorted(set(kwargs) - FIELDS.keys())
        if unknown:
            raise TypeError(f"unknown sampling parameter(s) {unknown}; known: {sorted(FIELDS)}")
        given = {k: v for k, v in kwargs.items() if v is not None}
        _refuse_unimplemented(given)
        return cls(**given)

    def check_implemented(self) -> None:
        """NotImplementedError naming a parameter set to something this runtime does not implement."""
        _refuse_unimplemented({name: getattr(self, name) for name in UNIMPLEMENTED})

    @property
    def greedy(self) -> bool:
        return self.temperature < _EPS or self.top_k == 1

    @property
    def grammar(self) -> GrammarSpec | None:
        """The constraint on the output, if any."""
        for kind in GRAMMAR_KINDS:
            if getattr(self, kind) is not None:
                return GrammarSpec(kind, getattr(self, kind))
        return None

    # Read by the sampler every step for every request: computed once per instance (frozen, so never stale).
    @functools.cached_property
    def uses_penalties(self) -> bool:
        """Whether the output's token counts change the logits (frequency, presence or repetition penalty)."""
        return self.frequency_penalty != 0 or self.presence_penalty != 0 or self.repetition_penalty != 1

    @functools.cached_property
    def adjusts_logits(self) -> bool:
        """Whether the sampler changes this request's logits before the grammar mask (penalties, bias)."""
        return self.uses_penalties or bool(self.logit_bias)

    def replace(self, **changes: Any) -> SamplingParams:
        return dataclasses.replace(self, **changes)


def _is_default(value: Any, default: Any) -> bool:
    """value is the field's default, of the same type (-1.0 is not top_k's default -1: it is checked)."""
    return value is default or (type(value) is type(default) and value == default)


FIELDS: dict[str, Spec] = {f.name: f.metadata["spec"] for f in dataclasses.fields(SamplingParams)}
DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(SamplingParams)}
UNIMPLEMENTED: tuple[str, ...] = tuple(name for name, spec in FIELDS.items() if not spec.runtime)


def _refuse_unimplemented(values: Mapping[str, Any]) -> None:
    """NotImplementedError for the first parameter this runtime lacks that is set to a non-default value."""
    for name in UNIMPLEMENTED:
        value = values.get(name)
        if value is not None and value != DEFAULTS[name]:
            raise NotImplementedError(f"{name}={value!r}: {name} is not available in this runtime; "
                                      f"{FIELDS[name].runtime_missing}")


@dataclass(frozen=True)
class RequestLimits:
    """Bounds on what one request may ask, beyond what the model allows, so that no request makes every
    step slow for the others (10,000 stop strings slowed a co-batched request 5.6x) or its answer huge
    (top_logprobs_num=4096 for 200 tokens gave 21.6 MB). `Runtime.submit` checks them; None: no limit."""

    max_stop_strings: int | None = 64  # entries of stop, and of stop_regex
    max_stop_string_length: int | None = 1024  # characters of one stop string or stop regex
    max_top_logprobs_num: int | None = 64
    max_token_ids_logprob: int | None = 1024  # entries of token_ids_logprob

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None and not (_is_int(value) and value >= 1):
                raise ValueError(f"RequestLimits.{f.name} must be a positive integer or None, got {value!r}")

    def check(self, params: SamplingParams) -> None:
        """ValueError naming the first limit params exceed and how to raise it."""
        longest = max(map(len, params.stop + params.stop_regex), default=0)
        checks = [(len(params.stop), "stop has {} strings", "max_stop_strings"),
                  (len(params.stop_regex), "stop_regex has {} patterns", "max_stop_strings"),
                  (longest, "a stop string or regex has {} characters", "max_stop_string_length"),
                  (params.top_logprobs_num, "top_logprobs_num is {}", "max_top_logprobs_num"),
                  (len(params.token_ids_logprob), "token_ids_logprob has {} ids", "max_token_ids_logprob")]
        for value, what, limit_name in checks:
            limit = getattr(self, limit_name)
            if limit is not None and value > limit:
                raise ValueError(f"{what.format(value)}, over this runtime's limit of {limit} ({limit_name}; "
                                 f"raise it with RequestLimits({limit_name}=...), or None for no limit)")


# ---------------------------------------------------------------------------- derived translations
def _json_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _given(values: Mapping[str, Any]) -> dict[str, Any]:
    """The known parameters that are set: not None and not an empty sequence."""
    unknown = sorted(set(values) - FIELDS.keys())
    if unknown:
        raise TypeError(f"unknown sampling parameter(s) {unknown}; known: {sorted(FIELDS)}")
    return {k: v for k, v in values.items() if v is not None and v != ()}


def sglang_request(values: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of an SGLang /generate body these parameters make: {"sampling_params": {...}, top-level fields}."""
    body: dict[str, Any] = {"sampling_params": {}}
    for name, value in _given(values).items():
        where = FIELDS[name].sglang
        if where == "sampling_params":
            body["sampling_params"][name] = _json_value(value)
        elif where == "request":
            body[name] = _json_value(value)
    return body


def openai_request(values: Mapping[str, Any]) -> dict[str, Any]:
    """openai SDK keyword arguments for these parameters (extras in `extra_body`); ValueError naming
    a parameter the OpenAI API cannot carry."""
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for name, value in _given(values).items():
        spec = FIELDS[name]
        if spec.openai is not None:
            kwargs[spec.openai] = _json_value(value)
        elif spec.openai_extra is not None:
            if value != DEFAULTS[name]:
                extra[spec.openai_extra] = _json_value(value)
        elif spec.openai_missing and value != DEFAULTS[name]:
            raise ValueError(f"gen({name}=...) {spec.openai_missing}; run the program on "
                             "sgl.RuntimeEndpoint (an SGLang server) or an sgl.Runtime")
    if extra:
        kwargs["extra_body"] = extra
    return kwargs


def sglang_top_level_fields() -> dict[str, tuple[Any, Any]]:
    """The sampling fields SGLang's /generate body carries beside sampling_params, as pydantic field definitions."""
    hints = typing.get_type_hints(SamplingParams)
    return {name: (hints[name], DEFAULTS[name]) for name, spec in FIELDS.items() if spec.sglang == "request"}


def openai_server_fields() -> dict[str, tuple[Any, Any]]:
    """The standard OpenAI sampling fields the server accepts, as pydantic field definitions (all
    optional: None means this runtime's default); max_tokens is left to each endpoint, whose defaults differ."""
    hints = typing.get_type_hints(SamplingParams)
    return {spec.openai: ((spec.json_type or hints[name]) | None, None) for name, spec in FIELDS.items()
            if spec.openai is not None and spec.openai != "max_tokens"}


def _openai_server_names() -> dict[str, str]:
    """Body name -> field name of every sampling field sglbench serve's OpenAI routes take: the API's
    standard names first, then the extras (SGLang's server names; a name the API already uses is not reused)."""
    names = {spec.openai: name for name, spec in FIELDS.items() if spec.openai is not None}
    for name, spec in FIELDS.items():
        key = spec.openai_extra or (name if spec.serve_extra else None)
        if key is not None and key not in names:
            names[key] = name
    return names


def openai_server_extra_fields() -> dict[str, tuple[Any, Any]]:
    """The fields beyond the OpenAI API that the server takes in an OpenAI body (top_k, min_p, regex,
    json_schema, ebnf, stop_token_ids...), as pydantic field definitions; None means the default."""
    hints = typing.get_type_hints(SamplingParams)
    standard = {spec.openai for spec in FIELDS.values() if spec.openai is not None}
    return {key: ((FIELDS[name].json_type or hints[name]) | None, None)
            for key, name in _openai_server_names().items() if key not in standard}


def from_openai(body: Mapping[str, Any], **overrides: Any) -> SamplingParams:
    """SamplingParams from an OpenAI request body's sampling fields, standard and extra (plus overrides)."""
    names = _openai_server_names()
    kwargs = {names[k]: v for k, v in body.items() if k in names and names[k] not in overrides}
    return SamplingParams.from_kwargs(**kwargs, **overrides)
