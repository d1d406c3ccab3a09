"""Grammar work bounded in time and memory (issue 19, item 1).

A schema with a part that can never be completed is refused at submission with the path at fault,
jump-forward runs only where its forced text is proven short, and grammars over the size, nesting or
property limits are refused before xgrammar compiles them. Whatever would blow up on a regression
(generation with such grammars) runs in a child process under a memory cap and a timeout, so a
regression fails these tests instead of taking the machine down.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import xgrammar as xgr

from sglbench.runtime.grammar import GrammarCompiler, GrammarMatcher
from sglbench.runtime.grammar_limits import (
    MAX_GRAMMAR_CHARS,
    MAX_OBJECT_PROPERTIES,
    MAX_PATTERN_GROUPS,
    MAX_SCHEMA_NESTING,
    grammar_shape,
    incompletable_part,
)
from sglbench.runtime.sampling_params import GrammarSpec

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = ROOT / "sglbench" / "default_model" / "checkpoint"
CHILD_MEMORY_CAP = 3 * 1024**3  # address space of the child (a CPU runtime peaks near 1.4 GB)
CHILD_TIMEOUT_S = 120
RESULT_MARK = "GRAMMAR-LIMITS-RESULT "

RECURSIVE_REQUIRED = {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]}
DEFS_LOOP = {"type": "object", "properties": {"b": {"$ref": "#/$defs/loop"}},
             "$defs": {"loop": {"type": "object", "properties": {"x": {"$ref": "#/$defs/loop"}}, "required": ["x"]}}}
LINKED_LIST = {"type": "object", "required": ["value", "next"],
               "properties": {"value": {"type": "integer"}, "next": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}}}
OPTIONAL_SELF = {"type": "object", "properties": {"a": {"$ref": "#"}, "b": {"type": "integer"}}}
DOUBLING_EBNF = "\n".join(["root ::= a30", 'a0 ::= "xy"'] + [f"a{i} ::= a{i - 1} a{i - 1}" for i in range(1, 31)])
HUGE_MIN_ITEMS = {"type": "array", "items": {"const": "x"}, "minItems": 100_000_000}
RECURSIVE_LONG_CONST = {"type": "object", "required": ["z"],
                        "properties": {"a": {"$ref": "#"}, "z": {"const": "q" * 2000}}}
PROMPT = "Give me a list as JSON:\n"


# ---------------------------------------------------------------------------- schema analysis
@pytest.mark.parametrize(("schema", "message"), [
    (RECURSIVE_REQUIRED, "#/properties/a can never be completed: it requires itself through required properties"),
    (DEFS_LOOP, "#/$defs/loop/properties/x can never be completed: it requires itself through required properties"),
    ({"definitions": {"n": {"type": "object", "properties": {"m": {"$ref": "#/definitions/n"}}, "required": ["m"]}},
      "type": "array", "items": {"$ref": "#/definitions/n"}},
     "#/definitions/n/properties/m can never be completed: it requires itself through required properties"),
    ({"type": "array", "items": {"$ref": "#"}, "minItems": 1}, "#/items can never be completed: it requires "
                                                               "itself through minItems"),
    ({"type": "object", "required": ["t"], "properties": {"t": {"type": "array", "minItems": 2,
                                                                 "prefixItems": [{"type": "integer"}, {"$ref": "#"}]}}},
     "#/properties/t/prefixItems/1 can never be completed: it requires itself through required properties and "
     "minItems"),
    ({"allOf": [{"$ref": "#/$defs/n"}], "$defs": {"n": {"properties": {"c": {"allOf": [{"$ref": "#"}]}},
                                                        "required": ["c"]}}},
     "can never be completed: it requires itself through allOf and required properties"),
    ({"type": "object", "required": ["a"], "properties": {"a": {"anyOf": [{"$ref": "#"}, {"$ref": "#/properties/a"}]}}},
     "#/properties/a/anyOf/0 can never be completed: it requires itself through required properties"),
    ({"$ref": "#"}, "# can never be completed: it requires itself through $ref alone"),
    ({"properties": {"a": {"$ref": "#"}}, "required": ["a"]}, "#/properties/a"),  # "object" implied, as xgrammar
])
def test_schema_with_a_part_that_never_ends_is_named(schema, message):
    assert message in incompletable_part(schema)


@pytest.mark.parametrize("schema", [
    OPTIONAL_SELF,
    LINKED_LIST,
    {"type": ["object", "null"], "properties": {"a": {"$ref": "#"}}, "required": ["a"]},  # null ends it
    {"type": "array", "items": {"$ref": "#"}},  # the empty array ends it
    {"type": "array", "items": {"$ref": "#"}, "minItems": 1, "prefixItems": [{"type": "null"}]},
    {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"], "const": {"a": 1}},
    {"type": "object", "properties": {"a": {"$ref": "https://example.com/remote"}}, "required": ["a"]},
    {"type": "object", "properties": {"a": {"$ref": "#/$defs/absent"}}, "required": ["a"]},
    {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#"}}}, "required": ["kids"]},
    True,
    {},
])
def test_optional_or_unanalysable_recursion_is_accepted(schema):
    assert incompletable_part(schema) is None


# ---------------------------------------------------------------------------- compiler: refusals and limits
@pytest.fixture(scope="module")
def compiler() -> GrammarCompiler:
    from transformers import AutoTokenizer

    if not (DEFAULT_CHECKPOINT / "config.json").exists():
        pytest.skip("the embedded default model is not there")
    config = json.loads((DEFAULT_CHECKPOINT / "config.json").read_text())
    stops = config["eos_token_id"] if isinstance(config["eos_token_id"], list) else [config["eos_token_id"]]
    return GrammarCompiler(AutoTokenizer.from_pretrained(str(DEFAULT_CHECKPOINT)), config["vocab_size"], stops)


def schema_spec(schema) -> GrammarSpec:
    return GrammarSpec("json_schema", json.dumps(schema))


@pytest.mark.parametrize(("spec", "message"), [
    (schema_spec(RECURSIVE_REQUIRED), "json_schema: #/properties/a can never be completed"),
    (GrammarSpec("ebnf", 'root ::= "a" root'), "ebnf: rule root can never be completed"),
    (GrammarSpec("ebnf", 'root ::= "a" x | "b"\nx ::= "c" x'), "ebnf: rule x can never be completed"),
    (GrammarSpec("ebnf", 'root ::= a\na ::= "x" b\nb ::= "y" a'), "can never be completed"),
    (schema_spec({"type": "string", "pattern": "^a*[^\\s\\S]$"}), "can never be completed"),
    (schema_spec({"type": "string", "pattern": "^a*[^\\D0-9]$"}), "can never be completed"),  # xgrammar's \\d: ASCII
])
def test_grammar_that_can_never_end_is_refused_at_compile(compiler, spec, message):
    with pytest.raises(ValueError, match=message):
        compiler.compile(spec)


@pytest.mark.parametrize(("spec", "limit"), [
    (schema_spec({"type": "object", "description": "x" * MAX_GRAMMAR_CHARS}), f"over the limit of {MAX_GRAMMAR_CHARS}"),
    (GrammarSpec("regex", "a" * (MAX_GRAMMAR_CHARS + 1)), f"over the limit of {MAX_GRAMMAR_CHARS}"),
    (GrammarSpec("ebnf", 'root ::= "' + "a" * MAX_GRAMMAR_CHARS + '"'), f"over the limit of {MAX_GRAMMAR_CHARS}"),
    (GrammarSpec("json_schema", '{"type": "array", "items": ' * 65 + "{}" + "}" * 65),
     f"nests deeper than the limit of {MAX_SCHEMA_NESTING}"),
    (GrammarSpec("json_schema", '{"type": "array", "items": ' * 5000 + "{}" + "}" * 5000),
     f"nests deeper than the limit of {MAX_SCHEMA_NESTING}"),
    (schema_spec({"type": "object", "properties": {f"f{i}": {} for i in range(MAX_OBJECT_PROPERTIES + 1)}}),
     f"has {MAX_OBJECT_PROPERTIES + 1} properties, over the limit of {MAX_OBJECT_PROPERTIES}"),
    (schema_spec({"properties": {"s": {"type": "string", "pattern": "(" * 2000 + "a" + ")" * 2000}}}),
     f"pattern at #/properties/s has 2000 groups .* over the limit of {MAX_PATTERN_GROUPS}"),
    (schema_spec({"type": "string", "pattern": "a" + "{0,}" * 2000}), f"over the limit of {MAX_PATTERN_GROUPS}"),
    (GrammarSpec("regex", "(a)" * (MAX_PATTERN_GROUPS + 1)), f"over the limit of {MAX_PATTERN_GROUPS}"),
])
def test_grammar_over_a_limit_is_refused_before_compiling(compiler, spec, limit):
    with pytest.raises(ValueError, match=limit):
        compiler.compile(spec)
    assert spec not in compiler.cached_specs


def test_limits_leave_room_for_ordinary_grammars_and_keep_the_cache(compiler):
    wide = schema_spec({"type": "object", "properties": {f"f{i}": {"type": "integer"} for i in range(100)}})
    deep = GrammarSpec("json_schema", '{"type": "array", "items": ' * 30 + '{"type": "integer"}' + "}" * 30)
    escaped = GrammarSpec("regex", r"\(" * (MAX_PATTERN_GROUPS + 1))  # escaped parentheses are not groups
    for spec in (wide, deep, escaped):
        assert compiler.compile(spec) is compiler.compile(spec)


# ---------------------------------------------------------------------------- jump-forward only where bounded
@pytest.mark.parametrize("spec", [
    schema_spec(LINKED_LIST),
    schema_spec(OPTIONAL_SELF),
    schema_spec({"type": "object", "properties": {f"f{i}": {"type": "integer"} for i in range(400)},
                 "required": [f"f{i}" for i in range(400)]}),
    schema_spec({"type": "string", "pattern": "^[a-z]{3}-\\d{2}$"}),
    schema_spec({"type": "string", "pattern": "^[^@\\s]+@[^@\\s]+$"}),
    GrammarSpec("regex", r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}"),
    GrammarSpec("ebnf", 'root ::= "{" item ("," item)* "}"\nitem ::= [a-z]+ | root'),
])
def test_ordinary_grammars_keep_jump_forward(compiler, spec):
    """Also catches an xgrammar upgrade whose serialization `grammar_shape` no longer reads."""
    assert compiler.matcher(spec).jump_forward_safe


@pytest.mark.parametrize("spec", [
    GrammarSpec("ebnf", DOUBLING_EBNF),  # finite, but 2**31 forced characters
    GrammarSpec("ebnf", 'root ::= "a"{100000000}'),
    GrammarSpec("regex", "a{100000000}"),
    schema_spec(HUGE_MIN_ITEMS),
    schema_spec(RECURSIVE_LONG_CONST),  # each level of nesting forces 2,000 characters more
])
def test_grammars_forcing_unbounded_text_skip_jump_forward(compiler, spec):
    """Checked by the flag only: calling xgrammar's search here would blow up this process on a regression."""
    assert not compiler.matcher(spec).jump_forward_safe


