r"""SeeDNorm: self-rescaled dynamic normalisation (Cai, Zhu, Liu & Min 2025, arXiv 2510.22777).

An RMSNorm whose per-feature gain depends on the input. For a token :math:`x\in\mathbb R^D` with
parameters :math:`\gamma,\alpha,\beta\in\mathbb R^D`:

.. math::
    \mathrm{RMS}(x) = \sqrt{\tfrac1D\textstyle\sum_j x_j^2 + \epsilon},\qquad
    s = \tanh(x\cdot\beta),\qquad
    \mathrm{SeeDNorm}(x) = (s\,\alpha + \gamma)\odot\frac{x}{\mathrm{RMS}(x)}

:math:`s` is one scalar per token, computed from the *raw* (un-normalised) ``x``, so the norm of
the input re-enters the forward pass that RMSNorm's division removes; ``tanh`` keeps the gain in
:math:`\gamma\pm|\alpha|`. The backward pass is plain autograd (exact). Its Jacobian, with
:math:`G = s\alpha+\gamma` and :math:`r=\mathrm{RMS}(x)`, is (see :func:`seednorm_jacobian`)

.. math::
    \frac{\partial\,\mathrm{out}}{\partial x} = \frac{\mathrm{diag}(G)}{r}
        \Big(I - \frac{x x^\top}{D r^2}\Big) + \frac{\alpha\odot x}{r}\,(1-s^2)\,\beta^\top

whose first term is RMSNorm's Jacobian (scaled by :math:`G`): it shrinks as :math:`1/\lVert x\rVert`
grows, the "norm-adaptive gradient" the paper contrasts with DyT (registry entry ``dyt``, defined
with chapter 14), whose Jacobian :math:`\alpha\,\mathrm{diag}(\gamma\odot(1-\tanh^2(\alpha x)))`
vanishes where the tanh saturates.

**Multi-head variant** (``heads=h``): ``D`` is split into ``h`` slices of ``D/h`` features, each
with its own scalar :math:`s_k=\tanh(x_k\cdot\beta_k)` scaling its own slice,
:math:`\mathrm{out}_k=(s_k\alpha_k+\gamma_k)\odot x_k/\mathrm{RMS}(x)`. ``heads=1`` is the plain layer.

Stability measures (the paper analyses "potential instability" and proposes remedies; only the
multi-head split is confirmed by the sources we could reach):

- ``heads``: the multi-head split above;
- no weight decay on :math:`\gamma,\alpha,\beta` (they are 1-D, and the book's AdamW groups put
  1-D parameters in the no-decay group); UNVERIFIED as the paper's choice, it is ours.

UNVERIFIED implementation choices (no official code exists; the paper's full text was not
reachable), recorded as constructor arguments:

- RMS over the full ``D`` also in the multi-head variant (not per head);
- initialisation :math:`\gamma=1,\ \alpha=1,\ \beta=0` (``alpha_init=1, beta_std=0``): the layer is
  exactly RMSNorm at initialisation, and :math:`\partial L/\partial\beta\neq0` because
  :math:`\alpha\neq0`. (:math:`\alpha=\beta=0` would be a dead start: both gradients vanish.)
  The alternative ``alpha_init=0, beta_std>0`` draws :math:`\beta\sim\mathcal N(0,\sigma^2)`;
- :math:`\epsilon = 10^{-6}` (the LLaMA RMSNorm default).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ReplibError
from . import kernels
from .norms import register_norm


@register_norm("seednorm")
class SeeDNorm(nn.Module):
    """SeeDNorm over the last dimension; see the module docstring for the equations.

    ``weight`` is :math:`\\gamma`, ``alpha`` is :math:`\\alpha`, ``beta`` is :math:`\\beta` (all
    shape ``(dim,)``): ``2 * dim`` parameters more than RMSNorm.
    """

    def __init__(self, dim: int, eps: float = 1e-6, heads: int = 1, alpha_init: float = 1.0,
                 beta_std: float = 0.0, gamma_init: float = 1.0):
        super().__init__()
        if heads < 1 or dim % heads:
            raise ReplibError(f"SeeDNorm: dim={dim} is not divisible into heads={heads}")
        self.dim, self.eps, self.heads = dim, eps, heads
        self.weight = nn.Parameter(torch.full((dim,), float(gamma_init)))  # gamma
        self.alpha = nn.Parameter(torch.full((dim,), float(alpha_init)))
        self.beta = nn.Parameter(torch.randn(dim) * beta_std if beta_std > 0 else torch.zeros(dim))

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        r"""The per-token (per-head) scalars :math:`s_k=\tanh(x_k\cdot\beta_k)`, shape ``(..., heads)``."""
        xs = x.unflatten(-1, (self.heads, self.dim // self.heads))
        return torch.tanh((xs * self.beta.view(self.heads, -1)).sum(-1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if kernels.use_kernels(x):  # the fused Triton kernel on CUDA
            return kernels.seednorm(x, self.weight, self.alpha, self.beta, self.eps, self.heads)
        # y = x / RMS(x), RMS over all D features (also with heads > 1: an UNVERIFIED choice)
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        s = self.gate(x).unsqueeze(-1)  # (..., heads, 1)
        h = self.heads
        gain = s * self.alpha.view(h, -1) + self.weight.view(h, -1)  # G = s alpha + gamma
        return (gain * y.unflatten(-1, (h, self.dim // h))).flatten(-2)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, heads={self.heads}"


def seednorm_jacobian(x: torch.Tensor, gamma: torch.Tensor, alpha: torch.Tensor,
                      beta: torch.Tensor, eps: float) -> torch.Tensor:
    r"""Closed-form Jacobian :math:`\partial\,\mathrm{out}/\partial x` of single-head SeeDNorm for
    one token ``x`` of shape ``(D,)``:

    .. math:: J = \frac{\mathrm{diag}(G)}{r}\Big(I-\frac{xx^\top}{Dr^2}\Big)
                + \frac{\alpha\odot x}{r}(1-s^2)\beta^\top,\quad s=\tanh(x\cdot\beta),\ G=s\alpha+\gamma
    """
    D = x.shape[-1]
    r = torch.sqrt(x.pow(2).mean() + eps)
    s = torch.tanh(x @ beta)
    G = s * alpha + gamma
    eye = torch.eye(D, dtype=x.dtype, device=x.device)
    return (G[:, None] / r) * (eye - torch.outer(x, x) / (D * r * r)) \
        + torch.outer(alpha * x / r, beta) * (1 - s * s)


__all__ = ["SeeDNorm", "seednorm_jacobian"]
