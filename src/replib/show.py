"""How results are shown: a replib object's source, verdict badges, numbers formatted by their
uncertainty, and the verdict table; shared by the notebooks (layer 3) and the site (replib.book).

A chapter shows the code that runs without copying it (:func:`show_source`); its verdict table
(:class:`VerdictTable`, what ``Experiment.verdict_table()`` returns) renders like the scoreboard,
with the same badges (:func:`verdict_badge`) and the same number formatting (:func:`tidy_numbers`).
"""
from __future__ import annotations

import html
import inspect
import math
import os
import re
import textwrap
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

from .claims import Verdict

if TYPE_CHECKING:  # IPython is imported where a page is rendered, not with replib (scripts, GPU images)
    from IPython.display import Markdown


def show_source(obj: object) -> Markdown:
    """The source of a function, class or method as a highlighted Python block."""
    try:
        source = inspect.getsource(obj)
    except (TypeError, OSError) as e:
        raise TypeError(f"cannot show the source of {obj!r}: {e}") from None
    where = f"{inspect.getmodule(obj).__name__}.{getattr(obj, '__qualname__', '')}"
    from IPython.display import Markdown
    return Markdown(f"`{where}`\n\n```python\n{textwrap.dedent(source)}```")


def static_build() -> bool:
    """True while ``replib book``/``replib run`` executes a chapter for the static site, where no
    frontend can drive a widget (and widget traffic can stall the executing client)."""
    return os.environ.get("REPLIB_STATIC") == "1"


def explorer(make_widget: Callable[[], object]) -> object:
    """An ipywidgets control for readers in Jupyter/Colab; on the static site, a line saying so."""
    if static_build():
        from IPython.display import Markdown
        return Markdown("*Interactive control: open this chapter in Jupyter or Colab to use it; the "
                        "static figure above shows the same sweep.*")
    return make_widget()


# ---------------------------------------------------------------- colours and badges

# One colour per verdict, for figures (replib.plotting) and badges (the site, verdict tables).
VERDICT_COLORS: dict[str, str] = {
    Verdict.REPLICATED.value: "#2e7d32",
    Verdict.PARTIAL.value: "#f9a825",
    Verdict.NOT_REPLICATED.value: "#c62828",
    Verdict.INCONCLUSIVE.value: "#616161",
    Verdict.NOT_TESTABLE.value: "#5d4037",
    Verdict.NOT_RUN.value: "#3949ab",
    Verdict.REFERENCE.value: "#00796b",
}
SMOKE_COLOR = "#bdbdbd"  # a smoke verdict: a pipeline check, greyed out
DARK_TEXT, LIGHT_TEXT = "#1b1b1b", "#ffffff"


def _luminance(color: str) -> float:
    """WCAG relative luminance of a ``#rrggbb`` colour."""
    rgb = [int(color.lstrip("#")[i:i + 2], 16) / 255 for i in (0, 2, 4)]
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two ``#rrggbb`` colours (1 to 21; AA text needs 4.5)."""
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def text_color(background: str) -> str:
    """White on a dark background, near-black on a light one: whichever reads better."""
    return max((LIGHT_TEXT, DARK_TEXT), key=lambda t: contrast(t, background))


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def badge(label: str, color: str, *, title: str = "") -> str:
    """A rounded label; its text colour is chosen for contrast (WCAG AA) on ``color``."""
    tip = f' title="{_e(title)}"' if title else ""
    return (f'<span class="replib-badge" style="background:{color};color:{text_color(color)}"'
            f'{tip}>{_e(label)}</span>')


def verdict_badge(verdict: str, scale: str) -> str:
    if scale == "smoke":
        return badge(f"{verdict} · pipeline check only", SMOKE_COLOR,
                     title="smoke scale checks that the chapter runs; it is not a result")
    return badge(verdict, VERDICT_COLORS.get(verdict, VERDICT_COLORS["inconclusive"]))


def seeds_label(seeds: Iterable[int]) -> str:
    """"1 seed (0)", "3 seeds (0, 1, 2)"."""
    seeds = list(seeds)
    return f"{len(seeds)} seed{'' if len(seeds) == 1 else 's'} ({', '.join(map(str, seeds))})"


# ---------------------------------------------------------------- numbers by their uncertainty

