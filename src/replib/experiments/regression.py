r"""Chapter 38 (test-time regression, Wang, Shi, Fox 2025, arXiv 2501.12352): identities and recall.

- :func:`identity_errors`: the largest float64 deviation of each special case from its direct
  attention form (the chapter's C1 reference check; the same identities as the tests).
- :func:`qknorm_invariance`: how much softmax weights move when keys are rescaled, with and without
  L2-normalised queries and keys (C3).
- :func:`recall_accuracy` / :func:`recall_grid`: associative recall without training (C2): ``n``
  key–value pairs with correlated unit keys :math:`k_i \propto \sqrt\rho\, z + \sqrt{1-\rho}\,\epsilon_i`,
  one-hot values over ``classes`` classes, queries = the stored keys plus small noise; each method
  memorises all ``n`` pairs and is read at every query; accuracy = argmax class correct.
- :func:`run_mqar` / :func:`mqar_sweep`: the trained analog of C2, multi-query associative recall
  (Arora et al. 2023, Zoology, arXiv 2312.04927; :mod:`replib.data.mqar`): a small TinyGPT per token
  mixer trained with AdamW (warm-up + cosine) on fresh MQAR batches every step, each arm over the same
  learning-rate grid and seeds (:func:`replib.train.lr_sweep`), the lr chosen on validation query
  accuracy and judged on fresh test draws.
- ``plot_*``: the chapter's figures.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from ..nn.attention.linear import decayed_parallel
from ..nn.attention.regression import (cumulative_decay_weights, delta_rule, exp_kernel,
                                       gated_linear_recurrent, linear_attention, local_linear_attention,
                                       local_polynomial, nadaraya_watson, rls, weighted_ls_attention)
from ..nn.attention.softmax import softmax_attention
from ..data.mqar import IGNORE, mqar
from ..nn import GPTConfig, TinyGPT
from ..plotting import palette
from ..runtime import seed_everything, torch_threads
from ..train import Sweep, adamw, lr_sweep, train, warmup_cosine

F64 = torch.float64
METHODS = ("linear", "gated", "delta", "ls", "softmax τ=0.1", "softmax τ=1/√d", "local-linear")


def identity_errors(T: int = 64, d: int = 16, seed: int = 0) -> dict[str, float]:
    """Max |difference| (float64) of each identity on random q, k, v (one head, T tokens, width d)."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 1, T, d, generator=g, dtype=F64) for _ in range(3))
    ones = torch.ones(T, T, dtype=F64).tril()
    a = 0.5 + 0.5 * torch.rand(1, 1, T, generator=g, dtype=F64)
    beta = torch.rand(1, 1, T, generator=g, dtype=F64)
    kappa = exp_kernel(q, k)
    w = kappa / kappa.sum(-1, keepdim=True)
    lam = 0.5
    # one SGD step on the newest term, by autograd; L2-normalised keys as DeltaNet's (with raw Gaussian
    # keys, |1 - beta ||k||^2| > 1 and both sides blow up, so only their rounding would be compared)
    kn = k / k.norm(dim=-1, keepdim=True)
    M, sgd = torch.zeros(d, d, dtype=F64), []
    for t in range(T):
        M = M.detach().requires_grad_()
        (grad,) = torch.autograd.grad(0.5 * (v[0, 0, t] - M @ kn[0, 0, t]).pow(2).sum(), M)
        M = M - beta[0, 0, t] * grad
        sgd.append(M @ q[0, 0, t])
    _, _, P = rls(q, k, v, lam, return_state=True)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    k_iso = (2.0 * Q).view(1, 1, d, d)  # sum k k^T = 4 I after d keys
    iso = weighted_ls_attention(q[..., :d, :], k_iso, v[..., :d, :], ones[:d, :d], lam=1e-12)[..., -1, :] * 4.0
    diff = lambda x, y: float((x - y).detach().abs().max())  # noqa: E731
    return {
        "LS without covariance = linear attention": diff(
            weighted_ls_attention(q, k, v, ones, covariance="identity"), linear_attention(q, k, v)),
        "LS, isotropic keys = linear attention": diff(iso, linear_attention(q[..., :d, :], k_iso, v[..., :d, :])[..., -1, :]),
        "product-weighted LS = gated recurrence": diff(
            weighted_ls_attention(q, k, v, cumulative_decay_weights(a), covariance="identity"),
            gated_linear_recurrent(q, k, v, a)),
        "constant gate = decayed linear (linear.py)": diff(
            gated_linear_recurrent(q, k, v, torch.full((1, 1, T), math.exp(-0.2), dtype=F64)),
            decayed_parallel(q, k, v, torch.tensor([0.2], dtype=F64))),
        "delta rule = one SGD step per token": diff(delta_rule(q, kn, v, beta)[0, 0], torch.stack(sgd)),
        "RLS = ridge LS (every step)": diff(rls(q, k, v, lam), weighted_ls_attention(q, k, v, ones, lam=lam)),
        "RLS P_T = (λI + KᵀK)⁻¹": diff(P[0, 0], torch.linalg.inv(lam * torch.eye(d, dtype=F64) + k[0, 0].T @ k[0, 0])),
        "Nadaraya-Watson (exp kernel) = softmax": diff(nadaraya_watson(v, kappa), softmax_attention(q, k, v)),
        "local constant LS = softmax": diff(local_polynomial(q, k, v, kappa, 0), softmax_attention(q, k, v)),
        "local-linear closed form = LS intercept": diff(local_linear_attention(q, k, v, kappa, 1e-3),
                                                        local_polynomial(q, k, v, w, 1, 1e-3)),
    }


