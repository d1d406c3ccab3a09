"""Tool-call formats (hermes, llama3, mistral): parsing fixed outputs, streaming under every chunking (always equal
to the one-shot parse), request checks, format detection from model folders, and forcing grammars compiled for the
embedded default model's tokenizer, ending with a real constrained generation on it."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys

import pytest
import xgrammar as xgr
from hypothesis import given, settings
from hypothesis import strategies as st

from sglbench.default_model import DEFAULT_MODEL_PATH
from sglbench.runtime.grammar import GrammarCompiler
from sglbench.runtime.sampling_params import GrammarSpec
from sglbench.server.tool_calls import (
    FORMATS,
    ToolCall,
    ToolCallDelta,
    check_tools,
    detect_tool_call_format,
    tool_call_format,
)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather now in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
                   "required": ["city"]}}}
ADD = {"type": "function", "function": {
    "name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                                  "required": ["a", "b"]}}}
PING = {"type": "function", "function": {"name": "ping"}}  # no parameters: any object
TOOLS = [WEATHER, ADD, PING]
HERMES, LLAMA3, MISTRAL = FORMATS["hermes"], FORMATS["llama3"], FORMATS["mistral"]

PARIS = '{"city": "Paris"}'
NESTED = '{"city": "S\\u00e3o Paulo \u00fc\U0001f600", "where": {"near": [1, {"x": null}], "tag": "</tool_call>]"}}'


def hermes(name: str, args: str) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {args}}}\n</tool_call>'


# (format, model output, content, [(name, arguments)], well_formed): well_formed says whether every call whose
# header names a known tool is complete, so that an incremental stream must agree with the parse too.
CASES = [
    # hermes
    (HERMES, hermes("get_weather", PARIS), "", [("get_weather", PARIS)], True),
    (HERMES, hermes("get_weather", PARIS) + "\n" + hermes("add", '{"a": 1, "b": 2}'), "",
     [("get_weather", PARIS), ("add", '{"a": 1, "b": 2}')], True),
    (HERMES, "Let me check.\n\n" + hermes("get_weather", PARIS), "Let me check.", [("get_weather", PARIS)], True),
    (HERMES, hermes("get_weather", PARIS) + "\nI asked for the weather.", "I asked for the weather.",
     [("get_weather", PARIS)], True),
    (HERMES, "It is sunny in Paris today.", "It is sunny in Paris today.", [], True),
    (HERMES, "Compare a<b and <tool_ and <tool_call", "Compare a<b and <tool_ and <tool_call", [], True),
    (HERMES, hermes("get_weather", '{"city": }'), hermes("get_weather", '{"city": }'), [], False),
    (HERMES, hermes("get_weather", '{"city": "Paris"'), hermes("get_weather", '{"city": "Paris"'), [], False),
    (HERMES, hermes("get_time", PARIS), hermes("get_time", PARIS), [], True),  # unknown tool: stays text
    (HERMES, '<tool_call>\n["get_weather", {}]\n</tool_call>', '<tool_call>\n["get_weather", {}]\n</tool_call>',
     [], True),
    (HERMES, hermes("get_weather", NESTED), "", [("get_weather", NESTED)], True),
    (HERMES, '<tool_call>\n{"name": "ping"}\n</tool_call>', "", [("ping", "{}")], True),
    (HERMES, '<tool_call>{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 2}"}</tool_call>', "",
     [("add", '{"a": 1, "b": 2}')], True),  # arguments sent as a JSON string
    (HERMES, '<tool_call>\n{"name": "add", "arguments": {"a": NaN}}\n</tool_call>',
     '<tool_call>\n{"name": "add", "arguments": {"a": NaN}}\n</tool_call>', [], False),
    (HERMES, "<tool_call>\nnot json\n</tool_call>\n" + hermes("ping", "{}"), "<tool_call>\nnot json\n</tool_call>",
     [("ping", "{}")], True),
    (HERMES, '<tool_call>\n{"name": "ping", "arguments": {}}\n</tool', "", [("ping", "{}")], True),  # cut off
    (HERMES, '<tool_call>\n{"name": "ping", "arguments": {}} extra</tool_call>',
     '<tool_call>\n{"name": "ping", "arguments": {}} extra</tool_call>', [], False),
    (HERMES, "<tool_call>", "<tool_call>", [], True),
    # llama3
    (LLAMA3, '{"name": "get_weather", "parameters": {"city": "Paris"}}', "", [("get_weather", PARIS)], True),
    (LLAMA3, '<|python_tag|>{"name": "get_weather", "arguments": {"city": "Paris"}}', "",
     [("get_weather", PARIS)], True),
    (LLAMA3, 'Checking.<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}', "Checking.",
     [("get_weather", PARIS)], True),
    (LLAMA3, '{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "add", "parameters": {"a": 1, '
     '"b": 2}};{"name": "ping", "parameters": {}}', "",
     [("get_weather", PARIS), ("add", '{"a": 1, "b": 2}'), ("ping", "{}")], True),
    (LLAMA3, "The capital of France is Paris.", "The capital of France is Paris.", [], True),
    (LLAMA3, '{"answer": 42}', '{"answer": 42}', [], True),  # JSON that is not a call
    (LLAMA3, 'Use {"name": "ping", "parameters": {}}', 'Use {"name": "ping", "parameters": {}}', [], True),
    (LLAMA3, '{"name": "get_weather", "parameters": {"city": "Paris"}',
     '{"name": "get_weather", "parameters": {"city": "Paris"}', [], False),
    (LLAMA3, '{"name": "get_time", "parameters": {}}', '{"name": "get_time", "parameters": {}}', [], True),
    (LLAMA3, '{"name": "ping", "parameters": {}}; {"name": "nope", "parameters": {}}',
     '; {"name": "nope", "parameters": {}}', [("ping", "{}")], True),
    (LLAMA3, '{"name": "ping", "parameters": {}, "arguments": {}}',
     '{"name": "ping", "parameters": {}, "arguments": {}}', [], False),
    (LLAMA3, '  {"name": "get_weather", "parameters": ' + NESTED + "}\n", "", [("get_weather", NESTED)], True),
    (LLAMA3, '{"name": "ping", "parameters": {}} Done.', "Done.", [("ping", "{}")], True),
    # mistral
    (MISTRAL, '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]', "",
     [("get_weather", PARIS)], True),
    (MISTRAL, '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "add", '
     '"arguments": {"a": 1, "b": 2}}]', "", [("get_weather", PARIS), ("add", '{"a": 1, "b": 2}')], True),
    (MISTRAL, 'Sure. [TOOL_CALLS][{"name": "ping", "arguments": {}}]', "Sure.", [("ping", "{}")], True),
    (MISTRAL, "No [tools] needed [TOOL", "No [tools] needed [TOOL", [], True),
    (MISTRAL, '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}]',
     '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}]', [], False),
    (MISTRAL, '[TOOL_CALLS] [{"name": "ping", "arguments": {}}, {"name": "nope", "arguments": {}}]',
     '[TOOL_CALLS] [{"name": "ping", "arguments": {}}, {"name": "nope", "arguments": {}}]', [], False),
    (MISTRAL, '[TOOL_CALLS] [{"name": "get_weather", "arguments": ' + NESTED + "}]", "",
     [("get_weather", NESTED)], True),
    (MISTRAL, '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}', "", [("get_weather", PARIS)], True),
    (MISTRAL, '[TOOL_CALLS]ping[ARGS]{}[TOOL_CALLS]add[ARGS]{"a": 1, "b": 2}', "",
     [("ping", "{}"), ("add", '{"a": 1, "b": 2}')], True),
    (MISTRAL, '[TOOL_CALLS]get_time[ARGS]{"x": 1}', '[TOOL_CALLS]get_time[ARGS]{"x": 1}', [], True),
    (MISTRAL, "[TOOL_CALLS] oops", "[TOOL_CALLS] oops", [], True),
]
CASE_IDS = [f"{fmt.name}-{i}" for i, (fmt, *_) in enumerate(CASES)]


def summary(calls: list[ToolCall]) -> list[tuple[str, str]]:
    return [(c.name, c.arguments) for c in calls]


def streamed(fmt, text_pieces: list[str], incremental: bool = False, tools=TOOLS):
    """(content, [(name, arguments)], deltas, calls) from a stream fed text_pieces."""
    stream = fmt.stream(tools, incremental=incremental)
    outs = [stream.feed(piece) for piece in text_pieces] + [stream.finish()]
    content = "".join(c for c, _ in outs)
    deltas = [d for _, ds in outs for d in ds]
    return content, assemble(deltas), deltas, stream.calls


def assemble(deltas: list[ToolCallDelta]) -> list[tuple[str, str]]:
    """The calls a client rebuilds from streamed deltas, by index (as the openai SDK accumulates them)."""
    calls: dict[int, list] = {}
    for d in deltas:
        if d.id is not None:
            assert d.index not in calls and d.name is not None, "a call announced twice"
            calls[d.index] = [d.name, ""]
        else:
            assert d.index in calls and d.name is None, "arguments before the call's first delta"
        calls[d.index][1] += d.arguments or ""
    assert sorted(calls) == list(range(len(calls)))
    return [tuple(calls[i]) for i in sorted(calls)]


def cut(text: str, points: list[int]) -> list[str]:
    bounds = [0, *sorted({p % (len(text) + 1) for p in points}), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize(("fmt", "text", "content", "calls", "well_formed"), CASES, ids=CASE_IDS)
def test_parse_fixed_outputs(fmt, text, content, calls, well_formed):
    got_content, got_calls = fmt.parse(text, TOOLS)
    assert (got_content, summary(got_calls)) == (content, calls)
    assert [c.index for c in got_calls] == list(range(len(calls)))
    for call in got_calls:
        assert isinstance(json.loads(call.arguments), dict)


@pytest.mark.parametrize(("fmt", "text", "content", "calls", "well_formed"), CASES, ids=CASE_IDS)
def test_stream_equals_parse_one_character_at_a_time(fmt, text, content, calls, well_formed):
    for pieces in ([text], list(text)):
        got_content, got_calls, deltas, final = streamed(fmt, pieces)
        assert (got_content, got_calls) == (content, calls)
        assert summary(final) == calls
        assert [d.id for d in deltas if d.id] == [c.id for c in final]
        if well_formed:
            assert streamed(fmt, pieces, incremental=True)[:2] == (content, calls)


@pytest.mark.parametrize(("fmt", "text", "content", "calls", "well_formed"), CASES, ids=CASE_IDS)
@settings(max_examples=40, deadline=None)
@given(points=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_stream_equals_parse_under_random_chunkings(fmt, text, content, calls, well_formed, points):
    pieces = cut(text, points)
    assert streamed(fmt, pieces)[:2] == (content, calls)
    if well_formed:
        assert streamed(fmt, pieces, incremental=True)[:2] == (content, calls)


FRAGMENTS = ["<tool_call>", "</tool_call>", "\n", " ", "{", "}", "[", "]", '"name": ', '"arguments": ',
             '"parameters": ', '"get_weather"', '"ping"', '"nope"', PARIS, ", ", ";", "<|python_tag|>", "[TOOL_CALLS]",
             "[ARGS]", "ping", "hi", '"', "\\", "\u00e9", "<tool_", "[TOOL_", hermes("ping", "{}"),
             '{"name": "ping", "parameters": {}}', '[{"name": "ping", "arguments": {}}]']


@pytest.mark.parametrize("fmt", [HERMES, LLAMA3, MISTRAL], ids=lambda f: f.name)
@settings(max_examples=150, deadline=None)
@given(parts=st.lists(st.sampled_from(FRAGMENTS), max_size=14),
       points=st.lists(st.integers(min_value=0, max_value=10_000), max_size=10))
def test_any_text_streams_as_it_parses_and_never_raises(fmt, parts, points):
    text = "".join(parts)
    content, calls = fmt.parse(text, TOOLS)
    assert streamed(fmt, cut(text, points))[:2] == (content, summary(calls))
    assert content == content.strip()
    for call in calls:
        assert call.name in {"get_weather", "add", "ping"} and isinstance(json.loads(call.arguments), dict)


def test_markers_cut_across_pieces_are_held_back():
    stream = HERMES.stream(TOOLS)
    assert stream.feed("Let me check. <tool") == ("Let me check.", [])  # the space may precede a call
    assert stream.feed("_call>\n") == ("", [])
    assert stream.feed('{"name": "get_weather", "arguments": {"city": "Paris"}}') == ("", [])
    content, deltas = stream.feed("\n</tool_call>")
    assert content == "" and [d.to_openai() for d in deltas] == [
        {"index": 0, "id": stream.calls[0].id, "type": "function",
         "function": {"name": "get_weather", "arguments": PARIS}}]
    assert stream.feed(" Done") == ("  Done", [])  # the space held before the call, then this one
    assert stream.finish() == ("", [])
    assert stream.finish() == ("", [])
    with pytest.raises(RuntimeError):
        stream.feed("more")


def test_an_unfinished_call_comes_back_as_content_at_finish():
    stream = HERMES.stream(TOOLS)
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par'
    assert stream.feed(text) == ("", [])
    assert stream.finish() == (text, [])
    assert stream.calls == []


def test_incremental_stream_sends_name_first_then_argument_pieces():
    text = "Checking. " + hermes("get_weather", NESTED) + "\n" + hermes("ping", "{}")
    content, calls, deltas, final = streamed(HERMES, list(text), incremental=True)
    assert (content, calls) == ("Checking.", [("get_weather", NESTED), ("ping", "{}")])
    first = deltas[0].to_openai()
    assert first == {"index": 0, "id": final[0].id, "type": "function",
                     "function": {"name": "get_weather", "arguments": ""}}
    pieces = [d for d in deltas if d.index == 0 and d.id is None]
    assert len(pieces) > 10 and all(set(d.to_openai()) == {"index", "function"} for d in pieces)
    assert "".join(d.arguments for d in pieces) == NESTED


def test_incremental_stream_cut_by_max_tokens_keeps_the_announced_call():
    text = '[TOOL_CALLS] [{"name": "ping", "arguments": {}}, {"name": "get_weather", "arguments": {"city": "Pa'
    content, calls, _, final = streamed(MISTRAL, list(text), incremental=True)
    assert content == "" and calls == [("ping", "{}"), ("get_weather", '{"city": "Pa')]
    assert [c.index for c in final] == [0, 1]
    assert streamed(MISTRAL, list(text))[:2] == (text, [])  # the exact stream: it is text


def test_calls_without_tools_are_text():
    text = hermes("ping", "{}")
    assert HERMES.parse(text, None) == (text, [])
    assert HERMES.parse(text, []) == (text, [])


# ---------------------------------------------------------------------------- records
def test_tool_call_records():
    call = ToolCall(name="ping", arguments="{}", index=2)
    other = ToolCall(name="ping", arguments="{}")
    assert re.fullmatch(r"call_[0-9a-f]{24}", call.id) and call.id != other.id
    assert call.to_openai() == {"id": call.id, "type": "function", "function": {"name": "ping", "arguments": "{}"}}
    with pytest.raises(AttributeError):
        call.name = "x"  # type: ignore[misc]
    assert ToolCallDelta(0, "call_1", "f", "").to_openai() == {
        "index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
    assert ToolCallDelta(1, arguments='{"a').to_openai() == {"index": 1, "function": {"arguments": '{"a'}}


def test_formats_are_registered_by_name():
    assert FORMATS["qwen25"] is FORMATS["qwen3"] is HERMES
    assert tool_call_format("llama3") is LLAMA3
    with pytest.raises(ValueError, match="known: hermes, llama3, mistral, qwen25, qwen3"):
        tool_call_format("gpt")


def test_module_loads_neither_torch_nor_xgrammar():
    code = "import sys, sglbench.server.tool_calls; print('torch' in sys.modules, 'xgrammar' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# ---------------------------------------------------------------------------- request checks
def fn(**function) -> dict:
    return {"type": "function", "function": function}


@pytest.mark.parametrize(("tools", "choice", "message"), [
    ("get_weather", None, "tools must be a list"),
    ([WEATHER, "ping"], None, r"tools\[1\] must be an object"),
    ([{"function": {"name": "f"}}], None, r'tools\[0\].type must be "function"'),
    ([{"type": "function"}], None, r"tools\[0\].function is missing"),
    ([WEATHER, fn(description="x")], None, r"tools\[1\].function.name is missing"),
    ([fn(name="get weather")], None, r"tools\[0\].function.name 'get weather' must be 1 to 64"),
    ([fn(name="f" * 65)], None, "must be 1 to 64"),
    ([fn(name="f"), fn(name="f")], None, r"tools\[1\].function.name 'f' repeats tools\[0\]"),
    ([fn(name="f", description=3)], None, "description must be a string"),
    ([fn(name="f", strict="yes")], None, "strict must be true or false"),
    ([fn(name="f", parameters=[])], None, "parameters must be a JSON schema object"),
    ([fn(name="f", parameters={"type": "string"})], None, r"must describe an object .* got type 'string'"),
    ([WEATHER], "always", "tool_choice must be one of"),
    ([WEATHER], {"type": "function", "function": {"name": "foo"}}, "tool_choice names 'foo', which is not in tools"),
    ([WEATHER], {"type": "function", "function": {}}, "tool_choice.function.name is missing"),
    ([WEATHER], {"type": "tool", "function": {"name": "get_weather"}}, 'tool_choice.type must be "function"'),
    ([], "required", "needs at least one tool"),
    (None, {"type": "function", "function": {"name": "f"}}, "not in tools"),
])
def test_check_tools_names_the_problem(tools, choice, message):
    with pytest.raises(ValueError, match=message):
        check_tools(tools, choice)


@pytest.mark.parametrize("choice", [None, "none", "auto", "required", {"type": "function",
                                                                        "function": {"name": "add"}}])
def test_check_tools_accepts_valid_requests(choice):
    check_tools(TOOLS, choice)
    check_tools([fn(name="f.g-1", parameters={}, strict=True, description=None)], choice if choice is None else "auto")


# ---------------------------------------------------------------------------- detection
def model_folder(tmp_path, name: str, model_type: str | None, template: str | list | None = None,
                 architectures: tuple[str, ...] = ()) -> str:
    folder = tmp_path / name
    folder.mkdir()
    config = {"architectures": list(architectures)} | ({"model_type": model_type} if model_type else {})
    (folder / "config.json").write_text(json.dumps(config))
    if template is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, "eos_token": "</s>"}))
    return str(folder)


LLAMA3_TEMPLATE = "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
QWEN_TEMPLATE = "{%- if tools %}<tool_call>\\n{\"name\": <function-name>, \"arguments\": <args-json-object>}"


@pytest.mark.parametrize(("model_type", "architectures", "template", "expected"), [
    ("qwen2", ("Qwen2ForCausalLM",), QWEN_TEMPLATE, "hermes"),
    ("qwen2", (), None, "hermes"),  # Qwen2.5 without a template still speaks hermes
    ("qwen3", (), "{{ messages }}", "hermes"),
    ("qwen3_moe", (), None, "hermes"),
    ("qwen2_moe", (), None, "hermes"),
    (None, ("Qwen3ForCausalLM",), None, "hermes"),
    ("llama", ("LlamaForCausalLM",), LLAMA3_TEMPLATE, "llama3"),
    ("llama", (), "{{ '<|python_tag|>' }}", "llama3"),
    ("llama", (), "{{ '<|eom_id|>' }}", "llama3"),
    ("llama", (), "[INST] {{ m }} [/INST]", None),  # Llama 2 style
    ("llama", (), None, None),
    ("mistral", ("MistralForCausalLM",), "[INST] {{ m }} [/INST]", "mistral"),
    ("llama", (), "{{ '[AVAILABLE_TOOLS] ' + tools|tojson + '[/AVAILABLE_TOOLS]' }}", "mistral"),
    ("mixtral", (), "{{ '[TOOL_CALLS] ' }}", "mistral"),
    ("llama", (), "<|user|>{{ m }}{% if tools %}<tool_call>{% endif %}", "hermes"),  # like the embedded default
    ("llama", (), [{"name": "default", "template": "x"}, {"name": "tool_use", "template": "<tool_call>"}], "hermes"),
    ("qwen3_moe", (), "<tool_call>\\n<function=f>\\n<parameter=x>", None),  # Qwen3-Coder's XML calls
    ("gpt2", (), "{{ m }}", None),
])
def test_detect_tool_call_format_from_a_folder(tmp_path, model_type, architectures, template, expected):
    path = model_folder(tmp_path, "model", model_type, template, architectures)
    assert detect_tool_call_format(path, None) == expected


def test_detect_prefers_the_given_template_and_reads_jinja_files(tmp_path):
    path = model_folder(tmp_path, "llama", "llama", "[INST]")
    assert detect_tool_call_format(path, None) is None
    assert detect_tool_call_format(path, LLAMA3_TEMPLATE) == "llama3"
    assert detect_tool_call_format(path, "<tool_call>") == "hermes"
    other = model_folder(tmp_path, "jinja", "llama")
    (tmp_path / "jinja" / "chat_template.jinja").write_text(LLAMA3_TEMPLATE)
    assert detect_tool_call_format(other) == "llama3"
    assert detect_tool_call_format(tmp_path / "missing", None) is None
    assert detect_tool_call_format(tmp_path / "missing", "<tool_call>") == "hermes"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    assert detect_tool_call_format(broken) is None


# ---------------------------------------------------------------------------- grammars
@pytest.fixture(scope="module")
def default_tokenizer():
    from transformers import AutoTokenizer

    if not (DEFAULT_MODEL_PATH / "config.json").exists():
        pytest.skip("the embedded default model is not there")
    return AutoTokenizer.from_pretrained(str(DEFAULT_MODEL_PATH))


@pytest.fixture(scope="module")
def compiler(default_tokenizer) -> GrammarCompiler:
    config = json.loads((DEFAULT_MODEL_PATH / "config.json").read_text())
    stops = config["eos_token_id"] if isinstance(config["eos_token_id"], list) else [config["eos_token_id"]]
    return GrammarCompiler(default_tokenizer, config["vocab_size"], stops)


def accepts(compiler, tokenizer, ebnf: str, text: str) -> bool:
    """Whether the grammar takes text and then ends there (a stop token is accepted, terminating it)."""
    matcher = compiler.matcher(GrammarSpec("ebnf", ebnf))
    if not all(matcher.try_accept(t) for t in tokenizer.encode(text, add_special_tokens=False)):
        return False
    return matcher.try_accept(compiler.stop_token_ids[0]) and matcher.is_terminated()


def one_call(fmt, name: str, args: str) -> str:
    return fmt.call_begin.format(name=json.dumps(name)) + args + fmt.call_end


def calls_text(fmt, *calls: tuple[str, str]) -> str:
    return fmt.prefix + fmt.separator.join(one_call(fmt, n, a) for n, a in calls) + fmt.suffix


@pytest.mark.parametrize("fmt", [HERMES, LLAMA3, MISTRAL], ids=lambda f: f.name)
def test_required_grammar_forces_valid_calls(compiler, default_tokenizer, fmt):
    single = fmt.grammar(TOOLS, "required", parallel_tool_calls=False)
    parallel = fmt.grammar(TOOLS, "required", parallel_tool_calls=True)
    for ebnf in (single, parallel):
        assert str(xgr.Grammar.from_ebnf(ebnf)) == ebnf  # EBNF that reads back as itself
        compiler.compile(GrammarSpec("ebnf", ebnf))
    ok = [calls_text(fmt, ("get_weather", PARIS)), calls_text(fmt, ("get_weather", '{"city": "Oslo", "unit": "C"}')),
          calls_text(fmt, ("add", '{"a": -3, "b": 40}')), calls_text(fmt, ("ping", '{"any": [1, {"x": null}]}')),
          calls_text(fmt, ("ping", "{}"))]
    two = calls_text(fmt, ("ping", "{}"), ("get_weather", PARIS))
    for text in ok:
        assert accepts(compiler, default_tokenizer, single, text), text
        assert accepts(compiler, default_tokenizer, parallel, text), text
        content, calls = fmt.parse(text, TOOLS)
        assert content == "" and len(calls) == 1
    assert accepts(compiler, default_tokenizer, parallel, two)
    assert not accepts(compiler, default_tokenizer, single, two)
    assert [c.name for c in fmt.parse(two, TOOLS)[1]] == ["ping", "get_weather"]
    refused = [calls_text(fmt, ("get_time", PARIS)),  # not a tool
               calls_text(fmt, ("get_weather", "{}")),  # city is required
               calls_text(fmt, ("get_weather", '{"city": 3}')),  # not a string
               calls_text(fmt, ("get_weather", '{"city":"Paris"}')),  # layout is json.dumps's
               calls_text(fmt, ("add", '{"a": 1, "b": 2, "c": 3}')),  # no other properties
               "Sure! " + calls_text(fmt, ("ping", "{}")), ""]
    for text in refused:
        assert not accepts(compiler, default_tokenizer, parallel, text), text


@pytest.mark.parametrize("fmt", [HERMES, LLAMA3, MISTRAL], ids=lambda f: f.name)
def test_named_tool_choice_grammar_allows_only_that_tool(compiler, default_tokenizer, fmt):
    choice = {"type": "function", "function": {"name": "add"}}
    single, parallel = fmt.grammar(TOOLS, choice, False), fmt.grammar(TOOLS, choice, True)
    add, other = calls_text(fmt, ("add", '{"a": 1, "b": 2}')), calls_text(fmt, ("ping", "{}"))
    twice = calls_text(fmt, ("add", '{"a": 1, "b": 2}'), ("add", '{"a": 3, "b": 4}'))
    assert accepts(compiler, default_tokenizer, single, add) and accepts(compiler, default_tokenizer, parallel, add)
    assert not accepts(compiler, default_tokenizer, single, other)
    assert not accepts(compiler, default_tokenizer, parallel, other)
    assert accepts(compiler, default_tokenizer, parallel, twice)
    assert not accepts(compiler, default_tokenizer, single, twice)


def test_grammar_is_none_without_a_forced_call_and_checks_the_request():
    assert HERMES.grammar(TOOLS, "auto") is None and HERMES.grammar(TOOLS, "none") is None
    assert HERMES.grammar(TOOLS, None) is None
    with pytest.raises(ValueError, match="tool_choice names 'foo'"):
        HERMES.grammar(TOOLS, {"type": "function", "function": {"name": "foo"}})
    bad = fn(name="f", parameters={"type": "object", "properties": {"x": {"type": "integer", "minimum": "a"}}})
    with pytest.raises(ValueError, match=r"tools\[0\].function.parameters"):
        HERMES.grammar([bad], "required")


# ---------------------------------------------------------------------------- end to end
def test_runtime_generates_a_forced_call_on_the_default_model(default_tokenizer):
    import sglbench

    tools = [fn(name="get_weather", parameters={
        "type": "object", "properties": {"city": {"enum": ["Paris", "Tokyo"]}, "unit": {"enum": ["C", "F"]}},
        "required": ["city", "unit"], "additionalProperties": False})]
    ebnf = HERMES.grammar(tools, "required", False)
    rt = sglbench.Runtime(device="cpu", max_total_tokens=2048)
    try:
        prompt = rt.tokenizer.apply_chat_template([{"role": "user", "content": "Weather in Paris?"}], tools=tools)
        params = {"max_new_tokens": 64, "temperature": 0, "ebnf": ebnf}
        out = rt.generate(input_ids=rt.tokenizer.encode_plain(prompt), **params)
        pieces = list(rt.generate_stream(input_ids=rt.tokenizer.encode_plain(prompt), **params))
    finally:
        rt.shutdown()
    assert out["meta_info"]["finish_reason"]["type"] == "stop", out
    content, calls = HERMES.parse(out["text"], tools)
    assert content == "" and len(calls) == 1 and calls[0].name == "get_weather", out["text"]
    args = json.loads(calls[0].arguments)
    assert set(args) == {"city", "unit"} and args["city"] in ("Paris", "Tokyo") and args["unit"] in ("C", "F")
    assert streamed(HERMES, pieces, incremental=True)[:2] == streamed(HERMES, ["".join(pieces)])[:2]
