"""The model families' tool-call formats for the OpenAI face: parse an output into content and calls (whole or
streamed), write the grammar that forces calls (`tool_choice` "required" or a named tool), guess a model's format.

Formats (`FORMATS`): `hermes` (also `qwen25`, `qwen3`): `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`
blocks; `llama3`: `{"name": ..., "parameters": {...}}` opening the output or after `<|python_tag|>`, several joined by
`;`; `mistral`: `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]` or `[TOOL_CALLS]name[ARGS]{...}`.

Rules shared by all formats (torch-free; xgrammar is imported only by `grammar`):
- A call is an object naming a tool of the request with an object under "arguments" or "parameters" (missing: `{}`;
  a string holding a JSON object is taken too). `ToolCall.arguments` is that object's text as the model wrote it.
- Model output never raises. A call region that is malformed (bad JSON, not an object, unknown tool) is content:
  its opening marker is kept as text and reading goes on after it. SGLang instead drops a call to a tool the request
  did not declare (or forwards it as a call under SGLANG_FORWARD_UNKNOWN_TOOLS); keeping it as content means the
  client never gets a call it cannot dispatch, and nothing the model wrote is lost silently.
- Content is the text outside the calls with its leading and trailing whitespace removed.
- Streaming gives exactly what `parse` gives for the whole text, however it is cut: content that could still open a
  call is held back, and a call is sent once its region is complete (id, name and arguments in one delta).
  `stream(tools, incremental=True)` sends a call as soon as its header names a known tool, then its arguments as
  they arrive (OpenAI's chunk shapes); a call announced so is kept even if its region turns out malformed (it
  closes with the arguments sent so far, and reading goes on after them), so use it where the output is forced
  well-formed (`grammar()`), where only a cut at max_tokens can leave a call unfinished.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from json.decoder import scanstring
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

TOOL_CHOICES = ("none", "auto", "required")
_TOOL_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_WS = re.compile(r"[ \t\n\r]*")  # JSON's whitespace
_STRING_BODY = re.compile(r"(?:[^\"\\]|\\.)*", re.DOTALL)  # a JSON string's text up to its closing quote
_PLAIN = re.compile(r"[\s,:0-9A-Za-z+\-.]+")  # numbers, literals, separators: what JSON holds outside strings
_HEADER = re.compile(r'\{[ \t\n\r]*"name"[ \t\n\r]*:[ \t\n\r]*"([^"\\]*)"[ \t\n\r]*,'
                     r'[ \t\n\r]*"(?:arguments|parameters)"[ \t\n\r]*:[ \t\n\r]*(?=\{)')
_PENDING, _INVALID = "pending", "invalid"  # a region that needs more text / is not a call
_ROOT = "sglbench_tool_calls"


def new_call_id() -> str:
    """An unguessable tool-call id: "call_" and 24 random hex digits."""
    return "call_" + secrets.token_hex(12)


@dataclass(frozen=True, kw_only=True)
class ToolCall:
    """One call the model made: the tool's name and its arguments as a JSON string (as the OpenAI API carries them)."""

    id: str = field(default_factory=new_call_id)
    name: str
    arguments: str
    index: int = 0  # position among the response's calls

    def to_openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a streamed call: the first carries id and name, later ones argument text."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str | None = None

    def to_openai(self) -> dict:
        out: dict[str, Any] = {"index": self.index}
        if self.id is not None:
            out.update(id=self.id, type="function")
        function = {k: v for k, v in (("name", self.name), ("arguments", self.arguments)) if v is not None}
        return {**out, "function": function}


