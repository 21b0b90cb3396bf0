r"""Attention sinks, gated attention and GatedNorm: explicit ways to rescale what a layer writes.

Chapter 13 (Qwen team 2026, "A Unified View of Attention and Residual Sinks: Outlier-Driven
Rescaling is Essential for Transformer Training", arXiv 2601.22966) argues that attention sinks
(a token whose huge logit soaks up attention mass while its value is small) and residual sinks (a
fixed hidden dimension with huge activations) are how a model *rescales* the rest through the
following normalisation (softmax, RMSNorm), and that explicit, bounded rescaling removes the need
for the outliers. No official code was found; the equations below follow the paper's text as stored
in the third-party reproduction kubotadaichi/gated-norm-experiment (``paper_content.txt`` at commit
d887f77c6dc411c2abe725942ee437405af901e1, Sec. 3.3-3.4: GatedNorm "applied after every
normalization layer", :math:`y_g = \sigma(W_{up}\,\mathrm{swish}(W_{down}\,y))`, :math:`y' = y_g \odot y`).

**Learned sink column** (the attention-sink baseline of chapter 19; a per-head logit :math:`s_h`
with a zero value vector, as in gpt-oss):

.. math:: [p_{\text{sink}}, P_{i,1..i}] = \mathrm{softmax}\big(s_h,\ q_i k_1^\top/\sqrt D, \dots,
          q_i k_i^\top/\sqrt D\big), \qquad O_i = \textstyle\sum_{j\le i} P_{ij} v_j,

so the weights on real keys sum to :math:`1 - p_{\text{sink}} = 1/(1 + e^{s_h}/Z_i)` with
:math:`Z_i` the row's partition sum: a sink scales every other weight down by the same factor.

**Gated attention** (GA, Qiu et al. 2025, arXiv 2505.06708): an elementwise, head-specific sigmoid
gate on the attention output, computed from the attention's (pre-normed) input :math:`X`:

.. math:: Y' = Y \odot \sigma(X W_\theta), \qquad W_\theta \in \mathbb R^{d_{model} \times d_{attn}}.

**GatedNorm** (norm ``"gatednorm"``): RMSNorm followed by a low-rank elementwise sigmoid gate,

.. math:: y = \mathrm{RMSNorm}(x) \odot \lambda,\qquad g = \sigma\big(W_{up}\,
          \mathrm{swish}(W_{down}\, y)\big),\qquad y' = g \odot y,

:math:`W_{down}: d \to r`, :math:`W_{up}: r \to d`, no biases (:math:`2dr` parameters per norm;
the paper's :math:`r = 16`; replib's default :math:`r = d/16` below :math:`d = 256`, per the spec).

**PreAffine** (norm ``"preaffine"``): a learnable per-coordinate scale *before* the RMSNorm, so a
parameter rather than an activation can carry the outlier: :math:`y = \mathrm{RMSNorm}(\lambda_1
\odot x)`, :math:`\lambda_1 = 1` at init (implied by the paper's analysis of its deviations from 1).

Inits (not stated in the paper): the gate and GatedNorm matrices are drawn with std 0.02 (TinyGPT
redraws every ``nn.Linear`` so anyway), so every gate starts near 0.5; the sink logit starts at 0.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..norms import register_norm
from . import register_attention
from .base import Attention
from .softmax import causal_mask

INIT_STD = 0.02


def sink_weights(q: torch.Tensor, k: torch.Tensor,
                 sink: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over a sink column and the causal keys: ``(P, p_sink)``.

    ``q, k``: ``(B, H, T, D)``; ``sink``: ``(H,)`` logits. ``P`` is ``(B, H, T, T)`` (zero above
    the diagonal), ``p_sink`` ``(B, H, T)``; every row has ``P.sum(-1) + p_sink == 1``.
    """
    B, H, T, _ = q.shape
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~causal_mask(T, q.device), float("-inf"))
    col = sink.to(scores.dtype).view(1, H, 1, 1).expand(B, H, T, 1)
    w = torch.cat([col, scores], dim=-1).softmax(-1)
    return w[..., 1:], w[..., 0]


@register_attention("sink")
class SinkAttention(Attention):
    """Causal softmax attention with one learned sink logit per head (its value is zero)."""

    def __init__(self, d_model: int, n_head: int, **kw):
        super().__init__(d_model, n_head, **kw)
        self.sink = nn.Parameter(torch.zeros(n_head))

    def mix(self, q, k, v, x=None):
        p, _ = sink_weights(q, k, self.sink)
        if self.training and self.dropout:
            p = F.dropout(p, self.dropout)
        return p @ v


@register_attention("gated")
class GatedAttention(Attention):
    r"""Softmax attention times an elementwise, head-specific gate :math:`\sigma(x W_\theta)`."""

    def __init__(self, d_model: int, n_head: int, **kw):
        super().__init__(d_model, n_head, **kw)
        self.gate = nn.Linear(d_model, self.n_head * self.head_dim, bias=False)
        nn.init.normal_(self.gate.weight, std=INIT_STD)

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`\\sigma(x W_\\theta)` as ``(B, H, T, D)``, each entry in (0, 1)."""
        B, T, _ = x.shape
        return torch.sigmoid(self.gate(x)).view(B, T, self.n_head, self.head_dim).transpose(1, 2)

    def mix(self, q, k, v, x=None):
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return y * self.gates(x)


def default_rank(dim: int) -> int:
    """The gate's bottleneck: the paper's 16, or ``d/16`` below ``d = 256`` (at least 1)."""
    return 16 if dim >= 256 else max(1, dim // 16)


@register_norm("gatednorm")
class GatedNorm(nn.Module):
    r"""RMSNorm, then a low-rank elementwise sigmoid gate: :math:`\sigma(W_{up}\,\mathrm{swish}(W_{down} y)) \odot y`."""

    def __init__(self, dim: int, rank: int | None = None, eps: float = 1e-5):
        super().__init__()
        self.dim, self.eps, self.rank = dim, eps, rank or default_rank(dim)
        self.weight = nn.Parameter(torch.ones(dim))
        self.down = nn.Linear(dim, self.rank, bias=False)
        self.up = nn.Linear(self.rank, dim, bias=False)
        for lin in (self.down, self.up):
            nn.init.normal_(lin.weight, std=INIT_STD)

    def gate(self, y: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.up(F.silu(self.down(y))))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        y = F.rms_norm(x, (self.dim,), self.weight, self.eps)
        return self.gate(y) * y

    def extra_repr(self) -> str:
        return f"{self.dim}, rank={self.rank}, eps={self.eps}"


@register_norm("preaffine")
class PreAffineRMSNorm(nn.Module):
    r"""RMSNorm of a learnably rescaled input: :math:`\lambda \odot \mathrm{RMSNorm}(\lambda_1 \odot x)`."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.pre_weight = nn.Parameter(torch.ones(dim))
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return F.rms_norm(self.pre_weight * x, (self.dim,), self.weight, self.eps)
