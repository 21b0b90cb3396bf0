"""The all-norms benchmark runner (chapter 90): generic over the registry, robust to broken norms."""
import math

import pytest
import torch
from torch import nn

from replib.data import lm_batches, book_corpus
from replib.experiments import all_norms as an
from replib.nn import list_norms
from replib.nn import norms as registry
from replib.runtime import seed_everything
from replib.train import Sweep

TINY = dict(n_layer=1, d_model=16, n_head=2, batch_size=4, steps=3)


@pytest.fixture(scope="module")
def data():
    return an.bench_data(book_corpus().text[:20000], seq_len=16, windows=4)


class _BrokenAtInit(nn.Module):
    """A norm that cannot even be built."""

    def __init__(self, dim, **_):
        raise RuntimeError("broken on purpose")


class _BrokenInTraining(nn.Module):
    """A norm that builds but raises in a training-mode forward."""

    def __init__(self, dim, **_):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x, mask=None):
        if self.training:
            raise ValueError("no training for me")
        return x * self.weight


@pytest.fixture
def broken(monkeypatch):
    """Register two broken norms for one test; monkeypatch removes them afterwards."""
    names = {"zz-test-broken-init": _BrokenAtInit, "zz-test-broken-train": _BrokenInTraining}
    for name, cls in names.items():
        assert name not in registry._REGISTRY
        monkeypatch.setitem(registry._REGISTRY, name, cls)
        monkeypatch.setitem(registry._EXACT_GRAD, name, {})
    yield list(names)


def test_every_registry_norm_is_benchmarked_and_broken_ones_are_reported(data, broken):
    bench = an.benchmark(data, seeds=[0, 1], lrs=[1e-2, 1e-3], threshold=10.0, progress=False,
                         **TINY)
    table = bench.table()
    assert list(table.norm) == list_norms()  # the registry, not a hand-kept list
    assert set(broken) <= set(table.norm)
    status = dict(zip(table.norm, table.status))
    assert "broken on purpose" in status["zz-test-broken-init"]
    assert "RuntimeError" in status["zz-test-broken-init"]
    assert "no training for me" in status["zz-test-broken-train"]
    assert set(bench.failures) == set(broken)
    assert set(bench.sweep.runs) == set(list_norms()) - set(broken)  # failed norms left out
    assert bench.lrs == [1e-3, 1e-2] and bench.sweep.grid == (1e-3, 1e-2)
    for n in list_norms():
        if n in broken:
            assert len(bench.select(n)) == 1  # failed once, then skipped
            assert bench.stable_lr(n) is None and bench.best_lr(n) is None
            continue
        assert status[n] == "ok", (n, status[n])
        # every lr of the grid with every seed: the same grid for every norm
        assert {(r.lr, r.seed) for r in bench.select(n)} == {(a, s) for a in (1e-3, 1e-2) for s in (0, 1)}
        assert bench.best_lr(n) in (1e-3, 1e-2)
        assert len(bench.at_best(n)) == 2 and len(bench.at_best(n, "val")) == 2
        assert len(bench.curves_at_best(n)) == 2
        assert len(bench.diffs(n)) == 2
    row = table.set_index("norm").loc["layernorm"]
    assert math.isfinite(row.test_loss_mean) and row.diverged_runs == 0
    assert row.vs_ref_mean == 0.0
    sw = bench.sweep.to_json()
    assert set(sw["runs"]["rmsnorm"]) == {"0.001", "0.01"}
    assert {"val", "test", "curve"} <= set(sw["runs"]["rmsnorm"]["0.001"][0])
    lines = an.findings(bench, None, unigram=10.05, margin=0.05)
    assert lines and any("Ranking" in x for x in lines)


