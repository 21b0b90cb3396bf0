import math

import numpy as np
import pytest
from scipy import stats

from replib import ReplibError, Rule, Stat, Verdict, graded, judge
from replib.claims import (Health, better, fixed, no_worse, paired, parity, still_improving,
                           undertrained_note)


def test_graded():
    assert graded(True, False) is Verdict.REPLICATED
    assert graded(True, True) is Verdict.REPLICATED
    assert graded(False, True) is Verdict.PARTIAL
    assert graded(False, False) is Verdict.NOT_REPLICATED


def test_stat_spread_and_divergence():
    s = Stat.of([1.0, 3.0, None])
    assert s.n == 3 and s.n_diverged == 1
    assert s.mean == 2.0 and s.std == pytest.approx(math.sqrt(2))
    assert f"{s:.2f}" == "2.00 ± 1.41 (1/3 diverged)"
    assert f"{Stat.of([5.0]):.1f}" == "5.0"
    assert "diverged (2/2)" in f"{Stat.of([math.nan, math.inf])}"
    # one finite value among diverged seeds has no spread to show
    assert f"{Stat.of([7.0, math.nan, math.nan]):.1f}" == "7.0 (2/3 diverged)"
    assert Stat.of([math.nan]).summary()["mean"] is None


def test_rule_applies_to_seed_statistics():
    rule = Rule("replicated if mean ratio <= 0.7; partially if <= 0.9",
                lambda m: graded(m["ratio"].mean <= 0.7, m["ratio"].mean <= 0.9))
    assert judge("C1", "s", paper="p", rule=rule, metrics={"ratio": [0.5, 0.6]}).verdict is Verdict.REPLICATED
    assert judge("C1", "s", paper="p", rule=rule, metrics={"ratio": [0.8, 0.85]}).verdict is Verdict.PARTIAL
    c = judge("C1", "s", paper="p", rule=rule, metrics={"ratio": [1.0, 1.2]})
    assert c.verdict is Verdict.NOT_REPLICATED and c.rule == rule.text and "ratio = 1.1" in c.ours


def test_a_rule_must_return_a_verdict():
    rule = Rule("broken", lambda m: True)
    with pytest.raises(ReplibError, match="not a Verdict"):
        judge("C1", "s", paper="p", rule=rule, metrics={"x": [1]})


def test_claim_json_round_trip_keeps_nan_as_divergence():
    rule = Rule("r", lambda m: Verdict.INCONCLUSIVE)
    c = judge("C2", "s", paper="p", rule=rule, metrics={"x": [1.0, math.nan]}, analog=True)
    d = c.to_json()
    assert d["metrics"]["x"] == [1.0, None] and d["analog"] is True
    back = type(c).from_json(d)
    assert back.verdict is Verdict.INCONCLUSIVE and back.metrics["x"].n_diverged == 1


# ---- the verdict machinery's known answers: paired intervals, gates, fixed verdicts

def _seeds(center, spread, n=5, seed=0):
    rng = np.random.default_rng(seed)
    return list(center + spread * rng.standard_normal(n))


def test_paired_t_interval_matches_scipy_and_three_seeds_are_wide():
    p = paired([1.0, 2.0, 4.0], [0.5, 1.0, 2.5], names=("A", "B"))
    assert p.diffs == (0.5, 1.0, 1.5) and p.mean == pytest.approx(1.0)
    lo, hi = p.interval
    ref = stats.t.interval(0.95, 2, loc=1.0, scale=stats.sem([0.5, 1.0, 1.5]))
    assert (lo, hi) == pytest.approx(ref)
    assert hi - lo == pytest.approx(2 * 4.3027 * 0.5 / math.sqrt(3), rel=1e-4)  # t_{0.975,2} = 4.30
    assert paired([1.0], [0.0]).interval == (-math.inf, math.inf)  # one seed: no interval
    with pytest.raises(ReplibError, match="same seeds"):
        paired([1, 2], [1, 2, 3])


def test_a_large_effect_is_replicated():
    base = _seeds(3.0, 0.05)
    rule = better("new", "old", metric="val loss")
    c = judge("C1", "s", paper="p", rule=rule,
              metrics={"new": [b - 0.3 + 0.01 * i for i, b in enumerate(base)], "old": base})
    assert c.verdict is Verdict.REPLICATED and "new − old = -0.28" in c.qualifiers[0]


