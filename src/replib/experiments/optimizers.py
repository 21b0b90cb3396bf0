r"""Optimisers compared on one tiny byte-level LLaMA: the harness of chapters 06 (SinkGD) and 30
(Conda), meant for the all-optimizers page too. The API below is stable; extend it additively.

One call of :func:`run_lm` trains one :class:`~replib.optim.common.TinyLlama` with one optimiser
*arm* (an entry of :func:`replib.optim.list_optimizers`: ``adamw``, ``sgd-momentum``, ``sinkgd``,
``rownorm``, ``conda``, ...; options per arm through ``opt_kwargs``) at one peak learning rate, with linear warm-up then cosine decay to 0, no gradient
clipping, and logs the validation and test loss (nats/byte) every ``log_every`` steps. It also
measures the optimizer-state bytes from the optimiser's tensors after the run
(:func:`replib.optim.common.state_bytes`) and, optionally, the effective rank of each matrix's
update direction at the end (:func:`update_effective_ranks`).

Speed-up claims are **tokens-to-target ratios** (:func:`speedup`): the target is the baseline's
final test loss; the ratio is the steps the baseline needs to reach it over the steps the method
needs (the first crossing, linearly interpolated between log points; every step has the same
tokens, so steps and tokens give the same ratio). A method that never reaches the target gets the
upper bound ``baseline steps / all steps`` (flagged).

:func:`optimizer_step_timings` times the optimiser step alone (fixed gradients, the same model)
for several arms with :func:`replib.timing.compare`; ``"newton-schulz"`` is a SWAN/Muon-style
orthogonalisation step (5 quintic Newton-Schulz iterations per matrix, Adam for the rest), the
expensive whitening SinkGD is claimed to avoid.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..claims import log_paired as log_ratio  # per-seed log a - log b (b may be a constant)
from ..claims import paired
from ..data import lm_batches, lm_splits
from ..optim import create_optimizer
from ..optim.common import LlamaConfig, TinyLlama, adam_update_, matrix_params, state_bytes
from ..plotting import palette, seed_dots
from ..runtime import seed_everything, torch_threads
from ..timing import compare
from ..train import Sweep, lm_loss, progress_bar, train, warmup_cosine
from ..train import lr_sweep as _lr_sweep

LN2 = math.log(2.0)


# ----------------------------------------------------------------------------- data
@dataclass
class LMData:
    """Byte tokens for training; fixed validation windows (choose lrs) and test windows (judge)."""

    train: torch.Tensor  # 1-D token ids (CPU), sampled by random windows
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    seq_len: int


def lm_data_split(text: str, seq_len: int, val_windows: int, test_windows: int,
                  device: torch.device | str = "cpu") -> LMData:
    """The book's held-out split (:func:`replib.data.lm_splits`): training bytes, validation windows
    to choose learning rates on and test windows to judge on."""
    train_tok, (vx, vy), (tx, ty) = lm_splits(text, seq_len, val_windows, test_windows, device=device)
    return LMData(train_tok, vx, vy, tx, ty, seq_len)


# ----------------------------------------------------------------------------- the arms
def make_optimizer(arm: str, model: torch.nn.Module, lr: float, **opts) -> torch.optim.Optimizer:
    """The optimiser registered as ``arm`` (:func:`replib.optim.list_optimizers`) for ``model`` at
    peak learning rate ``lr``."""
    return create_optimizer(arm, model, lr, **opts)


# ----------------------------------------------------------------------------- one run
@dataclass
class OptRun:
    arm: str
    seed: int
    lr: float
    steps: int
    tokens_per_step: int
    loss: list[float] = field(default_factory=list)  # training loss every step (nats/byte)
    log_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)  # nats/byte at each log step
    test_loss: list[float] = field(default_factory=list)
    diverged_at: int | None = None
    seconds: float = 0.0
    state_bytes: int = 0  # optimizer-state tensor bytes after the run
    param_bytes: int = 0
    eff_ranks: list[float] = field(default_factory=list)  # per matrix, of the final update direction
    model: Any = field(default=None, repr=False)

    @property
    def nan(self) -> bool:
        return self.diverged_at is not None

    @property
    def diverged(self) -> bool:
        """NaN, or a final validation loss above the first training loss minus 0.1 nats."""
        f = self.final_val_loss
        return not math.isfinite(f) or f > self.loss[0] - 0.1

    @property
    def final_val_loss(self) -> float:
        if self.nan or not self.val_loss or self.log_steps[-1] != self.steps:
            return math.nan
        return self.val_loss[-1]

    @property
    def final_test_loss(self) -> float:
        return math.nan if math.isnan(self.final_val_loss) else self.test_loss[-1]

    @property
    def final_val_bpb(self) -> float:
        return self.final_val_loss / LN2

    @property
    def final_test_bpb(self) -> float:
        return self.final_test_loss / LN2

    def summary(self) -> dict:
        return {"arm": self.arm, "seed": self.seed, "lr": self.lr, "val_bpb": self.final_val_bpb,
                "test_bpb": self.final_test_bpb, "diverged": self.diverged,
                "state_bytes": self.state_bytes, "seconds": round(self.seconds, 1)}


def run_lm(arm: str, seed: int, lr: float, data: LMData, *, n_layer: int, d_model: int,
           n_head: int, batch_size: int, steps: int, log_every: int, warmup_frac: float = 0.1,
           d_ff: int | None = None, opt_kwargs: dict | None = None,
           device: torch.device | str = "cpu", measure_update: bool = False,
           keep_model: bool = False, progress: bool = False, threads: int | None = 1) -> OptRun:
    """Train one TinyLlama with optimiser ``arm`` at peak ``lr`` (see the module docstring).

    The same ``seed`` gives every arm the same initial weights and the same batches.
    ``threads``: torch's intra-op threads on a CPU device during the run (restored afterwards)."""
    cpu = torch.device(device).type == "cpu"
    with torch_threads(threads if cpu else None):
        gen = seed_everything(seed)
        cfg = LlamaConfig(seq_len=data.seq_len, n_layer=n_layer, n_head=n_head, d_model=d_model, d_ff=d_ff)
        model = TinyLlama(cfg).to(device)
        opt = make_optimizer(arm, model, lr, **(opt_kwargs or {}))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, warmup_frac=warmup_frac))
        run = OptRun(arm, seed, lr, steps, batch_size * data.seq_len)

        def evaluate(m):
            run.log_steps.append(min((len(run.log_steps) + 1) * log_every, steps))  # train()'s eval points
            run.val_loss.append(lm_loss(m, data.val_x, data.val_y))
            run.test_loss.append(lm_loss(m, data.test_x, data.test_y))
            return {"val_loss": run.val_loss[-1]}

        batches = lm_batches(data.train, batch_size, data.seq_len, gen, device)
        hist = train(model, opt, batches, lambda m, b: m(*b)[1], steps, evaluate=evaluate,
                     eval_every=log_every, scheduler=sched, desc=f"{arm} lr={lr:g} s{seed}",
                     progress=progress)
        run.loss, run.diverged_at, run.seconds = hist.loss, hist.diverged_at, hist.seconds
        run.state_bytes = state_bytes(opt)
        run.param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        if measure_update and not hist.diverged:
            run.eff_ranks = update_effective_ranks(model, opt, next(batches))
    if keep_model:
        run.model = model
    return run


