"""Claims, per-seed measurements, health gates, paired comparisons and verdict rules.

A verdict is a function of measurements and a rule fixed before the run. A :class:`Rule` pairs the
rule's text (what the reader sees) with the code that applies it (what decides), so the two cannot
drift apart; it is declared (and shown) in a cell before its experiment. Diverged seeds are
recorded as ``nan`` and counted, never dropped silently.

Comparisons are decided on **paired per-seed differences** (same seed, same data order for both
arms) with a Student-t interval (:func:`paired`): ``replicated`` needs the whole interval on the
claimed side (beyond a stated minimum effect), ``not replicated`` needs it to exclude the claimed
effect, anything between is ``inconclusive``. **Health gates** (:class:`Health`) run first: an arm
that diverged or never beat the trivial reference (the unigram loss, chance accuracy) makes the
claim ``inconclusive`` with the gate named, whatever the comparison says. A claim made of several
parts is decided part by part and combined in three-valued logic (:func:`all_of`, :func:`any_of`,
:func:`k_of`, :func:`graded`; section "Combining parts of a claim").
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Iterable, Mapping, Sequence, Union

import numpy as np
from scipy import stats as sps

from .errors import ReplibError


class Verdict(str, Enum):
    REPLICATED = "replicated"
    PARTIAL = "partially replicated"  # only where the spec's rule has the tier
    NOT_REPLICATED = "not replicated"
    INCONCLUSIVE = "inconclusive"  # the run could not decide: the note says why
    NOT_TESTABLE = "not testable"  # no feasible analog at any scale: the note says why
    NOT_RUN = "not run"  # feasible, not run at this scale: the note says where it would run
    REFERENCE = "reference check"  # holds by construction: shown and asserted, never a replication

    @classmethod
    def _missing_(cls, value):  # results files written before the vocabulary had seven words
        return {"inconclusive at this scale": cls.INCONCLUSIVE,
                "not testable at this scale": cls.NOT_TESTABLE}.get(value)

    @property
    def judged(self) -> bool:
        """A verdict on the claim from a measurement (the scoreboard's replication counts)."""
        return self in (Verdict.REPLICATED, Verdict.PARTIAL, Verdict.NOT_REPLICATED)


LEGACY_VERDICTS = ("inconclusive at this scale", "not testable at this scale")


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
class Paired:
    r"""Paired per-seed differences :math:`d_s = a_s - b_s` and a Student-t interval for their mean.

    :math:`\bar d \pm t_{n-1,\,(1+c)/2}\, s_d/\sqrt n` (``scipy.stats.t``). With 3 seeds the
    interval is :math:`\bar d \pm 2.48\, s_d`: only a large, consistent effect clears it. Seeds
    where either arm diverged are left out (the health gate has already made such a claim
    inconclusive). With fewer than two pairs there is no interval: it spans everything.
    """

    a: str
    b: str
    diffs: tuple[float, ...]
    confidence: float = 0.95
    unit: str = "seed"  # what a pair is: a seed, or a timing round ("round")

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> float:
        return float(np.mean(self.diffs)) if self.diffs else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        if self.n < 2:
            return (-math.inf, math.inf)
        sd = float(np.std(self.diffs, ddof=1))
        half = float(sps.t.ppf((1 + self.confidence) / 2, self.n - 1)) * sd / math.sqrt(self.n)
        return (self.mean - half, self.mean + half)

    def __format__(self, spec: str) -> str:
        spec = spec or ".3g"
        lo, hi = self.interval
        return (f"{self.a} − {self.b} = {self.mean:+{spec}} [{lo:+{spec}}, {hi:+{spec}}] "
                f"({self.confidence:.0%} t-interval, {self.n} paired {self.unit}{'s' * (self.n != 1)}; "
                f"per {self.unit}: {', '.join(f'{d:+{spec}}' for d in self.diffs)})")

    def to_json(self) -> dict:
        lo, hi = self.interval
        fin = lambda x: x if math.isfinite(x) else None  # noqa: E731
        return {"a": self.a, "b": self.b, "diffs": list(self.diffs), "mean": fin(self.mean),
                "lo": fin(lo), "hi": fin(hi), "confidence": self.confidence, "unit": self.unit}


def paired(a: "Stat | Iterable[float | None]", b: "Stat | Iterable[float | None]", *,
           names: tuple[str, str] = ("a", "b"), confidence: float = 0.95, unit: str = "seed") -> Paired:
    """The paired differences ``a - b`` over seeds (both sequences in the same seed order), or over
    another pairing named by ``unit`` (``"round"``: interleaved timing rounds)."""
    a, b = (x if isinstance(x, Stat) else Stat.of(x) for x in (a, b))
    if a.n != b.n:
        raise ReplibError(f"paired comparison needs the same seeds: {names[0]} has {a.n} values, "
                          f"{names[1]} {b.n}")
    diffs = tuple(x - y for x, y in zip(a.values, b.values) if math.isfinite(x) and math.isfinite(y))
    return Paired(names[0], names[1], diffs, confidence, unit)


def decide_side(p: Paired, *, claimed: str, threshold: float = 0.0) -> Verdict:
    """``claimed="below"``: the paper says ``a - b < threshold``; ``"above"``: ``a - b > threshold``.

    Replicated when the whole interval is on the claimed side, not replicated when the whole
    interval is on the other side (it excludes the claimed effect), inconclusive otherwise.
    """
    lo, hi = p.interval
    if claimed == "below":
        return (Verdict.REPLICATED if hi < threshold else
                Verdict.NOT_REPLICATED if lo >= threshold else Verdict.INCONCLUSIVE)
    if claimed == "above":
        return (Verdict.REPLICATED if lo > threshold else
                Verdict.NOT_REPLICATED if hi <= threshold else Verdict.INCONCLUSIVE)
    raise ReplibError(f"claimed side must be 'below' or 'above', not {claimed!r}")


def decide_within(p: Paired, tol: float) -> Verdict:
    """Parity: the paper says ``|a - b| < tol``. Replicated when the interval lies inside
    ``(-tol, tol)``, not replicated when it lies wholly outside, inconclusive otherwise."""
    lo, hi = p.interval
    if -tol < lo and hi < tol:
        return Verdict.REPLICATED
    return Verdict.NOT_REPLICATED if lo >= tol or hi <= -tol else Verdict.INCONCLUSIVE


# ---- Combining parts of a claim ---------------------------------------------------------------
# Many claims have parts ("Peri-LN below Pre-LN, and Post-LN the worst"; "at most 0.7 on both
# tasks"). Each part is decided on its own paired interval, in three values: it *holds* (``True``
# or ``Verdict.REPLICATED``), it is *refuted* (``False`` or ``Verdict.NOT_REPLICATED``: its interval
# lies wholly on the other side), or it is *undecided* (``None`` or any other verdict: an interval
# that straddles its threshold, an arm left out by a health gate). The combinators take parts in
# either form and return a Verdict, by one rule: any part refuted -> not replicated, every part
# holds -> replicated, anything else -> inconclusive (Kleene's three-valued logic).

Part = Union[Verdict, bool, None]


def holds(part: Part) -> bool | None:
    """A part as ``True`` (holds), ``False`` (refuted) or ``None`` (undecided). A verdict holds if
    it is ``replicated`` and is refuted if it is ``not replicated``; every other verdict (partially,
    inconclusive, ...) leaves the part undecided."""
    if part is None:
        return None
    if isinstance(part, str):  # a Verdict (or its recorded word)
        v = Verdict(part)
        return True if v is Verdict.REPLICATED else False if v is Verdict.NOT_REPLICATED else None
    return bool(part)


def at_most(p: Paired, t: float) -> bool | None:
    """Part "the mean of ``p`` is at most ``t``": holds if the whole interval is at or below ``t``,
    refuted if it lies wholly above, undecided if it straddles ``t``."""
    lo, hi = p.interval
    return True if hi <= t else False if lo > t else None


def at_least(p: Paired, t: float) -> bool | None:
    """Part "the mean of ``p`` is at least ``t``": holds if the whole interval is at or above ``t``,
    refuted if it lies wholly below, undecided if it straddles ``t``."""
    lo, hi = p.interval
    return True if lo >= t else False if hi < t else None


def below(p: Paired, t: float = 0.0) -> bool | None:
    """Part "the mean of ``p`` is below ``t``" (strictly): :func:`decide_side` with
    ``claimed="below"`` as a part (holds if the interval lies below ``t``, refuted if it lies wholly
    at or above, undecided otherwise)."""
    return holds(decide_side(p, claimed="below", threshold=t))


def k_of(k: int, *parts: Part) -> Verdict:
    """At least ``k`` of the parts must hold: replicated once ``k`` hold, not replicated once so
    many are refuted that ``k`` can no longer be reached, inconclusive otherwise."""
    h = [holds(x) for x in parts]
    if sum(x is True for x in h) >= k:
        return Verdict.REPLICATED
    if sum(x is False for x in h) > len(h) - k:
        return Verdict.NOT_REPLICATED
    return Verdict.INCONCLUSIVE


def all_of(*parts: Part) -> Verdict:
    """Every part must hold: replicated if all hold, not replicated if any part is refuted (the
    claim as a whole is contradicted, a reversal of the paper's mechanism included), inconclusive
    otherwise."""
    return k_of(len(parts), *parts)


def any_of(*parts: Part) -> Verdict:
    """One part is enough: replicated if any part holds, not replicated if every part is refuted,
    inconclusive otherwise."""
    return k_of(1, *parts)


def all_of_named(parts: Mapping[str, tuple[Verdict, Paired]]) -> tuple[Verdict, str]:
    """:func:`all_of` over named parts, each a verdict and the paired interval that decided it;
    returns the verdict and a reason that lists every part (``name: verdict (interval)``)."""
    why = "; ".join(f"{name}: {v.value} ({p})" for name, (v, p) in parts.items())
    return all_of(*(v for v, _ in parts.values())), why


def graded(full: Part, partial: Part = False) -> Verdict:
    """A spec's three-tier rule: "replicated if FULL; partially if PARTIAL; not replicated
    otherwise", for parts in three values. Replicated if FULL holds; partially replicated if FULL is
    refuted and PARTIAL holds; not replicated if both are refuted; inconclusive otherwise (a tier the
    intervals cannot settle). With plain booleans it is the spec's rule as written.

    Use the ``partial`` argument only where the spec's rule has a partial tier (without it,
    ``graded(full)`` is ``full`` as a verdict). Typical tiers: both parts / one part,
    ``graded(all_of(a, b), any_of(a, b))``; the main part and the rest / the main part,
    ``graded(all_of(main, rest), main)``.
    """
    f, p = holds(full), holds(partial)
    if f is True:
        return Verdict.REPLICATED
    if f is False and p is True:
        return Verdict.PARTIAL
    if f is False and p is False:
        return Verdict.NOT_REPLICATED
    return Verdict.INCONCLUSIVE


def log_paired(a: "Stat | Sequence[float]", b: "Stat | Sequence[float] | float", *,
               names: tuple[str, str], unit: str = "seed") -> Paired:
    """Paired differences of logarithms, ``log a_s - log b_s`` (a ratio test; ``b`` may be one
    constant, then it is a one-sample interval for ``log a`` against ``log b``). A non-positive or
    non-finite value counts as diverged (``nan``) and its seed is left out."""
    a = a.values if isinstance(a, Stat) else tuple(a)
    b = (b,) * len(a) if isinstance(b, (int, float)) else (b.values if isinstance(b, Stat) else tuple(b))
    lg = lambda v: math.log(v) if math.isfinite(v) and v > 0 else math.nan  # noqa: E731
    return paired([lg(x) for x in a], [lg(x) for x in b], names=names, unit=unit)


@dataclass(frozen=True)
class Health:
    """Gates every compared arm must pass before a comparison may decide anything.

    ``reference`` is the trivial model's value (the unigram loss for a language model, chance
    accuracy for a classifier); every seed of every gated arm must beat it by ``margin`` (below it
    when ``lower_is_better``, above it otherwise) and must not have diverged.
    """

    reference: float
    margin: float
    lower_is_better: bool = True
    name: str = "unigram loss"

    def text(self, arms: Sequence[str]) -> str:
        side = "below" if self.lower_is_better else "above"
        return (f"Health gates first ({', '.join(arms)}): no seed diverged, and every seed ends at "
                f"least {self.margin:g} {side} the {self.name} ({self.reference:.4g}); a failed gate "
                "makes the claim inconclusive.")

    def failures(self, metrics: Mapping[str, "Stat"], arms: Sequence[str]) -> list[str]:
        out = []
        for arm in arms:
            s = metrics[arm]
            if s.n_diverged:
                out.append(f"{arm} diverged in {s.n_diverged}/{s.n} seeds")
            vals = [v for v in s.values if math.isfinite(v)]
            bad = [v for v in vals if (v > self.reference - self.margin if self.lower_is_better
                                       else v < self.reference + self.margin)]
            if bad:
                out.append(f"{arm} did not beat the {self.name} ({self.reference:.4g}) by "
                           f"{self.margin:g} in {len(bad)}/{s.n} seeds")
        return out


def gate_note(health: Health, metrics: Mapping[str, Stat], arm: str) -> str:
    """Why ``arm`` fails ``health`` (to leave it out of one part of a claim, shown beside the
    verdict), or ``""`` when it passes."""
    return "; ".join(health.failures(metrics, [arm]))


@dataclass(frozen=True)
class Rule:
    """A verdict rule: the sentence the reader sees and the function that applies it.

    ``decide`` maps the claim's per-seed metrics to a :class:`Verdict`, or to ``(verdict, why)``.
    ``health`` gates the metrics named in ``gated`` before ``decide`` runs. Show the rule in a cell
    before its experiment (it renders as a declared rule).
    """

    text: str
    decide: Callable[[Mapping[str, Stat]], "Verdict | tuple[Verdict, str]"]
    health: Health | None = None
    gated: tuple[str, ...] = ()
    needs_metrics: bool = True

    def __post_init__(self):
        if self.health is not None and not self.gated:
            raise ReplibError(f"rule {self.text!r}: a health gate needs the arms it gates (gated=...)")

    @property
    def full_text(self) -> str:
        return self.text + (" " + self.health.text(self.gated) if self.health else "")

    def _repr_markdown_(self) -> str:
        return f"**Rule, fixed before the run:** {self.full_text}"

    def apply(self, metrics: Mapping[str, Stat]) -> tuple[Verdict, str]:
        if self.health is not None:
            missing = [a for a in self.gated if a not in metrics]
            if missing:
                raise ReplibError(f"rule gates {missing}, which the claim's metrics lack")
            failed = self.health.failures(metrics, self.gated)
            if failed:
                return Verdict.INCONCLUSIVE, "health gate failed: " + "; ".join(failed)
        out = self.decide(metrics)
        verdict, why = out if isinstance(out, tuple) else (out, "")
        if not isinstance(verdict, Verdict):
            raise ReplibError(f"rule {self.text!r} returned {verdict!r}, not a Verdict")
        return verdict, why

    def __call__(self, metrics: Mapping[str, Stat]) -> Verdict:
        return self.apply(metrics)[0]


def _claimed_text(a: str, b: str, metric: str, lower_is_better: bool, min_effect: float) -> str:
    word = "lower" if lower_is_better else "higher"
    by = f" by more than {min_effect:g}" if min_effect else ""
    return f"{a}'s {metric} is {word} than {b}'s{by}"


def better(a: str, b: str, *, metric: str, lower_is_better: bool = True, min_effect: float = 0.0,
           confidence: float = 0.95, health: Health | None = None) -> Rule:
    """The paper says arm ``a`` beats arm ``b`` on ``metric`` (by more than ``min_effect``)."""
    claimed = _claimed_text(a, b, metric, lower_is_better, min_effect)
    side, threshold = ("below", -min_effect or 0.0) if lower_is_better else ("above", min_effect)
    text = (f"Claim: {claimed}. Paired per-seed difference {a} − {b} with a {confidence:.0%} "
            f"Student-t interval: replicated if the interval lies {side} {threshold:g}, not "
            f"replicated if it lies wholly on the other side, inconclusive otherwise.")

    def decide(m):
        p = paired(m[a], m[b], names=(a, b), confidence=confidence)
        return decide_side(p, claimed=side, threshold=threshold), f"{p}"
    return Rule(text, decide, health, (a, b) if health else ())


def parity(a: str, b: str, *, metric: str, tol: float, confidence: float = 0.95,
           health: Health | None = None) -> Rule:
    """The paper says ``a`` matches ``b`` on ``metric``: their difference is within ``tol``."""
    text = (f"Claim: {a} matches {b} on {metric} within ±{tol:g}. Paired per-seed difference "
            f"{a} − {b} with a {confidence:.0%} Student-t interval: replicated if the interval lies "
            f"inside (−{tol:g}, {tol:g}), not replicated if it lies wholly outside, inconclusive "
            "otherwise.")

    def decide(m):
        p = paired(m[a], m[b], names=(a, b), confidence=confidence)
        return decide_within(p, tol), f"{p}"
    return Rule(text, decide, health, (a, b) if health else ())


def no_worse(a: str, b: str, *, metric: str, tol: float, lower_is_better: bool = True,
             confidence: float = 0.95, health: Health | None = None) -> Rule:
    """The paper says ``a`` is no worse than ``b`` on ``metric`` (up to ``tol``)."""
    side, threshold = ("below", tol) if lower_is_better else ("above", -tol)
    text = (f"Claim: {a} is no worse than {b} on {metric} (tolerance {tol:g}). Paired per-seed "
            f"difference {a} − {b} with a {confidence:.0%} Student-t interval: replicated if the "
            f"interval lies {side} {threshold:+g}, not replicated if it lies wholly on the other "
            "side, inconclusive otherwise.")

    def decide(m):
        p = paired(m[a], m[b], names=(a, b), confidence=confidence)
        return decide_side(p, claimed=side, threshold=threshold), f"{p}"
    return Rule(text, decide, health, (a, b) if health else ())


def fixed(verdict: Verdict, why: str) -> Rule:
    """A claim with no measurement at this scale: ``not testable``, ``not run`` (say where it would
    run) or ``reference check`` (say which identity the chapter asserts)."""
    if verdict not in (Verdict.NOT_TESTABLE, Verdict.NOT_RUN, Verdict.REFERENCE):
        raise ReplibError(f"a fixed rule records not testable, not run or a reference check, not {verdict.value}")
    return Rule(f"{verdict.value}: {why}", lambda m: verdict, needs_metrics=False)


def still_improving(curve: Sequence[float], *, tail: float = 0.2, rel: float = 0.01) -> bool:
    """Under-trained: the (loss) curve fell by more than ``rel`` (relative) over its last ``tail``
    fraction of points. Diverged or too short curves are not counted here."""
    y = np.asarray(curve, dtype=float)
    k = max(2, int(math.ceil(len(y) * tail)) + 1)
    if len(y) < 3 or not np.isfinite(y).all():
        return False
    start, end = y[-k], y[-1]
    return bool(start - end > rel * abs(start))


def loglog_slope(x: Sequence[float], y: Sequence[float], *, tail: float = 1.0) -> float:
    """Least-squares slope ``b`` of ``log y = a + b log x`` over the points with finite positive
    ``x`` and ``y``, the largest-``x`` ``tail`` fraction of them (at least two); NaN with fewer.
    A scaling exponent: ~2 for quadratic attention's time against length, ~1 for linear, -1 for
    a value that scales as 1/x."""
    pts = sorted((float(a), float(b)) for a, b in zip(x, y)
                 if a is not None and b is not None and a > 0 and b > 0
                 and math.isfinite(a) and math.isfinite(b))
    pts = pts[-max(2, math.ceil(tail * len(pts))):]
    if len(pts) < 2:
        return math.nan
    lx, ly = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(lx, ly, 1)[0])


