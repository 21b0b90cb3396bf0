r"""Chapter 33 (TransNormerLLM, Qin et al. 2023, arXiv 2307.14995; Lightning Attention, arXiv
2401.04658): the experiments behind its claims.

- :data:`ARMS`: TinyGPT language models for C3 (a softmax Transformer and TransNormer's token mixer
  with SRMSNorm, and its ablations), trained by :func:`replib.experiments.placement.arm_sweep`;
- :func:`lightning_costs`: C1, forward + backward time and activation memory of the naive masked
  :math:`O(n^2)` decayed linear attention vs the block (Lightning) form vs exact softmax (SDPA);
- :func:`norm_costs`: C2, SRMSNorm vs RMSNorm vs LayerNorm alone and inside a model's training step;
- :func:`decode_profile`: C4, autoregressive decoding token by token: the recurrence's per-token
  latency and state size against a softmax layer with a growing KV cache, and the decoded outputs
  against the parallel form;
- the verdict rules and ``plot_*`` figure functions (each returns its figure).
"""
from __future__ import annotations

import math
import time
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..claims import Health, Rule, Verdict, decide_side, paired
from ..nn import GPTConfig, TinyGPT, create_norm
from ..nn.attention import create_attention
from ..nn.attention.linear import decayed_chunked, decayed_parallel, decayed_step
from ..nn.attention.transnormer import alibi_slopes
from ..runtime import seed_everything, synchronize, torch_threads
from ..timing import compare, train_step
from .nala import kernel_costs

# C3's arms: GPTConfig options (``norm``: the block norms). The Transformer is LLaMA-style (SwiGLU
# MLP), TNL's channel mixer is SGLU, W3(W1 x ⊙ W2 x) with no activation (TinyGPT's "bilinear" MLP).
_TNL = {"attention": "transnormer", "norm": "srmsnorm", "mlp": "bilinear"}
ARMS = {
    "transformer": {"attention": "softmax", "mlp": "swiglu"},
    "tnl": _TNL,
    "tnl-no-decay": {**_TNL, "attention_kwargs": {"decay": False}},
    "tnl-no-gate": {**_TNL, "attention_kwargs": {"gate": False}},
    "tnl-rmsnorm": {**_TNL, "norm": "rmsnorm"},
}


def tnl_quality_rule(health: Health) -> Rule:
    """C3: the spec's tiers on paired per-seed intervals of test bits/byte."""
    text = (
        "Claim: TransNormer reaches loss no worse than a comparable softmax Transformer, and removing "
        "the decay hurts. Each arm at its own best learning rate of the shared grid (validation), "
        "judged on test bits/byte. Part A (no worse): paired TNL − Transformer, 95% Student-t "
        "interval wholly below one standard deviation of the Transformer's seeds (the spec's '+1 "
        "std'). Part B (decay helps): paired no-decay − TNL interval wholly above 0. Replicated if A "
        "and B hold; partially replicated if TNL − Transformer lies wholly below 3% of the "
        "Transformer's mean (the spec's 'within 3%') but A or B does not hold; not replicated if it "
        "lies wholly above 3%; inconclusive otherwise. The other ablations (no gate, RMSNorm for "
        "SRMSNorm) are reported beside the verdict, not decided.")

    def decide(m):
        tf = m["transformer"]
        a = paired(m["tnl"], tf, names=("TNL", "Transformer"))
        b = paired(m["tnl-no-decay"], m["tnl"], names=("no decay", "TNL"))
        va = decide_side(a, claimed="below", threshold=tf.std if math.isfinite(tf.std) else 0.0)
        vb = decide_side(b, claimed="above")
        within = decide_side(a, claimed="below", threshold=0.03 * tf.mean)
        why = f"{a} (1 std {tf.std:.3g}, 3% {0.03 * tf.mean:.3g}); {b}"
        if va is Verdict.REPLICATED and vb is Verdict.REPLICATED:
            return Verdict.REPLICATED, why
        if within is Verdict.REPLICATED:
            return Verdict.PARTIAL, why
        if within is Verdict.NOT_REPLICATED:
            return Verdict.NOT_REPLICATED, why
        return Verdict.INCONCLUSIVE, why
    return Rule(text, decide, health, ("transformer", "tnl", "tnl-no-decay"))


