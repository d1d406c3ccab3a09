"""Kernel micro-benchmark: the engine's attention and linear kernels against plain torch.

    python -m sglbench.bench.kernels [--dtype bf16] [--contexts 4096,8192,16384,32768]

On CUDA (Triton paged attention vs torch scaled_dot_product_attention):

extend: one request per batch row with a 4k-token prompt and no cached prefix (causal), Triton
        ``extend_attention`` reading K/V through kv_indices vs SDPA on the same, non-paged shapes.
        Reported as ms and TFLOP/s, counting the causal half: 2 * batch * heads * seq^2 * head_dim.
decode: batch 32, one new token per request over 4k-32k context, Triton ``decode_attention`` vs SDPA
        (the GQA query group is SDPA's query length, which is exact for decode). Reported as ms and
        achieved bandwidth = bytes of K and V read / time. ``paged`` uses slots in pool order,
        ``shuffled`` a random permutation (a fragmented pool).

Times are medians of ``triton.testing.do_bench`` (L2 flushed between runs).

On the CPU (fp32, the default model's head shape, medians of wall-clock repeats):

cpu extend: few-shot batches (an MMLU-like 60 questions of ~100 new tokens over four 520-token cached
        prefixes, a HellaSwag-like 40 endings of ~20 tokens over one 1,200-token prefix, a fork-like 14
        branches of ~10 tokens over five 200-token states, or the ``--subjects/--questions/--prefix/--suffix``
        given), ``cpu_attention`` with the plan it chooses and with each plan kind forced (the cut: shared
        prefixes read once, no masks; one masked call, dense or padded) vs one bottom-right-masked SDPA
        call per request.
cpu decode: decode batches whose contexts share prefixes (an LLM judge's 10 answers x 6 branches, a ReAct
        step's 12 requests over one 556-token prompt) and one of independent requests, through one padded
        block and through the shared-prefix plan (each shared prefix read once).
cpu linear: ``cpu_linear.linear`` (oneDNN for large weights) vs F.linear (torch's default BLAS) at the
        default model's projection shapes.
cpu gemv: bf16 and fp32 decode linears at Qwen2.5-0.5B's shapes, every layer's weights read once per step as a
        model step reads them: the C GEMV (``cpu_native``, dense weights) vs cpu_linear's route (bf16: oneDNN
        packed) vs F.linear, as GB/s.
cpu element-wise: add + RMSNorm, rotary, SiLU-and-multiply: the C kernels vs the torch ops they replace, at
        one row (decode) and 512 (prefill), bf16 and fp32.
Where the C kernels are built, the attention tables lead with them (what the engine runs) and time the torch
plans with the kernels off.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import statistics
import time

import torch

from sglbench.bench.common import print_table

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
DEVICE = "cuda"


def _bench(fn, device: str = DEVICE) -> float:
    """Median ms: triton's do_bench on CUDA; wall clock elsewhere (the device check's CPU dry run)."""
    if not str(device).startswith("cuda"):
        return _wall_ms(fn, repeats=3)
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def bench_extend(seq: int, batch: int, heads: int, head_dim: int, dtype: torch.dtype,
                 device: str = DEVICE) -> list[dict]:
    from sglbench.kernel.extend_attention import extend_attention

    dev = device
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
        ms = _bench(fn, dev)
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
    device: str = DEVICE,
) -> list[dict]:
    from sglbench.kernel.decode_attention import decode_attention

    dev = device
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

        ms = _bench(sdpa, dev)
        rows.append({"impl": "sdpa", "ctx": ctx, "batch": batch, "ms": ms, "TB/s": bytes_read / ms / 1e9,
                     "max_abs_err": "-"})  # fmt: skip
        err = (triton_decode().float() - sdpa().reshape(batch, heads, head_dim).float()).abs().max().item()
        del k, v
    else:
        err = "-"  # other slots, other values: no SDPA twin
    ms = _bench(triton_decode, dev)
    layout = "shuffled" if shuffled else "paged"
    rows.append({"impl": f"triton decode ({layout})", "ctx": ctx, "batch": batch, "ms": ms,
                 "TB/s": bytes_read / ms / 1e9, "max_abs_err": err})  # fmt: skip
    return rows


def _wall_ms(fn, repeats: int = 15) -> float:
    """Median wall-clock ms of fn after one warm-up call (CPU: no device queue to synchronize)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def few_shot_batch(subjects: int, questions: int, prefix: int, suffix: int, heads: int = 8, kv_heads: int = 2,
                   head_dim: int = 32, seed: int = 0) -> tuple:
    """A paged few-shot extend batch (reference.py's contract): each request's context is its subject's
    cached prefix (the same slots for the whole subject) and its question, suffix +-10% new tokens."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    new = [max(1, round(suffix * rng.uniform(0.9, 1.1))) for _ in range(questions)]
    num_slots = subjects * prefix + sum(new)
    perm = torch.randperm(num_slots, generator=g)
    prefixes = [perm[i * prefix : (i + 1) * prefix] for i in range(subjects)]
    own = torch.split(perm[subjects * prefix :], new)
    kv_indices = torch.cat([torch.cat([prefixes[i % subjects], own[i]]) for i in range(questions)])
    qo = torch.tensor([0, *new]).cumsum(0)
    kv = torch.tensor([0, *(prefix + n for n in new)]).cumsum(0)
    k_buf = torch.randn(num_slots, kv_heads, head_dim, generator=g)
    v_buf = torch.randn(num_slots, kv_heads, head_dim, generator=g)
    q = torch.randn(sum(new), heads, head_dim, generator=g)
    return q, k_buf, v_buf, qo, kv, kv_indices


def masked_sdpa_per_request(q, k_buf, v_buf, qo_indptr, kv_indptr, kv_indices, sm_scale) -> torch.Tensor:
    """The plain-torch way: one SDPA call per request over its gathered context, bottom-right causal mask."""
    out = torch.empty_like(q)
    qo, kvp = qo_indptr.tolist(), kv_indptr.tolist()
    for b in range(len(qo) - 1):
        q_len, kv_len = qo[b + 1] - qo[b], kvp[b + 1] - kvp[b]
        slots = kv_indices[kvp[b] : kvp[b + 1]]
        mask = torch.arange(kv_len) <= torch.arange(kv_len - q_len, kv_len)[:, None]
        o = torch.nn.functional.scaled_dot_product_attention(
            q[qo[b] : qo[b + 1]].transpose(0, 1)[None], k_buf[slots].transpose(0, 1)[None],
            v_buf[slots].transpose(0, 1)[None], attn_mask=mask, scale=sm_scale, enable_gqa=True)
        out[qo[b] : qo[b + 1]] = o[0].transpose(0, 1)
    return out


# subjects, questions, prefix, suffix
FEW_SHOT_CASES = {"mmlu-like": (4, 60, 520, 100), "hellaswag-like": (1, 40, 1200, 20), "fork-like": (5, 14, 200, 10)}


def bench_cpu_extend(subjects: int, questions: int, prefix: int, suffix: int) -> list[dict]:
    from sglbench.kernel import cpu_attention, cpu_native

    args = few_shot_batch(subjects, questions, prefix, suffix)
    scale = 1 / math.sqrt(args[0].shape[-1])
    plan = cpu_attention.plan_extend(*args[3:])
    baseline = masked_sdpa_per_request(*args, scale)
    impls = [("masked sdpa per request", lambda: masked_sdpa_per_request(*args, scale))]
    if cpu_native.available():  # what the engine runs in fp32 where the C kernels are built
        impls.append(("C attention (cpu_native)", lambda: cpu_native.extend_attention(*args, scale)))
    share = cpu_attention.shared_prefix_share(plan, args[3], args[4])
    choice = cpu_attention.choose_extend(args[0], args[1], *args[3:])
    takes_c = isinstance(choice, cpu_attention.NativeExtendPlan)
    impls.append((f"engine's choice ({'C' if takes_c else 'torch'}: {share:.0%} of scores over shared prefixes)",
                  lambda: cpu_attention.extend_attention_cpu(*args, scale, choice)))
    impls.append((f"cpu_attention on torch, chosen: {plan_kind(plan)}",
                  lambda: cpu_attention.extend_attention_cpu(*args, scale, plan)))
    for kind in cpu_attention.PLAN_KINDS[1:]:
        forced = cpu_attention.plan_extend(*args[3:], kind=kind)
        impls.append((f"cpu_attention on torch, {kind}",
                      lambda p=forced: cpu_attention.extend_attention_cpu(*args, scale, p)))
    impls.append(("plan_extend alone", lambda: cpu_attention.plan_extend(*args[3:])))
    rows = []
    for name, fn in impls:
        with cpu_native.disabled() if "on torch" in name else contextlib.nullcontext():
            out, ms = fn(), _wall_ms(fn)
        err = (out - baseline).abs().max().item() if isinstance(out, torch.Tensor) else "-"
        rows.append({"impl": name, "requests": questions, "new_tokens": args[0].shape[0], "prefix": prefix,
                     "ms": ms, "max_abs_err": err})
    return rows


# states, branches, shared prefix, own tokens per branch
DECODE_CASES = {"judge-like": (10, 6, 420, 30), "react-like": (1, 12, 556, 150), "independent": (32, 1, 0, 400)}


def bench_cpu_decode(states: int, branches: int, prefix: int, own: int) -> list[dict]:
    """Decode attention over contexts that share prefixes (each state's branches), through the padded block
    and through the shared-prefix plan (chosen and forced), against the plain-torch reference."""
    from sglbench.kernel import cpu_attention, cpu_native, reference

    _, k_buf, v_buf, _, kv_indptr, kv_indices = few_shot_batch(states, states * branches, prefix, own)
    q = torch.randn(kv_indptr.numel() - 1, 8, k_buf.shape[-1], generator=torch.Generator().manual_seed(1))
    scale = 1 / math.sqrt(q.shape[-1])
    baseline = reference.decode_attention_ref(q, k_buf, v_buf, kv_indptr, kv_indices, scale)
    padded = cpu_attention.plan_decode(kv_indptr, kv_indices, q.dtype, share_prefixes=False)
    with cpu_native.disabled():
        chosen = cpu_attention.plan_decode(kv_indptr, kv_indices, q.dtype)
    impls = [(f"cpu_attention on torch, chosen: {'shared prefix' if chosen.shared else 'padded'}", chosen),
             ("cpu_attention on torch, padded", padded)]
    forced = cpu_attention.plan_decode(kv_indptr, kv_indices, q.dtype, share_prefixes=True)
    if forced.shared is not None:
        impls.append(("cpu_attention on torch, shared prefix", forced))
    if cpu_native.available():  # what the engine runs where the C kernels are built (the plain plan)
        impls.insert(0, ("C attention (cpu_native)", padded))
    rows = []
    for name, plan in impls:
        with cpu_native.disabled() if "on torch" in name else contextlib.nullcontext():
            out = cpu_attention.decode_attention_cpu(q, k_buf, v_buf, plan, scale)
            ms = _wall_ms(lambda p=plan: cpu_attention.decode_attention_cpu(q, k_buf, v_buf, p, scale))
        rows.append({"impl": name, "requests": q.shape[0], "prefix": prefix, "longest": chosen.max_len,
                     "ms": ms, "max_abs_err": (out - baseline).abs().max().item()})
    rows.append({"impl": "plan_decode alone", "requests": q.shape[0], "prefix": prefix, "longest": chosen.max_len,
                 "ms": _wall_ms(lambda: cpu_attention.plan_decode(kv_indptr, kv_indices, q.dtype)), "max_abs_err": "-"})
    return rows


def plan_kind(plan) -> str:
    """Which of cpu_attention.PLAN_KINDS a plan is."""
    from sglbench.kernel import cpu_attention

    if isinstance(plan, cpu_attention.ExtendPlan):
        return "cut"
    return "dense" if plan.rows is None else "padded"


def bench_cpu_linear(rows: int) -> list[dict]:
    from sglbench.kernel import cpu_linear

    out = []
    for name, (n_in, n_out) in {"qkv": (256, 384), "o": (256, 256), "gate_up": (256, 1408),
                                "down": (704, 256), "lm_head": (256, 4096)}.items():
        x, w = torch.randn(rows, n_in), torch.randn(n_out, n_in)
        flops = 2 * rows * n_in * n_out
        for impl, fn in (("F.linear", lambda x=x, w=w: torch.nn.functional.linear(x, w)),
                         ("cpu_linear.linear", lambda x=x, w=w: cpu_linear.linear(x, w))):
            ms = _wall_ms(fn)
            out.append({"layer": name, "impl": impl, "rows": rows, "ms": ms, "GFLOP/s": flops / ms / 1e6})
    return out


# Qwen2.5-0.5B's projections (out, in) and lm-head: the shape `bench cpu` times end to end
QWEN_LINEARS = {"qkv": (1152, 896), "o": (896, 896), "gate_up": (9728, 896), "down": (896, 4864)}
QWEN_LM_HEAD = (151936, 896)


def bench_cpu_gemv(layers: int, rows_list: tuple[int, ...] = (1, 4), lm_head: bool = True,
                   dtype: torch.dtype = torch.bfloat16) -> list[dict]:
    """Decode linears of dtype as a model step reads them: every layer's four projections, then the lm-head,
    each weight read once per step (so caches do not flatter anyone), through the C GEMV (dense weights),
    cpu_linear's route (bf16: oneDNN packed; fp32: F.linear, oneDNN from 4 rows) and F.linear. GB/s = weight
    bytes per step / step time."""
    from sglbench.kernel import cpu_linear, cpu_native

    g = torch.Generator().manual_seed(0)
    dense = [[(torch.randn(n, k, generator=g) * 0.02).to(dtype) for n, k in QWEN_LINEARS.values()]
             for _ in range(layers)]
    if lm_head:
        dense.append([(torch.randn(*QWEN_LM_HEAD, generator=g) * 0.02).to(dtype)])
    weight_bytes = sum(w.numel() * w.element_size() for group in dense for w in group)
    impls = [("F.linear", dense, torch.nn.functional.linear)]
    if cpu_linear.packing_available(dtype):
        packed = [[cpu_linear.pack_weight(w) for w in group] for group in dense]
        impls.append(("oneDNN packed (cpu_linear)", packed, cpu_linear.linear))
    elif dtype == torch.float32:
        impls.append(("cpu_linear.linear", dense, cpu_linear.linear))
    if cpu_native.available() and dtype in cpu_native.GEMV_DTYPES:
        impls.append(("C GEMV (cpu_native)", dense, cpu_native.gemv))
    out = []
    for rows in rows_list:
        xs = {k: torch.randn(rows, k, generator=g).to(dtype) for k in (896, 4864)}
        for name, weights, fn in impls:
            def step(weights=weights, fn=fn, xs=xs):
                for group in weights:
                    for w in group:
                        fn(xs[w.shape[1]], w)
            ms = _wall_ms(step, repeats=3)
            out.append({"dtype": str(dtype).removeprefix("torch."), "impl": name, "rows": rows, "layers": layers,
                        "weights_MB": weight_bytes / 1e6, "ms_per_step": ms, "GB/s": weight_bytes / ms / 1e6})
    return out


def _elementwise_cases(dtype: torch.dtype, rows: int, hidden: int, inter: int, heads: int, kv_heads: int,
                       dim: int) -> dict:
    """op -> (the torch ops the model runs without the C kernels, the C kernel) on random inputs."""
    import torch.nn.functional as F

    from sglbench.kernel import cpu_native
    from sglbench.runtime.models.llama import RMSNorm, rotate_pairs

    g = torch.Generator().manual_seed(rows)
    x, res = torch.randn(rows, hidden, generator=g).to(dtype), torch.randn(rows, hidden, generator=g).to(dtype)
    norm = RMSNorm(hidden, 1e-6).to(dtype)
    gate_up = torch.randn(rows, 2 * inter, generator=g).to(dtype)
    qkv = torch.randn(rows, (heads + 2 * kv_heads) * dim, generator=g).to(dtype)
    q = qkv[:, : heads * dim].reshape(rows, heads, dim)
    k = qkv[:, heads * dim : (heads + kv_heads) * dim].reshape(rows, kv_heads, dim)
    positions = torch.arange(rows, dtype=torch.int64)
    cis = torch.polar(torch.ones(4096, dim // 2), torch.rand(4096, dim // 2, generator=g))
    table = torch.view_as_real(cis)

    def norm_torch():
        with cpu_native.disabled():
            return norm.add_forward(x, res)  # residual + x, then the norm's torch ops; res is not written

    def rope_torch():
        c = cis[positions].unsqueeze(1)
        return rotate_pairs(q, c), rotate_pairs(k, c)

    def silu_torch():
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate).mul_(up)

    return {"add + RMSNorm": (norm_torch, lambda: cpu_native.add_rms_norm(x, norm.weight, 1e-6, residual=res.clone())),
            "rotary": (rope_torch, lambda: cpu_native.rope_(q, k, positions, table)),
            "SiLU-and-multiply": (silu_torch, lambda: cpu_native.silu_mul(gate_up))}


def bench_cpu_elementwise(rows_list: tuple[int, ...] = (1, 512)) -> list[dict]:
    """The per-layer element-wise work, C kernels (cpu_native) against the torch ops the model runs without
    them: RMSNorm after the residual add, the rotary embedding, SiLU-and-multiply; Qwen2.5-0.5B's shapes in
    bf16, the embedded model's in fp32."""
    from sglbench.kernel import cpu_native

    if not cpu_native.available():
        return []
    shapes = {torch.bfloat16: (896, 4864, 14, 2, 64), torch.float32: (256, 704, 8, 2, 32)}
    out = []
    for dtype, shape in shapes.items():
        for rows in rows_list:
            for op, (torch_fn, c_fn) in _elementwise_cases(dtype, rows, *shape).items():
                t_ms, c_ms = _wall_ms(torch_fn, repeats=50), _wall_ms(c_fn, repeats=50)
                out.append({"op": op, "dtype": str(dtype).removeprefix("torch."), "rows": rows,
                            "torch_us": t_ms * 1e3, "c_us": c_ms * 1e3, "speedup": t_ms / c_ms})
    return out


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
    parser.add_argument("--subjects", type=int, default=None, help="cpu extend: distinct cached prefixes")
    parser.add_argument("--questions", type=int, default=60, help="cpu extend: requests in the batch")
    parser.add_argument("--prefix", type=int, default=520, help="cpu extend: cached prefix tokens")
    parser.add_argument("--suffix", type=int, default=100, help="cpu extend: new tokens per request")
    parser.add_argument("--linear-rows", type=int, default=6000, help="cpu linear: rows (tokens) per call")
    parser.add_argument("--gemv-layers", type=int, default=24,
                        help="cpu gemv: Qwen2.5-0.5B layers streamed per step (0 skips it)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: timing the CPU path's kernels (the Triton kernels are timed on a GPU)")
        cases = (FEW_SHOT_CASES.values() if args.subjects is None
                 else [(args.subjects, args.questions, args.prefix, args.suffix)])
        ext = [row for case in cases for row in bench_cpu_extend(*case)]
        print_table(ext, f"cpu extend attention, few-shot batch, fp32, {torch.get_num_threads()} threads")
        dec = [row for case in DECODE_CASES.values() for row in bench_cpu_decode(*case)]
        print_table(dec, f"cpu decode attention (one layer), fp32, {torch.get_num_threads()} threads")
        lin = bench_cpu_linear(args.linear_rows)
        print_table(lin, f"cpu linear, fp32, {torch.get_num_threads()} threads")
        gemv = []
        for dtype in (torch.bfloat16, torch.float32) if args.gemv_layers else ():
            gemv += (rows := bench_cpu_gemv(args.gemv_layers, dtype=dtype))
            print_table(rows, f"cpu decode linears, {str(dtype).removeprefix('torch.')}, Qwen2.5-0.5B shapes "
                              f"({args.gemv_layers} layers and the lm-head per step), {torch.get_num_threads()} threads")
        elem = bench_cpu_elementwise()
        if elem:
            print_table(elem, f"cpu element-wise ops, C kernels vs torch, {torch.get_num_threads()} threads")
        return ext + dec + lin + gemv + elem
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
