"""`python -m sglbench.bench cpu`: real model shapes on the CPU against the machine's limits and the CPU peers.

One run measures this machine's read bandwidth and bf16/fp32 matmul peak with the run's thread count, then for
each preset (random weights with the real config shapes, written once: timing only) and dtype: decode tok/s at
several batch sizes against the bandwidth roofline (weight bytes read per step / read bandwidth), prefill tok/s
against the matmul peak (2 x decoder-layer params FLOPs per token), and a few-shot workload (a shared prefix,
many questions, a few new tokens) for sglbench, transformers naive (`generate`) and careful (prefix KV computed
once and reused), and llama.cpp through llama-cpp-python on a GGUF written from the same weights. A peer that
cannot run is reported as missing, with why. The issue's goals close the run as pass/fail lines.

The machine's limits and each system are measured in a spawned process of their own (`--no-isolate`: all in
this one), as each would run alone: in one process sglbench's engine thread and transformers on the caller's
thread would each hold an OpenMP pool, and libgomp then stops spinning between ops (see `run_isolated`).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from sglbench.bench.common import print_table, run_isolated
from sglbench.runtime.model_config import ModelConfig

PRESETS = ("qwen2.5-0.5b", "qwen2.5-1.5b", "llama-3.2-1b")
DTYPES = {"bf16": "bfloat16", "fp32": "float32"}  # CLI name -> the engine's and transformers' dtype argument
SGL, HF, HF_CAREFUL, LLAMA = "sglbench", "transformers", "transformers careful", "llama.cpp"
PREFILL, FEWSHOT = "prefill tok/s", "few-shot programs/s"
# --quick: the first preset scaled down to a few layers and a small vocabulary, so a test runs it in seconds.
QUICK_SHAPE = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=1024, max_position_embeddings=16384)


def decode_key(batch: int) -> str:
    return f"decode b{batch} tok/s"


@dataclass(frozen=True)
class Settings:
    """Workload sizes for one run."""

    batches: tuple[int, ...] = (1, 8, 32)
    prompt_len: int = 32  # decode prompts
    new_tokens: int = 32  # decode steps timed per request
    prefill_tokens: int = 512
    prefix_tokens: int = 600  # few-shot shared prefix
    questions: int = 16
    question_tokens: int = 32
    fewshot_new_tokens: int = 4
    repeats: int = 3  # best of, for bandwidth, peak, decode, prefill and few-shot (every system alike)
    bandwidth_mb: int = 512
    gemm_size: int = 2048

    @property
    def context_length(self) -> int:
        return max(self.prefill_tokens, self.prefix_tokens + 2 * self.question_tokens,
                   self.prompt_len + self.new_tokens) + 64


QUICK = Settings(batches=(1, 4), new_tokens=4, prefill_tokens=64, prefix_tokens=96, questions=4,
                 question_tokens=12, fewshot_new_tokens=2, repeats=1, bandwidth_mb=32, gemm_size=256)


# ---------------------------------------------------------------------------- what the hardware and shapes allow
@dataclass(frozen=True)
class MachineLimits:
    """Measured with the run's thread count: read and copy bandwidth (bytes/s) and matmul peak per dtype."""

    threads: int
    read_bytes_s: float  # a large tensor summed: bytes read / s
    copy_bytes_s: float  # a large tensor copied: bytes read + written / s
    peak_flops: Mapping[str, float]  # CLI dtype name -> FLOP/s of a large square GEMM, best route (matmul_ways)


@dataclass(frozen=True)
class ShapeCost:
    """Parameter counts of a decoder, for the rooflines (the lm-head reads the embedding when tied)."""

    layer_params: int  # every decoder layer: projections, biases, norms
    vocab_params: int  # one vocab x hidden matrix
    hidden_size: int  # the final norm
    tied: bool

    @property
    def total_params(self) -> int:
        return self.layer_params + self.vocab_params * (1 if self.tied else 2) + self.hidden_size

    def decode_bytes(self, element_size: int) -> int:
        """Weight bytes one decode step reads: every layer, the final norm and the lm-head (the one embedding row
        a token looks up is not counted, nor the KV cache)."""
        return (self.layer_params + self.vocab_params + self.hidden_size) * element_size

    @property
    def prefill_flops_per_token(self) -> int:
        """2 x decoder-layer params: the lm-head runs for the last row only; attention is not counted."""
        return 2 * self.layer_params