def test_pure_noise_is_inconclusive():
    rule = better("new", "old", metric="val loss")
    c = judge("C1", "s", paper="p", rule=rule,
              metrics={"new": _seeds(3.0, 0.05, seed=1), "old": _seeds(3.0, 0.05, seed=2)})
    assert c.verdict is Verdict.INCONCLUSIVE


def test_a_reversal_is_not_replicated_and_never_partial():
    base = _seeds(3.0, 0.05)
    rule = better("new", "old", metric="val loss")
    c = judge("C1", "s", paper="p", rule=rule, metrics={"new": [b + 0.2 for b in base], "old": base})
    assert c.verdict is Verdict.NOT_REPLICATED
    higher = better("new", "old", metric="accuracy", lower_is_better=False, min_effect=0.01)
    assert higher({"new": Stat.of([0.80, 0.81, 0.82]), "old": Stat.of([0.70, 0.70, 0.71])}) is Verdict.REPLICATED
    assert higher({"new": Stat.of([0.70, 0.70, 0.71]), "old": Stat.of([0.80, 0.81, 0.82])}) is Verdict.NOT_REPLICATED


def test_a_small_consistent_effect_below_the_minimum_is_not_replicated():
    # paired differences of -0.005 +- 0.001: real, but the claim is "better by more than 0.05"
    rule = better("new", "old", metric="loss", min_effect=0.05)
    old = [3.0, 3.1, 3.2, 3.3, 3.4]
    new = [o - 0.005 + 0.001 * (i % 2) for i, o in enumerate(old)]
    assert rule({"new": Stat.of(new), "old": Stat.of(old)}) is Verdict.NOT_REPLICATED


def test_an_arm_that_never_trains_makes_the_claim_inconclusive():
    health = Health(reference=4.5, margin=0.05)
    rule = better("new", "old", metric="val loss", health=health)
    stalled = [4.49, 4.50, 4.52]  # at the unigram loss: learned token counts, nothing else
    c = judge("C1", "s", paper="p", rule=rule, metrics={"new": [2.0, 2.1, 2.05], "old": stalled})
    assert c.verdict is Verdict.INCONCLUSIVE
    assert "health gate failed" in c.qualifiers[0] and "old did not beat the unigram loss" in c.qualifiers[0]
    assert "Health gates first" in c.rule
    diverged = judge("C1", "s", paper="p", rule=rule,
                     metrics={"new": [2.0, math.nan, 2.05], "old": [3.0, 3.1, 3.05]})
    assert diverged.verdict is Verdict.INCONCLUSIVE and "new diverged in 1/3" in diverged.qualifiers[0]
    acc = Health(reference=0.1, margin=0.05, lower_is_better=False, name="chance accuracy")
    assert acc.failures({"x": Stat.of([0.12, 0.9])}, ["x"]) == [
        "x did not beat the chance accuracy (0.1) by 0.05 in 1/2 seeds"]
    with pytest.raises(ReplibError, match="needs the arms"):
        Rule("r", lambda m: Verdict.REPLICATED, health=health)


def test_parity_and_non_inferiority():
    old = [3.0, 3.1, 3.2]
    same = parity("new", "old", metric="loss", tol=0.01)
    assert same({"new": Stat.of([x + 0.001 for x in old]), "old": Stat.of(old)}) is Verdict.REPLICATED
    # the 14 C2 case: mean gap just under the tolerance, worse in every seed: not a replication
    gap = [0.0094, 0.0080, 0.0108]
    assert same({"new": Stat.of([x + g for x, g in zip(old, gap)]), "old": Stat.of(old)}) is Verdict.INCONCLUSIVE
    assert same({"new": Stat.of([x + 0.1 for x in old]), "old": Stat.of(old)}) is Verdict.NOT_REPLICATED
    nw = no_worse("new", "old", metric="loss", tol=0.02)
    assert nw({"new": Stat.of([x + 0.001 for x in old]), "old": Stat.of(old)}) is Verdict.REPLICATED
    assert nw({"new": Stat.of([x + 0.2 for x in old]), "old": Stat.of(old)}) is Verdict.NOT_REPLICATED


