"""Reasoning formats for `sgl.separate_reasoning` and the server's `reasoning_content`: where a reasoning model's
thinking starts and ends, split at once (`split_reasoning`) or as the text streams (`ReasoningStream`).

Named as SGLang's reasoning parsers are (`--reasoning-parser`). The split, the same for both:
- the output is in reasoning from its start when the format is `forced` (its chat template opens the block) or
  when the prompt opened it (`opened`, see `prompt_opens_reasoning`); otherwise only when the output begins
  (after whitespace) with the start marker. A start marker later in the text is plain text;
- a leading start marker is skipped (models such as DeepSeek-R1-0528 write it although the template opened it);
- the reasoning runs to the first end marker, and a missing end marker leaves it all reasoning;
- the reasoning is stripped of surrounding whitespace, the answer after the end marker of leading whitespace;
  an output that never entered reasoning is all answer, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True)
class ReasoningFormat:
    start: str
    end: str
    forced: bool = False  # the reasoning begins without its start marker


_THINK = ("<think>", "</think>")
REASONING_FORMATS: dict[str, ReasoningFormat] = {
    "deepseek-r1": ReasoningFormat(*_THINK, forced=True),
    "deepseek-v3": ReasoningFormat(*_THINK),
    "qwen3": ReasoningFormat(*_THINK),
    "qwen3-thinking": ReasoningFormat(*_THINK, forced=True),
    "glm45": ReasoningFormat(*_THINK),
    "step3": ReasoningFormat(*_THINK, forced=True),
    "kimi": ReasoningFormat("\u25c1think\u25b7", "\u25c1/think\u25b7"),
}


def reasoning_format(model_type: str | None) -> ReasoningFormat:
    """The format named model_type (case-insensitive); ValueError naming the known ones."""
    found = REASONING_FORMATS.get(str(model_type).lower()) if model_type else None
    if found is None:
        raise ValueError(f"separate_reasoning needs model_type, one of {sorted(REASONING_FORMATS)}; "
                         f"got {model_type!r}")
    return found


def prompt_opens_reasoning(prompt_text: str, fmt: ReasoningFormat) -> bool:
    """Whether a rendered prompt ends inside an open reasoning block (e.g. `...<|im_start|>assistant\\n<think>\\n`),
    so the output starts as reasoning; a prompt that closes it (Qwen3's enable_thinking=False) does not."""
    return prompt_text.rstrip().endswith(fmt.start)


def _skip_start(text: str, fmt: ReasoningFormat) -> tuple[bool, str]:
    """(whether text begins with the start marker after whitespace, text after it, or text unchanged)."""
    rest = text.lstrip()
    return (True, rest[len(fmt.start):]) if rest.startswith(fmt.start) else (False, text)


def split_reasoning(text: str, fmt: ReasoningFormat, opened: bool = False) -> tuple[str, str]:
    """(reasoning, answer) of a generated text; opened: the prompt ended inside the reasoning block."""
    began, body = _skip_start(text, fmt)
    if not (began or fmt.forced or opened):
        return "", text
    reasoning, marker, answer = body.partition(fmt.end)
    return reasoning.strip(), (answer.lstrip() if marker else "")


def _partial_marker(text: str, marker: str) -> int:
    """Length of the longest end of text that is a proper beginning of marker (text that may become it)."""
    for k in range(min(len(text), len(marker) - 1), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


class ReasoningPieces(NamedTuple):
    reasoning: str
    content: str


class ReasoningStream:
    """split_reasoning of a text that arrives in pieces: feed(piece) -> (reasoning, content) to show now, finish()
    -> the rest. Text that may still become a marker, or whitespace the split would strip, is held back, so the
    pieces joined equal split_reasoning of the whole text."""

    def __init__(self, fmt: ReasoningFormat, opened: bool = False):
        self.fmt = fmt
        self._reasoning_first = fmt.forced or opened
        self._phase = "lead"  # lead -> reasoning -> answer-lead -> answer, or lead -> answer
        self._held = ""  # text received and not yet shown
        self._shown_reasoning = False  # reasoning shown so far has a non-whitespace character

    @property
    def in_reasoning(self) -> bool:
        """Whether the text so far is inside the reasoning block (undecided leading text counts as outside)."""
        return self._phase == "reasoning" or (self._phase == "lead" and self._reasoning_first)

    def _lead(self, final: bool) -> ReasoningPieces:
        """Before deciding: wait while the text is whitespace or a beginning of the start marker."""
        rest = self._held.lstrip()
        if not final and (not rest or (self.fmt.start.startswith(rest) and rest != self.fmt.start)):
            return ReasoningPieces("", "")
        began, body = _skip_start(self._held, self.fmt)
        if began or self._reasoning_first:
            self._phase, self._held = "reasoning", body
            return self._reasoning(final)
        self._phase, self._held = "answer", ""
        return ReasoningPieces("", body)

    def _reasoning(self, final: bool) -> ReasoningPieces:
        end = self._held.find(self.fmt.end)
        if end != -1:
            shown, after = self._held[:end].rstrip(), self._held[end + len(self.fmt.end):]
            self._phase, self._held = "answer-lead", after
        elif final:
            shown, self._held = self._held.rstrip(), ""
        else:  # hold a possible marker and the whitespace before it (stripped if the reasoning ends there)
            cut = len(self._held[: len(self._held) - _partial_marker(self._held, self.fmt.end)].rstrip())
            shown, self._held = self._held[:cut], self._held[cut:]
        if not self._shown_reasoning:
            shown = shown.lstrip()
            self._shown_reasoning = bool(shown)
        if self._phase == "answer-lead":
            return ReasoningPieces(shown, self._answer_lead())
        return ReasoningPieces(shown, "")

    def _answer_lead(self) -> str:
        shown, self._held = self._held.lstrip(), ""
        if shown:
            self._phase = "answer"
        return shown

    def _step(self, final: bool) -> ReasoningPieces:
        if self._phase == "lead":
            return self._lead(final)
        if self._phase == "reasoning":
            return self._reasoning(final)
        if self._phase == "answer-lead":
            return ReasoningPieces("", self._answer_lead())
        shown, self._held = self._held, ""
        return ReasoningPieces("", shown)

    def feed(self, piece: str) -> ReasoningPieces:
        """(reasoning, content) that piece makes certain."""
        self._held += piece
        return self._step(final=False)

    def finish(self) -> ReasoningPieces:
        """(reasoning, content) held back until the end of the text."""
        return self._step(final=True)
