"""The classic program shapes on the embedded default model, asserting the answers it is trained to know
(facts about its generated world, arithmetic, True/False/Unknown judgements, chats, tool calls).

Greedy decoding is deterministic, but the model is small: batches of questions assert a majority right."""

from __future__ import annotations

import random
import re

import pytest

import sglbench as sgl
from sglbench.default_model import DEFAULT_MODEL_PATH
from sglbench.default_model.corpus import (
    biography,
    build_world,
    judgement,
    render_judgements,
    render_qa,
    statement,
)
from tests.helpers import assert_pool_full

pytestmark = pytest.mark.skipif(
    not (DEFAULT_MODEL_PATH / "config.json").exists(),
    reason="the default model checkpoint is not trained yet (python -m sglbench.default_model.train)",
)

WORLD = build_world()
PEOPLE = WORLD.people
SUMS = [(7, 3), (12, 5), (9, 4), (8, 11)]  # operands, sums and sums + 1 within the training range (0..20)


@pytest.fixture(scope="module")
def rt():
    runtime = sgl.Runtime(device="cpu", max_total_tokens=16384)
    sgl.set_default_backend(runtime)
    yield runtime
    sgl.global_config.default_backend = None
    runtime.shutdown()


@pytest.fixture(autouse=True)
def no_leaks(rt):
    yield
    assert_pool_full(rt)


def mostly(hits: list[bool]) -> None:
    """At least two thirds right: the model must score >= 90 % on held-out prompts, so a miss or two in a
    handful is noise, while a program that builds the wrong prompt gets almost none right."""
    assert 3 * sum(hits) >= 2 * len(hits), hits


def fact(person, attribute: str) -> tuple[str, str]:
    question = {"city": f"Where does {person.name} live?", "job": f"What is {person.name}'s job?",
                "pet": f"What pet does {person.name} have?", "age": f"How old is {person.name}?"}[attribute]
    return question, WORLD.value(person, attribute)


SHOTS = render_qa([fact(PEOPLE[10], "city"), fact(PEOPLE[11], "job"), fact(PEOPLE[12], "pet"),
                   ("What is 3 + 5?", "8")])


@sgl.function
def few_shot_qa(s, question):
    s += SHOTS + "Q: " + question + "\nA:" + sgl.gen("answer", max_tokens=8, stop="\n")


def test_few_shot_qa_run_and_run_batch(rt):
    question, answer = fact(PEOPLE[0], "city")
    assert few_shot_qa.run(question=question, temperature=0)["answer"].strip() == answer
    queries = [fact(p, a) for p, a in zip(PEOPLE[1:7], ["city", "job", "pet", "age", "city", "job"])]
    queries += [(f"What is {a} + {b}?", str(a + b)) for a, b in SUMS]
    states = few_shot_qa.run_batch([{"question": q} for q, _ in queries], temperature=0)
    mostly([st["answer"].strip() == answer for st, (_, answer) in zip(states, queries)])


@sgl.function
def chat(s, first, second):
    s += sgl.system("You are a helpful assistant.")
    s += sgl.user(first)
    s += sgl.assistant(sgl.gen("reply1", max_tokens=24))
    with s.user():
        s += second
    with s.assistant():
        s += sgl.gen("reply2", max_tokens=24)


def test_multi_turn_chat(rt):
    pairs = list(zip(PEOPLE[:3], PEOPLE[3:6]))
    states = chat.run_batch([{"first": f"Where does {p.name} live?", "second": f"What about {q.name}?"}
                             for p, q in pairs], temperature=0)
    assert all(len(st.messages()) == 5 for st in states)
    mostly([p.city in st["reply1"] for st, (p, _) in zip(states, pairs)]
           + [q.name in st["reply2"] and q.city in st["reply2"] for st, (_, q) in zip(states, pairs)])


_rng = random.Random(1)
JUDGEMENT_SHOTS = render_judgements([judgement(_rng, WORLD) for _ in range(6)])


@sgl.function
def judge(s, text):
    s += JUDGEMENT_SHOTS + "Statement: " + text + "\nJudgement: "
    s += sgl.select("verdict", ["True", "False", "Unknown"])


def test_select_true_false_unknown(rt):
    cases = []
    for person in PEOPLE[:2]:
        cases.append((statement(person.name, "job", person.job), "True"))
        other = next(c for c in WORLD.cities if c != person.city)
        cases.append((statement(person.name, "city", other), "False"))
    cases += [(statement(WORLD.outsiders[0], "pet", "cat"), "Unknown"), (f"{PEOPLE[3].name} plays the harp.", "Unknown")]
    states = judge.run_batch([{"text": t} for t, _ in cases])
    mostly([st["verdict"] == verdict for st, (_, verdict) in zip(states, cases)])


@sgl.function
def check_then_branch(s, a, b):
    s += SHOTS + f"Q: What is {a} + {b}?\nA:" + sgl.gen("sum", max_tokens=4, stop="\n")
    if s["sum"].strip() == str(a + b):  # read mid-program, branch in Python
        s += f"Q: What is {a + b} + 1?\nA:" + sgl.gen("next", max_tokens=4, stop="\n")
    else:
        s["next"] = "skipped"


