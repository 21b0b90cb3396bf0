r"""Chapter 09 runners: Unified Normalization (Yang et al. 2022, arXiv 2208.01313) against LayerNorm
and BatchNorm in a byte-level language model (the NLP analog) and a tiny ViT on 8x8 digits (the
vision analog), and the inference-latency comparison of folded UN vs LayerNorm.

- :func:`un_kwargs`: UN's hyper-parameters scaled to a short run (warm-up and compensation gate
  as fixed fractions of the run, chosen before any result).
- :func:`run_lm`: one Pre-norm :class:`~replib.nn.TinyGPT` run (via
  :func:`replib.experiments.placement.run_placement`), with UN's skip count.
- :func:`run_vit`: one :class:`~replib.nn.vit.TinyViT` run on ``load_digits``: AdamW,
  warm-up + cosine, test accuracy in eval mode (running statistics for UN and BN).
- :func:`inference_latency`: LN model vs the same model with UN folded into its linear layers
  (no norm op), eval mode, timed fairly with :mod:`replib.timing`; peak memory on CUDA.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..data import load_tabular, minibatches
from ..data.tabular import Split
from ..nn import GPTConfig, TinyGPT
from ..nn.unified import fold_unified, skip_count, un_layers
from ..nn.vit import TinyViT
from ..runtime import seed_everything, synchronize, torch_threads
from ..timing import compare, inference_step, paired_ratio
from ..train import adamw, train, warmup_cosine
from .placement import LMData, PlacementRun, run_placement

# The official schedule: UN warm-up 4000 of 100k NMT updates with the compensation gate at
# max(1000, warm-up). The chapter's spec scales the warm-up to 1/6 of a short run (500 of 3000)
# and the gate's 1000 by the same factor as the warm-up (1000/4000), so the gate equals the warm-up.
WARMUP_FRACTION = 1 / 6
GATE_PER_WARMUP = 1000 / 4000


def un_kwargs(steps: int, window: int = 4, outlier_filtration: bool = False) -> dict:
    """UN keyword arguments for a run of ``steps`` steps (warm-up and gate scaled, see above)."""
    warm = max(1, int(round(WARMUP_FRACTION * steps)))
    return dict(window=window, warmup_iters=warm, outlier_filtration=outlier_filtration,
                compensation_after=max(1, int(round(GATE_PER_WARMUP * warm))))


def run_lm(norm: str, seed: int, data: LMData, *, norm_kwargs: dict | None = None,
           **kw) -> PlacementRun:
    """One Pre-norm TinyGPT language-model run with ``norm`` everywhere (blocks and final norm).

    ``kw`` go to :func:`~replib.experiments.placement.run_placement`. The returned run carries
    ``skips`` (UN's outlier-filtration count over all layers, 0 for other norms)."""
    model_kwargs = dict(kw.pop("model_kwargs", None) or {})
    model_kwargs["norm_kwargs"] = dict(norm_kwargs or {})
    keep = kw.pop("keep_model", False)
    run = run_placement("pre", seed, data=data, norm=norm, model_kwargs=model_kwargs,
                        keep_model=True, **kw)
    run.skips = skip_count(run.model)
    if not keep:
        run.model = None
    return run


def digits_split(seed: int = 0, device: torch.device | str = "cpu") -> Split:
    """``load_digits``: 8x8 images, standardised per pixel, stratified 80/20 split."""
    return load_tabular("digits", test_size=0.2, seed=seed).to(device)


@dataclass
class ViTRun:
    norm: str
    seed: int
    steps: int
    loss: list[float] = field(default_factory=list)  # training loss every step
    eval_steps: list[int] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)  # eval mode, at eval_steps
    diverged_at: int | None = None
    skips: int = 0  # UN outlier-filtration skips, summed over layers
    seconds: float = 0.0

    @property
    def final_acc(self) -> float:
        """Test accuracy after the last step (nan for a run whose loss went non-finite)."""
        if self.diverged_at is not None or not self.eval_steps or self.eval_steps[-1] != self.steps:
            return math.nan
        return self.test_acc[-1]

    def collapsed(self, chance_margin: float = 0.1) -> bool:
        """A non-finite loss, or a final test accuracy below chance (0.1) + ``chance_margin``."""
        acc = self.final_acc
        return not math.isfinite(acc) or acc < 0.1 + chance_margin


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    logits = model(x)
    if not torch.isfinite(logits).all():
        return math.nan
    return float((logits.argmax(-1) == y).float().mean())


