"""The embedded default model: checkpoint format, tokenizer and chat template, held-out accuracy, corpus."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from sglbench.default_model import DEFAULT_MODEL_PATH, default_model_path
from sglbench.default_model.corpus import (
    ANNEAL_KINDS,
    DOCUMENT_KINDS,
    FINETUNE_KINDS,
    TOOLS,
    TRAIN_SEED,
    build_world,
    calculate,
    doc_thinking,
    doc_tool_chat,
    generate_documents,
    render_chat,
    run_tool,
    thinking_chat,
    tool_chat,
    weather,
)
from sglbench.default_model.heldout import (
    CHAT_MAX_NEW_TOKENS,
    HELDOUT_SEED,
    chat_reply_right,
    heldout_chat_examples,
    heldout_examples,
    parse_tool_calls,
    score,
    score_chat,
    transformers_generator,
)
from sglbench.default_model.tokenizer import CHAT_TEMPLATE

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 17 + 25?"},
    {"role": "assistant", "content": "17 + 25 = 42."},
    {"role": "user", "content": "Where does Alice live?"},
]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(default_model_path())


@pytest.fixture(scope="module")
def model():
    return AutoModelForCausalLM.from_pretrained(default_model_path()).eval()


def test_import_is_light():
    code = "import sys, sglbench.default_model; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_checkpoint_files_and_size():
    names = {p.name for p in DEFAULT_MODEL_PATH.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= names
    assert sum(p.stat().st_size for p in DEFAULT_MODEL_PATH.iterdir()) <= 20 * 1024 * 1024


def test_loads_as_llama_with_both_stop_tokens(model, tokenizer):
    cfg = json.loads((DEFAULT_MODEL_PATH / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["num_key_value_heads"] < cfg["num_attention_heads"]
    assert cfg["max_position_embeddings"] >= 2048
    stops = tokenizer.convert_tokens_to_ids(["</s>", "<|end|>"])
    gen = json.loads((DEFAULT_MODEL_PATH / "generation_config.json").read_text())
    assert cfg["eos_token_id"] == gen["eos_token_id"] == stops
    assert tokenizer.bos_token == "<s>" and tokenizer.eos_token == "</s>" and tokenizer.pad_token == "<pad>"
    assert model.config.vocab_size >= len(tokenizer)


def test_chat_template_round_trip(tokenizer):
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text == render_chat(MESSAGES) + "<|assistant|>\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    for marker in ("<s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"):
        marker_id = tokenizer.convert_tokens_to_ids(marker)
        assert tokenizer(marker, add_special_tokens=False)["input_ids"] == [marker_id]
    assert ids.count(tokenizer.convert_tokens_to_ids("<|user|>")) == 2


# The template before tools and thinking: every conversation without them must still render exactly like this.
PLAIN_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
CALC = TOOLS["calculator"]
WEATHER = TOOLS["get_weather"]
TOOL_CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 17 * 3 and the weather in Plimsk?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "calculator", "arguments": {"expression": "17 * 3"}}},
        {"id": "b", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Plimsk"}'}},
    ]},
    {"role": "tool", "tool_call_id": "a", "content": "51"},
    {"role": "tool", "tool_call_id": "b", "content": '{"condition": "sunny"}'},
    {"role": "assistant", "content": "17 * 3 = 51. It is sunny."},
    {"role": "user", "content": "Thanks"},
]


def render(tokenizer, messages, **kwargs) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


def test_checkpoint_carries_the_chat_template(tokenizer):
    assert tokenizer.chat_template == CHAT_TEMPLATE
    config = json.loads((DEFAULT_MODEL_PATH / "tokenizer_config.json").read_text())
    assert config["chat_template"] == CHAT_TEMPLATE


@pytest.mark.parametrize("generation_prompt", [False, True])
def test_chat_template_without_tools_renders_as_before(tokenizer, generation_prompt):
    conversations = [MESSAGES, MESSAGES[1:], MESSAGES[:3], [{"role": "user", "content": "Hi"}]]
    for messages in conversations:
        new = render(tokenizer, messages, add_generation_prompt=generation_prompt)
        assert new == render(tokenizer, messages, add_generation_prompt=generation_prompt, enable_thinking=False)
        assert new == tokenizer.apply_chat_template(messages, chat_template=PLAIN_TEMPLATE, tokenize=False,
                                                    add_generation_prompt=generation_prompt)
        assert new == render_chat(messages, add_generation_prompt=generation_prompt)


def test_chat_template_tools_system_turn(tokenizer):
    text = render(tokenizer, TOOL_CHAT[:2], tools=[CALC, WEATHER])
    tools_block = f"<tools>\n{json.dumps(CALC)}\n{json.dumps(WEATHER)}\n</tools>\n"
    assert text.startswith("<s><|system|>\nBe brief.\n\n# Tools\n" + tools_block + "To call a tool, answer with "
                           '<tool_call>\n{"name": <tool name>, "arguments": <arguments as JSON>}\n</tool_call><|end|>\n'
                           "<|user|>\nWhat is 17 * 3")
    assert text.count("<|system|>") == 1 and text.count("Be brief.") == 1
    no_system = render(tokenizer, TOOL_CHAT[1:2], tools=[CALC])
    assert no_system.startswith(f"<s><|system|>\n# Tools\n<tools>\n{json.dumps(CALC)}\n</tools>\n")
    unicode_tool = {**CALC, "function": {**CALC["function"], "description": "Rechnet: 3 × 4 → 12"}}
    assert "Rechnet: 3 × 4 → 12" in render(tokenizer, TOOL_CHAT[1:2], tools=[unicode_tool])  # tojson keeps non-ASCII


def test_chat_template_tool_calls_and_responses(tokenizer):
    text = render(tokenizer, TOOL_CHAT, tools=[CALC, WEATHER], add_generation_prompt=True)
    assert ("<|user|>\nWhat is 17 * 3 and the weather in Plimsk?<|end|>\n<|assistant|>\n"
            '<tool_call>\n{"name": "calculator", "arguments": {"expression": "17 * 3"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Plimsk"}}\n</tool_call><|end|>\n'
            "<|user|>\n<tool_response>\n51\n</tool_response>\n"
            '<tool_response>\n{"condition": "sunny"}\n</tool_response><|end|>\n'
            "<|assistant|>\n17 * 3 = 51. It is sunny.<|end|>\n<|user|>\nThanks<|end|>\n<|assistant|>\n") in text
    assert text.endswith("<|assistant|>\n")
    with_content = [{"role": "assistant", "content": "Let me check.", "tool_calls": TOOL_CHAT[2]["tool_calls"][:1]}]
    assert render(tokenizer, with_content) == (
        '<s><|assistant|>\nLet me check.\n<tool_call>\n{"name": "calculator", "arguments": {"expression": '
        '"17 * 3"}}\n</tool_call><|end|>\n')
    separate = [TOOL_CHAT[3], {"role": "user", "content": "x"}, TOOL_CHAT[4]]
    assert render(tokenizer, separate).count("<|user|>\n<tool_response>") == 2


def test_chat_template_thinking_generation_prompt(tokenizer):
    assert render(tokenizer, MESSAGES, add_generation_prompt=True, enable_thinking=True).endswith(
        "<|end|>\n<|assistant|>\n<think>\n")
    assert render(tokenizer, MESSAGES, add_generation_prompt=False, enable_thinking=True) == render_chat(MESSAGES)
    assert render_chat(MESSAGES, add_generation_prompt=True, enable_thinking=True).endswith("<|assistant|>\n<think>\n")


def test_render_chat_equals_the_template_on_sampled_chats(tokenizer):
    rng, world = random.Random(11), build_world()
    for _ in range(40):
        messages, tools = tool_chat(rng, world)
        assert render(tokenizer, messages, tools=tools) == render_chat(messages, tools)
        cut = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        for thinking in (False, True):
            assert render(tokenizer, messages[:cut], tools=tools, add_generation_prompt=True,
                          enable_thinking=thinking) == render_chat(messages[:cut], tools, add_generation_prompt=True,
                                                                   enable_thinking=thinking)
        messages = thinking_chat(rng, world)
        assert render(tokenizer, messages) == render_chat(messages)
        assert messages[-1]["content"].startswith("<think>\n") and "\n</think>\n\n" in messages[-1]["content"]
        assert render(tokenizer, messages[:-1], add_generation_prompt=True, enable_thinking=True) + \
            messages[-1]["content"].removeprefix("<think>\n") + "<|end|>\n" == render_chat(messages)


def test_think_opening_is_never_a_training_target(tokenizer):
    """The `<think>\\n` after `<|assistant|>\\n` is written by the generation prompt, so it is context only."""
    import torch

    from sglbench.default_model.train import training_labels

    rng, world = random.Random(0), build_world()
    text = render_chat(thinking_chat(rng, world)) + render_chat(tool_chat(rng, world)[0])
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
    labels = training_labels(ids, tokenizer)
    assert tokenizer.decode(ids[labels == -100]) == "<think>\n"
    assert (labels[labels != -100] == ids[labels != -100]).all()


def test_tool_chat_documents():
    rng, world = random.Random(5), build_world()
    chats = [tool_chat(rng, world) for _ in range(200)]
    for messages, tools in chats:
        offered = {t["function"]["name"] for t in tools}
        for i, message in enumerate(messages):
            for call in message.get("tool_calls") or []:
                name, arguments = call["function"]["name"], call["function"]["arguments"]
                assert name in offered
                results = [m["content"] for m in messages[i + 1:] if m["role"] == "tool"]
                assert run_tool(name, arguments, day=0) in results or name == "get_weather"
    calls = [len(m["tool_calls"]) for messages, _ in chats for m in messages if m.get("tool_calls")]
    assert 1 in calls and 2 in calls  # single and parallel calls
    assert any(len([m for m in messages if m["role"] == "user"]) > 1 for messages, _ in chats)  # multi-turn
    assert any(not any(m.get("tool_calls") for m in messages) for messages, _ in chats)  # tools offered, none needed
    for kinds in (DOCUMENT_KINDS, ANNEAL_KINDS, FINETUNE_KINDS):
        assert {doc_tool_chat, doc_thinking} <= {maker for maker, _ in kinds}


def test_tools_are_deterministic():
    assert calculate("17 * 3") == calculate("17 x 3") == "51" and calculate("2 +") == "error"
    assert weather("Plimsk", 3) == weather("Plimsk", 3)
    assert len({json.dumps(weather("Plimsk", day)) for day in range(20)}) > 1
    person = build_world().people[0]
    assert json.loads(run_tool("lookup_person", {"name": person.name}))["city"] == person.city
    assert "error" in json.loads(run_tool("lookup_person", {"name": "Nobody"}))


def test_chat_scoring():
    examples = heldout_chat_examples(HELDOUT_SEED, 3)
    assert {e.task for e in examples} == {"tool_call", "tool_answer", "thinking", "chat"}
    assert examples[0].prompt.startswith("<|") and examples[0].prompt.endswith("<|assistant|>\n")
    assert examples == heldout_chat_examples(HELDOUT_SEED, 3) and examples != heldout_chat_examples(TRAIN_SEED, 3)

    def perfect(e):
        if e.task == "tool_call":
            return f"<tool_call>\n{e.expected[0]}\n</tool_call>"
        text = " ".join(e.expected)
        return f"I think.\n</think>\n\n{text}" if e.task == "thinking" else text

    assert all(v == 1.0 for v in score_chat(examples, lambda prompts: [perfect(e) for e in examples]).values())
    assert all(v == 0.0 for v in score_chat(examples, lambda prompts: ["<think>\n"] * len(prompts)).values())
    wrong_content = score_chat(examples, lambda prompts: [
        perfect(e).replace('"arguments": {"', '"arguments": {"x').replace('": "', '": "Nobody ')
        if e.task == "tool_call" else "Hmm.\n</think>\n\nNo idea." for e in examples])
    assert wrong_content["tool_call"] == 0.0 and wrong_content["tool_call_format"] == 0.0
    assert wrong_content["thinking"] == 0.0 and wrong_content["thinking_format"] == 1.0
    only_values_wrong = score_chat(examples, lambda prompts: [
        perfect(e).replace('"}}', 'x"}}') for e in examples])
    assert only_values_wrong["tool_call"] == 0.0 and only_values_wrong["tool_call_format"] == 1.0
    call = '<tool_call>\n{"name": "f", "arguments": {"a": "1"}}\n</tool_call>'
    assert parse_tool_calls(call) == [{"name": "f", "arguments": {"a": "1"}}]
    assert parse_tool_calls(call + "\n" + call) == [{"name": "f", "arguments": {"a": "1"}}] * 2
    assert parse_tool_calls("Sure. " + call) is None and parse_tool_calls(call[:-3]) is None
    assert not chat_reply_right(examples[0], call)


def test_numbers_below_100_are_single_tokens(tokenizer):
    """So a small sum is a lookup of one token; longer numbers come in pieces of two digits, and the space
    before a number is a token of its own."""
    for n in range(100):
        assert len(tokenizer(str(n), add_special_tokens=False)["input_ids"]) == 1, n
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("A: 1234", add_special_tokens=False)["input_ids"])
    assert [tokenizer.convert_tokens_to_string([t]) for t in tokens[-3:]] == [" ", "12", "34"]


def test_names_read_the_same_in_a_sentence_and_in_json(tokenizer):
    """A capitalised word never carries the space before it, so copying a name or city from a question into a
    tool call's JSON arguments is a copy of the same tokens."""
    def pieces(text: str, word: str) -> list[str]:
        tokens = tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])
        strings = [tokenizer.convert_tokens_to_string([t]) for t in tokens]
        for start in range(len(strings)):
            for end in range(start + 1, len(strings) + 1):
                if "".join(strings[start:end]) == word:
                    return tokens[start:end]
        raise AssertionError(f"{word!r} is not a run of whole tokens in {strings}")

    for word in ("Ana Brolk", "Zorvik", "Shathval"):
        assert pieces(f"Where does {word} live?", word) == pieces(f'{{"name": "{word}"}}', word) \
            == pieces(f"{word} lives here.", word)


