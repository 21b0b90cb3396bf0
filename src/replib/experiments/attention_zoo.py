r"""The attention zoo: every kernel of :mod:`replib.nn.attention` on the same inputs, lengths and
budget (the page ``92-attention-zoo``). It grows when a kernel is registered.

Three measurements, each generic over the registry:

- :func:`output_gap`: how far a kernel's output lies from exact softmax attention on the same
  input. Both modules are built with the same seed and share the ``qkv``/``proj`` weights (copied
  from the softmax module); a kernel's own parameters stay at their initialisation. For an
  approximation of softmax (HyperAttention) this is its approximation error; for a different
  mixer (linear attention, decays, gates) it says how different the mixer is, not how good.
  Relative Frobenius error :math:`\lVert y - y_\mathrm{softmax}\rVert / \lVert y_\mathrm{softmax}\rVert`.
- :func:`scaling`: forward + backward time of one attention module against the context length
  (interleaved across kernels at each length, :func:`replib.timing.compare`) and memory: the bytes
  of the tensors autograd saves for the backward pass (deterministic on every device: a
  :math:`T\times T` score matrix shows as quadratic growth), and on CUDA the peak allocated bytes.
  :func:`~replib.claims.loglog_slope` fits :math:`\log t = a + b\log T` over the longer half of the lengths.
- the language models: each kernel in the same Pre-norm TinyGPT, byte-level LM on the book's
  corpus, one learning-rate grid for all, each at its own best
  (:func:`replib.experiments.placement.arm_sweep` with ``failures``).

A kernel that fails to build or run at some length is recorded with its error, not raised.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..claims import loglog_slope
from ..nn.attention import create_attention
from ..plotting import palette
from ..runtime import seed_everything, torch_threads
from ..timing import compare, peak_cuda_bytes, saved_for_backward_bytes


def paired_modules(name: str, d_model: int, n_head: int, seq_len: int, seed: int = 0,
                   device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                   options: dict | None = None):
    """``(kernel, softmax)`` modules in eval mode sharing ``qkv`` and ``proj`` weights; ``options``:
    the kernel's own keyword arguments (defaults otherwise)."""
    seed_everything(seed)
    ref = create_attention("softmax", d_model, n_head, seq_len=seq_len).to(device, dtype).eval()
    seed_everything(seed)
    mod = create_attention(name, d_model, n_head, seq_len=seq_len, **(options or {})).to(device, dtype).eval()
    with torch.no_grad():
        for part in ("qkv", "proj"):
            getattr(mod, part).load_state_dict(getattr(ref, part).state_dict())
    return mod, ref


@torch.no_grad()
def output_gap(name: str, *, d_model: int, n_head: int, seq_len: int, seed: int = 0,
               input_scale: float = 1.0, device: torch.device | str = "cpu", options: dict | None = None) -> float:
    """Relative Frobenius distance of ``name``'s output from softmax attention's on one Gaussian
    input of shape ``(2, seq_len, d_model)`` times ``input_scale`` (larger: peakier softmax)."""
    mod, ref = paired_modules(name, d_model, n_head, seq_len, seed, device, options=options)
    x = input_scale * torch.randn(2, seq_len, d_model, generator=torch.Generator().manual_seed(seed)).to(device)
    y, y0 = mod(x), ref(x)
    return float((y - y0).norm() / y0.norm())


def scaling(names: Sequence[str], lengths: Sequence[int], *, d_model: int, n_head: int, batch: int = 1,
            warmup: int = 2, reps: int = 5, device: torch.device | str = "cpu",
            threads: int | None = 1, options: dict[str, dict] | None = None) -> dict:
    """Forward + backward seconds (every rep), saved-for-backward bytes and, on CUDA, peak bytes
    per kernel and length: ``{"seconds": {name: {T: [...]}}, "saved": ..., "peak": ..., "failures": ...}``;
    ``options``: per kernel, its own keyword arguments."""
    device = torch.device(device)
    out = {"seconds": {n: {} for n in names}, "saved": {n: {} for n in names},
           "peak": {n: {} for n in names}, "failures": {}}
    with torch_threads(threads if device.type == "cpu" else None):
        for T in lengths:
            x = torch.randn(batch, T, d_model, generator=torch.Generator().manual_seed(T)).to(device)
            fns = {}
            for name in names:
                if name in out["failures"]:
                    continue
                try:
                    mod = paired_modules(name, d_model, n_head, T, 0, device,
                                         options=(options or {}).get(name))[0].train()
                    out["saved"][name][T] = saved_for_backward_bytes(lambda: mod(x).sum())
                    out["peak"][name][T] = peak_cuda_bytes(_fwd_bwd(mod, x), device)
                    fns[name] = _fwd_bwd(mod, x)
                except Exception as e:  # noqa: BLE001  a kernel's failure is a result, not a crash
                    out["failures"][name] = f"T={T}: {type(e).__name__}: {e}"
            for name, t in compare(fns, device, warmup=warmup, reps=reps).items():
                out["seconds"][name][T] = list(t.seconds)
    return out


def _fwd_bwd(module: torch.nn.Module, x: torch.Tensor):
    def step() -> None:
        module.zero_grad(set_to_none=True)
        module(x).sum().backward()
    return step


def scaling_figure(result: dict, names: Sequence[str]):
    """Two log-log panels against the context length: forward + backward time (median over reps,
    quartile whiskers) and saved-for-backward bytes, each kernel labelled with its fitted exponent
    over the longer half of the lengths (grey guides: slopes 1 and 2)."""
    colors = dict(zip(names, palette(len(names))))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    for name in names:
        per = result["seconds"].get(name, {})
        if not per:
            continue
        T = sorted(per)
        med = [float(np.median(per[t])) for t in T]
        q = np.array([np.percentile(per[t], [25, 75]) for t in T])
        axes[0].errorbar(T, med, yerr=[np.array(med) - q[:, 0], q[:, 1] - np.array(med)], marker="o", ms=4,
                         capsize=3, color=colors[name], label=f"{name} (slope {loglog_slope(T, med, tail=0.5):.2f})")
        sv = [result["saved"][name][t] for t in T]
        axes[1].plot(T, sv, marker="o", ms=4, color=colors[name], label=f"{name} (slope {loglog_slope(T, sv, tail=0.5):.2f})")
    for ax, what in zip(axes, ("forward + backward seconds", "bytes saved for backward")):
        ax.set(xscale="log", yscale="log", xlabel="context length T", ylabel=what)
        lo, hi = ax.get_xlim()
        y0 = ax.get_ylim()[0] * 3
        for slope, ls in ((1, ":"), (2, "--")):
            ax.plot([lo, hi], [y0, y0 * (hi / lo) ** slope], color="grey", ls=ls, lw=0.8, label=f"slope {slope}")
        ax.set_xlim(lo, hi)
        ax.legend(fontsize=7)
    axes[0].set_title("time against context length (log-log)")
    axes[1].set_title("activation memory against context length (log-log)")
    fig.tight_layout()
    return fig


__all__ = ["loglog_slope", "scaling_figure", "output_gap", "paired_modules", "scaling"]
