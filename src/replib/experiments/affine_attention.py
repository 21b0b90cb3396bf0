r"""Affine-scaled attention against softmax and a learned sink (chapter 19, arXiv 2602.23057).

Three arms of one byte-level TinyGPT (Pre-LN, RMSNorm) that differ only in the attention entry
(:data:`ARMS`): ``softmax``, ``sink`` (a learned per-head sink logit,
:class:`replib.nn.attention.gated.SinkAttention`) and ``affine``
(:class:`replib.nn.attention.affine.AffineScaledAttention`). Every arm is trained over the same
learning-rate grid and seeds by :func:`replib.experiments.sinks.sink_sweep`, which also probes the
trained models: attention weight on token 0 and row entropy of :math:`P` (before the affine map),
the affine layers' :math:`\alpha`, spikes (loss above the median of the previous 50 steps by 5
MADs) and the spread of the gradient norm over the second half of training.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..claims import Health, Rule, all_of, at_most, decide_side, graded, holds, log_paired, paired
from ..train import Sweep
from .sinks import Arm, at_best, at_lr

ARMS: dict[str, Arm] = {
    "softmax": Arm(label="standard causal softmax attention"),
    "sink": Arm(attention="sink", label="softmax with a learned sink logit per head"),
    "affine": Arm(attention="affine", label="affine-scaled attention"),
}


def high_lr_events(sweep: Sweep, arm: str, lrs: Sequence[float]) -> list[float]:
    """Per seed, divergences + spike steps (median + 5 MAD rule) summed over ``lrs``."""
    per_lr = [np.asarray(at_lr(sweep, "mad_spikes", arm, lr)) + np.asarray(at_lr(sweep, "diverged", arm, lr))
              for lr in lrs]
    return [float(v) for v in np.sum(per_lr, axis=0)]


def quality_rule(health: Health) -> Rule:
    """C1: affine-scaled attention reaches lower test bits/byte than softmax and than the sink."""
    text = (
        "Claim: affine-scaled attention improves on softmax attention and on the attention-sink "
        "baseline. Each arm is read at its own best learning rate of the shared grid (chosen on "
        "validation, judged on test bits/byte). Main part: paired affine − softmax with a 95% "
        "Student-t interval below 0; sink part: paired affine − sink below 0. Replicated if both parts "
        "hold, partially replicated if the main part holds and the sink part is refuted, not replicated "
        "if the main part is refuted, inconclusive otherwise.")

    def decide(m):
        main = paired(m["affine"], m["softmax"], names=("affine", "softmax"))
        sink = paired(m["affine"], m["sink"], names=("affine", "sink"))
        a, b = holds(decide_side(main, claimed="below")), holds(decide_side(sink, claimed="below"))
        verdict = graded(all_of(a, b), a) if a is not None else all_of(a)
        return verdict, f"{main}; {sink}"

    return Rule(text, decide, health, ("softmax", "sink", "affine"))


def stability_rule() -> Rule:
    """C2: at high learning rates affine has no more spikes/divergences and a steadier gradient norm."""
    text = (
        "Claim: affine-scaled attention trains more stably than softmax. At the grid's two highest "
        "learning rates, per seed: spike steps (loss above the median of the previous 50 steps by more "
        "than 5 median absolute deviations) + divergences, summed; and at the highest learning rate the "
        "standard deviation of the total gradient norm over the second half of training (logged points). "
        "Events part: paired affine − softmax events, 95% t-interval at or below 0 (no more events). "
        "Gradient part: paired log(std affine / std softmax) interval below 0. Replicated if both hold, "
        "not replicated if either is refuted, inconclusive otherwise. No health gate: divergence is what "
        "this claim counts (a diverged seed drops out of the gradient part).")

    def decide(m):
        ev = paired(m["affine events"], m["softmax events"], names=("affine events", "softmax events"))
        gn = log_paired(m["affine grad std"], m["softmax grad std"], names=("log grad std affine", "softmax"))
        return all_of(at_most(ev, 0.0), holds(decide_side(gn, claimed="below"))), f"{ev}; {gn}"

    return Rule(text, decide)


def sink_mass_rule(health: Health) -> Rule:
    """C3: less attention on the first token with affine scaling than with softmax."""
    text = (
        "Claim (from secondary notes, unverified in the paper): affine scaling reduces the attention "
        "mass on the first token. Mean weight of P on token 0 over layers, heads and queries at "
        "positions ≥ T/4 on the probe batch, each arm at its own best learning rate; paired affine − "
        "softmax with a 95% t-interval: replicated if below 0, not replicated if at or above 0, "
        "inconclusive otherwise.")

    def decide(m):
        p = paired(m["affine first-token"], m["softmax first-token"],
                   names=("affine first-token", "softmax first-token"))
        return decide_side(p, claimed="below"), f"{p}"

    return Rule(text, decide, health, ("softmax", "affine"))


def plot_events(ax, sweep: Sweep, arms: Sequence[str]) -> None:
    """Spike steps + divergences per seed against the learning rate, one line per arm."""
    from .. import plotting
    for arm in arms:
        ev = [[a + b for a, b in zip(at_lr(sweep, "mad_spikes", arm, lr), at_lr(sweep, "diverged", arm, lr))]
              for lr in sweep.grid]
        plotting.mean_band(ax, list(sweep.grid), np.asarray(ev, dtype=float).T, arm, marker="o")
    ax.set(xscale="log", xlabel="peak learning rate", ylabel="spikes + divergences per run")
    ax.set_xticks(list(sweep.grid), [f"{lr:g}" for lr in sweep.grid])
    ax.minorticks_off()
    ax.legend(fontsize=8)


def plot_attention(axes, sweep: Sweep, arms: Sequence[str]) -> None:
    """Two panels at each arm's best lr, seeds as dots: weight on token 0, and row entropy of P."""
    from .. import plotting
    for ax, key, label in zip(axes, ("first_token", "entropy"),
                              ("attention on token 0", "row entropy of P (nats)")):
        plotting.seed_dots(ax, {a: at_best(sweep, key, a) for a in arms}, label, order=arms, bars=False)


def finite_mean(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=float)
    return float(v[np.isfinite(v)].mean()) if np.isfinite(v).any() else math.nan


__all__ = ["ARMS", "finite_mean", "high_lr_events", "plot_attention", "plot_events", "quality_rule",
           "sink_mass_rule", "stability_rule"]
