"""Random-weight checkpoints of each supported family, written as Hugging Face folders.

Used by the tests (logit parity against `transformers`) and by timing presets, where speed does
not depend on weight values. Nothing is downloaded: the tokenizer is trained here on a few lines.
"""

from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = ("llama", "llama3", "mistral", "qwen2", "qwen3")

_TOKENIZER_TEXT = [
    "The quick brown fox jumps over the lazy dog. Q: What is 2 + 2? A: 4",
    "def main():\n    print('hello world')\n",
    "Structured generation programs fork, join and select among choices.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 {\"name\": \"Alice\", \"age\": 31}",
] * 20

# Same layout as the embedded default model's template: <|role|>\n content <|end|>\n per message.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# Real model shapes for timing runs (random weights, labelled timing-only wherever reported).
PRESETS: dict[str, dict] = {
    "llama-1b": dict(family="llama3", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192),
    "llama-8b": dict(family="llama3", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192),
    "qwen2-7b": dict(family="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, max_position_embeddings=8192),
    # The small checkpoints users bring to a laptop or CPU box (shapes from their published config.json).
    "qwen2.5-0.5b": dict(family="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                         max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6),
    "qwen2.5-1.5b": dict(family="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                         max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6),
    "llama-3.2-1b": dict(family="llama3", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
                         max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         rope_theta=500000.0,
                         rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
}


def write_tokenizer(out_dir: str | Path, vocab_size: int = 400) -> None:
    """A small byte-level BPE with <s>/</s>/<pad>, saved so AutoTokenizer loads it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_TOKENIZER_TEXT, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))


def tiny_config(family: str, vocab_size: int = 400, **overrides):
    """A transformers config of the family with tiny dimensions (GQA on)."""
    import transformers

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    base = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                initializer_range=0.05, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    if family == "llama3":
        base["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
        base["rope_theta"] = 500000.0
    if family == "qwen2":
        base["tie_word_embeddings"] = True
    if family == "qwen3":
        base["head_dim"] = 32
    base.update(overrides)
    cls = {"llama": transformers.LlamaConfig, "llama3": transformers.LlamaConfig,
           "mistral": transformers.MistralConfig, "qwen2": transformers.Qwen2Config,
           "qwen3": transformers.Qwen3Config}[family]
    return cls(**base)


def make_random_checkpoint(out_dir: str | Path, family: str = "llama", seed: int = 0,
                           dtype: torch.dtype = torch.float32, **overrides) -> Path:
    """Write config.json, model.safetensors and a tokenizer for a random model of the family."""
    import transformers

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_tokenizer(out, vocab_size=min(overrides.get("vocab_size", 400), 400))
    config = tiny_config(family, **overrides)
    torch.manual_seed(seed)
    large = config.hidden_size >= 1024 or config.hidden_size * config.vocab_size >= 2**24
    with torch.device("meta" if large else "cpu"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    if large:  # real-shape presets: fill cheaply in the target dtype, values do not matter for timing
        model = model.to_empty(device="cpu").to(dtype)
        model.tie_weights()  # to_empty gives tied parameters separate storage; tie them again
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.02, generator=gen)
    model.to(dtype).save_pretrained(str(out), safe_serialization=True)
    return out


def make_preset_checkpoint(out_dir: str | Path, preset: str, dtype: torch.dtype = torch.bfloat16,
                           **overrides) -> Path:
    """A real model shape with random weights, for timing only, saved in dtype (bf16 by default, as the real
    checkpoints are). overrides change config fields, e.g. to scale a preset down for a quick run."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    spec = {**PRESETS[preset], **overrides}
    family = spec.pop("family")
    return make_random_checkpoint(out_dir, family=family, dtype=dtype, initializer_range=0.02, **spec)
