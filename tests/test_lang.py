"""The sglbench language on a random tiny Llama (with the default model's chat template): the classic
program shapes, streaming, tracing, compiling, telemetry and bad input. Outputs are random, so these
tests assert structure; tests/test_lang_default_model.py checks answers."""

from __future__ import annotations

import asyncio
import re

import pytest
from transformers import AutoTokenizer

import sglbench as sgl
from sglbench.default_model.tokenizer import CHAT_TEMPLATE, ROLE_MARKERS
from sglbench.lang.backend import CallContext
from sglbench.lang.backend.runtime_backend import RuntimeBackend, choice_start
from sglbench.lang.interpreter import MissingVariableError
from sglbench.lang.ir import REGEX_BOOL, REGEX_FLOAT, REGEX_INT, REGEX_STR, TracingError
from sglbench.lang.telemetry import get_run, recent_runs
from sglbench.runtime.models.synthetic import make_random_checkpoint
from sglbench.runtime.runtime import Runtime
from tests.helpers import assert_pool_full

FEW_SHOT = "Q: What is 1 + 1?\nA: 2\n\nQ: What is 2 + 2?\nA: 4\n\nQ: What is 3 + 3?\nA: 6\n\n"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A random Llama whose tokenizer has the default model's role markers and chat template."""
    path = make_random_checkpoint(tmp_path_factory.mktemp("lang"), family="llama", seed=5, vocab_size=420)
    tok = AutoTokenizer.from_pretrained(str(path))
    tok.add_special_tokens({"additional_special_tokens": [*ROLE_MARKERS, "<|end|>"]})
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def rt(model_path):
    runtime = Runtime(str(model_path), device="cpu", max_total_tokens=4096)
    sgl.set_default_backend(runtime)
    yield runtime
    sgl.global_config.default_backend = None
    runtime.shutdown()


@pytest.fixture(autouse=True)
def no_leaks(request):
    yield
    if "rt" in request.fixturenames:
        assert_pool_full(request.getfixturevalue("rt"))


def no_error(*states):
    for st in states:
        assert st.error() is None, st.error()


# ---------------------------------------------------------------------------- program shapes
@sgl.function
def few_shot_qa(s, question):
    s += FEW_SHOT
    s += "Q: " + question + "\nA:" + sgl.gen("answer", max_tokens=6, stop="\n")


def test_few_shot_qa_run_and_run_batch(rt):
    st = few_shot_qa.run(question="What is 4 + 4?", temperature=0)
    no_error(st)
    assert st.text() == FEW_SHOT + "Q: What is 4 + 4?\nA:" + st["answer"]
    assert "\n" not in st["answer"]
    meta = st.get_meta_info("answer")
    assert meta["prompt_tokens"] > 20 and "cached_tokens" in meta
    rt.flush_cache()
    questions = [f"What is {i} + {i}?" for i in range(5, 9)]
    states = few_shot_qa.run_batch([{"question": q} for q in questions], temperature=0, progress_bar=True)
    no_error(*states)
    assert [st.text().split("Q: ")[-1].split("\n")[0] for st in states] == questions
    # run_batch traced the constant few-shot prefix and cached it first, so every program hits the cache.
    assert all(st.get_meta_info("answer")["cached_tokens"] >= 20 for st in states)
    again = few_shot_qa.run(question=questions[0], temperature=0)
    assert again["answer"] == states[0]["answer"]  # batching does not change greedy results


@sgl.function
def chat_calls(s, question):
    s += sgl.system("You are a helpful assistant.")
    s += sgl.user(question)
    s += sgl.assistant(sgl.gen("a1", max_tokens=6))
    s += sgl.user("And then?")
    s += sgl.assistant(sgl.gen("a2", max_tokens=6))


@sgl.function
def chat_blocks(s, question):
    with s.system():
        s += "You are a helpful assistant."
    with s.user():
        s += question
    with s.assistant():
        s += sgl.gen("a1", max_tokens=6)
    s += sgl.user_begin() + "And then?" + sgl.user_end()
    s += sgl.assistant_begin() + sgl.gen("a2", max_tokens=6) + sgl.assistant_end()


def test_multi_turn_chat_roles_as_calls_and_blocks(rt):
    a = chat_calls.run(question="Hello!", temperature=0)
    b = chat_blocks.run(question="Hello!", temperature=0)
    no_error(a, b)
    assert a.text() == b.text()
    messages = a.messages()
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[1]["content"] == "Hello!" and messages[2]["content"] == a["a1"]
    assert a.text().startswith("<|system|>\nYou are a helpful assistant.<|end|>\n<|user|>\nHello!<|end|>\n")
    assert a.text().count("<|assistant|>\n") == 2 and a.text().endswith("<|end|>\n")