def undertrained_note(curves: Mapping[str, Sequence[Sequence[float]]], *, tail: float = 0.2,
                      rel: float = 0.01) -> str:
    """One qualifier naming the arms whose seeds were still improving at the end (or "")."""
    hits = {arm: sum(still_improving(c, tail=tail, rel=rel) for c in runs)
            for arm, runs in curves.items()}
    named = [f"{arm} {k}/{len(curves[arm])}" for arm, k in hits.items() if k]
    if not named:
        return ""
    return (f"under-trained: still improving at the end (loss fell > {rel:.0%} over the last "
            f"{tail:.0%} of training) in {', '.join(named)} seeds")


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
    qualifiers: list[str] = field(default_factory=list)  # what qualifies the verdict: gates, paired
    # intervals, under-training; shown beside it on the page and the scoreboard

    def to_json(self) -> dict:
        return {
            "id": self.id, "statement": self.statement, "paper": self.paper, "rule": self.rule,
            "verdict": self.verdict.value, "ours": self.ours, "analog": self.analog,
            "note": self.note, "qualifiers": list(self.qualifiers),
            "metrics": {k: [None if math.isnan(v) else v for v in s.values]
                        for k, s in self.metrics.items()},
            "summary": {k: s.summary() for k, s in self.metrics.items()},
        }

    @classmethod
    def from_json(cls, d: Mapping) -> "Claim":
        return cls(id=d["id"], statement=d["statement"], paper=d["paper"], rule=d["rule"],
                   verdict=Verdict(d["verdict"]), ours=d["ours"], analog=d["analog"],
                   note=d["note"], metrics={k: Stat.of(v) for k, v in d["metrics"].items()},
                   qualifiers=list(d.get("qualifiers", [])))


def judge(claim_id: str, statement: str, *, paper: str, rule: Rule,
          metrics: Mapping[str, Iterable[float | None] | float], ours: str | None = None,
          analog: bool = False, note: str = "", qualifiers: Iterable[str] = ()) -> Claim:
    """Apply ``rule`` (health gates first) to per-seed ``metrics`` and return the recorded claim.

    The rule's reason (a failed gate, the paired interval) and any ``qualifiers`` (e.g. an
    :func:`undertrained_note`) are kept with the claim and shown beside its verdict.
    """
    stats = {name: Stat.of(v) for name, v in metrics.items()}
    if not stats and rule.needs_metrics:
        raise ReplibError(f"claim {claim_id}: no metrics to judge")
    verdict, why = rule.apply(stats)
    if ours is None:
        ours = "; ".join(f"{name} = {stat}" for name, stat in stats.items()) or "—"
    quals = [q for q in (why, *qualifiers) if q]
    return Claim(claim_id, statement, paper, rule.full_text, verdict, ours, stats, analog, note, quals)
