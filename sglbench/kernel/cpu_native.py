"""The C kernels of csrc/cpu_decode.c, for CPUs with AVX512-BF16: a GEMV for decode batches of up to
`gemv_batch(dtype)` rows (7 in bf16, 8 in fp32), bf16 and fp32 (plain, and with the MLP's SiLU-and-multiply
fused in); one causal attention over the paged K/V for decode (bf16, fp32) and extend (used for fp32, where
torch's flash kernel is slowest: at head size 32 it took 1.4x as long over the JSON workload's 8,192-token
prefill batches); the per-layer element-wise work in bf16 or fp32 (RMSNorm with the residual add fused in,
rotary embedding in place, SiLU-and-multiply); and every decoder layer of a decode step in one call
(`decode_layers`: norms, projections, rotary, K/V store, attention and MLP), on the model's dense weights for
batches of up to `gemv_batch(dtype)` (bf16 and fp32) or, for small fp32 models, on packed copies at any batch,
because otherwise a step pays the per-op cost of a dozen torch ops and C calls per layer (Qwen2.5-0.5B at batch
1: 16.2 -> 21.1 tok/s in bf16; the embedded model: 2.0 -> 1.4 ms a step at batch 1, 4.2 -> 2.8 at batch 16);
that packed GEMM also alone (`gemm_packed`), for such a model's lm-head.

Why C: at a decode batch of one, torch's ops cost 10-100 us each before any work (a bf16 RMSNorm is eight of
them, a rotary embedding a dozen), and oneDNN's packed GEMV reads Qwen2.5-0.5B's layer weights at about
20 GB/s where this machine streams 24; the C GEMV reads dense rows at 23-24 GB/s and attention over a few
hundred slots takes microseconds, not a fused SDPA call.

The library is compiled on first use with the system C compiler (`$CC`, else cc/gcc; well under a second)
into sglbench's cache folder, keyed by the source's hash, and loaded with ctypes. It is linked with
-fopenmp, so it runs on the OpenMP runtime torch already loaded, with torch's thread count. Where there
is no compiler, no AVX512-BF16 or SGLBENCH_NATIVE_KERNELS=0, `unavailable_reason()` says why and callers
keep their torch paths.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sglbench.kernel import cpu_features

SOURCE = Path(__file__).with_name("csrc") / "cpu_decode.c"
MAX_GEMV_ROWS = 8  # the C GEMV's widest batch
GEMV_DTYPES = (torch.bfloat16, torch.float32)  # the C GEMV's (and the dense fused layer's) dtypes
# The decode batches routed to the C GEMV and the dense fused layers, by dtype. Qwen2.5-0.5B's shape, decode
# tok/s against the oneDNN/torch route (alternated in one process, same tokens out): bf16 1.54x at batch 5,
# 1.36x at 6, 1.24x at 7, but 0.86x at 8, where oneDNN's AMX GEMM wins; fp32 1.46x at 8 (the GEMV alone: 0.94
# of torch's time at 10 rows, 1.10 at 12).
_GEMV_BATCH = {torch.bfloat16: 7, torch.float32: MAX_GEMV_ROWS}
FLAGS = ("-O3", "-fPIC", "-shared", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16")
_I64, _INT, _PTR, _FLOAT = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p, ctypes.c_float
_SIGNATURES = {
    "sgl_gemv": (_PTR, _I64, _PTR, _PTR, _PTR, _I64, _INT, _I64, _I64, _INT, _INT),
    "sgl_gemv_silu_mul": (_PTR, _I64, _PTR, _PTR, _PTR, _I64, _INT, _I64, _I64, _INT, _INT),
    "sgl_attention": (_PTR, _I64, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _I64, _I64, _INT, _INT, _INT, _INT, _FLOAT,
                      _INT, _INT),
    "sgl_add_rms_norm": (_PTR, _I64, _PTR, _I64, _PTR, _PTR, _I64, _I64, _I64, _FLOAT, _INT, _INT),
    "sgl_silu_mul": (_PTR, _I64, _PTR, _I64, _I64, _I64, _INT, _INT),
    "sgl_rope": (_PTR, _I64, _INT, _PTR, _I64, _INT, _PTR, _PTR, _I64, _I64, _INT, _INT, _INT),
    "sgl_gemm_packed": (_PTR, _I64, _PTR, _PTR, _PTR, _I64, _INT, _I64, _I64, _INT),
    "sgl_decode_layers": (_PTR, _PTR, _INT, _PTR, _FLOAT, _PTR, _PTR, _I64, _I64, _PTR, _PTR, _I64, _PTR, _PTR, _INT,
                          _INT, _INT, _INT, _INT, _INT, _INT, _FLOAT, _INT, _INT, _INT),
}


def cache_dir() -> Path:
    """Where built kernels live: $SGLBENCH_CACHE_DIR, else $XDG_CACHE_HOME/sglbench, else ~/.cache/sglbench."""
    if os.environ.get("SGLBENCH_CACHE_DIR"):
        return Path(os.environ["SGLBENCH_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sglbench"


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def build(out_dir: Path | None = None) -> Path:
    """Compile the library unless a build of this exact source is there already; its path. Raises
    RuntimeError with the compiler's message when the build fails."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join(FLAGS).encode()).hexdigest()[:16]
    target = (out_dir or cache_dir() / "kernels") / f"cpu_decode-{digest}.so"
    if target.exists():
        return target
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler (set $CC, or install cc/gcc)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        try:
            proc = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(built), "-lm"], capture_output=True,
                                  text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as e:
            raise RuntimeError(f"{compiler} did not run: {e}") from e
        if proc.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {(proc.stderr or proc.stdout).strip()[-800:]}")
        os.replace(built, target)  # atomic: concurrent builders each leave a whole file
    return target


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str | None]:
    if os.environ.get("SGLBENCH_NATIVE_KERNELS", "1") == "0":
        return None, "SGLBENCH_NATIVE_KERNELS=0"
    if not cpu_features.detect().avx512_bf16:
        return None, "this CPU lacks AVX512-BF16"
    try:
        lib = ctypes.CDLL(str(build()))
    except (OSError, RuntimeError) as e:
        return None, f"build failed: {e}"
    for name, args in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, ctypes.c_int
    return lib, None