def shape_cost(mc: ModelConfig) -> ShapeCost:
    h, d = mc.hidden_size, mc.head_dim
    q, kv = mc.num_heads * d, mc.num_kv_heads * d
    attn = h * (q + 2 * kv) + q * h + (q + 2 * kv) * mc.qkv_bias + h * mc.o_bias + 2 * d * mc.qk_norm
    mlp = 3 * h * mc.intermediate_size + (2 * mc.intermediate_size + h) * mc.mlp_bias
    return ShapeCost(layer_params=mc.num_layers * (attn + mlp + 2 * h), vocab_params=mc.vocab_size * h,
                     hidden_size=h, tied=mc.tie_word_embeddings)


def roofline_tok_s(batch: int, bytes_per_step: float, bytes_s: float) -> float:
    """Decode tok/s if every step only streamed the weights once at bytes_s."""
    return batch * bytes_s / bytes_per_step


def peak_tok_s(flops_per_token: float, peak_flops: float) -> float:
    """Prefill tok/s if every FLOP ran at the measured matmul peak."""
    return peak_flops / flops_per_token


@dataclass(frozen=True)
class FewShotWork:
    """The tokens the few-shot workload must compute however it is run: the shared prefix once, every question's
    own tokens, then (new tokens - 1) batched decode steps (the first new token comes from the prefill)."""

    programs: int
    prefill_tokens: int
    decode_steps: int

    @classmethod
    def of(cls, token_lists: list[list[int]], new_tokens: int) -> FewShotWork:
        from sglbench.bench.baselines import shared_prefix_len

        shared = shared_prefix_len(token_lists)
        return cls(len(token_lists), shared + sum(len(t) - shared for t in token_lists), max(new_tokens - 1, 0))

    def limit_programs_s(self, flops_per_token: float, peak_flops: float, bytes_per_step: float,
                         bytes_s: float) -> float:
        """Programs/s with the prefill at the matmul peak and each decode step reading the weights once at
        bytes_s: more than any system can reach (attention, the lm-head and KV reads are not counted)."""
        seconds = self.prefill_tokens * flops_per_token / peak_flops + self.decode_steps * bytes_per_step / bytes_s
        return self.programs / seconds


def _best_seconds(fn: Callable[[], object], repeats: int, device: str = "cpu") -> float:
    """Best wall seconds of fn, waiting for a CUDA device's queue before and after each call."""
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def best_limits(a: MachineLimits, b: MachineLimits) -> MachineLimits:
    """The higher of two measurements of each limit: on a shared machine a limit measured while other jobs ran is
    too low, so the run measures again after each preset and dtype and keeps the best."""
    peaks = {k: max(a.peak_flops.get(k, 0.0), b.peak_flops.get(k, 0.0)) for k in {**a.peak_flops, **b.peak_flops}}
    return MachineLimits(threads=a.threads, read_bytes_s=max(a.read_bytes_s, b.read_bytes_s),
                         copy_bytes_s=max(a.copy_bytes_s, b.copy_bytes_s), peak_flops=peaks)


def bandwidth(megabytes: int, repeats: int, device: str = "cpu") -> tuple[float, float]:
    """(read, copy) bytes/s over a tensor far larger than the caches (on a GPU: than L2). On the CPU the read is
    the best of three ways to stream it (torch's sum, torch's GEMV, and the C GEMV where it is built), each over
    4 KiB pages and, where the kernel has transparent huge pages, over 2 MiB ones as the engine's weights are
    (runtime/cpu_memory.py): a single way undershoots what the machine reads (torch's sum read about 80 % of
    what the C GEMV read on 2 threads here)."""
    src = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32, device=device)
    dst = torch.zeros_like(src)
    nbytes = src.numel() * 4
    sources = [src]
    if device == "cpu":
        from sglbench.kernel import cpu_native
        from sglbench.runtime.cpu_memory import huge_page_buffer

        huge = huge_page_buffer(nbytes)
        if huge is not None:
            sources.append(huge.view(torch.float32).fill_(1.0))
    reads = []
    for tensor in sources:
        reads.append(lambda tensor=tensor: tensor.sum())
        if device == "cpu":
            matrix, row = tensor.view(-1, 1024), torch.ones(1, 1024)
            reads.append(lambda matrix=matrix, row=row: F.linear(row, matrix))
            if cpu_native.available():
                reads.append(lambda matrix=matrix, row=row: cpu_native.gemv(row, matrix))
    return (max(nbytes / _best_seconds(read, repeats, device) for read in reads),
            2 * nbytes / _best_seconds(lambda: dst.copy_(src), repeats, device))