# ------------------------------------------------------------------ C1: Lightning vs naive
def lightning_costs(lengths: Sequence[int], *, heads: int = 8, head_dim: int = 64, block: int = 64,
                    batch: int = 1, warmup: int = 1, reps: int = 3, seed: int = 0,
                    device: torch.device | str = "cpu") -> dict[str, dict]:
    """Forward + backward of the decayed linear attention with ALiBi slopes: ``naive`` (masked
    ``((QK^T) * M) V``, lightning-attention's torch reference), ``lightning`` (the block form,
    PyTorch, blocks of ``block``) and ``softmax (SDPA)`` (exact attention, for scale); ratios to naive."""
    s = alibi_slopes(heads).float().to(device)
    kernels = {
        "naive": lambda q, k, v: decayed_parallel(q, k, v, s),
        "lightning": lambda q, k, v: decayed_chunked(q, k, v, s, block),
        "softmax (SDPA)": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
    }
    return kernel_costs(kernels, lengths, baseline="naive", batch=batch, heads=heads, head_dim=head_dim,
                        warmup=warmup, reps=reps, seed=seed, device=device)


def lightning_rule_text() -> str:
    return ("on a GPU: replicated if, at the longest length, the block form's forward + backward is ≥ 2× "
            "faster than the naive masked form and its peak memory ≥ 4× smaller; partially replicated if "
            "only one holds; not replicated if neither (the spec's rule; the paper's kernel is fused Triton, "
            "ours PyTorch blocks)")


# ------------------------------------------------------------------ C2: SRMSNorm speed
NORMS = ("srmsnorm", "rmsnorm", "layernorm")


def norm_costs(*, rows: int, dim: int, model: Mapping, warmup: int = 2, reps: int = 10, seed: int = 0,
               device: torch.device | str = "cpu") -> dict[str, dict[str, float]]:
    """Median seconds of (a) one norm's forward + backward on a ``(rows, dim)`` tensor and (b) one
    training step of a TinyGPT with TransNormer attention whose every norm is that norm
    (``model``: GPTConfig options). Returns ``{"alone": {norm: s}, "model": {norm: s}}`` and the
    paired ratios to SRMSNorm under ``"ratio_alone"`` / ``"ratio_model"`` (> 1: SRMSNorm faster)."""
    device = torch.device(device)
    with torch_threads(1 if device.type == "cpu" else None):  # one thread: steadier on a shared CPU
        return _norm_costs(rows, dim, model, warmup, reps, seed, device)


def _norm_costs(rows, dim, model, warmup, reps, seed, device):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, dim, generator=g).to(device).requires_grad_(True)
    norms = {n: create_norm(n, dim).to(device) for n in NORMS}

    def alone(n):
        return lambda: norms[n](x).sum().backward()

    t_alone = compare({n: alone(n) for n in NORMS}, device, warmup=warmup, reps=reps)
    steps = {}
    idx = torch.randint(0, 256, (model["batch"], model["seq_len"] + 1), generator=g).to(device)
    for n in NORMS:
        seed_everything(seed)
        m = TinyGPT(GPTConfig(vocab_size=256, seq_len=model["seq_len"], n_layer=model["n_layer"],
                              n_head=model["n_head"], d_model=model["d_model"],
                              **{**_TNL, "norm": n})).to(device)
        steps[n] = train_step(m, torch.optim.AdamW(m.parameters(), lr=1e-4),
                              lambda m: m(idx[:, :-1], idx[:, 1:])[1])
    t_model = compare(steps, device, warmup=warmup, reps=reps)

    def ratios(t):
        return {n: float(np.median([a / b for a, b in zip(t[n].seconds, t["srmsnorm"].seconds)]))
                for n in NORMS if n != "srmsnorm"}
    return {"alone": {n: t.median for n, t in t_alone.items()},
            "model": {n: t.median for n, t in t_model.items()},
            "ratio_alone": ratios(t_alone), "ratio_model": ratios(t_model)}


