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

from sglbench.default_model.corpus import BOS, END, EOS, PAD, ROLES

ROLE_MARKERS = tuple(f"<|{role}|>" for role in ROLES)
SPECIAL_TOKENS = (BOS, EOS, PAD, *ROLE_MARKERS, END)  # ids 0..6 in this order
STOP_TOKENS = (EOS, END)  # generation ends at either
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
_SPECIAL_RE = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))


def build_tokenizer_model() -> Tokenizer:
    """An untrained byte-level BPE pipeline: numbers in pieces of up to two digits, never joined to the space
    before them (as in Llama 3), so every number below 100 can become one token, small sums are a lookup and
    `"A: " + gen_int()` continues the way the training text does; GPT-2 style word splitting.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\d{1,2}"), behavior="isolated"),
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
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=[*ROLE_MARKERS, END], chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False, padding_side="left", model_max_length=2048,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out: str | Path) -> None:
    """Save with the chat template inside tokenizer_config.json, readable by transformers 4.x and 5.x."""
    tokenizer.save_pretrained(str(out), save_jinja_files=False)
    config_path = Path(out) / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["additional_special_tokens"] = [*ROLE_MARKERS, END]
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
