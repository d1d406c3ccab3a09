r"""Constrained decoding with xgrammar: grammars compiled once per tokenizer, one matcher per request.

`GrammarCompiler` turns a regex, a JSON schema or an EBNF grammar into a compiled grammar for the engine's
tokenizer (LRU-cached by kind and pattern, thread-safe, so compilation runs on the caller's thread). A
regex is written in Python's dialect and means what `re.fullmatch` accepts: `xgrammar_regex` restates it
in the plain syntax xgrammar reads (xgrammar's own `.` also matches a newline, its `\d` only ASCII). Each
constrained request owns a `GrammarMatcher`: the allowed-token mask for its next step, accepting
tokens, whether the grammar is done, and the forced continuation used for jump-forward.
`plan_jump` retokenizes the output's last tokens together with that forced text.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import xgrammar as xgr

from sglbench.runtime.sampling_params import GrammarSpec

try:  # Python's own regex parser: the dialect is read exactly as `re` reads it
    from re import _constants as _sre
    from re import _parser as _sre_parse
except ImportError:  # Python 3.10
    import sre_constants as _sre  # type: ignore[no-redef]
    import sre_parse as _sre_parse  # type: ignore[no-redef]

# Output tokens retokenized with the forced text: enough for a UTF-8 character split over byte
# tokens and for BPE merges across the boundary (as SGLang's surrounding-token offset).
RETOKENIZE_WINDOW = 4
COMPILE_THREADS = max(1, min(8, (os.cpu_count() or 1) // 2))  # xgrammar precomputes token masks in parallel
_BITS = torch.arange(32, dtype=torch.int32)
_CHECK_MASK_AFTER = 3  # refusals in one state before its whole mask is checked instead of resampling
_XGRAMMAR_LOG_PREFIX = re.compile(r"^\[[^\]]*\]\s*\S+:\d+:\s*")  # "[15:57:21] /project/cpp/x.cc:83: "


class GrammarCompiler:
    """Compiles grammars for one tokenizer, keeping the `cache_size` most recently used ones."""

    def __init__(self, hf_tokenizer: Any, vocab_size: int, stop_token_ids: Iterable[int], cache_size: int = 256):
        self.vocab_size = vocab_size
        self.stop_token_ids = tuple(sorted(stop_token_ids))
        self.cache_size = cache_size
        self._hf = hf_tokenizer
        self._compiler: xgr.GrammarCompiler | None = None  # built on first use: it scans the vocabulary
        self._cache: OrderedDict[GrammarSpec, xgr.CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()

    def compile(self, spec: GrammarSpec) -> xgr.CompiledGrammar:
        """The compiled grammar for spec, from the cache when seen before. ValueError names a bad pattern."""
        with self._lock:
            compiled = self._cache.get(spec)
            if compiled is None:
                compiled = self._compile(spec)
                self._cache[spec] = compiled
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(spec)
            return compiled

    def matcher(self, spec: GrammarSpec) -> GrammarMatcher:
        """A fresh matcher at the start of spec's grammar."""
        return GrammarMatcher(self.compile(spec), self.vocab_size, self.stop_token_ids)

    @property
    def cached_specs(self) -> list[GrammarSpec]:
        """Specs in the cache, least recently used first."""
        with self._lock:
            return list(self._cache)

    def _compile(self, spec: GrammarSpec) -> xgr.CompiledGrammar:
        if self._compiler is None:
            info = tokenizer_info(self._hf, self.vocab_size, self.stop_token_ids)
            self._compiler = xgr.GrammarCompiler(info, max_threads=COMPILE_THREADS, cache_enabled=False)
        try:
            if spec.kind == "regex":
                return self._compiler.compile_regex(xgrammar_regex(spec.pattern))
            if spec.kind == "ebnf":
                return self._compiler.compile_grammar(spec.pattern)
            # Compact separators (", " and ": "), no free whitespace: the layout is forced, so it jumps forward.
            return self._compiler.compile_json_schema(spec.pattern, any_whitespace=False)
        except (RuntimeError, ValueError) as exc:
            reason = _XGRAMMAR_LOG_PREFIX.sub("", str(exc).strip()) or type(exc).__name__
            raise ValueError(f"invalid {spec.kind} {spec.pattern!r}: {reason}") from exc


def tokenizer_info(hf_tokenizer: Any, vocab_size: int, stop_token_ids: tuple[int, ...]) -> xgr.TokenizerInfo:
    """xgrammar's view of the vocabulary, with special tokens (bos, pad, role markers) never allowed.

    xgrammar would otherwise read a special token like `<s>` as the literal text "<s>"; an empty
    entry marks a token the grammar never accepts as text. Stop tokens are empty too: xgrammar allows
    them by id where the grammar can end, and as text "</s>" would let eos through any `.`.
    """
    base = xgr.TokenizerInfo.from_huggingface(hf_tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids))
    special = {i for i, t in hf_tokenizer.added_tokens_decoder.items() if t.special} | set(hf_tokenizer.all_special_ids)
    special |= set(stop_token_ids)
    vocab = [""] * vocab_size
    for token, i in hf_tokenizer.get_vocab().items():
        if i < vocab_size and i not in special:
            vocab[i] = token
    return xgr.TokenizerInfo.from_vocab_and_metadata(vocab, base.dump_metadata())


