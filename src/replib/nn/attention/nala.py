r"""NaLa: norm-aware linear attention (NaLaFormer; Meng et al. 2025, arXiv 2506.21137).

Linear attention normalises away the query norm, so its attention weights cannot sharpen as
:math:`\lVert q\rVert` grows the way softmax's do. NaLa splits the query into norm and direction
and feeds the norm into an element-wise power; signed directions become non-negative features by
a ReLU split that keeps the same-sign interactions. Per head (dimension ``d``), as in the official
``NormAwareLinearAttn`` (ZacharyMeng/NaLaFormer @1f1c10a, ``NaLaformer/NALA.py``):

.. math::
    k &\leftarrow k \odot k \odot k, \qquad \phi(k) = [\,\mathrm{relu}(k),\ \mathrm{relu}(-k)\,] \\
    n_q &= \lVert q\rVert_2, \qquad p(q) = \lambda\,(0.5 + \tanh n_q),\ \lambda = 3 \\
    \phi(q) &= [\,(\mathrm{relu}(q)/n_q)^{p},\ (\mathrm{relu}(-q)/n_q)^{p}\,] \\
    o_i &= \frac{\tilde\phi(q_i)^\top \tfrac1N\sum_j \tilde\phi(k_j) v_j^\top}
               {\phi(q_i)^\top \tfrac1N\sum_j \phi(k_j) + 10^{-6}}

so :math:`\phi(q)\cdot\phi(k) = \sum_i |q_i/n_q|^{p} |k_i|^3` over the dimensions where
:math:`q_i, k_i` share a sign (opposite signs give 0). :math:`\tilde\phi` is :math:`\phi` with a
rotary embedding applied to each of its two halves (numerator only); the official code rotates in
2-D (image rows and columns, ``theta_shift``), replib in 1-D over token positions with the same
angle recipe (:math:`10000^{-\mathrm{linspace}(0,1,d/2)}`, each angle used for one pair of
features). There is no epsilon on :math:`n_q` in the official code (``q = 0`` gives NaN); neither here.

**Causal form (a replib design, not the paper's).** The official code is non-causal (vision); no
language code is released. Replacing the means over all ``N`` tokens by means over the prefix
:math:`j \le t` gives a causal NaLa whose numerator and denominator are each a causal linear
attention (:func:`replib.nn.attention.linear.decayed`, without decay), so it has the same
parallel, chunked and recurrent forms.

Around the kernel the official module adds LePE (a depthwise 5x5 convolution of ``v`` added to the
output) and an output ``LayerNorm(o) * SiLU(g)`` gate; :class:`NaLaAttention` has both, LePE as a
causal depthwise 1-D convolution of width 5 (off by default).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ReplibError
from . import register_attention
from .base import Attention
from .linear import FORMS, decayed

LAMBDA = 3.0  # hard-coded in the official code
DEN_EPS = 1e-6  # the official denominator's epsilon


def query_power(q: torch.Tensor, lam: float = LAMBDA) -> torch.Tensor:
    """:math:`p(q) = \\lambda (0.5 + \\tanh \\lVert q\\rVert_2)` per token, shape ``(..., 1)``: in [1.5, 4.5)."""
    return lam * (0.5 + torch.tanh(q.norm(dim=-1, keepdim=True)))


def nala_features(q: torch.Tensor, k: torch.Tensor, lam: float = LAMBDA, split: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """:math:`\\phi(q), \\phi(k)` of width ``2d``: the ReLU split of the powered query direction
    and of the cubed key (``[positive part, negative part]``). ``split=False`` keeps the positive
    part only (width ``d``): the ReLU-only kernel that drops negative-negative interactions (C3)."""
    k = k * k * k
    n = q.norm(dim=-1, keepdim=True)
    p = lam * (0.5 + torch.tanh(n))
    if not split:
        return (F.relu(q) / n) ** p, F.relu(k)
    phi_q = torch.cat([(F.relu(q) / n) ** p, (F.relu(-q) / n) ** p], dim=-1)
    return phi_q, torch.cat([F.relu(k), F.relu(-k)], dim=-1)


def rope_angles(T: int, d: int, *, dtype=None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``sin, cos`` of shape ``(T, d)``: 1-D positions with NaLaFormer's ``RoPE`` angle recipe
    (``1/10000**linspace(0, 1, d/2)``, each repeated twice for a pair of features)."""
    if d % 2:
        raise ReplibError(f"rotary features need an even width, got {d}")
    angle = 1.0 / 10000 ** torch.linspace(0, 1, d // 2, dtype=dtype, device=device)
    angle = angle.unsqueeze(-1).repeat(1, 2).flatten()
    pos = torch.arange(T, dtype=dtype, device=device)[:, None] * angle[None, :]
    return pos.sin(), pos.cos()


def theta_shift(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotate feature pairs ``(x_{2i}, x_{2i+1})`` by the angles (the official ``theta_shift``)."""
    rotated = torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).flatten(-2)
    return x * cos + rotated * sin


def rotate_halves(phi: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """:math:`\\tilde\\phi`: RoPE on each ``d``-wide part (positive, negative) separately."""
    parts = phi.split(sin.shape[-1], dim=-1)
    return torch.cat([theta_shift(part, sin, cos) for part in parts], dim=-1)


def nala_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
                   rope: bool = True, lam: float = LAMBDA, split: bool = True,
                   form: str = "parallel", chunk: int = 64) -> torch.Tensor:
    """NaLa on ``(B, H, T, d)`` heads. Non-causal: the official equations (means over all tokens).
    Causal: the same with prefix means, in ``form`` (parallel, chunked or recurrent)."""
    phi_q, phi_k = nala_features(q, k, lam, split)
    T = q.shape[-2]
    if rope:
        sin, cos = rope_angles(T, q.shape[-1], dtype=q.dtype, device=q.device)
        num_q, num_k = rotate_halves(phi_q, sin, cos), rotate_halves(phi_k, sin, cos)
    else:
        num_q, num_k = phi_q, phi_k
    if not causal:
        kv = num_k.transpose(-2, -1) @ v / T
        return (num_q @ kv) / (phi_q @ phi_k.mean(-2, keepdim=True).transpose(-2, -1) + DEN_EPS)
    count = torch.arange(1, T + 1, dtype=q.dtype, device=q.device).unsqueeze(-1)  # prefix length t
    ones = torch.ones_like(v[..., :1])
    if rope:
        num = decayed(num_q, num_k, v, form=form, chunk=chunk)
        den = decayed(phi_q, phi_k, ones, form=form, chunk=chunk)
    else:  # one pass over [v, 1]
        both = decayed(phi_q, phi_k, torch.cat([v, ones], dim=-1), form=form, chunk=chunk)
        num, den = both[..., :-1], both[..., -1:]
    return (num / count) / (den / count + DEN_EPS)


def nala_weights(q: torch.Tensor, k: torch.Tensor, lam: float = LAMBDA) -> torch.Tensor:
    """Normalised non-causal NaLa weights :math:`a_{ij} = \\phi(q_i)\\cdot\\phi(k_j) / \\sum_j`
    (no RoPE): ``(..., N, N)``, rows sum to one."""
    phi_q, phi_k = nala_features(q, k, lam)
    a = phi_q @ phi_k.transpose(-2, -1)
    return a / a.sum(-1, keepdim=True)


@register_attention("nala")
class NaLaAttention(Attention):
    """NaLa as a causal token mixer: kernel (:func:`nala_attention`), optional causal LePE, and
    the official output gate ``LayerNorm(o) * SiLU(g)`` with ``g = W_g x`` (``gate=True``)."""

    def __init__(self, d_model: int, n_head: int, *, rope: bool = True, gate: bool = True,
                 lepe: bool = False, split: bool = True, lam: float = LAMBDA, form: str = "chunked",
                 chunk: int = 64, **kw):
        super().__init__(d_model, n_head, **kw)
        if form not in FORMS:
            raise ReplibError(f"unknown form {form!r}; valid: {', '.join(FORMS)}")
        if rope and self.head_dim % 2:
            raise ReplibError(f"NaLa's rotary features need an even head dim, got {self.head_dim}")
        d_attn = self.n_head * self.head_dim
        self.rope, self.lam, self.split, self.form, self.chunk = rope, lam, split, form, chunk
        self.gate = nn.Linear(d_model, d_attn, bias=kw.get("bias", True)) if gate else None
        self.ln = nn.LayerNorm(d_attn) if gate else None
        # causal depthwise conv on v (left padding): LePE's local positional term, width 5
        self.lepe = nn.Conv1d(d_attn, d_attn, 5, groups=d_attn) if lepe else None

    def mix(self, q, k, v, x=None):
        o = nala_attention(q, k, v, rope=self.rope, lam=self.lam, split=self.split, form=self.form,
                           chunk=self.chunk)
        if self.lepe is None and self.gate is None:
            return o
        B, H, T, D = o.shape
        o = o.transpose(1, 2).reshape(B, T, H * D)
        if self.lepe is not None:
            vv = v.transpose(1, 2).reshape(B, T, H * D).transpose(1, 2)
            o = o + self.lepe(F.pad(vv, (4, 0))).transpose(1, 2)
        if self.gate is not None:
            o = self.ln(o) * F.silu(self.gate(x))
        return o.view(B, T, H, D).transpose(1, 2)