def test_fixed_verdicts_need_no_metrics_and_only_take_the_three_words():
    c = judge("C3", "s", paper="p", rule=fixed(Verdict.REFERENCE, "the expansion is an identity"),
              metrics={})
    assert c.verdict is Verdict.REFERENCE and not c.verdict.judged and c.ours == "—"
    assert fixed(Verdict.NOT_RUN, "gpu scale")({}) is Verdict.NOT_RUN
    with pytest.raises(ReplibError, match="fixed rule"):
        fixed(Verdict.REPLICATED, "no")


def test_legacy_verdict_words_still_read():
    assert Verdict("inconclusive at this scale") is Verdict.INCONCLUSIVE
    assert Verdict("not testable at this scale") is Verdict.NOT_TESTABLE


def test_undertraining_is_flagged_from_the_curve():
    flat = [5.0, 3.0, 2.5, 2.40, 2.40, 2.40, 2.40, 2.40, 2.40, 2.40]
    falling = [5.0, 4.5, 4.0, 3.6, 3.3, 3.0, 2.8, 2.6, 2.4, 2.2]
    assert not still_improving(flat) and still_improving(falling)
    assert still_improving([1.0, math.nan, 0.5]) is False
    note = undertrained_note({"A": [flat, falling], "B": [flat]})
    assert note.startswith("under-trained") and "A 1/2" in note and "B" not in note
    assert undertrained_note({"B": [flat]}) == ""


def test_rule_is_shown_before_the_run():
    rule = better("new", "old", metric="loss", health=Health(4.5, 0.05))
    md = rule._repr_markdown_()
    assert md.startswith("**Rule, fixed before the run:**") and "0.05 below the unigram loss (4.5)" in md


# ---- combining parts of a claim: every combinator on all hold / one reversal / one undecided /
# a failed gate (known answers)
from replib.claims import (all_of, all_of_named, any_of, at_least, at_most, below,  # noqa: E402
                           gate_note, holds, k_of, log_paired)

R, N, I = Verdict.REPLICATED, Verdict.NOT_REPLICATED, Verdict.INCONCLUSIVE
HOLDS = paired([0.50, 0.52, 0.51], [0, 0, 0])  # interval tight around 0.51
WIDE = paired([0.2, 1.2, 0.6], [0, 0, 0])  # straddles 0.7 and 0.9
GATE = Health(reference=4.5, margin=0.05)
TRAINED, STALLED = Stat.of([2.0, 2.1, 2.05]), Stat.of([4.49, 4.50, 4.52])


def _gated(metrics, arm):
    """A part left undecided when its arm fails the gate (the chapters' use of gate_note)."""
    return None if gate_note(GATE, metrics, arm) else True


def test_parts_are_three_valued_on_paired_intervals():
    assert at_most(HOLDS, 0.7) is True and at_most(HOLDS, 0.45) is False and at_most(WIDE, 0.7) is None
    assert at_least(HOLDS, 0.45) is True and at_least(HOLDS, 0.7) is False and at_least(WIDE, 0.7) is None
    assert below(HOLDS, 0.7) is True and below(HOLDS, 0.3) is False and below(WIDE, 0.7) is None
    exact = paired([0.5, 0.5, 0.5], [0, 0, 0])  # a zero-width interval on the threshold
    assert at_most(exact, 0.5) is True and at_least(exact, 0.5) is True and below(exact, 0.5) is False
    assert [holds(x) for x in (R, N, I, Verdict.PARTIAL, True, False, None, np.True_)] == [
        True, False, None, None, True, False, None, True]


def test_all_of():
    assert all_of(R, True, at_most(HOLDS, 0.7)) is R  # all hold
    assert all_of(R, N, True) is N and all_of(R, below(HOLDS, 0.3)) is N  # one reversal
    assert all_of(R, I) is I and all_of(True, at_most(WIDE, 0.7)) is I  # one undecided
    assert all_of(I, N) is N  # a reversal outweighs an undecided part
    failed = {"post": STALLED}
    assert all_of(R, _gated(failed, "post")) is I and all_of(N, _gated(failed, "post")) is N  # failed gate
    assert all_of(R, _gated({"post": TRAINED}, "post")) is R
    assert all_of() is R and all_of(Verdict.PARTIAL) is I


