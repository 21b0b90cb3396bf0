r"""Exact causal softmax attention: the oracle every other kernel is measured against.

.. math:: \mathrm{mix}(q, k, v)_t = \sum_{s \le t} \frac{\exp(q_t \cdot k_s / \sqrt{D})}
          {\sum_{s' \le t} \exp(q_t \cdot k_{s'} / \sqrt{D})}\, v_s

:func:`softmax_attention` is the readable reference (it materialises the :math:`T \times T` scores);
the registry entry runs ``F.scaled_dot_product_attention``, which picks a fused kernel where one
applies. The tests hold the two equal.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import register_attention
from .base import Attention


def causal_mask(T: int, device: torch.device | None = None) -> torch.Tensor:
    """``(T, T)`` boolean, True where query ``t`` may see key ``s`` (``s <= t``)."""
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      causal: bool = True) -> torch.Tensor:
    """Softmax attention written out; ``(..., T, D)`` in and out."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        scores = scores.masked_fill(~causal_mask(q.shape[-2], q.device), float("-inf"))
    return scores.softmax(-1) @ v


@register_attention("softmax")
class SoftmaxAttention(Attention):
    """The standard causal multi-head attention of GPT-2 (the default of TinyGPT)."""

    def mix(self, q, k, v, x=None):
        return F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