def matmul_ways(x: torch.Tensor, w: torch.Tensor) -> list[Callable[[], torch.Tensor]]:
    """Every CPU route to x @ w.T that torch offers: F.linear (its BLAS: MKL for fp32), oneDNN on the dense
    weight, and oneDNN on the weight packed where it packs that dtype. One route alone is not the machine's peak:
    on a 2-core AMD EPYC here MKL's fp32 GEMM ran at 236 GFLOP/s and oneDNN's at 500-510."""
    from sglbench.kernel import cpu_linear

    ways = [lambda: F.linear(x, w)]
    if cpu_linear.onednn_available(w.dtype):
        ways.append(lambda: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], ""))
    packed = cpu_linear.pack_weight(w)
    if packed is not None:
        ways.append(lambda: cpu_linear.linear(x, packed))
    return ways


def measure_limits(threads: int, dtypes: list[str], megabytes: int, gemm_size: int, repeats: int) -> MachineLimits:
    """Sets torch to `threads` threads (the whole run uses them) and measures what they reach; the matmul peak
    of a dtype is its fastest route (`matmul_ways`)."""
    torch.set_num_threads(threads)
    read, copy = bandwidth(megabytes, repeats)
    peaks = {}
    for name in dtypes:
        dtype = getattr(torch, DTYPES[name])
        x = torch.randn(gemm_size, gemm_size).to(dtype)
        w = torch.randn(gemm_size, gemm_size).to(dtype)
        peaks[name] = max(2 * gemm_size**3 / _best_seconds(way, repeats) for way in matmul_ways(x, w))
    return MachineLimits(threads=threads, read_bytes_s=read, copy_bytes_s=copy, peak_flops=peaks)


# ---------------------------------------------------------------------------- the workloads
def fewshot_prompts(tokenizer, prefix_tokens: int, questions: int, question_tokens: int, seed: int = 0) -> list[str]:
    """A shared few-shot prefix of about prefix_tokens tokens, then questions of about question_tokens tokens."""
    from sglbench.bench.fewshot import build_prompts

    prefix, _ = build_prompts(tokenizer, prefix_tokens, 0, seed)
    base = len(tokenizer.encode(prefix))
    rng = random.Random(seed + 1)
    words = ("Think", "step", "by", "and", "add", "the", "two", "numbers", "carefully", "then", "answer", ".")
    prompts = []
    for _ in range(questions):
        a, b = rng.randint(1, 60), rng.randint(1, 60)
        text = f"Q: What is {a} + {b}?"
        while len(tokenizer.encode(f"{prefix}{text}\nA:")) - base < question_tokens:
            text += f" {rng.choice(words)}"
        prompts.append(f"{prefix}{text}\nA:")
    return prompts


def _token_prompt(vocab: int, length: int, salt: int) -> list[int]:
    return [(97 * salt + 31 * i) % (vocab - 10) + 5 for i in range(length)]


def run_sglbench(path: str, dtype: str, s: Settings, prompts: list[str]) -> tuple[dict, str]:
    """sglbench's cells and the dtype the engine chose (rt.model_info())."""
    from sglbench.bench.decode import measure
    from sglbench.bench.fewshot import run_system
    from sglbench.runtime.runtime import Runtime

    cells: dict = {}
    pool = max(max(s.batches) * (s.prompt_len + s.new_tokens), len(prompts) * s.context_length) + 1024
    with Runtime(path, device="cpu", dtype=DTYPES[dtype], max_running_requests=max(*s.batches, len(prompts)),
                 context_length=s.context_length, max_total_tokens=pool) as rt:
        info = rt.model_info()
        measure(rt, 1, s.prompt_len, 4)  # warm-up
        for batch in s.batches:
            cells[decode_key(batch)] = max(measure(rt, batch, s.prompt_len, s.new_tokens)["decode_tok_s"]
                                           for _ in range(s.repeats))

        def prefill(salt: int) -> float:  # tok/s up to the first token of a fresh prompt
            rt.flush_cache()
            out = rt.generate(_token_prompt(info.vocab_size, s.prefill_tokens, salt), max_new_tokens=1,
                              temperature=0, ignore_eos=True)
            return s.prefill_tokens / out["meta_info"]["ttft"]

        prefill(999)  # warm-up at this length
        cells[PREFILL] = max(prefill(1000 + r) for r in range(s.repeats))
        cells[FEWSHOT] = max(run_system(rt, prompts, s.fewshot_new_tokens)["programs_s"]
                             for _ in range(s.repeats))
    return cells, info.dtype