# ---------------------------------------------------------------------------- request checks
def check_tools(tools: Any, tool_choice: Any = None) -> None:
    """Validate a request's `tools` and `tool_choice`; ValueError names the first problem."""
    if tools is not None and not isinstance(tools, list):
        raise ValueError(f"tools must be a list of tools, got {type(tools).__name__}")
    seen: dict[str, int] = {}
    for i, tool in enumerate(tools or []):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise ValueError(f"{where} must be an object")
        if tool.get("type") != "function":
            raise ValueError(f'{where}.type must be "function", got {tool.get("type")!r}')
        fn = tool.get("function")
        if fn is None:
            raise ValueError(f"{where}.function is missing")
        if not isinstance(fn, dict):
            raise ValueError(f"{where}.function must be an object")
        name = fn.get("name")
        if name is None:
            raise ValueError(f"{where}.function.name is missing")
        if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
            raise ValueError(f"{where}.function.name {name!r} must be 1 to 64 letters, digits, '_', '-' or '.'")
        if name in seen:
            raise ValueError(f"{where}.function.name {name!r} repeats tools[{seen[name]}]'s")
        seen[name] = i
        if fn.get("description") is not None and not isinstance(fn["description"], str):
            raise ValueError(f"{where}.function.description must be a string")
        if fn.get("strict") is not None and not isinstance(fn["strict"], bool):
            raise ValueError(f"{where}.function.strict must be true or false")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise ValueError(f"{where}.function.parameters must be a JSON schema object, got {type(params).__name__}")
        if params and params.get("type", "object") != "object":
            raise ValueError(f'{where}.function.parameters must describe an object ("type": "object"), '
                             f"got type {params['type']!r}")
    _chosen_names(list(seen), tool_choice)


def _chosen_names(names: list[str], tool_choice: Any) -> list[str] | None:
    """The tools a call must be made to (None: the model may answer without one)."""
    if tool_choice is None or tool_choice in ("none", "auto"):
        return None
    if tool_choice == "required":
        if not names:
            raise ValueError("tool_choice 'required' needs at least one tool in tools")
        return names
    if not isinstance(tool_choice, dict):
        raise ValueError(f"tool_choice must be one of {TOOL_CHOICES} or "
                         f'{{"type": "function", "function": {{"name": ...}}}}, got {tool_choice!r}')
    if tool_choice.get("type") != "function":
        raise ValueError(f'tool_choice.type must be "function", got {tool_choice.get("type")!r}')
    fn = tool_choice.get("function")
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str):
        raise ValueError("tool_choice.function.name is missing")
    if name not in names:
        raise ValueError(f"tool_choice names {name!r}, which is not in tools")
    return [name]


def _tool_names(tools: Any) -> frozenset[str]:
    """Names of the request's tools (model output is checked against them; the request itself by check_tools)."""
    names = set()
    for tool in tools or []:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            names.add(fn["name"])
    return frozenset(names)


# ---------------------------------------------------------------------------- JSON reading
def _skip_ws(text: str, i: int) -> int:
    return _WS.match(text, i).end()


@dataclass
class _Reading:
    """What reading one output needs besides its text: the tool names, and how far each JSON value that is still
    open was read (by start: position and open brackets), so a stream does not reread it for every piece."""

    names: frozenset[str]
    open_json: dict[int, tuple[int, tuple[str, ...], bool]] = field(default_factory=dict)

    def json_extent(self, text: str, start: int) -> int | str:
        """End of the JSON object or array opening at text[start], _PENDING while it is open, _INVALID when a
        character outside its strings cannot be JSON (e.g. the `<` of a closing tag)."""
        i, saved, in_string = self.open_json.get(start, (start, (), False))
        closers = list(saved)
        while i < len(text):
            if in_string:
                i = _STRING_BODY.match(text, i).end()
                if i == len(text) or text[i] != '"':  # the text ends inside the string (or after a backslash)
                    break
                in_string = False
            else:
                c = text[i]
                if c == '"':
                    in_string = True
                elif c in "{[":
                    closers.append("}" if c == "{" else "]")
                elif c in "}]":
                    if not closers or c != closers.pop():
                        return _INVALID
                    if not closers:
                        return i + 1
                else:
                    m = _PLAIN.match(text, i)
                    if m is None:
                        return _INVALID
                    i = m.end()
                    continue
            i += 1
        self.open_json[start] = (i, tuple(closers), in_string)
        return _PENDING


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_no_constants)


def _object_fields(text: str, start: int, end: int) -> dict[str, tuple[Any, int, int]] | None:
    """The members of the strict JSON object text[start:end] as key -> (value, value start, value end); None when it
    is not strict JSON or repeats a key."""
    fields: dict[str, tuple[Any, int, int]] = {}
    try:
        i = _skip_ws(text, start + 1)
        if text[i] == "}":
            return fields if i + 1 == end else None
        while True:
            if text[i] != '"':
                return None
            key, i = scanstring(text, i + 1, True)
            i = _skip_ws(text, i)
            if text[i] != ":" or key in fields:
                return None
            i = _skip_ws(text, i + 1)
            value, stop = _DECODER.raw_decode(text, i)
            fields[key] = (value, i, stop)
            i = _skip_ws(text, stop)
            if text[i] == ",":
                i = _skip_ws(text, i + 1)
            elif text[i] == "}" and i + 1 == end:
                return fields
            else:
                return None
    except (ValueError, IndexError):
        return None


