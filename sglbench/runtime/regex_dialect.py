r"""Python's regex dialect restated for xgrammar: `xgrammar_regex(pattern)` accepts the same texts as
`re.fullmatch(pattern, text)` (xgrammar's own `.` also matches a newline, its `\d` only ASCII), read by Python's
own regex parser so the dialect is exactly `re`'s. Constructs that are not regular (lookarounds, backreferences)
are refused by name."""

from __future__ import annotations

import functools
import itertools
import re
from typing import Any

try:  # Python's own regex parser: the dialect is read exactly as `re` reads it
    from re import _constants as _sre
    from re import _parser as _sre_parse
except ImportError:  # Python 3.10
    import sre_constants as _sre  # type: ignore[no-redef]
    import sre_parse as _sre_parse  # type: ignore[no-redef]

_MAX_CHAR = 0x10FFFF
_ANCHORS = {_sre.AT_BEGINNING: ("^", "start"), _sre.AT_BEGINNING_STRING: (r"\A", "start"),
            _sre.AT_END: ("$", "end"), _sre.AT_END_STRING: (r"\Z", "end"),
            _sre.AT_BOUNDARY: (r"\b", None), _sre.AT_NON_BOUNDARY: (r"\B", None)}
_CATEGORIES = {_sre.CATEGORY_DIGIT: r"\d", _sre.CATEGORY_NOT_DIGIT: r"\D", _sre.CATEGORY_SPACE: r"\s",
               _sre.CATEGORY_NOT_SPACE: r"\S", _sre.CATEGORY_WORD: r"\w", _sre.CATEGORY_NOT_WORD: r"\W"}
_UNENFORCEABLE = {  # constructs whose meaning is not a regular language over the output text
    _sre.ASSERT: "lookahead/lookbehind assertions ((?=...), (?<=...))",
    _sre.ASSERT_NOT: "negative lookahead/lookbehind assertions ((?!...), (?<!...))",
    _sre.GROUPREF: r"backreferences (\1, (?P=name))",
    _sre.GROUPREF_EXISTS: "conditional groups ((?(1)...))",
    getattr(_sre, "ATOMIC_GROUP", "ATOMIC_GROUP"): "atomic groups ((?>...))",
    getattr(_sre, "POSSESSIVE_REPEAT", "POSSESSIVE_REPEAT"): "possessive quantifiers (*+, ++, ?+)",
}
_CLASS_FLAGS = re.IGNORECASE | re.ASCII  # the flags that change which characters a class or literal matches
Ranges = tuple[tuple[int, int], ...]  # sorted, disjoint inclusive code point ranges


def xgrammar_regex(pattern: str) -> str:
    r"""A Python regex restated for xgrammar, accepting the same texts as `re.fullmatch(pattern, text)`.

    Python's parser reads the pattern; the result uses only escaped characters, character classes
    listed as code point ranges, (?:...) groups, | and quantifiers. `.` excludes the newline (unless
    DOTALL), \d, \w and \s keep their Unicode meaning, IGNORECASE and ASCII are applied to each
    class, lazy quantifiers are greedy (the same texts match in full), and ^, $, \A, \Z are allowed
    where they mean the text's start or end. ValueError names a construct a grammar cannot enforce.
    """
    try:
        parsed = _sre_parse.parse(pattern)
    except re.error as exc:
        raise ValueError(str(exc)) from None
    return _sequence(list(parsed), parsed.state.flags, at_start=True, at_end=True)[0]


def _sequence(items: list, flags: int, at_start: bool, at_end: bool) -> tuple[str, bool]:
    """Items one after another as (text, atomic): atomic when one character or class (takes a quantifier)."""
    parts = []
    for i, (op, av) in enumerate(items):
        start = at_start and all(o is _sre.AT for o, _ in items[:i])
        end = at_end and all(o is _sre.AT for o, _ in items[i + 1 :])
        text, atomic = _node(op, av, flags, start, end)
        if text:
            parts.append((text, atomic))
    if len(parts) == 1:
        return parts[0]
    return "".join(text for text, _ in parts), False


