"""Runners for chapter 23 (Dherin & Munn, *On residual network depth*, arXiv 2510.03470):
output growth of random residual towers at initialisation, and normalisation-free training of
residual MLPs with scaled branches on a tabular classification task.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..claims import Stat, Verdict, all_of, decide_side, paired
from ..data import Split, minibatches
from ..nn.residual import ResidualNet, ResidualTower
from ..runtime import seed_everything
from ..show import explorer
from ..train import train, warmup_cosine
from .tabular import accuracy, loss_and_accuracy

# The towers compared at initialisation (C2/C3-init): branch scaling and norm per arm.
GROWTH_ARMS: dict[str, dict] = {
    "lambda=1": dict(scaling="none"),
    "lambda=1/sqrt(n)": dict(scaling="1/sqrt(n)"),
    "lambda=1/n": dict(scaling="1/n"),
    "Pre-LN, lambda=1": dict(scaling="none", norm="layernorm", norm_at="pre"),
}

# The classifiers trained (C3/C4): no norm with three scalings, BatchNorm in the branch, SkipInit
# (a chapter's size table may train a subset).
TRAIN_ARMS: dict[str, dict] = {
    "lambda=1": dict(scaling="none"),
    "lambda=1/sqrt(n)": dict(scaling="1/sqrt(n)"),
    "lambda=1/n": dict(scaling="1/n"),
    "BN in branch": dict(scaling="none", norm="batchnorm", norm_at="branch"),
    "SkipInit": dict(scaling="none", skipinit=True),
}


@torch.no_grad()
def init_growth(width: int, depths: Sequence[int], seed: int, *, n_samples: int,
                arms: Mapping[str, dict] = GROWTH_ARMS, device="cpu") -> dict[str, list[float]]:
    """``log(mean_x ||x_n|| / ||x_0||)`` at initialisation for each arm and depth ``n`` (He-init
    ReLU branches ``W2 relu(W1 x)``, no biases, inputs ``x ~ N(0, I)``; one tower per depth)."""
    out: dict[str, list[float]] = {name: [] for name in arms}
    for n in depths:
        for name, kw in arms.items():
            gen = seed_everything(seed * 10_007 + n)
            x = torch.randn(n_samples, width, generator=gen).to(device)
            tower = ResidualTower(width, n, branch="mlp", bias=False, **kw).to(device)
            logs = tower.log_growth(x)[-1]  # per sample log ratio
            # log of the mean ratio, computed stably from per-sample logs
            m = logs.max()
            out[name].append(float(m + torch.log(torch.exp(logs - m).mean())))
    return out


def jacobian_fro(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Mean over samples of the Frobenius norm of the input-output Jacobian ``d logits / d x``
    (eval mode; one backward pass per output)."""
    was = model.training
    model.eval()
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    sq = torch.zeros(x.shape[0], device=x.device)
    for c in range(out.shape[1]):
        (g,) = torch.autograd.grad(out[:, c].sum(), x, retain_graph=c + 1 < out.shape[1])
        sq = sq + (g ** 2).sum(-1)
    model.train(was)
    return float(sq.sqrt().mean())