def test_best_lr_is_chosen_on_validation_and_reported_on_test():
    """A made-up sweep: the lr with the lower mean validation loss is chosen even where its test
    loss is worse, and a lr with a diverged seed is never chosen."""
    b = an.Benchmark(["a"], [0, 1], [1e-3, 1e-2, 1e-1], threshold=3.0)
    runs = [an.NormRun("a", s, lr, 1, final_val_loss=v, final_test_loss=t)
            for lr, s, v, t in [(1e-3, 0, 2.5, 2.0), (1e-3, 1, 2.5, 2.0), (1e-2, 0, 2.2, 2.4),
                                (1e-2, 1, 2.3, 2.4), (1e-1, 0, 1.0, 1.0), (1e-1, 1, math.nan, math.nan)]]
    b.runs = runs
    b.sweep = Sweep((1e-3, 1e-2, 1e-1), (0, 1), "val", True,
                    {"a": {lr: [r.metrics() for r in runs if r.lr == lr] for lr in (1e-3, 1e-2, 1e-1)}})
    assert b.best_lr("a") == 1e-2
    assert b.at_best("a") == [2.4, 2.4] and b.at_best("a", "val") == [2.2, 2.3]
    assert b.losses("a", 1e-1) == [1.0, None]
    assert b.stable_lr("a") == 1e-2 and not b.censored("a")  # 1e-1 has a diverged seed
    bd = b.boundary("a")
    assert bd["next_lr"] == 1e-1 and bd["next_diverged"] == 1 and bd["next_slack"] == -math.inf
    assert bd["slack"] == pytest.approx(0.6)


def test_runs_are_deterministic_and_data_order_depends_on_the_seed_only(data):
    a = an.run_norm("layernorm", 3, 1e-3, data, **TINY)
    b = an.run_norm("layernorm", 3, 1e-3, data, **TINY)
    c = an.run_norm("layernorm", 4, 1e-3, data, **TINY)
    assert a.final_val_loss == b.final_val_loss and a.initial_loss == b.initial_loss
    assert a.final_test_loss == b.final_test_loss and math.isfinite(a.final_test_loss)
    assert a.final_val_loss != c.final_val_loss
    # the batches come from the generator seeded by the run's seed alone, whatever the norm
    x1, _ = next(lm_batches(data.train, 4, 16, seed_everything(3)))
    x2, _ = next(lm_batches(data.train, 4, 16, seed_everything(3)))
    assert torch.equal(x1, x2)


def test_validation_curve_and_test_split(data):
    run = an.run_norm("rmsnorm", 0, 1e-3, data, **{**TINY, "steps": 6}, evals=3)
    assert run.curve_steps == [2, 4, 6] and len(run.curve) == 3
    assert run.curve[-1] == run.final_val_loss
    m = run.metrics()
    assert m["val"] == run.final_val_loss and m["test"] == run.final_test_loss
    # validation and test windows come from the two halves of the held-out tokens: disjoint
    assert data.val_x.shape == data.test_x.shape == (4, 16)
    assert not any((data.test_x == w).all(1).any() for w in data.val_x)
    one = an.run_norm("rmsnorm", 0, 1e-3, data, **{**TINY, "steps": 6}, evals=1)
    assert one.curve_steps == [6]


def test_a_nonfinite_loss_is_a_divergence_not_a_failure(data):
    run = an.run_norm("identity", 0, 1e6, data, **{**TINY, "steps": 30}, grad_clip=None)
    assert not run.failed
    assert run.diverged or run.final_val_loss > run.initial_loss  # blown up either way
    if run.diverged:
        assert run.value is None and math.isnan(run.final_val_loss)
        assert math.isnan(run.metrics()["test"])


T = 3.0


