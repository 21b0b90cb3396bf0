r"""Chapter 17 (HyperAttention, Han et al. 2023, arXiv 2310.05869): error, speed and patched-LM runs.

- :func:`clustered_qkv`: structured synthetic inputs: tokens drawn from clusters shared by queries
  and keys, so each query's attention mass sits on its own cluster's keys (the large entries that
  sortLSH should put in diagonal blocks). Gaussian inputs are ``spread=inf``-like (``gaussian_qkv``).
- :func:`approximation_errors`: per variant (full, block-only, sampling-only, random blocks), the
  spectral error :math:`\lVert\hat O - O\rVert_2 / (\lVert D^{-1}A\rVert_2 \lVert V\rVert_2)` of
  Theorem 1 and the relative Frobenius error, per (batch, head), against exact softmax on the same
  inputs.
- :func:`time_attention`: exact vs HyperAttention, causal, forward (and forward+backward), with
  :mod:`replib.timing` in one process; peak memory (CUDA allocator; on Linux CPUs the process's
  peak resident set, reset per call through ``/proc/self/clear_refs``).
- :func:`patched_losses`: a trained TinyGPT with its last :math:`\ell` attention layers replaced by
  HyperAttention (same weights), test loss per :math:`\ell`.
- ``plot_*``: the chapter's figures.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from .. import timing
from ..nn.attention import create_attention
from ..nn.attention.hyper import hyper_attention
from ..nn.attention.softmax import causal_mask
from ..plotting import palette, seed_dots
from ..runtime import synchronize
from ..train import lm_loss

VARIANTS = ("hyper", "block only", "sampling only", "random blocks")


def clustered_qkv(B: int, H: int, n: int, D: int, *, clusters: int = 32, strength: float = 5.0,
                  noise: float = 0.5, generator: torch.Generator | None = None, dtype=torch.float32):
    """q, k, v of shape (B, H, n, D). Token t belongs to cluster z_t with a unit-norm centre c:
    q_t, k_t = a c_{z_t} + noise ε (ε ~ N(0, I)), a = (strength √D)^{1/2}, so a same-cluster logit
    q·k/√D is about ``strength`` and a cross-cluster one about 0; v_t ~ N(0, I)."""
    g = generator
    centres = torch.nn.functional.normalize(torch.randn(B, H, clusters, D, generator=g, dtype=dtype), dim=-1)
    z = torch.randint(clusters, (B, H, n), generator=g)
    c = centres.gather(2, z[..., None].expand(B, H, n, D)) * math.sqrt(strength * math.sqrt(D))
    q = c + noise * torch.randn(B, H, n, D, generator=g, dtype=dtype)
    k = c + noise * torch.randn(B, H, n, D, generator=g, dtype=dtype)
    v = torch.randn(B, H, n, D, generator=g, dtype=dtype)
    return q, k, v


def gaussian_qkv(B: int, H: int, n: int, D: int, *, generator: torch.Generator | None = None,
                 dtype=torch.float32):
    """Unstructured inputs: q, k, v ~ N(0, I)."""
    return tuple(torch.randn(B, H, n, D, generator=generator, dtype=dtype) for _ in range(3))


def variant_kwargs(variant: str, block: int, sample: int) -> dict:
    """HyperAttention's arguments for one baseline of the spec."""
    return {"hyper": dict(block_size=block, sample_size=sample),
            "block only": dict(block_size=block, sample_size=0),
            "sampling only": dict(block_size=0, sample_size=sample),
            "random blocks": dict(block_size=block, sample_size=sample)}[variant]


def _attention_matrix_norm(q, k, scale, iters: int = 30) -> float:
    """Spectral norm of the row-stochastic D^{-1}A (non-causal) by power iteration on A^T A."""
    P = (q @ k.transpose(-2, -1) * scale).softmax(-1)
    x = torch.ones(P.shape[-1], 1, dtype=P.dtype) / math.sqrt(P.shape[-1])
    for _ in range(iters):
        x = P.T @ (P @ x)
        x = x / x.norm()
    return float((P @ x).norm())


def errors_one(q, k, v, o_hat) -> tuple[list[float], list[float]]:
    """Per (batch, head): spectral error / (||D^-1 A||_2 ||V||_2) and relative Frobenius error."""
    scale = q.shape[-1] ** -0.5
    spec, frob = [], []
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            qq, kk, vv = q[b, h].double(), k[b, h].double(), v[b, h].double()
            o = (qq @ kk.T * scale).softmax(-1) @ vv
            diff = o_hat[b, h].double() - o
            denom = _attention_matrix_norm(qq, kk, scale) * float(torch.linalg.matrix_norm(vv, 2))
            spec.append(float(torch.linalg.matrix_norm(diff, 2)) / denom)
            frob.append(float(diff.norm() / o.norm()))
    return spec, frob


