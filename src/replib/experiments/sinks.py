r"""Attention and residual sinks, measured on trained TinyGPTs (chapter 13; also chapter 19's diagnostics).

Chapter 13 (arXiv 2601.22966) trains the same byte-level language model with different ways of
rescaling (:data:`ARMS`: gated attention, PreAffine, GatedNorm, DyT instead of RMSNorm, clipping
of the residual stream) and measures, on a fixed probe batch of the trained model:

- the largest activation :math:`\max |h|` of the residual stream :math:`h_0..h_L`;
- the residual-sink score, per layer :math:`\max_j m_j / \mathrm{median}_j m_j` with
  :math:`m_j = \mathrm{mean}_{tokens} |h_j|` (one hidden dimension far above the others), the
  largest over layers;
- the attention sink: the attention weight on token 0, averaged over heads, layers and the query
  positions at or after ``min_pos`` (:func:`first_token_mass`);
- the test loss after 4-bit fake quantisation of weights (per output channel) and of the inputs
  of every linear layer in the blocks (per token), symmetric round-to-nearest (:func:`fake_quant`).

Training is :func:`replib.experiments.placement.run_placement` (Pre-LN, AdamW, warm-up + cosine,
clipping at 1.0); every arm gets the same learning-rate grid (:func:`sink_sweep`). Clipping is a
forward hook on every block (:func:`clipped_residuals`), active in training and evaluation.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..claims import Health, Rule, Verdict, all_of, decide_side, graded, holds, log_paired, paired
from ..nn import TinyGPT, hidden_states
from ..nn.attention.affine import AffineScaledAttention, softmax_weights
from ..nn.attention.gated import SinkAttention, sink_weights
from ..nn.transformer import Block
from ..runtime import torch_threads
from ..train import Sweep, lm_loss
from ..train import lr_sweep as _lr_sweep
from .placement import LN2, LMData, run_placement, sweep_record

SINK_SCORE_MIN = 5.0  # the spec: below it in the baseline, no residual sink emerged ("not testable")


@dataclass(frozen=True)
class Arm:
    """One training arm: the norm, the attention entry, the MLP (the spec's base model is SwiGLU),
    and an optional residual clip."""

    norm: str = "rmsnorm"
    attention: str = "softmax"
    mlp: str = "swiglu"
    clip: float | None = None
    label: str = ""


ARMS: dict[str, Arm] = {
    "baseline": Arm(label="RMSNorm, softmax attention"),
    "GA": Arm(attention="gated", label="gated attention"),
    "GA+PreAffine": Arm(norm="preaffine", attention="gated", label="GA, RMSNorm(λ₁⊙x) everywhere"),
    "GA+GatedNorm": Arm(norm="gatednorm", attention="gated", label="GA, GatedNorm everywhere"),
    "DyT": Arm(norm="dyt", label="tanh instead of every RMSNorm"),
    "clip10": Arm(clip=10.0, label="residual clamped at ±10 after every block"),
    "clip100": Arm(clip=100.0, label="residual clamped at ±100 after every block"),
    "sigmoid-GLU": Arm(mlp="sigmoid-glu", label="a sigmoid, not SiLU, gates the MLP (bounded gate)"),
}


# ------------------------------------------------------------------------------------ instruments

@contextmanager
def clipped_residuals(c: float | None) -> Iterator[None]:
    """Within the context, every :class:`~replib.nn.transformer.Block` output is ``clamp(h, -c, c)``
    (a global module hook, so it also applies to models built inside the context)."""
    if c is None:
        yield
        return
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda m, args, out: out.clamp(-c, c) if isinstance(m, Block) else None)
    try:
        yield
    finally:
        hook.remove()


@torch.no_grad()
def attention_inputs(model: TinyGPT, idx: torch.Tensor) -> list[torch.Tensor]:
    """The input of every block's attention (the normed residual stream), in layer order."""
    got: list[torch.Tensor] = []
    hooks = [b.attn.register_forward_pre_hook(lambda m, args: got.append(args[0].detach()))
             for b in model.blocks]
    try:
        model(idx)
    finally:
        for h in hooks:
            h.remove()
    return got


@torch.no_grad()
def attention_maps(model: TinyGPT, idx: torch.Tensor) -> list[torch.Tensor]:
    """Per layer the ``(B, H, T, T)`` weights on the real keys: the softmax :math:`P` (for the
    sink entry the weights beside the sink column, summing to :math:`1 - p_{sink}`; for
    affine-scaled attention :math:`P` before the affine map)."""
    maps = []
    for block, x in zip(model.blocks, attention_inputs(model, idx)):
        q, k, _ = block.attn.heads(x)
        if isinstance(block.attn, SinkAttention):
            maps.append(sink_weights(q, k, block.attn.sink)[0])
        else:
            maps.append(softmax_weights(q, k))
    return maps


def first_token_mass(maps: Sequence[torch.Tensor], min_pos: int) -> float:
    """Mean attention weight on token 0 over layers, heads and queries at positions >= min_pos."""
    return float(torch.stack([m[..., min_pos:, 0].float().mean() for m in maps]).mean())


def row_entropy(maps: Sequence[torch.Tensor], min_pos: int) -> float:
    """Mean entropy (nats) of the attention rows of queries at positions >= min_pos."""
    ent = [-(m[..., min_pos:, :].float().clamp_min(1e-30).log() * m[..., min_pos:, :].float()).sum(-1).mean()
           for m in maps]
    return float(torch.stack(ent).mean())


def residual_sink_score(states: Sequence[torch.Tensor]) -> float:
    r""":math:`\max_\ell \max_j m_j / \mathrm{median}_j m_j`, :math:`m_j` the mean :math:`|h_j|` over
    tokens in layer :math:`\ell` (a dimension that dominates every token)."""
    scores = []
    for h in states:
        m = h.float().abs().reshape(-1, h.shape[-1]).mean(0)
        scores.append(float(m.max() / m.median().clamp_min(1e-12)))
    return max(scores)


def mad_spikes(loss: Sequence[float], window: int = 50, k: float = 5.0) -> int:
    """Steps whose loss exceeds the median of the previous ``window`` steps by more than ``k``
    median absolute deviations (chapter 19's spike count); stops at the first non-finite loss."""
    y, n = np.asarray(loss, dtype=float), 0
    for t in range(window, len(y)):
        if not np.isfinite(y[t]):
            break
        prev = y[t - window:t]
        med = np.median(prev)
        n += int(y[t] > med + k * np.median(np.abs(prev - med)))
    return n


def late_std(values: Sequence[float]) -> float:
    """Standard deviation over the second half of a logged series (e.g. gradient norms)."""
    v = np.asarray(values, dtype=float)[len(values) // 2:]
    return float(v.std(ddof=1)) if len(v) > 1 and np.isfinite(v).all() else math.nan


def quantize_symmetric(t: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """Symmetric round-to-nearest fake quantisation along the last dimension (one scale per row)."""
    qmax = 2 ** (bits - 1) - 1
    scale = t.abs().amax(-1, keepdim=True).clamp_min(1e-12) / qmax
    return (t / scale).round().clamp(-qmax - 1, qmax) * scale


@contextmanager
def fake_quant(model: TinyGPT, bits: int = 4) -> Iterator[None]:
    """W``bits``A``bits`` inside the context for every ``nn.Linear`` in the blocks: weights per
    output channel, inputs per token. The embedding and the head stay in full precision."""
    linears = [m for b in model.blocks for m in b.modules() if isinstance(m, nn.Linear)]
    saved = [m.weight.detach().clone() for m in linears]
    hooks = [m.register_forward_pre_hook(lambda m, args: (quantize_symmetric(args[0], bits),))
             for m in linears]
    try:
        with torch.no_grad():
            for m in linears:
                m.weight.copy_(quantize_symmetric(m.weight, bits))
        yield
    finally:
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for m, w in zip(linears, saved):
                m.weight.copy_(w)


def probe(model: TinyGPT, data: LMData, min_pos: int, bits: int = 4) -> dict[str, float]:
    """The outlier and sink measurements of one trained model (eval mode)."""
    model.eval()
    states = hidden_states(model, data.probe)
    maps = attention_maps(model, data.probe)
    out = {"max_act": max(float(h.abs().max()) for h in states),
           "sink_score": residual_sink_score(states),
           "first_token": first_token_mass(maps, min_pos),
           "entropy": row_entropy(maps, min_pos)}
    alphas = [b.attn.last_alpha for b in model.blocks if isinstance(b.attn, AffineScaledAttention)]
    if alphas:
        out["alpha_mean"] = float(torch.stack([a.float().mean() for a in alphas]).mean())
        out["alpha_std"] = float(torch.stack([a.float().std() for a in alphas]).mean())
    if data.test_x is not None:
        with fake_quant(model, bits):
            out[f"test_w{bits}a{bits}"] = lm_loss(model, data.test_x, data.test_y) / LN2
    return out


# ------------------------------------------------------------------------------------- the sweep

@dataclass
class SinkRun:
    """What one run kept: the sweep record (bits/byte, curves) and its probe measurements."""

    arm: str
    lr: float
    seed: int
    record: dict
    loss: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)  # total gradient norm at each log step


def train_arm(arm: str, seed: int, lr: float, data: LMData, arms: Mapping[str, Arm] = ARMS, *,
              min_pos: int, **kw) -> SinkRun:
    """Train one arm with :func:`run_placement` (Pre-LN) and probe the trained model; a diverged
    run gets NaN probe values."""
    a = arms[arm]
    with clipped_residuals(a.clip):
        run = run_placement("pre", seed, lr, data, norm=a.norm, keep_model=True,
                            model_kwargs={"attention": a.attention, "mlp": a.mlp}, **kw)
        rec = sweep_record(run)
        keys = ("max_act", "sink_score", "first_token", "entropy", "test_w4a4")
        if run.nan:
            rec.update(dict.fromkeys(keys, math.nan))
        else:  # one thread, as the training run: tiny models are slower on two busy cores
            with torch_threads(1 if torch.device(data.probe.device).type == "cpu" else None):
                rec.update(probe(run.model, data, min_pos))
    grads = [math.sqrt(sum(g * g for g in gs)) for gs in run.grad_norms]
    rec.update(mad_spikes=mad_spikes(run.loss), grad_std=math.nan if run.nan else late_std(grads))
    return SinkRun(arm, lr, seed, rec, list(run.loss), grads)


def sink_sweep(arms: Sequence[str], grid: Sequence[float], seeds: Sequence[int], data: LMData, *,
               arm_table: Mapping[str, Arm] = ARMS, progress: bool = True,
               **kw) -> tuple[Sweep, dict[tuple[str, float, int], SinkRun]]:
    """Every arm at every learning rate of the same grid, every seed; selected on validation
    bits/byte (``kw`` go to :func:`train_arm`: ``min_pos`` and :func:`run_placement`'s sizes)."""
    runs: dict[tuple[str, float, int], SinkRun] = {}

    def one(arm: str, lr: float, seed: int) -> dict:
        runs[(arm, lr, seed)] = r = train_arm(arm, seed, lr, data, arm_table, **kw)
        return r.record

    return _lr_sweep(list(arms), list(grid), list(seeds), one, select_on="val",
                     progress=progress), runs


def at_best(sweep: Sweep, key: str, arm: str) -> list[float]:
    """Per seed, ``key`` of ``arm``'s runs at its own best learning rate (NaN if none)."""
    return [float(v) if v is not None else math.nan for v in sweep.at_best(arm, key)]


def at_lr(sweep: Sweep, key: str, arm: str, lr: float) -> list[float]:
    """Per seed, ``key`` of ``arm``'s runs at learning rate ``lr``."""
    return [float(r.get(key, math.nan)) for r in sweep.runs[arm][lr]]


# ---------------------------------------------------------------------------- chapter 13's rules
# Decided on paired per-seed differences (Student-t, 95 %) at each arm's own best learning rate,
# after the health gate. The spec: when the baseline grows no residual sink (median sink score
# below SINK_SCORE_MIN), a claim that would be "not replicated" is "not testable at scale".

def _no_sink(m) -> bool:
    s = m["baseline sink score"].finite
    return len(s) > 0 and float(np.median(s)) < SINK_SCORE_MIN


def _sink_guard(verdict: Verdict, why: str, m) -> tuple[Verdict, str]:
    if verdict is Verdict.NOT_REPLICATED and _no_sink(m):
        return Verdict.NOT_TESTABLE, (why + f"; the baseline grew no residual sink (median score "
                                      f"{float(np.median(m['baseline sink score'].finite)):.3g} < "
                                      f"{SINK_SCORE_MIN:g}): not testable at this scale")
    return verdict, why


def dyt_rule(health: Health, margin_bpb: float) -> Rule:
    """C1: DyT instead of RMSNorm is worse (or diverges) while its activations are smaller."""
    text = (
        f"Claim: replacing every RMSNorm by DyT hurts. Worse part: DyT diverges at the baseline's best "
        f"learning rate in some seed, or paired DyT − baseline test bits/byte (each at its own best "
        f"learning rate) has its 95% t-interval above {margin_bpb:.3g} (0.05 nats). Outlier part: paired "
        "log(max |h| DyT / baseline) interval below 0. Replicated if both parts hold, not replicated if "
        "either is refuted, inconclusive otherwise; 'not replicated' becomes 'not testable' when the "
        f"baseline's median residual-sink score is below {SINK_SCORE_MIN:g} (the spec). Only the "
        "baseline is health-gated: a DyT that does not learn is the claimed harm.")

    def decide(m):
        worse = paired(m["DyT"], m["baseline"], names=("DyT", "baseline"))
        div = m["DyT diverged at baseline lr"].finite.sum() > 0
        worse_part = True if div else holds(decide_side(worse, claimed="above", threshold=margin_bpb))
        act = log_paired(m["DyT max act"], m["baseline max act"], names=("log max|h| DyT", "baseline"))
        act_part = holds(decide_side(act, claimed="below"))
        why = f"{worse}; DyT diverged at the baseline's lr: {bool(div)}; {act}"
        return _sink_guard(all_of(worse_part, act_part), why, m)

    return Rule(text, decide, health, ("baseline",))


def clip_rule(health: Health) -> Rule:
    """C2: clipping the residual at 10 hurts (worse than the baseline, or diverges)."""
    text = (
        "Claim: clipping the residual stream at ±10 after every block hurts. Paired clip10 − baseline "
        "test bits/byte, each at its own best learning rate: replicated if a clip10 seed diverged (at "
        "every grid point) or the 95% t-interval lies above 0, not replicated if it lies at or below 0, "
        "inconclusive otherwise; 'not replicated' becomes 'not testable' without a residual sink in the "
        "baseline. Only the baseline is health-gated.")

    def decide(m):
        p = paired(m["clip10"], m["baseline"], names=("clip10", "baseline"))
        if m["clip10"].n_diverged:
            return Verdict.REPLICATED, f"clip10 diverged in {m['clip10'].n_diverged} seeds; {p}"
        return _sink_guard(decide_side(p, claimed="above"), f"{p}", m)

    return Rule(text, decide, health, ("baseline",))


def gatednorm_rule(health: Health) -> Rule:
    """C3: GatedNorm (on top of GA) lowers the loss and shrinks the largest activation >= 2x."""
    text = (
        "Claim: adding GatedNorm to gated attention lowers the loss and the largest activation. Loss "
        "part: paired GA+GatedNorm − GA test bits/byte, 95% t-interval below 0. Activation part: paired "
        "log(max |h| GA+GatedNorm / GA) interval below −log 2 (at least 2× smaller). Replicated if both "
        "hold, partially replicated if exactly one holds and the other is refuted, not replicated if both "
        "are refuted, inconclusive otherwise (the spec's tiers); 'not replicated' becomes 'not testable' "
        "without a residual sink in the baseline.")

    def decide(m):
        loss = paired(m["GA+GatedNorm"], m["GA"], names=("GA+GatedNorm", "GA"))
        act = log_paired(m["GA+GatedNorm max act"], m["GA max act"], names=("log max|h| GA+GatedNorm", "GA"))
        a, b = (holds(decide_side(loss, claimed="below")),
                holds(decide_side(act, claimed="below", threshold=-math.log(2))))
        if a is None or b is None:  # an undecided part leaves the tier open (full/partial/none)
            verdict = Verdict.INCONCLUSIVE
        else:
            verdict = graded(all_of(a, b), a != b)
        return _sink_guard(verdict, f"{loss}; {act}", m)

    return Rule(text, decide, health, ("GA", "GA+GatedNorm"))


def quant_rule(health: Health) -> Rule:
    """C4 analog: W4A4 fake quantisation costs GatedNorm less than GA."""
    text = (
        "Claim (analog of W4A4 benchmarks): GatedNorm's model loses less under 4-bit weights and "
        "activations. Per seed, degradation = W4A4 test bits/byte − full-precision test bits/byte; paired "
        "GA+GatedNorm − GA degradation with a 95% t-interval: replicated if below 0, not replicated if at "
        "or above 0, inconclusive otherwise; 'not replicated' becomes 'not testable' without a residual "
        "sink in the baseline.")

    def decide(m):
        p = paired(m["GA+GatedNorm degradation"], m["GA degradation"],
                   names=("GA+GatedNorm degradation", "GA degradation"))
        return _sink_guard(decide_side(p, claimed="below"), f"{p}", m)

    return Rule(text, decide, health, ("GA", "GA+GatedNorm"))


# ---------------------------------------------------------------------------------------- figures

def plot_outliers(axes, sweep: Sweep, arms: Sequence[str]) -> None:
    """Three panels, each arm at its best lr, seeds as dots: max |h|, residual-sink score, and the
    attention weight on token 0."""
    from .. import plotting
    for ax, key, label in zip(axes, ("max_act", "sink_score", "first_token"),
                              ("max |h| on the probe batch", "residual-sink score", "attention on token 0")):
        plotting.seed_dots(ax, {a: at_best(sweep, key, a) for a in arms}, label, order=arms, bars=False)
        ax.tick_params(axis="x", rotation=35)
        if key != "first_token":
            ax.set_yscale("log")
    axes[1].axhline(SINK_SCORE_MIN, color="grey", ls="--", lw=1)


def plot_quantisation(ax, sweep: Sweep, arms: Sequence[str]) -> None:
    """Per arm at its best lr: test bits/byte in full precision and under W4A4 (seed means)."""
    x = np.arange(len(arms))
    full = [np.nanmean(at_best(sweep, "test", a)) for a in arms]
    quant = [np.nanmean(at_best(sweep, "test_w4a4", a)) for a in arms]
    ax.bar(x - 0.2, full, 0.4, label="full precision")
    ax.bar(x + 0.2, quant, 0.4, label="W4A4 (fake-quantised)")
    ax.set_xticks(x, arms, rotation=35)
    ax.set_ylabel("test bits/byte")
    ax.legend(fontsize=8)


__all__ = ["ARMS", "Arm", "SinkRun", "at_best", "at_lr", "attention_inputs", "attention_maps",
           "clip_rule", "clipped_residuals", "dyt_rule", "fake_quant", "first_token_mass",
           "gatednorm_rule", "late_std", "mad_spikes", "plot_outliers", "plot_quantisation", "probe", "quant_rule",
           "quantize_symmetric", "residual_sink_score", "row_entropy", "sink_sweep", "train_arm"]