def test_any_of():
    assert any_of(R, R) is R and any_of(N, True) is R  # all hold; one holds is enough
    assert any_of(N, False) is N  # every part reversed
    assert any_of(N, I) is I and any_of(False, None) is I  # one undecided
    assert any_of(N, _gated({"post": STALLED}, "post")) is I  # failed gate
    assert any_of() is N


def test_k_of():
    assert k_of(2, R, R, N) is R  # enough hold
    assert k_of(2, N, N, R) is N  # one reversal too many: 2 can no longer be reached
    assert k_of(2, R, I, N) is I  # undecided
    assert k_of(2, R, N, _gated({"post": STALLED}, "post")) is I  # failed gate
    assert k_of(3, R, R, R) is all_of(R, R, R) and k_of(1, N, I) is any_of(N, I)


def test_all_of_named_lists_every_part():
    v, why = all_of_named({"variance": (R, HOLDS), "angle": (N, WIDE)})
    assert v is N and why.startswith("variance: replicated (a − b = +0.51") and "angle: not replicated" in why
    assert all_of_named({"a": (R, HOLDS), "b": (R, HOLDS)})[0] is R
    assert all_of_named({"a": (R, HOLDS), "b": (I, WIDE)})[0] is I


def test_graded_tiers_in_three_values():
    assert graded(True) is R and graded(False) is N and graded(None) is I  # no partial tier: the part itself
    assert graded(False, True) is Verdict.PARTIAL and graded(N, R) is Verdict.PARTIAL
    assert graded(None, True) is I and graded(False, None) is I  # a tier the intervals cannot settle
    # both parts / one part (chapters 03 C3, 16 C2): a reversal of one part is "partially", never more
    both = lambda a, b: graded(all_of(a, b), any_of(a, b))  # noqa: E731
    assert both(R, R) is R and both(R, N) is Verdict.PARTIAL and both(N, N) is N and both(R, I) is I
    # main part and the rest / main part (chapters 05 and 25 C1): a failed gate on the rest -> partially
    main_rest = lambda main, rest: graded(all_of(main, rest), main)  # noqa: E731
    assert main_rest(R, True) is R and main_rest(R, False) is Verdict.PARTIAL
    assert main_rest(N, True) is N and main_rest(I, False) is I
    assert main_rest(R, not gate_note(GATE, {"post": STALLED}, "post")) is Verdict.PARTIAL


def test_gate_note_and_log_paired():
    assert gate_note(GATE, {"post": TRAINED}, "post") == ""
    assert "post did not beat the unigram loss (4.5) by 0.05 in 3/3 seeds" == gate_note(GATE, {"post": STALLED}, "post")
    p = log_paired([1.0, 2.0, 4.0], 2.0, names=("log a", "log 2"))
    assert p.diffs == pytest.approx((-math.log(2), 0.0, math.log(2)))
    assert log_paired([1.0, 0.0, math.nan], [1.0, 1.0, 1.0], names=("a", "b")).n == 1  # non-positive: dropped
    assert log_paired(Stat.of([3.0, 3.0]), Stat.of([1.0, 1.0]), names=("a", "b")).mean == pytest.approx(math.log(3))


def test_loglog_slope_known_answers():
    """Exact power laws give their exponent; ``tail`` fits the largest-x points only; points with a
    non-finite or non-positive value are left out; fewer than two points give NaN."""
    from replib.claims import loglog_slope
    x = [1, 2, 4, 8, 16]
    assert loglog_slope(x, [3 * t ** 2 for t in x]) == pytest.approx(2.0)
    assert loglog_slope([1, 10, 100], [3.0, 0.3, 0.03]) == pytest.approx(-1.0)
    bent = [1.0, 1.0, 4 * 4, 8 * 8, 16 * 16]  # flat, then quadratic over the longer half
    assert loglog_slope(x, bent, tail=0.5) == pytest.approx(2.0)
    assert abs(loglog_slope(x, bent) - 2.0) > 0.1  # the flat start bends the full fit
    assert loglog_slope(x, [1, float("nan"), 4, None, 16]) == pytest.approx(1.0)
    assert math.isnan(loglog_slope([1, 2], [1.0, 0.0])) and math.isnan(loglog_slope([], []))