@sgl.function
def judge(s, statement, method=sgl.token_length_normalized):
    s += "Statement: " + statement + "\nJudgement: "
    s += sgl.select("verdict", ["True", "False", "Unknown"], choices_method=method)


@pytest.mark.parametrize("method", [sgl.token_length_normalized, sgl.greedy_token_selection,
                                   sgl.unconditional_likelihood_normalized])
def test_select_true_false_unknown(rt, method):
    st = judge.run(statement="Alice lives in Plimsk.", method=method)
    no_error(st)
    assert st["verdict"] in ("True", "False", "Unknown")
    assert st.text().endswith("Judgement: " + st["verdict"])
    meta = st.get_meta_info("verdict")
    assert len(meta["normalized_prompt_logprobs"]) == 3 and meta["prompt_tokens"] > 0
    for choice, lps in zip(["True", "False", "Unknown"], meta["input_token_logprobs"]):
        assert "".join(t[2] for t in lps).strip() == choice  # exactly the choice's tokens are scored
    if method is sgl.unconditional_likelihood_normalized:
        assert [len(u) for u in meta["unconditional_token_logprobs"]] == [len(c) for c in meta["input_token_logprobs"]]
    if method is sgl.token_length_normalized:
        best = max(range(3), key=lambda i: meta["normalized_prompt_logprobs"][i])
        assert st["verdict"] == ["True", "False", "Unknown"][best]


def test_select_scores_choices_merged_with_the_prompt_boundary(rt):
    tok = rt.tokenizer
    prompt, choices = "The quick bro", ["wn fox", "ken dog"]
    prompt_ids = tok.encode(prompt)
    for choice in choices:
        full = tok.encode(prompt + choice)
        start = choice_start(prompt_ids, full)
        assert full[:start] == prompt_ids[:start] and 1 <= start < len(full)
    merged = [choice_start(prompt_ids, tok.encode(prompt + c)) < len(prompt_ids) for c in choices]
    assert any(merged), "the test needs a choice that merges with the prompt's last token"
    decision = RuntimeBackend(rt).select(CallContext(prompt, (), "p", "s"), choices, 0.0, sgl.token_length_normalized)
    assert decision.decision in choices
    for choice, lps in zip(choices, decision.meta_info["input_token_logprobs"]):
        scored = "".join(t[2] for t in lps)
        assert (prompt + choice).endswith(scored) and len(scored) >= len(choice)


@sgl.function
def branch(s):
    s += "Is the sky green? Answer: " + sgl.select("yes_no", ["yes", "no"]) + "\n"
    if s["yes_no"] == "yes":
        s += "Why?" + sgl.gen("why", max_tokens=4)
    else:
        s += "Right." + sgl.gen("ok", max_tokens=4)


def test_read_variable_mid_program_and_branch(rt):
    st = branch.run(temperature=0)
    no_error(st)
    assert ("why" in st) != ("ok" in st)
    assert ("why" in st) == (st["yes_no"] == "yes")


def calculator(expression: str) -> str:
    """A tool: evaluate a+b style arithmetic, or say why not."""
    m = re.fullmatch(r"\s*(\d+)\s*([-+x*])\s*(\d+)\s*", expression)
    if not m:
        return "error"
    a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
    return str(a + b if op == "+" else a - b if op == "-" else a * b)


@sgl.function
def tool_use(s, question):
    s += "Question: " + question + "\nAction: calculator[" + sgl.gen("expr", max_tokens=6, stop="]") + "]\n"
    s += "Observation: " + calculator(s["expr"]) + "\nAnswer:" + sgl.gen("answer", max_tokens=4, stop="\n")


def test_tool_use_with_python_between_calls(rt):
    st = tool_use.run(question="What is 3 + 4?", temperature=0)
    no_error(st)
    assert f"Observation: {calculator(st['expr'])}\nAnswer:" in st.text()
    assert calculator("3 + 4") == "7" and calculator("x") == "error"


