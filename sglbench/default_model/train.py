"""Train the embedded default model on the synthetic corpus, on a CPU, in under an hour.

    python -m sglbench.default_model.train [--out DIR] [--seed N] [--minutes M] [--steps S] [--lr LR]
                                           [--init-from DIR] [--no-compile]

From scratch (the default): tokenizer, data order and initialisation all follow --seed; the main mixture
(corpus.DOCUMENT_KINDS) includes every kind of document, tool-use and thinking chats among them. Training runs
--steps steps; on a slow (shared) machine the --minutes budget ends it earlier, with the learning-rate schedule
compressed to fit (then the weights depend on timing). The learning-rate cool-down trains on a mixture weighted
towards the held-out tasks (corpus.ANNEAL_KINDS).

Fine-tuning (--init-from DIR): weights and tokenizer (vocabulary unchanged; `<tool_call>` and `<think>` are plain
text pieces) come from DIR, the tokenizer gets the current chat template, and training runs a short warm-up, a
lower peak learning rate (2e-3 unless --lr) and the same cool-down, all on corpus.FINETUNE_KINDS (the cool-down
mixture with tool-use, thinking, plain chats and ReAct traces weighted up); in chats only the assistant's turns
are targets.

The shipped checkpoint came from two runs on two CPU cores shared with other jobs (so the time budget, not
--steps, ended both, and their weights depend on timing):

    python -m sglbench.default_model.train --out /tmp/dm_new --minutes 45     # 2,785 steps in 43 minutes
    python -m sglbench.default_model.train --init-from /tmp/dm_new --out /tmp/dm_ft \
        --minutes 16 --steps 700 --lr 1e-3                                     # 242 steps in 14 minutes

Held-out (heldout.py, 25 per task) after the first: Q/A 100 %, arithmetic 100 %, judgements 92 %, reading 4 %,
well-formed calls of the right tool 100 %, exactly right calls 40 %, right answers after tool results 16 %,
closed `<think>` traces 92 % (right answers 72 %), plain chat 96 %; after the fine-tune: 100 / 100 / 96 / 0 %,
calls 100 % well-formed and 72 % exactly right, answers after tool results 20 %, traces 92 % (76 % right),
plain chat 84 %. Earlier fine-tunes of a checkpoint whose tokenizer glued a space to the word after it (so a
name read differently in the question and in the call's JSON) learnt the forms but copied 0-8 % of the calls.

Writes a standard Hugging Face Llama folder and prints held-out accuracy (heldout.py: few-shot tasks and chats).
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
    END,
    FINETUNE_KINDS,
    THINK_OPEN,
    Mixture,
    generate_documents,
    iter_documents,
)
from sglbench.default_model.heldout import (
    CHAT_MAX_NEW_TOKENS,
    heldout_chat_examples,
    heldout_examples,
    score,
    score_chat,
    transformers_generator,
)
from sglbench.default_model.tokenizer import STOP_TOKENS, load_tokenizer, save_tokenizer, train_tokenizer

SCRATCH_LR, FINETUNE_LR = 3e-3, 2e-3


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
    lr: float = SCRATCH_LR
    init_from: Path | None = None  # fine-tune the checkpoint in this folder instead of training from scratch
    min_lr_ratio: float = 0.05
    warmup_steps: int = 20
    decay_fraction: float = 0.35  # linear cool-down (on the anneal mixture) over this final fraction of training
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    vocab_size: int = 4096
    tokenizer_docs: int = 20_000
    reserve_s: float = 120.0  # kept for evaluation and saving
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
    parser.add_argument("--lr", type=float, default=None,
                        help=f"peak learning rate (default {SCRATCH_LR:g}, or {FINETUNE_LR:g} with --init-from)")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="fine-tune this checkpoint folder (weights and tokenizer) on corpus.FINETUNE_KINDS")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="run the model eagerly")
    args = parser.parse_args()
    lr = args.lr if args.lr is not None else FINETUNE_LR if args.init_from else SCRATCH_LR
    return TrainConfig(out=args.out, seed=args.seed, minutes=args.minutes, steps=args.steps, lr=lr,
                       init_from=args.init_from, eval_every=args.eval_every, compile=args.compile)


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


def training_labels(ids: torch.Tensor, tokenizer: PreTrainedTokenizerFast, assistant_only: bool = False
                    ) -> torch.Tensor:
    """The targets for a packed stream: the tokens themselves, except (-100, ignored by the loss)
    - the `<think>\\n` that opens an assistant turn: only the generation prompt writes it (enable_thinking), so
      it is context, never a target, and the model reasons when the prompt opens `<think>` and never unasked;
    - with assistant_only, every system and user turn of the chats (markers, content, tool results, `<|end|>`):
      what a user or a tool says is random and unlearnable; the gradient goes to the replies (as in SFT).
    """
    labels = ids.clone()
    if assistant_only:
        system, user = tokenizer.convert_tokens_to_ids(["<|system|>", "<|user|>"])
        opens = (ids == system) | (ids == user)
        closes = ids == tokenizer.convert_tokens_to_ids(END)
        events = opens | closes
        event_is_open = opens[events]  # [events]
        last = torch.cumsum(events.long(), 0) - 1  # index of the last open/close at or before each position
        inside = (last >= 0) & event_is_open[last.clamp(min=0)]  # in a system/user turn (from its marker on)
        previous = (last - 1).clamp(min=0)
        closing = closes & (last >= 1) & event_is_open[previous]  # the <|end|> of a system/user turn
        labels[inside | closing] = -100
    prompt = tokenizer("<|assistant|>\n", add_special_tokens=False)["input_ids"]
    think = tokenizer("<|assistant|>\n" + THINK_OPEN, add_special_tokens=False)["input_ids"]
    assert think[:len(prompt)] == prompt, "the think tag must start a token of its own"
    starts = (ids.unfold(0, len(think), 1) == torch.tensor(think)).all(dim=1).nonzero().flatten()  # [matches]
    for offset in range(len(prompt), len(think)):
        labels[starts + offset] = -100
    return labels


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


Stream = tuple[torch.Tensor, torch.Tensor]  # packed token ids and their training labels


def train(cfg: TrainConfig, model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, data: Stream,
          anneal_data: Stream, deadline: float) -> dict[str, float]:
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
        if cursor + rows * length > len(source[0]):
            cursor = 0
        batch, labels = (t[cursor:cursor + rows * length].view(rows, length) for t in source)
        cursor += rows * length
        lr = learning_rate(cfg, step, progress)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = forward(input_ids=batch, labels=labels).loss
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
    """Held-out accuracy per task: the few-shot tasks, then the chat tasks (tool calls, thinking, plain chat)."""
    model.eval()
    few_shot = score(heldout_examples(), transformers_generator(model, tokenizer))
    chats = score_chat(heldout_chat_examples(),
                       transformers_generator(model, tokenizer, max_new_tokens=CHAT_MAX_NEW_TOKENS))
    return {**few_shot, **chats}


def load_for_finetuning(folder: Path) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A trained checkpoint's fp32 weights and tokenizer, the tokenizer given the current chat template."""
    tokenizer = load_tokenizer(folder)
    model = LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    return model, tokenizer


