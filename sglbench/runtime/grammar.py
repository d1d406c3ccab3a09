r"""Constrained decoding with xgrammar: grammars compiled once per tokenizer, one matcher per request.

`GrammarCompiler` turns a regex, a JSON schema or an EBNF grammar into a compiled grammar for the engine's
tokenizer (LRU-cached by kind and pattern, thread-safe, so compilation runs on the caller's thread). A
regex is written in Python's dialect and means what `re.fullmatch` accepts: `xgrammar_regex` restates it
in the plain syntax xgrammar reads (xgrammar's own `.` also matches a newline, its `\d` only ASCII). Each
constrained request owns a `GrammarMatcher`: the allowed-token mask for its next step, accepting
tokens, whether the grammar is done, and the forced continuation used for jump-forward.
`plan_jump` retokenizes the output's last tokens together with that forced text.

Grammar work is bounded: a pattern over the size, nesting or property limits is refused before xgrammar
sees it, a grammar with a part no finite text completes is refused (`incompletable_part` for schemas,
`grammar_shape` for every kind), and jump-forward runs only on grammars whose forced text is proven
short (see `grammar_shape`), because xgrammar's forced-text search has no bound of its own.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sglbench.runtime.grammar_limits import check_grammar_limits, grammar_shape, incompletable_part, shorten
from sglbench.runtime.regex_dialect import xgrammar_regex
from sglbench.runtime.sampling_params import GrammarSpec
from sglbench.sequences import common_prefix_len

if TYPE_CHECKING:
    import xgrammar as xgr

# Output tokens retokenized with the forced text: enough for a UTF-8 character split over byte
# tokens and for BPE merges across the boundary (as SGLang's surrounding-token offset).
RETOKENIZE_WINDOW = 4
COMPILE_THREADS = max(1, min(8, (os.cpu_count() or 1) // 2))  # xgrammar precomputes token masks in parallel
CACHE_BYTES = 512 * 1024 * 1024  # compiled grammars kept (xgrammar's estimate), beside the count limit
_CHECK_MASK_AFTER = 3  # refusals in one state before its whole mask is checked instead of resampling
_XGRAMMAR_LOG_PREFIX = re.compile(r"^\[[^\]]*\]\s*\S+:\d+:\s*")  # "[15:57:21] /project/cpp/x.cc:83: "


def xgrammar():
    """The xgrammar module, imported on the first constrained request: the engine runs without it (a GPU
    image may lack it); a constrained request then fails alone with an error that says what to install."""
    try:
        import xgrammar as module
    except ImportError as exc:
        raise RuntimeError("constrained decoding (regex=, json_schema=, ebnf=, select by grammar) needs xgrammar: "
                           "pip install xgrammar") from exc
    return module



@dataclass(frozen=True)
class CompiledGrammar:
    """A compiled grammar and whether jump-forward's forced-text search is proven bounded on it."""

    grammar: xgr.CompiledGrammar
    jump_forward_safe: bool

    @property
    def memory_size_bytes(self) -> int:
        return self.grammar.memory_size_bytes


