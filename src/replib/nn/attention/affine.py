r"""Affine-scaled attention (Bae et al. 2026, "Affine-Scaled Attention: Towards Flexible and Stable
Transformer Attention", arXiv 2602.23057).

After the softmax, each query's attention weights are rescaled by an input-dependent factor
:math:`\alpha` and shifted by a bias :math:`\beta`, so their sum is no longer forced to one:

.. math::
   P = \mathrm{softmax}\!\big(QK^\top/\sqrt{D} + \text{mask}\big),\qquad
   \alpha_{h,i} = \sigma(w_h \cdot x_i + b_h),\qquad
   \beta_{h,i} = (\bar\alpha_h - \alpha_{h,i}) / N_i,

   A_{h,i,j} = \alpha_{h,i} P_{h,i,j} + \beta_{h,i} \quad (j \le i),\qquad
   O_i = \sum_{j \le i} A_{i,j} v_j = \alpha_i\,(PV)_i + (\bar\alpha - \alpha_i)\,
   \tfrac{1}{N_i}\textstyle\sum_{j\le i} v_j .

:math:`\bar\alpha_h` is an exponential moving average of :math:`\alpha` over the batch (momentum
0.9), updated in training mode after the forward pass (the forward uses the value before the
update), frozen in eval. Every row of :math:`A` sums to :math:`\bar\alpha`; with
:math:`\alpha = \bar\alpha = 1` it is softmax attention.

Provenance (no official code exists). The abstract confirms only "scale then bias the softmax
weights". :math:`\alpha = \sigma(\text{linear}(x))`, the EMA with momentum 0.9 and
:math:`\beta = (\bar\alpha-\alpha)/N` come from a secondary reader's notes on the paper (unverified);
the zero-initialised projection (so :math:`\alpha = 0.5` at init) and the EMA buffer initialised
at 0.5 follow a third-party re-implementation (bla_gpt's ``test_affine_scaled_attn.py``: zero
``alpha_proj``, ``alpha_ma`` = 0.5, frozen in eval). Replib's choices: :math:`N_i = i+1`, the keys
query :math:`i` may see, and the bias only on those keys, so the bias never re-opens the future;
the closed form above (any fused kernel plus a causal running mean of :math:`V`) runs in the
registry entry, :func:`affine_scaled_attention` writes out the :math:`T \times T` matrix.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import register_attention
from .base import Attention
from .softmax import causal_mask

EMA_MOMENTUM = 0.9  # (notes, unverified)
ALPHA_INIT = 0.5  # sigmoid(0): the zero-initialised projection's alpha, and the EMA's start


def softmax_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal softmax weights :math:`P` of shape ``(..., T, T)`` (zero above the diagonal)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return scores.masked_fill(~causal_mask(q.shape[-2], q.device), float("-inf")).softmax(-1)


def affine_weights(p: torch.Tensor, alpha: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    r""":math:`A_{ij} = \alpha_i P_{ij} + (\bar\alpha - \alpha_i)/N_i` on allowed keys, 0 on masked.

    ``p``: ``(B, H, T, T)`` causal weights; ``alpha``: ``(B, H, T)``; ``alpha_bar``: ``(H,)``.
    """
    T = p.shape[-1]
    allowed = causal_mask(T, p.device)
    n_keys = torch.arange(1, T + 1, device=p.device, dtype=p.dtype)  # N_i = i + 1
    beta = (alpha_bar.view(1, -1, 1) - alpha) / n_keys
    return (alpha.unsqueeze(-1) * p + beta.unsqueeze(-1)) * allowed


def affine_scaled_attention(q, k, v, alpha, alpha_bar):
    """The written-out reference: ``A @ v`` with the explicit :math:`T \\times T` matrix."""
    return affine_weights(softmax_weights(q, k), alpha, alpha_bar) @ v


def causal_mean(v: torch.Tensor) -> torch.Tensor:
    r""":math:`\frac{1}{i+1}\sum_{j \le i} v_j` along the sequence dimension (``-2``)."""
    count = torch.arange(1, v.shape[-2] + 1, device=v.device, dtype=v.dtype).unsqueeze(-1)
    return v.cumsum(-2) / count


@register_attention("affine")
class AffineScaledAttention(Attention):
    r"""Softmax attention whose weights are scaled by :math:`\alpha(x)` and shifted by :math:`\beta`.

    ``alpha_weight, alpha_bias`` (``d_model -> n_head``, zero-initialised) read the attention's input ``x``;
    ``alpha_bar`` (buffer, one per head) is the EMA of :math:`\alpha`. ``last_alpha`` keeps the
    last forward's :math:`\alpha` (detached) for diagnostics.
    """

    def __init__(self, d_model: int, n_head: int, *, momentum: float = EMA_MOMENTUM,
                 alpha_bar_init: float = ALPHA_INIT, **kw):
        super().__init__(d_model, n_head, **kw)
        self.momentum = momentum
        # plain parameters, not an nn.Linear: TinyGPT's init redraws every Linear, and these
        # must start at zero (alpha = 0.5 for every token)
        self.alpha_weight = nn.Parameter(torch.zeros(n_head, d_model))
        self.alpha_bias = nn.Parameter(torch.zeros(n_head))
        self.register_buffer("alpha_bar", torch.full((n_head,), float(alpha_bar_init)))
        self.last_alpha: torch.Tensor | None = None

    def alpha(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\alpha = \sigma(x W_\alpha + b_\alpha)`, shape ``(B, H, T)``."""
        return torch.sigmoid(F.linear(x, self.alpha_weight, self.alpha_bias)).transpose(1, 2)

    def mix(self, q, k, v, x=None):
        alpha = self.alpha(x)
        alpha_bar = self.alpha_bar.to(v.dtype).view(1, -1, 1, 1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                             dropout_p=self.dropout if self.training else 0.0)
        a = alpha.unsqueeze(-1)
        y = a * out + (alpha_bar - a) * causal_mean(v)
        if self.training:  # after use: the forward saw the EMA before this batch
            with torch.no_grad():
                self.alpha_bar.mul_(self.momentum).add_(
                    (1 - self.momentum) * alpha.detach().mean((0, 2)).to(self.alpha_bar.dtype))
        self.last_alpha = alpha.detach()
        return y