@dataclass(frozen=True)
class _Found:
    """A well-formed call in the text; args_start is where its arguments object begins (-1: not written there)."""

    name: str
    arguments: str
    args_start: int = -1


def _arguments(value: Any, text: str, start: int, stop: int) -> tuple[str, int] | None:
    """A call's arguments as (JSON text, start in text): an object as written, or a string that holds one."""
    if isinstance(value, dict):
        return text[start:stop], start
    if isinstance(value, str):
        try:
            if isinstance(_DECODER.decode(value), dict):
                return value, -1
        except ValueError:
            return None
    return None


def _call_object(text: str, j: int, reading: _Reading) -> tuple[_Found, int] | str:
    """The call object opening at text[j] and its end, or _PENDING / _INVALID."""
    if j >= len(text):
        return _PENDING
    if text[j] != "{":
        return _INVALID
    end = reading.json_extent(text, j)
    if isinstance(end, str):
        return end
    fields = _object_fields(text, j, end)
    name = fields.get("name", (None,))[0] if fields is not None else None
    if not isinstance(name, str) or name not in reading.names:
        return _INVALID
    keys = [k for k in ("arguments", "parameters") if k in fields]
    if len(keys) > 1:
        return _INVALID
    args = _arguments(fields[keys[0]][0], text, *fields[keys[0]][1:]) if keys else ("{}", -1)
    if args is None:
        return _INVALID
    return _Found(name, *args), end


