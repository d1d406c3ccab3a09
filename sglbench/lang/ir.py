"""Expressions of the language: what `s += ...` receives, what the tracer records and the interpreter runs.

Expressions are immutable records; `a + b` concatenates them into an `SglExprList` (strings become
`SglConstantText`). `SglArgument` and `SglVariable` also stand in for values unknown while tracing.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sglbench.lang.global_config import global_config
from sglbench.runtime.sampling_params import FIELDS as SAMPLING_FIELDS

if TYPE_CHECKING:
    from sglbench.lang.choices import ChoicesSamplingMethod

REGEX_INT = r"[-+]?[0-9]+[ \n]*"
REGEX_FLOAT = r"[-+]?[0-9]*\.?[0-9]+[ \n]*"
REGEX_BOOL = r"(True|False)"
REGEX_STR = r"\"[\w\d\s]*\""

_DTYPE_REGEX = {int: REGEX_INT, "int": REGEX_INT, float: REGEX_FLOAT, "float": REGEX_FLOAT,
                bool: REGEX_BOOL, "bool": REGEX_BOOL, str: REGEX_STR, "str": REGEX_STR}


def dtype_to_regex(dtype: Any) -> str:
    """The regex that constrains a `gen(dtype=...)` (int, float, bool or str, as types or names)."""
    try:
        return _DTYPE_REGEX[dtype]
    except (KeyError, TypeError):
        raise ValueError(f"dtype must be one of int, float, bool, str; got {dtype!r}") from None


class TracingError(RuntimeError):
    """The program did something the tracer cannot record (e.g. branch on a generated value)."""


@dataclass(frozen=True)
class SglSamplingParams:
    """Sampling settings of one gen call; None means "inherit the run() default". Names, meanings and
    checks are the engine's (`sglbench.runtime.sampling_params`); dtype and return_text_in_logprobs are
    the language's own."""

    max_new_tokens: int | None = None
    min_new_tokens: int | None = None
    n: int | None = None
    stop: tuple[str, ...] | None = None
    stop_token_ids: tuple[int, ...] | None = None
    stop_regex: str | tuple[str, ...] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    ignore_eos: bool | None = None
    return_logprob: bool | None = None
    logprob_start_len: int | None = None
    top_logprobs_num: int | None = None
    return_text_in_logprobs: bool | None = None
    dtype: Any = None
    regex: str | None = None
    json_schema: str | None = None

    def __post_init__(self) -> None:
        for name in ("stop", "stop_regex"):  # one string or several, as in SGLang
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                object.__setattr__(self, name, tuple(value))
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        if self.stop_token_ids is not None:
            object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        if self.dtype is not None:
            dtype_to_regex(self.dtype)
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"regex {self.regex!r} is not a valid regular expression: {exc}") from None

    def engine_values(self) -> dict[str, Any]:
        """The sampling parameters that are set, under the engine's names (`runtime.sampling_params`),
        a dtype as its regex: what every backend translates from."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name in SAMPLING_FIELDS and getattr(self, f.name) is not None}
        if self.dtype is not None and self.regex is None:
            values["regex"] = dtype_to_regex(self.dtype)
        return values

    def merged_over(self, base: SglSamplingParams) -> SglSamplingParams:
        """base with every field that is set here (not None) overridden."""
        changes = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}
        return dataclasses.replace(base, **changes)


def decoding_options() -> dict[str, Any]:
    """global_config's detokenization settings under the engine's names (those the engine defines): what every
    backend sends beside a gen's own parameters, as SGLang's RuntimeEndpoint does."""
    values = {"skip_special_tokens": global_config.skip_special_tokens_in_output,
              "spaces_between_special_tokens": global_config.spaces_between_special_tokens_in_out}
    return {name: value for name, value in values.items() if name in SAMPLING_FIELDS}


class SglExpr:
    """Base of all expressions: `+` concatenates."""

    def __add__(self, other: object) -> SglExprList:
        return SglExprList((self, as_expr(other)))

    def __radd__(self, other: object) -> SglExprList:
        return SglExprList((as_expr(other), self))


def as_expr(value: object) -> SglExpr:
    """Text or an expression as an expression; anything else is a clear error."""
    if value is None:
        raise ValueError("cannot add None to a program: add text or an sgl expression (gen, select, ...)")
    if isinstance(value, str):
        return SglConstantText(value)
    if isinstance(value, SglExpr):
        return value
    raise TypeError(f"cannot add a {type(value).__name__} to a program: add text or an sgl expression")


@dataclass(frozen=True, eq=False)
class SglExprList(SglExpr):
    exprs: tuple[SglExpr, ...]

    def __post_init__(self) -> None:
        flat: list[SglExpr] = []
        for e in self.exprs:
            flat.extend(e.exprs if isinstance(e, SglExprList) else (e,))
        object.__setattr__(self, "exprs", tuple(flat))


@dataclass(frozen=True, eq=False)
class SglConstantText(SglExpr):
    value: str


@dataclass(frozen=True, eq=False)
class SglGen(SglExpr):
    name: str | None
    params: SglSamplingParams

    @property
    def sampling_params(self) -> SglSamplingParams:
        """SGLang's name for params."""
        return self.params


@dataclass(frozen=True, eq=False)
class SglSelect(SglExpr):
    name: str | None
    choices: tuple[str, ...]
    temperature: float
    choices_method: ChoicesSamplingMethod


@dataclass(frozen=True, eq=False)
class SglRoleBegin(SglExpr):
    role: str


@dataclass(frozen=True, eq=False)
class SglRoleEnd(SglExpr):
    role: str


@dataclass(frozen=True, eq=False)
class SglVarScopeBegin(SglExpr):
    name: str


@dataclass(frozen=True, eq=False)
class SglVarScopeEnd(SglExpr):
    name: str


@dataclass(frozen=True, eq=False)
class SglImage(SglExpr):
    path: str


@dataclass(frozen=True, eq=False)
class SglVideo(SglExpr):
    path: str
    num_frames: int


@dataclass(frozen=True, eq=False)
class SglSeparateReasoning(SglExpr):
    """After the expression it follows: split each named gen/select's output into its reasoning (variable
    `{name}_reasoning_content`) and its answer (variable `name`), by model_type's thinking markers."""

    model_type: str
    names: tuple[str, ...]

    @staticmethod
    def reasoning_name(name: str) -> str:
        return f"{name}_reasoning_content"


class _Placeholder(SglExpr):
    """A value unknown while tracing: usable as text, but not in Python control flow."""

    marker: str
    name: str

    def __str__(self) -> str:
        return self.marker

    def __format__(self, spec: str) -> str:
        return self.marker

    def _refuse(self, *_: object) -> bool:
        raise TracingError(
            f"the program's control flow depends on {type(self).__name__[3:].lower()} {self.name!r}, "
            "whose value is unknown while tracing"
        )

    __bool__ = __eq__ = __ne__ = _refuse  # type: ignore[assignment]
    __hash__ = object.__hash__


@dataclass(frozen=True, eq=False)
class SglArgument(_Placeholder):
    """A program argument left open by `trace()`."""

    name: str
    marker: str = ""


@dataclass(frozen=True, eq=False)
class SglVariable(_Placeholder):
    """A variable of another state (`source`), read lazily: waits until that state has set it."""

    name: str
    source: Any  # a ProgramState at run time, a tracer state while tracing
    marker: str = ""
    node: int = field(default=-1)  # id of the trace node that produces it (tracing only)