def main() -> None:
    cfg = parse_args()
    t0 = time.time()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    if cfg.init_from is not None:
        model, tokenizer = load_for_finetuning(cfg.init_from)
        main_kinds, anneal_kinds, assistant_only = FINETUNE_KINDS, FINETUNE_KINDS, True
    else:
        tokenizer = train_tokenizer(generate_documents(cfg.seed + 1, cfg.tokenizer_docs), cfg.vocab_size)
        model = build_model(ModelShape(), tokenizer, cfg.vocab_size)
        main_kinds, anneal_kinds, assistant_only = DOCUMENT_KINDS, ANNEAL_KINDS, False
    switch = math.ceil(cfg.steps * (1.0 - cfg.decay_fraction) - 1e-9)  # the cool-down's first step (as in train)
    n_main = sum(math.prod(step_shape(cfg, s)) for s in range(switch))
    n_anneal = sum(math.prod(step_shape(cfg, s)) for s in range(switch, cfg.steps))
    ids = token_stream(tokenizer, cfg.seed, n_main, main_kinds)
    data = ids, training_labels(ids, tokenizer, assistant_only)
    ids = token_stream(tokenizer, cfg.seed + 2, n_anneal, anneal_kinds)
    anneal_data = ids, training_labels(ids, tokenizer, assistant_only)
    n_tokens = n_main + n_anneal
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