# ------------------------------------------------------------------ C4: recurrent decoding
def decode_profile(n_tokens: int, checkpoints: Sequence[int], *, d_model: int = 128, n_head: int = 4,
                   batch: int = 1, window: int = 32, seed: int = 0,
                   device: torch.device | str = "cpu") -> dict:
    """Decode ``n_tokens`` one at a time through one TransNormer layer (the recurrence with its
    ``(B, H, D, D)`` state) and one softmax layer (a pre-allocated KV cache, attention over the
    ``t`` cached tokens), interleaved. At each checkpoint ``c``: the median per-token seconds over
    the ``window`` tokens before ``c``, the state / cache bytes in use; and the largest difference of
    the decoded outputs from each layer's parallel forward."""
    device = torch.device(device)
    with torch_threads(1 if device.type == "cpu" else None):  # one thread: steadier on a shared CPU
        return _decode_profile(n_tokens, checkpoints, d_model, n_head, batch, window, seed, device)


def _decode_profile(n_tokens, checkpoints, d_model, n_head, batch, window, seed, device):
    seed_everything(seed)
    tnl = create_attention("transnormer", d_model, n_head, seq_len=n_tokens, form="chunked").to(device).eval()
    sm = create_attention("softmax", d_model, n_head, seq_len=n_tokens).to(device).eval()
    x = torch.randn(batch, n_tokens, d_model, generator=torch.Generator().manual_seed(seed)).to(device)
    H, D = n_head, d_model // n_head
    S = torch.zeros(batch, H, D, D, device=device)
    K = torch.zeros(batch, H, n_tokens, D, device=device)
    V = torch.zeros_like(K)
    secs = {"tnl": [], "softmax": []}
    outs = {"tnl": [], "softmax": []}

    def tnl_step(t):
        nonlocal S
        xt = x[:, t:t + 1]
        q, k, v = tnl.heads(xt)
        o, S = decayed_step(S, F.silu(q[:, :, 0]), F.silu(k[:, :, 0]), v[:, :, 0], tnl.slopes)
        y = tnl.norm(o.reshape(batch, 1, H * D)) * tnl.u(xt)
        return tnl.proj(y)

    def sm_step(t):
        xt = x[:, t:t + 1]
        q, k, v = sm.heads(xt)
        K[:, :, t], V[:, :, t] = k[:, :, 0], v[:, :, 0]
        o = F.scaled_dot_product_attention(q, K[:, :, :t + 1], V[:, :, :t + 1])
        return sm.proj(o.transpose(1, 2).reshape(batch, 1, H * D))

    with torch.inference_mode():
        for t in range(n_tokens):
            for name, step in (("tnl", tnl_step), ("softmax", sm_step)) if t % 2 else \
                    (("softmax", sm_step), ("tnl", tnl_step)):
                synchronize(device)
                t0 = time.perf_counter()
                outs[name].append(step(t))
                synchronize(device)
                secs[name].append(time.perf_counter() - t0)
        err = {"tnl": float((torch.cat(outs["tnl"], 1) - tnl(x)).abs().max()),
               "softmax": float((torch.cat(outs["softmax"], 1) - sm(x)).abs().max())}
    elt = x.element_size()
    return {
        "checkpoints": list(checkpoints),
        "tnl_ms": [1e3 * float(np.median(secs["tnl"][max(0, c - window):c])) for c in checkpoints],
        "softmax_ms": [1e3 * float(np.median(secs["softmax"][max(0, c - window):c])) for c in checkpoints],
        "state_bytes": [S.numel() * elt for _ in checkpoints],  # the same tensor at every step
        "cache_bytes": [2 * batch * H * c * D * elt for c in checkpoints],
        "max_error": err,
    }