_off: list[str] = []  # the reasons of the `disabled()` blocks in force, innermost last


@contextlib.contextmanager
def disabled(reason: str = "disabled for a comparison"):
    """The C kernels off inside the block, torch's paths on: benchmarks and tests compare the two. Models
    loaded inside keep one packed weight copy (cpu_linear.keeps_dense asks `available`)."""
    _off.append(reason)
    try:
        yield
    finally:
        _off.remove(reason)


def available() -> bool:
    """Whether the C kernels run on this machine (built and loaded on first call)."""
    return not _off and _load()[0] is not None


def unavailable_reason() -> str | None:
    """Why the C kernels are not used here, or None when they are."""
    return _off[-1] if _off else _load()[1]


def gemv_batch(dtype: torch.dtype) -> int:
    """The widest decode batch the C GEMV (and the dense fused layers) take for weights of dtype; 0 for none."""
    return _GEMV_BATCH.get(dtype, 0)


def describe(dtype: torch.dtype = torch.bfloat16, gemv: bool = True, fused_decode: str = "") -> str:
    """One line for model info: what the C kernels do for a model of dtype here, or why they are off; gemv:
    whether the model's Linears reach the C GEMV (bf16: they kept the dense weights, cpu_linear.keeps_dense);
    fused_decode: which decode batches run each layer as one call (`decode_layers`), "" for none."""
    reason = unavailable_reason()
    if reason is not None:
        return f"off: {reason}"
    if dtype not in GEMV_DTYPES:
        return f"off: none for {str(dtype).removeprefix('torch.')}"
    parts = []
    if fused_decode:
        parts.append(f"decode layers as one call each for {fused_decode} (norms, projections, rotary, K/V store, "
                     "attention, MLP)")
    if gemv:
        parts.append(f"GEMV (decode batches up to {gemv_batch(dtype)})")
    parts.append("decode attention" if dtype == torch.bfloat16 else "decode and extend attention")
    parts.append("RMSNorm, rotary, SiLU-and-multiply")
    line = "on: " + ", ".join(parts)
    if dtype == torch.bfloat16 and not gemv:
        line += ("; GEMV off: a dense copy of the weights beside the packed one would take more than a sixth of "
                 "this machine's memory")
    return line