def sweep_record(run: OptRun) -> dict:
    """What :class:`~replib.train.Sweep` keeps of one run."""
    return {"val": run.final_val_bpb, "test": run.final_test_bpb, "curve": list(run.val_loss),
            "test_curve": list(run.test_loss), "steps": list(run.log_steps),
            "diverged": bool(run.diverged), "state_bytes": run.state_bytes,
            "seconds": round(run.seconds, 2)}


def optimizer_sweep(arms: dict[str, dict] | Sequence[str], grid: Iterable[float], seeds: Iterable[int],
                    data: LMData, progress: bool = True, **kw) -> tuple[Sweep, dict]:
    """The same learning-rate ``grid`` for every arm and seed (:func:`replib.train.lr_sweep`,
    selected on validation bits/byte). ``arms``: names, or ``{label: {"arm": name, **opt_kwargs}}``
    for variants of one optimiser. Returns the sweep and every run keyed ``(label, lr, seed)``."""
    spec = {a: {"arm": a} for a in arms} if not isinstance(arms, dict) else arms
    runs: dict[tuple[str, float, int], OptRun] = {}

    def one(label: str, lr: float, seed: int) -> dict:
        opts = dict(spec[label])
        arm = opts.pop("arm", label)
        runs[(label, lr, seed)] = r = run_lm(arm, seed, lr, data, opt_kwargs=opts, **kw)
        return sweep_record(r)

    sweep = _lr_sweep(list(spec), list(grid), list(seeds), one, select_on="val", progress=progress)
    return sweep, runs


def at_best(sweep: Sweep, runs: dict, label: str) -> list[OptRun]:
    """The arm's runs at its own best learning rate, in seed order."""
    lr = sweep.best_lr(label)
    lr = sweep.grid[0] if lr is None else lr
    return [runs[(label, lr, s)] for s in sweep.seeds]


# ----------------------------------------------------------------------------- measurements
def steps_to_target(steps: Sequence[int], curve: Sequence[float], target: float) -> float | None:
    """The first step where ``curve`` reaches ``target`` (linear interpolation between log
    points, from step 0 where the curve is taken to start at its first value); None: never."""
    prev_s, prev_v = None, None
    for s, v in zip(steps, curve):
        if not math.isfinite(v):
            return None
        if v <= target:
            if prev_s is None or prev_v == v:
                return float(s)
            return prev_s + (s - prev_s) * (prev_v - target) / (prev_v - v)
        prev_s, prev_v = s, v
    return None