def decode_rule(max_ratio: float = 1.5, tol: float = 1e-4) -> Rule:
    text = (f"Claim: recurrent decoding has constant per-token latency and memory and equals the parallel "
            f"form. Per seed (fresh random weights and inputs): the TNL layer's median per-token decode time "
            f"at the last checkpoint ÷ at the first, its state bytes at every checkpoint, and the largest "
            f"float32 difference of the decoded outputs from the parallel forward. Replicated if, in every "
            f"seed, the time ratio ≤ {max_ratio:g}, the state size is the same at every checkpoint and the "
            f"difference < {tol:g} (the spec's 1e-4); not replicated if the state grows, the difference "
            f"exceeds {tol:g} in some seed, or the ratio exceeds {max_ratio:g} in every seed; inconclusive "
            "otherwise. The softmax layer's KV-cache decoding is the contrast, not part of the rule.")

    def decide(m):
        ratio, err, growth = m["tnl time ratio"].finite, m["tnl max error"].finite, m["state growth"].finite
        why = (f"TNL time ratio {m['tnl time ratio']:.3g} (softmax {m['softmax time ratio']:.3g}); "
               f"state growth {m['state growth']:.3g}x; max error {max(err) if len(err) else math.nan:.2g}")
        if (growth != 1).any() or (err >= tol).any():
            return Verdict.NOT_REPLICATED, why
        if (ratio <= max_ratio).all():
            return Verdict.REPLICATED, why
        return (Verdict.NOT_REPLICATED if (ratio > max_ratio).all() else Verdict.INCONCLUSIVE), why
    return Rule(text, decide)


# ------------------------------------------------------------------ figures
def plot_decode(profiles: Sequence[Mapping]):
    """Per-token decode latency (left) and state / KV-cache memory (right) against context length."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for i, p in enumerate(profiles):
        c = p["checkpoints"]
        kw = dict(lw=1.5 if i == 0 else 0.6, alpha=1 if i == 0 else 0.6)
        axes[0].plot(c, p["tnl_ms"], "o-", color="C0", label="TNL recurrence" if i == 0 else None, **kw)
        axes[0].plot(c, p["softmax_ms"], "s-", color="C1", label="softmax + KV cache" if i == 0 else None, **kw)
    p = profiles[0]
    axes[1].plot(p["checkpoints"], np.asarray(p["state_bytes"]) / 2 ** 10, "o-", label="TNL state")
    axes[1].plot(p["checkpoints"], np.asarray(p["cache_bytes"]) / 2 ** 10, "s-", label="softmax KV cache")
    axes[0].set(xscale="log", xlabel="context length (tokens decoded)", ylabel="ms per token",
                title="decode latency (one layer)")
    axes[1].set(xscale="log", yscale="log", xlabel="context length", ylabel="KiB held",
                title="decode memory (one layer)")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_norm_costs(per_seed: Sequence[Mapping]):
    """Time ÷ SRMSNorm's for RMSNorm and LayerNorm, alone and in a training step (seeds: dots)."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.6))
    labels = [f"{n} {where}" for where in ("alone", "model") for n in NORMS[1:]]
    for i, lab in enumerate(labels):
        n, where = lab.split()
        vals = [r[f"ratio_{where}"][n] for r in per_seed]
        ax.scatter([i] * len(vals), vals, color=f"C{i % 2 + 1}")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(1.2, color="grey", ls="--", lw=0.8, label="1.2 (SRMSNorm 20% faster)")
    ax.set_xticks(range(len(labels)), labels, rotation=20)
    ax.set(ylabel="time ÷ SRMSNorm time", title="norm cost relative to SRMSNorm")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


__all__ = ["ARMS", "NORMS", "decode_profile", "decode_rule", "lightning_costs", "lightning_rule_text",
           "norm_costs", "plot_decode", "plot_norm_costs", "tnl_quality_rule"]
