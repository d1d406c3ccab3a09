"""Encoding a text that extends one encoded lately: the old ids are kept up to a safe cut, only the rest is encoded.

A program's context grows by appending (an answer, the next message, a fork's branch) and every call sends all
of it, so the frontend tokenized the same prefix again at each call: tree-of-thought encoded 330 K characters a
run at size small, 0.2 s of CPU on a 2-core machine, about a fifth of its wall time.

A byte-level BPE tokenizer (GPT-2, Llama 3, the default model) splits the text into words (pre-tokens) with
regular expressions and merges bytes only inside a word, so a word's ids do not depend on the words around it.
Appending text can change the last word (it may grow, or a trailing space join the next word) and, through a
one-character look-ahead, where the one before it ends; words before those are fixed. So the new text is encoded
as the old ids up to the start of the old text's `MARGIN_WORDS`-th word from its end, then the encoding of the
rest. The cut's character position is the old text's length less the decoded length of the ids after it (a
byte-level decoder gives the text back exactly), checked against the text.

`PrefixEncoder.checked` builds one only where that holds on probes: no normalizer (NFC could compose a
character across the cut), a byte-level decoder, and every probe extension encoding as a whole encode does.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

MARGIN_WORDS = 3  # words of the old text encoded again: the last may change, and one more for the look-ahead
MIN_CHARS = 256  # shorter texts are encoded whole (the plain call is cheaper than the bookkeeping)
CAPACITY = 256  # encodings kept, most recently used first out last
MAX_CHARS = 2 << 20  # and at most this many characters of them (14 MB with their ids, for English text here)
CLOSE_CHARS = 512  # a remembered prefix this close to the text's end ends the search for a longer one

# Pairs (old text, appended text) that must encode as one text does, or the encoder is not used: words that
# grow across the cut (letters, digits split in pairs, contractions, runs of spaces, a space before a capital),
# newlines, unicode and special tokens on either side. Each old text is put after a filler to be long enough.
_FILLER = "Probe text for the tokenizer, long enough to be remembered: " * 5
_PROBES = (
    ("The quick brown fox jumps over the lazy dog. ", "Then it sle"),
    ("Count: 1234567", "89 and 3"),
    ("Sums: 12 + 3", "4 = 46\n\nQ: What is 7 + 5?\nA:"),
    ("She said it isn", "'t so   "),
    ("Padding with spaces      ", "  Word  "),
    ("Names follow: alice Bob carol", " Dave"),
    ("naïve café 東京 🚀 ü", "ber straße 🚀🚀 x"),
    ("Lines\n\n", "\n\n  indented\tTab"),
    ("Words grow: nation", "the con"),  # cut inside the word (at its last token), these two encode otherwise
    ("Words grow: arere", "struct alithe"),
)


@dataclass(frozen=True)
class _Encoded:
    text: str
    ids: list[int]
    word_starts: bytes  # 1 where an id begins a word (a special token is a word of its own), else 0


def _word_starts(word_ids: list[int | None]) -> bytes:
    return bytes(1 if w is None or i == 0 or w != word_ids[i - 1] else 0 for i, w in enumerate(word_ids))


class PrefixEncoder:
    """Encodes texts through a fast tokenizer's Rust backend, reusing the ids of the longest recently encoded text
    that the new one starts with (one instance per add_special_tokens setting; the caller serializes calls)."""

    def __init__(self, backend: Any, special: bool):
        self._backend = backend
        self._special = special
        self._lead = len(backend.encode_batch([""], add_special_tokens=special)[0].ids)  # bos the template adds
        self._recent: OrderedDict[str, _Encoded] = OrderedDict()
        self._chars = 0

    @classmethod
    def checked(cls, backend: Any, special: bool) -> PrefixEncoder | None:
        """An encoder for this backend where it gives a whole encode's ids on every probe extension, else None."""
        if backend is None or getattr(backend, "normalizer", None) is not None:
            return None
        if type(getattr(backend, "decoder", None)).__name__ != "ByteLevel":
            return None
        encoder = cls(backend, special)
        whole = encoder._whole
        lead = whole("").ids
        special_text = " ".join(t.content for t in backend.get_added_tokens_decoder().values())
        for old, more in (*_PROBES, ("Specials: " + special_text, " and " + special_text)):
            old = _FILLER + old
            for text in (old, old + more, more):  # the template may add leading tokens only
                if whole(text).ids[: len(lead)] != lead:
                    return None
            for text in (old, old + more, old + more + more):  # each extends the one before
                if encoder.encode(text) != whole(text).ids:
                    return None
        encoder.clear()
        return encoder

    def _whole(self, text: str) -> Any:
        return self._backend.encode_batch([text], add_special_tokens=self._special)[0]

    def clear(self) -> None:
        self._recent.clear()
        self._chars = 0

    def encode(self, text: str) -> list[int]:
        """The ids of text, as the backend's whole encode gives them."""
        if len(text) < MIN_CHARS:
            return self._backend.encode_batch_fast([text], add_special_tokens=self._special)[0].ids
        known = self._recent.get(text)
        if known is not None:
            self._recent.move_to_end(text)
            return list(known.ids)
        encoded = self._extend(text) or self._encode_whole(text)
        self._remember(encoded)
        return list(encoded.ids)

    def _encode_whole(self, text: str) -> _Encoded:
        e = self._whole(text)
        return _Encoded(text, e.ids, _word_starts(e.word_ids))

    def _extend(self, text: str) -> _Encoded | None:
        """text encoded from the longest remembered prefix of it, or None where none can be cut."""
        base = self._longest_prefix(text)
        if base is None:
            return None
        cut = self._cut(base)
        if cut is None:
            return None
        j, chars = cut
        tail = self._backend.encode_batch([text[chars:]], add_special_tokens=False)[0]
        return _Encoded(text, base.ids[:j] + tail.ids, base.word_starts[:j] + _word_starts(tail.word_ids))

    def _longest_prefix(self, text: str) -> _Encoded | None:
        """The longest remembered text that text starts with, most recent first: the search stops at one that
        leaves at most CLOSE_CHARS to encode (usually the caller's previous context, a few entries back), as a
        scan of all of them cost 60-80 us a call."""
        best, best_len, close = None, 0, len(text) - CLOSE_CHARS
        for encoded in reversed(self._recent.values()):  # none equals text: `encode` looked it up first
            if text.startswith(encoded.text):
                length = len(encoded.text)
                if length > best_len:
                    best, best_len = encoded, length
                if length >= close:
                    break
        return best

    def _cut(self, base: _Encoded) -> tuple[int, int] | None:
        """(ids kept, characters they spell): the start of base's MARGIN_WORDS-th word from its end."""
        j, words = len(base.ids), 0
        while words < MARGIN_WORDS:
            j = base.word_starts.rfind(1, self._lead, j)
            if j <= self._lead:
                return None
            words += 1
        dropped = self._backend.decode(base.ids[j:], skip_special_tokens=False)  # a few words: cheap to decode
        if not dropped or not base.text.endswith(dropped):
            return None
        return j, len(base.text) - len(dropped)

    def _remember(self, encoded: _Encoded) -> None:
        self._recent[encoded.text] = encoded
        self._chars += len(encoded.text)
        while self._recent and (len(self._recent) > CAPACITY or self._chars > MAX_CHARS):
            _, old = self._recent.popitem(last=False)
            self._chars -= len(old.text)
