"""Train the embedded default model on the synthetic corpus, on a CPU, in well under half an hour.

    python -m sglbench.default_model.train [--out DIR] [--seed N] [--minutes M] [--steps S]

Tokenizer, data order and initialisation all follow --seed. Training runs --steps steps; on a slow (shared)
machine the --minutes budget ends it earlier, with the learning-rate schedule compressed to fit (then the
weights depend on timing). The learning-rate cool-down trains on a mixture weighted towards the held-out tasks
(corpus.ANNEAL_KINDS). Writes a standard Hugging Face Llama folder and prints held-out accuracy.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from sglbench.default_model import DEFAULT_MODEL_PATH
from sglbench.default_model.corpus import (
    ANNEAL_KINDS,
    DOCUMENT_KINDS,
    Mixture,
    generate_documents,
    iter_documents,
)
from sglbench.default_model.heldout import heldout_examples, score, transformers_generator
from sglbench.default_model.tokenizer import STOP_TOKENS, save_tokenizer, train_tokenizer


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    intermediate_size: int = 704
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0


@dataclass(frozen=True)
class TrainConfig:
    out: Path = DEFAULT_MODEL_PATH
    seed: int = 0
    minutes: float = 28.0  # wall-clock budget of the whole run
    steps: int = 3000
    short_len: int = 512  # most steps: short_rows x short_len tokens
    short_rows: int = 8
    long_len: int = 2048  # every long_every-th step: long_rows x long_len tokens
    long_rows: int = 2
    long_every: int = 6
    lr: float = 3e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 20
    decay_fraction: float = 0.35  # linear cool-down (on the anneal mixture) over this final fraction of training
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    vocab_size: int = 4096
    tokenizer_docs: int = 20_000
    reserve_s: float = 90.0  # kept for evaluation and saving
    log_every: int = 10
    eval_every: int = 0  # print held-out accuracy every this many steps (0: only at the end)
    threads: int = 2
    compile: bool = True  # torch.compile the model (about 1.5x faster on CPU after a minute or two of compiling)


def parse_args() -> TrainConfig:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TrainConfig()
    parser.add_argument("--out", type=Path, default=defaults.out)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--minutes", type=float, default=defaults.minutes)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every)
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="run the model eagerly")
    args = parser.parse_args()
    return TrainConfig(out=args.out, seed=args.seed, minutes=args.minutes, steps=args.steps,
                       eval_every=args.eval_every, compile=args.compile)


def step_shape(cfg: TrainConfig, step: int) -> tuple[int, int]:
    """(rows, sequence length) of a step's batch: mostly short rows, regularly a few long ones."""
    if step % cfg.long_every == cfg.long_every - 1:
        return cfg.long_rows, cfg.long_len
    return cfg.short_rows, cfg.short_len


def token_stream(tokenizer: PreTrainedTokenizerFast, seed: int, n_tokens: int,
                 kinds: Mixture = DOCUMENT_KINDS) -> torch.Tensor:
    """The corpus for seed, tokenized and packed (each document ends with eos) into n_tokens tokens."""
    docs: Iterator[str] = iter_documents(seed, kinds)
    chunks: list[int] = []
    while len(chunks) < n_tokens:
        batch = [next(docs) for _ in range(2000)]
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            chunks += [*ids, tokenizer.eos_token_id]
    return torch.tensor(chunks[:n_tokens], dtype=torch.long)


def build_model(shape: ModelShape, tokenizer: PreTrainedTokenizerFast, vocab_size: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab_size, tie_word_embeddings=True, rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=stop_ids(tokenizer), pad_token_id=tokenizer.pad_token_id,
        **asdict(shape),
    )
    return LlamaForCausalLM(config)


def stop_ids(tokenizer: PreTrainedTokenizerFast) -> list[int]:
    return tokenizer.convert_tokens_to_ids(list(STOP_TOKENS))


