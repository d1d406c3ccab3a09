"""Linear layers for the CPU path through oneDNN.

torch's default fp32 CPU GEMM (MKL) leaves much of an AVX-512 AMD core unused: on this repository's
2-core EPYC, oneDNN multiplies a [6000, 256] x [256, 1376] projection in 9 ms against 19 ms. oneDNN costs
~10 us more per call, so a handful of rows (decode at batch 1) stays on F.linear. Where torch was built
without oneDNN, or its linear op refuses the input, everything stays on F.linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MIN_ROWS = 16  # below this, F.linear's lower call overhead wins
_available: dict[torch.dtype, bool] = {}  # per dtype, probed on first use


def _onednn_available(dtype: torch.dtype) -> bool:
    if dtype not in _available:
        try:
            x, w = torch.ones(MIN_ROWS, 8, dtype=dtype), torch.ones(4, 8, dtype=dtype)
            _available[dtype] = bool(torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "").eq(8).all())
        except (AttributeError, RuntimeError, NotImplementedError):
            _available[dtype] = False
    return _available[dtype]


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T + bias, as F.linear, on oneDNN for CPU batches of at least MIN_ROWS rows."""
    if (x.device.type != "cpu" or x.dim() != 2 or x.shape[0] < MIN_ROWS or weight.dtype != x.dtype
            or not _onednn_available(x.dtype)):
        return F.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")


class Linear(nn.Linear):
    """nn.Linear whose forward goes through `linear` (same parameters, same state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