def test_shape_reads_only_what_it_knows():
    assert grammar_shape(xgr.Grammar.from_ebnf('root ::= "a" [b-c]* root?')).jump_forward_safe
    assert "root can never be completed" in grammar_shape(xgr.Grammar.from_ebnf('root ::= "a" root')).stuck


def test_failed_forced_text_search_turns_jump_forward_off(compiler):
    class OutOfMemory:
        def find_jump_forward_string(self):
            raise RuntimeError("std::bad_alloc")

    matcher: GrammarMatcher = compiler.matcher(schema_spec(LINKED_LIST))
    assert matcher.forced_string() == '{"value": '
    matcher._matcher = OutOfMemory()
    assert matcher.forced_string() == "" and not matcher.jump_forward_safe


# ---------------------------------------------------------------------------- generation, in a capped child
def run_scenarios(model_path: str) -> None:
    """Child process: a CPU runtime answering the risky requests; prints one JSON line of what happened."""
    from sglbench.runtime.runtime import Runtime
    from sglbench.runtime.sampling_params import SamplingParams

    def peak_rss() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def attempt(rt, prompt, **params) -> dict:
        try:
            out = rt.generate(prompt, **params)
        except ValueError as exc:
            return {"error": str(exc)}
        return {"text": out["text"], "finish": out["meta_info"]["finish_reason"]["type"],
                "tokens": len(out["output_ids"]), "jumped": out["meta_info"].get("jump_forward_tokens", 0)}

    results: dict = {}
    with Runtime(model_path, device="cpu", max_total_tokens=4096) as rt:
        plain = SamplingParams(max_new_tokens=24, temperature=0, ignore_eos=True)
        results["plain_before"] = rt.generate(PROMPT, max_new_tokens=24, temperature=0, ignore_eos=True)["text"]
        results["rss_before"] = peak_rss()
        in_flight = rt.submit(PROMPT, plain)  # runs while the bad ones are refused
        results["recursive_required"] = attempt(rt, PROMPT, max_new_tokens=32, json_schema=RECURSIVE_REQUIRED)
        results["defs_loop"] = attempt(rt, PROMPT, max_new_tokens=32, json_schema=DEFS_LOOP)
        results["ebnf_self"] = attempt(rt, PROMPT, max_new_tokens=32, ebnf='root ::= "a" root')
        results["in_flight"] = in_flight.result(timeout=60)["text"]
        results["doubling"] = attempt(rt, PROMPT, max_new_tokens=8, ebnf=DOUBLING_EBNF)
        results["huge_min_items"] = attempt(rt, PROMPT, max_new_tokens=8, json_schema=HUGE_MIN_ITEMS)
        results["long_const"] = attempt(rt, PROMPT, max_new_tokens=24, json_schema=RECURSIVE_LONG_CONST)
        results["linked_list"] = attempt(rt, PROMPT, max_new_tokens=96, temperature=0, json_schema=LINKED_LIST)
        results["optional_self"] = attempt(rt, PROMPT, max_new_tokens=48, temperature=0, json_schema=OPTIONAL_SELF)
        results["plain_after"] = rt.generate(PROMPT, max_new_tokens=24, temperature=0, ignore_eos=True)["text"]
        results["rss_after"] = peak_rss()
    print(RESULT_MARK + json.dumps(results), flush=True)


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY_CAP, CHILD_MEMORY_CAP))