def _partial_len(text: str, pos: int, marker: str) -> int:
    """Length of the longest end of text[pos:] that begins marker (and is shorter than it)."""
    for k in range(min(len(marker) - 1, len(text) - pos), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


def _find_markers(text: str, pos: int, markers: tuple[str, ...]) -> tuple[int | None, int]:
    starts = [i for i in (text.find(m, pos) for m in markers) if i >= 0]
    if starts:
        return min(starts), len(text)
    return None, len(text) - max(_partial_len(text, pos, m) for m in markers)


# ---------------------------------------------------------------------------- formats
@dataclass
class _ScanState:
    at_start: bool = True  # nothing but whitespace read so far
    after_call: bool = False  # the last thing read was a call


@dataclass(frozen=True)
class _Region:
    """A decided stretch from a call region's start: its calls, or (calls None) content up to end."""

    end: int
    calls: tuple[_Found, ...] | None


@dataclass(frozen=True)
class _Header:
    """A call being written whose name is known: arguments start at args_start, complete or sent up to args_stop."""

    ordinal: int  # place among its region's calls
    name: str
    args_start: int
    args_stop: int


def _header(text: str, j: int, reading: _Reading, ordinal: int = 0, pattern: re.Pattern = _HEADER) -> _Header | None:
    m = pattern.match(text, j)
    if m is None or m.group(1) not in reading.names:
        return None
    end = reading.json_extent(text, m.end())
    return _Header(ordinal, m.group(1), m.end(), end if isinstance(end, int) else len(text))


def _settled(found: tuple[tuple[_Found, ...], int] | str, marker_end: int, at_end: bool) -> _Region | None:
    if found == _PENDING and not at_end:
        return None
    if isinstance(found, str):
        return _Region(marker_end, None)  # the marker is text; reading goes on after it
    calls, end = found
    return _Region(end, calls)


def _one(found: tuple[_Found, int] | str) -> tuple[tuple[_Found, ...], int] | str:
    return found if isinstance(found, str) else ((found[0],), found[1])


class ToolCallFormat:
    """One family's tool-call format: how calls look in its output and in its forcing grammar."""

    name: ClassVar[str]
    markers: ClassVar[tuple[str, ...]]  # texts that open a call region anywhere in the output
    # Grammar layout: prefix, calls joined by separator, suffix; a call is call_begin, arguments, call_end.
    prefix: ClassVar[str] = ""
    call_begin: ClassVar[str]  # with {name} for the tool's name as a JSON string
    call_end: ClassVar[str]
    separator: ClassVar[str]
    suffix: ClassVar[str] = ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def parse(self, text: str, tools: list[dict] | None) -> tuple[str, list[ToolCall]]:
        """(content, calls) of a whole output."""
        stream = self.stream(tools)
        content = stream.feed(text)[0] + stream.finish()[0]
        return content, stream.calls

    def stream(self, tools: list[dict] | None, incremental: bool = False) -> ToolCallStream:
        """A parser fed the output piece by piece (see the module docstring for `incremental`)."""
        return ToolCallStream(self, tools, incremental)

    def grammar(self, tools: list[dict], tool_choice: Any, parallel_tool_calls: bool = True) -> str | None:
        """xgrammar EBNF the whole output must match for tool_choice "required" (a call to any tool) or a named
        tool (calls to it only): one call, or one or more when parallel_tool_calls. None for "auto" and "none"."""
        check_tools(tools, tool_choice)
        chosen = _chosen_names(list(_tool_names(tools)), tool_choice)
        if chosen is None:
            return None
        import xgrammar as xgr  # loads torch: only here

        calls = [self._call_grammar(xgr, i, tool["function"]) for i, tool in enumerate(tools)
                 if tool["function"]["name"] in chosen]
        one = calls[0] if len(calls) == 1 else xgr.Grammar.union(*calls)
        body = ["root"] + ([f"({_ebnf_string(self.separator)} root)*"] if parallel_tool_calls else [])
        parts = [_ebnf_string(s) for s in (self.prefix,) if s] + body + [_ebnf_string(s) for s in (self.suffix,) if s]
        ebnf = f"{one}\n{_ROOT} ::= {' '.join(parts)}\n"
        return str(xgr.Grammar.from_ebnf(ebnf, root_rule_name=_ROOT))  # printed with its root rule named "root"

    def _call_grammar(self, xgr: Any, i: int, fn: dict) -> Any:
        schema = {**(fn.get("parameters") or {}), "type": "object"}
        try:
            args = xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False, separators=(", ", ": "))
        except Exception as exc:  # xgrammar raises RuntimeError and its own error types
            raise ValueError(f"tools[{i}].function.parameters is not a schema the grammar can enforce: {exc}") from exc
        begin = self.call_begin.format(name=json.dumps(fn["name"]))
        literal = [xgr.Grammar.from_ebnf(f"root ::= {_ebnf_string(s)}") for s in (begin, self.call_end)]
        return xgr.Grammar.concat(literal[0], args, literal[1])

    # Reading hooks: positions index the stream's buffer; state is what was read before pos.
    def find_region(self, text: str, pos: int, state: _ScanState) -> tuple[int | None, int]:
        """(start of the first call region at or after pos, or None; where text might still begin one)."""
        return _find_markers(text, pos, self.markers)

    def read_region(self, text: str, start: int, state: _ScanState, reading: _Reading,
                    at_end: bool) -> _Region | None:
        """The region starting at start once it is decided (None: more text could change it)."""
        raise NotImplementedError

    def open_calls(self, text: str, start: int, state: _ScanState, reading: _Reading) -> list[_Header]:
        """Calls of an undecided region whose header names a known tool, in order (for incremental streams)."""
        return []


def _ebnf_string(text: str) -> str:
    return json.dumps(text)  # JSON's escapes (\" \\ \n \uXXXX) are xgrammar EBNF's


class HermesFormat(ToolCallFormat):
    """Hermes / Qwen2.5 / Qwen3: `<tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>` blocks, one per call.
    A closing tag cut off by the end of the output is forgiven."""

    name = "hermes"
    markers = ("<tool_call>",)
    call_begin = '<tool_call>\n{{"name": {name}, "arguments": '
    call_end = "}\n</tool_call>"
    separator = "\n"
    _close = "</tool_call>"

    def read_region(self, text, start, state, reading, at_end):
        marker_end = start + len(self.markers[0])
        found = _call_object(text, _skip_ws(text, marker_end), reading)
        if not isinstance(found, str):
            call, end = found
            k = _skip_ws(text, end)
            tail = text[k:k + len(self._close)]
            if tail == self._close:
                found = ((call,), k + len(tail))
            elif self._close.startswith(tail):  # still coming, or cut off at the end
                found = ((call,), len(text)) if at_end else _PENDING
            else:
                found = _INVALID
        return _settled(found, marker_end, at_end)

    def open_calls(self, text, start, state, reading):
        header = _header(text, _skip_ws(text, start + len(self.markers[0])), reading)
        return [header] if header else []


