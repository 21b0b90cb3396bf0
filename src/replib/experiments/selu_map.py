r"""The SELU mean/variance map of chapter 16 as a figure and as an ipywidgets control.

A layer maps the mean and variance :math:`(\mu, \nu)` of its inputs to those of its outputs,
:math:`g(\mu, \nu; \omega, \tau)` (:func:`replib.nn.selu.moment_map`, with
:math:`\omega = \sum_i w_i` and :math:`\tau = \sum_i w_i^2`). Arrows show :math:`g - \mathrm{id}`;
paths iterate :math:`g` layer by layer from a few starts.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..nn import selu as snn
from ..show import explorer

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
