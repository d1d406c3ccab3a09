"""Fused RMSNorm (same semantics as ``reference.rms_norm_ref``): one program per row.

    y = weight * (x * rsqrt(mean(x^2) + eps)).to(x.dtype)      statistics in fp32

The normalised row is rounded to x's dtype before the weight multiply, as Llama does, so results
match the reference bit for bit up to the order of the fp32 sum.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(
    X,  # [rows, hidden]
    W,  # [hidden]
    Y,  # [rows, hidden]
    stride_x,
    stride_y,
    eps,
    HIDDEN: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)  # [BLOCK]
    mask = offs < HIDDEN
    x = tl.load(X + row * stride_x + offs, mask=mask, other=0.0)  # [BLOCK]
    xf = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(xf * xf, 0) / HIDDEN + eps)
    normed = (xf * rstd).to(x.dtype)  # rounded to x's dtype, as the reference does
    w = tl.load(W + offs, mask=mask, other=0.0)  # [BLOCK]
    y = normed.to(tl.float32) * w.to(tl.float32)
    tl.store(Y + row * stride_y + offs, y.to(Y.dtype.element_ty), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension of x ([..., hidden]); returns the dtype torch would promote to."""
    if not (x.is_floating_point() and weight.is_floating_point()):
        raise TypeError(f"x and weight must be floating point, got {x.dtype} and {weight.dtype}")
    if weight.dim() != 1 or x.dim() < 1 or x.shape[-1] != weight.shape[0]:
        raise ValueError(
            f"weight must be [hidden] matching x's last dim, got x {tuple(x.shape)}, weight {tuple(weight.shape)}"
        )
    if x.device != weight.device:
        raise ValueError(f"x is on {x.device}, weight on {weight.device}")
    if x.stride(-1) != 1 or not weight.is_contiguous():
        raise ValueError("x must be contiguous in its last dimension and weight contiguous")
    hidden = x.shape[-1]
    x2 = x.reshape(-1, hidden)  # [rows, hidden]
    y = torch.empty(
        x2.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device
    )  # [rows, hidden]
    if x2.shape[0] > 0:
        block = triton.next_power_of_2(hidden)
        _rms_norm_kernel[(x2.shape[0],)](
            x2, weight, y, x2.stride(0), y.stride(0), eps,
            HIDDEN=hidden, BLOCK=block, num_warps=min(16, max(1, block // 256)),
        )  # fmt: skip
    return y.view(x.shape)