def run_transformers(path: str, dtype: str, s: Settings, prompts: list[str]) -> tuple[dict, dict]:
    """(naive cells, careful cells): batch-1 `generate` decode, one prefill forward, few-shot both ways."""
    from sglbench.bench.baselines import (
        hf_decode_tok_s,
        hf_generate_naive,
        hf_generate_prefix_reuse,
        hf_prefill_tok_s,
        load_hf,
    )

    model, tokenizer = load_hf(path, "cpu", DTYPES[dtype])
    vocab = model.config.vocab_size
    prompt = _token_prompt(vocab, s.prompt_len, 0)
    hf_decode_tok_s(model, prompt, 2)  # warm-up
    naive = {decode_key(1): max(hf_decode_tok_s(model, prompt, s.new_tokens) for _ in range(s.repeats))}
    long_prompt = _token_prompt(vocab, s.prefill_tokens, 1000)
    hf_prefill_tok_s(model, long_prompt)  # warm-up
    naive[PREFILL] = max(hf_prefill_tok_s(model, long_prompt) for _ in range(s.repeats))
    hf_generate_naive(model, tokenizer, prompts[:1], 1)  # warm-up
    naive[FEWSHOT] = max(len(prompts) / hf_generate_naive(model, tokenizer, prompts, s.fewshot_new_tokens).wall
                         for _ in range(s.repeats))
    hf_generate_prefix_reuse(model, tokenizer, prompts[:2], 2)  # warm-up
    careful = {FEWSHOT: max(len(prompts)
                            / hf_generate_prefix_reuse(model, tokenizer, prompts, s.fewshot_new_tokens).wall
                            for _ in range(s.repeats))}
    del model
    gc.collect()
    return naive, careful


# ---------------------------------------------------------------------------- llama.cpp on the same weights
def llama_cpp_missing() -> str | None:
    """Why llama.cpp cannot be measured here, or None: it needs llama-cpp-python and, to write the GGUF from the
    checkpoint, the `gguf` package (llama.cpp's own gguf-py)."""
    reasons = []
    if importlib.util.find_spec("llama_cpp") is None:
        reasons.append("llama-cpp-python not installed")
    if importlib.util.find_spec("gguf") is None:
        reasons.append("no HF->GGUF converter (gguf)")
    return f"missing: {'; '.join(reasons)}" if reasons else None