def _node(op: Any, av: Any, flags: int, at_start: bool, at_end: bool) -> tuple[str, bool]:
    """One parsed regex node as (text, atomic)."""
    if op is _sre.LITERAL:
        return _char_class(_class_ranges([(op, av)], flags)), True
    if op is _sre.NOT_LITERAL:
        return _char_class(_class_ranges([(_sre.NEGATE, None), (_sre.LITERAL, av)], flags)), True
    if op is _sre.IN:
        return _char_class(_class_ranges(av, flags)), True
    if op is _sre.ANY:
        return _char_class(((0, _MAX_CHAR),) if flags & re.DOTALL else ((0, 9), (11, _MAX_CHAR))), True
    if op is _sre.BRANCH:
        return "(?:" + "|".join(_sequence(list(b), flags, at_start, at_end)[0] for b in av[1]) + ")", True
    if op is _sre.SUBPATTERN:
        _, add_flags, del_flags, sub = av
        return _sequence(list(sub), (flags | add_flags) & ~del_flags, at_start, at_end)
    if op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT):  # lazy or greedy: the same texts match in full
        low, high, sub = av
        text, atomic = _sequence(list(sub), flags, at_start=False, at_end=False)
        if not text:
            return "", False
        return (text if atomic else f"(?:{text})") + _quantifier(low, high), False
    if op is _sre.AT:
        symbol, where = _ANCHORS.get(av, (str(av), None))
        if (where == "start" and at_start) or (where == "end" and at_end):
            return "", False
        if where is None:
            raise ValueError(f"{symbol} (a word boundary) cannot be enforced by constrained decoding")
        raise ValueError(f"{symbol} is supported only at the {where} of the pattern: "
                         "the output is matched as a whole")
    what = _UNENFORCEABLE.get(op, f"the regex construct {op}")
    raise ValueError(f"{what} cannot be enforced by constrained decoding")


def _quantifier(low: int, high: int) -> str:
    if high == _sre.MAXREPEAT:
        return {0: "*", 1: "+"}.get(low, f"{{{low},}}")
    if (low, high) == (0, 1):
        return "?"
    return f"{{{low}}}" if low == high else f"{{{low},{high}}}"


def _class_ranges(items: list, flags: int) -> Ranges:
    """The characters a Python class (IN items) matches under flags, as ranges."""
    negate = bool(items) and items[0][0] is _sre.NEGATE
    body = items[1:] if negate else items
    if flags & re.IGNORECASE or any(op is _sre.CATEGORY for op, _ in body):
        source = "[" + "^" * negate + "".join(_class_item(op, av) for op, av in body) + "]"
        return _scan(source, flags & _CLASS_FLAGS)
    ranges = _merge([(av, av) if op is _sre.LITERAL else av for op, av in body])
    return _complement(ranges) if negate else ranges


def _class_item(op: Any, av: Any) -> str:
    if op is _sre.LITERAL:
        return _escape(av)
    if op is _sre.RANGE:
        return f"{_escape(av[0])}-{_escape(av[1])}"
    return _CATEGORIES[av]


def _merge(ranges: list[tuple[int, int]]) -> Ranges:
    merged: list[list[int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    return tuple((low, high) for low, high in merged)


def _complement(ranges: Ranges) -> Ranges:
    bounds = [(-1, -1), *ranges, (_MAX_CHAR + 1, _MAX_CHAR + 1)]
    return tuple((a[1] + 1, b[0] - 1) for a, b in itertools.pairwise(bounds) if a[1] + 1 <= b[0] - 1)


@functools.lru_cache(maxsize=1)
def _all_chars() -> str:
    """Every character but the surrogates (which decoded text never holds), in code point order."""
    return "".join(map(chr, range(0xD800))) + "".join(map(chr, range(0xE000, _MAX_CHAR + 1)))


@functools.lru_cache(maxsize=1024)
def _scan(source: str, flags: int) -> Ranges:
    """The characters Python's class `source` matches under flags, found by running it over all of them:
    exact for Unicode categories and case folding (IGNORECASE also matches e.g. the Kelvin sign for k)."""
    runs = re.compile(f"{source}+", flags).finditer(_all_chars())
    return tuple((ord(m.group()[0]), ord(m.group()[-1])) for m in runs)


def _utf8_canonical(ranges: Ranges) -> Ranges:
    """ranges without the surrogates, split where the UTF-8 length changes: xgrammar 0.2 admits overlong or
    surrogate byte sequences (which decode to U+FFFD) for a range across those bounds."""
    out = []
    for low, high in ranges:
        for a, b in ((0, 0x7F), (0x80, 0x7FF), (0x800, 0xD7FF), (0xE000, 0xFFFF), (0x10000, _MAX_CHAR)):
            if max(low, a) <= min(high, b):
                out.append((max(low, a), min(high, b)))
    return tuple(out)


def _char_class(ranges: Ranges) -> str:
    ranges = _utf8_canonical(ranges)
    if not ranges:
        raise ValueError("a character class that matches no character cannot be enforced")
    if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        return _escape(ranges[0][0])
    return "[" + "".join(_escape(a) if a == b else f"{_escape(a)}-{_escape(b)}" for a, b in ranges) + "]"


def _escape(code: int) -> str:
    """One character as both dialects read it: ASCII letters and digits as they are, others by code point."""
    char = chr(code)
    if char.isascii() and char.isalnum():
        return char
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"  # fixed width: xgrammar reads \x greedily