@pytest.mark.parametrize("losses,start,expected", [
    ({1e-3: [2.9, 2.8], 3e-3: [2.5, 2.6], 1e-2: [2.7, 2.9], 3e-2: [2.8, 3.05]}, 3e-3, 1e-2),  # one seed above
    ({1e-3: [2.9, 2.8], 3e-3: [2.5, 2.6], 1e-2: [2.7, 2.9], 3e-2: [2.8, 2.95]}, 3e-3, 3e-2),  # every seed below
    ({1e-3: [2.9, 2.8], 3e-3: [2.5, 2.6], 1e-2: [2.7, None], 3e-2: [2.6, 2.6]}, 3e-3, 3e-3),  # diverged seed
    ({1e-3: [2.0], 3e-3: [float("nan")], 1e-2: [float("inf")]}, 1e-3, 1e-3),  # nan/inf are divergences
    ({1e-3: [3.1, 3.2], 3e-3: [3.05, 2.5]}, 3e-3, None),  # the selected lr itself is not stable
    ({1e-3: [3.0], 3e-3: [2.0]}, 1e-3, 3e-3),  # exactly at the threshold counts as below
    ({3e-2: [2.1], 1e-3: [2.0], 1e-2: [2.05]}, 1e-3, 3e-2),  # unsorted input
    ({1e-3: [1.0], 1e-2: [5.0], 1e-1: [1.05]}, 1e-3, 1e-3),  # a stable lr above an unstable one does not count
    ({1e-3: [3.5], 1e-2: [2.5], 1e-1: [2.6]}, None, 1e-1),  # no start: from the lowest stable lr
    ({1e-3: [3.5], 1e-2: [3.5]}, None, None),
    ({1e-3: [], 1e-2: [2.0]}, 1e-3, None),  # no runs: not stable
])
def test_largest_stable_lr(losses, start, expected):
    assert an.largest_stable_lr(losses, T, start) == expected


def test_largest_stable_lr_rejects_an_unknown_start():
    with pytest.raises(ValueError):
        an.largest_stable_lr({1e-3: [1.0]}, T, start=1e-2)


def test_slack_and_stable_at():
    assert an.slack([2.5, 2.9], T) == pytest.approx(0.1)
    assert an.slack([3.2, 2.0], T) == pytest.approx(-0.2)
    assert an.slack([2.0, None], T) == -math.inf and an.slack([], T) == -math.inf
    assert an.stable_at([2.0, 3.0], T) and not an.stable_at([2.0, 3.01], T)
    assert not an.stable_at([2.0, float("nan")], T) and not an.stable_at([], T)


def test_censored_when_the_top_of_the_grid_is_stable():
    bench = an.Benchmark(["a", "b"], [0], [1e-3, 1e-2], threshold=3.0)
    bench.runs = [an.NormRun("a", 0, 1e-3, 1, 2.0, final_test_loss=2.0),
                  an.NormRun("a", 0, 1e-2, 1, 2.05, final_test_loss=2.05),
                  an.NormRun("b", 0, 1e-3, 1, 2.0, final_test_loss=2.0),
                  an.NormRun("b", 0, 1e-2, 1, math.nan, 2.0, 5)]
    bench.sweep = Sweep((1e-3, 1e-2), (0,), "val", True,
                        {n: {lr: [r.metrics() for r in bench.runs if r.norm == n and r.lr == lr]
                             for lr in (1e-3, 1e-2)} for n in ("a", "b")})
    assert bench.best_lr("a") == 1e-3 and bench.best_lr("b") == 1e-3
    assert bench.stable_lr("a") == 1e-2 and bench.censored("a")
    assert bench.stable_lr("b") == 1e-3 and not bench.censored("b")
    t = bench.table().set_index("norm")
    assert t.loc["a", "lr_is_lower_bound"] and not t.loc["b", "lr_is_lower_bound"]
    assert t.loc["b", "diverged_runs"] == 1 and t.loc["b", "next_lr"] == 1e-2


def test_paired_word():
    from replib.claims import Paired
    assert an.paired_word(Paired("a", "b", (-0.1, -0.12, -0.11)), "b") == "lower than b"
    assert an.paired_word(Paired("a", "b", (0.1, 0.12, 0.11)), "b") == "higher than b"
    assert an.paired_word(Paired("a", "b", (0.1, -0.12, 0.01)), "b").startswith("not separated")
    assert an.paired_word(Paired("a", "b", (0.1,)), "b").startswith("not separated")


