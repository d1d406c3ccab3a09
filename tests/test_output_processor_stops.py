"""The output processor's incremental stop check (only the tokens after the last whole character are decoded
again) against decoding the whole output at every step, on the default model's byte-level tokenizer."""

from __future__ import annotations

import functools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sglbench.default_model import default_model_path
from sglbench.runtime.events import EventLog
from sglbench.runtime.output_processor import DecodedOutput, OutputProcessor, decodes_by_concatenation
from sglbench.runtime.request import ReqState, Request
from sglbench.runtime.sampling_params import SamplingParams
from sglbench.runtime.tokenizer import Tokenizer


@functools.lru_cache(maxsize=1)
def _tokenizer() -> Tokenizer:
    return Tokenizer(default_model_path())


class WholeText:
    """The tokenizer without its Hugging Face object: the processor then decodes the whole output every step."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.special_ids = tokenizer.special_ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True, spaces_between_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens, spaces_between_special_tokens)


class Recorder:
    """A request handle that keeps the streamed pieces (a caller iterates it from the start)."""

    streaming = True

    def __init__(self):
        self.pieces: list[tuple[str, int]] = []

    def push_delta(self, text: str, completion_tokens: int = 0, **_logprobs: list) -> None:
        self.pieces.append((text, completion_tokens))


def _processor(tokenizer) -> OutputProcessor:
    eos = frozenset(_tokenizer().eos_token_ids)

    def finish(req: Request, reason: dict) -> None:  # what the engine does that the output shows
        req.state, req.finish_reason = ReqState.FINISHED, reason
        processor.stream(req, len(req.text))
        processor.release(req)

    processor = OutputProcessor(tokenizer, eos, len(_tokenizer().hf), 1 << 20, None, EventLog(), False, "cpu", 0,
                                finish, lambda req: None)
    return processor


@functools.lru_cache(maxsize=1)
def _pieces() -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Token ids whose own text is part of a character (byte tokens), and the special ids."""
    tok = _tokenizer()
    partial = tuple(i for i in range(len(tok.hf)) if "\ufffd" in tok.decode([i], skip_special_tokens=False))
    return partial, tuple(sorted(tok.special_ids))


@st.composite
def _scenario(draw):
    vocab = len(_tokenizer().hf)
    partial, special = _pieces()
    token = st.one_of(st.integers(7, vocab - 1), st.sampled_from(partial), st.sampled_from(special))
    steps = draw(st.lists(st.one_of(
        st.tuples(st.just("token"), token),
        st.tuples(st.just("rewrite"), st.integers(0, 6), st.lists(token, max_size=5))), min_size=1, max_size=40))
    return steps


def _text_pool(steps) -> str:
    ids = [s[1] for s in steps if s[0] == "token"]
    return _tokenizer().decode(ids, skip_special_tokens=False)


@st.composite
def _params(draw, pool: str):
    special = _pieces()[1]
    piece = st.builds(lambda a, n: pool[a : a + n], st.integers(0, max(len(pool) - 1, 0)), st.integers(1, 4))
    stops = draw(st.lists(st.one_of(piece, st.text(min_size=1, max_size=3)).filter(bool), max_size=3))
    return SamplingParams(
        max_new_tokens=draw(st.integers(3, 60)),
        min_new_tokens=draw(st.integers(0, 3)),
        stop=tuple(stops),
        stop_token_ids=tuple(draw(st.lists(st.sampled_from((*special, 10, 100, 1000)), max_size=2))),
        ignore_eos=draw(st.booleans()),
        no_stop_trim=draw(st.booleans()),
        skip_special_tokens=draw(st.booleans()),
        stream_interval=draw(st.sampled_from((None, 1, 3))),
    )


def test_the_default_tokenizer_decodes_by_concatenation():
    assert decodes_by_concatenation(_tokenizer())
    assert not decodes_by_concatenation(WholeText(_tokenizer()))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_incremental_stop_check_equals_the_whole_text_check(data):
    steps = data.draw(_scenario())
    params = data.draw(_params(_text_pool(steps)))
    fast, whole = _processor(_tokenizer()), _processor(WholeText(_tokenizer()))
    assert fast._incremental and not whole._incremental
    reqs = [Request("r", [0], params, handle=Recorder()) for _ in range(2)]
    for step in steps:
        for processor, req in zip((fast, whole), reqs):
            if req.finished:
                continue
            if step[0] == "token":
                req.output_ids.append(step[1])
                processor.check_finished(req, step[1])
            else:  # a jump-forward's retokenized tail: a new list, its last tokens replaced
                _, back, tokens = step
                req.output_ids = req.output_ids[: max(len(req.output_ids) - back, 0)] + tokens
                processor.check_finished(req, None)
        fast_req, whole_req = reqs
        assert fast_req.text == whole_req.text
        assert fast_req.finish_reason == whole_req.finish_reason
        assert fast_req.handle.pieces == whole_req.handle.pieces
        assert fast_req.emitted_len == whole_req.emitted_len


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_decoded_output_equals_decoding_everything(data):
    """The text after any sequence of appends and tail rewrites is the decoding of all the tokens."""
    tok = _tokenizer()
    steps = data.draw(_scenario())
    skip = data.draw(st.booleans())
    processor = _processor(tok)
    req = Request("r", [0], SamplingParams(skip_special_tokens=skip))
    for step in steps:
        if step[0] == "token":
            req.output_ids.append(step[1])
        else:
            req.output_ids = req.output_ids[: max(len(req.output_ids) - step[1], 0)] + step[2]
        assert processor._output_text(req) == tok.decode(req.output_ids, skip)


def test_a_split_character_is_decoded_again_once_complete():
    tok = _tokenizer()
    ids = tok.encode_plain("née €5 ünïcødé")
    decoded = DecodedOutput()
    for n in range(1, len(ids) + 1):
        cut = decoded.cut(ids[:n])
        head = decoded.text[: decoded.ends[cut - 1]] if cut else ""
        text = head + tok.decode(ids[cut:n], skip_special_tokens=False)
        assert text == tok.decode(ids[:n], skip_special_tokens=False)
        decoded.update(ids[:n], text, cut)
    assert decoded.text == "née €5 ünïcødé"
    if any(e < 0 for e in decoded.ends):  # some token ended inside a character: its cut is never used
        assert decoded.cut(ids) == len(ids)


@pytest.mark.parametrize("rewrite_from", [0, 1, 3])
def test_a_rewritten_tail_is_decoded_from_the_last_cut_before_it(rewrite_from):
    tok = _tokenizer()
    ids = tok.encode_plain('{"name": "Paris", "country": "France"')
    decoded = DecodedOutput()
    decoded.update(ids, tok.decode(ids, skip_special_tokens=False), 0)  # one cut, at the end
    new = ids[: len(ids) - rewrite_from] + tok.encode_plain(", ")
    assert decoded.cut(new) == (len(ids) if rewrite_from == 0 else 0)
