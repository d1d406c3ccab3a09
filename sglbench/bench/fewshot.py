"""5-shot-style workload: one long shared prefix of worked examples, many questions, a few new tokens.

Runs the same prompts on the engine with the radix cache on and off, in one call, and prints
programs/s, cache hit rate and prefilled tokens for both. The prefix is built from arithmetic
question/answer lines until it reaches `--prefix-tokens` tokens (as the model's tokenizer counts).
"""

from __future__ import annotations

import argparse
import random
import time

from sglbench.bench.baselines import hf_generate_naive, load_hf
from sglbench.bench.common import add_model_args, print_table, resolve_model


def build_prompts(tokenizer, prefix_tokens: int, num_questions: int, seed: int = 0) -> tuple[str, list[str]]:
    """A shared few-shot prefix of about prefix_tokens tokens and num_questions distinct questions."""
    rng = random.Random(seed)
    lines: list[str] = []
    while len(tokenizer.encode("".join(lines))) < prefix_tokens:
        for _ in range(16):
            a, b = rng.randint(1, 60), rng.randint(1, 60)
            lines.append(f"Q: What is {a} + {b}?\nA: {a + b}\n\n")
    prefix = "".join(lines)
    while len(tokenizer.encode(prefix)) > prefix_tokens and lines:
        lines.pop()
        prefix = "".join(lines)
    questions = []
    for _ in range(num_questions):
        a, b = rng.randint(1, 60), rng.randint(1, 60)
        questions.append(f"{prefix}Q: What is {a} + {b}?\nA:")
    return prefix, questions


def run_system(rt, prompts: list[str], new_tokens: int) -> dict:
    rt.generate(prompts[0][-64:], max_new_tokens=1)  # warm-up, then start cold
    rt.wait_idle()
    rt.flush_cache()
    before = rt.metrics()
    start = time.perf_counter()
    results = rt.generate(prompts, max_new_tokens=new_tokens, temperature=0, ignore_eos=True)
    wall = time.perf_counter() - start
    after = rt.metrics()
    cache = after.cache - before.cache
    latencies = sorted(r["meta_info"]["e2e_latency"] for r in results)
    return {
        "programs_s": len(prompts) / wall,
        "latency_p50_s": latencies[len(latencies) // 2],
        "hit_rate": cache.hit_rate,
        "prefill_tokens": after.prefill_tokens - before.prefill_tokens,
        "decode_tokens": after.decode_tokens - before.decode_tokens,
        "wall_s": wall,
    }


def run_hf(path: str, device: str, dtype, prompts: list[str], new_tokens: int) -> dict:
    model, tokenizer = load_hf(path, device, dtype)
    hf_generate_naive(model, tokenizer, prompts[:1], 1)  # warm-up
    result = hf_generate_naive(model, tokenizer, prompts, new_tokens)
    latencies = sorted(result.latencies)
    return {
        "programs_s": len(prompts) / result.wall,
        "latency_p50_s": latencies[len(latencies) // 2],
        "hit_rate": 0.0,
        "prefill_tokens": result.prefill_tokens,
        "decode_tokens": result.decode_tokens,
        "wall_s": result.wall,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m sglbench.bench fewshot", description=__doc__)
    add_model_args(parser)
    parser.add_argument("--prefix-tokens", type=int, default=1800)
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=4)
    parser.add_argument("--no-hf", action="store_true", help="skip the transformers baseline")
    args = parser.parse_args(argv)
    from sglbench.runtime.runtime import Runtime

    path, label = resolve_model(args)
    rows = []
    for system, disable in (("sglbench (radix cache on)", False), ("sglbench (radix cache off)", True)):
        with Runtime(path, device=args.device, dtype=args.dtype, disable_radix_cache=disable) as rt:
            _, prompts = build_prompts(rt.tokenizer, args.prefix_tokens, args.questions)
            prompt_tokens = len(rt.tokenizer.encode(prompts[0]))
            rows.append({"system": system, **run_system(rt, prompts, args.new_tokens)})
    if not args.no_hf:
        hf = run_hf(path, rt.config.device, rt.model_info().dtype, prompts, args.new_tokens)
        rows.append({"system": "transformers generate (naive)", **hf})
    speedup = rows[0]["programs_s"] / rows[1]["programs_s"]
    print_table(rows, f"few-shot workload: {label}, {args.questions} questions, prompt {prompt_tokens} tokens "
                      f"(shared prefix ~{args.prefix_tokens}), {args.new_tokens} new tokens, device={rt.config.device}")
    print(f"cache on / cache off: {speedup:.1f}x programs/s")
    if not args.no_hf:
        print(f"cache on / transformers: {rows[0]['programs_s'] / rows[2]['programs_s']:.1f}x programs/s")
    return rows


if __name__ == "__main__":
    main()
