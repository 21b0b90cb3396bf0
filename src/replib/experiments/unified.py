r"""Chapter 09 runners: Unified Normalization (Yang et al. 2022, arXiv 2208.01313) against LayerNorm
and BatchNorm in a byte-level language model (the NLP analog) and a tiny ViT on 8x8 digits (the
vision analog), and the inference-latency comparison of folded UN vs LayerNorm.

- :func:`un_kwargs`: UN's hyper-parameters scaled to a short run (warm-up and compensation gate
  as fixed fractions of the run, chosen before any result).
- :func:`lm_splits`: byte tokens with the held-out tenth cut in two, validation windows (to pick
  each arm's learning rate) then test windows (to judge), and the byte-unigram reference.
- :func:`run_lm`: one Pre-norm :class:`~replib.nn.TinyGPT` run (via
  :func:`replib.experiments.placement.run_placement`), with UN's skip count; :func:`lm_trial`
  wraps it as the ``run(arm, lr, seed)`` of :func:`replib.train.lr_sweep`.
- :func:`digits_splits`: ``load_digits`` in train / validation / test (stratified).
- :func:`run_vit`: one :class:`~replib.nn.vit.TinyViT` run on ``load_digits``: AdamW,
  warm-up + cosine, validation loss and test accuracy in eval mode (running statistics for UN
  and BN); :func:`vit_trial` wraps it for :func:`replib.train.lr_sweep`.
- :func:`on_par_rule`, :func:`collapse_rule`: the chapter's C1 and C2 rules (paired intervals;
  known-answer tests in ``tests/test_unified.py``).
- :func:`inference_latency`: LN model vs the same model with UN folded into its linear layers
  (no norm op), eval mode, timed fairly with :mod:`replib.timing`; peak memory on CUDA.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split

from ..claims import Verdict, decide_side, paired
from ..data import lm_splits as text_splits
from ..data import load_tabular, minibatches
from ..data.tabular import Split, load_arrays
from ..data.text import unigram_loss
from ..nn import GPTConfig, TinyGPT
from ..nn.unified import fold_unified, skip_count, un_layers
from ..nn.vit import TinyViT
from ..runtime import seed_everything, synchronize, torch_threads
from ..timing import compare, inference_step, paired_ratio
from ..train import adamw, lm_loss, train, warmup_cosine
from .placement import LN2, LMData, PlacementRun, run_placement

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


@dataclass
class LMSplits:
    """Training tokens and validation windows (``data``, what :func:`run_lm` trains and logs on),
    separate test windows, and the byte-unigram reference on them."""

    data: LMData
    test_x: torch.Tensor
    test_y: torch.Tensor
    unigram_bpb: float  # bits/byte of the test targets under the training stream's byte frequencies


def lm_splits(text: str, seq_len: int, windows: int, val_fraction: float = 0.1,
              device: torch.device | str = "cpu") -> LMSplits:
    """:func:`replib.data.lm_splits` of ``text`` packaged for this chapter: the last
    ``val_fraction`` held out and cut in two halves, the first giving ``windows`` validation windows
    (learning-rate selection, the logged curves), the second ``windows`` test windows (the
    verdicts); and the byte-unigram test loss."""
    s = text_splits(text, seq_len, windows, windows, held_out=val_fraction, device=device)
    tx, ty = s.test
    return LMSplits(LMData.of(s, test=False), tx, ty, unigram_loss(s.train, ty) / LN2)


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


def lm_trial(norm: str, lr: float, seed: int, splits: LMSplits, *,
             norm_kwargs: dict | None = None, **kw) -> dict:
    """One :func:`run_lm` run as :func:`replib.train.lr_sweep` wants it: final validation and test
    bits/byte (eval mode; NaN for a run whose loss went non-finite), the validation curve
    (``curve``, bits/byte at ``steps_logged``) and UN's skip count."""
    run = run_lm(norm, seed, splits.data, norm_kwargs=norm_kwargs, lr=lr, keep_model=True, **kw)
    val = run.final_val_bpb
    test = math.nan
    if math.isfinite(val):
        run.model.eval()
        test = lm_loss(run.model, splits.test_x, splits.test_y) / LN2
        test = test if math.isfinite(test) else math.nan
        val = val if math.isfinite(test) else math.nan
    return {"val": val, "test": test, "curve": [v / LN2 for v in run.val_loss],
            "steps_logged": list(run.log_steps), "skips": run.skips, "seconds": run.seconds}