def _permute_rotary(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Hugging Face's rotate-half Q/K rows to llama.cpp's interleaved pairs (as convert_hf_to_gguf does for Llama)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(hf_dir: str | Path, out: str | Path, dtype: str) -> Path:
    """A GGUF of a Llama or Qwen2 checkpoint, written with gguf-py the way llama.cpp's convert_hf_to_gguf.py
    writes these architectures: the same tensors in dtype ('bf16' or 'fp32'; 1-D tensors in F32), the
    tokenizer as GPT-2 BPE padded to the model's vocabulary, llama3 rope factors as rope_freqs."""
    import gguf
    import numpy as np
    from safetensors import safe_open
    from transformers import AutoTokenizer

    mc = ModelConfig.from_path(hf_dir)
    arch = {"LlamaForCausalLM": gguf.MODEL_ARCH.LLAMA, "Qwen2ForCausalLM": gguf.MODEL_ARCH.QWEN2}.get(mc.architecture)
    if arch is None:
        raise ValueError(f"write_gguf handles Llama and Qwen2 checkpoints, not {mc.architecture}")
    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_context_length(mc.max_position_embeddings)
    writer.add_embedding_length(mc.hidden_size)
    writer.add_block_count(mc.num_layers)
    writer.add_feed_forward_length(mc.intermediate_size)
    writer.add_head_count(mc.num_heads)
    writer.add_head_count_kv(mc.num_kv_heads)
    writer.add_rope_freq_base(mc.rope_theta)
    writer.add_rope_dimension_count(mc.head_dim)
    writer.add_layer_norm_rms_eps(mc.rms_norm_eps)
    writer.add_vocab_size(mc.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_BF16 if dtype == "bf16" else gguf.LlamaFileType.ALL_F32)

    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    tokens = [f"[PAD{i}]" for i in range(mc.vocab_size)]
    types = [gguf.TokenType.UNUSED] * mc.vocab_size
    special = set(tokenizer.all_special_ids)
    for text, i in tokenizer.get_vocab().items():
        tokens[i] = text
        types[i] = gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(str(hf_dir), load_merges=True, n_vocab=mc.vocab_size).add_to_gguf(writer)

    def add(name: str, t: torch.Tensor) -> None:
        if dtype == "bf16" and t.ndim > 1:
            writer.add_tensor(name, t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16),
                              raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            writer.add_tensor(name, t.float().numpy())

    if mc.rope_type == "llama3":
        base = 1.0 / (mc.rope_theta ** (torch.arange(0, mc.head_dim, 2).float() / mc.head_dim))
        add(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", base / mc.rope_inv_freq())
    names = gguf.get_tensor_name_map(arch, mc.num_layers)
    for file in sorted(Path(hf_dir).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                name = names.get_name(key, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise ValueError(f"no GGUF name for tensor {key!r}")
                t = f.get_tensor(key)
                if arch == gguf.MODEL_ARCH.LLAMA and key.endswith(("q_proj.weight", "k_proj.weight")):
                    t = _permute_rotary(t, mc.num_heads if "q_proj" in key else mc.num_kv_heads)
                add(name, t)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(out)


def run_llama_cpp(gguf_path: Path, threads: int, s: Settings, prompt_ids: list[list[int]], vocab: int) -> dict:
    """llama.cpp's cells: batch-1 greedy decode, one prefill, and the few-shot prompts with the prefix evaluated
    once and kept in its KV cache while the questions run one after another (llama-cpp-python's high-level API
    has one sequence)."""
    import llama_cpp
    import numpy as np

    from sglbench.bench.baselines import shared_prefix_len

    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=2 * s.context_length, n_batch=512, n_ubatch=512,
                          n_threads=threads, n_threads_batch=threads, verbose=False)
    n_vocab = llm.n_vocab()

    def greedy() -> int:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
        return int(logits.argmax())

    def decode() -> float:
        llm.reset()
        llm.eval(_token_prompt(vocab, s.prompt_len, 0))
        start = time.perf_counter()
        for _ in range(s.new_tokens - 1):
            llm.eval([greedy()])
        return (s.new_tokens - 1) / (time.perf_counter() - start)

    def prefill() -> float:
        llm.reset()
        start = time.perf_counter()
        llm.eval(_token_prompt(vocab, s.prefill_tokens, 1000))
        return s.prefill_tokens / (time.perf_counter() - start)

    def fewshot() -> float:
        shared = shared_prefix_len(prompt_ids)
        start = time.perf_counter()
        llm.reset()
        llm.eval(prompt_ids[0][:shared])
        for ids in prompt_ids:
            llm.n_tokens = shared  # the next eval drops the KV past the prefix
            llm.eval(ids[shared:])
            for _ in range(s.fewshot_new_tokens - 1):
                llm.eval([greedy()])
            greedy()
        return len(prompt_ids) / (time.perf_counter() - start)

    try:
        decode()  # warm-up
        cells = {decode_key(1): max(decode() for _ in range(s.repeats))}
        prefill()
        cells[PREFILL] = max(prefill() for _ in range(s.repeats))
        cells[FEWSHOT] = max(fewshot() for _ in range(s.repeats))
    finally:
        llm.close()
    return cells


def llama_cpp_cells(path: str, dtype: str, threads: int, s: Settings, prompts: list[str], vocab: int) -> dict:
    """llama.cpp's cells, or the reason it is missing or failed in each cell: never left out silently."""
    why = llama_cpp_missing()
    if why is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
        out = Path(path) / f"model-{dtype}.gguf"
        try:
            return run_llama_cpp(write_gguf(path, out, dtype), threads, s, prompt_ids, vocab)
        except Exception as exc:  # a peer's failure is reported in the table, the run goes on
            why = f"error: {type(exc).__name__}: {str(exc)[:80]}"
        finally:
            out.unlink(missing_ok=True)
    return {decode_key(1): why, PREFILL: why, FEWSHOT: why}


# ---------------------------------------------------------------------------- results, table and goals
Cell = float | str  # a measurement, or why there is none ("missing: ...", "error: ...")


@dataclass(frozen=True)
class RunResult:
    """Every system's measurements for one preset in one dtype."""

    preset: str
    dtype: str  # CLI name: 'bf16' or 'fp32'
    engine_dtype: str  # what the engine chose, as rt.model_info() gives it
    cost: ShapeCost
    cells: Mapping[tuple[str, str], Cell]  # (measure, system) -> cell
    fewshot: FewShotWork | None = None

    @property
    def decode_bytes(self) -> int:
        return self.cost.decode_bytes(getattr(torch, self.engine_dtype.removeprefix("torch.")).itemsize)

    def get(self, measure: str, system: str) -> Cell | None:
        return self.cells.get((measure, system))

    def limit(self, measure: str, limits: MachineLimits) -> float | None:
        """The most this machine's measured limits allow for a measure: the bandwidth roofline for decode, the
        matmul peak for prefill, both for few-shot (FewShotWork.limit_programs_s); None where unknown."""
        if measure.startswith("decode"):
            return roofline_tok_s(int(measure.split()[1][1:]), self.decode_bytes, limits.read_bytes_s)
        peak = limits.peak_flops.get(self.dtype)
        if peak is None:
            return None
        if measure == PREFILL:
            return peak_tok_s(self.cost.prefill_flops_per_token, peak)
        if measure == FEWSHOT and self.fewshot is not None:
            return self.fewshot.limit_programs_s(self.cost.prefill_flops_per_token, peak, self.decode_bytes,
                                                 limits.read_bytes_s)
        return None


@dataclass(frozen=True)
class Goal:
    """One goal of the issue evaluated on one preset and dtype: passed is None when a peer is missing. For a ratio
    to a peer, ceiling is the most this machine allows: the measure's limit (RunResult.limit) over the peer's
    value; a goal whose target is above it cannot pass on this machine, however fast sglbench gets."""

    name: str
    preset: str
    dtype: str
    measured: Cell
    target: float
    unit: str  # '%' for a fraction of a limit, 'x' for a ratio to a peer
    strict: bool = False  # above the target, not at or above
    ceiling: float | None = None

    @property
    def passed(self) -> bool | None:
        if isinstance(self.measured, str):
            return None
        return self.measured > self.target if self.strict else self.measured >= self.target

    @property
    def reachable(self) -> bool:
        return self.ceiling is None or self.ceiling >= self.target


def _ratio(a: Cell | None, b: Cell | None) -> Cell:
    for cell in (a, b):
        if cell is None:
            return "not measured"
        if isinstance(cell, str):
            return cell
    return a / b if b else "no baseline"


def evaluate_goals(results: list[RunResult], limits: MachineLimits) -> list[Goal]:
    """The issue's goals from the measured numbers: batch-1 decode >= 80 % of the bandwidth roofline and >= 1.5x
    transformers; few-shot >= 2x the careful and >= 10x the naive transformers user; bf16 prefill >= 50 % of the
    bf16 matmul peak; batch-1 decode at or above llama.cpp, prefill and few-shot above it."""
    goals = []
    for r in results:
        def of_limit(name: str, measure: str, target: float, r=r) -> Goal:
            return Goal(name, r.preset, r.dtype, _ratio(r.get(measure, SGL), r.limit(measure, limits)), target, "%")

        def to_peer(name: str, measure: str, peer: str, target: float, strict: bool = False, r=r) -> Goal:
            theirs, limit = r.get(measure, peer), r.limit(measure, limits)
            ceiling = limit / theirs if limit is not None and isinstance(theirs, float) and theirs > 0 else None
            return Goal(name, r.preset, r.dtype, _ratio(r.get(measure, SGL), theirs), target, "x", strict, ceiling)

        b1 = decode_key(1)
        goals += [of_limit("batch-1 decode / bandwidth roofline", b1, 0.8),
                  to_peer("batch-1 decode / transformers generate", b1, HF, 1.5),
                  to_peer("few-shot / transformers careful", FEWSHOT, HF_CAREFUL, 2.0),
                  to_peer("few-shot / transformers naive", FEWSHOT, HF, 10.0)]
        if r.dtype == "bf16" and "bf16" in limits.peak_flops:
            goals.append(of_limit("prefill / bf16 matmul peak", PREFILL, 0.5))
        goals += [to_peer("batch-1 decode / llama.cpp", b1, LLAMA, 1.0),
                  to_peer("prefill / llama.cpp", PREFILL, LLAMA, 1.0, strict=True),
                  to_peer("few-shot / llama.cpp", FEWSHOT, LLAMA, 1.0, strict=True)]
    return goals


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def _cell(value: Cell | None) -> Cell:
    return "-" if value is None else value


def result_rows(r: RunResult, limits: MachineLimits) -> list[dict]:
    """One row per measure, the systems side by side, with the limit it is held against where there is one."""
    rows = []
    measures = [m for m in dict.fromkeys(m for m, _ in r.cells) if m.startswith("decode")] + [PREFILL, FEWSHOT]
    for measure in measures:
        ours, limit = r.get(measure, SGL), r.limit(measure, limits)
        frac = _pct(ours / limit) if isinstance(ours, float) and limit else "-"
        rows.append({"measure": measure, SGL: _cell(ours), "limit": _cell(limit), "of limit": frac,
                     f"{HF} naive": _cell(r.get(measure, HF)), HF_CAREFUL: _cell(r.get(measure, HF_CAREFUL)),
                     LLAMA: _cell(r.get(measure, LLAMA))})
    return rows


def goal_rows(goals: list[Goal]) -> list[dict]:
    """One row per goal; `machine allows` is the highest ratio to the peer this machine's limits leave room for,
    and a goal above it says so in its result."""
    def show(value: Cell, unit: str) -> str:
        if isinstance(value, str):
            return value
        return _pct(value) if unit == "%" else f"{value:.2f}x"

    verdict = {True: "PASS", False: "FAIL", None: "n/a"}
    return [{"goal": g.name, "preset": g.preset, "dtype": g.dtype, "measured": show(g.measured, g.unit),
             "target": ("> " if g.strict else ">= ") + show(g.target, g.unit),
             "machine allows": "-" if g.ceiling is None else f"{g.ceiling:.2f}x",
             "result": verdict[g.passed] + ("" if g.passed or g.reachable else " (out of reach on this machine)")}
            for g in goals]


def limit_rows(limits: MachineLimits) -> list[dict]:
    rows = [{"measure": "read bandwidth (best of sum, torch GEMV, C GEMV; 4 KiB and 2 MiB pages)", "value": f"{limits.read_bytes_s / 1e9:.1f} GB/s"},
            {"measure": "copy bandwidth (bytes read + written)", "value": f"{limits.copy_bytes_s / 1e9:.1f} GB/s"}]
    rows += [{"measure": f"{name} matmul peak (square GEMM)", "value": f"{flops / 1e9:,.0f} GFLOP/s"}
             for name, flops in limits.peak_flops.items()]
    return rows


@dataclass(frozen=True)
class CpuReport:
    limits: MachineLimits
    results: list[RunResult]
    goals: list[Goal]


# ---------------------------------------------------------------------------- the run
def _threaded(threads: int, fn: Callable, *args):
    """fn(*args) with torch on `threads` threads (a spawned process starts with torch's default)."""
    torch.set_num_threads(threads)
    return fn(*args)


def run_preset(path: str, preset: str, dtype: str, threads: int, s: Settings, isolate: bool = True) -> RunResult:
    """Every system on one preset and dtype; with isolate each in a process of its own (see run_isolated)."""
    from transformers import AutoTokenizer

    def call(fn, *args):
        return run_isolated(_threaded, threads, fn, *args) if isolate else fn(*args)

    mc = ModelConfig.from_path(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompts = fewshot_prompts(tokenizer, s.prefix_tokens, s.questions, s.question_tokens)
    work = FewShotWork.of([tokenizer(p)["input_ids"] for p in prompts], s.fewshot_new_tokens)
    ours, engine_dtype = call(run_sglbench, path, dtype, s, prompts)
    gc.collect()
    naive, careful = call(run_transformers, path, dtype, s, prompts)
    peer = call(llama_cpp_cells, path, dtype, threads, s, prompts, mc.vocab_size)
    cells = {}
    for system, values in ((SGL, ours), (HF, naive), (HF_CAREFUL, careful), (LLAMA, peer)):
        cells.update({(measure, system): value for measure, value in values.items()})
    return RunResult(preset, dtype, engine_dtype, shape_cost(mc), cells, work)


def _title(r: RunResult, limits: MachineLimits, s: Settings) -> str:
    return (f"{r.preset} (timing only: random weights), {r.dtype}: engine dtype {r.engine_dtype}, "
            f"{r.cost.total_params / 1e6:,.1f} M params, {limits.threads} threads\n"
            f"  decode: prompts of {s.prompt_len} tokens, {s.new_tokens} new; limit = batch x read bandwidth / "
            f"{r.decode_bytes / 1e6:,.1f} MB of weights read per step (KV reads not counted)\n"
            f"  prefill: {s.prefill_tokens} tokens; limit = {r.dtype} matmul peak / "
            f"(2 x {r.cost.layer_params / 1e6:,.1f} M layer params) FLOPs per token\n"
            f"  few-shot: {s.questions} prompts, a shared prefix of ~{s.prefix_tokens} tokens and questions of "
            f"~{s.question_tokens}, "
            f"{s.fewshot_new_tokens} new tokens, best of {s.repeats} runs each; "
            f"transformers careful = prefix KV computed once and reused; "
            f"llama.cpp = prefix kept in its KV cache, questions one after another"
            + ("" if r.fewshot is None else
               f"; limit = {r.fewshot.prefill_tokens:,} tokens to prefill at the matmul peak, then "
               f"{r.fewshot.decode_steps} decode step{'' if r.fewshot.decode_steps == 1 else 's'} at the "
               "bandwidth roofline"))


def main(argv: list[str] | None = None) -> CpuReport:
    parser = argparse.ArgumentParser(prog="python -m sglbench.bench cpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated timing presets")
    parser.add_argument("--dtypes", default="bf16,fp32", help="comma-separated: bf16, fp32")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=None, help="best of this many (default 3; 1 with --quick)")
    parser.add_argument("--no-isolate", action="store_true",
                        help="measure every system in this process (by default each runs in a process of its own, "
                             "so their torch threads do not slow each other down)")
    parser.add_argument("--quick", action="store_true",
                        help="the first preset scaled down, small workloads: checks the plumbing in seconds")
    args = parser.parse_args(argv)
    from sglbench.runtime.models.synthetic import PRESETS as SHAPES
    from sglbench.runtime.models.synthetic import make_preset_checkpoint

    presets = [p for p in args.presets.split(",") if p]
    dtypes = [d for d in args.dtypes.split(",") if d]
    for name in presets:
        if name not in SHAPES:
            raise SystemExit(f"unknown preset {name!r}; presets: {', '.join(SHAPES)}")
    for name in dtypes:
        if name not in DTYPES:
            raise SystemExit(f"unknown dtype {name!r}; dtypes: {', '.join(DTYPES)}")
    s = QUICK if args.quick else Settings()
    if args.repeats:
        s = replace(s, repeats=args.repeats)
    if args.quick:
        presets = presets[:1]

    def limits_now() -> MachineLimits:
        limits_args = (args.threads, dtypes, s.bandwidth_mb, s.gemm_size, s.repeats)
        return measure_limits(*limits_args) if args.no_isolate else run_isolated(measure_limits, *limits_args)

    limits = limits_now()
    results = []
    for preset in presets:
        folder = Path(tempfile.mkdtemp(prefix=f"sglbench-cpu-{preset}-"))
        try:
            make_preset_checkpoint(folder, preset, **(QUICK_SHAPE if args.quick else {}))
            label = f"{preset} scaled down (--quick)" if args.quick else preset
            for dtype in dtypes:
                start = time.perf_counter()
                r = replace(run_preset(str(folder), preset, dtype, args.threads, s, not args.no_isolate), preset=label)
                results.append(r)
                print(f"measured {label} {dtype} in {time.perf_counter() - start:.0f} s: sglbench decode b1 "
                      f"{r.get(decode_key(1), SGL):.2f} tok/s, prefill {r.get(PREFILL, SGL):.1f} tok/s, "
                      f"few-shot {r.get(FEWSHOT, SGL):.2f} programs/s", flush=True)
                limits = best_limits(limits, limits_now())  # measured again after each block, the best kept
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    print_table(limit_rows(limits), f"this machine, {limits.threads} threads: the best of {len(results) + 1} "
                                    f"measurements (best of {s.repeats} each) taken through the run")
    for r in results:
        print_table(result_rows(r, limits), _title(r, limits, s))
    goals = evaluate_goals(results, limits)
    note = " (--quick: scaled-down shapes and tiny workloads check the plumbing; these are no measurement)"
    print_table(goal_rows(goals), "goals (issue 21), measured side by side in this run" + (note if args.quick else ""))
    return CpuReport(limits, results, goals)


if __name__ == "__main__":
    main()