def softmax_weights(q: torch.Tensor, k: torch.Tensor, normalise: bool, tau: float = 0.5) -> torch.Tensor:
    """Causal softmax weights exp(q·k/τ) normalised per row; with ``normalise``, q and k L2-normalised."""
    if normalise:
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    kappa = exp_kernel(q, k, tau)
    return kappa / kappa.sum(-1, keepdim=True)


def qknorm_invariance(q: torch.Tensor, k: torch.Tensor, key_scale: torch.Tensor, normalise: bool) -> float:
    """Largest change of the weights when each key is multiplied by a positive ``key_scale``."""
    return float((softmax_weights(q, k, normalise) - softmax_weights(q, k * key_scale, normalise)).abs().max())


def correlated_keys(n: int, d: int, rho: float, g: torch.Generator) -> torch.Tensor:
    r"""Unit keys :math:`k_i \propto \sqrt\rho\, z + \sqrt{1-\rho}\, \epsilon_i` (pairwise cosine ≈ ρ)."""
    z = torch.randn(1, d, generator=g, dtype=F64)
    eps = torch.randn(n, d, generator=g, dtype=F64)
    return F.normalize(math.sqrt(rho) * z + math.sqrt(1 - rho) * eps, dim=-1)


def retrieve(method: str, K: torch.Tensor, V: torch.Tensor, Qr: torch.Tensor) -> torch.Tensor:
    """Memorise the pairs (K, V) in order with ``method``, read it at the queries ``Qr``."""
    n, d = K.shape
    if method == "linear":
        return Qr @ K.T @ V
    if method == "gated":  # a = 0.95: gamma_i = a^(n-1-i)
        return (Qr @ K.T * 0.95 ** torch.arange(n - 1, -1, -1, dtype=F64)) @ V
    if method == "delta":  # beta = 1, unit keys
        _, M = delta_rule(K[None, None], K[None, None], V[None, None], 1.0, return_state=True)
        return Qr @ M[0, 0].T
    if method == "ls":  # ridge, lambda = 1e-3 (= RLS after n steps)
        return Qr @ torch.linalg.solve(K.T @ K + 1e-3 * torch.eye(d, dtype=F64), K.T @ V)
    if method.startswith("softmax"):
        tau = 0.1 if "0.1" in method else 1 / math.sqrt(d)
        return (Qr @ K.T / tau).softmax(-1) @ V
    if method == "local-linear":  # exp kernel tau = 0.1, ridge 1e-3 on the slope
        kappa = (Qr @ K.T / 0.1).softmax(-1)  # rows of the (non-causal) kernel weights
        w = kappa
        k_bar, v_bar = w @ K, w @ V
        kc = K[None] - k_bar[:, None]
        vc = V[None] - v_bar[:, None]
        S_kk = torch.einsum("ti,tid,tif->tdf", w, kc, kc) + 1e-3 * torch.eye(d, dtype=F64)
        S_vk = torch.einsum("ti,tie,tid->ted", w, vc, kc)
        return v_bar - (S_vk @ torch.linalg.solve(S_kk, (k_bar - Qr).unsqueeze(-1))).squeeze(-1)
    raise ValueError(f"unknown method {method!r}")


