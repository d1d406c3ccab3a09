"""Kernel micro-benchmark (CUDA only): Triton paged attention vs torch scaled_dot_product_attention.

    python -m sglbench.bench.kernels [--dtype bf16] [--contexts 4096,8192,16384,32768]

extend: one request per batch row with a 4k-token prompt and no cached prefix (causal), Triton
        ``extend_attention`` reading K/V through kv_indices vs SDPA on the same, non-paged shapes.
        Reported as ms and TFLOP/s, counting the causal half: 2 * batch * heads * seq^2 * head_dim.
decode: batch 32, one new token per request over 4k-32k context, Triton ``decode_attention`` vs SDPA
        (the GQA query group is SDPA's query length, which is exact for decode). Reported as ms and
        achieved bandwidth = bytes of K and V read / time. ``paged`` uses slots in pool order,
        ``shuffled`` a random permutation (a fragmented pool).

Times are medians of ``triton.testing.do_bench`` (L2 flushed between runs). On a machine without
CUDA this prints a message and exits 0.
"""

from __future__ import annotations

import argparse
import math

import torch

from sglbench.bench.common import print_table

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
DEVICE = "cuda"


def _bench(fn) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def bench_extend(seq: int, batch: int, heads: int, head_dim: int, dtype: torch.dtype) -> list[dict]:
    from sglbench.kernel.extend_attention import extend_attention

    dev = DEVICE
    scale = 1 / math.sqrt(head_dim)
    q = torch.randn(batch, heads, seq, head_dim, device=dev, dtype=dtype)  # [batch, heads, seq, dim]
    k = torch.randn_like(q)
    v = torch.randn_like(q)
    # the same tensors in the paged layout: slot b * seq + i holds token i of request b
    q_flat = q.transpose(1, 2).reshape(batch * seq, heads, head_dim).contiguous()  # [tokens, heads, dim]
    k_buf = k.transpose(1, 2).reshape(batch * seq, heads, head_dim).contiguous()  # [slots, heads, dim]
    v_buf = v.transpose(1, 2).reshape(batch * seq, heads, head_dim).contiguous()  # [slots, heads, dim]
    indptr = torch.arange(0, (batch + 1) * seq, seq, device=dev)  # [batch + 1] int64
    kv_indices = torch.arange(batch * seq, device=dev)  # [tokens] int64

    def sdpa():
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)

    def triton_extend():
        return extend_attention(q_flat, k_buf, v_buf, indptr, indptr, kv_indices, scale, max_q_len=seq)

    ref = sdpa().transpose(1, 2).reshape(batch * seq, heads, head_dim)  # [tokens, heads, dim]
    err = (triton_extend().float() - ref.float()).abs().max().item()
    flops = 2 * batch * heads * seq * seq * head_dim  # QK^T and PV, causal half
    rows = []
    for name, fn in (("sdpa", sdpa), ("triton extend (paged)", triton_extend)):
        ms = _bench(fn)
        rows.append({"impl": name, "head_dim": head_dim, "batch": batch, "heads": heads, "seq": seq,
                     "ms": ms, "TFLOP/s": flops / ms / 1e9, "max_abs_err": err if name != "sdpa" else "-"})  # fmt: skip
    return rows


