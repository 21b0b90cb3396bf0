r"""SeeDNorm kernel (Cai, Zhu, Liu & Min 2025, arXiv 2510.22777; eager module ``replib.nn.seednorm``).

A row of ``D`` features is held as ``heads`` slices of ``D/heads`` (a 2-D block). With
:math:`r = (\tfrac1D\sum x^2 + \epsilon)^{-1/2}` over the whole row, per head :math:`k`
:math:`s_k = \tanh(x_k\cdot\beta_k)`, :math:`G = s\alpha + \gamma`, :math:`y = G \odot x r`.
The backward, with :math:`\hat g = \partial y \odot G` and
:math:`\partial p_k = (1 - s_k^2)\sum_{j\in k} \partial y_j\, x_j r\, \alpha_j`:

.. math:: \partial x = r\hat g - \tfrac{r^3}{D}(\hat g\cdot x)\,x + \partial p_k\,\beta_k,\quad
          \partial\gamma = \textstyle\sum \partial y \odot x r,\quad
          \partial\alpha = \textstyle\sum s\,\partial y \odot x r,\quad
          \partial\beta_k = \textstyle\sum \partial p_k\, x_k

(the first two terms are RMSNorm's backward through :math:`G`, the last the gate's).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import as_rows, grad_programs, num_warps, scratch, tanh


@triton.jit
def _forward(X, W, A, B, Y, RSTD, stride, D, H, DH, eps,
             BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    h = tl.arange(0, BLOCK_H)[:, None]
    j = tl.arange(0, BLOCK_D)[None, :]
    cols = h * DH + j
    m = (h < H) & (j < DH)
    x = tl.load(X + row * stride + cols, mask=m, other=0.0).to(tl.float32)
    r = tl.rsqrt(tl.sum(tl.sum(x * x, axis=1), axis=0) / D + eps)
    beta = tl.load(B + cols, mask=m, other=0.0).to(tl.float32)
    s = tanh(tl.sum(x * beta, axis=1))[:, None]
    gain = s * tl.load(A + cols, mask=m, other=0.0).to(tl.float32) \
        + tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
    tl.store(Y + row * stride + cols, (gain * (x * r)).to(Y.dtype.element_ty), mask=m)
    tl.store(RSTD + row, r)


@triton.jit
def _backward(DY, X, W, A, B, RSTD, DX, DW, DA, DB, stride, D, H, DH, rows, rows_per_program,
              BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    h = tl.arange(0, BLOCK_H)[:, None]
    j = tl.arange(0, BLOCK_D)[None, :]
    cols = h * DH + j
    m = (h < H) & (j < DH)
    first = pid * rows_per_program
    last = min(first + rows_per_program, rows)
    gamma = tl.load(W + cols, mask=m, other=0.0).to(tl.float32)
    alpha = tl.load(A + cols, mask=m, other=0.0).to(tl.float32)
    beta = tl.load(B + cols, mask=m, other=0.0).to(tl.float32)
    dgamma = tl.zeros((BLOCK_H, BLOCK_D), dtype=tl.float32)
    dalpha = tl.zeros((BLOCK_H, BLOCK_D), dtype=tl.float32)
    dbeta = tl.zeros((BLOCK_H, BLOCK_D), dtype=tl.float32)
    offs = (pid * rows_per_program).to(tl.int64) * stride + cols
    for row in range(first, last):
        x = tl.load(X + offs, mask=m, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=m, other=0.0).to(tl.float32)
        r = tl.load(RSTD + row)
        s = tanh(tl.sum(x * beta, axis=1))[:, None]
        dgain = dy * x * r  # dL/dG
        dpre = tl.sum(dgain * alpha, axis=1)[:, None] * (1.0 - s * s)  # dL/d(x_k . beta_k)
        ghat = dy * (s * alpha + gamma)  # dL/d(x r)
        ghx = tl.sum(tl.sum(ghat * x, axis=1), axis=0)
        dx = r * ghat - (r * r * r / D) * ghx * x + dpre * beta
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=m)
        dgamma += dgain
        dalpha += dgain * s
        dbeta += dpre * x
        offs += stride
    tl.store(DW + pid * D + cols, dgamma, mask=m)
    tl.store(DA + pid * D + cols, dalpha, mask=m)
    tl.store(DB + pid * D + cols, dbeta, mask=m)


def _blocks(d: int, heads: int) -> tuple[int, int]:
    return triton.next_power_of_2(heads), triton.next_power_of_2(d // heads)


class SeeDNormFunction(torch.autograd.Function):
    """``apply(x, weight (gamma), alpha, beta, eps, heads)``."""

    @staticmethod
    def forward(ctx, x, weight, alpha, beta, eps, heads):
        x2 = as_rows(x)
        rows, d = x2.shape
        y = torch.empty_like(x2)
        rstd = torch.empty(rows, dtype=torch.float32, device=x.device)
        bh, bd = _blocks(d, heads)
        _forward[(rows,)](x2, weight, alpha, beta, y, rstd, x2.stride(0), d, heads, d // heads, eps,
                          BLOCK_H=bh, BLOCK_D=bd, num_warps=num_warps(bh * bd))
        ctx.save_for_backward(x2, weight, alpha, beta, rstd)
        ctx.shape, ctx.heads = x.shape, heads
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, alpha, beta, rstd = ctx.saved_tensors
        dy2 = as_rows(dy)
        rows, d = x2.shape
        heads = ctx.heads
        dx = torch.empty_like(x2)
        programs, per = grad_programs(x2)
        dw, da, db = (scratch(programs, d, x2, True) for _ in range(3))
        bh, bd = _blocks(d, heads)
        _backward[(programs,)](dy2, x2, weight, alpha, beta, rstd, dx, dw, da, db, x2.stride(0),
                               d, heads, d // heads, rows, per, BLOCK_H=bh, BLOCK_D=bd,
                               num_warps=num_warps(bh * bd))
        return (dx.view(ctx.shape), dw.sum(0).to(weight.dtype), da.sum(0).to(alpha.dtype),
                db.sum(0).to(beta.dtype), None, None)
