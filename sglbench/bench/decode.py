"""Decode throughput: tokens/s at several batch sizes for one model on one device.

Each batch runs prompts of `--prompt-len` tokens to exactly `--new-tokens` new tokens (ignore_eos),
after a warm-up. Decode tok/s counts the tokens produced after every request's first token, over the
time from the last first token to the last finish, so prefill is excluded.
"""

from __future__ import annotations

import argparse
import time

from sglbench.bench.common import add_model_args, print_table, resolve_model


def measure(rt, batch_size: int, prompt_len: int, new_tokens: int) -> dict:
    vocab = rt.model_info().vocab_size
    prompts = [[(97 * b + 31 * i) % (vocab - 10) + 5 for i in range(prompt_len)] for b in range(batch_size)]
    rt.flush_cache()
    start = time.perf_counter()
    results = rt.generate(prompts, max_new_tokens=new_tokens, temperature=0, ignore_eos=True)
    wall = time.perf_counter() - start
    first = max(r["meta_info"]["first_token"] for r in results)
    last = max(r["meta_info"]["finished"] for r in results)
    decoded = sum(r["meta_info"]["completion_tokens"] - 1 for r in results)
    return {
        "batch": batch_size,
        "new_tokens": new_tokens,
        "decode_tok_s": decoded / max(last - first, 1e-9),
        "e2e_tok_s": sum(r["meta_info"]["completion_tokens"] for r in results) / wall,
        "ms_per_step": 1000 * (last - first) / max(new_tokens - 1, 1),
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m sglbench.bench decode", description=__doc__)
    add_model_args(parser)
    parser.add_argument("--batch", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    from sglbench.runtime.runtime import Runtime

    path, label = resolve_model(args)
    batches = [int(b) for b in args.batch.split(",")]
    with Runtime(path, device=args.device, dtype=args.dtype, max_running_requests=max(batches)) as rt:
        measure(rt, min(batches), args.prompt_len, 4)  # warm-up
        rows = [measure(rt, b, args.prompt_len, args.new_tokens) for b in batches]
        info = rt.model_info()
        print_table(rows, f"decode throughput: {label}, {info.num_params / 1e6:.1f} M params, "
                          f"device={info.device}, dtype={info.dtype}, attention={info.attention_backend}")
    return rows


if __name__ == "__main__":
    main()
