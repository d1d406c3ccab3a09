"""Reasoning formats for `sgl.separate_reasoning`: where a reasoning model's thinking starts and ends.

Named as SGLang's reasoning parsers are (`--reasoning-parser`); the split follows theirs: text outside
the markers is the answer, a missing end marker leaves it all reasoning, and formats whose chat template
opens the thinking block itself (`forced`) count text from the start as reasoning.
"""

from __future__ import annotations

from dataclasses import dataclass


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


def split_reasoning(text: str, fmt: ReasoningFormat) -> tuple[str, str]:
    """(reasoning, answer) of a generated text."""
    if not fmt.forced and fmt.start not in text:
        return "", text
    body = text.replace(fmt.start, "").strip()
    if fmt.end not in body:
        return body, ""
    reasoning, answer = body.split(fmt.end, 1)
    return reasoning, answer.strip()