class GrammarCompiler:
    """Compiles grammars for one tokenizer, keeping the `cache_size` most recently used ones (and at most
    `CACHE_BYTES` of them).

    Compilation runs on the caller's thread and releases the GIL, so the engine thread keeps stepping.
    xgrammar 0.2.9 can neither time out nor cancel a compilation, so its time and memory are bounded by
    the limits checked first (`check_grammar_limits`): size, nesting, properties per object.
    """

    def __init__(self, hf_tokenizer: Any, vocab_size: int, stop_token_ids: Iterable[int], cache_size: int = 256):
        self.vocab_size = vocab_size
        self.stop_token_ids = tuple(sorted(stop_token_ids))
        self.cache_size = cache_size
        self._hf = hf_tokenizer
        self._compiler: xgr.GrammarCompiler | None = None  # built on first use: it scans the vocabulary
        self._cache: OrderedDict[GrammarSpec, CompiledGrammar] = OrderedDict()
        self._cache_bytes = 0
        self._lock = threading.Lock()

    def compile(self, spec: GrammarSpec) -> CompiledGrammar:
        """The compiled grammar for spec, from the cache when seen before. ValueError names a bad pattern,
        a limit it is over, or a part of it that can never be completed."""
        with self._lock:
            compiled = self._cache.get(spec)
            if compiled is None:
                compiled = self._compile(spec)
                self._cache[spec] = compiled
                self._cache_bytes += compiled.memory_size_bytes
                while len(self._cache) > 1 and (len(self._cache) > self.cache_size
                                                or self._cache_bytes > CACHE_BYTES):
                    self._cache_bytes -= self._cache.popitem(last=False)[1].memory_size_bytes
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

    def _compile(self, spec: GrammarSpec) -> CompiledGrammar:
        check_grammar_limits(spec)
        if spec.kind == "json_schema":
            problem = incompletable_part(json.loads(spec.pattern))
            if problem is not None:
                raise ValueError(f"json_schema: {problem}")
        if self._compiler is None:
            info = tokenizer_info(self._hf, self.vocab_size, self.stop_token_ids)
            self._compiler = xgrammar().GrammarCompiler(info, max_threads=COMPILE_THREADS, cache_enabled=False)
        try:
            grammar = _xgrammar_grammar(spec)
            shape = grammar_shape(grammar)
            compiled = self._compiler.compile_grammar(grammar) if shape.stuck is None else None
        except (RuntimeError, ValueError) as exc:  # RecursionError included
            reason = _XGRAMMAR_LOG_PREFIX.sub("", str(exc).strip()) or type(exc).__name__
            raise ValueError(f"invalid {spec.kind} {shorten(spec.pattern)}: {reason}") from exc
        if compiled is None:
            raise ValueError(f"{spec.kind}: {shape.stuck}")
        return CompiledGrammar(compiled, shape.jump_forward_safe)


def _xgrammar_grammar(spec: GrammarSpec) -> xgr.Grammar:
    """spec as xgrammar's grammar, before compilation (which `grammar_shape` reads)."""
    xgr = xgrammar()
    if spec.kind == "regex":
        return xgr.Grammar.from_regex(xgrammar_regex(spec.pattern))
    if spec.kind == "ebnf":
        return xgr.Grammar.from_ebnf(spec.pattern)
    # Compact separators (", " and ": "), no free whitespace: the layout is forced, so it jumps forward.
    return xgr.Grammar.from_json_schema(spec.pattern, any_whitespace=False)




def tokenizer_info(hf_tokenizer: Any, vocab_size: int, stop_token_ids: tuple[int, ...]) -> xgr.TokenizerInfo:
    """xgrammar's view of the vocabulary, with special tokens (bos, pad, role markers) never allowed.

    xgrammar would otherwise read a special token like `<s>` as the literal text "<s>"; an empty
    entry marks a token the grammar never accepts as text. Stop tokens are empty too: xgrammar allows
    them by id where the grammar can end, and as text "</s>" would let eos through any `.`.
    """
    xgr = xgrammar()
    base = xgr.TokenizerInfo.from_huggingface(hf_tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids))
    special = {i for i, t in hf_tokenizer.added_tokens_decoder.items() if t.special} | set(hf_tokenizer.all_special_ids)
    special |= set(stop_token_ids)
    vocab = [""] * vocab_size
    for token, i in hf_tokenizer.get_vocab().items():
        if i < vocab_size and i not in special:
            vocab[i] = token
    return xgr.TokenizerInfo.from_vocab_and_metadata(vocab, base.dump_metadata())


def _bits(words: torch.Tensor, vocab_size: int) -> np.ndarray:
    """xgrammar's int32 bitmask [..., ceil(vocab / 32)] as uint8 0/1 [..., vocab] (bit i of word w = token 32w + i):
    numpy's unpackbits over the little-endian bytes, one call for any number of rows."""
    return np.unpackbits(words.contiguous().numpy().view(np.uint8), axis=-1, bitorder="little")[..., :vocab_size]