@sgl.function
def react(s, question, max_steps=3):
    s += "Question: " + question + "\n"
    for step in range(max_steps):
        s += "Step: " + sgl.select(f"act_{step}", ["calculate", "lookup", "finish"]) + "\n"
        if s[f"act_{step}"] == "finish":
            break
        s += "Observation: " + ("7" if s[f"act_{step}"] == "calculate" else "no entry") + "\n"
    s += "Answer:" + sgl.gen("answer", max_tokens=3, stop="\n")


def test_react_loop_driven_by_select(rt):
    st = react.run(question="What is 3 + 4?", temperature=0)
    no_error(st)
    actions = [st[f"act_{i}"] for i in range(3) if f"act_{i}" in st]
    assert 1 <= len(actions) <= 3 and "finish" not in actions[:-1]
    assert st.text().count("Step: ") == len(actions)
    assert st.text().count("Observation: ") == len(actions) - (actions[-1] == "finish")


@sgl.function
def parallel(s, topic):
    s += "Here are three ideas about " + topic + ".\n" + "Each idea is short and clear.\n" * 4
    forks = s.fork(3)
    forks += [f"Idea {i + 1}:" + sgl.gen("idea", max_tokens=5, stop="\n") for i in range(3)]
    forks.join()
    s += "Summary:" + sgl.gen("summary", max_tokens=5)
    return forks


def test_fork_join_parallel_decoding(rt):
    st = parallel.run(topic="gardens", temperature=0)
    no_error(st)
    forks = st.ret_value
    ideas = [forks[i]["idea"] for i in range(3)]
    assert st["idea"] == ideas  # gather_variable: the forks' variables as lists in the parent
    assert "Idea" not in st.text() and st.text().endswith("Summary:" + st["summary"])
    for i, f in enumerate(forks):
        assert f.text().endswith(f"Idea {i + 1}:" + ideas[i])
        # the parent's prefix was prefilled once before the fork, so each fork hits the cache
        assert f.get_meta_info("idea")["cached_tokens"] >= 30
    tel = st.telemetry
    assert {e.parent for e in tel.forks} == {st.state_id} and sorted(e.index for e in tel.forks) == [0, 1, 2]
    assert len(tel.joins) == 3 and len(tel.states) == 4


@sgl.function
def parallel_encoding(s, docs):
    s += "Read the documents.\n"
    forks = s.fork(len(docs))
    forks += lambda i: f"Document {i}: {docs[i]}\n"
    forks.join("concate_and_append")
    s += "Question: which one is longest?\nAnswer:" + sgl.gen("answer", max_tokens=4)


def test_parallel_encoding_concate_and_append(rt):
    docs = ["apples are red.", "the sea is wide and deep.", "cats sleep."]
    st = parallel_encoding.run(docs=docs, temperature=0)
    no_error(st)
    body = "".join(f"Document {i}: {d}\n" for i, d in enumerate(docs))
    assert st.text() == "Read the documents.\n" + body + "Question: which one is longest?\nAnswer:" + st["answer"]


@sgl.function
def streamed(s):
    s += "Once upon a time" + sgl.gen("story", max_tokens=12, ignore_eos=True)
    s += " The end." + sgl.gen("coda", max_tokens=4, ignore_eos=True)


def test_streaming_text_iter_and_async(rt):
    st = streamed.run(stream=True, temperature=0)
    pieces = list(st.text_iter())
    assert len(pieces) > 2 and "".join(pieces) == st.text()
    assert "".join(streamed.run(stream=True, temperature=0).text_iter("story")) == st["story"]

    async def consume():
        state = streamed.run(stream=True, temperature=0)
        items = [item async for item in state.text_async_iter("coda", return_meta_data=True)]
        whole = [item async for item in state.text_async_iter()]
        return state, items, whole

    state, items, whole = asyncio.run(consume())
    assert "".join(t for t, _ in items) == state["coda"] and state.get_meta_info("coda")["completion_tokens"] == 4
    assert "".join(whole) == state.text()
    assert list(few_shot_qa.run(question="What is 1 + 2?", temperature=0).text_iter("answer")) != []


@sgl.function
def short_gen(s, min_tokens, stop_id):
    s += "Count: " + sgl.gen("x", max_tokens=8, min_tokens=min_tokens, stop_token_ids=[stop_id])


def test_min_tokens(rt):
    first = rt.generate(rt.tokenizer.encode("Count: "), max_new_tokens=1, temperature=0)["output_ids"][0]
    st = short_gen.run(min_tokens=0, stop_id=first, temperature=0)
    assert st.get_meta_info("x")["completion_tokens"] == 1
    st = short_gen.run(min_tokens=5, stop_id=first, temperature=0)
    assert st.get_meta_info("x")["completion_tokens"] >= 5