_NUM = r"[-+−]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_SPREAD_RE = re.compile(rf"(?<![\w.])(?P<mean>{_NUM})(?P<mx>[x×](?![\w]))?\s*±\s*(?P<sd>{_NUM})"
                        rf"(?P<x>[x×](?![\w]))?")
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _float(text: str) -> float:
    return float(text.replace("−", "-"))


def _significant(text: str) -> int:
    """How many significant digits a number is written with ("0.020": 2, "3": 1)."""
    mantissa = re.split(r"[eE]", text.lstrip("+-−"))[0].replace(".", "").lstrip("0")
    return len(mantissa)


def _decimals(text: str) -> int:
    """The decimal place of a written number's last digit ("2.98": 2, "5.2e+01": 0)."""
    parts = re.split(r"[eE]", text)
    mantissa = parts[0]
    shift = int(parts[1]) if len(parts) > 1 else 0
    after = len(mantissa.split(".")[1]) if "." in mantissa else 0
    return after - shift


def format_spread(mean: float, sd: float | None, unit: str = "", *, sig: int = 2,
                  ratio: bool = False, max_decimals: int | None = None) -> str:
    """``mean ± sd unit`` with the spread to ``sig`` significant digits and the mean to the same
    decimal place: ``format_spread(3.6512, 0.0213, "bits/byte") == "3.651 ± 0.021 bits/byte"``.
    ``ratio`` puts "×" on the mean (``0.784× ± 0.024``). Very small or large numbers share one
    power of ten: ``(1.02 ± 0.13) × 10⁻⁶``. ``max_decimals`` caps the decimal place at what the
    mean was measured to. No spread (one seed, or zero): the mean to four significant digits."""
    x = "×" if ratio else ""
    tail = f" {unit}" if unit else ""
    if mean is None or not math.isfinite(mean):
        return f"{mean}{tail}"
    if sd is None or not math.isfinite(sd) or sd <= 0:
        return f"{mean:.4g}{x}{tail}"
    place = math.floor(math.log10(sd)) - (sig - 1)  # the decimal place of the last digit kept
    rounded = round(sd, -place)
    if rounded > 0 and math.floor(math.log10(rounded)) - (sig - 1) > place:
        place += 1  # 0.0996 -> 0.10, not 0.100
    if max_decimals is not None:
        place = max(place, -max_decimals)
    big = max(abs(mean), sd)
    power = math.floor(math.log10(big)) if big > 0 else 0
    if place < -6 or power >= 6:  # one shared power of ten
        k = max(power - place, 0)
        m, s = mean / 10 ** power, sd / 10 ** power
        exp = str(power).translate(_SUPERSCRIPT)
        return f"({m:.{k}f}{x} ± {s:.{k}f}) × 10{exp}{tail}"
    decimals = max(-place, 0)
    m, s = round(mean, -place), round(sd, -place)
    return f"{m:.{decimals}f}{x} ± {s:.{decimals}f}{tail}"


def tidy_numbers(text: str) -> str:
    """Every ``mean ± sd`` in ``text`` formatted by its uncertainty (two significant digits of the
    spread, or as many as it was written with; the mean to match, never to more digits than it was
    written with), the "×" of a ratio moved onto the mean. Words and units are kept."""
    def fix(m: re.Match) -> str:
        mean_s, sd_s = m.group("mean"), m.group("sd")
        mean, sd = _float(mean_s), _float(sd_s)
        if sd == 0:  # nothing to round by; a ratio's × still goes on the mean
            return f"{mean_s}× ± {sd_s}" if m.group("mx") or m.group("x") else m.group(0)
        out = format_spread(mean, sd, sig=max(1, min(2, _significant(sd_s))),
                            ratio=bool(m.group("mx") or m.group("x")),
                            max_decimals=_decimals(mean_s) if "." in mean_s or "e" in mean_s.lower()
                            else None)
        return out.replace("-", "−", 1) if mean_s.startswith("−") else out
    return _SPREAD_RE.sub(fix, text)