@pytest.fixture(scope="module")
def child() -> dict:
    if not (DEFAULT_CHECKPOINT / "config.json").exists():
        pytest.skip("the embedded default model is not there")
    code = f"from tests.test_grammar_limits import run_scenarios; run_scenarios({str(DEFAULT_CHECKPOINT)!r})"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=CHILD_TIMEOUT_S, preexec_fn=_cap_memory)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the runtime did not answer the risky requests within {CHILD_TIMEOUT_S} s")
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
    assert done.returncode == 0 and lines, f"child failed (rc {done.returncode}): {done.stderr[-3000:]}"
    return json.loads(lines[-1][len(RESULT_MARK) :])


def test_recursive_required_schema_is_refused_at_submit_and_the_engine_keeps_serving(child):
    assert child["recursive_required"] == {
        "error": "json_schema: #/properties/a can never be completed: it requires itself through required properties"}
    assert child["defs_loop"]["error"].startswith("json_schema: #/$defs/loop/properties/x can never be completed")
    assert child["in_flight"] == child["plain_before"] == child["plain_after"]


def test_self_recursive_ebnf_is_refused_without_hanging(child):
    assert child["ebnf_self"] == {"error": "ebnf: rule root can never be completed: no finite text matches it"}


@pytest.mark.parametrize(("name", "max_new_tokens"), [("doubling", 8), ("huge_min_items", 8), ("long_const", 24)])
def test_unbounded_forced_text_decodes_token_by_token(child, name, max_new_tokens):
    out = child[name]
    assert out["finish"] == "length" and out["tokens"] == max_new_tokens and out["jumped"] == 0, out
    if name == "doubling":
        assert ("xy" * 64).startswith(out["text"])
    if name == "huge_min_items":
        assert ('["x", ' + '"x", ' * 64).startswith(out["text"])


def test_optional_recursion_generates_valid_bounded_json(child):
    out = child["linked_list"]
    assert out["finish"] == "stop" and out["jumped"] > 0, out
    node = json.loads(out["text"])
    while node is not None:
        assert set(node) == {"value", "next"} and type(node["value"]) is int
        node = node["next"]
    optional = child["optional_self"]
    assert optional["finish"] in ("stop", "length") and optional["tokens"] <= 48
    if optional["finish"] == "stop":
        json.loads(optional["text"])


def test_risky_requests_stay_within_memory(child):
    assert child["rss_after"] - child["rss_before"] < 512 * 1024**2