def run_vit(norm: str, seed: int, split: Split, *, depth: int, d_model: int, n_head: int,
            steps: int, batch_size: int, lr: float, eval_every: int, norm_kwargs: dict | None = None,
            weight_decay: float = 0.05, warmup_frac: float = 0.05, grad_clip: float | None = 1.0,
            device: torch.device | str = "cpu", threads: int | None = 1,
            progress: bool = False) -> ViTRun:
    """Train one :class:`TinyViT` (patch 2 on 8x8 digits) with ``norm`` in every position."""
    with torch_threads(threads if torch.device(device).type == "cpu" else None):
        gen = seed_everything(seed)
        model = TinyViT(image=8, patch=2, n_classes=split.n_classes, d_model=d_model, depth=depth,
                        n_head=n_head, norm=norm, norm_kwargs=norm_kwargs).to(device)
        opt = adamw(model, lr, weight_decay, betas=(0.9, 0.999))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, warmup_frac=warmup_frac))
        run = ViTRun(norm, seed, steps)

        def evaluate(m):
            acc = accuracy(m, split.x_test, split.y_test)
            run.test_acc.append(acc)
            return {"test_acc": acc}

        hist = train(model, opt, minibatches(split.x_train, split.y_train, batch_size, gen),
                     lambda m, b: F.cross_entropy(m(b[0]), b[1]), steps, evaluate=evaluate,
                     eval_every=eval_every, grad_clip=grad_clip, scheduler=sched,
                     desc=f"{norm} s{seed}", progress=progress)
    run.eval_steps = [s for s, _ in hist.evals]
    run.loss, run.diverged_at, run.seconds = hist.loss, hist.diverged_at, hist.seconds
    run.skips = skip_count(model)
    return run


# -- C4: inference latency ------------------------------------------------------------------------

@dataclass
class LatencyResult:
    seed: int
    ms: dict[str, float]  # median latency per variant
    speedup: float  # t_LN / t_UN-folded (paired per round), > 1: folded UN is faster
    speedup_unfolded: float  # t_LN / t_UN (eval, not folded)
    peak_mib: dict[str, float] = field(default_factory=dict)  # CUDA only


def _peak_mib(fn, device: torch.device) -> float:
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def inference_latency(seed: int, *, n_layer: int, d_model: int, n_head: int, batch_size: int,
                      seq_len: int, reps: int, warmup: int = 10,
                      device: torch.device | str = "cpu", amp_dtype: torch.dtype | None = None,
                      threads: int | None = 1) -> LatencyResult:
    """Eval-mode forward latency of a Pre-LN TinyGPT (LayerNorm) against the same architecture
    with UN folded into its linear layers, and UN unfolded; same inputs, interleaved timing.

    UN's running statistics are set to random positive values (what training would leave), so
    the folded weights are generic. ``peak_mib``: extra peak CUDA memory of one forward, beyond
    the weights (CUDA only).
    """
    device = torch.device(device)
    with torch_threads(threads if device.type == "cpu" else None):
        gen = seed_everything(seed)
        cfg = dict(vocab_size=256, seq_len=seq_len, n_layer=n_layer, n_head=n_head,
                   d_model=d_model)
        ln = TinyGPT(GPTConfig(norm="layernorm", **cfg)).to(device).eval()
        un = TinyGPT(GPTConfig(norm="unified", **cfg)).to(device).eval()
        with torch.no_grad():
            for layer in un_layers(un):
                layer.running_var.copy_(torch.rand(d_model, generator=gen).add_(0.5))
        folded = fold_unified(un)
        idx = torch.randint(0, 256, (batch_size, seq_len), generator=gen).to(device)
        fns = {name: inference_step(m, lambda mm: mm(idx), amp_dtype)
               for name, m in (("layernorm", ln), ("un", un), ("un_folded", folded))}
        timings = compare(fns, device, warmup=warmup, reps=reps)
        peak = ({k: _peak_mib(f, device) for k, f in fns.items()} if device.type == "cuda" else {})
    return LatencyResult(
        seed, {k: 1e3 * t.median for k, t in timings.items()},
        1.0 / paired_ratio(timings["un_folded"], timings["layernorm"]),
        1.0 / paired_ratio(timings["un"], timings["layernorm"]), peak)


__all__ = ["GATE_PER_WARMUP", "LatencyResult", "ViTRun", "WARMUP_FRACTION", "accuracy",
           "digits_split", "inference_latency", "run_lm", "run_vit", "un_kwargs"]
