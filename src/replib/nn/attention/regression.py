r"""Test-time regression: a sequence layer fits a regressor to its key→value pairs and reads it at q.

Wang, Shi, Fox (2025), *Test-time regression: a unifying framework for designing sequence models with
associative memory*, arXiv 2501.12352. No official code; the special cases below are the standard
derivations the spec lists (book spec 38), written here and tested as identities in float64.

At step :math:`t` the layer *memorises* by weighted regression over the pairs seen so far and
*retrieves* by evaluating the fit at the query:

.. math:: M_t = \arg\min_{M \in \mathcal F} \tfrac12 \sum_{i \le t} \gamma^{(t)}_i \lVert v_i - M(k_i)\rVert^2,
          \qquad o_t = M_t(q_t).

Three choices (weights :math:`\gamma`, class :math:`\mathcal F`, optimiser) give the known layers:

1. linear :math:`\mathcal F`, exact weighted ridge LS (:func:`weighted_ls_attention`):
   :math:`M_t = (\sum_i \gamma_i v_i k_i^\top)(\sum_i \gamma_i k_i k_i^\top + \lambda I)^{-1}`;
   replacing the key covariance by :math:`I` (``covariance="identity"``) leaves
   :math:`M_t = \sum_i \gamma_i v_i k_i^\top`: **linear attention** (:math:`\gamma = 1`), and with
   :math:`\gamma^{(t)}_i = \prod_{j=i+1}^{t} a_j` **gated / decayed linear attention**, whose
   recurrence is :math:`S_t = a_t S_{t-1} + v_t k_t^\top` (:func:`gated_linear_recurrent`);
2. one SGD step per token on the newest term, :math:`M_t = M_{t-1} - \beta_t \nabla_M \tfrac12
   \lVert v_t - M k_t\rVert^2 = M_{t-1} + \beta_t (v_t - M_{t-1} k_t) k_t^\top`: the **delta rule**
   (DeltaNet); with forgetting :math:`M_{t-1} \to a_t M_{t-1}`, gated DeltaNet (:func:`delta_rule`);
3. exact online LS by Sherman–Morrison, **recursive least squares** (:func:`rls`):
   :math:`P_t = P_{t-1} - \frac{P_{t-1} k_t k_t^\top P_{t-1}}{1 + k_t^\top P_{t-1} k_t}`,
   :math:`M_t = M_{t-1} + (v_t - M_{t-1} k_t) k_t^\top P_t`, :math:`P_0 = I/\lambda`, equal at every
   step to ridge LS with :math:`\lambda`;
4. locally constant :math:`\mathcal F` with kernel weights :math:`\kappa(q, k_i)`,
   :math:`\arg\min_c \sum_i \kappa(q, k_i)\lVert v_i - c\rVert^2 = \sum_i \kappa v_i / \sum_i \kappa`
   (Nadaraya–Watson, :func:`local_polynomial` of order 0): with :math:`\kappa = e^{q\cdot k/\sqrt d}`
   exactly **softmax attention**;
5. locally linear :math:`\mathcal F` (order 1): :math:`(c, B) = \arg\min \sum_i \kappa_i \lVert v_i - c -
   B(k_i - q)\rVert^2`, :math:`o = c = \bar v - B(\bar k - q)` with :math:`\kappa`-weighted means and
   :math:`B = S_{vk}(S_{kk} + \lambda I)^{-1}` (:func:`local_linear_attention`; the regulariser is
   replib's choice, the paper's is unverified).

The registry entry ``"regression"`` is the delta rule with L2-normalised keys and a learned
per-head step :math:`\beta = \sigma(w)` (the online-learner member of the family; linear, decayed
and softmax attention have their own entries).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ReplibError
from . import register_attention
from .base import Attention


def cumulative_decay_weights(a: torch.Tensor) -> torch.Tensor:
    r""":math:`\gamma^{(t)}_i = \prod_{j=i+1}^t a_j` for :math:`i \le t`, else 0: ``(..., T)`` → ``(..., T, T)``."""
    log_a = torch.cumsum(torch.log(a), -1)
    diff = log_a[..., :, None] - log_a[..., None, :]
    T = a.shape[-1]
    tril = torch.ones(T, T, dtype=torch.bool, device=a.device).tril()
    return torch.where(tril, diff.masked_fill(~tril, 0.0).exp(), torch.zeros((), dtype=a.dtype, device=a.device))


def weighted_ls_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, weights: torch.Tensor, *,
                          lam: float = 0.0, covariance: str = "full") -> torch.Tensor:
    r"""Direct form of identity 1: :math:`o_t = (\sum_i W_{ti} v_i k_i^\top)(\sum_i W_{ti} k_i k_i^\top +
    \lambda I)^{-1} q_t` (``covariance="full"``) or without the inverse (``"identity"``).

    ``weights`` ``(..., T, T)`` holds :math:`W_{ti} = \gamma^{(t)}_i` (zero above the diagonal for a
    causal layer); q, k ``(..., T, d)``, v ``(..., T, e)``.
    """
    if covariance == "identity":
        return ((q @ k.transpose(-2, -1)) * weights) @ v
    if covariance != "full":
        raise ReplibError(f"covariance must be 'full' or 'identity', not {covariance!r}")
    d = k.shape[-1]
    kk = torch.einsum("...ti,...id,...ie->...tde", weights, k, k) + lam * torch.eye(d, dtype=k.dtype, device=k.device)
    vk = torch.einsum("...ti,...ie,...id->...ted", weights, v, k)
    x = torch.linalg.solve(kk, q.unsqueeze(-1))  # (sum W k k^T + lam I)^{-1} q_t
    return (vk @ x).squeeze(-1)


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    r"""Unnormalised causal linear attention written out: :math:`o_t = \sum_{i\le t} (q_t\cdot k_i) v_i`."""
    T = q.shape[-2]
    return ((q @ k.transpose(-2, -1)) * torch.ones(T, T, dtype=q.dtype, device=q.device).tril()) @ v


def gated_linear_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    r""":math:`S_t = a_t S_{t-1} + v_t k_t^\top`, :math:`o_t = S_t q_t`; ``a`` ``(..., T)`` in (0, 1]."""
    S = q.new_zeros(*q.shape[:-2], v.shape[-1], k.shape[-1])
    out = []
    for t in range(q.shape[-2]):
        S = a[..., t, None, None] * S + v[..., t, :, None] * k[..., t, None, :]
        out.append((S @ q[..., t, :, None]).squeeze(-1))
    return torch.stack(out, -2)


def delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor | float,
               a: torch.Tensor | None = None, return_state: bool = False):
    r"""(Gated) DeltaNet: :math:`M_t = a_t M_{t-1} + \beta_t (v_t - a_t M_{t-1} k_t) k_t^\top`,
    :math:`o_t = M_t q_t`; ``beta`` a number or ``(..., T)``, ``a`` ``(..., T)`` or None (no forgetting).
    ``return_state``: also the last memory :math:`M_T` ``(..., e, d)``."""
    T = q.shape[-2]
    beta = torch.as_tensor(beta, dtype=q.dtype, device=q.device).expand(*q.shape[:-2], T)
    M = q.new_zeros(*q.shape[:-2], v.shape[-1], k.shape[-1])
    out = []
    for t in range(T):
        if a is not None:
            M = a[..., t, None, None] * M
        k_t = k[..., t, :]
        err = v[..., t, :] - (M @ k_t.unsqueeze(-1)).squeeze(-1)
        M = M + beta[..., t, None, None] * err.unsqueeze(-1) * k_t.unsqueeze(-2)
        out.append((M @ q[..., t, :, None]).squeeze(-1))
    o = torch.stack(out, -2)
    return (o, M) if return_state else o


def rls(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: float = 1.0,
        return_state: bool = False):
    r"""Recursive least squares from :math:`P_0 = I/\lambda`, :math:`M_0 = 0` (Sherman–Morrison)."""
    d = k.shape[-1]
    P = torch.eye(d, dtype=k.dtype, device=k.device).expand(*k.shape[:-2], d, d) / lam
    M = q.new_zeros(*q.shape[:-2], v.shape[-1], d)
    out = []
    for t in range(q.shape[-2]):
        k_t = k[..., t, :, None]
        Pk = P @ k_t
        P = P - Pk @ Pk.transpose(-2, -1) / (1 + (k_t.transpose(-2, -1) @ Pk))
        M = M + (v[..., t, :, None] - M @ k_t) @ (k_t.transpose(-2, -1) @ P)
        out.append((M @ q[..., t, :, None]).squeeze(-1))
    o = torch.stack(out, -2)
    return (o, M, P) if return_state else o


def exp_kernel(q: torch.Tensor, k: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
    r""":math:`\kappa(q_t, k_i) = \exp(q_t\cdot k_i / \tau)` (default :math:`\tau = \sqrt d`), causal, max-shifted."""
    tau = math.sqrt(q.shape[-1]) if temperature is None else temperature
    s = q @ k.transpose(-2, -1) / tau
    T = q.shape[-2]
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    return (s - s.amax(-1, keepdim=True)).exp()  # a constant factor per row cancels in every estimator


def local_polynomial(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kappa: torch.Tensor, order: int,
                     lam: float = 0.0) -> torch.Tensor:
    r"""The estimator as a weighted LS fit: regress :math:`v_i` on the design :math:`[1]` (order 0) or
    :math:`[1, k_i - q_t]` (order 1) with weights :math:`\kappa_{ti}`, return the intercept
    (``lam`` ridge on the slope only). Generic and slow; the reference for the closed forms."""
    T, d = q.shape[-2], k.shape[-1]
    ones = torch.ones(*k.shape[:-2], T, T, 1, dtype=k.dtype, device=k.device)
    X = ones if order == 0 else torch.cat([ones, k.unsqueeze(-3) - q.unsqueeze(-2)], -1)  # (.., t, i, p)
    if order not in (0, 1):
        raise ReplibError(f"order must be 0 or 1, not {order}")
    XtW = X.transpose(-2, -1) * kappa.unsqueeze(-2)  # (.., t, p, i)
    reg = torch.zeros(X.shape[-1], dtype=k.dtype, device=k.device)
    reg[1:] = lam
    theta = torch.linalg.solve(XtW @ X + torch.diag(reg), XtW @ v.unsqueeze(-3))  # (.., t, p, e)
    return theta[..., 0, :]


def nadaraya_watson(v: torch.Tensor, kappa: torch.Tensor) -> torch.Tensor:
    r""":math:`o_t = \sum_i \kappa_{ti} v_i / \sum_i \kappa_{ti}` (softmax attention for the exp kernel)."""
    return (kappa @ v) / kappa.sum(-1, keepdim=True)


def local_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kappa: torch.Tensor,
                           lam: float = 0.0) -> torch.Tensor:
    r"""Closed form of order 1: :math:`o_t = \bar v - S_{vk}(S_{kk} + \lambda I)^{-1}(\bar k - q_t)`."""
    w = kappa / kappa.sum(-1, keepdim=True)
    k_bar, v_bar = w @ k, w @ v  # (..., T, d), (..., T, e)
    kc = k.unsqueeze(-3) - k_bar.unsqueeze(-2)  # (..., t, i, d)
    vc = v.unsqueeze(-3) - v_bar.unsqueeze(-2)
    S_kk = torch.einsum("...ti,...tid,...tif->...tdf", w, kc, kc)
    S_vk = torch.einsum("...ti,...tie,...tid->...ted", w, vc, kc)
    eye = torch.eye(k.shape[-1], dtype=k.dtype, device=k.device)
    x = torch.linalg.solve(S_kk + lam * eye, (k_bar - q).unsqueeze(-1))
    return v_bar - (S_vk @ x).squeeze(-1)


@register_attention("regression")
class DeltaRuleAttention(Attention):
    r"""Test-time regression by one SGD step per token (the delta rule), keys L2-normalised,
    :math:`\beta_h = \sigma(w_h)` learned per head (:math:`w_h = 0`: :math:`\beta = 1/2`)."""

    def __init__(self, d_model: int, n_head: int, **kwargs):
        super().__init__(d_model, n_head, **kwargs)
        self.beta_logit = nn.Parameter(torch.zeros(n_head))

    def mix(self, q, k, v, x=None):
        beta = torch.sigmoid(self.beta_logit).view(1, -1, 1).expand(q.shape[0], -1, q.shape[-2])
        return delta_rule(q, F.normalize(k, dim=-1), v, beta)
