r"""Chapter 24 (NaLaFormer, Meng et al. 2025, arXiv 2506.21137) and the linear-attention family's
shared measurements (chapter 33 reuses its arms' shape and :func:`kernel_costs`).

- :func:`entropy_correlation`: C2, Spearman :math:`\rho(\lVert q\rVert, \text{row entropy})` of the
  normalised attention weights of softmax, ReLU / elu+1 linear attention and NaLa, on random
  ``q, k`` whose queries are scaled by ``c``;
- :data:`ARMS`: TinyGPT language models that differ only in the attention entry (any
  :class:`~replib.nn.GPTConfig` options per arm), trained by
  :func:`replib.experiments.placement.arm_sweep` on one learning-rate grid;
- :func:`kernel_costs`: time (and memory) of token mixers alone across sequence lengths, as ratios
  to a baseline in the same run, with the fitted log-log exponent;
- the verdict rules of chapter 24 and ``plot_*`` figure functions (each returns its figure).
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from ..claims import Health, Rule, Verdict, decide_side, graded, loglog_slope, paired
from ..nn.attention.nala import nala_attention, nala_weights
from ..runtime import torch_threads
from ..timing import compare, peak_cuda_bytes, saved_for_backward_bytes

# ------------------------------------------------------------------ C2: query norm and entropy
ENTROPY_KERNELS = ("softmax", "relu-linear", "elu1-linear", "nala")


def attention_weights(kernel: str, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Row-normalised non-causal weights ``(N, N)`` of ``kernel`` for queries ``q`` and keys ``k``."""
    if kernel == "softmax":
        return (q @ k.T / math.sqrt(q.shape[-1])).softmax(-1)
    if kernel == "nala":
        return nala_weights(q, k)
    phi = {"relu-linear": F.relu, "elu1-linear": lambda x: F.elu(x) + 1}[kernel]
    a = phi(q) @ phi(k).T
    return a / a.sum(-1, keepdim=True)


