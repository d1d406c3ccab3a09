r"""Constrained output follows Python's regex dialect: each finished output passes re.fullmatch(regex, text).

`xgrammar_regex` restates a Python regex for xgrammar (whose own `.` also matches a newline). Checked three
ways: on texts the original matches and near misses of them (the restated pattern, itself valid Python, and
xgrammar both decide each as `re.fullmatch` does), against xgrammar's token masks, and end to end on the
embedded default model over many regexes and temperatures.
"""

from __future__ import annotations

import re

import pytest
import regex as partial_regex
import xgrammar as xgr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xgrammar.testing import _is_grammar_accept_string

import sglbench as sgl
from sglbench.runtime.regex_dialect import xgrammar_regex
from sglbench.runtime.sampling_params import GrammarSpec
from tests.helpers import assert_pool_full

SGLANG_IP = r"((25[0-5]|2[0-4]\d|[01]?\d\d?).){3}(25[0-5]|2[0-4]\d|[01]?\d\d?)"  # SGLang's: an unescaped `.`
REGEXES = [
    SGLANG_IP,
    r"((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)",
    r"\d{4}-\d{2}-\d{2}",
    r"(19|20)\d\d/(0[1-9]|1[0-2])/(0[1-9]|[12]\d|3[01])",
    r"[a-z]{2,8}(\.[a-z]{2,8})?@[a-z]{2,6}\.(com|org|net)",
    r"\w+@\w+\.\w{2,3}",
    r"(yes|no|maybe)",
    r"(True|False|None)",
    r".{3,10}",
    r"a.b.c",
    r"(..)-(...)\.",
    r"\d{3}-\d{4}",
    r"[A-Z][a-z]{2,8}( [A-Z][a-z]{2,8}){0,2}",
    r"\d+?x",
    r"(?i)(hello|world)!",
    r"^\s*\S.*?$",
    r"\A[^\n]{1,8}\Z",
    r"(?s).{2,6}",
    r"\D{2,5}\W\w",
    r"(café|naïve|über)",
    r"-?\d{1,3}(,\d{3})*(\.\d+)?",
    r"\(\d{3}\) \d{3}-\d{4}",
    r'"[^"\\]{0,10}"',
]
ATOMS = ["a", "b", "Z", "7", r"\.", "-", " ", "@", "é", ".", r"\d", r"\w", r"\s", r"\D", r"\W", r"\S",
         "[a-f0-9]", "[^a-z]", r"[^\n ]", "[A-Z]", "[.?!]"]
BOUNDED = ["?", "{2}", "{1,3}", "{0,2}", "??", "{1,2}?"]
UNBOUNDED = ["*", "+", "{2,}", "+?", "*?"]


def _compound(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.lists(inner, min_size=2, max_size=4).map("".join),
        st.lists(inner, min_size=2, max_size=3).map(lambda alts: "(" + "|".join(alts) + ")"),
        st.tuples(inner, st.sampled_from(BOUNDED)).map(lambda t: f"(?:{t[0]}){t[1]}"),
    )


# Random regexes in Python's dialect: escapes, classes, `.`, categories, groups, alternation, counted and lazy
# repeats, under no flag or one of IGNORECASE, DOTALL, ASCII. Unbounded repeats apply to single characters
# only, so no nested `(...+)+` makes `re` backtrack for ever on a near miss.
_bounded = st.recursive(st.sampled_from(ATOMS), _compound, max_leaves=6)
_unbounded = st.tuples(st.sampled_from(ATOMS), st.sampled_from(UNBOUNDED)).map("".join)
_body = st.lists(st.one_of(_bounded, _unbounded), min_size=1, max_size=3).map("".join)
random_regexes = st.tuples(st.sampled_from(["", "(?i)", "(?s)", "(?a)"]), _body).map("".join)
regexes = st.one_of(st.sampled_from(REGEXES), random_regexes)


def xgrammar_accepts(pattern: str, text: str) -> bool:
    return _is_grammar_accept_string(xgr.Grammar.from_regex(xgrammar_regex(pattern)), text)


# ---------------------------------------------------------------------------- the translation alone
def test_dot_never_matches_a_newline_unless_dotall():
    assert not xgrammar_accepts(SGLANG_IP, "27\n19 25 130")  # what xgrammar's own `.` let through
    assert xgrammar_accepts(SGLANG_IP, "27 19 25 130") and re.fullmatch(SGLANG_IP, "27 19 25 130")
    assert xgrammar_accepts(r"(?s)a.b", "a\nb") and not xgrammar_accepts(r"a.b", "a\nb")
    assert xgrammar_accepts(r"[^x]", "\n")  # a negated class does match a newline, as in Python


def test_categories_flags_and_anchors_mean_what_they_mean_in_python():
    cases = [  # (pattern, text, re.fullmatch says)
        (r"\d", "٣", True), (r"(?a)\d", "٣", False), (r"\D", "٣", False), (r"\w+", "naïve_1", True),
        (r"\W", "é", False), (r"\s", "\u3000", True), (r"\S", "\u3000", False), (r"(?i)k", "\u212a", True),
        (r"(?i)[^k]", "K", False), (r"(?i:a)b", "AB", False), (r"(?i:a)b", "Ab", True), (r"^ab$", "ab", True),
        (r"\Aab\Z", "ab", True), (r"a$", "a\n", False), (r"a{2,}?", "aaa", True), (r"a{,2}", "aa", True),
        (r"[\]\-^]+", "]-^", True), (r"(?x) a b  # comment", "ab", True),
        (r"\x41\u00e9\N{BULLET}", "Aé•", True),
    ]
    for pattern, text, expected in cases:
        assert bool(re.fullmatch(pattern, text)) is expected, (pattern, text)
        assert xgrammar_accepts(pattern, text) is expected, (pattern, text, xgrammar_regex(pattern)[:200])


