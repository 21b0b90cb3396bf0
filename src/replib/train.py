"""A small training loop: progress with tqdm.auto, periodic evaluation, divergence as an outcome.

A run whose loss turns NaN or infinite stops and says so in its :class:`History`; the caller
records that seed as diverged instead of the notebook crashing. :func:`lr_sweep` gives every arm of
a comparison the same learning-rate grid and picks each arm's own best on a validation metric.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import ReplibError


@dataclass
class History:
    loss: list[float] = field(default_factory=list)  # training loss at every step
    evals: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # (step, metrics)
    diverged_at: int | None = None  # first step whose loss was not finite
    seconds: float = 0.0

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None

    def eval_series(self, key: str) -> tuple[list[int], list[float]]:
        steps = [s for s, m in self.evals if key in m]
        return steps, [m[key] for s, m in self.evals if key in m]

    def final(self, key: str) -> float:
        """Last evaluation of ``key``; ``nan`` for a diverged run."""
        if self.diverged:
            return math.nan
        _, values = self.eval_series(key)
        return values[-1] if values else math.nan

    def first_step_below(self, key: str, target: float) -> int | None:
        """The first evaluated step where ``key`` fell to ``target`` or below (None: never)."""
        for step, m in self.evals:
            if key in m and m[key] <= target:
                return step
        return None


def progress_bar(iterable, progress: bool = True, **kw) -> tqdm:
    """``tqdm.auto`` over ``iterable``; ``progress=False`` silences it. ``disable`` is passed only to
    silence, so the ``TQDM_DISABLE=1`` a book build sets still holds (an explicit ``disable=False``
    would override it and leave a frozen "0%" bar in the stored page)."""
    return tqdm(iterable, **kw) if progress else tqdm(iterable, disable=True, **kw)


def train(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[Any],
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
    steps: int,
    *,
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    eval_every: int = 0,
    grad_clip: float | None = None,
    scheduler: Any = None,
    on_backward: Callable[[int, torch.nn.Module], None] | None = None,
    desc: str = "train",
    progress: bool = True,
) -> History:
    """Run ``steps`` optimizer steps of ``loss_fn(model, next(batches))``.

    ``evaluate(model)`` runs in eval mode under ``no_grad`` every ``eval_every`` steps and after
    the last one; its metrics land in ``History.evals``. ``on_backward(step, model)`` runs after
    every backward pass, before clipping and the optimizer step (to log raw gradients).
    """
    hist = History()
    t0 = time.perf_counter()

    def run_eval(step: int) -> None:
        if evaluate is None:
            return
        model.eval()
        with torch.no_grad():
            hist.evals.append((step, {k: float(v) for k, v in evaluate(model).items()}))
        model.train()

    model.train()
    bar = progress_bar(range(1, steps + 1), progress, desc=desc, leave=False, mininterval=1)
    for step in bar:
        loss = loss_fn(model, next(batches))
        value = float(loss.detach())
        hist.loss.append(value)
        if not math.isfinite(value):
            hist.diverged_at = step
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if on_backward is not None:
            on_backward(step, model)
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if eval_every and step % eval_every == 0 and step != steps:
            run_eval(step)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{value:.4f}", refresh=False)
    bar.close()
    if not hist.diverged:
        run_eval(steps)
    hist.seconds = time.perf_counter() - t0
    return hist


def warmup_cosine(total_steps: int, *, warmup_steps: int | None = None,
                  warmup_frac: float | None = None, min_ratio: float = 0.0) -> Callable[[int], float]:
    r"""Learning-rate multiplier for ``torch.optim.lr_scheduler.LambdaLR``: linear warm-up, then
    cosine decay from 1 to ``min_ratio`` at ``total_steps``.

    .. math:: f(s) = \frac{s+1}{w}\ (s < w),\qquad
              f(s) = r + (1-r)\,\tfrac12\big(1+\cos(\pi \min(1, \tfrac{s-w}{T-w}))\big)

    Give the warm-up as ``warmup_steps`` or as ``warmup_frac`` of ``total_steps`` (rounded, >= 1).
    """
    if (warmup_steps is None) == (warmup_frac is None):
        raise ReplibError("give exactly one of warmup_steps and warmup_frac")
    warm = warmup_steps if warmup_steps is not None else max(1, int(round(warmup_frac * total_steps)))
    if warm < 1 or total_steps < 0:
        raise ReplibError(f"need total_steps >= 0 and warm-up >= 1 step, got {total_steps}, {warm}")

    def factor(step: int) -> float:  # LambdaLR passes the number of scheduler steps taken so far
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


@torch.no_grad()
def lm_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 64) -> float:
    """Mean next-token cross-entropy of a ``TinyGPT``-like model (``model(x, y) -> (logits, loss)``)
    over evaluation windows, in chunks of ``chunk`` windows, weighted by tokens."""
    total, count = 0.0, 0
    for i in range(0, x.shape[0], chunk):
        xb, yb = x[i:i + chunk], y[i:i + chunk]
        total += float(model(xb, yb)[1]) * yb.numel()
        count += yb.numel()
    return total / count


def adamw(model: torch.nn.Module, lr: float, weight_decay: float = 0.1,
          betas: tuple[float, float] = (0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings only, not on gains, biases or scalars
    (the GPT-2/nanoGPT convention every chapter's trainer follows)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=lr, betas=betas)


@dataclass
class Sweep:
    """Every arm trained at every learning rate of one grid, for every seed.

    ``runs[arm][lr]`` is a list (one entry per seed) of the metric dicts the run function returned.
    Each arm's best learning rate minimises (or maximises) the mean of ``select_on`` over seeds; a
    learning rate where any seed diverged (non-finite ``select_on``) is not eligible. Judge arms at
    :meth:`at_best`, on a metric other than ``select_on`` where the data has a test split.
    """

    grid: tuple[float, ...]
    seeds: tuple[int, ...]
    select_on: str
    lower_is_better: bool
    runs: dict[str, dict[float, list[dict[str, Any]]]]

    def score(self, arm: str, lr: float) -> float:
        vals = [float(r.get(self.select_on, math.nan)) for r in self.runs[arm][lr]]
        if not vals or not all(math.isfinite(v) for v in vals):
            return math.nan
        return float(np.mean(vals))

    def best_lr(self, arm: str) -> float | None:
        """The arm's best learning rate; None when every grid point diverged for some seed."""
        scored = [(self.score(arm, lr), lr) for lr in self.grid]
        scored = [(s if self.lower_is_better else -s, lr) for s, lr in scored if math.isfinite(s)]
        return min(scored)[1] if scored else None

    def at_best(self, arm: str, key: str | None = None) -> list[Any]:
        """Per-seed ``key`` (default ``select_on``) at the arm's best lr; NaN per seed if none."""
        lr = self.best_lr(arm)
        if lr is None:
            return [math.nan] * len(self.seeds)
        return [r.get(key or self.select_on, math.nan) for r in self.runs[arm][lr]]

    def edge_note(self) -> str:
        """Arms whose best learning rate is at an end of the grid (the optimum may lie beyond)."""
        ends = {self.grid[0], self.grid[-1]}
        hit = [f"{arm} ({lr:g})" for arm in self.runs if (lr := self.best_lr(arm)) in ends]
        return (f"best learning rate at the grid's edge for {', '.join(hit)}: the optimum may lie "
                "beyond the grid") if hit and len(self.grid) > 1 else ""

    def to_json(self) -> dict:
        def clean(v):
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, (list, tuple)):
                return [clean(x) for x in v]
            return v
        return {"grid": list(self.grid), "seeds": list(self.seeds), "select_on": self.select_on,
                "lower_is_better": self.lower_is_better,
                "runs": {arm: {f"{lr:g}": [{k: clean(v) for k, v in r.items()} for r in per]
                               for lr, per in lrs.items()} for arm, lrs in self.runs.items()},
                "best": {arm: self.best_lr(arm) for arm in self.runs}}


def lr_sweep(arms: Sequence[str], grid: Sequence[float], seeds: Sequence[int],
             run: Callable[[str, float, int], Mapping[str, Any]], *, select_on: str,
             lower_is_better: bool = True, progress: bool = True) -> Sweep:
    """Run ``run(arm, lr, seed)`` over the whole grid for every arm; the same grid for every arm.

    ``run`` returns a dict of metrics (a diverged run returns NaN for them, it does not raise).
    """
    if len(grid) < 1 or len(set(grid)) != len(grid):
        raise ReplibError(f"learning-rate grid {list(grid)} must be non-empty without repeats")
    grid = tuple(sorted(float(g) for g in grid))
    runs: dict[str, dict[float, list[dict[str, Any]]]] = {a: {lr: [] for lr in grid} for a in arms}
    jobs = [(a, lr, s) for a in arms for lr in grid for s in seeds]
    for arm, lr, seed in progress_bar(jobs, progress, desc="lr sweep", leave=False):
        out = dict(run(arm, lr, seed))
        if select_on not in out:
            raise ReplibError(f"run({arm!r}, {lr:g}, {seed}) returned no {select_on!r}")
        runs[arm][lr].append(out)
    return Sweep(grid, tuple(seeds), select_on, lower_is_better, runs)