def train_residual(split: Split, arm: Mapping, n: int, seed: int, *, width: int, epochs: int,
                   batch_size: int, lr: float, warmup_epochs: int, momentum: float = 0.9,
                   final: Split | None = None, device="cpu") -> dict:
    """Train a :class:`ResidualNet` (stem, ``n`` ReLU-MLP blocks, head) with SGD + momentum,
    linear warm-up then cosine decay, on ``split``'s training part.

    With ``final`` given, ``split.x_test`` is the validation part and ``final.x_test`` the test
    part; without it, both are ``split.x_test``. Returns ``val`` (validation accuracy, for choosing
    the learning rate), ``val_loss``, ``test`` (test accuracy), ``train_acc``, ``jac`` (the mean
    input-output Jacobian norm on the test part), ``diverged``, ``final_loss`` (last epoch) and
    ``curve`` (mean training loss per epoch). A run whose loss (or validation loss) turns
    non-finite is recorded as diverged: its metrics are ``nan``, never an exception.
    """
    gen = seed_everything(seed)
    s = split.to(device)
    f = final.to(device) if final is not None else s
    model = ResidualNet(s.n_features, width, n, s.n_classes, branch="mlp", **arm).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    per_epoch = s.x_train.shape[0] // batch_size
    steps, warm = epochs * per_epoch, max(1, warmup_epochs * per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, warmup_steps=warm))
    hist = train(model, opt, minibatches(s.x_train, s.y_train, batch_size, gen),
                 lambda m, b: F.cross_entropy(m(b[0]), b[1]), steps, scheduler=sched,
                 progress=False)
    curve = [float(np.mean(hist.loss[i:i + per_epoch])) for i in range(0, len(hist.loss), per_epoch)]
    val_loss, val_acc = loss_and_accuracy(model, s.x_test, s.y_test) if not hist.diverged else (math.nan,) * 2
    if hist.diverged or not math.isfinite(val_loss):
        return dict(val=math.nan, val_loss=math.nan, test=math.nan, train_acc=math.nan, jac=math.nan,
                    diverged=1.0, final_loss=math.nan, curve=curve)
    return dict(val=val_acc, val_loss=val_loss, test=accuracy(model, f.x_test, f.y_test),
                train_acc=accuracy(model, s.x_train, s.y_train), jac=jacobian_fro(model, f.x_test),
                diverged=0.0, final_loss=float(np.mean(hist.loss[-per_epoch:])), curve=curve)


def c3b_decide(m: Mapping[str, Stat], depths: Sequence[int], *, chance: float, margin: float = 0.1,
               worse: float = 0.05, close: float = 0.02, unscaled: str = "lambda=1",
               scaled: Sequence[str] = ("lambda=1/sqrt(n)", "lambda=1/n"),
               bn: str = "BN in branch") -> tuple[Verdict, str]:
    """The spec's C3 rule on per-seed test accuracies ``m[f"test acc, {arm}, n={n}"]`` (fractions),
    at every depth in ``depths``, each arm at its own best learning rate.

    Not replicated if a scaled arm fails to train (a diverged seed, or a seed not ``margin`` above
    ``chance``) at some depth, or if the unscaled net trains and the paired interval of BN − it lies
    wholly at or below ``worse`` (it is not ``worse`` behind BN). Otherwise, per depth: the unscaled
    net fails (no learning rate where every seed trained) or BN − it > ``worse`` (interval), and
    the first scaled arm − BN > −``close`` (interval): replicated if both hold at every depth;
    partially (the spec's tier: the scaled nets train but lag BN) if the second is refuted;
    inconclusive while any interval straddles its threshold.
    """
    key = lambda a, n: f"test acc, {a}, n={n}"  # noqa: E731
    untrained, fails, lag, why = [], [], [], []
    for n in depths:
        for a in scaled:
            st = m[key(a, n)]
            bad = st.n_diverged + sum(v < chance + margin for v in st.finite)
            if bad:
                untrained.append(f"{a} did not train at n={n} in {bad}/{st.n} seeds")
        one = m[key(unscaled, n)]
        if one.n_diverged:
            fails.append(Verdict.REPLICATED)
            why.append(f"n={n}: {unscaled} diverged " + ("at every learning rate (none where every seed "
                       "trained)" if one.n_diverged == one.n else f"in {one.n_diverged}/{one.n} seeds"))
        else:
            p = paired(m[key(bn, n)], one, names=(bn, unscaled))
            fails.append(decide_side(p, claimed="above", threshold=worse))
            why.append(f"n={n}: {p:.3g} -> {fails[-1].value}")
        p = paired(m[key(scaled[0], n)], m[key(bn, n)], names=(scaled[0], bn))
        lag.append(decide_side(p, claimed="above", threshold=-close))
        why.append(f"n={n}: {p:.3g} -> {lag[-1].value}")
    if untrained:
        return Verdict.NOT_REPLICATED, "scaling did not make the nets train: " + "; ".join(untrained)
    fv, lv = all_of(*fails), all_of(*lag)
    if fv is Verdict.NOT_REPLICATED:
        return Verdict.NOT_REPLICATED, f"the unscaled net was not {worse:g} behind BN. " + " | ".join(why)
    if Verdict.INCONCLUSIVE in (fv, lv):
        return Verdict.INCONCLUSIVE, " | ".join(why)
    return (Verdict.REPLICATED if lv is Verdict.REPLICATED else Verdict.PARTIAL), " | ".join(why)


