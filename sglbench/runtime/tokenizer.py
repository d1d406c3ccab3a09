"""Tokenizer access for the engine: encoding prompts, detokenizing outputs, matching stop strings/regexes."""

from __future__ import annotations

import functools
import inspect
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2  # transformers renders chat templates with it
import regex  # a dependency of transformers: its partial matching holds back streamed text
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from sglbench.runtime.prefix_encoder import PrefixEncoder
from sglbench.runtime.regex_dialect import xgrammar_regex  # the one restatement of Python's regex dialect

try:
    from re import _parser as _sre_parse
except ImportError:  # Python 3.10
    import sre_parse as _sre_parse  # type: ignore[no-redef]


# Names a request's template kwargs may not take: Hugging Face's apply_chat_template reads them itself.
_HF_CHAT_TEMPLATE_PARAMETERS = frozenset(inspect.signature(PreTrainedTokenizerBase.apply_chat_template).parameters
                                         ) - {"self", "kwargs"}
_SANITIZES = "sanitize_control_tokens" in _HF_CHAT_TEMPLATE_PARAMETERS  # transformers 5.x


# Texts on which a fast tokenizer's Rust backend must encode as the Hugging Face wrapper does before `Tokenizer`
# calls it directly: spaces, a JSON key, unicode and emoji, a few-shot line (and, added there, special tokens).
_ENCODE_PROBES = ("", " ", "  Hello  world", '{\n  "name": "', "naïve café 東京 🚀", "\n\nQ: What is 3 + 4?\nA:")
# ... and must decode as the wrapper does: with spaces before punctuation, which its clean-up would remove.
_DECODE_PROBES = (*_ENCODE_PROBES, "Yes , it is . Is n't it ? It 's so !")


