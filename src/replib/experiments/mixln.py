"""Training runs for the Mix-LN chapter (Li et al. 2024, arXiv 2412.13795; ICLR 2025).

Mix-LN itself is a placement of :class:`~replib.nn.TinyGPT` (``GPTConfig(placement="mix")``):
Post-LN in the first :math:`\\lfloor \\alpha L \\rfloor` blocks, Pre-LN after. This module trains
Pre-LN, Post-LN and Mix-LN models with the paper's recipe (Adam, 10% linear warm-up then cosine,
gradient clipping) and measures what the claims need:

- validation loss (perplexity) at the end of training;
- per-block gradient norms taken after ``backward`` and *before* clipping, every ``log_every``
  steps (through :func:`replib.train.train`'s ``on_backward`` hook);
- angular distance between consecutive hidden states and the layer-drop loss increase, on
  validation windows (:mod:`replib.nn.instrument`).

The MixLN repository's defaults are kept as this module's defaults: RMSNorm, every variant with a
final norm before the head, Linear weights drawn from N(0, 0.02) (no depth scaling) and the
embedding drawn with the repo's unusually large std :data:`REPO_EMBED_STD` = sqrt(2/5).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data import lm_batches
from ..nn import (
    GPTConfig,
    TinyGPT,
    angular_distances,
    block_grad_norms,
    layer_drop_deltas,
)
from ..runtime import seed_everything
from ..train import History, train, warmup_cosine

REPO_EMBED_STD = math.sqrt(2 / 5)  # nn.Embedding init std in pixeli99/MixLN (0.632)
VARIANTS = {  # name -> GPTConfig placement keywords
    "Pre-LN": dict(placement="pre"),
    "Post-LN": dict(placement="post"),
    "Mix-LN": dict(placement="mix"),
}


def mix_config(variant: str, *, n_layer: int, d_model: int, n_head: int, seq_len: int,
               vocab_size: int = 256, mix_alpha: float | None = None,
               embed_std: float = REPO_EMBED_STD, norm: str = "rmsnorm") -> GPTConfig:
    """The chapter's GPT for ``variant`` (a key of :data:`VARIANTS`), with the repo's setup:
    a final norm for every variant (Post-LN included), plain N(0, 0.02) Linear init."""
    kw = dict(VARIANTS[variant])
    if kw["placement"] == "mix":
        kw["mix_alpha"] = mix_alpha
    return GPTConfig(vocab_size=vocab_size, seq_len=seq_len, n_layer=n_layer, n_head=n_head,
                     d_model=d_model, norm=norm, final_norm=True, scaled_init=False,
                     embed_std=embed_std, **kw)


@dataclass
class MixRun:
    variant: str
    seed: int
    history: History
    grad_log: list[tuple[int, list[float]]]
    init_loss: float  # validation loss before training
    final_loss: float  # validation loss after training (nan if diverged)
    diverged: bool
    angular_last: list[float] = field(default_factory=list)  # ShortGPT: last token only
    angular_all: list[float] = field(default_factory=list)  # all tokens
    drop_deltas: list[float] = field(default_factory=list)

    @property
    def ppl(self) -> float:
        return math.exp(self.final_loss) if math.isfinite(self.final_loss) else math.nan

    def late_grad_norms(self, last_frac: float = 0.1) -> np.ndarray:
        """Per-block gradient norm averaged over logs in the last ``last_frac`` of training."""
        if not self.grad_log:
            return np.full(len(self.angular_last) or 1, np.nan)
        last = self.grad_log[-1][0]
        cut = last - last_frac * last
        rows = [g for s, g in self.grad_log if s >= cut] or [self.grad_log[-1][1]]
        return np.asarray(rows, dtype=float).mean(0)


def grad_balance(norms) -> dict[str, float]:
    """Coefficient of variation across blocks, last/first and first/last block ratios."""
    g = np.asarray(norms, dtype=float)
    return {"cv": float(g.std() / g.mean()), "last_over_first": float(g[-1] / g[0]),
            "first_over_last": float(g[0] / g[-1])}


def deep_mean(values, frac: float = 1 / 3) -> float:
    """Mean over the last ``ceil(frac * L)`` layers (the "deep" layers)."""
    v = np.asarray(values, dtype=float)
    k = max(1, math.ceil(frac * len(v)))
    return float(v[-k:].mean())


def run_variant(variant: str, seed: int, train_tokens: torch.Tensor,
                val: tuple[torch.Tensor, torch.Tensor], *, n_layer: int, d_model: int, n_head: int,
                seq_len: int, batch_size: int, steps: int, lr: float = 1e-3,
                warmup_frac: float = 0.1, grad_clip: float | None = 1.0, log_every: int = 10,
                eval_every: int = 0, mix_alpha: float | None = None,
                embed_std: float = REPO_EMBED_STD, device="cpu", progress: bool = True) -> MixRun:
    """Train one variant for one seed and measure it (validation windows ``val``)."""
    gen = seed_everything(seed)
    cfg = mix_config(variant, n_layer=n_layer, d_model=d_model, n_head=n_head, seq_len=seq_len,
                     mix_alpha=mix_alpha, embed_std=embed_std)
    model = TinyGPT(cfg).to(device)
    vx, vy = val

    def val_loss(m):
        return m(vx, vy)[1]

    with torch.no_grad():
        model.eval()
        init_loss = float(val_loss(model))
        model.train()
    grad_log: list[tuple[int, list[float]]] = []

    def log_grads(step: int, m: TinyGPT) -> None:  # after backward, before clipping
        if log_every and step % log_every == 0:
            grad_log.append((step, block_grad_norms(m)))

    adam = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        adam, warmup_cosine(steps, warmup_frac=warmup_frac, min_ratio=0.1))  # MixLN repo's min-lr ratio
    hist = train(model, adam, lm_batches(train_tokens, batch_size, seq_len, gen, device),
                 lambda m, b: m(*b)[1], steps,
                 evaluate=lambda m: {"loss": float(val_loss(m))}, eval_every=eval_every,
                 grad_clip=grad_clip, scheduler=sched, on_backward=log_grads,
                 desc=f"{variant} s{seed}", progress=progress)
    final = hist.final("loss")
    # the spec's divergence: a non-finite loss, or a final loss above the initial one
    diverged = hist.diverged or not math.isfinite(final) or final > init_loss
    run = MixRun(variant, seed, hist, grad_log, init_loss, math.nan if diverged else final, diverged)
    if not hist.diverged:
        model.eval()
        run.angular_last = angular_distances(model, vx, last_token=True)
        run.angular_all = angular_distances(model, vx, last_token=False)
        run.drop_deltas = layer_drop_deltas(model, val_loss)
    return run
