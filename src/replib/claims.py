"""Claims, per-seed measurements and verdict rules.

A verdict is a function of measurements and a rule fixed before the run. A :class:`Rule` pairs the
rule's text (what the reader sees) with the code that applies it (what decides), so the two cannot
drift apart. Diverged seeds are recorded as ``nan`` and counted, never dropped silently.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Iterable, Mapping

import numpy as np

from .errors import ReplibError


class Verdict(str, Enum):
    REPLICATED = "replicated"
    PARTIAL = "partially replicated"
    NOT_REPLICATED = "not replicated"
    INCONCLUSIVE = "inconclusive at this scale"
    NOT_TESTABLE = "not testable at this scale"


def graded(full: bool, partial: bool = False) -> Verdict:
    """The common three-step rule: all conditions hold, some hold, none hold."""
    if full:
        return Verdict.REPLICATED
    return Verdict.PARTIAL if partial else Verdict.NOT_REPLICATED


@dataclass(frozen=True)
class Stat:
    """Per-seed values of one metric; ``nan`` marks a seed whose run diverged."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Iterable[float | None] | float) -> "Stat":
        if isinstance(values, (int, float)):
            values = [values]
        vals = tuple(float("nan") if v is None else float(v) for v in values)
        if not vals:
            raise ReplibError("a metric needs at least one value")
        return cls(vals)

    @property
    def finite(self) -> np.ndarray:
        arr = np.asarray(self.values, dtype=float)
        return arr[np.isfinite(arr)]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def n_diverged(self) -> int:
        return self.n - len(self.finite)

    @property
    def mean(self) -> float:
        return float(self.finite.mean()) if len(self.finite) else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (0 for a single seed)."""
        f = self.finite
        return float(f.std(ddof=1)) if len(f) > 1 else 0.0

    @property
    def min(self) -> float:
        return float(self.finite.min()) if len(self.finite) else math.nan

    @property
    def max(self) -> float:
        return float(self.finite.max()) if len(self.finite) else math.nan

    def summary(self) -> dict[str, float | int | None]:
        def clean(x: float) -> float | None:
            return None if math.isnan(x) else x

        return {"mean": clean(self.mean), "std": clean(self.std), "min": clean(self.min),
                "max": clean(self.max), "n": self.n, "n_diverged": self.n_diverged}

    def __format__(self, spec: str) -> str:
        spec = spec or ".4g"
        if not len(self.finite):
            return f"diverged ({self.n}/{self.n})"
        text = f"{self.mean:{spec}}" if len(self.finite) == 1 else f"{self.mean:{spec}} ± {self.std:{spec}}"
        return text + (f" ({self.n_diverged}/{self.n} diverged)" if self.n_diverged else "")


@dataclass(frozen=True)
class Rule:
    """A verdict rule: the sentence the reader sees and the function that applies it."""

    text: str
    decide: Callable[[Mapping[str, Stat]], Verdict]

    def __call__(self, metrics: Mapping[str, Stat]) -> Verdict:
        verdict = self.decide(metrics)
        if not isinstance(verdict, Verdict):
            raise ReplibError(f"rule {self.text!r} returned {verdict!r}, not a Verdict")
        return verdict


@dataclass
class Claim:
    id: str
    statement: str
    paper: str  # the paper's number or wording, as the spec gives it
    rule: str
    verdict: Verdict
    ours: str  # our headline number(s), formatted with spread
    metrics: dict[str, Stat] = field(default_factory=dict)
    analog: bool = False  # the experiment stands in for the paper's
    note: str = ""

    def to_json(self) -> dict:
        return {
            "id": self.id, "statement": self.statement, "paper": self.paper, "rule": self.rule,
            "verdict": self.verdict.value, "ours": self.ours, "analog": self.analog,
            "note": self.note,
            "metrics": {k: [None if math.isnan(v) else v for v in s.values]
                        for k, s in self.metrics.items()},
            "summary": {k: s.summary() for k, s in self.metrics.items()},
        }

    @classmethod
    def from_json(cls, d: Mapping) -> "Claim":
        return cls(id=d["id"], statement=d["statement"], paper=d["paper"], rule=d["rule"],
                   verdict=Verdict(d["verdict"]), ours=d["ours"], analog=d["analog"],
                   note=d["note"], metrics={k: Stat.of(v) for k, v in d["metrics"].items()})


def judge(claim_id: str, statement: str, *, paper: str, rule: Rule,
          metrics: Mapping[str, Iterable[float | None] | float], ours: str | None = None,
          analog: bool = False, note: str = "") -> Claim:
    """Apply ``rule`` to per-seed ``metrics`` and return the recorded claim."""
    stats = {name: Stat.of(v) for name, v in metrics.items()}
    if not stats:
        raise ReplibError(f"claim {claim_id}: no metrics to judge")
    verdict = rule(stats)
    if ours is None:
        ours = "; ".join(f"{name} = {stat}" for name, stat in stats.items())
    return Claim(claim_id, statement, paper, rule.text, verdict, ours, stats, analog, note)