def approximate(q, k, v, variant: str, *, block: int, sample: int, r: int, seed: int,
                min_seq_len: int = 0, query_blocks: str = "rank", gray: str = "code") -> torch.Tensor:
    """One variant's non-causal output; the hash hyperplanes and samples drawn from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    kw = variant_kwargs(variant, block, sample)
    if variant == "random blocks":  # shuffle tokens, no hashing: blocks are random sets of keys
        perm = torch.randperm(q.shape[-2], generator=g)
        proj = torch.zeros(q.shape[-1], 0, dtype=q.dtype)
        o, _ = hyper_attention(q[..., perm, :], k[..., perm, :], v[..., perm, :], proj, causal=False,
                               min_seq_len=min_seq_len, generator=g, query_blocks="rank", **kw)
        return o[..., torch.argsort(perm), :]
    proj = torch.randn(q.shape[-1], r, generator=g, dtype=q.dtype)
    return hyper_attention(q, k, v, proj, causal=False, min_seq_len=min_seq_len, generator=g,
                           query_blocks=query_blocks, gray=gray, **kw)[0]


def approximation_errors(make_qkv: Callable[[int, torch.Generator], tuple], ns: Sequence[int],
                         seeds: Sequence[int], *, hash_seeds: int, block: int, sample: int, r: int,
                         variants: Sequence[str] = VARIANTS, **kw) -> dict:
    """``out[variant][n]`` = per-seed mean (over hash seeds and heads) of both errors:
    ``{"spectral": [...], "frobenius": [...]}``, one value per data seed."""
    out = {v: {n: {"spectral": [], "frobenius": []} for n in ns} for v in variants}
    for n in ns:
        for seed in seeds:
            q, k, v = make_qkv(n, torch.Generator().manual_seed(seed))
            for var in variants:
                sp, fr = [], []
                for h in range(hash_seeds):
                    s, f = errors_one(q, k, v, approximate(q, k, v, var, block=block, sample=sample, r=r,
                                                           seed=1000 * seed + h, **kw))
                    sp += s
                    fr += f
                out[var][n]["spectral"].append(float(np.mean(sp)))
                out[var][n]["frobenius"].append(float(np.mean(fr)))
    return out


def _peak_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory of one call above the memory held before it (MiB); NaN where unmeasurable."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20
    try:  # Linux: "5" resets the peak resident set size (VmHWM) to the current one
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kib("VmRSS")
        fn()
        return (_status_kib("VmHWM") - before) / 1024
    except OSError:
        return math.nan


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(field)


def exact_causal(q, k, v):
    """The exact baseline: ``scaled_dot_product_attention`` (flash/fused where it applies)."""
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


def time_attention(ns: Sequence[int], *, B: int, H: int, D: int, block: int, sample: int, r: int,
                   min_seq_len: int, device: torch.device, dtype=torch.float32, warmup: int = 1,
                   reps: int = 5, backward: bool = False, seed: int = 0, query_blocks: str = "rank") -> dict:
    """Per n: median seconds of exact and HyperAttention (causal; the code's rank query blocks by
    default), the paired ratio exact/hyper, and each one's peak memory (MiB)."""
    out = {"n": list(ns), "exact s": [], "hyper s": [], "ratio": [], "exact MiB": [], "hyper MiB": []}
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(D, r, generator=g).to(device, dtype)
    for n in ns:
        q, k, v = (t.to(device, dtype).requires_grad_(backward) for t in gaussian_qkv(B, H, n, D, generator=g))
        hyper = lambda: hyper_attention(q, k, v, proj, causal=True, block_size=block, sample_size=sample,  # noqa: E731
                                        min_seq_len=min_seq_len, query_blocks=query_blocks,
                                        generator=torch.Generator().manual_seed(0))[0]
        fns = {"exact": lambda: exact_causal(q, k, v), "hyper": hyper}
        if backward:
            fns = {name: (lambda f=f: f().sum().backward()) for name, f in fns.items()}
        else:
            fns = {name: (lambda f=f: _no_grad(f)) for name, f in fns.items()}
        res = timing.compare(fns, device, warmup=warmup, reps=reps)
        out["exact s"].append(res["exact"].median)
        out["hyper s"].append(res["hyper"].median)
        out["ratio"].append(1.0 / timing.paired_ratio(res["hyper"], res["exact"]))
        out["exact MiB"].append(_peak_mib(fns["exact"], device))
        out["hyper MiB"].append(_peak_mib(fns["hyper"], device))
    return out


def _no_grad(f):
    with torch.no_grad():
        return f()


def patch_hyper(model: torch.nn.Module, n_layers: int, **hyper_kw) -> torch.nn.Module:
    """A copy of a TinyGPT whose last ``n_layers`` attention modules are HyperAttention with the
    same ``qkv``/``proj`` weights (``hyper_kw``: block_size, sample_size, min_seq_len, ...)."""
    model = copy.deepcopy(model)
    blocks = list(model.blocks)
    for blk in blocks[len(blocks) - n_layers:] if n_layers else []:
        old = blk.attn
        new = create_attention("hyper", old.qkv.in_features, old.n_head, d_attn=old.qkv.out_features // 3,
                               seq_len=old.seq_len, bias=old.qkv.bias is not None, **hyper_kw)
        new.load_state_dict(old.state_dict())
        blk.attn = new.to(old.qkv.weight.device, old.qkv.weight.dtype)
    return model.eval()


