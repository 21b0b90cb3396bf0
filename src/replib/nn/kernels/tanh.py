r"""DyT and BHyT kernels: norms built from a tanh (the eager modules are in ``replib.nn.bhyt``).

**DyT** (Zhu et al. 2025, arXiv 2503.10622), element-wise with a learnable scalar :math:`\alpha`:
:math:`t = \tanh(\alpha x)`, :math:`y = w \odot t + b`;
:math:`\partial x = \partial y \odot w\,\alpha (1-t^2)`,
:math:`\partial\alpha = \sum \partial y \odot w \odot x (1-t^2)`,
:math:`\partial w = \sum \partial y \odot t`, :math:`\partial b = \sum \partial y`.

**BHyT** (Byun et al. 2025, arXiv 2601.09719): :math:`r = (1/\kappa)(\tfrac1d\sum x^2 + \epsilon)^{-1/2}`
per row (or a given ``rstd``), :math:`t = \tanh(\lambda r x)`, :math:`y = w \odot t`. With
:math:`g = \partial y \odot w (1-t^2)`:

.. math:: \partial x = \lambda r\, g + \lambda (g\cdot x)\,\frac{\partial r}{\partial x},\quad
          \frac{\partial r}{\partial x} = -\frac{\kappa^2 r^3}{d}\,x,\quad
          \partial r = \lambda\, g\cdot x \text{ (given rstd)},\quad
          \partial\lambda = \textstyle\sum r\, g\cdot x,\quad
          \partial w = \textstyle\sum \partial y \odot t.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import as_rows, block_size, grad_programs, num_warps, scratch, tanh


@triton.jit
def _dyt_forward(X, ALPHA, W, B, Y, stride, N, HAS_B: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    m = cols < N
    x = tl.load(X + row * stride + cols, mask=m, other=0.0).to(tl.float32)
    a = tl.load(ALPHA).to(tl.float32)
    y = tl.load(W + cols, mask=m, other=0.0).to(tl.float32) * tanh(a * x)
    if HAS_B:
        y = y + tl.load(B + cols, mask=m, other=0.0).to(tl.float32)
    tl.store(Y + row * stride + cols, y.to(Y.dtype.element_ty), mask=m)


@triton.jit
def _dyt_backward(DY, X, ALPHA, W, DX, DALPHA, DW, DB, stride, N, rows, rows_per_program,
                  HAS_B: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    m = cols < N
    first = pid * rows_per_program
    last = min(first + rows_per_program, rows)
    a = tl.load(ALPHA).to(tl.float32)
    w = tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
    da = tl.zeros((BLOCK,), dtype=tl.float32)
    dw = tl.zeros((BLOCK,), dtype=tl.float32)
    db = tl.zeros((BLOCK,), dtype=tl.float32)
    offs = (pid * rows_per_program).to(tl.int64) * stride + cols
    for _ in range(first, last):
        x = tl.load(X + offs, mask=m, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=m, other=0.0).to(tl.float32)
        t = tanh(a * x)
        g = dy * w * (1.0 - t * t)  # dL/d(alpha x)
        tl.store(DX + offs, (g * a).to(DX.dtype.element_ty), mask=m)
        da += g * x
        dw += dy * t
        db += dy
        offs += stride
    tl.store(DALPHA + pid, tl.sum(da, axis=0))
    tl.store(DW + pid * N + cols, dw, mask=m)
    if HAS_B:
        tl.store(DB + pid * N + cols, db, mask=m)


class DyTFunction(torch.autograd.Function):
    """``apply(x, alpha (0-d tensor), weight, bias or None)``."""

    @staticmethod
    def forward(ctx, x, alpha, weight, bias):
        x2 = as_rows(x)
        rows, n = x2.shape
        y = torch.empty_like(x2)
        block = block_size(n)
        _dyt_forward[(rows,)](x2, alpha, weight, x2 if bias is None else bias, y, x2.stride(0), n,
                              HAS_B=bias is not None, BLOCK=block, num_warps=num_warps(block))
        ctx.save_for_backward(x2, alpha, weight, bias)
        ctx.shape = x.shape
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, alpha, weight, bias = ctx.saved_tensors
        dy2 = as_rows(dy)
        rows, n = x2.shape
        dx = torch.empty_like(x2)
        programs, per = grad_programs(x2)
        da = scratch(programs, 1, x2, True)
        dw = scratch(programs, n, x2, True)
        db = scratch(programs, n, x2, bias is not None)
        block = block_size(n)
        _dyt_backward[(programs,)](dy2, x2, alpha, weight, dx, da, dw, db, x2.stride(0), n, rows,
                                   per, HAS_B=bias is not None, BLOCK=block,
                                   num_warps=num_warps(block))
        dbias = db.sum(0).to(bias.dtype) if bias is not None else None
        return dx.view(ctx.shape), da.sum().to(alpha.dtype), dw.sum(0).to(weight.dtype), dbias


@triton.jit
def _bhyt_forward(X, W, LAM, RSTD, Y, stride, N, inv_kappa, eps,
                  OWN_STAT: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    m = cols < N
    x = tl.load(X + row * stride + cols, mask=m, other=0.0).to(tl.float32)
    if OWN_STAT:
        r = tl.rsqrt(tl.sum(x * x, axis=0) / N + eps) * inv_kappa
        tl.store(RSTD + row, r)
    else:
        r = tl.load(RSTD + row)
    lam = tl.load(LAM).to(tl.float32)
    y = tl.load(W + cols, mask=m, other=0.0).to(tl.float32) * tanh(lam * r * x)
    tl.store(Y + row * stride + cols, y.to(Y.dtype.element_ty), mask=m)


@triton.jit
def _bhyt_backward(DY, X, W, LAM, RSTD, DX, DRSTD, DLAM, DW, stride, N, rows, rows_per_program,
                   kappa, OWN_STAT: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    m = cols < N
    first = pid * rows_per_program
    last = min(first + rows_per_program, rows)
    lam = tl.load(LAM).to(tl.float32)
    w = tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
    dlam = tl.zeros((BLOCK,), dtype=tl.float32)
    dw = tl.zeros((BLOCK,), dtype=tl.float32)
    offs = (pid * rows_per_program).to(tl.int64) * stride + cols
    for row in range(first, last):
        x = tl.load(X + offs, mask=m, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=m, other=0.0).to(tl.float32)
        r = tl.load(RSTD + row)
        t = tanh(lam * r * x)
        g = dy * w * (1.0 - t * t)  # dL/d(lam r x)
        gx = tl.sum(g * x, axis=0)
        dx = lam * r * g
        if OWN_STAT:
            dx = dx - (lam * kappa * kappa * r * r * r / N) * gx * x
        else:
            tl.store(DRSTD + row, lam * gx)
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=m)
        dlam += r * g * x
        dw += dy * t
        offs += stride
    tl.store(DLAM + pid, tl.sum(dlam, axis=0))
    tl.store(DW + pid * N + cols, dw, mask=m)


class BHyTFunction(torch.autograd.Function):
    """``apply(x, weight, lam (0-d tensor), rstd or None, kappa, eps)``; with ``rstd`` given (the
    BHyT block's shared statistic) its gradient flows back to it."""

    @staticmethod
    def forward(ctx, x, weight, lam, rstd, kappa, eps):
        x2 = as_rows(x)
        rows, n = x2.shape
        y = torch.empty_like(x2)
        own = rstd is None
        r = (torch.empty(rows, dtype=torch.float32, device=x.device) if own
             else rstd.reshape(rows).to(torch.float32).contiguous())
        block = block_size(n)
        _bhyt_forward[(rows,)](x2, weight, lam, r, y, x2.stride(0), n, 1.0 / kappa, eps,
                               OWN_STAT=own, BLOCK=block, num_warps=num_warps(block))
        ctx.save_for_backward(x2, weight, lam, r)
        ctx.shape, ctx.kappa, ctx.rstd = x.shape, kappa, None if own else (rstd.shape, rstd.dtype)
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, lam, r = ctx.saved_tensors
        dy2 = as_rows(dy)
        rows, n = x2.shape
        own = ctx.rstd is None
        dx = torch.empty_like(x2)
        programs, per = grad_programs(x2)
        dr = None if own else torch.empty(rows, dtype=torch.float32, device=x2.device)
        dlam = scratch(programs, 1, x2, True)
        dw = scratch(programs, n, x2, True)
        block = block_size(n)
        _bhyt_backward[(programs,)](dy2, x2, weight, lam, r, dx, dlam if own else dr, dlam, dw,
                                    x2.stride(0), n, rows, per, ctx.kappa, OWN_STAT=own,
                                    BLOCK=block, num_warps=num_warps(block))
        drstd = None if own else dr.view(ctx.rstd[0]).to(ctx.rstd[1])
        return (dx.view(ctx.shape), dw.sum(0).to(weight.dtype), dlam.sum().to(lam.dtype), drstd,
                None, None)