def _lib() -> ctypes.CDLL:
    lib, reason = _load()
    if lib is None:
        raise RuntimeError(f"the C kernels are not built here: {reason}")
    return lib


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


_CODES = {1: "unsupported shapes", 2: "out of memory",
          3: "an index out of range (a slot outside the KV pool, a length past the slots, a position past the table)"}


def _check(code: int, what: str) -> None:
    if code != 0:
        raise RuntimeError(f"{what} refused its arguments: {_CODES.get(code, f'code {code}')}")


def _gemv_args(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, rows_out: int):
    if x.dim() != 2 or not 1 <= x.shape[0] <= MAX_GEMV_ROWS or x.stride(1) != 1:
        raise ValueError(f"x must be [1..{MAX_GEMV_ROWS}, K] with unit column stride, got {tuple(x.shape)}")
    if x.dtype not in GEMV_DTYPES or weight.dtype != x.dtype or not weight.is_contiguous():
        raise ValueError(f"the C GEMV takes bf16 or fp32 inputs and a contiguous weight of their dtype, got "
                         f"{x.dtype} and {weight.dtype}")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"x has {x.shape[1]} columns, the weight {weight.shape[1]}")
    if bias is not None and (bias.dtype != x.dtype or not bias.is_contiguous()):
        raise ValueError(f"bias must be contiguous {x.dtype}")
    return torch.empty(x.shape[0], rows_out, dtype=x.dtype)


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias) for x [rows <= MAX_GEMV_ROWS, K] and weight [N, K], both bf16 or both fp32."""
    out = _gemv_args(x, weight, bias, weight.shape[0])
    _check(_lib().sgl_gemv(x.data_ptr(), x.stride(0), weight.data_ptr(), _ptr(bias), out.data_ptr(), out.stride(0),
                           x.shape[0], weight.shape[0], weight.shape[1], torch.get_num_threads(), x.element_size()),
           "sgl_gemv")
    return out


def gemv_silu_mul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.silu(gate) * up of F.linear(x, weight, bias).chunk(2, -1), in one pass over weight [2I, K]: [rows, I]."""
    if weight.shape[0] % 2:
        raise ValueError(f"a gate-up weight has an even number of rows, got {weight.shape[0]}")
    half = weight.shape[0] // 2
    out = _gemv_args(x, weight, bias, half)
    _check(_lib().sgl_gemv_silu_mul(x.data_ptr(), x.stride(0), weight.data_ptr(), _ptr(bias), out.data_ptr(),
                                    out.stride(0), x.shape[0], half, weight.shape[1], torch.get_num_threads(),
                                    x.element_size()),
           "sgl_gemv_silu_mul")
    return out


def attention_fits(q: torch.Tensor, k_buffer: torch.Tensor) -> bool:
    """Whether the attention kernels take this query and KV pool: on the CPU, bf16 or fp32, one dtype, built."""
    return (q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float32) and k_buffer.dtype == q.dtype
            and available())


