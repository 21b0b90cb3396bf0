r"""SinkGD: a stateless optimiser that normalises each matrix gradient w.r.t. rows and columns at once.

Scetbon, Ma, Gong, Meeds, *Gradient Multi-Normalization for Stateless and Scalable LLM Training*
(arXiv 2502.06742, 2025; NeurIPS 2025 as *Gradient Multi-Normalization for Efficient LLM Training*).

No official code was found. The update below follows the paper's SR-Sinkhorn algorithm as restated
in the book's spec (../shared/papers/06-sinkgd.md) from the abstract and from third-party
re-implementations that cite the paper's Algorithm 3/4; the number of iterations ``L = 5``, the
parameter split and the learning-rate scaling ``alpha = 0.05`` are **unverified** (the primary text
was not read), as is the ``1e-8`` clamp (an implementation safety, not a paper hyperparameter).

SR-Sinkhorn on a gradient :math:`G \in \mathbb R^{m\times n}` (an ``nn.Linear`` weight is
``(out, in) = (m, n)``), :math:`L` iterations, each a row then a column step:

.. math:: X \leftarrow \sqrt n\, X_{i,:}/\lVert X_{i,:}\rVert_2 \ \ (\text{every row } i),\qquad
          X \leftarrow \sqrt m\, X_{:,j}/\lVert X_{:,j}\rVert_2 \ \ (\text{every column } j),

then :math:`W \leftarrow W - \eta X` (decoupled weight decay :math:`W \leftarrow W - \eta\lambda W`
after it, off by default). At the fixed point every row has norm :math:`\sqrt n` and every column
:math:`\sqrt m`, so the RMS entry is 1; :math:`X = D_r G D_c` with positive diagonal :math:`D_r, D_c`
(Sinkhorn scaling of :math:`G\circ G`). A half-integer ``sinkhorn_iters`` ends on a row step
(``0.5``: rows only, the spec's row-normalised ablation). Matrix parameters keep **no state**.

Parameters in a group with ``sinkgd=False`` (embeddings, LM head, norm gains) get the Adam step
of :func:`replib.optim.common.adam_update_`. :func:`sinkgd_groups` builds the split used by the
re-implementations: SinkGD at ``alpha * lr`` for attention/MLP matrices, Adam at ``lr`` for the rest.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..errors import ReplibError
from .common import adam_update_, check_grad, check_hparams, check_matrix, matrix_params


@torch.no_grad()
def sr_sinkhorn(g: torch.Tensor, iters: float = 5, eps: float = 1e-8) -> torch.Tensor:
    """SR-Sinkhorn normalisation of a matrix (see the module docstring); ``iters`` may be a
    half-integer (the last half-iteration is a row step). Computed in float32 at least."""
    if g.dim() != 2:
        raise ReplibError(f"sr_sinkhorn needs a matrix, got shape {tuple(g.shape)}")
    half = round(2 * iters)
    if half < 0 or abs(half - 2 * iters) > 1e-9:
        raise ReplibError(f"sinkhorn_iters must be a non-negative multiple of 0.5, got {iters}")
    x = g.float() if g.dtype in (torch.float16, torch.bfloat16) else g.clone()
    m, n = x.shape
    for k in range(half):
        if k % 2 == 0:  # rows: norm over the input dimension -> sqrt(n)
            x = x * (n ** 0.5 / x.norm(dim=1, keepdim=True).clamp_min(eps))
        else:  # columns: norm over the output dimension -> sqrt(m)
            x = x * (m ** 0.5 / x.norm(dim=0, keepdim=True).clamp_min(eps))
    return x.to(g.dtype)


class SinkGD(torch.optim.Optimizer):
    """SinkGD for groups with ``sinkgd=True`` (the default), Adam for groups with ``sinkgd=False``.

    ``lr`` is the step on the raw SR-Sinkhorn output (RMS entry 1); the re-implementations' recipe
    is SinkGD at ``0.05 * global_lr`` and Adam at ``global_lr`` (:func:`sinkgd_groups`).
    """

    def __init__(self, params, lr: float = 1e-3, sinkhorn_iters: float = 5, eps: float = 1e-8,
                 betas: tuple[float, float] = (0.9, 0.999), adam_eps: float = 1e-8,
                 weight_decay: float = 0.0, sinkgd: bool = True):
        check_hparams(lr, betas, adam_eps, weight_decay)
        if sinkhorn_iters < 0:
            raise ReplibError(f"sinkhorn_iters must be >= 0, got {sinkhorn_iters}")
        defaults = dict(lr=lr, sinkhorn_iters=sinkhorn_iters, eps=eps, betas=tuple(betas),
                        adam_eps=adam_eps, weight_decay=weight_decay, sinkgd=sinkgd)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["sinkgd"]:
                for p in group["params"]:
                    check_matrix(p, "SinkGD")

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = check_grad(p, "SinkGD")
                if group["sinkgd"]:
                    p.add_(sr_sinkhorn(g, group["sinkhorn_iters"], group["eps"]), alpha=-group["lr"])
                    if group["weight_decay"] > 0:
                        p.add_(p, alpha=-group["lr"] * group["weight_decay"])
                else:
                    adam_update_(p, g, self.state[p], lr=group["lr"], betas=group["betas"],
                                 eps=group["adam_eps"], weight_decay=group["weight_decay"])
        return loss


def sinkgd_groups(model: nn.Module, lr: float, alpha: float = 0.05) -> list[dict]:
    """Param groups: SinkGD at ``alpha * lr`` for the attention/MLP matrices, Adam at ``lr`` for
    everything else (embeddings, LM head, norm gains)."""
    mats, rest = matrix_params(model)
    if not mats:
        raise ReplibError("the model has no nn.Linear under an 'attn'/'mlp' module for SinkGD")
    return [{"params": mats, "lr": alpha * lr, "sinkgd": True},
            {"params": rest, "lr": lr, "sinkgd": False}]


__all__ = ["SinkGD", "sinkgd_groups", "sr_sinkhorn"]