def unpack_bitmask(words: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """xgrammar's int32 bitmask [..., ceil(vocab / 32)] as a bool tensor [..., vocab] (see `_bits`)."""
    return torch.from_numpy(_bits(words, vocab_size).view(np.bool_))


def bitmask_bias(words: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """xgrammar's int32 bitmasks [rows, ceil(vocab / 32)] as float32 [rows, vocab]: 0 for an allowed token, -inf
    for a forbidden one, to add to logits. Built from the bits (bit b - 1 masked to -inf's pattern, 0xFF800000):
    a third of the time of masked_fill on [32, 4,096] here, which torch does not vectorize."""
    bias = (_bits(words, vocab_size).astype(np.int32) - 1) & np.int32(-0x800000)  # == 0xFF800000, float32 -inf
    return torch.from_numpy(bias.view(np.float32))


class GrammarMatcher:
    """One request's position in its grammar (engine thread only after submission)."""

    def __init__(self, compiled: CompiledGrammar, vocab_size: int, stop_token_ids: tuple[int, ...]):
        xgr = xgrammar()
        self._matcher = xgr.GrammarMatcher(compiled.grammar)
        self.jump_forward_safe = compiled.jump_forward_safe  # see `forced_string`
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)  # [1, ceil(vocab / 32)] int32
        self._vocab_size = vocab_size
        self._stop = torch.tensor(stop_token_ids, dtype=torch.int64)
        self._filled = False  # _bitmask holds the current state's mask
        self._allowed: torch.Tensor | None = None  # the same mask unpacked (narrowed by refusals), on demand
        self._refused = 0  # tokens of the current mask the matcher refused (see `refuse`)
        self.accepted = 0  # tokens accepted so far (rolled-back ones not counted)

    @property
    def narrowed(self) -> bool:
        """This state's mask lost tokens the matcher refused (`refuse`): only `allowed_tokens` has it."""
        return self._refused > 0

    def _state_changed(self) -> None:
        self._filled, self._allowed, self._refused = False, None, 0

    def token_bitmask(self) -> torch.Tensor | None:
        """The current state's mask packed as xgrammar fills it: int32 [ceil(vocab / 32)], bit i of word w for
        token 32w + i. None once a refusal narrowed the mask: then only `allowed_tokens` has it."""
        if self._refused:
            return None
        if not self._filled:
            self._matcher.fill_next_token_bitmask(self._bitmask)
            self._filled = True
        return self._bitmask[0]

    def allowed_tokens(self) -> torch.Tensor:
        """Bool [vocab] on the CPU: the tokens the grammar accepts next (stop tokens once it can end)."""
        if self._allowed is None:
            self._allowed = unpack_bitmask(self.token_bitmask(), self._vocab_size)
        return self._allowed

    def accept(self, token: int) -> None:
        """Advance by one token known to fit (a refusal is a bug)."""
        if not self.try_accept(token):
            raise RuntimeError(f"token {token} violates the grammar although it was masked")

    def try_accept(self, token: int) -> bool:
        """Advance by one sampled token; False, with the state unchanged, when the grammar refuses it."""
        if not self._matcher.accept_token(token):
            return False
        self._state_changed()
        self.accepted += 1
        return True

    def rollback(self, n: int) -> None:
        """Undo the last n accepted tokens (to rerun a step a fault interrupted)."""
        if n:
            self._matcher.rollback(n)
            self._state_changed()
            self.accepted -= n

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
        """The longest text every continuation allowed from here starts with ("" when there is a choice).

        Always "" on a grammar not proven safe by `grammar_shape`: xgrammar's search walks the forced text
        to its end with no limit, so on a grammar forcing endless (or exponentially long) text it grows
        memory until the process dies. Should it still fail (std::bad_alloc under a memory cap), this
        matcher stops jumping forward and decoding goes on token by token."""
        if not self.jump_forward_safe:
            return ""
        try:
            return self._matcher.find_jump_forward_string()
        except RuntimeError:
            self.jump_forward_safe = False
            return ""

    def replace_tail(self, old: list[int], new: list[int]) -> bool:
        """Swap the last accepted tokens old for new (retokenized, longer text). False, with the state
        unchanged, when the grammar refuses new (e.g. it holds a special token). Only the tokens after their
        common prefix are rolled back and accepted: a jump-forward's retokenized window mostly keeps its first
        tokens, and holding back its last token is a rollback of one."""
        same = common_prefix_len(old, new)
        self.rollback(len(old) - same)
        for i, token in enumerate(new[same:]):
            if not self.try_accept(token):
                self.rollback(i)
                for t in old[same:]:
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