def _attention(q: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor, qo_indptr: torch.Tensor,
               kv_start: torch.Tensor, kv_lens: torch.Tensor, kv_indices: torch.Tensor, sm_scale: float) -> torch.Tensor:
    total, heads, dim = q.shape
    kv_heads = k_buffer.shape[1]
    if not attention_fits(q, k_buffer) or v_buffer.dtype != q.dtype:
        raise ValueError(f"the attention kernel takes bf16 or fp32 q, k and v of one dtype on the CPU, got {q.dtype}, "
                         f"{k_buffer.dtype}, {v_buffer.dtype}")
    if q.stride(2) != 1 or q.stride(1) != dim or not (k_buffer.is_contiguous() and v_buffer.is_contiguous()):
        raise ValueError("q's heads and the K/V buffers must be contiguous")
    if heads % kv_heads or k_buffer.shape[2] != dim or v_buffer.shape != k_buffer.shape:
        raise ValueError(f"q {tuple(q.shape)} does not fit K/V buffers {tuple(k_buffer.shape)}")
    for t in (qo_indptr, kv_start, kv_lens, kv_indices):
        if t.dtype != torch.int64 or not t.is_contiguous():
            raise ValueError("qo_indptr, kv_indptr, kv_indices, slots and lens must be contiguous int64")
    requests = qo_indptr.numel() - 1
    if kv_start.numel() != requests or kv_lens.numel() != requests or (requests and int(qo_indptr[-1]) != total):
        raise ValueError(f"the query and context offsets of {requests} requests do not cover {total} query rows")
    out = torch.empty(total, heads, dim, dtype=q.dtype)
    lib = _lib()
    _check(lib.sgl_attention(q.data_ptr(), q.stride(0), k_buffer.data_ptr(), v_buffer.data_ptr(), out.data_ptr(),
                             qo_indptr.data_ptr(), kv_start.data_ptr(), kv_lens.data_ptr(), kv_indices.data_ptr(),
                             kv_indices.numel(), k_buffer.shape[0], requests, heads, kv_heads, dim, sm_scale,
                             q.element_size(), torch.get_num_threads()), "sgl_attention")
    return out


def extend_attention(q: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor, qo_indptr: torch.Tensor,
                     kv_indptr: torch.Tensor, kv_indices: torch.Tensor, sm_scale: float) -> torch.Tensor:
    """reference.extend_attention_ref's contract (causal attention of new tokens over their cached prefix and
    each other), K/V read in place: q [total_q, heads, dim] (rows may be strided: a view into the QKV
    projection), k/v_buffer [slots, kv_heads, dim] of q's dtype (bf16 or fp32); [total_q, heads, dim]."""
    return _attention(q, k_buffer, v_buffer, qo_indptr, kv_indptr[:-1].contiguous(), kv_indptr.diff(), kv_indices,
                      sm_scale)


def decode_attention(q: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor, slots: torch.Tensor,
                     lens: torch.Tensor, sm_scale: float) -> torch.Tensor:
    """One query token per request over its paged context, read in place: q [batch, heads, dim] (rows may be
    strided); k/v_buffer [slots, kv_heads, dim] of q's dtype; slots [batch, width] int64, row b's first
    lens[b] entries being its context. Returns [batch, heads, dim]."""
    batch, width = q.shape[0], slots.shape[-1]
    if slots.dim() != 2 or slots.shape[0] != batch or lens.shape != (batch,):
        raise ValueError(f"slots {tuple(slots.shape)} and lens {tuple(lens.shape)} must have {batch} rows")
    rows = torch.arange(batch + 1, dtype=torch.int64)
    return _attention(q, k_buffer, v_buffer, rows, rows[:-1] * width, lens, slots, sm_scale)


ELEMENTWISE_DTYPES = (torch.bfloat16, torch.float32)  # RMSNorm, rotary, SiLU-and-multiply


def _rows_fit(*tensors: torch.Tensor) -> bool:
    first = tensors[0]
    return (first.device.type == "cpu" and first.dtype in ELEMENTWISE_DTYPES
            and all(t.dtype == first.dtype and t.device == first.device and t.stride(-1) == 1 for t in tensors)
            and available())


