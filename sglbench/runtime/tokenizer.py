"""Tokenizer access for the engine: encoding prompts, detokenizing outputs and matching stop strings."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer


class Tokenizer:
    """A Hugging Face tokenizer behind a lock (the Rust tokenizer refuses concurrent mutable use)."""

    def __init__(self, model_path: str | Path):
        path = Path(model_path)
        if not (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
            raise FileNotFoundError(f"model_path {str(path)!r} has no tokenizer (tokenizer.json / tokenizer_config.json)")
        self.hf = AutoTokenizer.from_pretrained(str(path))
        self._lock = threading.Lock()

    def encode(self, text: str) -> list[int]:
        with self._lock:
            return list(self.hf.encode(text, add_special_tokens=True))

    def encode_plain(self, text: str) -> list[int]:
        """Tokens of text with no bos/eos added (for continuations)."""
        with self._lock:
            return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        with self._lock:
            return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        eos = self.hf.eos_token_id
        return () if eos is None else (eos,)

    @property
    def chat_template(self) -> str | None:
        return getattr(self.hf, "chat_template", None)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        with self._lock:
            return self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


@dataclass(frozen=True)
class StopMatch:
    text: str  # output text cut before the stop string
    matched: str


def find_stop(text: str, stops: tuple[str, ...], search_from: int) -> StopMatch | None:
    """Earliest stop string in text that ends after search_from (stops may straddle token boundaries)."""
    best: StopMatch | None = None
    for stop in stops:
        pos = text.find(stop, max(0, search_from - len(stop) + 1))
        if pos != -1 and (best is None or pos < len(best.text)):
            best = StopMatch(text[:pos], stop)
    return best


def streamable_length(text: str, stops: tuple[str, ...]) -> int:
    """How much of text can be shown now: hold back an incomplete UTF-8 character and any tail that
    could still grow into a stop string, so streamed text never contains what is later cut."""
    end = len(text)
    while end > 0 and text[end - 1] == "\ufffd":
        end -= 1
    for stop in stops:
        for k in range(min(len(stop) - 1, end), 0, -1):
            if text[:end].endswith(stop[:k]):
                end = min(end, len(text[:end]) - k)
                break
    return end