class Llama3Format(ToolCallFormat):
    """Llama 3.x JSON calls: `{"name": "f", "parameters": {...}}` opening the output or after `<|python_tag|>`,
    several joined by `;`. Text that is not such JSON is content."""

    name = "llama3"
    markers = ("<|python_tag|>",)
    call_begin = '{{"name": {name}, "parameters": '
    call_end = "}"
    separator = "; "
    _chain = re.compile(r"[ \t\n\r]*;[ \t\n\r]*")

    def find_region(self, text, pos, state):
        if state.after_call:  # `; {` chains another call
            m = self._chain.match(text, pos)
            if m and m.end() == len(text):
                return None, pos
            if m and text[m.end()] == "{":
                return pos, len(text)
            if not m and _skip_ws(text, pos) == len(text):
                return None, pos
        start, hold = _find_markers(text, pos, self.markers)
        j = _skip_ws(text, pos)
        if state.at_start and j < len(text) and text[j] == "{" and (start is None or j < start):
            return j, len(text)
        return start, hold

    def _object_start(self, text: str, start: int) -> tuple[int, int]:
        """(end of the region's opening marker, where its call object begins)."""
        if text.startswith(self.markers[0], start):
            marker_end = start + len(self.markers[0])
            return marker_end, _skip_ws(text, marker_end)
        if text[start] == "{":
            return start + 1, start
        marker_end = self._chain.match(text, start).end()
        return marker_end, marker_end

    def read_region(self, text, start, state, reading, at_end):
        marker_end, j = self._object_start(text, start)
        return _settled(_one(_call_object(text, j, reading)), marker_end, at_end)

    def open_calls(self, text, start, state, reading):
        header = _header(text, self._object_start(text, start)[1], reading)
        return [header] if header else []


class MistralFormat(ToolCallFormat):
    """Mistral: `[TOOL_CALLS] [{"name": "f", "arguments": {...}}, ...]` (all calls of the array, or none if one is
    malformed), or the newer `[TOOL_CALLS]f[ARGS]{...}`, one call per marker."""

    name = "mistral"
    markers = ("[TOOL_CALLS]",)
    prefix = "[TOOL_CALLS] ["
    call_begin = '{{"name": {name}, "arguments": '
    call_end = "}"
    separator = ", "
    suffix = "]"
    _compact = re.compile(r"([A-Za-z0-9_.\-]+)\[ARGS\][ \t\n\r]*(?=\{)")
    _compact_prefix = re.compile(r"[A-Za-z0-9_.\-]+(?:\[(?:A(?:R(?:G(?:S(?:\][ \t\n\r]*)?)?)?)?)?)?")

    def read_region(self, text, start, state, reading, at_end):
        marker_end = start + len(self.markers[0])
        j = _skip_ws(text, marker_end)
        if j == len(text):
            found: Any = _PENDING
        elif text[j] == "[":
            found = self._array(text, j, reading)
        elif text[j] == "{":
            found = _one(_call_object(text, j, reading))
        else:
            found = self._compact_call(text, j, reading)
        return _settled(found, marker_end, at_end)

    def _array(self, text: str, j: int, reading: _Reading) -> tuple[tuple[_Found, ...], int] | str:
        end = reading.json_extent(text, j)
        if isinstance(end, str):
            return end
        calls, i = [], _skip_ws(text, j + 1)
        while True:
            found = _call_object(text, i, reading)
            if isinstance(found, str):
                return _INVALID
            calls.append(found[0])
            i = _skip_ws(text, found[1])
            if text[i] == "]" and i + 1 == end:
                return tuple(calls), end
            if text[i] != ",":
                return _INVALID
            i = _skip_ws(text, i + 1)

    def _compact_call(self, text: str, j: int, reading: _Reading) -> tuple[tuple[_Found, ...], int] | str:
        m = self._compact.match(text, j)
        if m is None:
            partial = self._compact_prefix.match(text, j)
            return _PENDING if partial and partial.end() == len(text) else _INVALID
        end = reading.json_extent(text, m.end())
        if isinstance(end, str):
            return end
        try:
            args = _DECODER.decode(text[m.end():end])
        except ValueError:
            return _INVALID
        if m.group(1) not in reading.names or not isinstance(args, dict):
            return _INVALID
        return (_Found(m.group(1), text[m.end():end], m.end()),), end

    def open_calls(self, text, start, state, reading):
        j = _skip_ws(text, start + len(self.markers[0]))
        if j < len(text) and text[j] == "[":
            headers, i = [], _skip_ws(text, j + 1)
            while (header := _header(text, i, reading, len(headers))) is not None:
                headers.append(header)
                end = reading.json_extent(text, i)
                i = _skip_ws(text, end) if isinstance(end, int) else len(text)
                if not text.startswith(",", i):
                    break
                i = _skip_ws(text, i + 1)
            return headers
        header = _header(text, j, reading, pattern=self._compact) or _header(text, j, reading)
        return [header] if header else []