def test_n_samples_and_logprobs(rt):
    @sgl.function
    def sample(s):
        s += "Hello" + sgl.gen("x", max_tokens=4, n=2, temperature=1.0)
        s += "!" + sgl.gen("y", max_tokens=3, return_logprob=True, top_logprobs_num=2, return_text_in_logprobs=True)

    st = sample.run(temperature=0)
    no_error(st)
    assert isinstance(st["x"], list) and len(st["x"]) == 2 and st.text().startswith("Hello" + st["x"][0] + "!")
    out = st.get_meta_info("y")["output_token_logprobs"]
    assert len(out) == st.get_meta_info("y")["completion_tokens"] and all(len(t) == 3 for t in out)


# ---------------------------------------------------------------------------- trace, compile, telemetry
def test_trace_graph_of_fork_join(rt):
    graph = parallel.trace()
    assert graph.complete and graph.num_states == 4
    assert (graph.count("fork"), graph.count("fork_item"), graph.count("join"), graph.count("gen")) == (1, 3, 1, 4)
    assert graph.count("argument") == 1
    kinds = [e.kind for e in graph.edges]
    assert kinds.count("fork") == 3 and kinds.count("join") == 3
    dot = graph.to_dot()
    assert dot.startswith('digraph "parallel" {') and "cluster_3" in dot and dot.count("->") == len(graph.edges)

    @sgl.function
    def quoting(s, x):
        s += 'say "hi" \\ then\nnewline ' + sgl.gen("a", max_tokens=2)
        s += f"again {x} and {s['a']}"

    g = quoting.trace()
    assert [n.kind for n in g.nodes] == ["text", "gen", "text", "argument", "text", "variable"]
    assert any(e.kind == "data" for e in g.edges)
    assert '\\"hi\\"' in g.to_dot() and "\nnewline" not in g.to_dot()


def test_trace_stops_at_data_dependent_control_flow(rt):
    graph = branch.trace()
    assert not graph.complete and "yes_no" in graph.stop_reason
    with pytest.raises(TracingError, match="yes_no"):
        branch.compile()
    template = sgl.global_config.default_backend.get_chat_template()
    assert few_shot_qa.trace().constant_prefix(template) == FEW_SHOT + "Q: "


@sgl.function
def pipeline(s, topic):
    s += sgl.system("You write short notes.")
    s += sgl.user("Two notes about " + topic + ".")
    forks = s.fork(2)
    for i, f in enumerate(forks):
        f += sgl.assistant(f"Note {i}:" + sgl.gen("note", max_tokens=5))
    forks.join()
    with s.assistant():
        s += "First note: " + forks[0]["note"] + sgl.gen("final", max_tokens=5)
    with s.var_scope("tail"):
        s += " tail " + sgl.gen("t", max_tokens=3)


def test_compile_matches_interpreter(rt):
    interpreted = pipeline.run(topic="rivers", temperature=0)
    compiled = pipeline.compile().run(topic="rivers", temperature=0)
    no_error(interpreted, compiled)
    assert compiled.text() == interpreted.text()
    for name in ("note", "final", "tail", "t"):
        assert compiled[name] == interpreted[name]
    assert compiled.messages() == interpreted.messages()
    batch = pipeline.compile().run_batch([{"topic": "rivers"}, {"topic": "hills"}], temperature=0)
    assert batch[0].text() == interpreted.text() and len(batch[1]["note"]) == 2


def test_telemetry_records(rt):
    st = parallel.run(topic="bees", temperature=0)
    tel = st.telemetry
    assert tel.done and tel.error is None and get_run(st.program_id) is tel and recent_runs(1) == [tel]
    assert len(tel.calls) == 4 and {c.kind for c in tel.calls} == {"gen"}
    for call in tel.calls:
        assert call.queued <= call.first_token <= call.finished and call.prompt_tokens > 0
        assert call.program_id == st.program_id and call.state_id in tel.states and call.rids
    events = rt.events.since(0, kinds=("request.finished", "program."))
    mine = [e for e in events if e.data.get("program_id") == st.program_id]
    assert {e.kind for e in mine} >= {"program.begin", "program.fork", "program.end", "request.finished"}
    sel = judge.run(statement="x").telemetry.calls
    assert [c.kind for c in sel] == ["select"] and len(sel[0].rids) == 4  # prefix commit + 3 choices
    assert tel.summary()["calls"] == 4


