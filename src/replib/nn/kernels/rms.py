r"""RMSNorm and CRMSNorm kernels (one kernel pair, ``COMPRESSED`` selects the statistic).

With :math:`g = \partial L/\partial y \odot w` and :math:`r` the saved reciprocal RMS:

* RMSNorm (Zhang & Sennrich 2019): :math:`r = (\tfrac1d\sum x^2 + \epsilon)^{-1/2}`,
  :math:`y = w \odot x r`, :math:`\partial x = r g - \tfrac{r^3}{d} (g\cdot x)\, x`;
* CRMSNorm (Jiang et al. 2023, arXiv 2305.14858): :math:`r = ((\sum x^2 + S^2)/(d+1) + \epsilon)^{-1/2}`
  with :math:`S = \sum x`, and :math:`\partial x = r g - \tfrac{r^3}{d+1} (g\cdot x)(x + S)`;

and :math:`\partial w = \sum_{\text{rows}} \partial y \odot x r` for both.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import as_rows, block_size, grad_programs, num_warps, scratch


@triton.jit
def _forward(X, W, Y, RSTD, stride, N, eps,
             HAS_W: tl.constexpr, COMPRESSED: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    m = cols < N
    x = tl.load(X + row * stride + cols, mask=m, other=0.0).to(tl.float32)
    sq = tl.sum(x * x, axis=0)
    if COMPRESSED:
        s = tl.sum(x, axis=0)
        ms = (sq + s * s) / (N + 1)
    else:
        ms = sq / N
    r = tl.rsqrt(ms + eps)
    y = x * r
    if HAS_W:
        y = y * tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
    tl.store(Y + row * stride + cols, y.to(Y.dtype.element_ty), mask=m)
    tl.store(RSTD + row, r)


@triton.jit
def _backward(DY, X, W, RSTD, DX, DW, stride, N, rows, rows_per_program,
              HAS_W: tl.constexpr, COMPRESSED: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    m = cols < N
    first = pid * rows_per_program
    last = min(first + rows_per_program, rows)
    if HAS_W:
        w = tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK,), dtype=tl.float32)
    offs = (pid * rows_per_program).to(tl.int64) * stride + cols
    for row in range(first, last):
        x = tl.load(X + offs, mask=m, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=m, other=0.0).to(tl.float32)
        r = tl.load(RSTD + row)
        g = dy * w if HAS_W else dy
        gx = tl.sum(g * x, axis=0)
        if COMPRESSED:
            dx = r * g - (r * r * r / (N + 1)) * gx * (x + tl.sum(x, axis=0))
        else:
            dx = r * g - (r * r * r / N) * gx * x
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=m)
        if HAS_W:
            dw += dy * x * r
        offs += stride
    if HAS_W:
        tl.store(DW + pid * N + cols, dw, mask=m)


class RMSNormFunction(torch.autograd.Function):
    """``apply(x, weight or None, eps, compressed)``."""

    @staticmethod
    def forward(ctx, x, weight, eps, compressed):
        x2 = as_rows(x)
        rows, n = x2.shape
        y = torch.empty_like(x2)
        rstd = torch.empty(rows, dtype=torch.float32, device=x.device)
        block = block_size(n)
        _forward[(rows,)](x2, x2 if weight is None else weight, y, rstd, x2.stride(0), n, eps,
                          HAS_W=weight is not None, COMPRESSED=compressed, BLOCK=block,
                          num_warps=num_warps(block))
        ctx.save_for_backward(x2, weight, rstd)
        ctx.compressed, ctx.shape = compressed, x.shape
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, rstd = ctx.saved_tensors
        dy2 = as_rows(dy)
        rows, n = x2.shape
        dx = torch.empty_like(x2)
        programs, per = grad_programs(x2)
        dw = scratch(programs, n, x2, weight is not None)
        block = block_size(n)
        _backward[(programs,)](dy2, x2, x2 if weight is None else weight, rstd, dx, dw,
                               x2.stride(0), n, rows, per, HAS_W=weight is not None,
                               COMPRESSED=ctx.compressed, BLOCK=block, num_warps=num_warps(block))
        dweight = dw.sum(0).to(weight.dtype) if weight is not None else None
        return dx.view(ctx.shape), dweight, None, None