def learning_rate(cfg: TrainConfig, step: int, progress: float) -> float:
    """Warm-up, constant, then a linear cool-down to min_lr_ratio over the last decay_fraction of progress."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps)
    cool = min(1.0, (1.0 - progress) / cfg.decay_fraction)
    return cfg.lr * warm * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * max(0.0, cool))


def train(cfg: TrainConfig, model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, data: torch.Tensor,
          anneal_data: torch.Tensor, deadline: float) -> dict[str, float]:
    """The training loop; stops after cfg.steps steps or at the deadline, whichever comes first.

    Batches come from data until the cool-down starts, then from anneal_data; each is cycled if time
    compression moves the switch away from the planned step."""
    decay, no_decay = [], []
    for param in model.parameters():
        (no_decay if param.ndim < 2 else decay).append(param)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95),
                                  fused=True)
    forward = torch.compile(model, dynamic=False) if cfg.compile else model
    start, cursor, tokens, step, recent = time.time(), 0, 0, 0, []
    progress, source = 0.0, data
    model.train()
    while progress < 1.0:
        rows, length = step_shape(cfg, step)
        if source is data and progress >= 1.0 - cfg.decay_fraction:
            print(f"step {step:4d}  cool-down: switching to the anneal mixture", flush=True)
            source, cursor = anneal_data, 0
        if cursor + rows * length > len(source):
            cursor = 0
        batch = source[cursor:cursor + rows * length].view(rows, length)
        cursor += rows * length
        lr = learning_rate(cfg, step, progress)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = forward(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step, tokens = step + 1, tokens + batch.numel()
        recent = [*recent, loss.item()][-20:]
        elapsed = time.time() - start
        progress = max(step / cfg.steps, elapsed / max(1.0, deadline - start))
        if step % cfg.log_every == 0 or progress >= 1.0:
            print(f"step {step:4d}  loss {sum(recent) / len(recent):.4f}  lr {lr:.2e}  "
                  f"tok/s {tokens / elapsed:6.0f}  elapsed {elapsed:6.1f}s", flush=True)
        if cfg.eval_every and step % cfg.eval_every == 0 and progress < 1.0:
            print(f"step {step:4d}  held-out accuracy {evaluate(model, tokenizer)}", flush=True)
            model.train()
    return {"final_loss": sum(recent) / len(recent), "steps": step, "tokens": tokens, "train_s": time.time() - start}


def save(cfg: TrainConfig, model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast) -> None:
    """Write the Hugging Face folder: config, generation config, fp32 safetensors, tokenizer."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=stop_ids(tokenizer), pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(str(cfg.out), safe_serialization=True)
    save_tokenizer(tokenizer, cfg.out)


def evaluate(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast) -> dict[str, float]:
    model.eval()
    return score(heldout_examples(), transformers_generator(model, tokenizer))


def main() -> None:
    cfg = parse_args()
    t0 = time.time()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    tokenizer = train_tokenizer(generate_documents(cfg.seed + 1, cfg.tokenizer_docs), cfg.vocab_size)
    switch = math.ceil(cfg.steps * (1.0 - cfg.decay_fraction) - 1e-9)  # the cool-down's first step (as in train)
    n_main = sum(math.prod(step_shape(cfg, s)) for s in range(switch))
    n_anneal = sum(math.prod(step_shape(cfg, s)) for s in range(switch, cfg.steps))
    data = token_stream(tokenizer, cfg.seed, n_main)
    anneal_data = token_stream(tokenizer, cfg.seed + 2, n_anneal, ANNEAL_KINDS)
    n_tokens = n_main + n_anneal
    model = build_model(ModelShape(), tokenizer, cfg.vocab_size)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"tokenizer {len(tokenizer)} tokens, data {n_tokens} tokens, model {n_params / 1e6:.2f} M parameters, "
          f"setup {time.time() - t0:.1f}s", flush=True)
    stats = train(cfg, model, tokenizer, data, anneal_data, deadline=t0 + cfg.minutes * 60 - cfg.reserve_s)
    save(cfg, model, tokenizer)
    accuracy = evaluate(model, tokenizer)
    size_mb = sum(f.stat().st_size for f in cfg.out.iterdir()) / 1e6
    summary = {**stats, "wall_s": time.time() - t0, "checkpoint_mb": size_mb, "heldout_accuracy": accuracy}
    print(json.dumps(summary, indent=2), flush=True)


if __name__ == "__main__":
    main()