def c4_decide(m: Mapping[str, Stat], depths: Sequence[int],
              arms: Sequence[str] = ("lambda=1", "lambda=1/sqrt(n)", "lambda=1/n")) -> tuple[Verdict, str]:
    """The spec's C4 rule on per-seed Jacobian norms ``m[f"jacobian, {arm}, n={n}"]``: at every
    depth the norm decreases along ``arms`` (decreasing lambda), each step decided on the paired
    interval of the difference (larger lambda minus smaller, above 0). A step with an arm that
    never trained is undecided (inconclusive, the arm named); one refuted step -> not replicated."""
    parts, why = [], []
    for n in depths:
        for big, small in zip(arms, arms[1:]):
            a, b = m[f"jacobian, {big}, n={n}"], m[f"jacobian, {small}, n={n}"]
            if a.n_diverged or b.n_diverged:
                parts.append(Verdict.INCONCLUSIVE)
                gone = [x for x, st in ((big, a), (small, b)) if st.n_diverged]
                why.append(f"n={n}: {', '.join(gone)} did not train (health gate), {big} vs {small} undecided")
                continue
            p = paired(a, b, names=(big, small))
            parts.append(decide_side(p, claimed="above"))
            why.append(f"n={n}: {p:.3g} -> {parts[-1].value}")
    return all_of(*parts), " | ".join(why)


SCALINGS = ("none", "1/sqrt(n)", "1/n")


@torch.no_grad()
def growth_profile(width: int, depth: int, scaling: str, *, n_samples: int = 256, seed: int = 0,
                   norm: str | None = None) -> np.ndarray:
    """``log10`` of the mean ratio ``||x_k|| / ||x_0||`` after each module ``k = 0..depth`` of one
    random tower (He-init ReLU-MLP branches, no biases, inputs ``x ~ N(0, I)``)."""
    gen = seed_everything(seed)
    x = torch.randn(n_samples, width, generator=gen)
    kw = dict(norm=norm, norm_at="pre") if norm else {}
    logs = ResidualTower(width, depth, branch="mlp", bias=False, scaling=scaling, **kw).log_growth(x)
    m = logs.max(dim=1, keepdim=True).values  # log of the mean ratio, computed stably
    return ((m + torch.log(torch.exp(logs - m).mean(1, keepdim=True))).squeeze(1) / math.log(10)).numpy()


def growth_explorer(width: int = 64, max_depth: int = 256, n_samples: int = 256):
    """An ipywidgets control for readers in Jupyter/Colab: pick the depth and the branch scaling
    and see the output norm grow module by module (the chapter's static figure shows the sweep)."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    def show(depth: int = 64, scaling: str = "1/sqrt(n)", pre_ln: bool = False) -> None:
        prof = growth_profile(width, depth, scaling, n_samples=n_samples,
                              norm="layernorm" if pre_ln else None)
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.plot(range(depth + 1), prof, marker="." if depth <= 64 else None)
        ax.set_xlabel("module k")
        ax.set_ylabel("log10 ||x_k|| / ||x_0||")
        ax.set_title(f"depth {depth}, lambda = {'1' if scaling == 'none' else scaling}"
                     + (", Pre-LN" if pre_ln else ""))
        plt.show()

    return explorer(lambda: widgets.interactive(
        show, depth=widgets.IntSlider(value=64, min=1, max=max_depth, description="depth n"),
        scaling=widgets.Dropdown(options=SCALINGS, value="1/sqrt(n)", description="scaling"),
        pre_ln=widgets.Checkbox(value=False, description="Pre-LN")))