def rms_norm_fits(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `add_rms_norm` takes these: bf16 or fp32 on the CPU, 2-D rows of unit stride, built."""
    return x.dim() == 2 and weight.is_contiguous() and _rows_fit(x, weight)


def add_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None) -> torch.Tensor:
    """Llama's RMSNorm (reference.rms_norm_ref; F.rms_norm in fp32) of x [rows, dim]; with residual (x's shape
    and dtype, unit column stride), first residual += x in place (rounded as torch's add) and the sum
    normalised instead: the residual stream's add and the next norm in one pass."""
    rows, dim = x.shape
    if weight.shape != (dim,) or (residual is not None and (residual.shape != x.shape or residual.stride(1) != 1
                                                            or residual.dtype != x.dtype)):
        raise ValueError(f"x {tuple(x.shape)}, weight {tuple(weight.shape)} and residual do not fit")
    out = torch.empty(rows, dim, dtype=x.dtype)
    lib = _lib()
    _check(lib.sgl_add_rms_norm(x.data_ptr(), x.stride(0), _ptr(residual), 0 if residual is None else residual.stride(0),
                                weight.data_ptr(), out.data_ptr(), out.stride(0), rows, dim, eps, x.element_size(),
                                torch.get_num_threads()), "sgl_add_rms_norm")
    return out


def rope_fits(q: torch.Tensor, k: torch.Tensor, cis: torch.Tensor) -> bool:
    """Whether `rope_` takes these: [tokens, heads, dim] views of one dtype with contiguous heads, fp32 cis."""
    return (q.dim() == 3 and k.dim() == 3 and q.stride(1) == q.shape[2] and k.stride(1) == k.shape[2]
            and cis.dtype == torch.float32 and cis.is_contiguous() and _rows_fit(q, k))


def rope_(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cis: torch.Tensor) -> None:
    """Rotate q [tokens, heads, dim] and k [tokens, kv_heads, dim] in place: interleaved pairs (2i, 2i + 1)
    times cis [max_position, dim / 2, 2] (cos, sin) at each token's position (int64 [tokens])."""
    tokens, heads, dim = q.shape
    if k.shape[0] != tokens or k.shape[2] != dim or cis.shape[1:] != (dim // 2, 2) or positions.shape != (tokens,):
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, positions and cis {tuple(cis.shape)} do not fit")
    if positions.dtype != torch.int64 or not positions.is_contiguous():
        raise ValueError("positions must be contiguous int64")
    lib = _lib()
    _check(lib.sgl_rope(q.data_ptr(), q.stride(0), heads, k.data_ptr(), k.stride(0), k.shape[1], positions.data_ptr(),
                        cis.data_ptr(), cis.shape[0], tokens, dim, q.element_size(), torch.get_num_threads()),
           "sgl_rope")


def silu_mul_fits(gate_up: torch.Tensor) -> bool:
    """Whether `silu_mul` takes this gate-up output: bf16 or fp32 [rows, 2I] on the CPU, unit column stride."""
    return gate_up.dim() == 2 and gate_up.shape[1] % 2 == 0 and _rows_fit(gate_up)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """F.silu(gate) * up of gate, up = gate_up.chunk(2, -1) ([rows, 2I]), in one pass: [rows, I]."""
    rows, width = gate_up.shape
    out = torch.empty(rows, width // 2, dtype=gate_up.dtype)
    lib = _lib()
    _check(lib.sgl_silu_mul(gate_up.data_ptr(), gate_up.stride(0), out.data_ptr(), out.stride(0), rows, width // 2,
                            gate_up.element_size(), torch.get_num_threads()), "sgl_silu_mul")
    return out


# ---------------------------------------------------------------------------- fused decode layer
# Extend batches of up to this many new tokens also run each layer as one call on the packed copies. On the
# embedded model (2-core Xeon, one step, interleaved): 255 rows over 400-token contexts 11.7 against 16.1 ms
# layer by layer, 512 rows 21 against 26, 1,040 rows 39 against 44; level at 2,048 (56 against 55), behind at
# 4,096 (123 against 106), where MKL's GEMM outruns the packed register-tiled one. With the GEMM in row passes
# (gemm_row_block) the json-regex workload with every extend step routed here ran level with this cap (1.00x,
# 8 alternated rounds), so the cap stays.
FUSED_EXTEND_MAX_ROWS = 1536
FUSED_DECODE_MAX_BYTES = 64 << 20  # the packed copy of every layer's weights: small models only (`decode_layers`)


def pack_columns(weight: torch.Tensor) -> torch.Tensor:
    """A linear weight [N, K] as the fused decode layer's GEMMs read it: blocks of 16 output columns, each
    [K, 16] (k-major), zero-padded to whole blocks: fp32 [ceil(N / 16), K, 16]."""
    n, k = weight.shape
    blocks = -(-n // 16)
    padded = torch.zeros(blocks * 16, k, dtype=torch.float32)
    padded[:n] = weight.detach()
    return padded.view(blocks, 16, k).transpose(1, 2).contiguous()


PACKED_GEMM_MAX_ROWS = 64  # up to here the packed GEMM beats torch's at a small model's lm-head (2x at 16 rows)


def gemm_packed(x: torch.Tensor, packed: torch.Tensor, n: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias) for fp32 x [rows, K] (unit column stride) and weight [n, K] packed by
    `pack_columns`: the fused layer's register-tiled GEMM alone. [rows, n] fp32."""
    if x.dim() != 2 or x.dtype != torch.float32 or x.stride(1) != 1 or x.device.type != "cpu":
        raise ValueError(f"x must be a CPU fp32 [rows, K] with unit column stride, got {x.dtype} {tuple(x.shape)}")
    k = x.shape[1]
    if packed.dtype != torch.float32 or not packed.is_contiguous() or packed.shape != (-(-n // 16), k, 16):
        raise ValueError(f"packed must be pack_columns' [{-(-n // 16)}, {k}, 16] fp32 for {n} columns, got "
                         f"{tuple(packed.shape)}")
    if bias is not None and (bias.dtype != torch.float32 or bias.shape != (n,) or not bias.is_contiguous()):
        raise ValueError(f"bias must be a contiguous fp32 [{n}]")
    out = torch.empty(x.shape[0], n, dtype=torch.float32)
    _check(_lib().sgl_gemm_packed(x.data_ptr(), x.stride(0), packed.data_ptr(), _ptr(bias), out.data_ptr(), n,
                                  x.shape[0], n, k, torch.get_num_threads()), "sgl_gemm_packed")
    return out


@dataclass(frozen=True)
class DecodeLayerWeights:
    """One decoder layer's weights for `decode_layers`: the norms' as they are (q_norm and k_norm: Qwen3's
    per-head norms, or None); the projections' either packed (`pack_columns`, fp32: decode batches of any size)
    or dense (the model's own [N, K] tensors, bf16 or fp32: batches up to `gemv_batch`), the gate-up's halves
    of `intermediate` rows each; biases of the weights' dtype or None."""

    ln1: torch.Tensor
    ln2: torch.Tensor
    eps: float
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    gate_up: torch.Tensor
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor
    down_bias: torch.Tensor | None
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    packed: bool = True
    q_norm: torch.Tensor | None = None
    k_norm: torch.Tensor | None = None

    @property
    def max_batch(self) -> int | None:
        """The widest decode batch the layer takes (None: any)."""
        return None if self.packed else gemv_batch(self.qkv.dtype)

    @functools.cached_property
    def pointers(self) -> tuple[int, ...]:
        """The weights' row of sgl_decode_layers' layer table (norms through the down projection's bias; 0 for
        None), made once: asking 24 layers' tensors for their addresses costs a step about 0.1 ms."""
        return tuple(0 if t is None else t.data_ptr() for t in (
            self.ln1, self.ln2, self.q_norm, self.k_norm, self.qkv, self.qkv_bias, self.o, self.o_bias, self.gate_up,
            self.gate_up_bias, self.down, self.down_bias))

    @functools.cached_property
    def shape(self) -> tuple:
        """What every layer of one `decode_layers` call must share."""
        return (self.ln1.shape, self.eps, self.heads, self.kv_heads, self.head_dim, self.intermediate, self.packed,
                self.qkv.dtype, self.q_norm is None)


def decode_layer_fits(heads: int, kv_heads: int, head_dim: int, intermediate: int, packed: bool = True) -> bool:
    """Whether `decode_layers` takes a layer of this shape: an even head size up to 256, built here, and for
    packed weights the gate-up's halves in whole 16-column blocks."""
    return ((intermediate % 16 == 0 or not packed) and head_dim % 2 == 0 and 2 <= head_dim <= 256
            and kv_heads >= 1 and heads % kv_heads == 0 and available())


def decode_layers(embedding: torch.Tensor, layers: list[DecodeLayerWeights], cis: torch.Tensor,
                  positions: torch.Tensor, k_buffers: list[torch.Tensor], v_buffers: list[torch.Tensor],
                  out_loc: torch.Tensor, slots: torch.Tensor, lens: torch.Tensor, sm_scale: float,
                  qo_indptr: torch.Tensor | None = None) -> torch.Tensor:
    """A decode batch through every decoder layer in one C call (sgl_decode_layers): embedding [batch, hidden]
    becomes the residual stream (updated in place: after the call it is the stream before the last layer's
    output); layer i stores the new tokens' K/V at out_loc in k/v_buffers[i] and attends over slots [batch,
    width] (row b's first lens[b]) as `decode_attention`. With qo_indptr ([requests + 1]) it is an extend
    batch instead: request r's new tokens are rows qo_indptr[r] .. qo_indptr[r + 1], slots and lens are per
    request ([requests, width], [requests]: its context, new tokens included) and the attention is
    `extend_attention`'s, causal. Activations, K/V and weights share one dtype (packed weights: fp32). Returns
    the last layer's output [batch, hidden] (the final norm adds it to the stream)."""
    batch, hidden = embedding.shape
    dtype = embedding.dtype
    requests = batch if qo_indptr is None else qo_indptr.numel() - 1
    indices = [positions, out_loc, slots, lens, *(() if qo_indptr is None else (qo_indptr,))]
    if not all(t.is_contiguous() and t.device.type == "cpu" for t in [embedding, cis, *indices, *k_buffers, *v_buffers]):
        raise ValueError("decode_layers takes contiguous CPU tensors")
    if dtype not in GEMV_DTYPES or any(k.dtype != dtype for k in k_buffers + v_buffers):
        raise ValueError(f"decode_layers takes bf16 or fp32 activations and K/V buffers of their dtype, got {dtype}")
    if len(k_buffers) < len(layers) or len(v_buffers) < len(layers):
        raise ValueError(f"{len(layers)} layers need as many K and V buffers")
    if any(t.dtype != torch.int64 for t in indices):
        raise ValueError("positions, out_loc, slots, lens and qo_indptr must be int64")
    if positions.shape != (batch,) or out_loc.shape != (batch,):
        raise ValueError(f"positions and out_loc must have {batch} rows")
    if lens.shape != (requests,) or slots.dim() != 2 or slots.shape[0] != requests:
        raise ValueError(f"slots and lens must have a row for each of the {requests} requests")
    w = layers[0] if layers else None
    if w is None or any(layer.shape != w.shape for layer in layers):
        raise ValueError("decode_layers takes one or more layers of one shape, dtype and layout")
    k = k_buffers[0]
    if any(t.shape != k.shape or t.dtype != k.dtype for t in (*k_buffers[: len(layers)], *v_buffers[: len(layers)])):
        raise ValueError("decode_layers takes K and V buffers of one shape")
    if k.shape[1:] != (w.kv_heads, w.head_dim) or cis.shape[1:] != (w.head_dim // 2, 2) or w.ln1.shape != (hidden,):
        raise ValueError(f"K/V buffers {tuple(k.shape)}, cis {tuple(cis.shape)} or hidden size {hidden} do not fit "
                         "the layers' weights")
    if w.max_batch is not None and batch > w.max_batch:
        raise ValueError(f"dense weights take decode batches of up to {w.max_batch}, got {batch}")
    if w.qkv.dtype != (torch.float32 if w.packed else dtype):
        raise ValueError(f"{w.qkv.dtype} weights with {dtype} activations")
    table = np.array([(*layer.pointers, kb.data_ptr(), vb.data_ptr())
                      for layer, kb, vb in zip(layers, k_buffers, v_buffers)], dtype=np.int64)
    out = torch.empty_like(embedding)
    _check(_lib().sgl_decode_layers(
        embedding.data_ptr(), out.data_ptr(), len(layers), table.ctypes.data, w.eps, cis.data_ptr(),
        positions.data_ptr(), cis.shape[0], k.shape[0], out_loc.data_ptr(), slots.data_ptr(), slots.shape[1],
        lens.data_ptr(), _ptr(qo_indptr), requests, batch, hidden, w.heads, w.kv_heads, w.head_dim, w.intermediate,
        sm_scale, int(not w.packed), embedding.element_size(), torch.get_num_threads()), "sgl_decode_layers")
    return out
