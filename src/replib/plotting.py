"""One figure style for the whole book, and helpers that always show the spread over seeds.

:func:`theme` sets it up: seaborn's colour-blind palette extended to sixteen distinct colours (a
figure with eleven lines repeats none), figures drawn at twice their pixel density for retina
screens (``retina`` PNG: crisp, yet displayed at the text column's width), and legends without
frames. :func:`palette` gives ``n`` distinct colours for a figure with more lines than that.

Each figure also says in words what it shows (:func:`describe`: its title, every panel's axes,
scales and legend entries), as the plain-text form IPython stores beside the PNG; the book's build
makes that the figure's alt text and numbered caption (``replib.book.sphinx_ext``).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from cycler import cycler

from .claims import Verdict
from .show import VERDICT_COLORS as _BADGE_COLORS

# The badges' colours (replib.show), keyed by verdict, for figures.
VERDICT_COLORS = {Verdict(k): v for k, v in _BADGE_COLORS.items()}
# After seaborn's ten colour-blind colours: six dark, distinct ones, so that a figure with up to
# sixteen lines never repeats a colour (the property cycle used to wrap after ten).
EXTRA_COLORS = ["#222222", "#7a0177", "#006d2c", "#08306b", "#a50f15", "#8c6d31"]


def palette(n: int) -> list:
    """``n`` distinct colours: the book's sixteen while they last, then evenly spaced hues."""
    base = list(sns.color_palette("colorblind", 10)) + [
        tuple(int(c[i:i + 2], 16) / 255 for i in (1, 3, 5)) for c in EXTRA_COLORS]
    return base[:n] if n <= len(base) else list(sns.color_palette("husl", n))


def _plain(text: str) -> str:
    """A label as words: mathtext's dollars and backslashes out, whitespace collapsed."""
    return " ".join(text.replace("$", "").replace("\\", "").split())


def _listed(items: Sequence[str], most: int = 8) -> str:
    items = [i for i in dict.fromkeys(_plain(t) for t in items) if i and not i.startswith("_")]
    extra = f" and {len(items) - most} more" if len(items) > most else ""
    return ", ".join(items[:most]) + extra


def _panel(ax, titled: bool = True) -> str:
    """One panel in words: its title (``titled=False``: not again, the caption has it), what is
    plotted against what (and on which scale), the marks, the legend entries or the categories
    along x."""
    title = " ".join(_plain(ax.get_title(loc)) for loc in ("left", "center", "right")).strip()
    title = title if titled else ""
    x, y = _plain(ax.get_xlabel()), _plain(ax.get_ylabel())
    log = [name for name, scale in (("x", ax.get_xscale()), ("y", ax.get_yscale()))
           if scale != "linear"]
    what = f"{y or 'values'} against {x}" if x else (y or "")
    what += f" ({' and '.join(log)} on a log scale)" if log and what else ""
    marks = []
    if ax.images:
        marks.append("a heat map")
    if ax.containers:
        marks.append("bars")
    lines = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
    if lines:
        marks.append(f"{len(lines)} line{'s' if len(lines) > 1 else ''}")
    legend = ax.get_legend()
    entries = _listed([t.get_text() for t in legend.get_texts()]) if legend else ""
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    categories = (_listed(ticks) if ticks and not any(
        t.replace("−", "-").replace(".", "").replace("-", "").replace("e", "").isdigit()
        for t in ticks if t) else "")
    parts = [p for p in (title, what) if p]
    text = ": ".join(parts) if parts else "a panel"
    text += f", {' and '.join(marks)}" if marks else ""
    text += f"; legend: {entries}" if entries else f"; categories: {categories}" if categories else ""
    return text