def test_bind_nested_programs_and_group_expressions(rt):
    @sgl.function
    def inner(s, word):
        s += "Say " + word + ":" + sgl.gen("said", max_tokens=2)

    @sgl.function
    def outer(s, word, times):
        forks = s.fork(times)
        forks += "Echo:"  # one expression added to every fork
        forks += sgl.gen("echo", max_tokens=2)
        forks.join()
        s["inner"] = inner(word=word, temperature=0)["said"]  # calling a program runs it on its own

    st = outer.bind(times=2).run(word="hi", temperature=0)
    no_error(st)
    assert len(st["echo"]) == 2 and st["inner"] == inner.run(word="hi", temperature=0)["said"]
    assert repr(st) == f"ProgramState({st.text()!r})"
    graph = outer.trace(word="hi", times=2)
    assert not graph.complete and "inner" in graph.stop_reason


def test_server_info_and_flush(rt):
    info = sgl.get_server_info()
    assert info["backend"] == "runtime" and info["max_total_tokens"] == 4096
    assert sgl.flush_cache() is True
    assert sgl.Runtime is Runtime


# ---------------------------------------------------------------------------- bad input
def test_bad_input_errors(rt, monkeypatch):
    @sgl.function
    def adds_none(s):
        s += None

    with pytest.raises(ValueError, match="None"):
        adds_none.run()

    @sgl.function
    def reads_unset(s):
        s += "Hi" + sgl.gen("x", max_tokens=2)
        return s["nope"]

    monkeypatch.setattr(sgl.global_config, "variable_timeout", 0.3)
    with pytest.raises(TimeoutError, match="'nope'"):
        reads_unset.run()
    st = short_gen.run(min_tokens=0, stop_id=0)
    with pytest.raises(MissingVariableError, match="'nope' was never set"):
        st["nope"]

    with pytest.raises(ValueError, match="choices"):
        sgl.select("v", [])
    with pytest.raises(ValueError, match="either choices or regex"):
        sgl.gen("v", choices=["a", "b"], regex="a|b")
    with pytest.raises(TypeError, match=r"first parameter .* `s`"):
        sgl.function(lambda state, x: None)
    with pytest.raises(TypeError, match="unexpected keyword argument 'temprature'"):
        few_shot_qa.run(question="q", temprature=0)
    with pytest.raises(TypeError, match="unknown run option"):
        few_shot_qa.run_batch([{"question": "a"}], questoin="typo")
    with pytest.raises(ValueError, match="regular expression"):
        sgl.gen("v", regex="(")
    with pytest.raises(ValueError, match="fork size"):
        sgl.function(lambda s: s.fork(0)).run()


@pytest.mark.parametrize(("make", "prefix_pattern"), [
    (lambda: sgl.gen("v", max_tokens=6, regex=REGEX_INT), r"[-+]?[0-9]*[ \n]*"),
    (lambda: sgl.gen_int("v", max_tokens=6), r"[-+]?[0-9]*[ \n]*"),
    (lambda: sgl.gen_string("v", max_tokens=6), r'("[\w\d\s]*"?)?'),
    (lambda: sgl.gen("v", max_tokens=6, regex="(yes|no)"), r"(y(es?)?|n(o)?)?"),
])
def test_constrained_gen_reaches_the_runtime(rt, make, prefix_pattern):
    @sgl.function
    def constrained(s):
        s += "Value: " + make()

    st = constrained.run()
    no_error(st)
    # The whole match, or its start when max_tokens cut it; a cut inside a character's bytes decodes as U+FFFD.
    assert re.fullmatch(prefix_pattern, st["v"].rstrip("\ufffd"))


def test_stop_regex_stops_and_is_cut(rt):
    @sgl.function
    def stop_at_regex(s):
        s += "Value: " + sgl.gen("v", max_tokens=8, stop_regex=r"[\s\S]", temperature=0)  # any first character

    st = stop_at_regex.run()
    assert st.error() is None
    assert st["v"] == ""  # the match is cut, as a stop string is
    assert st.get_meta_info("v")["finish_reason"]["type"] == "stop"


def test_regex_constants():
    assert re.fullmatch(REGEX_INT, "-42\n") and re.fullmatch(REGEX_FLOAT, "3.5") and not re.fullmatch(REGEX_INT, "4.5")
    assert re.fullmatch(REGEX_BOOL, "True") and re.fullmatch(REGEX_STR, '"a b"')