def speedup(base: OptRun, method: OptRun, curve: str = "test_loss") -> tuple[float, bool]:
    """Tokens-to-target ratio (baseline steps / method steps to the baseline's final loss on
    ``curve``) and whether the method reached the target; NaN if either run diverged. A method
    that never reaches it gets ``baseline steps / all steps`` (an upper bound on its ratio)."""
    if base.nan or method.nan:
        return math.nan, False
    b, m = getattr(base, curve), getattr(method, curve)
    target = b[-1]
    sb = steps_to_target(base.log_steps, b, target)
    sm = steps_to_target(method.log_steps, m, target)
    if sm is None:
        return sb / method.steps, False
    return sb / max(sm, 1e-9), True


def effective_rank(m: torch.Tensor) -> float:
    """exp(entropy) of the normalised singular values (Roy and Vetterli 2007): 1 for rank one,
    ``min(m, n)`` for a flat spectrum."""
    s = torch.linalg.svdvals(m.double())
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def update_effective_ranks(model: torch.nn.Module, opt: torch.optim.Optimizer, batch) -> list[float]:
    """Effective rank of each attn/MLP matrix's update direction from the optimiser's current
    state on ``batch``: one step with every group's lr set to 1 and no weight decay, on a copy
    (the model and optimiser are left untouched)."""
    m2, o2 = copy.deepcopy((model, opt))
    for g in o2.param_groups:
        g["lr"], g["weight_decay"] = 1.0, 0.0
    mats, _ = matrix_params(m2)
    o2.zero_grad(set_to_none=True)
    m2(*batch)[1].backward()
    before = [p.detach().clone() for p in mats]
    type(o2).step(o2)  # not o2.step: an LR scheduler's wrapper would step the original optimiser
    return [effective_rank(p.detach() - b) for p, b in zip(mats, before)]


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximate orthogonalisation U V^T of ``g`` (Muon's quintic Newton-Schulz iteration,
    coefficients 3.4445, -4.7750, 2.0315): the cost SWAN-style whitening pays per step."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g / (g.norm() + eps)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return x.T if tall else x


def optimizer_step_timings(labels: Sequence[str], cfg: LlamaConfig, *, batch_size: int, lr: float,
                           device: torch.device | str = "cpu", warmup: int = 5, reps: int = 30,
                           opt_kwargs: dict[str, dict] | None = None, threads: int | None = 1) -> dict:
    """Time the optimiser step alone for each label in ``labels`` (a registered optimizer or
    ``"newton-schulz"``) on identical models with identical fixed gradients, interleaved
    (:func:`replib.timing.compare`). Returns ``{label: Timing}``."""
    cpu = torch.device(device).type == "cpu"
    with torch_threads(threads if cpu else None):
        torch.manual_seed(0)
        base = TinyLlama(cfg).to(device)
        x = torch.randint(0, cfg.vocab_size, (batch_size, cfg.seq_len), device=device)
        base(x, x.roll(-1, 1))[1].backward()
        fns = {}
        for label in labels:
            model = copy.deepcopy(base)  # a Parameter's deepcopy drops its .grad: copy the gradients
            for src, dst in zip(base.parameters(), model.parameters()):
                dst.grad = src.grad.clone()
            if label == "newton-schulz":
                fns[label] = _ns_step(model, lr)
            else:
                opt = make_optimizer(label, model, lr, **(opt_kwargs or {}).get(label, {}))
                fns[label] = opt.step
        return compare(fns, device, warmup=warmup, reps=reps)