# ---------------------------------------------------------------------------- streaming
class _ContentTrim:
    """Drops the content's leading and trailing whitespace as it streams: a whitespace run waits for text after it."""

    def __init__(self) -> None:
        self._started = False
        self._held = ""

    def add(self, text: str) -> str:
        if not self._started:
            text = text.lstrip()
            if not text:
                return ""
            self._started = True
        text = self._held + text
        body = text.rstrip()
        self._held = text[len(body):]
        return body


@dataclass
class _Announced:
    index: int
    id: str
    name: str
    args_start: int  # relative to the region's start
    sent: str = ""


class ToolCallStream:
    """Parses one output fed piece by piece: `feed(piece)` and, at the end, `finish()` each return
    (content piece, [ToolCallDelta]). The concatenated pieces are what `parse` gives for the whole output."""

    def __init__(self, fmt: ToolCallFormat, tools: list[dict] | None, incremental: bool = False):
        self._fmt = fmt
        self._reading = _Reading(_tool_names(tools))
        self._incremental = incremental
        self._buffer = ""  # text not decided yet
        self._state = _ScanState()
        self._trim = _ContentTrim()
        self._calls: list[ToolCall] = []
        self._announced: list[_Announced] = []  # calls of the undecided region already sent (incremental)
        self._finished = False

    @property
    def calls(self) -> list[ToolCall]:
        """The calls completed so far (all of them after finish)."""
        return list(self._calls)

    def feed(self, piece: str) -> tuple[str, list[ToolCallDelta]]:
        if self._finished:
            raise RuntimeError("the stream is finished")
        self._buffer += piece
        return self._read(at_end=False)

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        """Decide what is left: an unfinished or malformed call comes back as content."""
        if self._finished:
            return "", []
        content, deltas = self._read(at_end=True)
        self._finished = True
        return content, deltas

    def _read(self, at_end: bool) -> tuple[str, list[ToolCallDelta]]:
        text, pos, state, fmt = self._buffer, 0, self._state, self._fmt
        content: list[str] = []
        deltas: list[ToolCallDelta] = []
        while True:
            start, hold = fmt.find_region(text, pos, state)
            if start is None:
                stop = len(text) if at_end else hold
                self._content(text[pos:stop], content)
                pos = stop
                break
            self._content(text[pos:start], content)
            pos = start
            region = fmt.read_region(text, start, state, self._reading, at_end)
            if region is None:
                if self._incremental:
                    self._announce(text, start, deltas)
                break
            pos = self._settle(text, start, region, content, deltas)
        if pos:
            self._buffer = text[pos:]
            self._reading.open_json.clear()  # its positions index the old buffer
        return "".join(content), deltas

    def _content(self, text: str, out: list[str]) -> None:
        if text:
            self._state.after_call = False
            self._state.at_start = self._state.at_start and not text.strip()
            out.append(self._trim.add(text))

    def _announce(self, text: str, start: int, deltas: list[ToolCallDelta]) -> None:
        """Send the calls of the undecided region at start whose headers are known, then their new argument text."""
        for header in self._fmt.open_calls(text, start, self._state, self._reading):
            if header.ordinal == len(self._announced):
                call = _Announced(len(self._calls) + header.ordinal, new_call_id(), header.name,
                                  header.args_start - start)
                self._announced.append(call)
                deltas.append(ToolCallDelta(call.index, call.id, call.name, ""))
            if header.ordinal < len(self._announced):
                call = self._announced[header.ordinal]
                piece = text[start + call.args_start + len(call.sent):header.args_stop]
                if piece:
                    call.sent += piece
                    deltas.append(ToolCallDelta(call.index, arguments=piece))

    def _settle(self, text: str, start: int, region: _Region, content: list[str], deltas: list[ToolCallDelta]) -> int:
        """Emit a decided region; returns where reading goes on."""
        announced, self._announced = self._announced, []
        if region.calls is not None:
            for ordinal, found in enumerate(region.calls):
                if ordinal < len(announced):
                    call = announced[ordinal]
                    rest = found.arguments[len(call.sent):]
                    if rest:
                        deltas.append(ToolCallDelta(call.index, arguments=rest))
                    self._calls.append(ToolCall(id=call.id, name=call.name, arguments=found.arguments,
                                                index=call.index))
                else:
                    made = ToolCall(name=found.name, arguments=found.arguments, index=len(self._calls))
                    self._calls.append(made)
                    deltas.append(ToolCallDelta(made.index, made.id, made.name, made.arguments))
            self._state.after_call, self._state.at_start = True, False
            return region.end
        if announced:  # sent as calls already: they close with what they sent, reading goes on after it
            for call in announced:
                self._calls.append(ToolCall(id=call.id, name=call.name, arguments=call.sent, index=call.index))
            self._state.after_call = self._state.at_start = False
            return start + announced[-1].args_start + len(announced[-1].sent)
        self._content(text[start:region.end], content)
        return region.end


