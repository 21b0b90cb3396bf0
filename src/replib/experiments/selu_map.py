r"""Chapter 16 (self-normalizing networks): the SELU mean/variance map as a figure and as an
ipywidgets control, and the runners and decision rules of its training experiments (C2, C3, C4).

A layer maps the mean and variance :math:`(\mu, \nu)` of its inputs to those of its outputs,
:math:`g(\mu, \nu; \omega, \tau)` (:func:`replib.nn.selu.moment_map`, with
:math:`\omega = \sum_i w_i` and :math:`\tau = \sum_i w_i^2`). Arrows show :math:`g - \mathrm{id}`;
paths iterate :math:`g` layer by layer from a few starts.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch

from ..claims import Stat, Verdict, all_of, any_of, decide_side, graded, k_of, paired
from ..nn import selu as snn
from ..show import explorer
from . import tabular as tab

DEFAULT_STARTS = ((0.0, 1.0), (0.5, 2.0), (0.5, 0.3), (-0.4, 2.4), (0.4, 0.35))


def plot_moment_map(ax, omega: float = 0.0, tau: float = 1.0,
                    starts: Sequence[tuple[float, float]] = DEFAULT_STARTS, layers: int = 12) -> None:
    mus, nus = np.meshgrid(np.linspace(-0.5, 0.5, 11), np.linspace(0.3, 2.5, 12))
    gm, gv = snn.moment_map(torch.tensor(mus), torch.tensor(nus), omega, tau)
    ax.quiver(mus, nus, gm.numpy() - mus, gv.numpy() - nus, angles="xy", color="grey")
    for s, (mu, nu) in enumerate(starts):
        path = snn.iterate_moment_map(mu, nu, layers, omega, tau)
        ax.plot(path.mu, path.nu, "o-", ms=3, color=f"C{s}", label=f"from ({mu}, {nu})")
    fm, fv = snn.fixed_point(omega, tau)
    ax.plot(fm, fv, "k*", ms=12, label=f"fixed point ({fm:.3f}, {fv:.3f})")
    ax.set_xlabel(r"mean $\mu$ of a layer's inputs")
    ax.set_ylabel(r"variance $\nu$ of a layer's inputs")
    ax.set_title(rf"SELU moment map $g$ at $\omega={omega:g}, \tau={tau:g}$")
    ax.legend(fontsize=7, loc="lower left")


def moment_map_explorer(layers: int = 12):
    """Sliders for :math:`\\omega` and :math:`\\tau` (and the number of layers iterated)."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    def show(omega: float = 0.0, tau: float = 1.0, layers: int = layers) -> None:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        plot_moment_map(ax, omega, tau, layers=layers)
        plt.show()

    return explorer(lambda: widgets.interactive(
        show, omega=widgets.FloatSlider(value=0.0, min=-0.3, max=0.3, step=0.05, description="ω"),
        tau=widgets.FloatSlider(value=1.0, min=0.6, max=1.6, step=0.05, description="τ"),
        layers=widgets.IntSlider(value=layers, min=1, max=40, description="layers")))


# ---- C2: training curves of deep SELU vs ReLU+BatchNorm MLPs -----------------------------------

def last_epoch_loss(loss: Sequence[float], steps_per_epoch: int) -> float:
    """The training loss: mean minibatch cross-entropy over the last epoch."""
    return float(np.mean(loss[-steps_per_epoch:]))


def roughness(loss: Sequence[float], tail: float = 0.2) -> float:
    """Std of the minibatch loss over the last ``tail`` of the steps (curve roughness)."""
    return float(np.std(loss[int((1 - tail) * len(loss)):]))


def log_roughness(loss: Sequence[float], tail: float = 0.2) -> float:
    """Scale-free roughness: std of log(minibatch loss) over the last ``tail`` of the steps."""
    t = np.maximum(np.asarray(loss[int((1 - tail) * len(loss)):], dtype=float), 1e-12)
    return float(np.std(np.log(t)))


def curve_run(make_model: tab.ModelFn, fit, final, seed: int, *, epochs: int, batch_size: int,
              lr: float, device="cpu") -> dict:
    """One C2 run (plain SGD): ``val`` = validation cross-entropy (the learning rate is chosen on
    it), ``test`` = test accuracy (the health gate), ``train_loss`` (last epoch), ``rough`` and
    ``logrough`` (last 20 % of steps) and ``curve`` (mean training loss per epoch). A diverged run
    has ``nan`` metrics."""
    spe = fit.y_train.shape[0] // batch_size
    r = tab.train_eval(make_model, fit, final, seed, steps=epochs * spe, batch_size=batch_size,
                       lr=lr, device=device)
    loss = r["history"].loss
    curve = [float(np.mean(loss[i:i + spe])) for i in range(0, len(loss), spe)]
    if not math.isfinite(r["val_loss"]):
        return dict(val=math.nan, test=math.nan, train_loss=math.nan, rough=math.nan,
                    logrough=math.nan, curve=curve)
    return dict(val=r["val_loss"], test=r["test_acc"], train_loss=last_epoch_loss(loss, spe),
                rough=roughness(loss), logrough=log_roughness(loss), curve=curve)


def c2_decide(m: Mapping[str, Stat], depths: Sequence[int], a: str = "SELU",
              b: str = "ReLU+BN") -> tuple[Verdict, str]:
    """C2: ``a``'s training loss is no higher than ``b``'s at every depth (paired interval of the
    difference below 0), and ``a``'s roughness is lower than ``b``'s at >= 2/3 of the depths;
    the spec's tiers: both parts hold -> replicated, one holds and the other is refuted -> partially,
    both refuted -> not replicated, a part undecided -> inconclusive (:func:`replib.claims.graded`)."""
    loss, rough, why = [], [], []
    for d in depths:
        pl = paired(m[f"train loss, {a}, d={d}"], m[f"train loss, {b}, d={d}"], names=(a, b))
        pr = paired(m[f"roughness, {a}, d={d}"], m[f"roughness, {b}, d={d}"], names=(a, b))
        loss.append(decide_side(pl, claimed="below"))
        rough.append(decide_side(pr, claimed="below"))
        why.append(f"d={d}: loss {pl:.3g} -> {loss[-1].value}; roughness {pr:.3g} -> {rough[-1].value}")
    lv, rv = all_of(*loss), k_of(math.ceil(2 * len(depths) / 3), *rough)
    why = f"loss part {lv.value}, roughness part {rv.value}. " + " | ".join(why)
    return graded(all_of(lv, rv), any_of(lv, rv)), why


def versus_all(m: Mapping[str, Stat], key: str, ours: str, others: Sequence[str], *,
               claimed: str) -> tuple[Verdict, str]:
    """``ours`` beats every one of ``others`` on ``key`` (``m[f"{key}, {arm}"]``): the paired
    interval of ``ours - other`` lies on the ``claimed`` side of 0 for each
    (:func:`replib.claims.all_of`)."""
    parts, why = [], []
    for o in others:
        p = paired(m[f"{key}, {ours}"], m[f"{key}, {o}"], names=(ours, o))
        parts.append(decide_side(p, claimed=claimed))
        why.append(f"{p:.3g} -> {parts[-1].value}")
    return all_of(*parts), "; ".join(why)
