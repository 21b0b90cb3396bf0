r"""Bounded hyperbolic tangent (BHyT) and its baseline DyT: norms built from a tanh.

**DyT** (Zhu, Chen, He, LeCun & Liu 2025, "Transformers without Normalization", arXiv 2503.10622)
replaces a norm by an element-wise squashing with a learnable scalar :math:`\alpha`, no statistics:

.. math:: \mathrm{DyT}(x) = \gamma \odot \tanh(\alpha x) + \beta,
          \qquad \gamma = 1,\ \beta = 0,\ \alpha = \alpha_0 \text{ at init.}

**BHyT** (Byun et al. 2025, "Bounded Hyperbolic Tangent", arXiv 2601.09719; official code
MLAI-Yonsei/BHyT) bounds the tanh's argument by the token's RMS, with a fixed :math:`\kappa = 10`:

.. math:: v = \tfrac1d \textstyle\sum_j x_j^2,\qquad r = \frac{1/\kappa}{\sqrt{v + \epsilon}},\qquad
          \mathrm{BHyT}(x) = \gamma \odot \tanh(\lambda\, r\, x)

with :math:`\gamma \in \mathbb R^d` (init 1, no bias) and a learnable scalar :math:`\lambda`. Since
:math:`|\lambda r x_j| \le \lambda \sqrt d/\kappa`, the tanh never sees an unbounded input; for a small
argument it is RMSNorm scaled by :math:`\lambda/\kappa`.

**The BHyT block** computes the exact statistic once per block and *approximates* the second norm's
(no second reduction):

.. math::
   v_1 &= \mathrm{mean}_j\, h_j^2, & r_1 &= \tfrac1\kappa (v_1+\epsilon)^{-1/2},
   & u &= \gamma_{in} \odot \tanh(\lambda_{in} r_1 h), & a &= h + \mathrm{Attn}(u),\\
   v_2 &= v_1 + c_\ell\, \frac{\mathrm{sg}(\lambda_{in})^2}{\kappa^2}, & r_2 &= \tfrac1\kappa (v_2+\epsilon)^{-1/2},
   & w &= \gamma_{post} \odot \tanh(\lambda_{post} r_2 a), & h' &= a + \mathrm{MLP}(w),

with :math:`c_\ell = \lVert W_V W_O \rVert_F^2 / (T d)` from the block's value and output
projections (detached; recomputed every ``N`` steps by :meth:`BHyTGPT.refresh_scalers`), ``T`` the
training sequence length and sg the stop-gradient. The reasoning: in the unsaturated range
:math:`u \approx \lambda_{in} h/(\kappa\,\mathrm{RMS}(h))` has mean square :math:`\lambda_{in}^2/\kappa^2`,
attention averages tokens and maps them through :math:`W_V W_O`, and the residual add sums the two
variances (the cross term is ignored).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ReplibError
from . import kernels
from .norms import register_norm
from .transformer import GPTConfig, TinyGPT

KAPPA = 10.0  # the official code's bhyt_kappa
EPS = 1e-6  # the official code's epsilon inside the rsqrt


def _stat_dtype(x: torch.Tensor) -> torch.dtype:
    """Statistics in at least float32 (as the official code), float64 stays float64."""
    return torch.promote_types(x.dtype, torch.float32)


def mean_square(x: torch.Tensor) -> torch.Tensor:
    r""":math:`v = \frac1d \sum_j x_j^2` per token (keepdim), in at least float32."""
    return x.pow(2).mean(-1, keepdim=True, dtype=_stat_dtype(x))


def bounded_rstd(v: torch.Tensor, kappa: float = KAPPA, eps: float = EPS) -> torch.Tensor:
    r""":math:`r = \frac{1/\kappa}{\sqrt{v + \epsilon}}`."""
    return torch.rsqrt(v + eps) / kappa


@register_norm("dyt")
class DyT(nn.Module):
    r"""Dynamic Tanh (Zhu et al. 2025): :math:`\gamma \odot \tanh(\alpha x) + \beta`.

    ``alpha0`` is the scalar's initial value (0.5 in the ViT code; the LLaMA code uses 0.8/0.2 at
    7B for the attention/FFN inputs); ``bias=False`` drops :math:`\beta` (the LLaMA variant).
    Parameters: :math:`2d + 1` with the bias.
    """

    def __init__(self, dim: int, alpha0: float = 0.5, bias: bool = True):
        super().__init__()
        self.dim, self.alpha0 = dim, alpha0
        self.alpha = nn.Parameter(torch.full((), float(alpha0)))
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if kernels.use_kernels(x):  # the fused Triton kernel on CUDA
            return kernels.dyt(x, self.alpha, self.weight, self.bias)
        y = self.weight * torch.tanh(self.alpha * x)
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"{self.dim}, alpha0={self.alpha0}, bias={self.bias is not None}"


@register_norm("bhyt")
class BHyT(nn.Module):
    r"""Bounded hyperbolic tangent: :math:`\gamma \odot \tanh(\lambda\, x / (\kappa \sqrt{v + \epsilon}))`.

    Used alone (``create_norm("bhyt", d)``) it computes its own statistic :math:`v` per token. Inside
    :class:`BHyTBlock` the block passes ``rstd`` (:math:`r_1` or the approximate :math:`r_2`), as the
    official ``BHyT.forward(hidden_states, rstd)`` does. Parameters: :math:`d + 1`.
    """

    def __init__(self, dim: int, lam0: float = 2.0, kappa: float = KAPPA, eps: float = EPS,
                 learnable_lam: bool = True):
        super().__init__()
        if kappa <= 0:
            raise ReplibError(f"kappa must be positive, got {kappa}")
        self.dim, self.lam0, self.kappa, self.eps = dim, lam0, kappa, eps
        self.weight = nn.Parameter(torch.ones(dim))
        lam = torch.full((), float(lam0))
        if learnable_lam:
            self.lam = nn.Parameter(lam)
        else:
            self.register_buffer("lam", lam)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                rstd: torch.Tensor | None = None) -> torch.Tensor:
        if kernels.use_kernels(x):
            return kernels.bhyt(x, self.weight, self.lam, rstd, self.kappa, self.eps)
        if rstd is None:
            rstd = bounded_rstd(mean_square(x), self.kappa, self.eps)  # r = (1/κ)/sqrt(v+ε)
        return self.weight * torch.tanh(self.lam * rstd.to(x.dtype) * x)  # γ ⊙ tanh(λ r x)

    def extra_repr(self) -> str:
        return f"{self.dim}, lam0={self.lam0}, kappa={self.kappa}, eps={self.eps}"


def value_output_scaler(attn: nn.Module, seq_len: int) -> torch.Tensor:
    r""":math:`c = \lVert W_V W_O \rVert_F^2 / (T d)` for a ``replib.nn.attention.Attention``.

    In the paper's (input-on-the-left) notation :math:`W_V \in \mathbb R^{d \times d_a}` and
    :math:`W_O \in \mathbb R^{d_a \times d}`; torch's ``Linear`` stores their transposes, and the
    value rows are the last third of the fused ``qkv`` weight. Multi-head attention, so no GQA
    expansion is needed. Detached, float32 (float64 stays float64).
    """
    w = attn.qkv.weight.detach()
    d_attn = w.shape[0] // 3
    w_v = w[2 * d_attn:].to(_stat_dtype(w)).T  # (d, d_attn)
    w_o = attn.proj.weight.detach().to(_stat_dtype(w)).T  # (d_attn, d)
    d = w_v.shape[0]
    return (w_v @ w_o).pow(2).sum() / (seq_len * d)


class BHyTBlock(nn.Module):
    r"""A Pre-LN block whose two norms are BHyT, with one exact statistic per block.

    .. math:: v_1 = \mathrm{mean}(h^2),\ a = h + \mathrm{Attn}(\gamma_{in}\odot\tanh(\lambda_{in} r_1 h)),\
              v_2 = v_1 + c_\ell\,\mathrm{sg}(\lambda_{in})^2/\kappa^2,\
              h' = a + \mathrm{MLP}(\gamma_{post}\odot\tanh(\lambda_{post} r_2 a))

    ``attn`` and ``mlp`` are the sub-layers of :mod:`replib.nn.transformer` (so a BHyT model can
    hold exactly the weights of a Pre-RMSNorm model). ``exact_second=True`` is the ablation
    :math:`v_2 := \mathrm{mean}(a^2)` (a second reduction). With ``record = True`` the block keeps
    ``last_v2`` and ``last_exact`` (per token, detached) of its latest forward.
    """

    def __init__(self, attn: nn.Module, mlp: nn.Module, d_model: int, seq_len: int, *,
                 lam_in: float = 2.0, lam_post: float = 1.0, kappa: float = KAPPA,
                 eps: float = EPS, exact_second: bool = False, dropout: float = 0.0):
        super().__init__()
        self.attn, self.mlp = attn, mlp
        self.d_model, self.seq_len, self.kappa, self.eps = d_model, seq_len, kappa, eps
        self.exact_second = exact_second
        self.norm1 = BHyT(d_model, lam_in, kappa, eps)
        self.norm2 = BHyT(d_model, lam_post, kappa, eps)
        self.drop = nn.Dropout(dropout)
        self.register_buffer("c_attn", torch.zeros(()))
        self._c_ready = False
        self.record = False
        self.last_v1: torch.Tensor | None = None
        self.last_v2: torch.Tensor | None = None
        self.last_exact: torch.Tensor | None = None

    @torch.no_grad()
    def update_scaler(self) -> float:
        r"""Recompute :math:`c_\ell` from the current :math:`W_V, W_O` (the official ``update_scaler``)."""
        c = value_output_scaler(self.attn, self.seq_len)
        self.c_attn.copy_(c.to(self.c_attn.dtype))
        self._c_ready = True
        return float(c)

    def second_statistic(self, v1: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        r""":math:`v_2 = v_1 + c_\ell\,\mathrm{sg}(\lambda_{in})^2/\kappa^2`, or the exact
        :math:`\mathrm{mean}(a^2)` with ``exact_second``."""
        if self.exact_second:
            return mean_square(a)
        lam2 = self.norm1.lam.detach().to(v1.dtype).square() / self.kappa ** 2
        return v1 + self.c_attn.to(v1.dtype) * lam2

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if not self._c_ready:
            self.update_scaler()  # first forward: c_l from the initial weights
        v1 = mean_square(x)  # the block's only exact reduction
        r1 = bounded_rstd(v1, self.kappa, self.eps)
        a = x + self.drop(self.attn(self.norm1(x, rstd=r1)))
        v2 = self.second_statistic(v1, a)
        r2 = bounded_rstd(v2, self.kappa, self.eps)
        if self.record:
            self.last_v1, self.last_v2, self.last_exact = v1.detach(), v2.detach(), mean_square(a).detach()
        return a + self.drop(self.mlp(self.norm2(a, rstd=r2)))


def refresh_interval(total_steps: int, target_updates: int = 50) -> int:
    r"""Steps between :math:`c_\ell` refreshes: :math:`N = \mathrm{clamp}(\lfloor S/50 \rfloor, 1, 1000)`
    (the official ``UpdateScalerCallback``)."""
    return int(min(1000, max(1, total_steps // target_updates)))


class BHyTGPT(TinyGPT):
    r"""A :class:`TinyGPT` whose blocks are :class:`BHyTBlock` s; the final norm is RMSNorm.

    The official sweeps set ``last_layer_lam = 0``, which keeps RMSNorm before the head. The model
    is built as the Pre-RMSNorm ``TinyGPT(cfg)`` first and its attention and MLP modules are moved
    into BHyT blocks, so for one seed the BHyT and RMSNorm models start from identical weights.
    """

    def __init__(self, cfg: GPTConfig, *, lam_in: float = 2.0, lam_post: float = 1.0,
                 kappa: float = KAPPA, eps: float = EPS, exact_second: bool = False):
        if cfg.norm != "rmsnorm" or cfg.placement != "pre" or cfg.layer_scaling:
            raise ReplibError("BHyTGPT replaces the norms of a Pre-RMSNorm TinyGPT: give "
                              "GPTConfig(norm='rmsnorm', placement='pre', layer_scaling=False)")
        super().__init__(cfg)
        self.blocks = nn.ModuleList(
            BHyTBlock(b.attn, b.mlp, cfg.d_model, cfg.seq_len, lam_in=lam_in, lam_post=lam_post,
                      kappa=kappa, eps=eps, exact_second=exact_second, dropout=cfg.dropout)
            for b in self.blocks)
        self.refresh_scalers()

    def refresh_scalers(self) -> list[float]:
        r"""Recompute every block's :math:`c_\ell`; returns them."""
        return [b.update_scaler() for b in self.blocks]