def _ns_step(model: torch.nn.Module, lr: float) -> Callable[[], None]:
    mats, rest = matrix_params(model)
    states: dict[int, dict] = {id(p): {} for p in rest}

    @torch.no_grad()
    def step() -> None:
        for p in mats:
            o = newton_schulz(p.grad)
            p.add_(o, alpha=-lr * max(1.0, p.shape[0] / p.shape[1]) ** 0.5)
        for p in rest:
            adam_update_(p, p.grad, states[id(p)], lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    return step


def seconds_per_step(runs: Iterable[OptRun]) -> list[float]:
    return [r.seconds / max(1, len(r.loss)) for r in runs]


# ----------------------------------------------------------------------------- the all-optimizers page
def page_rows(sweep: Sweep, runs: dict, timings: dict, unigram_bpb: float, margin_bpb: float,
              baseline: str = "adamw") -> list[dict]:
    """One row per optimizer of ``sweep``, each at its own best learning rate: test bits/byte per
    seed, the paired per-seed difference to ``baseline`` (:func:`replib.claims.paired`), whether every
    seed learned (ended ``margin_bpb`` below the byte-unigram loss), the tokens-to-target ratio
    against the baseline's final test loss per seed (:func:`speedup`), the optimizer-state bytes
    over the parameter bytes, and the optimizer step's time relative to the baseline's (median
    and quartiles of the per-round ratios of ``timings``, :func:`optimizer_step_timings`)."""
    base = at_best(sweep, runs, baseline)
    base_bpb = [r.final_test_bpb for r in base]
    rows = []
    for name in sweep.runs:
        best = at_best(sweep, runs, name)
        bpb = [r.final_test_bpb for r in best]
        sp = [speedup(b, m) for b, m in zip(base, best)]
        t = timings.get(name)
        per_round = (np.array(t.seconds) / np.array(timings[baseline].seconds)) if t is not None else None
        rows.append({
            "optimizer": name, "best_lr": sweep.best_lr(name), "test_bpb": bpb,
            "vs_baseline": paired(bpb, base_bpb, names=(name, baseline)),
            "learned": all(math.isfinite(v) and v < unigram_bpb - margin_bpb for v in bpb),
            "speedup": [v for v, _ in sp], "reached": [ok for _, ok in sp],
            "state_over_params": best[0].state_bytes / best[0].param_bytes,
            "state_bytes": best[0].state_bytes,
            "step_time_ratio": float(np.median(per_round)) if per_round is not None else math.nan,
            "step_time_iqr": (tuple(float(q) for q in np.percentile(per_round, [25, 75]))
                              if per_round is not None else (math.nan, math.nan)),
            "seconds_per_step": seconds_per_step(best),
        })
    return rows


def overview_figure(rows: list[dict], unigram_bpb: float, baseline: str = "adamw"):
    """Four panels, one column per optimizer (ordered as ``rows``): final test bits/byte at its own
    best lr (seeds as dots, the paired difference to the baseline written under it), the
    tokens-to-target ratio against the baseline's final loss, optimizer-state bytes per parameter
    byte, and the optimizer step's time relative to the baseline's (median, quartile whiskers)."""
    names = [r["optimizer"] for r in rows]
    colors = dict(zip(names, palette(len(names))))
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.9))
    seed_dots(axes[0], {r["optimizer"]: r["test_bpb"] for r in rows}, "final test bits/byte",
              bars=False, colors=colors)
    axes[0].axhline(unigram_bpb, color="grey", ls="--", lw=1, label="byte unigram")
    base_mean = float(np.nanmean(next(r for r in rows if r["optimizer"] == baseline)["test_bpb"]))
    axes[0].axhline(base_mean, color="black", ls="-.", lw=0.8, label=f"{baseline} (mean)")
    for i, r in enumerate(rows):
        if r["optimizer"] != baseline:
            axes[0].annotate(f"Δ {r['vs_baseline'].mean:+.3f}", (i, 0), xycoords=("data", "axes fraction"),
                             ha="center", xytext=(0, 4), textcoords="offset points", fontsize=8)
    axes[0].set_title("at each optimizer's own best lr")
    axes[0].legend(fontsize=7, loc="upper left")
    seed_dots(axes[1], {r["optimizer"]: r["speedup"] for r in rows}, f"tokens-to-target ratio vs {baseline}",
              bars=False, colors=colors)
    axes[1].axhline(1.0, color="black", lw=0.8)
    axes[1].set_title(f"reaching {baseline}'s final loss (>1: faster)")
    axes[2].bar(range(len(rows)), [r["state_over_params"] for r in rows], color=[colors[n] for n in names])
    axes[2].set_xticks(range(len(rows)), names)
    axes[2].set(ylabel="state bytes / parameter bytes", title="optimizer state (measured), from 0")
    med = [r["step_time_ratio"] for r in rows]
    lo = [m - r["step_time_iqr"][0] for m, r in zip(med, rows)]
    hi = [r["step_time_iqr"][1] - m for m, r in zip(med, rows)]
    axes[3].bar(range(len(rows)), med, yerr=[lo, hi], capsize=4, color=[colors[n] for n in names])
    axes[3].axhline(1.0, color="black", lw=0.8)
    axes[3].set_xticks(range(len(rows)), names)
    axes[3].set(ylabel=f"optimizer step time / {baseline}'s", title="optimizer step alone, from 0")
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    return fig


__all__ = ["LMData", "OptRun", "at_best", "effective_rank", "lm_data_split", "log_ratio", "make_optimizer",
           "newton_schulz", "optimizer_step_timings", "optimizer_sweep", "overview_figure", "page_rows", "run_lm",
           "seconds_per_step", "speedup", "steps_to_target", "sweep_record", "update_effective_ranks"]
