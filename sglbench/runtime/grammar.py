"""Constrained decoding with xgrammar: grammars compiled once per tokenizer, one matcher per request.

`GrammarCompiler` turns a regex or a JSON schema into a compiled grammar for the engine's tokenizer
(LRU-cached by kind and pattern, thread-safe, so compilation runs on the caller's thread). Each
constrained request owns a `GrammarMatcher`: the allowed-token mask for its next step, accepting
tokens, whether the grammar is done, and the forced continuation used for jump-forward.
`plan_jump` retokenizes the output's last tokens together with that forced text.
"""

from __future__ import annotations

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

# Output tokens retokenized with the forced text: enough for a UTF-8 character split over byte
# tokens and for BPE merges across the boundary (as SGLang's surrounding-token offset).
RETOKENIZE_WINDOW = 4
COMPILE_THREADS = max(1, min(8, (os.cpu_count() or 1) // 2))  # xgrammar precomputes token masks in parallel
_BITS = torch.arange(32, dtype=torch.int32)
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
                return self._compiler.compile_regex(spec.pattern)
            # Compact separators (", " and ": "), no free whitespace: the layout is forced, so it jumps forward.
            return self._compiler.compile_json_schema(spec.pattern, any_whitespace=False)
        except (RuntimeError, ValueError) as exc:
            reason = _XGRAMMAR_LOG_PREFIX.sub("", str(exc).strip()) or type(exc).__name__
            raise ValueError(f"invalid {spec.kind} {spec.pattern!r}: {reason}") from exc


def tokenizer_info(hf_tokenizer: Any, vocab_size: int, stop_token_ids: tuple[int, ...]) -> xgr.TokenizerInfo:
    """xgrammar's view of the vocabulary, with special tokens (bos, pad, role markers) never allowed.

    xgrammar would otherwise read a special token like `<s>` as the literal text "<s>"; an empty
    entry marks a token the grammar never accepts. Stop tokens stay: the grammar allows them at its end.
    """
    base = xgr.TokenizerInfo.from_huggingface(hf_tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids))
    special = {i for i, t in hf_tokenizer.added_tokens_decoder.items() if t.special} | set(hf_tokenizer.all_special_ids)
    special -= set(stop_token_ids)
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

    def allowed_tokens(self) -> torch.Tensor:
        """Bool [vocab] on the CPU: the tokens the grammar accepts next (stop tokens once it can end)."""
        if self._allowed is None:
            self._matcher.fill_next_token_bitmask(self._bitmask)
            self._allowed = unpack_bitmask(self._bitmask[0], self._vocab_size)
        return self._allowed

    def accept(self, token: int) -> None:
        """Advance by one sampled token; the mask guarantees it fits, so a refusal is a bug."""
        if not self._matcher.accept_token(token):
            raise RuntimeError(f"token {token} violates the grammar although it was masked")
        self._allowed = None

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
