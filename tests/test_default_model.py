"""The embedded default model: checkpoint format, tokenizer and chat template, held-out accuracy, corpus."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from sglbench.default_model import DEFAULT_MODEL_PATH, default_model_path
from sglbench.default_model.corpus import TRAIN_SEED, generate_documents, render_chat
from sglbench.default_model.heldout import HELDOUT_SEED, heldout_examples, score, transformers_generator

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


def test_numbers_below_100_are_single_tokens(tokenizer):
    """So a small sum is a lookup of one token; longer numbers come in pieces of two digits, and the space
    before a number is a token of its own."""
    for n in range(100):
        assert len(tokenizer(str(n), add_special_tokens=False)["input_ids"]) == 1, n
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("A: 1234", add_special_tokens=False)["input_ids"])
    assert [tokenizer.convert_tokens_to_string([t]) for t in tokens[-3:]] == [" ", "12", "34"]


def test_heldout_greedy_accuracy(model, tokenizer):
    """The issue's bar: 90 % on held-out few-shot Q/A, arithmetic and True/False/Unknown judgements (each task
    on its own). Reading comprehension of unseen text is reported, not required."""
    accuracy = score(heldout_examples(HELDOUT_SEED, 25), transformers_generator(model, tokenizer, max_new_tokens=8))
    print("held-out accuracy:", accuracy)
    assert set(accuracy) == {"qa", "arithmetic", "judgement", "reading"}
    assert min(accuracy["qa"], accuracy["arithmetic"], accuracy["judgement"]) >= 0.9, accuracy


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