def _summary_text(summary: Mapping[str, Mapping], number) -> str:
    """``name = number(mean, std)`` per metric (std ``None`` for a single trained seed)."""
    parts = []
    for name, s in summary.items():
        n_ok = s["n"] - s["n_diverged"]
        if s["mean"] is None or n_ok == 0:
            text = f"diverged ({s['n']}/{s['n']})"
        else:
            text = number(s["mean"], s["std"] if n_ok > 1 else None)
            text += f" ({s['n_diverged']}/{s['n']} diverged)" if s["n_diverged"] else ""
        parts.append(f"{name} = {text}")
    return "; ".join(parts)


def _default_ours(summary: Mapping[str, Mapping]) -> str:
    """The text ``judge`` writes when a chapter gives no ``ours`` (``name = mean ± std``, .4g)."""
    return _summary_text(summary, lambda m, sd: f"{m:.4g}" if sd is None else f"{m:.4g} ± {sd:.4g}") or "—"


def ours_text(claim: Mapping) -> str:
    """A claim's own number(s) for a reader: rebuilt from the exact per-seed summary when the
    chapter used judge's default text (rounded by its spread, not to four digits), else the
    chapter's text with every ``mean ± sd`` tidied."""
    summary = claim.get("summary") or {}
    if summary and claim.get("ours") == _default_ours(summary):
        return _summary_text(summary, format_spread)
    return tidy_numbers(str(claim.get("ours", "—")))


# ---------------------------------------------------------------- the verdict table

def claim_cells(claim: Mapping, scale: str, href: str | None = None) -> str:
    """One claim as table cells (claim, the paper, ours, verdict with its rule behind a
    disclosure): the same in a chapter's verdict table and in the scoreboard."""
    cid = _e(claim["id"])
    name = f'<a href="{_e(href)}">{cid}</a>' if href else cid
    head = (f"<b>{name}</b>" + (" <em>(analog)</em>" if claim.get("analog") else "")
            + f"<br>{_e(claim['statement'])}")
    quals = "".join(f"<li>{_e(tidy_numbers(q))}</li>" for q in claim.get("qualifiers") or [])
    quals = f'<ul class="replib-qualifiers">{quals}</ul>' if quals else ""
    note = f"<br><small>{_e(tidy_numbers(claim['note']))}</small>" if claim.get("note") else ""
    rule = (f'<details class="replib-rule"><summary>the rule</summary>'
            f"<small>{_e(claim['rule'])}</small></details>")
    return (f"<td>{head}</td><td>{_e(claim['paper'])}</td>"
            f"<td>{_e(ours_text(claim))}{quals}{note}</td>"
            f"<td>{verdict_badge(Verdict(claim['verdict']).value, scale)}{rule}</td>")


CLAIM_HEAD = ("<th>claim</th><th>the paper</th><th>ours (mean ± sd over seeds)</th>"
              "<th>verdict (rule fixed before the run)</th>")


class VerdictTable:
    """A chapter's verdicts as the scoreboard shows them: full claim text, the paper's number, ours
    formatted by its spread, the verdict badge and the rule behind a disclosure. ``to_frame()``
    gives the same rows as a pandas DataFrame."""

    def __init__(self, claims: list[Mapping], scale: str):
        self.claims, self.scale = claims, scale

    def __len__(self) -> int:
        return len(self.claims)

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr>{claim_cells(c, self.scale)}</tr>" for c in self.claims)
        smoke = ("<caption>scale smoke: a pipeline check, not a result</caption>"
                 if self.scale == "smoke" else f"<caption>scale {_e(self.scale)}</caption>")
        return (f'<div class="replib-scroll"><table class="replib-verdicts">{smoke}'
                f"<thead><tr>{CLAIM_HEAD}</tr></thead><tbody>{rows}</tbody></table></div>")

    def _repr_markdown_(self) -> str:  # plain Jupyter front ends without HTML: a list
        return "\n".join(f"- **{c['id']}** {c['statement']}: *{c['verdict']}* (ours: "
                         f"{ours_text(c)}; paper: {c['paper']})" for c in self.claims)

    def to_frame(self):
        import pandas as pd

        rows = [{"claim": c["id"] + (" (analog)" if c.get("analog") else ""), "paper": c["paper"],
                 "ours": c["ours"], "verdict": c["verdict"],
                 "qualified by": " · ".join(c.get("qualifiers") or []), "rule": c["rule"],
                 "scale": self.scale} for c in self.claims]
        return pd.DataFrame(rows, columns=["claim", "paper", "ours", "verdict", "qualified by",
                                           "rule", "scale"])