def patched_losses(model: torch.nn.Module, layers: Sequence[int], x: torch.Tensor, y: torch.Tensor,
                   **hyper_kw) -> dict[int, float]:
    """Test loss (nats/byte) of ``model`` with its last ℓ attention layers patched, per ℓ."""
    return {ell: lm_loss(patch_hyper(model, ell, **hyper_kw), x, y) for ell in layers}


def causal_leak(n: int, D: int, *, block: int, sample: int, r: int, min_seq_len: int, query_blocks: str,
                seed: int = 0) -> float:
    """Largest change of outputs before token t when token t's q, k, v change (0 = causal)."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = clustered_qkv(1, 1, n, D, generator=g, dtype=torch.float64)
    proj = torch.randn(D, r, generator=g, dtype=torch.float64)
    kw = dict(causal=True, block_size=block, sample_size=sample, min_seq_len=min_seq_len,
              query_blocks=query_blocks)
    base = hyper_attention(q, k, v, proj, generator=torch.Generator().manual_seed(1), **kw)[0]
    worst = 0.0
    for t in range(n // 2, n, max(1, n // 16)):
        q2, k2, v2 = q.clone(), k.clone(), v.clone()
        for x in (q2, k2, v2):
            x[..., t, :] = torch.randn(D, generator=g, dtype=torch.float64) * 3
        o = hyper_attention(q2, k2, v2, proj, generator=torch.Generator().manual_seed(1), **kw)[0]
        worst = max(worst, float((o[..., :t, :] - base[..., :t, :]).abs().max()))
    return worst


# ---------------------------------------------------------------------------------------- figures
def plot_errors(ax: plt.Axes, errors: Mapping, key: str = "spectral", title: str = "") -> None:
    """Mean error (over data seeds; bars: min-max) against n, one line per variant."""
    for colour, (var, per_n) in zip(palette(len(errors)), errors.items()):
        ns = sorted(per_n)
        vals = [np.asarray(per_n[n][key]) for n in ns]
        mean = [v.mean() for v in vals]
        ax.errorbar(ns, mean, yerr=[[m - v.min() for m, v in zip(mean, vals)],
                                    [v.max() - m for m, v in zip(mean, vals)]],
                    marker="o", capsize=3, color=colour, label=var)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length n")
    ax.set_ylabel({"spectral": "‖Ô−O‖₂ / (‖D⁻¹A‖₂‖V‖₂)", "frobenius": "‖Ô−O‖_F / ‖O‖_F"}[key])
    ax.set_title(title)
    ax.legend(fontsize=8)


def plot_timing(axes: Sequence[plt.Axes], tim: Mapping, device: str) -> None:
    """Left: time vs n (log-log) for exact and hyper; right: the ratio exact/hyper and peak memory."""
    ns = tim["n"]
    ax = axes[0]
    for name, colour in zip(("exact", "hyper"), palette(2)):
        ax.plot(ns, tim[f"{name} s"], "o-", color=colour, label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length n")
    ax.set_ylabel("median seconds per call")
    ax.set_title(f"causal forward on {device}")
    ax.legend()
    ax = axes[1]
    ax.plot(ns, tim["ratio"], "o-", color="k", label="speed-up t_exact / t_hyper")
    ax.axhline(1.0, color="grey", ls="--", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length n")
    ax.set_ylabel("speed-up")
    ax2 = ax.twinx()
    for name, colour in zip(("exact", "hyper"), palette(2)):
        ax2.plot(ns, tim[f"{name} MiB"], "s:", color=colour, alpha=0.7, label=f"{name} peak MiB")
    ax2.set_ylabel("peak memory (MiB)")
    ax.legend(loc="upper left", fontsize=8)
    ax2.legend(loc="lower right", fontsize=8)


def plot_patched(ax: plt.Axes, ppl_ratio: Mapping[int, Sequence[float]], n_layer: int) -> None:
    """Per-seed perplexity ratio (patched / unpatched) against the number of patched layers."""
    seed_dots(ax, {f"ℓ={ell}": v for ell, v in ppl_ratio.items()}, "test perplexity ÷ unpatched")
    ax.axhline(1.2, color="grey", ls="--", lw=1, label="+20 %")
    ax.axhline(1.0, color="k", lw=1)
    ax.set_title(f"last ℓ of {n_layer} attention layers patched with HyperAttention")
    ax.legend()


__all__ = ["VARIANTS", "approximate", "approximation_errors", "causal_leak", "clustered_qkv",
           "errors_one", "exact_causal", "gaussian_qkv", "patch_hyper", "patched_losses",
           "plot_errors", "plot_patched", "plot_timing", "time_attention", "variant_kwargs"]