def digits_split(seed: int = 0, device: torch.device | str = "cpu") -> Split:
    """``load_digits``: 8x8 images, standardised per pixel, stratified 80/20 split."""
    return load_tabular("digits", test_size=0.2, seed=seed).to(device)


@dataclass
class DigitsData:
    """``split``: the training images (``x_train``, less the validation ones) and the test images;
    ``x_val``/``y_val``: a stratified validation set carved from the training images."""

    split: Split
    x_val: torch.Tensor
    y_val: torch.Tensor


def digits_splits(seed: int = 0, test_size: float = 0.2, val_size: float = 0.2,
                  device: torch.device | str = "cpu") -> DigitsData:
    """``load_digits`` in three stratified parts: the same test set as :func:`digits_split`
    (80/20, ``seed``), and ``val_size`` of the remaining images held out for validation. Pixels
    are standardised with the statistics of the images trained on."""
    x, y = load_arrays("digits")
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    xfit, xval, yfit, yval = train_test_split(xtr, ytr, test_size=val_size, random_state=seed,
                                              stratify=ytr)
    mu, sd = xfit.mean(0), xfit.std(0)
    sd[sd == 0] = 1.0
    f = lambda a: torch.as_tensor((a - mu) / sd, dtype=torch.float32).to(device)  # noqa: E731
    t = lambda a: torch.as_tensor(a, dtype=torch.long).to(device)  # noqa: E731
    split = Split("digits", f(xfit), t(yfit), f(xte), t(yte), int(y.max()) + 1)
    return DigitsData(split, f(xval), t(yval))


@dataclass
class ViTRun:
    norm: str
    seed: int
    steps: int
    loss: list[float] = field(default_factory=list)  # training loss every step
    eval_steps: list[int] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)  # eval mode, at eval_steps
    val_loss: list[float] = field(default_factory=list)  # eval mode, at eval_steps (with ``val``)
    val_acc: list[float] = field(default_factory=list)
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


@torch.no_grad()
def loss_and_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Cross-entropy (nats) and accuracy; NaN for both when the logits are not finite."""
    logits = model(x)
    if not torch.isfinite(logits).all():
        return math.nan, math.nan
    return float(F.cross_entropy(logits, y)), float((logits.argmax(-1) == y).float().mean())


def run_vit(norm: str, seed: int, split: Split, *, depth: int, d_model: int, n_head: int,
            steps: int, batch_size: int, lr: float, eval_every: int, norm_kwargs: dict | None = None,
            weight_decay: float = 0.05, warmup_frac: float = 0.05, grad_clip: float | None = 1.0,
            val: tuple[torch.Tensor, torch.Tensor] | None = None,
            device: torch.device | str = "cpu", threads: int | None = 1,
            progress: bool = False) -> ViTRun:
    """Train one :class:`TinyViT` (patch 2 on 8x8 digits) with ``norm`` in every position;
    ``val`` (images, labels): also log the validation loss and accuracy at every evaluation."""
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
            if val is not None:
                vl, va = loss_and_accuracy(m, *val)
                run.val_loss.append(vl)
                run.val_acc.append(va)
            return {"test_acc": acc}

        hist = train(model, opt, minibatches(split.x_train, split.y_train, batch_size, gen),
                     lambda m, b: F.cross_entropy(m(b[0]), b[1]), steps, evaluate=evaluate,
                     eval_every=eval_every, grad_clip=grad_clip, scheduler=sched,
                     desc=f"{norm} s{seed}", progress=progress)
    run.eval_steps = [s for s, _ in hist.evals]
    run.loss, run.diverged_at, run.seconds = hist.loss, hist.diverged_at, hist.seconds
    run.skips = skip_count(model)
    return run


def vit_trial(norm: str, lr: float, seed: int, digits: DigitsData, *,
              norm_kwargs: dict | None = None, **kw) -> dict:
    """One :func:`run_vit` run as :func:`replib.train.lr_sweep` wants it: final validation loss
    (``val``, the selection metric), validation and test accuracy (``test``), the validation-loss
    curve and UN's skip count; NaN metrics for a run whose loss went non-finite."""
    run = run_vit(norm, seed, digits.split, norm_kwargs=norm_kwargs, lr=lr,
                  val=(digits.x_val, digits.y_val), **kw)
    ok = run.diverged_at is None and run.eval_steps and run.eval_steps[-1] == run.steps
    val = run.val_loss[-1] if ok else math.nan
    return {"val": val if math.isfinite(val) else math.nan,
            "val_acc": run.val_acc[-1] if ok else math.nan, "test": run.final_acc,
            "curve": list(run.val_loss), "test_curve": list(run.test_acc),
            "steps_logged": list(run.eval_steps), "skips": run.skips, "seconds": run.seconds}