def describe(fig) -> str:
    """What a figure shows, in words, for its alt text: a first line that can serve as its caption
    (the figure's title, else its first panel's), then each panel (:func:`_panel`)."""
    panels = [ax for ax in fig.axes if ax.get_visible() and not hasattr(ax, "_colorbar")]
    suptitle = _plain(fig._suptitle.get_text()) if getattr(fig, "_suptitle", None) else ""
    named = None if suptitle else next((ax for ax in panels if ax.get_title()), None)
    described = [_panel(ax, titled=ax is not named) for ax in panels]
    first = (suptitle or (_plain(named.get_title()) if named else "")
             or (described[0].split(",")[0] if described else "A figure"))
    if len(described) == 1:
        body = described[0]
    else:
        body = f"{len(described)} panels. " + " ".join(
            f"Panel {i} ({d})." for i, d in enumerate(described, 1))
    legends = [_listed([t.get_text() for t in lg.get_texts()]) for lg in fig.legends]
    body += "".join(f" Legend: {entries}." for entries in legends if entries)
    first = first[0].upper() + first[1:] if first else first
    return f"{first.rstrip('.')}.\n{body[0].upper() + body[1:] if body else body}".rstrip()


def _describe_plain(fig, printer, cycle) -> None:
    printer.text(describe(fig))


def retina() -> None:
    """Inline figures as PNG at twice the pixel density, shown at their nominal size, with
    :func:`describe`'s words as their plain-text form (IPython; the book's alt text)."""
    try:
        from IPython import get_ipython
        from matplotlib.figure import Figure
        from matplotlib_inline.backend_inline import set_matplotlib_formats
    except ImportError:  # no IPython display machinery: nothing to set
        return
    shell = get_ipython()
    if shell is not None:  # a kernel (a plain script has no inline figures)
        set_matplotlib_formats("retina")
        shell.display_formatter.formatters["text/plain"].for_type(Figure, _describe_plain)


def theme() -> None:
    """The book's seaborn theme; call once at the top of a chapter."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 110, "figure.figsize": (7, 4),
                         "axes.titleweight": "bold", "legend.frameon": False,
                         "axes.prop_cycle": cycler(color=palette(16))})
    retina()


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
        color = colors[name] if colors else palette(len(names))[i]
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


def lr_sweep(ax: plt.Axes, sweep: Mapping[str, Any], key: str | None = None, ylabel: str | None = None,
             colors: Mapping[str, Any] | None = None, reference: float | None = None,
             reference_label: str = "unigram") -> None:
    """A learning-rate sweep (``Sweep.to_json()``): per arm, the mean of ``key`` (default the
    selection metric) over seeds against the learning rate, every seed as a dot, diverged seeds
    as crosses at the top, and each arm's best learning rate ringed."""
    key = key or sweep["select_on"]
    grid = np.asarray(sweep["grid"], dtype=float)
    for i, (arm, lrs) in enumerate(sweep["runs"].items()):
        color = colors[arm] if colors else palette(len(sweep["runs"]))[i]
        per = np.array([[np.nan if r.get(key) is None else r[key] for r in lrs[f"{lr:g}"]]
                        for lr in grid], dtype=float)  # (lr, seed)
        with np.errstate(all="ignore"):
            mean = np.where(np.isfinite(per).all(1), np.nanmean(per, 1), np.nan)
        ax.plot(grid, mean, marker="o", color=color, label=arm)
        for j in range(per.shape[1]):
            ok = np.isfinite(per[:, j])
            ax.scatter(grid[ok], per[ok, j], color=color, s=10, alpha=0.5, zorder=3)
            if (~ok).any():
                ax.scatter(grid[~ok], np.full((~ok).sum(), 1.0), marker="x", color=color,
                           transform=ax.get_xaxis_transform(), clip_on=False, s=25)
        best = sweep["best"].get(arm)
        if best is not None:
            k = int(np.argmin(np.abs(grid - best)))
            ax.scatter([best], [mean[k]], s=140, facecolors="none", edgecolors=color, lw=1.5, zorder=4)
    if reference is not None:
        ax.axhline(reference, color="0.4", ls=":", lw=1, label=reference_label)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (same grid for every arm; ring = the arm's best)")
    ax.set_ylabel(ylabel or key)
    ax.legend(fontsize=8)
