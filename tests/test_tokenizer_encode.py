"""The engine's tokenizer encodes and decodes through the fast tokenizer's Rust backend only where that gives
exactly the Hugging Face wrapper's ids and text (runtime/tokenizer.py): checked on the default model's tokenizer
and a trained byte-level one, on arbitrary text and ids, with and without special tokens."""

from __future__ import annotations

import functools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sglbench.default_model import default_model_path
from sglbench.runtime.models.synthetic import write_tokenizer
from sglbench.runtime.tokenizer import Tokenizer


@functools.lru_cache(maxsize=1)
def _trained(folder: str) -> Tokenizer:
    write_tokenizer(folder)
    return Tokenizer(folder)


@pytest.fixture(scope="module", params=["default", "trained"])
def tokenizer(request, tmp_path_factory) -> Tokenizer:
    if request.param == "default":
        return Tokenizer(default_model_path())
    return _trained(str(tmp_path_factory.mktemp("tok")))


def test_the_backend_is_used_where_it_agrees(tokenizer):
    assert tokenizer._backend is not None  # both are fast tokenizers whose backend encodes as the wrapper
    assert tokenizer._decoder is not None  # ... and decodes as the wrapper


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)
       | st.sampled_from(['{\n  "name": "', '",\n  "founded": ', " </s> x", "<s>", "  \t\n"]))
def test_encode_equals_the_hugging_face_wrapper(tokenizer, text):
    assert tokenizer.encode(text) == list(tokenizer.hf.encode(text, add_special_tokens=True))
    assert tokenizer.encode_plain(text) == list(tokenizer.hf.encode(text, add_special_tokens=False))


def test_a_backend_that_disagrees_is_not_used(monkeypatch):
    tokenizer = Tokenizer(default_model_path())
    wrapper = tokenizer.hf.encode
    monkeypatch.setattr(tokenizer.hf, "encode",
                        lambda text, add_special_tokens=True: [5, *wrapper(text, add_special_tokens=add_special_tokens)])
    assert tokenizer._checked_backend() is None
    tokenizer._backend = None
    assert tokenizer.encode_plain("hi")[0] == 5  # the wrapper's answer, whatever it is


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_decode_equals_the_hugging_face_wrapper(tokenizer, data):
    vocab = len(tokenizer.hf)
    special = sorted(tokenizer.special_ids)
    ids = data.draw(st.lists(st.integers(0, vocab - 1) | st.sampled_from(special), max_size=24))
    for skip in (True, False):  # split UTF-8 characters and special tokens included
        assert tokenizer.decode(ids, skip_special_tokens=skip) == tokenizer.hf.decode(ids, skip_special_tokens=skip)


def test_a_decoder_that_disagrees_is_not_used(monkeypatch):
    tokenizer = Tokenizer(default_model_path())
    wrapper = tokenizer.hf.decode
    monkeypatch.setattr(tokenizer.hf, "decode", lambda ids, **kwargs: wrapper(ids, **kwargs).replace(" ,", ","))
    assert tokenizer._checked_decoder() is None  # a clean-up of spaces before punctuation is caught
    tokenizer._decoder = None
    assert tokenizer.decode(tokenizer.encode_plain("a , b")) == "a, b"  # the wrapper's answer