# -- the chapter's rules ---------------------------------------------------------------------------

def on_par_rule(un: str, ln: str, bn: str, *, tol: float, lower_is_better: bool, unit: str,
                confidence: float = 0.95):
    r"""C1's rule with paired per-seed differences (the spec: UN within one seed-std, or ``tol``,
    of LN and better than BN: replicated; within two: partially; else not replicated).

    With :math:`s = +1` when lower is better and :math:`-1` otherwise, three Student-t intervals:
    :math:`s(\mathrm{UN}-\mathrm{LN})` against ``tol`` and ``2 tol`` (UN no worse than LN by more
    than that) and :math:`s(\mathrm{UN}-\mathrm{BN})` against 0 (UN better than BN).
    Replicated: UN within ``tol`` of LN and better than BN (both intervals on the claimed side);
    partially: UN within ``2 tol`` of LN (the spec's second tier; a BN comparison that does not
    hold or cannot be decided is named); not replicated: the interval lies wholly beyond
    ``2 tol``; inconclusive otherwise. Returns ``decide`` for :class:`replib.Rule`.
    """
    sign = 1.0 if lower_is_better else -1.0

    def decide(m):
        vals = {k: [sign * v for v in m[k].values] for k in (un, ln, bn)}
        p_ln = paired(vals[un], vals[ln], names=(un, ln), confidence=confidence)
        p_bn = paired(vals[un], vals[bn], names=(un, bn), confidence=confidence)
        near = decide_side(p_ln, claimed="below", threshold=tol)
        near2 = decide_side(p_ln, claimed="below", threshold=2 * tol)
        beats = decide_side(p_bn, claimed="below", threshold=0.0)
        flip = "" if lower_is_better else " (signs flipped: positive = UN worse)"
        why = (f"{p_ln:.3g}{flip}; {p_bn:.3g}{flip}; UN within {tol:g} {unit} of LN: {near.value}, "
               f"within {2 * tol:g}: {near2.value}; UN better than BN: {beats.value}")
        if near is Verdict.REPLICATED and beats is Verdict.REPLICATED:
            return Verdict.REPLICATED, why
        if near2 is Verdict.REPLICATED:
            return Verdict.PARTIAL, why
        if near2 is Verdict.NOT_REPLICATED:
            return Verdict.NOT_REPLICATED, why
        return Verdict.INCONCLUSIVE, why
    return decide


def collapse_rule(on: str, off: str, reference: str):
    """C2's rule on per-seed collapse indicators (1 = collapsed): replicated if ``off`` or
    ``reference`` collapses in at least one seed while ``on`` never does; inconclusive if nothing
    collapses; not replicated otherwise (``on`` collapses). The spec's rule has no partial tier."""
    def decide(m):
        n_on, n_off, n_ref = (int(np.nansum(m[k].values)) for k in (on, off, reference))
        n = m[on].n
        why = f"collapsed seeds: {on} {n_on}/{n}, {off} {n_off}/{n}, {reference} {n_ref}/{n}"
        if n_on:
            return Verdict.NOT_REPLICATED, why
        if n_off + n_ref:
            return Verdict.REPLICATED, why
        return Verdict.INCONCLUSIVE, why + " (nothing collapsed at this scale)"
    return decide


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


__all__ = ["GATE_PER_WARMUP", "DigitsData", "LMSplits", "LatencyResult", "ViTRun", "WARMUP_FRACTION",
           "accuracy", "collapse_rule", "digits_split", "digits_splits", "inference_latency",
           "lm_splits", "lm_trial", "loss_and_accuracy", "on_par_rule", "run_lm", "run_vit",
           "un_kwargs", "vit_trial"]