def test_program_errors_in_states(rt):
    @sgl.function
    def bad_roles(s):
        s += sgl.user_begin() + sgl.assistant("nested")

    assert "do not nest" in str(bad_roles.run().error())

    @sgl.function
    def picture(s):
        s += sgl.image("cat.png") + "What is this?" + sgl.gen("a", max_tokens=2)

    assert "text-only" in str(picture.run().error())

    @sgl.function
    def joins_twice(s):
        forks = s.fork(2)
        forks.join()
        forks.join()

    with pytest.raises(RuntimeError, match="already joined"):
        joins_twice.run()

    @sgl.function
    def adds_after_join(s):
        forks = s.fork(2)
        forks.join()
        forks += "late"

    with pytest.raises(RuntimeError, match="finished"):
        adds_after_join.run()


def test_run_batch_reports_failures_without_stopping_others(rt):
    @sgl.function
    def maybe_fail(s, i):
        if i == 1:
            raise ValueError("program 1 fails")
        s += f"Item {i}:" + sgl.gen("x", max_tokens=2)

    states = maybe_fail.run_batch([{"i": i} for i in range(3)], num_threads=2)
    assert isinstance(states[1].error(), ValueError) and "program 1 fails" in str(states[1].error())
    no_error(states[0], states[2])
    assert states[0]["x"] is not None and states[2].text().startswith("Item 2:")
    gen_states = list(maybe_fail.run_batch([{"i": 0}, {"i": 2}], generator_style=True))
    assert [st.text()[:6] for st in gen_states] == ["Item 0", "Item 2"]


# ---------------------------------------------------------------------------- pieces without a model
def test_chat_template_derivation():
    from jinja2 import Template

    from sglbench.lang.chat_template import DEFAULT_CHAT_TEMPLATE, derive_chat_template

    def renderer(source, **extra):
        template = Template(source)

        def raise_exception(message):
            raise ValueError(message)

        return lambda messages, gen: template.render(messages=messages, add_generation_prompt=gen, bos_token="<s>",
                                                     raise_exception=raise_exception, **extra)

    ours = derive_chat_template(renderer(CHAT_TEMPLATE), "<s>")
    assert dict(ours.role_prefix_and_suffix) == {r: (f"<|{r}|>\n", "<|end|>\n") for r in ("system", "user", "assistant")}
    assert ours.default_system_prompt is None
    qwen_like = (
        "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nBe kind.<|im_end|>\n{% endif %}"
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    )
    qwen = derive_chat_template(renderer(qwen_like), None)
    assert qwen.get_prefix_and_suffix("user") == ("<|im_start|>user\n", "<|im_end|>\n")
    assert qwen.default_system_prompt == "Be kind."
    no_system = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}"
        "{% endif %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    )
    plain = derive_chat_template(renderer(no_system), "<s>")
    assert sorted(plain.role_prefix_and_suffix) == ["assistant", "user"]
    with pytest.raises(ValueError, match="no role 'system'"):
        plain.get_prefix_and_suffix("system")
    assert DEFAULT_CHAT_TEMPLATE.get_prefix_and_suffix("user") == ("USER:", "\n")


def test_choices_methods():
    choices = ["ab", "a", "b"]
    lps = [[(-1.0, 1), (-0.1, 2)], [(-1.0, 1)], [(-2.0, 3)]]
    normalized = [sum(t[0] for t in c) / len(c) for c in lps]
    common = dict(choices=choices, normalized_prompt_logprobs=normalized, input_token_logprobs=lps,
                  output_token_logprobs=[[], [], []])
    assert sgl.token_length_normalized(**common).decision == "ab"
    # greedy: "ab" and "a" tie on the first token; "a" padded with its mean (-1.0) loses to -0.1
    assert sgl.greedy_token_selection(**common).decision == "ab"
    unconditional = [[(None, 1), (-0.1, 2)], [(None, 1)], [(-5.0, 3)]]
    decision = sgl.unconditional_likelihood_normalized(**common, unconditional_token_logprobs=unconditional)
    assert decision.decision == "b" and decision.meta_info["normalized_unconditional_prompt_logprobs"][2] == 3.0
    with pytest.raises(ValueError, match="unconditional"):
        sgl.unconditional_likelihood_normalized(**common)


def test_language_import_is_light():
    import subprocess
    import sys

    code = ("import sys, sglbench as sgl; sgl.function; sgl.gen; sgl.select; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
