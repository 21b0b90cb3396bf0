r"""LayerNorm kernel (Ba, Kiros & Hinton 2016, arXiv 1607.06450), as ``F.layer_norm``.

Per row: :math:`\mu = \tfrac1d\sum x`, :math:`r = (\tfrac1d\sum (x-\mu)^2 + \epsilon)^{-1/2}`,
:math:`\hat x = (x-\mu) r`, :math:`y = w \odot \hat x + b`. With :math:`g = \partial y \odot w`:

.. math:: \partial x = r\,\big(g - \overline{g} - \hat x\,\overline{g \odot \hat x}\big),\qquad
          \partial w = \textstyle\sum_{\text{rows}} \partial y \odot \hat x,\qquad
          \partial b = \textstyle\sum_{\text{rows}} \partial y

(bars are means over the row), as in Triton's layer-norm tutorial.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import as_rows, block_size, grad_programs, num_warps, scratch


@triton.jit
def _forward(X, W, B, Y, MEAN, RSTD, stride, N, eps,
             HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    m = cols < N
    x = tl.load(X + row * stride + cols, mask=m, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / N
    xc = tl.where(m, x - mean, 0.0)
    r = tl.rsqrt(tl.sum(xc * xc, axis=0) / N + eps)  # biased variance
    y = xc * r
    if HAS_W:
        y = y * tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
    if HAS_B:
        y = y + tl.load(B + cols, mask=m, other=0.0).to(tl.float32)
    tl.store(Y + row * stride + cols, y.to(Y.dtype.element_ty), mask=m)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, r)


@triton.jit
def _backward(DY, X, W, MEAN, RSTD, DX, DW, DB, stride, N, rows, rows_per_program,
              HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    m = cols < N
    first = pid * rows_per_program
    last = min(first + rows_per_program, rows)
    if HAS_W:
        w = tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK,), dtype=tl.float32)
    db = tl.zeros((BLOCK,), dtype=tl.float32)
    offs = (pid * rows_per_program).to(tl.int64) * stride + cols
    for row in range(first, last):
        x = tl.load(X + offs, mask=m, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=m, other=0.0).to(tl.float32)
        r = tl.load(RSTD + row)
        xhat = tl.where(m, (x - tl.load(MEAN + row)) * r, 0.0)
        g = dy * w if HAS_W else dy
        dx = r * (g - tl.sum(g, axis=0) / N - xhat * (tl.sum(g * xhat, axis=0) / N))
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=m)
        dw += dy * xhat
        db += dy
        offs += stride
    if HAS_W:
        tl.store(DW + pid * N + cols, dw, mask=m)
    if HAS_B:
        tl.store(DB + pid * N + cols, db, mask=m)


class LayerNormFunction(torch.autograd.Function):
    """``apply(x, weight or None, bias or None, eps)``."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        x2 = as_rows(x)
        rows, n = x2.shape
        y = torch.empty_like(x2)
        mean = torch.empty(rows, dtype=torch.float32, device=x.device)
        rstd = torch.empty_like(mean)
        block = block_size(n)
        _forward[(rows,)](x2, x2 if weight is None else weight, x2 if bias is None else bias, y,
                          mean, rstd, x2.stride(0), n, eps, HAS_W=weight is not None,
                          HAS_B=bias is not None, BLOCK=block, num_warps=num_warps(block))
        ctx.save_for_backward(x2, weight, bias, mean, rstd)
        ctx.shape = x.shape
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, bias, mean, rstd = ctx.saved_tensors
        dy2 = as_rows(dy)
        rows, n = x2.shape
        dx = torch.empty_like(x2)
        programs, per = grad_programs(x2)
        dw = scratch(programs, n, x2, weight is not None)
        db = scratch(programs, n, x2, bias is not None)
        block = block_size(n)
        _backward[(programs,)](dy2, x2, x2 if weight is None else weight, mean, rstd, dx, dw, db,
                               x2.stride(0), n, rows, per, HAS_W=weight is not None,
                               HAS_B=bias is not None, BLOCK=block, num_warps=num_warps(block))
        dweight = dw.sum(0).to(weight.dtype) if weight is not None else None
        dbias = db.sum(0).to(bias.dtype) if bias is not None else None
        return dx.view(ctx.shape), dweight, dbias, None
