r"""Conda: column-normalised Adam, i.e. Adam run in the (periodically recomputed) singular basis of
each weight matrix's own momentum.

Wang et al., *Conda: Column-Normalized Adam for Training Large Language Models Faster*
(arXiv 2509.24218, 2025). Official code: github.com/jie040109/Conda, ``conda_torch/conda.py`` and
``conda_torch/projector.py`` at commit 449af7136aa72792670b6f8cb39e52135e6cba58 (read for this
module; the update below is that code's, transcribed into ``tests/test_conda.py``).

For a matrix :math:`W\in\mathbb R^{m\times n}` (``nn.Linear``: ``(out, in)``) with gradient
:math:`G_t`, first moment :math:`M` (original coordinates) and second moment :math:`V` (rotated
coordinates), step counter :math:`t` (counted before the increment: 0, 1, ...):

1. :math:`M \leftarrow \beta_1 M + (1-\beta_1) G_t`.
2. If :math:`t \bmod T = 0` (and at the first call): SVD of the *updated* momentum in float32,
   :math:`M = U\Sigma V_h` (``full_matrices=False``); ``proj_type="std"`` keeps :math:`P = V_h`
   (:math:`n\times n`) when :math:`m \ge n`, else :math:`U` (:math:`m\times m`): the smaller side.
3. Rotate: :math:`\tilde G = G P^\top,\ \tilde M = M P^\top` (:math:`m\ge n`) or
   :math:`\tilde G = U^\top G,\ \tilde M = U^\top M` (:math:`m<n`).
4. :math:`V \leftarrow \beta_2 V + (1-\beta_2)\tilde G\odot\tilde G` (never re-rotated when the
   basis changes: it carries the statistics of the previous basis, as in the official code).
5. :math:`\tilde N = \tilde M/(\sqrt V+\epsilon)`, step size
   :math:`\eta\sqrt{1-\beta_2^{t+1}}/(1-\beta_1^{t+1})` (HF bias correction; :math:`\epsilon` not
   corrected).
6. :math:`N = s\,\tilde N P` or :math:`s\,U\tilde N`; :math:`W \leftarrow W - \text{step}\cdot N`,
   then decoupled weight decay on the updated weights, :math:`W \leftarrow W - \eta\lambda W`.

Groups with ``conda=False`` (the official script: everything but the attention/MLP ``nn.Linear``
weights) get the same HF-style AdamW (:func:`replib.optim.common.adam_update_`) at the same lr.
Defaults are the code's: lr 1e-3, betas (0.9, 0.999), eps 1e-8 (its docstring says 1e-6; the code
wins), weight decay 0, ``update_proj_gap`` 2000, ``scale`` 1. Only ``proj_type="std"`` is
supported (the code's other types fail on non-square weights). The basis is kept in the state as a
tensor (``ortho``), so ``state_dict`` round-trips; memory is Adam's two moments plus one
``min(m, n)``-square matrix per weight.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ..errors import ReplibError
from .common import adam_update_, check_grad, check_hparams, check_matrix, matrix_params


@torch.no_grad()
def conda_basis(m: torch.Tensor) -> torch.Tensor:
    """The official ``std`` basis of a momentum matrix: ``Vh`` (n x n) if rows >= cols else ``U``
    (m x m), from a float32 SVD, returned in ``m``'s dtype."""
    u, _, vh = torch.linalg.svd(m.float(), full_matrices=False)
    return (vh if m.shape[0] >= m.shape[1] else u).to(m.dtype)


def project(x: torch.Tensor, ortho: torch.Tensor) -> torch.Tensor:
    """Rotate into the basis: ``x P^T`` (rows >= cols) or ``U^T x``."""
    return x @ ortho.T if x.shape[0] >= x.shape[1] else ortho.T @ x


def project_back(x: torch.Tensor, ortho: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Rotate back and scale: ``s x P`` (rows >= cols) or ``s U x``."""
    return (x @ ortho if x.shape[0] >= x.shape[1] else ortho @ x) * scale


class Conda(torch.optim.Optimizer):
    """Conda for groups with ``conda=True`` (the default; 2-D parameters only), AdamW otherwise."""

    n_svd: int = 0  # SVDs taken by this instance (a count for tests and timing, not state; a class
    # default, so a copy made through Optimizer.__getstate__, which keeps only the state, still counts)

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, update_proj_gap: int = 2000,
                 scale: float = 1.0, proj_type: str = "std", conda: bool = True):
        check_hparams(lr, betas, eps, weight_decay)
        if int(update_proj_gap) != update_proj_gap or update_proj_gap < 1:
            raise ReplibError(f"update_proj_gap must be a positive int, got {update_proj_gap}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        update_proj_gap=int(update_proj_gap), scale=scale, proj_type=proj_type,
                        conda=conda)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["conda"]:
                if group["proj_type"] != "std":
                    raise ReplibError(f"proj_type {group['proj_type']!r} is not supported; only 'std' "
                                      "(the official default; its other types fail on non-square weights)")
                for p in group["params"]:
                    check_matrix(p, "Conda")

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
                g = check_grad(p, "Conda")
                state = self.state[p]
                if not group["conda"]:
                    adam_update_(p, g, state, lr=group["lr"], betas=group["betas"], eps=group["eps"],
                                 weight_decay=group["weight_decay"])
                    continue
                self._conda_update(p, g, state, group)
        return loss

    def _conda_update(self, p: torch.Tensor, g: torch.Tensor, state: dict, group: dict) -> None:
        if "exp_avg" not in state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        b1, b2 = group["betas"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.mul_(b1).add_(g, alpha=1 - b1)
        if "ortho" not in state or state["step"] % group["update_proj_gap"] == 0:
            state["ortho"] = conda_basis(m)
            self.n_svd += 1
        ortho = state["ortho"]
        g_rot, m_rot = project(g, ortho), project(m, ortho)
        v.mul_(b2).addcmul_(g_rot, g_rot, value=1 - b2)
        state["step"] += 1
        t = state["step"]
        step_size = group["lr"] * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        update = project_back(m_rot / (v.sqrt() + group["eps"]), ortho, group["scale"])
        p.add_(update, alpha=-step_size)
        if group["weight_decay"] > 0:
            p.add_(p, alpha=-group["lr"] * group["weight_decay"])


def conda_groups(model: nn.Module, **conda) -> list[dict]:
    """The official LLaMA script's groups: Conda (with ``conda`` options such as
    ``update_proj_gap``, ``scale``) for ``nn.Linear`` weights under 'attn'/'mlp' modules, AdamW
    at the same lr for every other parameter."""
    mats, rest = matrix_params(model)
    if not mats:
        raise ReplibError("the model has no nn.Linear under an 'attn'/'mlp' module for Conda")
    return [{"params": rest, "conda": False}, {"params": mats, "conda": True, **conda}]


__all__ = ["Conda", "conda_basis", "conda_groups", "project", "project_back"]
