"""Linear layers for the CPU path through oneDNN.

Two routes, picked by the weight:

* bf16 weights on a CPU with native bf16 (AMX or AVX512-BF16, see cpu_features) are packed once, at load,
  into oneDNN's blocked layout (`pack_weight`); the packed tensor replaces the dense one, so the model holds
  one copy. Measured on this repository's 2-core AMX Xeon (noisy, shared; the linears of 8 Qwen2.5-0.5B
  layers): packed weights run 1.3-1.4x faster than F.linear at 1 to 64 rows and are level or better at 512
  to 2,048; the bf16 lm-head at one row takes 13 ms against F.linear's 19.
* dense weights (fp32, fp16, bf16 without native support) stay as they are: a few rows go to F.linear,
  whose GEMV reads fp32 weights near memory speed; from `min_rows(dtype)` rows on, oneDNN's matmul wins
  on large weights (fp32 at 4 to 16 rows: up to 1.3x, because torch's BLAS switches to a slow GEMM there).
  oneDNN costs about 40 us a call on top, so weights under `MIN_ONEDNN_WEIGHT` elements (the embedded
  model's: 0.1-0.4 M) stay on F.linear at every row count: 2-4x faster there at 4-23 rows.

Where the C kernels run (cpu_native: AVX512-BF16 and a C compiler), batches of up to `cpu_native.gemv_batch`
rows (decode: 7 in bf16, 8 in fp32) of bf16 and fp32 Linears go to the C GEMV, which streams dense rows at
memory speed (bf16: about 1.2x oneDNN's packed GEMV over a Qwen2.5-0.5B step; fp32: level with MKL's at one row,
1.6x torch's route at four), and the MLP's gate-up projection fuses SiLU-and-multiply into it
(`Linear.silu_mul`); more rows go to `linear`. For that a bf16 Linear keeps its dense weight as well as the
packed one. That costs a second copy of the layer weights, so it is kept only while that copy takes at most a
sixth of the machine's memory (`keeps_dense`); SGLBENCH_NATIVE_KERNELS=0 always keeps one.

Where torch was built without oneDNN, or its ops refuse the input, everything stays on F.linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sglbench.kernel import cpu_features, cpu_native

MIN_ROWS = 16  # dense weights below this many rows go to F.linear (fp16, unpacked bf16)
MIN_ONEDNN_WEIGHT = 1 << 21  # dense weights smaller than this (elements) never go to oneDNN
_MIN_ROWS_BY_DTYPE = {torch.float32: 4}  # fp32: torch's GEMV is fast up to 3 rows, its GEMM slow from 4
PACKED_DTYPES = (torch.bfloat16,)  # fp16 packed gains little without AMX-FP16 and loses at one row
_available: dict[torch.dtype, bool] = {}  # per dtype, probed on first use
_packing: dict[torch.dtype, bool] = {}


def min_rows(dtype: torch.dtype) -> int:
    """Rows from which a dense-weight linear goes through oneDNN rather than F.linear."""
    return _MIN_ROWS_BY_DTYPE.get(dtype, MIN_ROWS)


def onednn_available(dtype: torch.dtype) -> bool:
    """Whether torch's oneDNN linear runs dtype here and gives right numbers (probed once)."""
    if dtype not in _available:
        try:
            x, w = torch.ones(MIN_ROWS, 8, dtype=dtype), torch.ones(4, 8, dtype=dtype)
            _available[dtype] = bool(torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "").eq(8).all())
        except (AttributeError, RuntimeError, NotImplementedError):
            _available[dtype] = False
    return _available[dtype]


def packing_available(dtype: torch.dtype) -> bool:
    """Whether weights of dtype are packed on this machine: a dtype in PACKED_DTYPES, a CPU that runs it
    natively, and a torch whose oneDNN packs and multiplies it correctly (probed once)."""
    if dtype not in _packing:
        ok = dtype in PACKED_DTYPES and cpu_features.detect().fast_bf16
        if ok:
            try:
                w = torch.arange(32, dtype=torch.float32).reshape(4, 8).to(dtype)
                x = torch.ones(3, 8, dtype=dtype)
                packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
                out = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
                ok = bool(torch.equal(out, F.linear(x, w))) and torch.equal(packed.to_dense(), w)
            except (AttributeError, RuntimeError, NotImplementedError):
                ok = False
        _packing[dtype] = ok
    return _packing[dtype]