def second_statistic_ratios(model: BHyTGPT, idx: torch.Tensor, increments: bool = False
                            ) -> list[torch.Tensor]:
    r"""Per block, the per-token ratio :math:`v_2 / \mathrm{mean}(a^2)` on inputs ``idx`` (flat).

    ``increments=True``: per block, the scalar ratio of the mean predicted increment to the mean
    actual one, :math:`\overline{v_2 - v_1} / \overline{\mathrm{mean}(a^2) - v_1}` (averaged over
    tokens): how well :math:`c_\ell\lambda_{in}^2/\kappa^2` predicts what attention adds."""
    blocks = list(model.blocks)
    if not all(isinstance(b, BHyTBlock) for b in blocks):
        raise ReplibError("second_statistic_ratios needs a model of BHyTBlocks")
    was = model.training
    model.eval()
    try:
        for b in blocks:
            b.record = True
        with torch.no_grad():
            model(idx)
        if increments:
            return [((b.last_v2 - b.last_v1).mean() / (b.last_exact - b.last_v1).mean()).float().cpu()
                    for b in blocks]
        return [(b.last_v2 / b.last_exact).flatten().float().cpu() for b in blocks]
    finally:
        for b in blocks:
            b.record, b.last_v1, b.last_v2, b.last_exact = False, None, None, None
        model.train(was)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["DyT", "BHyT", "BHyTBlock", "BHyTGPT", "KAPPA", "EPS", "bounded_rstd", "mean_square",
           "value_output_scaler", "refresh_interval", "second_statistic_ratios", "count_params"]
