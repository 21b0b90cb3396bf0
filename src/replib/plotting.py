"""One figure style for the whole book, and helpers that always show the spread over seeds."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from .claims import Verdict

VERDICT_COLORS = {
    Verdict.REPLICATED: "#2e7d32",
    Verdict.PARTIAL: "#f9a825",
    Verdict.NOT_REPLICATED: "#c62828",
    Verdict.INCONCLUSIVE: "#757575",
    Verdict.NOT_TESTABLE: "#9e9e9e",
}


def theme() -> None:
    """The book's seaborn theme; call once at the top of a chapter."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 110, "figure.figsize": (7, 4),
                         "axes.titleweight": "bold", "legend.frameon": False})


def mean_band(ax: plt.Axes, x: Sequence[float], runs: Sequence[Sequence[float]], label: str,
              color=None, band: str = "minmax", geometric: bool = False, **kw) -> None:
    """Plot the mean over seeds as a line and the spread as a shaded band.

    ``runs`` holds one curve per seed (NaN where a run diverged or stopped); ``band`` is
    ``"minmax"`` (the full range of seeds) or ``"std"`` (mean ± one standard deviation).
    ``geometric=True`` takes mean and std of the logarithm (for positive values on a log axis,
    where one large seed would otherwise dominate the arithmetic mean).
    """
    y = np.asarray(runs, dtype=float)
    if y.ndim == 1:
        y = y[None]
    if geometric:
        y = np.log(y)
    with np.errstate(all="ignore"):
        mean = np.nanmean(y, axis=0)
        lo, hi = ((np.nanmin(y, axis=0), np.nanmax(y, axis=0)) if band == "minmax" else
                  (mean - np.nanstd(y, axis=0), mean + np.nanstd(y, axis=0)))
    if geometric:
        mean, lo, hi = np.exp(mean), np.exp(lo), np.exp(hi)
    n = y.shape[0]
    (line,) = ax.plot(x, mean, label=f"{label} ({n} runs)" if n > 1 else label, color=color, **kw)
    if n > 1:
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)


def seed_dots(ax: plt.Axes, groups: Mapping[str, Sequence[float]], ylabel: str,
              order: Sequence[str] | None = None, bars: bool = True,
              colors: Mapping[str, Any] | None = None, markers: Mapping[str, str] | None = None) -> None:
    """One column per group: every seed as a dot, the mean ± one std as a bar with error bars, or,
    with ``bars=False``, as a short line with error bars (for log or zoomed axes, where a bar's
    height from the axis floor means nothing). ``colors``/``markers`` map a group to its style
    (a chapter's colour per variant); the default is the theme's palette in column order."""
    names = list(order or groups)
    for i, name in enumerate(names):
        vals = np.asarray(groups[name], dtype=float)
        fin = vals[np.isfinite(vals)]
        color = colors[name] if colors else sns.color_palette()[i % 10]
        if len(fin):
            std = fin.std(ddof=1) if len(fin) > 1 else None
            if bars:
                ax.bar(i, fin.mean(), color=color, alpha=0.35, width=0.6, yerr=std, capsize=4)
            else:
                ax.errorbar(i, fin.mean(), yerr=std, color=color, marker="_", markersize=22,
                            capsize=4, lw=1.2, zorder=2)
            ax.scatter(i + (np.linspace(-0.12, 0.12, len(fin)) if len(fin) > 1 else 0.0), fin,
                       color=color, marker=(markers or {}).get(name, "o"), zorder=3, s=18)
        if len(fin) < len(vals):
            ax.annotate(f"{len(vals) - len(fin)} diverged", (i, 0), xycoords=("data", "axes fraction"),
                        ha="center", xytext=(0, 4), textcoords="offset points", fontsize=8, color="#c62828")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel(ylabel)