def pack_weight(weight: torch.Tensor) -> torch.Tensor | None:
    """weight [out, in] in oneDNN's blocked layout for `linear`, or None where it is not packed."""
    if weight.device.type != "cpu" or weight.dim() != 2 or weight.is_mkldnn or not packing_available(weight.dtype):
        return None
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)


DENSE_COPY_SHARE = 1 / 6  # the most of the machine's memory that the second (dense) weight copy may take


def keeps_dense(dtype: torch.dtype, extra_bytes: int = 0) -> bool:
    """Whether packed Linears of dtype also keep their dense weights, for the C GEMV (see module doc):
    extra_bytes, the dense copies' size, must stay within DENSE_COPY_SHARE of the machine's memory."""
    memory = cpu_features.physical_memory_bytes()
    return (dtype == torch.bfloat16 and cpu_native.available()
            and (memory is None or extra_bytes <= memory * DENSE_COPY_SHARE))


def _gemv_fits(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype in cpu_native.GEMV_DTYPES and weight.dtype == x.dtype
            and not weight.is_mkldnn and 0 < x.numel() <= cpu_native.gemv_batch(x.dtype) * x.shape[-1]
            and weight.is_contiguous() and cpu_native.available())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T + bias, as F.linear: packed weights (`pack_weight`) at any row count, dense ones of at
    least MIN_ONEDNN_WEIGHT elements on oneDNN for CPU batches of at least `min_rows` rows."""
    if weight.is_mkldnn:
        rows = x.reshape(-1, x.shape[-1]).contiguous()
        out = torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "none", [], "")
        return out.reshape(*x.shape[:-1], weight.shape[0])
    if (x.device.type != "cpu" or x.dim() != 2 or x.shape[0] < min_rows(x.dtype) or weight.dtype != x.dtype
            or weight.numel() < MIN_ONEDNN_WEIGHT or not onednn_available(x.dtype)):
        return F.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")


class Linear(nn.Linear):
    """nn.Linear whose forward goes through the C GEMV (a few bf16 rows, dense weight) or `linear`. `pack()`
    swaps the weight for its packed form in place, or keeps both (`keeps_dense`); the state dict still reads
    and writes the dense weight."""

    packed_weight: torch.Tensor | None = None  # the packed copy kept beside a dense weight (keeps_dense)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _gemv_fits(x, self.weight):
            rows = x.reshape(-1, x.shape[-1])
            return cpu_native.gemv(rows, self.weight, self.bias).reshape(*x.shape[:-1], self.weight.shape[0])
        return linear(x, self.weight if self.packed_weight is None else self.packed_weight, self.bias)

    def silu_mul(self, x: torch.Tensor) -> torch.Tensor:
        """F.silu(gate) * up, gate and up being this (gate-up) projection's two halves; fused into the C GEMV
        where it runs."""
        if _gemv_fits(x, self.weight):
            rows = x.reshape(-1, x.shape[-1])
            return cpu_native.gemv_silu_mul(rows, self.weight, self.bias).reshape(*x.shape[:-1], -1)
        gate_up = self(x)
        rows = gate_up.reshape(-1, gate_up.shape[-1])
        if cpu_native.silu_mul_fits(rows):  # more rows, or fp32: the activation in one C pass, not two ops
            return cpu_native.silu_mul(rows).reshape(*gate_up.shape[:-1], -1)
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate).mul_(up)

    @property
    def packed(self) -> bool:
        return self.weight.is_mkldnn or self.packed_weight is not None

    def pack(self, keep_dense: bool | None = None) -> bool:
        """Pack the weight where that is faster (see module doc): in place of the dense one, or beside it
        where keep_dense (default: `keeps_dense` for this layer's weight alone); whether it was packed."""
        if self.packed:
            return False
        packed = pack_weight(self.weight)
        if packed is None:
            return False
        if keep_dense if keep_dense is not None else keeps_dense(self.weight.dtype, self.weight.nbytes):
            self.packed_weight = packed
        else:
            self.weight = nn.Parameter(packed, requires_grad=False)
        return True

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.packed:
            destination[prefix + "weight"] = self.weight.to_dense()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        if not self.packed:
            return super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                                 unexpected_keys, error_msgs)
        self.weight = nn.Parameter(self.weight.to_dense(), requires_grad=False) if self.weight.is_mkldnn else self.weight
        self.packed_weight = None
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self.pack()
        return None