def test_read_variable_and_branch(rt):
    states = check_then_branch.run_batch([{"a": a, "b": b} for a, b in SUMS], temperature=0)
    branches = []
    for st, (a, b) in zip(states, SUMS):
        branched = st["sum"].strip() == str(a + b)
        # The branch Python took follows the value it read mid-program.
        assert (st["next"] != "skipped") == branched
        assert (f"Q: What is {a + b} + 1?" in st.text()) == branched
        branches.append(branched and st["next"].strip() == str(a + b + 1))
    mostly(branches)


def calculator(expression: str) -> str:
    """The calculator tool of the training traces: "a + b", "a - b" or "a x b"."""
    try:
        a, op, b = expression.split()
        return str({"+": int(a) + int(b), "-": int(a) - int(b), "x": int(a) * int(b)}[op])
    except (ValueError, KeyError):
        return "error"


def lookup(name: str) -> str:
    """The lookup tool of the training traces: a short biography."""
    person = next((p for p in PEOPLE if p.name == name.strip()), None)
    return "unknown" if person is None else biography(random.Random(0), WORLD, person)


@sgl.function
def tool_use(s, a, b):
    s += f"Question: What is {a} + {b}?\nThought: I should use the calculator.\nAction: calculator["
    s += sgl.gen("expr", max_tokens=10, stop="]") + "]\n"
    s += "Observation: " + calculator(s["expr"]) + "\nThought: I know the answer.\nAnswer:"
    s += sgl.gen("answer", max_tokens=4, stop="\n")


def test_tool_use_with_python_between_calls(rt):
    states = tool_use.run_batch([{"a": a, "b": b} for a, b in SUMS], temperature=0)
    # Python ran between the two calls on what the first produced, and the second saw its result.
    assert all(f"Observation: {calculator(st['expr'])}\nThought: I know the answer.\nAnswer:{st['answer']}" in st.text()
               for st in states)
    # The model answers with the tool's result, as its training traces do. (It does not copy the question's
    # numbers into the call: copying from context is beyond it, see the held-out 'reading' task.)
    assert all(re.fullmatch(r"\d+ [-+x] \d+", st["expr"].strip()) for st in states), [st["expr"] for st in states]
    mostly([st["answer"].strip() == calculator(st["expr"]) for st in states])


TOOLS = {"calculator": calculator, "lookup": lookup}


@sgl.function
def react(s, question, max_steps=3):
    s += "Question: " + question + "\n"
    for step in range(max_steps):
        s += "Thought:" + sgl.gen(f"thought{step}", max_tokens=24, stop="\n") + "\n"
        s += sgl.select(f"next{step}", ["Action", "Answer"]) + ":"
        if s[f"next{step}"] == "Answer":
            break
        s += " " + sgl.select(f"tool{step}", list(TOOLS)) + "[" + sgl.gen(f"arg{step}", max_tokens=12, stop="]") + "]\n"
        s += "Observation: " + TOOLS[s[f"tool{step}"]](s[f"arg{step}"]) + "\n"
    else:
        s += "Answer:"  # out of steps: answer now
    s += sgl.gen("answer", max_tokens=6, stop="\n")


def test_react_loop_driven_by_select(rt):
    person = PEOPLE[1]
    cases = [("What is 17 + 5?", "22", "calculator"), ("What is 12 + 9?", "21", "calculator"),
             (f"What is {person.name}'s job?", person.job, "lookup")]
    states = react.run_batch([{"question": q} for q, _, _ in cases], temperature=0)
    for st in states:
        assert st.error() is None
        steps = [k for k in range(3) if f"next{k}" in st]
        # select drove the loop: it continued exactly while the choice was "Action", each action ran its tool.
        assert all(st[f"next{k}"] == "Action" for k in steps[:-1])
        for k in steps:
            if st[f"next{k}"] == "Action":
                assert f"Observation: {TOOLS[st[f'tool{k}']](st[f'arg{k}'])}\n" in st.text()
        assert "answer" in st
    # The model follows its training traces: the right tool, then an answer taken from the observation.
    mostly(["tool0" in st and st["tool0"] == tool and st["answer"].strip() in TOOLS[tool](st["arg0"])
            for st, (_, _, tool) in zip(states, cases)])


@sgl.function
def parallel_facts(s, questions):
    s += SHOTS
    forks = s.fork(len(questions))
    forks += [f"Q: {question}\nA:" + sgl.gen("a", max_tokens=8, stop="\n") for question in questions]
    forks.join()
    return forks


def test_fork_join_answers(rt):
    person = PEOPLE[2]
    queries = [fact(person, a) for a in ("city", "job", "pet")]
    st = parallel_facts.run(questions=[q for q, _ in queries], temperature=0)
    forks = st.ret_value
    mostly([forks[i]["a"].strip() == answer for i, (_, answer) in enumerate(queries)])
    assert [a.strip() for a in st["a"]] == [forks[i]["a"].strip() for i in range(3)]
