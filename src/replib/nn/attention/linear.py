r"""Kernelised causal linear attention, in its parallel, chunked and recurrent forms.

Katharopoulos et al. 2020, "Transformers are RNNs" (arXiv 2006.16236): replace
:math:`\exp(q\cdot k)` by a feature-map inner product :math:`\phi(q)\cdot\phi(k)` with
:math:`\phi \ge 0` (here :math:`\phi(x) = \mathrm{elu}(x) + 1`, or ReLU), so

.. math:: o_t = \frac{\phi(q_t)^\top \sum_{j \le t} \phi(k_j) v_j^\top}
                     {\phi(q_t)^\top \sum_{j \le t} \phi(k_j) + \epsilon}
              = \frac{\phi(q_t)^\top S_t}{\phi(q_t)^\top z_t + \epsilon},\qquad
          S_t = S_{t-1} + \phi(k_j) v_j^\top,\quad z_t = z_{t-1} + \phi(k_t).

Numerator and denominator are both instances of one *unnormalised, decayed* causal linear
attention (the denominator is the numerator with :math:`v \equiv 1`), which the linear family of
the book shares (NaLa, chapter 24; TransNormer / Lightning Attention, chapter 33):

.. math:: o_t = \sum_{j \le t} \gamma^{\,t-j}\, (q_t \cdot k_j)\, v_j, \qquad \gamma = e^{-s} \in (0, 1]

per head (``s`` of shape ``(H,)``; ``s = None`` is no decay). Three forms compute it:

- :func:`decayed_parallel`: the masked :math:`T \times T` product :math:`((QK^\top) \odot M) V`,
  :math:`M_{tj} = \gamma^{t-j}` for :math:`j \le t` (quadratic time and memory);
- :func:`decayed_chunked`: blocks of ``chunk`` tokens, a masked product inside a block and a
  carried :math:`D \times E` state between blocks (Lightning Attention's tiling; linear in ``T``);
- :func:`decayed_recurrent`: one token at a time, :math:`S_t = \gamma S_{t-1} + k_t v_t^\top`,
  :math:`o_t = q_t^\top S_t` (constant state per token: the decoding form).

The tests hold the three equal in float64 for chunk sizes that do and do not divide ``T``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import ReplibError
from . import register_attention
from .base import Attention

FEATURE_MAPS = {
    "elu1": lambda x: F.elu(x) + 1.0,  # Katharopoulos et al. 2020
    "relu": F.relu,
}


def decay_mask(T: int, s: torch.Tensor | None, *, dtype=None, device=None) -> torch.Tensor:
    """``(H, T, T)`` (or ``(T, T)`` when ``s`` is None): :math:`e^{-s(t-j)}` for ``j <= t``, else 0.

    Row ``t`` reads ``[e^{-s t}, ..., e^{-s}, 1, 0, ...]`` (lightning-attention's ``get_mask``).
    """
    idx = torch.arange(T, device=device)
    dist = (idx[:, None] - idx[None, :]).to(dtype or torch.get_default_dtype())
    causal = dist >= 0
    if s is None:
        return causal.to(dist.dtype)
    expo = -s.to(dist.dtype).view(-1, 1, 1) * dist.clamp(min=0)
    return torch.where(causal, expo.exp(), torch.zeros((), dtype=dist.dtype, device=device))


def decayed_parallel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     s: torch.Tensor | None = None) -> torch.Tensor:
    """:math:`((QK^\\top) \\odot M) V` with the causal decay mask; ``(B, H, T, D)`` in, ``(B, H, T, E)`` out."""
    M = decay_mask(q.shape[-2], s, dtype=q.dtype, device=q.device)
    return ((q @ k.transpose(-2, -1)) * M) @ v


def decayed_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    s: torch.Tensor | None = None, chunk: int = 64) -> torch.Tensor:
    r"""Block form (Lightning Attention; Qin et al. 2024, arXiv 2401.04658), blocks of ``chunk``.

    For block :math:`i` with :math:`m` tokens and state :math:`S` (everything before it):

    .. math:: O_i = \underbrace{[(Q_i K_i^\top) \odot M] V_i}_{\text{intra: left product}}
                  + \underbrace{(Q_i \odot \gamma^{1..m})\, S}_{\text{inter: right product}},\qquad
              S \leftarrow \gamma^{m} S + (K_i \odot \gamma^{m-1..0})^\top V_i

    The decays are those of the ``inference`` prefill loop of TransNormerLLM's
    ``modeling_transnormer.py`` (``q_decay``, ``k_decay``, ``block_decay``).
    """
    if chunk < 1:
        raise ReplibError(f"chunk must be >= 1, got {chunk}")
    B, H, T, D = q.shape
    S = q.new_zeros(B, H, D, v.shape[-1])
    log_g = (-s.to(q.dtype) if s is not None else q.new_zeros(H)).view(H, 1)  # log gamma per head
    out = []
    for start in range(0, T, chunk):
        qi, ki, vi = (t[..., start:start + chunk, :] for t in (q, k, v))
        m = qi.shape[-2]
        pos = torch.arange(1, m + 1, device=q.device, dtype=q.dtype)
        q_decay = (log_g * pos).exp().unsqueeze(-1)  # (H, m, 1): gamma^{1..m}
        k_decay = (log_g * (m - pos)).exp().unsqueeze(-1)  # gamma^{m-1..0}
        intra = ((qi @ ki.transpose(-2, -1)) * decay_mask(m, s, dtype=q.dtype, device=q.device)) @ vi
        out.append(intra + (qi * q_decay) @ S)
        S = (log_g * m).exp().view(H, 1, 1) * S + (ki * k_decay).transpose(-2, -1) @ vi
    return torch.cat(out, dim=-2)


def decayed_step(S: torch.Tensor, q_t: torch.Tensor, k_t: torch.Tensor, v_t: torch.Tensor,
                 s: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step: :math:`S_t = \\gamma S_{t-1} + k_t v_t^\\top`, :math:`o_t = q_t^\\top S_t`.

    ``S`` is ``(B, H, D, E)``; ``q_t, k_t`` are ``(B, H, D)``, ``v_t`` is ``(B, H, E)``.
    """
    if s is not None:
        S = torch.exp(-s.to(S.dtype)).view(-1, 1, 1) * S
    S = S + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)
    return (q_t.unsqueeze(-2) @ S).squeeze(-2), S