class Tokenizer:
    """A Hugging Face tokenizer behind a lock (the Rust tokenizer refuses concurrent mutable use)."""

    def __init__(self, model_path: str | Path):
        path = Path(model_path)
        if not (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
            raise FileNotFoundError(f"model_path {str(path)!r} has no tokenizer (tokenizer.json / tokenizer_config.json)")
        self.hf = AutoTokenizer.from_pretrained(str(path))
        self._lock = threading.Lock()
        self._backend = self._checked_backend()
        self._decoder = self._checked_decoder()
        # texts that extend one encoded lately re-encode only their end (prefix_encoder.py); per add_special_tokens
        backend = self._rust_backend() if self._backend is not None else None
        self._prefix_encoders = {special: PrefixEncoder.checked(backend, special) for special in (False, True)}

    def _rust_backend(self) -> Any:
        """The Rust tokenizer under a fast Hugging Face one (None under a slow one)."""
        return getattr(self.hf, "backend_tokenizer", None) if getattr(self.hf, "is_fast", False) else None

    def _checked_backend(self) -> Callable[[str, bool], list[int]] | None:
        """Encoding through the Rust tokenizer under a fast Hugging Face one, when it encodes the probes as the
        wrapper does with and without special tokens and neither truncates nor pads; else None. Called directly
        it takes a third of the wrapper's time a call (10 against 31 us here), and jump-forward encodes every
        forced string. It goes through the batch call, which releases the GIL (`encode` holds it: a program's
        whole context, 0.3 ms for 900 characters, during which the engine thread's Python work waits)."""
        backend = self._rust_backend()
        if backend is None:
            return None
        batch = getattr(backend, "encode_batch_fast", None) or backend.encode_batch  # _fast: no offsets

        def encode(text: str, special: bool) -> list[int]:
            return batch([text], add_special_tokens=special)[0].ids

        probes = [*_ENCODE_PROBES, *(f" {t} x" for t in self.hf.all_special_tokens[:8])]
        for text in probes:
            for special in (False, True):
                if list(self.hf.encode(text, add_special_tokens=special)) != encode(text, special):
                    return None
        # after the wrapper's calls: they turn off truncation and padding that tokenizer.json may carry
        return encode if backend.truncation is None and backend.padding is None else None

    def _checked_decoder(self) -> Callable[[list[int], bool], str] | None:
        """Decoding through the Rust tokenizer under a fast Hugging Face one, when it decodes the probes (special
        tokens among them, skipped or kept) as the wrapper does; else None. The wrapper's argument handling
        costs three times the Rust decode of a token or two (about 3 against 1 us here), and the engine decodes
        each request's new tokens every step to match stop strings and to stream."""
        backend = self._rust_backend()
        if backend is None:
            return None
        probes = [self.hf.encode(text, add_special_tokens=True) for text in _DECODE_PROBES]
        probes += [self.hf.encode(f" {t} x", add_special_tokens=False) for t in self.hf.all_special_tokens[:8]]
        probes += [[i] for i in sorted(self.hf.all_special_ids)[:8]]
        for ids in probes:
            for skip in (False, True):
                if self.hf.decode(ids, skip_special_tokens=skip) != backend.decode(ids, skip_special_tokens=skip):
                    return None
        return backend.decode

    def _encode(self, text: str, special: bool) -> list[int]:
        with self._lock:
            if self._backend is None:
                return list(self.hf.encode(text, add_special_tokens=special))
            prefix_encoder = self._prefix_encoders[special]
            return prefix_encoder.encode(text) if prefix_encoder is not None else self._backend(text, special)

    def encode(self, text: str) -> list[int]:
        return self._encode(text, True)

    def encode_plain(self, text: str) -> list[int]:
        """Tokens of text with no bos/eos added (for continuations)."""
        return self._encode(text, False)

    def decode(self, ids: list[int], skip_special_tokens: bool = True,
               spaces_between_special_tokens: bool = True) -> str:
        """Text of ids; spaces_between_special_tokens=False is passed on (slow tokenizers honour it)."""
        with self._lock:
            if self._decoder is not None and spaces_between_special_tokens:
                return self._decoder(ids, skip_special_tokens)
            extra = {} if spaces_between_special_tokens else {"spaces_between_special_tokens": False}
            return self.hf.decode(ids, skip_special_tokens=skip_special_tokens, **extra)

    @functools.cached_property
    def special_ids(self) -> frozenset[int]:
        """Ids whose text skip_special_tokens drops."""
        return frozenset(self.hf.all_special_ids)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        eos = self.hf.eos_token_id
        return () if eos is None else (eos,)

    @property
    def chat_template(self) -> str | None:
        return getattr(self.hf, "chat_template", None)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, tools: list[dict] | None = None,
                            continue_final_message: bool = False, **template_kwargs) -> str:
        """The prompt text of messages through the model's own chat template; tools and template_kwargs (e.g.
        enable_thinking) reach the Jinja template. continue_final_message leaves the last message open (no
        generation prompt then). ValueError when the template refuses the messages, saying why."""
        return self._render(messages, add_generation_prompt, tools, continue_final_message, template_kwargs,
                            tokenize=False)

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True, tools: list[dict] | None = None,
                    continue_final_message: bool = False, **template_kwargs) -> list[int]:
        """The prompt ids of messages through the chat template, with the control tokens (`<|system|>`, `</s>`,
        ...) that messages or tools contain encoded as ordinary text, so a user cannot forge another role: only
        the markers the template writes are tokens. Needs transformers' sanitize_control_tokens (5.x); on
        older releases the rendered text is encoded as it is."""
        if not _SANITIZES:
            return self.encode_plain(self.apply_chat_template(
                messages, add_generation_prompt, tools, continue_final_message, **template_kwargs))
        return list(self._render(messages, add_generation_prompt, tools, continue_final_message, template_kwargs,
                                 tokenize=True, return_dict=False, sanitize_control_tokens=True))

    def _render(self, messages: list[dict], add_generation_prompt: bool, tools: list[dict] | None,
                continue_final_message: bool, template_kwargs: dict, **hf_kwargs) -> Any:
        reserved = sorted(set(template_kwargs) & _HF_CHAT_TEMPLATE_PARAMETERS)
        if reserved:
            raise ValueError(f"chat template kwargs {reserved} are apply_chat_template's own parameters, not template "
                             "variables")
        try:
            with self._lock:
                return self.hf.apply_chat_template(
                    messages, tools=tools, continue_final_message=continue_final_message,
                    add_generation_prompt=add_generation_prompt and not continue_final_message, **hf_kwargs,
                    **template_kwargs)
        except jinja2.TemplateError as exc:
            raise ValueError(f"the model's chat template refused these messages: {exc}") from exc