def test_heldout_greedy_accuracy(model, tokenizer):
    """The issue's bar: 90 % on held-out few-shot Q/A, arithmetic and True/False/Unknown judgements (each task
    on its own). Reading comprehension of unseen text is reported, not required."""
    accuracy = score(heldout_examples(HELDOUT_SEED, 25), transformers_generator(model, tokenizer, max_new_tokens=8))
    print("held-out accuracy:", accuracy)
    assert set(accuracy) == {"qa", "arithmetic", "judgement", "reading"}
    assert min(accuracy["qa"], accuracy["arithmetic"], accuracy["judgement"]) >= 0.9, accuracy


def test_heldout_chat_forms(model, tokenizer):
    """Greedy on held-out chats: with tools offered, the reply is one well-formed call of the right tool with the
    right argument names; with `<think>` opened, a trace closed by `</think>` and an answer; a plain chat reply
    carries neither. (Whether arguments and answers are copied right is printed, not required: see heldout.py.)"""
    examples = heldout_chat_examples(HELDOUT_SEED, 8)
    accuracy = score_chat(examples, transformers_generator(model, tokenizer, max_new_tokens=CHAT_MAX_NEW_TOKENS))
    print("held-out chat accuracy:", accuracy)
    assert accuracy["tool_call_format"] >= 0.9 and accuracy["thinking_format"] >= 0.9, accuracy
    replies = transformers_generator(model, tokenizer, max_new_tokens=24)(
        [e.prompt for e in examples if e.task == "chat"])
    assert not any("<tool_call>" in r or "<think>" in r for r in replies), replies