# ---------------------------------------------------------------------------- registry and detection
_HERMES, _LLAMA3, _MISTRAL = HermesFormat(), Llama3Format(), MistralFormat()
FORMATS: Mapping[str, ToolCallFormat] = MappingProxyType(
    {"hermes": _HERMES, "qwen25": _HERMES, "qwen3": _HERMES, "llama3": _LLAMA3, "mistral": _MISTRAL})


def tool_call_format(name: str) -> ToolCallFormat:
    """The format registered under name; ValueError lists the known names."""
    try:
        return FORMATS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown tool-call format {name!r}; known: {', '.join(sorted(FORMATS))}") from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(_read_text(path) or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _templates(value: Any) -> list[str]:
    """Chat template text from a tokenizer_config value: a string or a list of {"name", "template"}."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [t["template"] for t in value if isinstance(t, dict) and isinstance(t.get("template"), str)]
    return []


def _folder_template(folder: Path) -> str:
    texts = _templates(_read_json(folder / "tokenizer_config.json").get("chat_template"))
    texts += _templates(_read_json(folder / "chat_template.json").get("chat_template"))
    texts.append(_read_text(folder / "chat_template.jinja"))
    return "\n".join(texts)


def detect_tool_call_format(model_path: str | Path | None, chat_template: str | None = None) -> str | None:
    """The tool-call format a model emits, from its folder's config.json (model_type, architectures) and its chat
    template (read from the folder when not given); None when unknown."""
    folder = Path(model_path) if model_path else None
    config = _read_json(folder / "config.json") if folder else {}
    template = chat_template if chat_template is not None else (_folder_template(folder) if folder else "")
    model_type = str(config.get("model_type", "")).lower()
    listed = config.get("architectures")
    architectures = " ".join(a for a in listed if isinstance(a, str)).lower() if isinstance(listed, list) else ""
    if "[TOOL_CALLS]" in template or "[AVAILABLE_TOOLS]" in template:
        return "mistral"
    if "<tool_call>" in template:
        # Qwen3-Coder wraps XML (`<function=f><parameter=x>`) in these tags: a format of its own, not read here.
        return None if "<function=" in template else "hermes"
    if model_type.startswith(("qwen2", "qwen3")) or "qwen2" in architectures or "qwen3" in architectures:
        return "hermes"
    if model_type in ("mistral", "mixtral") or "mistral" in architectures or "mixtral" in architectures:
        return "mistral"
    is_llama = model_type == "llama" or "llamaforcausallm" in architectures  # not Llama 4 (pythonic calls)
    if is_llama and any(t in template for t in ("<|python_tag|>", "<|eom_id|>", "<|start_header_id|>")):
        return "llama3"
    return None
