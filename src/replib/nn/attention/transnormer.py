r"""TransNormerLLM's token mixer: decayed linear attention, SRMSNorm, an output gate
(Qin et al. 2023, "Scaling TransNormer to 175 Billion Parameters", arXiv 2307.14995), and
Lightning Attention's block form (Qin et al. 2024, arXiv 2401.04658).

Per head :math:`h` with slope :math:`s_h` (decay per step :math:`\lambda_h = e^{-s_h}`), after
:math:`q = \mathrm{SiLU}(x W_q)`, :math:`k = \mathrm{SiLU}(x W_k)`, :math:`v = x W_v`, :math:`u = x W_u`:

.. math:: o_t = \sum_{j \le t} e^{-s_h (t-j)}\, (q_t \cdot k_j)\, v_j, \qquad
          y = \mathrm{SRMSNorm}\big(\mathrm{concat}_h\, o\big) \odot u, \qquad
          \mathrm{SRMSNorm}(x) = \frac{x}{\sqrt{\tfrac1d \lVert x\rVert^2 + \epsilon}}

(no softmax, no denominator, no scale: the norm after the mix keeps the output's size). The
mix is :func:`replib.nn.attention.linear.decayed` in three equal forms: the masked parallel
product (the reference ``linear_attn`` of OpenNLPLab/lightning-attention @0ae41be,
``lightning_attn/ops/torch/linear_attention.py``: ``((q k^T) * M) v``), Lightning Attention's
blocks (intra-block masked product, inter-block recurrent state; the ``inference`` prefill loop
of TransNormerLLM's ``modeling_transnormer.py``), and the constant-memory decoding recurrence
:math:`S_t = \lambda S_{t-1} + k_t^\top v_t`, :math:`o_t = q_t S_t`.

Slopes are ALiBi's (:func:`alibi_slopes`: :math:`2^{-8(h+1)/H}` for :math:`H` a power of two) times
:math:`1 - l/(L-1) + 10^{-5}` in layer :math:`l` of :math:`L` (:func:`layer_slopes`), so the last
layer barely decays. SRMSNorm (``srmsnorm`` in the norm registry) follows lightning-attention
@f4215c7 ``lightning_attn/ops/torch/srmsnorm.py``: :math:`\epsilon = 10^{-6}` inside the root, no
weight, computed in (at least) float32. The HF module puts no activation on ``v`` or ``u``; LRPE is
off by default there and not implemented here.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ReplibError
from ..norms import register_norm
from . import register_attention
from .base import Attention
from .linear import FORMS, decayed, decayed_chunked


def alibi_slopes(n_head: int) -> torch.Tensor:
    """ALiBi's geometric slopes (Press et al. 2022): :math:`2^{-8(h+1)/H}`, and for ``H`` not a power
    of two the slopes of the nearest lower power of two followed by every other slope of twice it."""
    def power_of_2(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

    if n_head < 1:
        raise ReplibError(f"n_head must be >= 1, got {n_head}")
    base = 2 ** math.floor(math.log2(n_head))
    slopes = power_of_2(base)
    if base < n_head:
        slopes += power_of_2(2 * base)[0::2][: n_head - base]
    return torch.tensor(slopes, dtype=torch.float64)


def layer_slopes(n_head: int, layer: int = 0, n_layer: int = 1) -> torch.Tensor:
    """Slopes of layer ``layer`` (0-based) of ``n_layer``: ALiBi's times ``1 - l/(L-1) + 1e-5``
    (the factor is 1 for a one-layer model)."""
    factor = 1.0 if n_layer <= 1 else 1.0 - layer / (n_layer - 1) + 1e-5
    return alibi_slopes(n_head) * factor


def lightning_attention(q, k, v, s, block: int = 64) -> torch.Tensor:
    """Lightning Attention's block form (an alias of :func:`~replib.nn.attention.linear.decayed_chunked`)."""
    return decayed_chunked(q, k, v, s, block)


@register_norm("srmsnorm")
class SRMSNorm(nn.Module):
    """SimpleRMSNorm: RMSNorm without a gain, :math:`x / \\sqrt{\\mathrm{mean}(x^2) + \\epsilon}`.

    Half precision is computed in float32 and cast back (as the reference does); float32 and
    float64 stay as they are.
    """

    def __init__(self, dim: int, eps: float = 1e-6, **_):
        super().__init__()
        self.dim, self.eps = dim, eps

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        y = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        return F.rms_norm(y, (self.dim,), None, self.eps).type_as(x)  # x * rsqrt(mean(x^2) + eps)


@register_attention("transnormer")
class TransNormerAttention(Attention):
    """TransNormerLLM's ``NormLinearAttention`` as a causal token mixer.

    Ablation switches: ``decay=False`` (slopes 0: plain causal linear attention), ``gate=False``
    (:math:`u = 1`), ``norm=False`` (no SRMSNorm after the mix). ``layer``/``n_layer`` scale the
    slopes by depth; TinyGPT builds every block with the same keyword arguments, so there every
    layer has ALiBi's base slopes unless the caller sets them per block (:meth:`set_layer`).
    """

    def __init__(self, d_model: int, n_head: int, *, decay: bool = True, gate: bool = True,
                 norm: bool = True, layer: int = 0, n_layer: int = 1, form: str = "chunked",
                 chunk: int = 64, **kw):
        super().__init__(d_model, n_head, **kw)
        if form not in FORMS:
            raise ReplibError(f"unknown form {form!r}; valid: {', '.join(FORMS)}")
        d_attn = self.n_head * self.head_dim
        self.decay, self.form, self.chunk = decay, form, chunk
        self.u = nn.Linear(d_model, d_attn, bias=kw.get("bias", True)) if gate else None
        self.norm = SRMSNorm(d_attn) if norm else None
        self.register_buffer("slopes", torch.zeros(n_head), persistent=False)
        self.set_layer(layer, n_layer)

    def set_layer(self, layer: int, n_layer: int) -> None:
        """Use the slopes of layer ``layer`` of ``n_layer``."""
        self.slopes.copy_(layer_slopes(self.n_head, layer, n_layer).to(self.slopes.dtype))

    def mix(self, q, k, v, x=None):
        s = self.slopes if self.decay else None
        o = decayed(F.silu(q), F.silu(k), v, s, form=self.form, chunk=self.chunk)
        if self.norm is None and self.u is None:
            return o
        B, H, T, D = o.shape
        o = o.transpose(1, 2).reshape(B, T, H * D)
        if self.norm is not None:
            o = self.norm(o)
        if self.u is not None:
            o = o * self.u(x)
        return o.view(B, T, H, D).transpose(1, 2)
