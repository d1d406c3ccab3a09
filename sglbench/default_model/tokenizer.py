"""Byte-level BPE tokenizer for the default model, with numbers cut into pieces of at most two digits, and chat
role markers.

Saved as a standard Hugging Face tokenizer folder (tokenizer.json + tokenizer_config.json with a chat template),
so `transformers.AutoTokenizer.from_pretrained` loads it and `apply_chat_template` works.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from sglbench.default_model.corpus import BOS, END, EOS, PAD, ROLES, TOOL_INSTRUCTIONS

ROLE_MARKERS = tuple(f"<|{role}|>" for role in ROLES)
SPECIAL_TOKENS = (BOS, EOS, PAD, *ROLE_MARKERS, END)  # ids 0..6 in this order
STOP_TOKENS = (EOS, END)  # generation ends at either


def _jinja_string(text: str) -> str:
    """text as a single-quoted Jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


# Hermes/Qwen2.5-style tools and reasoning on top of the plain role blocks (which render exactly as before when
# there are no tools, tool calls, tool messages or enable_thinking): the tools go into a leading system turn
# (merged with the first system message), an assistant's tool calls follow its content as
# `<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>` lines, consecutive tool results form one user
# turn of `<tool_response>` blocks, and `enable_thinking` opens `<think>\n` after the generation prompt.
# corpus.render_chat is the same function in Python; tests check that both agree.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- set ns = namespace(first=0) %}"
    "{%- if tools %}"
    "{{- '<|system|>\\n' }}"
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{{- messages[0]['content'] + '\\n\\n' }}{%- set ns.first = 1 %}"
    "{%- endif %}"
    "{{- '# Tools\\n<tools>\\n' }}"
    "{%- for tool in tools %}{{- tool | tojson }}{{- '\\n' }}{%- endfor %}"
    "{{- '</tools>\\n' + " + _jinja_string(TOOL_INSTRUCTIONS) + " + '<|end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages[ns.first:] %}"
    "{%- if message['role'] == 'tool' %}"
    "{%- if loop.first or loop.previtem['role'] != 'tool' %}{{- '<|user|>\\n' }}{%- else %}{{- '\\n' }}{%- endif %}"
    "{{- '<tool_response>\\n' + message['content'] + '\\n</tool_response>' }}"
    "{%- if loop.last or loop.nextitem['role'] != 'tool' %}{{- '<|end|>\\n' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' and message['tool_calls'] is defined and message['tool_calls'] %}"
    "{{- '<|assistant|>\\n' }}"
    "{%- if message['content'] %}{{- message['content'] + '\\n' }}{%- endif %}"
    "{%- for call in message['tool_calls'] %}"
    "{%- set fn = call['function'] if call['function'] is defined else call %}"
    "{%- if not loop.first %}{{- '\\n' }}{%- endif %}"
    "{{- '<tool_call>\\n{\"name\": ' + (fn['name'] | tojson) + ', \"arguments\": ' }}"
    "{%- if fn['arguments'] is string %}{{- fn['arguments'] }}{%- else %}{{- fn['arguments'] | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|end|>\\n' }}"
    "{%- else %}"
    "{{- '<|' + message['role'] + '|>\\n' + (message['content'] if message['content'] is string else '')"
    " + '<|end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking %}{{- '<think>\\n' }}{%- endif %}"
    "{%- endif %}"
)
_SPECIAL_RE = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))


def build_tokenizer_model() -> Tokenizer:
    """An untrained byte-level BPE pipeline: numbers in pieces of up to two digits, never joined to the space
    before them (as in Llama 3), so every number below 100 can become one token, small sums are a lookup and
    `"A: " + gen_int()` continues the way the training text does; GPT-2 style word splitting, except that a
    capitalised word never carries the space before it, so a name or city reads as the same tokens in a sentence,
    after a quote in JSON or at a line start, and copying it into a tool call's arguments is a plain token copy
    (about 11 % more tokens than GPT-2 splitting on the corpus).
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\d{1,2}"), behavior="isolated"),
        pre_tokenizers.Split(Regex(r" (?=\p{Lu})"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """Train BPE on texts (special-token strings inside them are ignored) and wrap it for transformers."""
    tok = build_tokenizer_model()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator((_SPECIAL_RE.sub("", t) for t in texts), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))],
    )
    return wrap_tokenizer(tok)


def wrap_tokenizer(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """A trained tokenizers pipeline as the transformers tokenizer we ship, with the current chat template."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=[*ROLE_MARKERS, END], chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False, padding_side="left", model_max_length=2048,
    )


def load_tokenizer(folder: str | Path) -> PreTrainedTokenizerFast:
    """A saved tokenizer's vocabulary and pipeline (tokenizer.json), wrapped as when it was trained: same
    special tokens and settings, the current chat template."""
    return wrap_tokenizer(Tokenizer.from_file(str(Path(folder) / "tokenizer.json")))


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out: str | Path) -> None:
    """Save with the chat template inside tokenizer_config.json, readable by transformers 4.x and 5.x; the
    pipeline's padding is always saved as left padding with the pad token, whatever the last call used."""
    tokenizer.backend_tokenizer.enable_padding(direction="left", pad_id=tokenizer.pad_token_id, pad_token=PAD)
    tokenizer.save_pretrained(str(out), save_jinja_files=False)
    config_path = Path(out) / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key, default in (("max_length", None), ("pad_to_multiple_of", None), ("pad_token_type_id", 0)):
        if config.get(key, default) == default:  # padding defaults a reloaded tokenizer writes out: keep it stable
            config.pop(key, None)
    config["additional_special_tokens"] = [*ROLE_MARKERS, END]
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def update_chat_template(folder: str | Path) -> None:
    """Rewrite a saved tokenizer with the current chat template, vocabulary and settings unchanged (a template
    change needs no retraining)."""
    save_tokenizer(load_tokenizer(folder), folder)
