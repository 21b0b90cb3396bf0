"""Training runs and depth profiles for the Curse of Depth chapter (Sun et al. 2025, arXiv 2502.05795).

The paper's LayerNorm Scaling (LNS) multiplies the normalised input of every sub-layer in block
:math:`\\ell` by :math:`1/\\sqrt{\\ell}`; it lives in :class:`~replib.nn.TinyGPT` as
``GPTConfig(layer_scaling=True)``. Here: the model configuration the chapter compares (Pre-LN vs
Pre-LN + LNS, RMSNorm, plain normal(0, 0.02) init as the LNS code uses), one training run per
(variant, seed) with Adam + linear warm-up + cosine decay, and the per-layer measurements the
claims need (residual variance, angular distance, layer-drop loss deltas, mean norm gains), all
read through :mod:`replib.nn.instrument` hooks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..data import lm_batches
from ..nn import GPTConfig, TinyGPT
from ..nn.instrument import angular_distances, layer_drop_deltas, residual_stats
from ..runtime import seed_everything
from ..train import History, lm_loss, train, warmup_cosine

VARIANTS = {"Pre-LN": False, "Pre-LN + LNS": True}  # name -> layer_scaling


def lns_factors(n_layer: int) -> list[float]:
    """LayerNorm Scaling's constant per block :math:`\\ell = 1..L`: :math:`1/\\sqrt{\\ell}`."""
    return [1.0 / math.sqrt(ell) for ell in range(1, n_layer + 1)]


def depth_config(layer_scaling: bool, *, n_layer: int, d_model: int, n_head: int, seq_len: int,
                 d_ff: int | None = None, vocab_size: int = 256) -> GPTConfig:
    """A LLaMA-flavoured TinyGPT: Pre-RMSNorm, no biases, normal(0, 0.02) everywhere.

    ``scaled_init=False`` follows the LNS README's caveat: scaled output-projection init
    (0.02/sqrt(2L)) largely cancels LNS's gain, and the LNS code does not use it.
    """
    return GPTConfig(vocab_size=vocab_size, seq_len=seq_len, n_layer=n_layer, n_head=n_head,
                     d_model=d_model, d_ff=d_ff, norm="rmsnorm", placement="pre",
                     layer_scaling=layer_scaling, scaled_init=False, bias=False)


@dataclass
class DepthRun:
    variant: str
    seed: int
    model: TinyGPT
    history: History

    @property
    def final_loss(self) -> float:
        return self.history.final("loss")


def train_depth_lm(variant: str, seed: int, train_tokens: torch.Tensor,
                   val: tuple[torch.Tensor, torch.Tensor], *, n_layer: int, d_model: int,
                   n_head: int, seq_len: int, batch_size: int, steps: int, lr: float,
                   warmup_frac: float, eval_every: int, grad_clip: float | None, device,
                   progress: bool = True) -> DepthRun:
    """Train one byte-level LM (``variant`` in :data:`VARIANTS`) for ``steps`` Adam steps.

    The seed fixes both the initial weights and the batch order, so the two variants of one seed
    start from identical weights (LNS adds no parameters) and see identical batches.
    ``History.evals`` holds the validation ``loss`` in nats per byte.
    """
    gen = seed_everything(seed)
    model = TinyGPT(depth_config(VARIANTS[variant], n_layer=n_layer, d_model=d_model,
                                 n_head=n_head, seq_len=seq_len)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, warmup_frac=warmup_frac, min_ratio=0.1))
    hist = train(model, opt, lm_batches(train_tokens, batch_size, seq_len, gen, device),
                 lambda m, b: m(b[0], b[1])[1], steps, scheduler=sched,
                 evaluate=lambda m: {"loss": lm_loss(m, *val)}, eval_every=eval_every,
                 grad_clip=grad_clip, desc=f"{variant} s{seed}", progress=progress)
    model.eval()
    return DepthRun(variant, seed, model, hist)


def mean_gains(model: TinyGPT) -> list[float]:
    """Mean RMSNorm gain per block, averaged over the block's two input norms (init: 1)."""
    return [float((b.norm1.weight.mean() + b.norm2.weight.mean()) / 2) for b in model.blocks]


@torch.no_grad()
def depth_profile(model: TinyGPT, val: tuple[torch.Tensor, torch.Tensor],
                  probe_windows: int) -> dict[str, list[float]]:
    """Per-layer measurements on held-out windows.

    - ``variance``: :math:`\\mathrm{Var}(h_\\ell)` for the residual stream entering block
      :math:`\\ell = 1..L` and leaving block :math:`L` (``L + 1`` values; per-token variance over
      features, averaged over tokens);
    - ``angular``: :math:`\\arccos(\\cos(h_\\ell, h_{\\ell+1}))/\\pi` per block, averaged over all
      tokens of the probe windows (``L`` values);
    - ``drop``: validation-loss increase when block :math:`\\ell` is skipped (``L`` values);
    - ``gain``: mean RMSNorm gain per block (``L`` values).
    """
    was_training = model.training
    model.eval()
    probe = val[0][:probe_windows]
    out = {"variance": residual_stats(model, probe)["variance"],
           "angular": angular_distances(model, probe, last_token=False),
           "drop": layer_drop_deltas(model, lambda m: lm_loss(m, *val)),
           "gain": mean_gains(model)}
    model.train(was_training)
    return out


def variance_growth(variance: list[float]) -> float:
    """:math:`\\mathrm{Var}(h_L)/\\mathrm{Var}(h_1)`, with :math:`h_\\ell` the input of block
    :math:`\\ell` (so ``variance[L-1] / variance[0]``, as the spec defines it)."""
    n_layer = len(variance) - 1
    return variance[n_layer - 1] / variance[0]


def thirds(values: list[float]) -> tuple[float, float]:
    """Mean over the first and over the last third of a per-layer list (``L // 3`` layers each)."""
    k = max(1, len(values) // 3)
    return float(np.mean(values[:k])), float(np.mean(values[-k:]))