def recall_accuracy(n: int, d: int, rho: float, seed: int, *, classes: int = 64, query_noise: float = 0.05,
                    methods: Sequence[str] = METHODS) -> dict[str, float]:
    """Fraction of the ``n`` stored keys whose (noisy) query retrieves the right class, per method."""
    g = torch.Generator().manual_seed(seed)
    K = correlated_keys(n, d, rho, g)
    labels = torch.randint(classes, (n,), generator=g)
    V = F.one_hot(labels, classes).to(F64)
    Qr = F.normalize(K + query_noise / math.sqrt(d) * torch.randn(n, d, generator=g, dtype=F64), dim=-1)
    return {m: float((retrieve(m, K, V, Qr).argmax(-1) == labels).double().mean()) for m in methods}


def recall_grid(ns: Sequence[int], rhos: Sequence[float], seeds: Sequence[int], d: int,
                methods: Sequence[str] = METHODS, **kw) -> dict:
    """``out[method][(n, rho)]`` = per-seed accuracies."""
    out = {m: {} for m in methods}
    for n in ns:
        for rho in rhos:
            per_seed = [recall_accuracy(n, d, rho, s, methods=methods, **kw) for s in seeds]
            for m in methods:
                out[m][(n, rho)] = [r[m] for r in per_seed]
    return out


# ---------------------------------------------------------------------------- trained MQAR (C2-trained)
@torch.no_grad()
def query_accuracy(model: TinyGPT, x: torch.Tensor, y: torch.Tensor, chunk: int = 64) -> float:
    """Fraction of query positions (targets not ``-100``) whose argmax logit is the stored value."""
    right = total = 0
    for i in range(0, len(x), chunk):
        logits, _ = model(x[i:i + chunk])
        scored = y[i:i + chunk] != IGNORE
        right += int((logits.argmax(-1)[scored] == y[i:i + chunk][scored]).sum())
        total += int(scored.sum())
    return right / max(total, 1)


def run_mqar(arm: str, lr: float, seed: int, *, n_pairs: int, seq_len: int, vocab_size: int, n_layer: int,
             d_model: int, n_head: int, batch_size: int, steps: int, val_seqs: int, test_seqs: int,
             weight_decay: float = 0.1, warmup_frac: float = 0.1, grad_clip: float = 1.0,
             device: torch.device | str = "cpu", threads: int | None = 1) -> dict:
    """Train one TinyGPT with token mixer ``arm`` on MQAR; its query accuracy on validation and test.

    Training batches are fresh draws (seed ``(seed + 1) * 1_000_003 + step``); validation and test are
    fixed draws shared by every arm and seed (seeds ``2**31 - 1`` and ``2**31 - 2``, apart from training's).
    The same ``seed`` gives every arm the same batches. A non-finite loss returns NaN accuracies.
    """
    with torch_threads(threads if torch.device(device).type == "cpu" else None):
        seed_everything(seed)
        cfg = GPTConfig(vocab_size=vocab_size, seq_len=seq_len, n_layer=n_layer, n_head=n_head,
                        d_model=d_model, attention=arm)
        model = TinyGPT(cfg).to(device)
        opt = adamw(model, lr, weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, warmup_frac=warmup_frac))
        draw = lambda n, s: mqar(n, n_pairs, seq_len, vocab_size, s, device)  # noqa: E731
        batches = (draw(batch_size, (seed + 1) * 1_000_003 + step) for step in range(steps))
        val, test = draw(val_seqs, 2**31 - 1), draw(test_seqs, 2**31 - 2)
        hist = train(model, opt, batches, lambda m, b: m(*b)[1], steps, grad_clip=grad_clip,
                     scheduler=sched, progress=False)
        model.eval()
        acc = (lambda d: math.nan) if hist.diverged else (lambda d: query_accuracy(model, *d))  # noqa: E731
        return {"val_acc": acc(val), "test_acc": acc(test), "loss": hist.loss, "seconds": hist.seconds}