def test_runtime_logits_equal_transformers(model, tokenizer):
    """sglbench's own runner on the default model: fp32 logits within 1e-4 of transformers."""
    import torch

    from sglbench.runtime.runtime import Runtime

    prompt = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    with Runtime(device="cpu") as rt:
        out = rt.generate(ids, max_new_tokens=8, temperature=0, return_logprob=True, logprob_start_len=1)
    ours = torch.tensor([lp for lp, _ in out["meta_info"]["input_token_logprobs"]])
    expected = ref[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    assert (ours - expected).abs().max().item() < 1e-4
    with torch.no_grad():
        greedy = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids):].tolist()
    assert out["output_ids"] == greedy[: len(out["output_ids"])]


def test_long_context_is_not_garbage(model, tokenizer):
    """Questions after ~1,800 tokens of few-shot Q/A are still answered from the facts."""
    examples = [e for e in heldout_examples(HELDOUT_SEED + 1, 200) if e.task == "qa"]
    shots = "".join(e.prompt.rsplit("Q:", 1)[0] for e in examples[5:])
    context = tokenizer.decode(tokenizer(shots, add_special_tokens=False)["input_ids"][:1800])
    context = context.rsplit("\n\n", 1)[0] + "\n\n"
    prompts = [context + e.prompt.rsplit("\n\n", 1)[-1] for e in examples[:5]]
    assert min(len(tokenizer(p)["input_ids"]) for p in prompts) > 1500
    completions = transformers_generator(model, tokenizer)(prompts)
    assert sum(c.split()[:1] == [e.answer] for c, e in zip(completions, examples)) >= 4, completions


def test_corpus_is_deterministic():
    assert generate_documents(3, 50) == generate_documents(3, 50)
    assert generate_documents(3, 50) != generate_documents(4, 50)
    assert all(doc.startswith("<s>") for doc in generate_documents(TRAIN_SEED, 50))


def test_heldout_examples_are_deterministic_and_unseen_seed():
    assert HELDOUT_SEED != TRAIN_SEED
    examples = heldout_examples(HELDOUT_SEED, 15)
    assert examples == heldout_examples(HELDOUT_SEED, 15) and len(examples) >= 50
    assert examples != heldout_examples(HELDOUT_SEED + 1, 15)


def test_score_reads_first_word():
    examples = heldout_examples(HELDOUT_SEED, 1)
    perfect = score(examples, lambda prompts: [f" {e.answer}\n\nQ: more" for e in examples])
    assert all(v == 1.0 for v in perfect.values())
    assert all(v == 0.0 for v in score(examples, lambda prompts: ["\n"] * len(prompts)).values())