def unpack_bitmask(words: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """xgrammar's int32 bitmask [ceil(vocab / 32)] as a bool tensor [vocab] (bit i of word w = token 32w + i)."""
    return ((words[:, None] >> _BITS) & 1).bool().flatten()[:vocab_size]


class GrammarMatcher:
    """One request's position in its grammar (engine thread only after submission)."""

    def __init__(self, compiled: xgr.CompiledGrammar, vocab_size: int, stop_token_ids: tuple[int, ...]):
        self._matcher = xgr.GrammarMatcher(compiled)
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)  # [1, ceil(vocab / 32)] int32
        self._vocab_size = vocab_size
        self._stop = torch.tensor(stop_token_ids, dtype=torch.int64)
        self._allowed: torch.Tensor | None = None  # mask of the current state, computed on demand
        self._refused = 0  # tokens of the current mask the matcher refused (see `refuse`)

    def allowed_tokens(self) -> torch.Tensor:
        """Bool [vocab] on the CPU: the tokens the grammar accepts next (stop tokens once it can end)."""
        if self._allowed is None:
            self._matcher.fill_next_token_bitmask(self._bitmask)
            self._allowed = unpack_bitmask(self._bitmask[0], self._vocab_size)
            self._refused = 0
        return self._allowed

    def accept(self, token: int) -> None:
        """Advance by one token known to fit (a refusal is a bug)."""
        if not self.try_accept(token):
            raise RuntimeError(f"token {token} violates the grammar although it was masked")

    def try_accept(self, token: int) -> bool:
        """Advance by one sampled token; False, with the state unchanged, when the grammar refuses it."""
        if not self._matcher.accept_token(token):
            return False
        self._allowed = None
        return True

    def refuse(self, token: int) -> torch.Tensor:
        """This state's mask without token, which it allowed but the matcher refused: xgrammar 0.2's masks
        can over-allow after some Unicode character classes. From the third refusal in a state on, the
        whole mask is checked first (`exact_allowed_tokens`). Kept for this state."""
        allowed = self.allowed_tokens()
        self._refused += 1
        if self._refused == _CHECK_MASK_AFTER:
            allowed = self.exact_allowed_tokens()
        allowed[token] = False
        return allowed

    def exact_allowed_tokens(self) -> torch.Tensor:
        """The mask with every token the matcher refuses removed, kept for this state: each allowed token
        is tried and rolled back (about 2.5 us a token), so it runs only after refusals."""
        allowed = self.allowed_tokens().clone()
        stop = set(self._stop.tolist())
        for token in allowed.nonzero().flatten().tolist():
            if token in stop:
                continue
            if self._matcher.accept_token(token):
                self._matcher.rollback(1)
            else:
                allowed[token] = False
        self._allowed = allowed
        return allowed

    def is_terminated(self) -> bool:
        """A stop token was accepted."""
        return self._matcher.is_terminated()

    def must_stop(self) -> bool:
        """The output is complete and nothing but a stop token may follow it."""
        if not self._matcher.is_completed():
            return False
        others = self.allowed_tokens().clone()
        others[self._stop] = False
        return not bool(others.any())

    def forced_string(self) -> str:
        """The longest text every continuation allowed from here starts with ("" when there is a choice)."""
        return self._matcher.find_jump_forward_string()

    def replace_tail(self, old: list[int], new: list[int]) -> bool:
        """Swap the last accepted tokens old for new (retokenized, longer text). False, with the state
        unchanged, when the grammar refuses new (e.g. it holds a special token)."""
        self._matcher.rollback(len(old))
        self._allowed = None
        for i, token in enumerate(new):
            if not self._matcher.accept_token(token):
                self._matcher.rollback(i)
                for t in old:
                    self.accept(t)
                return False
        return True


@dataclass(frozen=True)
class Jump:
    """A jump-forward: the output becomes output_ids[:keep] + tokens (old tail retokenized with forced text)."""

    keep: int
    tokens: tuple[int, ...]


def plan_jump(tokenizer: Any, output_ids: list[int], forced: str, max_len: int) -> Jump | None:
    """Retokenize the last output tokens together with the forced text, so the ids are what the
    tokenizer gives for that text. At most max_len output tokens after the jump; None when the text
    does not round-trip (a split UTF-8 character) or the output would not grow."""
    keep = max(len(output_ids) - RETOKENIZE_WINDOW, 0)
    tail = tokenizer.decode(output_ids[keep:], skip_special_tokens=False)
    while "\ufffd" in tail[:1] and keep > 0:  # the window starts inside a character: widen it
        keep -= 1
        tail = tokenizer.decode(output_ids[keep:], skip_special_tokens=False)
    text = tail + forced
    tokens = tokenizer.encode_plain(text)[: max_len - keep]
    decoded = tokenizer.decode(tokens, skip_special_tokens=False)
    if "\ufffd" in tail or not text.startswith(decoded) or len(decoded) <= len(tail):
        return None
    return Jump(keep, tuple(tokens))


# ---------------------------------------------------------------------------- Python regex -> xgrammar
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