def row_entropy(w: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row of a row-stochastic matrix (``0 log 0 = 0``)."""
    return -(w * torch.where(w > 0, w.log(), torch.zeros_like(w))).sum(-1)


def entropy_correlation(seed: int, n: int = 64, d: int = 32,
                        scales: Sequence[float] = (0.25, 0.5, 1, 2, 4, 8),
                        q_std: float = 1.0) -> dict[str, dict]:
    """Per kernel: Spearman rho between query norm and row entropy over all rows and scales ``c``
    (queries ``c q``, keys fixed; entries of ``q`` have standard deviation ``q_std``, of ``k`` 1),
    plus the mean entropy at each scale. Rows whose weights are undefined (a ReLU query with no
    overlap: all-zero row) are left out."""
    g = torch.Generator().manual_seed(seed)
    q = q_std * torch.randn(n, d, generator=g, dtype=torch.float64)
    k = torch.randn(n, d, generator=g, dtype=torch.float64)
    out = {}
    for kernel in ENTROPY_KERNELS:
        norms, ents, by_scale = [], [], []
        for c in scales:
            h = row_entropy(attention_weights(kernel, c * q, k))
            ok = torch.isfinite(h)
            norms.append((c * q).norm(dim=-1)[ok])
            ents.append(h[ok])
            by_scale.append(float(h[ok].mean()))
        rho = stats.spearmanr(torch.cat(norms).numpy(), torch.cat(ents).numpy()).statistic
        out[kernel] = {"rho": float(rho), "entropy_by_scale": by_scale}
    return out


def entropy_rule() -> Rule:
    """C2's rule (the spec's thresholds), applied to every seed."""
    text = ("Claim: softmax attention's entropy falls as the query norm grows, plain (ReLU) linear "
            "attention's does not, and NaLa restores the softmax-like behaviour. Per seed (random "
            "q, k with N=64, d=32; queries scaled by c in {0.25..8}), the Spearman rho between "
            "query norm and row entropy. Sanity parts (the setup measures what it should): "
            "rho_softmax < −0.9 and |rho_ReLU-linear| < 0.05 in every seed. Main part: rho_NaLa < −0.5 "
            "in every seed. Replicated if the sanity parts and the main part hold; not replicated if "
            "the sanity parts hold and rho_NaLa ≥ −0.5 in every seed; inconclusive otherwise.")

    def decide(m):
        sane = bool((m["softmax rho"].finite < -0.9).all() and (abs(m["relu-linear rho"].finite) < 0.05).all())
        nala = m["nala rho"].finite
        why = (f"rho softmax {m['softmax rho']:.3f}, ReLU-linear {m['relu-linear rho']:.3f}, "
               f"elu+1-linear {m['elu1-linear rho']:.3f}, NaLa {m['nala rho']:.3f}")
        if not sane:
            return Verdict.INCONCLUSIVE, "sanity part failed: " + why
        if (nala < -0.5).all():
            return Verdict.REPLICATED, why
        if (nala >= -0.5).all():
            return Verdict.NOT_REPLICATED, why
        return Verdict.INCONCLUSIVE, why
    return Rule(text, decide)


# ------------------------------------------------------------------ language-model arms
# C3/C4's arms: the spec's analog token mixers. NaLa is the kernel alone (no RoPE, no output gate, as
# the spec's "NaLa (no LePE/RoPE)"), so it differs from the linear arms in the kernel only.
ARMS = {
    "softmax": {"attention": "softmax"},
    "relu-linear": {"attention": "linear", "attention_kwargs": {"feature_map": "relu"}},
    "elu1-linear": {"attention": "linear"},
    "nala": {"attention": "nala", "attention_kwargs": {"rope": False, "gate": False}},
    "nala-relu-only": {"attention": "nala", "attention_kwargs": {"rope": False, "gate": False, "split": False}},
}
LINEAR_ARMS = ("relu-linear", "elu1-linear")

def nala_quality_rule(health: Health, linear_arms: Sequence[str]) -> Rule:
    """C4 (language analog): the spec's tiers as paired per-seed intervals."""
    text = (
        "Claim: NaLa beats the other linear kernels and closes most of the gap to softmax. Each arm at "
        "its own best learning rate of the shared grid (chosen on validation), judged on test "
        f"bits/byte. 'Best other linear kernel' = the one of {', '.join(linear_arms)} with the lower "
        "mean test bits/byte. Part A: paired NaLa − best-linear, 95% Student-t interval below 0. "
        "Part B (closes ≥ 50% of the gap): paired NaLa − (best-linear + softmax)/2 below 0. "
        "Replicated if A and B hold; partially replicated (the spec's 'better but within noise') if "
        "NaLa's mean is below best-linear's but A's interval straddles 0, or A holds and B does not; "
        "not replicated if NaLa − ReLU-linear lies wholly above 0 (the spec's 'worse than ReLU-linear'); "
        "inconclusive otherwise.")

    def decide(m):
        best = min(linear_arms, key=lambda a: m[a].mean)
        a = paired(m["nala"], m[best], names=("NaLa", best))
        mid = [(x + y) / 2 for x, y in zip(m[best].values, m["softmax"].values)]
        b = paired(m["nala"], mid, names=("NaLa", f"mean({best}, softmax)"))
        worse = paired(m["nala"], m["relu-linear"], names=("NaLa", "relu-linear")) \
            if "relu-linear" in m else None
        why = f"{a}; {b}" + (f"; {worse}" if worse is not None else "")
        if worse is not None and decide_side(worse, claimed="above") is Verdict.REPLICATED:
            return Verdict.NOT_REPLICATED, why
        va, vb = decide_side(a, claimed="below"), decide_side(b, claimed="below")
        if va is Verdict.REPLICATED:
            return graded(vb is Verdict.REPLICATED, True), why
        if va is Verdict.INCONCLUSIVE and a.mean < 0:
            return Verdict.PARTIAL, why
        return Verdict.INCONCLUSIVE, why
    return Rule(text, decide, health, ("softmax", "nala", *linear_arms))


def split_rule(health: Health) -> Rule:
    """C3 (ablation analog): the ReLU split (both signs) beats the ReLU-only NaLa kernel."""
    text = ("Claim: keeping the negative-negative interactions (NaLa's ReLU split) improves on a "
            "ReLU-only kernel. NaLa vs the same module with the positive half only (split=False), each "
            "at its own best learning rate; paired per-seed NaLa − ReLU-only test bits/byte, 95% "
            "Student-t interval: replicated if below 0, not replicated if wholly above 0, "
            "inconclusive otherwise.")

    def decide(m):
        p = paired(m["nala"], m["nala-relu-only"], names=("NaLa", "ReLU-only"))
        return decide_side(p, claimed="below"), f"{p}"
    return Rule(text, decide, health, ("nala", "nala-relu-only"))


# ------------------------------------------------------------------ costs across lengths
def mixers(chunk: int = 64) -> dict[str, Callable]:
    """The token mixers chapter 24 times, ``(q, k, v) -> o`` on ``(B, H, T, D)``: exact softmax
    (SDPA), elu+1 linear attention and NaLa, both in their chunked (linear-time) form."""
    from ..nn.attention.linear import normalized_linear_attention
    return {
        "softmax (SDPA)": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "linear elu+1": lambda q, k, v: normalized_linear_attention(
            F.elu(q) + 1, F.elu(k) + 1, v, form="chunked", chunk=chunk),
        "NaLa": lambda q, k, v: nala_attention(q, k, v, form="chunked", chunk=chunk),
    }


