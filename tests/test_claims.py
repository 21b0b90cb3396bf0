import math

import pytest

from replib import ReplibError, Rule, Stat, Verdict, graded, judge


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
