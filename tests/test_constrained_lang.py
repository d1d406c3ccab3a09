"""Constrained decoding through the language on the embedded default model: regexes, typed gen, JSON records."""

from __future__ import annotations

import json
import re

import pytest

import sglbench as sgl
from sglbench.lang.ir import REGEX_BOOL, REGEX_FLOAT, REGEX_INT, REGEX_STR
from tests.helpers import assert_pool_full

IPV4 = r"((25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(25[0-5]|2[0-4]\d|1?\d?\d)"
DATE = r"\d{4}-\d{2}-\d{2}"
PERSON = {"type": "object", "properties": {"name": {"type": "string", "pattern": "^[A-Z][a-z]{1,12}$"},
                                           "age": {"type": "integer", "minimum": 1, "maximum": 99},
                                           "city": {"type": "string", "pattern": "^[A-Z][a-z]{1,12}$"}},
          "required": ["name", "age", "city"]}


@pytest.fixture(scope="module")
def rt():
    runtime = sgl.Runtime(device="cpu", max_total_tokens=8192)
    sgl.set_default_backend(runtime)
    yield runtime
    sgl.global_config.default_backend = None
    runtime.shutdown()


@pytest.fixture(autouse=True)
def no_leaks(rt):
    yield
    assert_pool_full(rt)


@sgl.function
def patterns(s):
    s += "A server address: " + sgl.gen("ip", regex=IPV4, max_tokens=20)
    s += "\nA date: " + sgl.gen("date", regex=DATE, max_tokens=12)
    s += "\nQ: What is 4 + 5?\nA: " + sgl.gen("int", regex=REGEX_INT, max_tokens=8)
    s += "\nA price: " + sgl.gen("float", regex=REGEX_FLOAT, max_tokens=10)
    s += "\nIs it true? " + sgl.gen("bool", regex=REGEX_BOOL, max_tokens=4)
    s += "\nA name: " + sgl.gen("str", regex=REGEX_STR, max_tokens=12)


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.2])
def test_outputs_match_their_regex_across_temperatures(rt, temperature):
    states = patterns.run_batch([{}] * 3, temperature=temperature)
    for st in states:
        assert st.error() is None
        assert re.fullmatch(IPV4, st["ip"]) and re.fullmatch(DATE, st["date"]), (st["ip"], st["date"])
        # SGLang's int/float regexes allow trailing whitespace; str must be a quoted string unless cut by max_tokens.
        for var, pattern in (("int", REGEX_INT), ("float", REGEX_FLOAT), ("bool", REGEX_BOOL)):
            assert re.fullmatch(pattern, st[var]), (var, st[var])
        meta = st.get_meta_info("str")
        assert meta["finish_reason"]["type"] == "length" or re.fullmatch(REGEX_STR, st["str"]), st["str"]


@sgl.function
def json_record(s, who):
    s += f"A JSON record of {who}:\n"
    with s.var_scope("record"):
        s += sgl.gen("json", json_schema=json.dumps(PERSON), max_tokens=64)


def test_json_record_program_with_var_scope_parses(rt):
    for st in json_record.run_batch([{"who": w} for w in ("a person", "a friend", "a teacher")], temperature=0.8):
        record = json.loads(st["record"])
        assert set(record) == {"name", "age", "city"}
        assert isinstance(record["age"], int) and 1 <= record["age"] <= 99
        assert st.get_meta_info("json")["jump_forward_tokens"] > 0  # the keys and punctuation were jumped


def test_typed_gen(rt):
    @sgl.function
    def typed(s):
        s += "Q: What is 4 + 5?\nA: " + sgl.gen_int("n") + "\nA quote: " + sgl.gen_string("q", max_tokens=16)

    st = typed.run(temperature=0)
    assert re.fullmatch(REGEX_INT, st["n"])
    assert st.get_meta_info("q")["finish_reason"]["type"] == "length" or re.fullmatch(REGEX_STR, st["q"])


def test_invalid_regex_or_schema_is_a_clear_error_at_gen_time(rt):
    with pytest.raises(ValueError, match=r"\(unclosed"):
        sgl.gen("y", regex="(unclosed", max_tokens=4)
    with pytest.raises(ValueError, match="schema"):
        rt.generate("x", json_schema="{not json", max_new_tokens=4)