def kernel_costs(kernels: Mapping[str, Callable], lengths: Sequence[int], *, baseline: str,
                 batch: int = 1, heads: int = 4, head_dim: int = 64, backward: bool = True,
                 warmup: int = 1, reps: int = 3, seed: int = 0,
                 device: torch.device | str = "cpu") -> dict[str, dict]:
    """Per kernel and length: median seconds of a forward (+ backward) call, its paired ratio to
    ``baseline`` timed in the same interleaved rounds, the bytes saved for backward and (CUDA) the
    peak memory. Returns ``{kernel: {"seconds": [...], "ratio": [...], "saved": [...], "peak": [...]}}``
    indexed like ``lengths``."""
    device = torch.device(device)
    with torch_threads(1 if device.type == "cpu" else None):  # one thread: steadier on a shared CPU
        return _kernel_costs(kernels, lengths, baseline, batch, heads, head_dim, backward, warmup, reps,
                             seed, device)


def _kernel_costs(kernels, lengths, baseline, batch, heads, head_dim, backward, warmup, reps, seed, device):
    out = {k: {"seconds": [], "ratio": [], "saved": [], "peak": []} for k in kernels}
    g = torch.Generator(device="cpu").manual_seed(seed)
    for T in lengths:
        q, k, v = (torch.randn(batch, heads, T, head_dim, generator=g).to(device).requires_grad_(backward)
                   for _ in range(3))

        def call(f):
            def run():
                o = f(q, k, v)
                if backward:
                    o.sum().backward()
            return run

        fns = {name: call(f) for name, f in kernels.items()}
        times = compare(fns, device, warmup=warmup, reps=reps)
        for name, f in kernels.items():
            out[name]["seconds"].append(times[name].median)
            out[name]["ratio"].append(float(np.median([a / b for a, b in zip(
                times[name].seconds, times[baseline].seconds)])))
            out[name]["saved"].append(float(saved_for_backward_bytes(lambda: f(q, k, v))) if backward else math.nan)
            out[name]["peak"].append(peak_cuda_bytes(fns[name], device))
    return out


# ------------------------------------------------------------------ figures
def plot_entropy(per_seed: Sequence[Mapping[str, dict]], scales: Sequence[float]):
    """Mean row entropy against the query scale c, one line per kernel (seeds: thin lines)."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for i, kernel in enumerate(ENTROPY_KERNELS):
        for j, res in enumerate(per_seed):
            ax.plot(scales, res[kernel]["entropy_by_scale"], color=f"C{i}", marker="o", ms=3,
                    lw=1.5 if j == 0 else 0.6, alpha=1 if j == 0 else 0.5,
                    label=f"{kernel} (ρ = {np.mean([r[kernel]['rho'] for r in per_seed]):.2f})" if j == 0 else None)
    ax.set(xscale="log", xlabel="query scale c (‖q‖ grows with c)", ylabel="mean row entropy (nats)",
           title="attention entropy vs query norm")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_costs(costs: Mapping[str, dict], lengths: Sequence[int], *, title: str = ""):
    """Left: seconds per call against length (log-log, fitted exponent in the legend); middle: the
    ratio to the baseline; right: bytes saved for backward."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for i, (name, c) in enumerate(costs.items()):
        axes[0].plot(lengths, c["seconds"], "o-", color=f"C{i}",
                     label=f"{name} (slope {loglog_slope(lengths, c['seconds']):.2f})")
        axes[1].plot(lengths, c["ratio"], "o-", color=f"C{i}", label=name)
        axes[2].plot(lengths, np.asarray(c["saved"]) / 2 ** 20, "o-", color=f"C{i}", label=name)
    axes[0].set(xscale="log", yscale="log", xlabel="sequence length", ylabel="seconds per call", title=title)
    axes[1].set(xscale="log", yscale="log", xlabel="sequence length", ylabel="time ÷ baseline")
    axes[1].axhline(1.0, color="k", lw=0.8)
    axes[2].set(xscale="log", yscale="log", xlabel="sequence length", ylabel="MiB saved for backward")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


__all__ = ["ARMS", "LINEAR_ARMS", "ENTROPY_KERNELS", "attention_weights", "entropy_correlation",
           "entropy_rule", "kernel_costs", "loglog_slope", "mixers", "nala_quality_rule",
           "plot_costs", "plot_entropy", "row_entropy", "split_rule"]