@dataclass(frozen=True)
class StopMatch:
    text: str  # output text cut before the stop string (or the stop regex's match)
    matched: str  # the stop string, or the stop regex's pattern (as SGLang reports it)


def find_stop(text: str, stops: tuple[str, ...], search_from: int) -> StopMatch | None:
    """Earliest stop string in text that ends after search_from (stops may straddle token boundaries)."""
    best: StopMatch | None = None
    for stop in stops:
        pos = text.find(stop, max(0, search_from - len(stop) + 1))
        if pos != -1 and (best is None or pos < len(best.text)):
            best = StopMatch(text[:pos], stop)
    return best


@functools.lru_cache(maxsize=256)
def _stop_regex(pattern: str) -> tuple[re.Pattern, int | None]:
    """pattern compiled, and the most characters a match spans (None: unbounded)."""
    try:
        high = _sre_parse.parse(pattern).getwidth()[1]
    except Exception:  # Python's private parser changed: search all the text
        high = None
    return re.compile(pattern), (high if high is not None and high < 1 << 16 else None)


def find_stop_regex(text: str, patterns: tuple[str, ...], search_from: int) -> StopMatch | None:
    """Earliest match of a stop regex that ends after search_from (text before it was searched when it
    was new), so each step searches only the tail a match can span; StopMatch.matched is the pattern."""
    best: tuple[int, str] | None = None
    for pattern in patterns:
        compiled, width = _stop_regex(pattern)
        m = compiled.search(text, 0 if width is None else max(0, search_from - width + 1))
        if m is not None and (best is None or m.start() < best[0]):
            best = (m.start(), pattern)
    return None if best is None else StopMatch(text[: best[0]], best[1])


@functools.lru_cache(maxsize=256)
def _growable(pattern: str) -> regex.Pattern | None:
    """For partial matching: pattern restated with its character classes spelled out and its edge anchors
    dropped (a superset of its matches), which the regex module reads as `re` reads the original (its own
    \\w, \\s and \\d differ from re's). None when the restatement refuses a construct (lookarounds, \\b)."""
    try:
        return regex.compile(xgrammar_regex(pattern))
    except ValueError:
        return None


def _regex_hold(text: str, pattern: str, shown: int) -> int:
    """Where the tail of text that could still grow into a match of pattern starts (len(text): none);
    text before `shown` is already streamed and was checked when it was the tail."""
    width = _stop_regex(pattern)[1]
    first = max(shown, 0 if width is None else len(text) - width + 1)
    grow = _growable(pattern)
    if grow is None:  # hold back all a match could span
        return first if width is not None else shown
    return next((p for p in range(first, len(text)) if grow.fullmatch(text, p, partial=True)), len(text))


def streamable_length(text: str, stops: tuple[str, ...], stop_regex: tuple[str, ...] = (),
                      shown: int = 0) -> int:
    """How much of text can be shown now: hold back an incomplete UTF-8 character and any tail that could
    still grow into a stop string or a stop regex's match, so streamed text never contains what is later
    cut. shown: characters already streamed."""
    end = len(text)
    while end > 0 and text[end - 1] == "\ufffd":
        end -= 1
    for stop in stops:
        for k in range(min(len(stop) - 1, end), 0, -1):
            if text[:end].endswith(stop[:k]):
                end = min(end, len(text[:end]) - k)
                break
    for pattern in stop_regex:
        end = min(end, _regex_hold(text, pattern, shown))
    return end
