"""Reasoning split at once and streamed: qwen3 / deepseek-r1 / kimi formats, a missing end marker, no markers,
markers cut across pieces, reasoning opened by the prompt; the stream always equals the one-shot split."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sglbench.lang.reasoning import (
    REASONING_FORMATS,
    ReasoningStream,
    prompt_opens_reasoning,
    reasoning_format,
    split_reasoning,
)

QWEN3, R1, KIMI = REASONING_FORMATS["qwen3"], REASONING_FORMATS["deepseek-r1"], REASONING_FORMATS["kimi"]


def streamed(text_pieces: list[str], fmt, opened: bool = False) -> tuple[str, str]:
    stream = ReasoningStream(fmt, opened=opened)
    parts = [stream.feed(piece) for piece in text_pieces] + [stream.finish()]
    return "".join(p.reasoning for p in parts), "".join(p.content for p in parts)


@pytest.mark.parametrize(("fmt", "opened", "text", "expected"), [
    (QWEN3, False, "<think>\nRecall the capital.\n</think>\n\nParis", ("Recall the capital.", "Paris")),
    (QWEN3, False, "  <think>a</think>b", ("a", "b")),
    (QWEN3, False, "Paris", ("", "Paris")),  # enable_thinking=False: no markers, all answer
    (QWEN3, False, "  Paris \n", ("", "  Paris \n")),  # an answer without reasoning is left as it is
    (QWEN3, False, "<think>still thinking when max_tokens hit", ("still thinking when max_tokens hit", "")),
    (QWEN3, False, "I use <think> tags</think> here", ("", "I use <think> tags</think> here")),
    (QWEN3, True, "Recall.</think>\n\nParis", ("Recall.", "Paris")),  # the prompt opened <think>
    (QWEN3, True, "no end marker", ("no end marker", "")),
    (R1, False, "Recall the capital.</think>Paris", ("Recall the capital.", "Paris")),
    (R1, False, "<think>\nRecall.\n</think>\n\nParis", ("Recall.", "Paris")),  # R1-0528 writes <think> too
    (R1, False, "</think>Paris", ("", "Paris")),
    (R1, False, "Paris", ("Paris", "")),  # forced: without an end marker it is all reasoning
    (QWEN3, False, "<think>a</think>b</think>c <think>", ("a", "b</think>c <think>")),
    (KIMI, False, "\u25c1think\u25b7x\u25c1/think\u25b7 y", ("x", "y")),
    (QWEN3, False, "", ("", "")),
])
def test_split_and_stream(fmt, opened, text, expected):
    assert split_reasoning(text, fmt, opened=opened) == expected
    assert streamed([text], fmt, opened) == expected
    assert streamed(list(text), fmt, opened) == expected  # one character at a time


def test_markers_cut_across_pieces_are_held_back():
    stream = ReasoningStream(QWEN3)
    assert stream.feed("<th") == ("", "")  # may be the start marker
    assert stream.in_reasoning is False
    assert stream.feed("ink>\nLet me") == ("Let me", "")
    assert stream.in_reasoning is True
    assert stream.feed(" think.\n</th") == (" think.", "")  # the newline may precede the end marker
    assert stream.feed("ink>\n\n") == ("", "")
    assert stream.in_reasoning is False
    assert stream.feed("The answer") == ("", "The answer")
    assert stream.feed(" is 4.\n") == ("", " is 4.\n")
    assert stream.finish() == ("", "")


def test_a_partial_marker_that_never_completes_is_text():
    stream = ReasoningStream(QWEN3)
    assert stream.feed("<thought") == ("", "<thought")  # not the start marker: answer text at once
    r1 = ReasoningStream(R1)
    assert r1.feed("x </thi") == ("x", "")
    assert r1.finish() == (" </thi", "")


def test_no_markers_streams_at_once():
    stream = ReasoningStream(QWEN3)
    assert stream.feed("Hello") == ("", "Hello")
    assert stream.feed(" <think>") == ("", " <think>")


def test_prompt_opens_reasoning():
    assert prompt_opens_reasoning("<|im_start|>assistant\n<think>\n", QWEN3)
    assert prompt_opens_reasoning("<|assistant|>\n<think>", QWEN3)
    assert not prompt_opens_reasoning("<|im_start|>assistant\n<think>\n\n</think>\n\n", QWEN3)  # thinking off
    assert not prompt_opens_reasoning("<|im_start|>assistant\n", QWEN3)
    assert not prompt_opens_reasoning("<|im_start|>assistant\n<think>\n", KIMI)


def test_reasoning_format_names():
    assert reasoning_format("Qwen3") is QWEN3
    with pytest.raises(ValueError, match="deepseek-r1"):
        reasoning_format("nope")


PIECES = st.sampled_from(["<think>", "</think>", "<", "</", "<th", "ink>", "think", ">", "/", " ", "\n", "a", "b.",
                          "\u25c1think\u25b7", "\u25c1/think\u25b7", "\u25c1", "\u25b7"])


@settings(max_examples=500, deadline=None)
@given(chunks=st.lists(st.lists(PIECES, max_size=4), max_size=8), cuts=st.lists(st.integers(0, 60), max_size=6),
       name=st.sampled_from(["qwen3", "deepseek-r1", "kimi"]), opened=st.booleans())
def test_stream_equals_split_on_any_chunking(chunks, cuts, name, opened):
    fmt = REASONING_FORMATS[name]
    pieces = ["".join(chunk) for chunk in chunks]  # pieces that end at word boundaries, empty ones included
    text = "".join(pieces)
    bounds = sorted({min(c, len(text)) for c in cuts})
    recut = [text[a:b] for a, b in zip([0, *bounds], [*bounds, len(text)])]  # pieces that cut words
    expected = split_reasoning(text, fmt, opened=opened)
    assert streamed(pieces, fmt, opened) == expected
    assert streamed(recut, fmt, opened) == expected
    assert streamed(list(text), fmt, opened) == expected