def decayed_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      s: torch.Tensor | None = None, state: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token by token with :func:`decayed_step`; returns the outputs and the final state
    (``(B, H, D, E)``, the same size whatever ``T``), so decoding may continue from it."""
    B, H, T, D = q.shape
    S = q.new_zeros(B, H, D, v.shape[-1]) if state is None else state
    out = []
    for t in range(T):
        o, S = decayed_step(S, q[..., t, :], k[..., t, :], v[..., t, :], s)
        out.append(o)
    return torch.stack(out, dim=-2), S


FORMS = ("parallel", "chunked", "recurrent")


def decayed(q, k, v, s=None, *, form: str = "parallel", chunk: int = 64) -> torch.Tensor:
    """The unnormalised decayed causal linear attention in the named ``form``."""
    if form == "parallel":
        return decayed_parallel(q, k, v, s)
    if form == "chunked":
        return decayed_chunked(q, k, v, s, chunk)
    if form == "recurrent":
        return decayed_recurrent(q, k, v, s)[0]
    raise ReplibError(f"unknown form {form!r}; valid: {', '.join(FORMS)}")


def normalized_linear_attention(phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor, *,
                                eps: float = 1e-6, form: str = "parallel",
                                chunk: int = 64) -> torch.Tensor:
    """:math:`\\phi(q_t)^\\top S_t / (\\phi(q_t)^\\top z_t + \\epsilon)` on mapped features: one
    pass of :func:`decayed` over ``[v, 1]`` gives numerator and denominator together."""
    ones = torch.ones_like(v[..., :1])
    both = decayed(phi_q, phi_k, torch.cat([v, ones], dim=-1), form=form, chunk=chunk)
    return both[..., :-1] / (both[..., -1:] + eps)


@register_attention("linear")
class LinearAttention(Attention):
    """Causal linear attention with feature map ``feature_map`` (``"elu1"``: elu + 1, or ``"relu"``).

    ``form`` picks the computation (equal outputs): ``"chunked"`` (default, linear in ``T``),
    ``"parallel"`` or ``"recurrent"``.
    """

    def __init__(self, d_model: int, n_head: int, *, feature_map: str = "elu1", eps: float = 1e-6,
                 form: str = "chunked", chunk: int = 64, **kw):
        super().__init__(d_model, n_head, **kw)
        if feature_map not in FEATURE_MAPS:
            raise ReplibError(f"unknown feature map {feature_map!r}; valid: {', '.join(FEATURE_MAPS)}")
        if form not in FORMS:
            raise ReplibError(f"unknown form {form!r}; valid: {', '.join(FORMS)}")
        self.phi, self.eps, self.form, self.chunk = FEATURE_MAPS[feature_map], eps, form, chunk

    def mix(self, q, k, v, x=None):
        return normalized_linear_attention(self.phi(q), self.phi(k), v, eps=self.eps,
                                           form=self.form, chunk=self.chunk)