def mqar_sweep(arms: Sequence[str], lrs: Sequence[float], seeds: Sequence[int], progress: bool = True,
               **kw) -> Sweep:
    """:func:`run_mqar` for every arm x learning rate x seed (``kw`` passed on); the best lr per arm
    maximises the mean validation query accuracy."""
    return lr_sweep(arms, lrs, seeds, lambda a, lr, s: run_mqar(a, lr, s, **kw), select_on="val_acc",
                    lower_is_better=False, progress=progress)


# ---------------------------------------------------------------------------------------- figures
def plot_identities(ax: plt.Axes, errors: Mapping[str, float], tol: float = 1e-8) -> None:
    """Each identity's float64 deviation (log scale) against the spec's 1e-8."""
    names = list(errors)
    ax.barh(names, [max(errors[n], 1e-18) for n in names], color=palette(1)[0])
    ax.axvline(tol, color="k", ls="--", lw=1, label=f"spec bound {tol:g}")
    ax.set_xscale("log")
    ax.set_xlabel("max |regression form − direct attention form| (float64)")
    ax.legend()


def plot_recall(axes: Sequence[plt.Axes], grid: Mapping, ns: Sequence[int], rhos: Sequence[float],
                rho_fixed: float, n_fixed: int) -> None:
    """Left: accuracy vs number of pairs at ``rho_fixed``; right: vs correlation at ``n_fixed``."""
    for colour, (m, per) in zip(palette(len(grid)), grid.items()):
        axes[0].plot(ns, [np.mean(per[(n, rho_fixed)]) for n in ns], "o-", color=colour, label=m)
        axes[1].plot(rhos, [np.mean(per[(n_fixed, r)]) for r in rhos], "o-", color=colour, label=m)
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel("stored pairs n")
    axes[0].set_title(f"key correlation ρ = {rho_fixed:g}")
    axes[1].set_xlabel("key correlation ρ")
    axes[1].set_title(f"n = {n_fixed} pairs")
    for ax in axes:
        ax.set_ylabel("recall accuracy")
        ax.set_ylim(-0.02, 1.02)
    axes[1].legend(fontsize=8)


def plot_mqar(axes: Sequence[plt.Axes], sweep: Sweep, chance: float) -> None:
    """Left: validation query accuracy against the learning rate (seed means, seeds as dots);
    right: test query accuracy per seed at each arm's best learning rate."""
    arms = list(sweep.runs)
    for colour, arm in zip(palette(len(arms)), arms):
        accs = [[r["val_acc"] for r in sweep.runs[arm][lr]] for lr in sweep.grid]
        axes[0].plot(sweep.grid, [np.nanmean(a) if np.isfinite(a).any() else np.nan for a in accs], "o-",
                     color=colour, label=arm)
        for lr, a in zip(sweep.grid, accs):
            axes[0].scatter([lr] * len(a), a, color=colour, s=10, alpha=0.5)
        test = sweep.at_best(arm, "test_acc")
        i = arms.index(arm)
        axes[1].bar(i, np.nanmean(test), color=colour, alpha=0.6)
        axes[1].scatter([i] * len(test), test, color="k", s=12, zorder=3)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("learning rate")
    axes[0].set_ylabel("validation query accuracy")
    axes[0].legend(fontsize=8)
    axes[1].set_xticks(range(len(arms)), [f"{a}\n(lr {sweep.best_lr(a) or float('nan'):g})" for a in arms])
    axes[1].set_ylabel("test query accuracy at the best lr")
    for ax in axes:
        ax.axhline(chance, color="k", ls=":", lw=1, label="chance")
        ax.set_ylim(-0.02, 1.02)


__all__ = ["METHODS", "correlated_keys", "identity_errors", "mqar_sweep", "plot_mqar",
           "query_accuracy", "run_mqar", "plot_identities", "plot_recall",
           "qknorm_invariance", "recall_accuracy", "recall_grid", "retrieve", "softmax_weights"]