def bench_decode(
    ctx: int,
    batch: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    shuffled: bool,
    num_kv_splits: int | None = None,
) -> list[dict]:
    from sglbench.kernel.decode_attention import decode_attention

    dev = DEVICE
    group = heads // kv_heads
    scale = 1 / math.sqrt(head_dim)
    q = torch.randn(batch, heads, head_dim, device=dev, dtype=dtype)  # [batch, heads, dim]
    k_buf = torch.randn(batch * ctx, kv_heads, head_dim, device=dev, dtype=dtype)  # [slots, kv_heads, dim]
    v_buf = torch.randn_like(k_buf)
    indptr = torch.arange(0, (batch + 1) * ctx, ctx, device=dev)  # [batch + 1] int64
    slots = batch * ctx
    kv_indices = torch.randperm(slots, device=dev) if shuffled else torch.arange(slots, device=dev)  # [slots]
    bytes_read = 2 * batch * ctx * kv_heads * head_dim * k_buf.element_size()  # K and V, once each

    def triton_decode():
        return decode_attention(q, k_buf, v_buf, indptr, kv_indices, scale, num_kv_splits)

    rows = []
    if not shuffled:  # SDPA on the same values in a dense [batch, kv_heads, ctx, dim] layout
        dense = (batch, ctx, kv_heads, head_dim)
        k = k_buf.view(dense).transpose(1, 2).contiguous()  # [batch, kv_heads, ctx, dim]
        v = v_buf.view(dense).transpose(1, 2).contiguous()  # [batch, kv_heads, ctx, dim]
        qg = q.view(batch, kv_heads, group, head_dim)  # the query group as SDPA's query length

        def sdpa():
            return torch.nn.functional.scaled_dot_product_attention(qg, k, v, scale=scale)

        ms = _bench(sdpa)
        rows.append({"impl": "sdpa", "ctx": ctx, "batch": batch, "ms": ms, "TB/s": bytes_read / ms / 1e9,
                     "max_abs_err": "-"})  # fmt: skip
        err = (triton_decode().float() - sdpa().reshape(batch, heads, head_dim).float()).abs().max().item()
        del k, v
    else:
        err = "-"  # other slots, other values: no SDPA twin
    ms = _bench(triton_decode)
    layout = "shuffled" if shuffled else "paged"
    rows.append({"impl": f"triton decode ({layout})", "ctx": ctx, "batch": batch, "ms": ms,
                 "TB/s": bytes_read / ms / 1e9, "max_abs_err": err})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m sglbench.bench.kernels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--seq", type=int, default=4096, help="extend: prompt length")
    parser.add_argument("--extend-batch", type=int, default=4)
    parser.add_argument("--extend-heads", type=int, default=32)
    parser.add_argument("--head-dims", default="64,128", help="extend: comma-separated head dims")
    parser.add_argument("--contexts", default="4096,8192,16384,32768", help="decode: comma-separated")
    parser.add_argument("--decode-batch", type=int, default=32)
    parser.add_argument("--decode-heads", type=int, default=32)
    parser.add_argument("--decode-kv-heads", type=int, default=8)
    parser.add_argument("--decode-head-dim", type=int, default=128)
    parser.add_argument("--num-kv-splits", type=int, default=None, help="decode: default is the launcher's")
    parser.add_argument("--skip-extend", action="store_true")
    parser.add_argument("--skip-decode", action="store_true")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("sglbench.bench.kernels: no CUDA device; the Triton kernels are only timed on a GPU "
              "(on CPU they run under the interpreter for tests). Nothing to do.")  # fmt: skip
        return []
    dtype = DTYPES[args.dtype]
    device_name = torch.cuda.get_device_name()
    rows: list[dict] = []
    if not args.skip_extend:
        ext = []
        for d in (int(x) for x in args.head_dims.split(",")):
            ext += bench_extend(args.seq, args.extend_batch, args.extend_heads, d, dtype)
        print_table(ext, f"extend attention, causal, no prefix: {device_name}, {args.dtype}")
        rows += ext
    if not args.skip_decode:
        dec = []
        for ctx in (int(x) for x in args.contexts.split(",")):
            for shuffled in (False, True):
                dec += bench_decode(ctx, args.decode_batch, args.decode_heads, args.decode_kv_heads,
                                    args.decode_head_dim, dtype, shuffled, args.num_kv_splits)  # fmt: skip
                torch.cuda.empty_cache()
        print_table(dec, f"decode attention, heads {args.decode_heads}/{args.decode_kv_heads} kv, head_dim "
                         f"{args.decode_head_dim}: {device_name}, {args.dtype}")  # fmt: skip
        rows += dec
    return rows


if __name__ == "__main__":
    main()
