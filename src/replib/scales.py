"""The three scales a chapter runs at, their time budgets and seed counts: the one place they live.

A chapter declares its own sizes as one table with an entry per scale and asks :func:`pick` for
the running one::

    cfg = pick({"smoke": dict(steps=100), "cpu": dict(steps=2000), "gpu": dict(steps=20000)}, scale)
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Mapping, Sequence

from .errors import ReplibError


@dataclass(frozen=True)
class Scale:
    name: str
    budget_s: float  # wall time the whole notebook must fit in
    n_seeds: int  # default number of seeds
    hardware: str  # what the budget is measured on
    purpose: str


SCALES: dict[str, Scale] = {
    "smoke": Scale("smoke", 45, 1, "2 CPU cores", "pipeline check only, never a result"),
    "cpu": Scale("cpu", 600, 3, "2 CPU cores", "the default: large enough to see the effect"),
    "gpu": Scale("gpu", 180, 5, "one H100", "closest to the paper"),
}
DEFAULT_SCALE = "cpu"


def get_scale(name: str) -> Scale:
    if name not in SCALES:
        raise ReplibError(f"unknown scale {name!r}; valid: {', '.join(SCALES)}")
    return SCALES[name]


def resolve_seeds(scale: str, seeds: Sequence[int] | int | None = None) -> list[int]:
    """``None`` means the scale's default seeds ``0..n-1``; an int means that many seeds."""
    if seeds is None:
        return list(range(get_scale(scale).n_seeds))
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ReplibError(f"need at least one seed, got {seeds}")
        return list(range(seeds))
    out = list(seeds)
    if not out or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in out):
        raise ReplibError(f"seeds must be a non-empty list of non-negative ints, got {seeds!r}")
    if len(set(out)) != len(out):
        raise ReplibError(f"seeds repeat: {out}")
    return out


def pick(table: Mapping[str, Mapping[str, Any]], scale: str) -> SimpleNamespace:
    """Select the running scale's entry from a chapter's size table, after checking the table.

    Every scale must have an entry and every entry the same keys, so a size cannot silently
    exist at one scale and be missing at another.
    """
    get_scale(scale)
    if set(table) != set(SCALES):
        raise ReplibError(
            f"size table must have exactly the scales {sorted(SCALES)}, got {sorted(table)}"
        )
    keys = {name: set(entry) for name, entry in table.items()}
    reference = keys[scale]
    for name, k in keys.items():
        if k != reference:
            raise ReplibError(
                f"size table entries differ: {name!r} has {sorted(k ^ reference)} unlike {scale!r}"
            )
    return SimpleNamespace(**table[scale])