def test_throughput_relative_to_layernorm(data, broken):
    tp = an.throughput(data, n_layer=1, d_model=16, n_head=2, batch_size=4, warmup=1, reps=3)
    assert set(tp.train) == set(list_norms()) - set(broken)
    assert set(tp.failures) == set(broken)
    assert tp.relative("layernorm", "train") == 1.0 and tp.relative("layernorm", "infer") == 1.0
    for n in tp.train:
        for kind in ("train", "infer"):
            assert tp.tokens_per_s(n, kind) > 0 and tp.relative(n, kind) > 0
    assert tp.tokens_per_call == 4 * 16
    # the timing noise: quartiles of the per-round ratios bracket their median
    for n in tp.train:
        for kind in ("train", "infer"):
            q1, q3 = tp.relative_quartiles(n, kind)
            assert q1 <= tp.relative(n, kind) <= q3
    assert tp.relative_quartiles("layernorm") == (1.0, 1.0)
    assert tp.rounds("layernorm") == [1.0] * 3 and len(tp.rounds("rmsnorm", "infer")) == 3
    assert tp.rounds("zz-test-broken-init") == [] and len(tp.tokens_per_s_rounds("rmsnorm")) == 3
    assert all(math.isnan(q) for q in tp.relative_quartiles("zz-test-broken-init"))
    table = tp.table().set_index("norm")
    assert table.loc["layernorm", "train_rel"] == 1.0
    assert {"train_rel_q1", "train_rel_q3", "infer_rel_q1", "infer_rel_q3"} <= set(table.columns)
    assert math.isnan(table.loc["zz-test-broken-init", "train_rel"])
    # without the baseline, relative throughput is undefined rather than made up
    tp2 = an.throughput(data, n_layer=1, d_model=16, n_head=2, batch_size=4, warmup=0, reps=2,
                        norms=["rmsnorm", "identity"])
    assert math.isnan(tp2.relative("rmsnorm"))


def test_registry_table(broken):
    t = an.registry_table(8).set_index("norm")
    assert list(t.index) == list_norms()
    assert t.loc["layernorm", "params"] == 16 and t.loc["rmsnorm", "params"] == 8
    assert t.loc["identity", "params"] == 0 and t.loc["batchnorm", "buffers"] == 16
    assert t.loc["layernorm", "class"] == "LayerNorm"
    assert t.loc["layernorm", "summary"].startswith("Layer normalisation")
    assert "broken on purpose" in t.loc["zz-test-broken-init", "error"]
    assert not isinstance(t.loc["zz-test-broken-train", "error"], str)  # builds; fails in training
    assert t.loc["zz-test-broken-init", "summary"] == "A norm that cannot even be built."


def test_summaries_show_math_as_plain_text():
    assert an.plain_math(r"\gamma \odot \tanh(\alpha x) + \beta") == "γ ⊙ tanh(α x) + β"
    assert (an.plain_math(r"\tanh(\lambda\, x / (\kappa \sqrt{v + \epsilon}))")
            == "tanh(λ x / (κ √(v + ε)))")
    assert an.plain_math(r"\mathrm{RMS}(x) \le \frac{a}{b}") == "RMS(x) ≤ (a)/(b)"
    assert an.plain_math(r"x / \sqrt{\mathrm{mean}(x^2) + \epsilon}") == "x / √(mean(x^2) + ε)"
    summaries = an.registry_table(8).summary
    assert not any("\\" in s or ":math:" in s for s in summaries)


def test_same_init_outside_the_norms():
    kw = dict(n_layer=2, d_model=16, n_head=2)
    assert an.same_init("rmsnorm", **kw) and an.same_init("identity", **kw)
    assert an.same_init("layernorm", **kw)
    assert an._is_norm_key("blocks.0.norm1.weight") and an._is_norm_key("norm_f.bias")
    assert not an._is_norm_key("blocks.0.attn.qkv.weight")


def test_same_init_detects_a_norm_that_draws_random_numbers(monkeypatch, broken):
    class Noisy(nn.Module):
        def __init__(self, dim, **_):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(dim))

        def forward(self, x, mask=None):
            return x * self.weight

    monkeypatch.setitem(registry._REGISTRY, "zz-test-noisy", Noisy)
    assert an.same_init("zz-test-noisy", n_layer=1, d_model=16, n_head=2) is False
    assert an.same_init("zz-test-broken-init", n_layer=1, d_model=16, n_head=2) is None