@pytest.mark.parametrize(("pattern", "named"), [
    (r"(?=a)a", "lookahead/lookbehind"), (r"(?<!a)b", "negative lookahead/lookbehind"),
    (r"(a)\1", "backreferences"), (r"(?P<x>a)(?P=x)", "backreferences"), (r"(a)?(?(1)b|c)", "conditional"),
    (r"\bword", r"\\b \(a word boundary"), (r"a*+", "possessive"), (r"(?>ab)", "atomic"),
    (r"a^b", r"\^ is supported only at the start"), (r"a$b", r"\$ is supported only at the end"),
    (r"[^\s\S]", "matches no character"), (r"(abc", "missing \\)"),
])
def test_what_a_grammar_cannot_enforce_is_a_value_error_naming_it(pattern, named):
    with pytest.raises(ValueError, match=named):
        xgrammar_regex(pattern)


NEAR_MISS = st.one_of(st.sampled_from(["\n", " ", ".", "a", "Z", "0", "٣", "é", "\u212a", "\u3000", "_"]),
                      st.characters())


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(pattern=regexes, data=st.data())
def test_restated_regex_accepts_exactly_what_python_accepts(pattern, data):
    text = data.draw(st.from_regex(pattern, fullmatch=True).filter(lambda t: len(t) <= 24), label="a match")
    edits = data.draw(st.lists(st.tuples(st.integers(0, len(text)), st.booleans(), NEAR_MISS), max_size=3))
    texts = [text]
    for at, insert, char in edits:  # near misses: a character inserted or replaced
        texts.append(texts[-1][:at] + char + texts[-1][at + (not insert) :])
    restated = xgrammar_regex(pattern)  # plain syntax that Python reads the same way xgrammar does
    grammar = xgr.Grammar.from_regex(restated)
    for candidate in texts:
        expected = re.fullmatch(pattern, candidate) is not None
        assert (re.fullmatch(restated, candidate) is not None) is expected, (pattern, candidate)
        assert _is_grammar_accept_string(grammar, candidate) is expected, (pattern, candidate)


# ---------------------------------------------------------------------------- end to end on the default model
@pytest.fixture(scope="module")
def rt():
    runtime = sgl.Runtime(device="cpu", max_total_tokens=4096)
    yield runtime
    runtime.shutdown()


def completable(pattern: str, text: str) -> bool:
    """Whether text (cut by max_new_tokens, maybe inside a UTF-8 character) is a prefix of a full match. The
    regex module's \\w, \\s, \\d differ from re's: it reads the restatement, checked against re above."""
    return partial_regex.fullmatch(xgrammar_regex(pattern), text.rstrip("\ufffd"), partial=True) is not None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern=regexes, temperature=st.sampled_from([0.0, 0.7, 1.5]), seed=st.integers(0, 2**16),
       prompt=st.sampled_from(["A server address: ", "Q: What day is it?\nA:", "The answer is", "Name: "]))
def test_every_constrained_output_fullmatches_its_python_regex(rt, pattern, temperature, seed, prompt):
    out = rt.generate(prompt, max_new_tokens=16, temperature=temperature, seed=seed, regex=pattern)
    reason = out["meta_info"]["finish_reason"]["type"]
    if reason == "stop":
        assert re.fullmatch(pattern, out["text"]), (pattern, out["text"])
    else:
        assert reason == "length" and completable(pattern, out["text"]), (pattern, out["text"], reason)


def test_the_ip_regex_of_the_issue_over_temperatures(rt):
    for temperature in (0.0, 0.7, 1.5):
        outs = rt.generate(["A server address: "] * 4, max_new_tokens=24, temperature=temperature,
                           regex=SGLANG_IP)
        for out in outs:
            assert "\n" not in out["text"] and re.fullmatch(SGLANG_IP, out["text"]), out["text"]
    assert_pool_full(rt)


def test_a_token_the_mask_let_through_but_the_grammar_refuses_is_sampled_again(rt):
    pattern = r"\D{2,5}\W\w"  # xgrammar 0.2.9's mask over-allows here (a bug in its Unicode classes)

    def after_bracket():
        matcher = rt.engine.grammars.matcher(GrammarSpec("regex", pattern))
        matcher.accept(rt.tokenizer.encode_plain("[")[0])
        return matcher

    matcher = after_bracket()
    mask = matcher.allowed_tokens().clone()
    exact = matcher.exact_allowed_tokens()
    assert not bool((exact & ~mask).any())
    kept, dropped = exact.nonzero().flatten().tolist()[:100], (mask & ~exact).nonzero().flatten().tolist()
    for tokens, fits in ((kept, True), (dropped, False)):
        for token in tokens:
            assert after_bracket().try_accept(token) is fits, token
    refusing = after_bracket()  # each refusal drops the token; the third checks the whole mask
    for i, token in enumerate(dropped[:3], 1):
        left = refusing.refuse(token)
        assert not left[token] and (i < 3 or left.equal(exact))
    out = rt.generate("A server address: ", max_new_tokens=12, temperature=0.7, seed=197, regex=pattern)
    assert out["meta_info"]["finish_reason"]["type"] == "stop" and re.fullmatch(pattern, out["text"]), out


def test_eos_is_never_read_as_the_text_of_its_token(rt):
    out = rt.generate("A server address: ", max_new_tokens=16, temperature=0, regex=r"aa\.(?:.)+")
    assert re.fullmatch(r"aa\..+", out["text"]), out  # not "aa." ended by eos read as the text "</s>"
