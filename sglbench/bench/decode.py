"""Decode throughput: tokens/s at several batch sizes for one model on one device.

Each batch runs prompts of `--prompt-len` tokens to exactly `--new-tokens` new tokens (ignore_eos),
after a warm-up. Decode tok/s counts the tokens produced after every request's first token, over the
time from the last first token to the last finish, so prefill is excluded. Host ms/step is the time a
decode step spends outside the model forward (scheduling, index building, sampling, bookkeeping): it bounds
batch-1 decode on any GPU, and CUDA graphs (on by default on CUDA) shrink the launch part of it.
"""

from __future__ import annotations

import argparse
import time

import torch

from sglbench.bench.common import add_model_args, print_table, resolve_model


class StepTimer:
    """Times each decode step of an engine: its wall time and its model forward's time (CUDA events on a
    GPU, where the forward runs asynchronously). Installed on the engine instance; measurement only."""

    def __init__(self, engine):
        self.records: list[tuple[float, float]] = []  # (step wall s, forward s) of steps that decoded
        self._step, self._run_decode = engine.step, engine.runner.run_decode
        self._cuda = str(engine.device).startswith("cuda")
        self._forward = None
        engine.step, engine.runner.run_decode = self._timed_step, self._timed_forward

    def _timed_step(self) -> None:
        self._forward = None
        start = time.perf_counter()
        self._step()
        wall = time.perf_counter() - start
        if self._forward is not None:
            if self._cuda:
                begin, end = self._forward
                end.synchronize()
                self.records.append((wall, begin.elapsed_time(end) / 1000))
            else:
                self.records.append((wall, self._forward))

    def _timed_forward(self, reqs, table):
        if self._cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            logits = self._run_decode(reqs, table)
            end.record()
            self._forward = (begin, end)
            return logits
        start = time.perf_counter()
        logits = self._run_decode(reqs, table)
        self._forward = time.perf_counter() - start
        return logits

    def host_and_forward_ms(self) -> tuple[float, float]:
        """Mean ms per decode step outside and inside the model forward since the last `records.clear()`."""
        if not self.records:
            return float("nan"), float("nan")
        n = len(self.records)
        return (1000 * sum(max(w - f, 0.0) for w, f in self.records) / n,
                1000 * sum(f for _, f in self.records) / n)


def measure(rt, batch_size: int, prompt_len: int, new_tokens: int, timer: StepTimer | None = None) -> dict:
    vocab = rt.model_info().vocab_size
    prompts = [[(97 * b + 31 * i) % (vocab - 10) + 5 for i in range(prompt_len)] for b in range(batch_size)]
    rt.flush_cache()
    if timer is not None:
        rt.wait_idle()
        timer.records.clear()
    start = time.perf_counter()
    results = rt.generate(prompts, max_new_tokens=new_tokens, temperature=0, ignore_eos=True)
    wall = time.perf_counter() - start
    first = max(r["meta_info"]["first_token"] for r in results)
    last = max(r["meta_info"]["finished"] for r in results)
    decoded = sum(r["meta_info"]["completion_tokens"] - 1 for r in results)
    host_ms, forward_ms = timer.host_and_forward_ms() if timer is not None else (float("nan"), float("nan"))
    return {
        "batch": batch_size,
        "new_tokens": new_tokens,
        "decode_tok_s": decoded / max(last - first, 1e-9),
        "e2e_tok_s": sum(r["meta_info"]["completion_tokens"] for r in results) / wall,
        "ms_per_step": 1000 * (last - first) / max(new_tokens - 1, 1),
        "host_ms_per_step": host_ms,
        "forward_ms_per_step": forward_ms,
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m sglbench.bench decode", description=__doc__)
    add_model_args(parser)
    parser.add_argument("--batch", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--disable-cuda-graph", action="store_true", help="decode eagerly on CUDA too")
    args = parser.parse_args(argv)
    from sglbench.runtime.runtime import Runtime

    path, label = resolve_model(args)
    batches = [int(b) for b in args.batch.split(",")]
    with Runtime(path, device=args.device, dtype=args.dtype, max_running_requests=max(batches),
                 disable_cuda_graph=args.disable_cuda_graph) as rt:
        timer = StepTimer(rt.engine)
        measure(rt, min(batches), args.prompt_len, 4)  # warm-up
        rows = [measure(rt, b, args.prompt_len, args.new_tokens, timer) for b in batches]
        info = rt.model_info()
        print_table(rows, f"decode throughput: {label}, {info.num_params / 1e6:.1f} M params, "
                          f"device={info.device}, dtype={info.dtype}, attention={info.attention_backend}, "
                          f"CUDA graphs {info.cuda_graph or 'n/a'}")
    return rows


if __name__ == "__main__":
    main()
