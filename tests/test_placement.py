"""Tests for the placement runner (chapters 05 Peri-LN and 25 Mix-LN) and Peri-LN's wiring."""
import math

import pytest
import torch

from replib.experiments import placement as pl
from replib.nn import GPTConfig, TinyGPT

TEXT = "def f(x):\n    return x * 2 + 1  # a tiny corpus\n" * 200
SMALL = dict(n_layer=3, d_model=16, n_head=2, batch_size=4, steps=12, log_every=4)


@pytest.fixture(scope="module")
def data():
    return pl.lm_data(TEXT, seq_len=16, val_windows=8, probe_windows=4)


def test_same_seed_same_run(data):
    a = pl.run_placement("peri", 3, 3e-3, data, **SMALL)
    b = pl.run_placement("peri", 3, 3e-3, data, **SMALL)
    c = pl.run_placement("peri", 4, 3e-3, data, **SMALL)
    assert a.loss == b.loss and a.grad_norms == b.grad_norms and a.residual_std == b.residual_std
    assert a.loss != c.loss


def test_instrumentation_shapes(data):
    run = pl.run_placement("pre", 0, 3e-3, data, keep_model=True, **SMALL)
    assert run.log_steps == [4, 8, 12]
    assert len(run.loss) == 12 and len(run.val_loss) == 3
    for series in (run.residual_std, run.residual_rms, run.residual_maxabs):
        assert [len(x) for x in series] == [SMALL["n_layer"] + 1] * 3
    assert [len(g) for g in run.grad_norms] == [SMALL["n_layer"]] * 3
    assert all(g > 0 and math.isfinite(g) for gs in run.grad_norms for g in gs)
    assert run.final_val_loss == run.val_loss[-1] and not run.diverged
    assert run.at_fraction(0.1) == 0 and run.at_fraction(1.0) == 2
    assert isinstance(run.model, TinyGPT) and run.model.cfg.norm == "rmsnorm"


def test_model_kwargs_reach_the_config(data):
    run = pl.run_placement("mix", 0, 3e-3, data, keep_model=True,
                           model_kwargs={"mix_alpha": 0.5}, **{**SMALL, "n_layer": 4, "steps": 2})
    assert [b.placement for b in run.model.blocks] == ["post", "post", "pre", "pre"]


def test_divergence_is_recorded_not_raised(data):
    run = pl.run_placement("post", 0, 50.0, data, grad_clip=None, **{**SMALL, "steps": 20})
    assert run.diverged
    nan_run = pl.PlacementRun("pre", 0, 1.0, steps=10, loss=[5.0, float("nan")], diverged_at=2)
    assert nan_run.diverged and math.isnan(nan_run.final_val_loss)
    flat = pl.PlacementRun("pre", 0, 1.0, steps=4, loss=[5.5] * 4, log_steps=[4], val_loss=[5.45])
    assert flat.diverged  # final loss > initial - 0.1
    good = pl.PlacementRun("pre", 0, 1.0, steps=4, loss=[5.5] * 4, log_steps=[4], val_loss=[3.0])
    assert not good.diverged


def test_count_spikes():
    assert pl.count_spikes([5, 4, 3, 3.2, 3.6, 2.5, 3.1, 2.9]) == 2  # 3.6 > 3+0.5, 3.1 > 2.5+0.5
    assert pl.count_spikes([5, 4, float("nan"), 9]) == 0
    assert pl.count_spikes([3, 2, 1]) == 0


def test_best_lr_range():
    def run(lr, bpb, div=False):
        r = pl.PlacementRun("pre", 0, lr, steps=1, loss=[6.0], log_steps=[1],
                            val_loss=[bpb * pl.LN2 if not div else 6.0])
        return r
    runs = [run(1e-3, 2.0), run(1e-3, 2.1), run(3e-3, 1.9), run(1e-2, 1.95), run(3e-2, 1.0, div=True)]
    assert pl.best_lr_range(runs) == [3e-3, 1e-2]


def test_fit_r2_prefers_the_right_model():
    lin = [1 + 2 * l for l in range(1, 9)]
    exp = [math.exp(0.7 * l) for l in range(1, 9)]
    assert pl.fit_r2(lin, "linear") == pytest.approx(1.0)
    assert pl.fit_r2(exp, "exp") == pytest.approx(1.0)
    assert pl.fit_r2(lin, "linear") > pl.fit_r2(lin, "exp")
    assert pl.fit_r2(exp, "exp") > pl.fit_r2(exp, "linear")


def _model(placement, eps=1e-12):
    torch.manual_seed(0)
    m = TinyGPT(GPTConfig(vocab_size=256, seq_len=8, n_layer=3, n_head=2, d_model=16, norm="rmsnorm",
                          norm_kwargs={"eps": eps}, placement=placement)).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


def test_norm_counts():
    counts = {p: pl.count_norms(_model(p)) for p in ("post", "pre", "peri")}
    assert counts == {"post": 6, "pre": 7, "peri": 13}


def test_peri_wiring():
    blk = _model("peri").blocks[0]
    h = torch.randn(2, 8, 16, dtype=torch.float64)
    with torch.no_grad():
        blk.norm1_out.weight.zero_()
        blk.norm2_out.weight.zero_()
        assert torch.equal(blk(h), h)  # zero output gains: the identity
        blk.norm1_out.weight.fill_(1.0)
        upd = lambda x: blk.norm1_out(blk.attn(blk.norm1(x)))  # noqa: E731
        torch.testing.assert_close(upd(h).pow(2).mean(-1), torch.ones(2, 8, dtype=torch.float64))
        for c in (0.25, 7.0):
            torch.testing.assert_close(upd(c * h), upd(h), rtol=1e-9, atol=1e-10)
    x = h[:1, :3]
    jn = lambda c: torch.linalg.matrix_norm(  # noqa: E731
        torch.autograd.functional.jacobian(upd, c * x).reshape(48, 48), ord=2)
    assert float(jn(5.0) * 5.0 / jn(1.0)) == pytest.approx(1.0, rel=1e-6)


def test_threads_restored(data):
    before = torch.get_num_threads()
    pl.run_placement("pre", 0, 3e-3, data, threads=1, **{**SMALL, "steps": 2})
    assert torch.get_num_threads() == before


# ------------------------------------------------------- issue 10: split, sweep, verdict rules
from replib.claims import Health, Stat, Verdict  # noqa: E402

HEALTH = Health(reference=4.5, margin=0.07, name="byte-unigram loss (bits/byte)")


def test_split_data_has_disjoint_val_and_test_halves():
    d = pl.lm_data(TEXT + "".join(chr(65 + i % 26) for i in range(3000)), seq_len=16, val_windows=4,
                   test_windows=4, probe_windows=2)
    assert d.val_x.shape == d.test_x.shape == (4, 16) and d.probe.shape == (2, 16)
    assert not torch.equal(d.val_x, d.test_x)
    assert pl.lm_data(TEXT, seq_len=16, val_windows=4).test_x is None  # no test windows asked for


def test_sweep_records_val_test_and_picks_each_best():
    d = pl.lm_data(TEXT, seq_len=16, val_windows=4, test_windows=4, probe_windows=2)
    sweep, runs = pl.placement_sweep(["pre", "peri"], [3e-3, 1e-2], [0, 1], d, progress=False, **SMALL)
    assert len(runs) == 8 and sweep.grid == (3e-3, 1e-2)
    for arm in ("pre", "peri"):
        best = pl.at_best(sweep, runs, arm)
        assert [r.seed for r in best] == [0, 1] and {r.lr for r in best} == {sweep.best_lr(arm)}
        assert all(math.isfinite(r.final_test_bpb) for r in best)
        rec = sweep.runs[arm][sweep.best_lr(arm)][0]
        assert rec["val"] == best[0].final_val_bpb and rec["test"] == best[0].final_test_bpb
    assert pl.per_seed_events(list(runs.values()), [0, 1]) == [
        sum(int(r.diverged) + r.spikes for r in runs.values() if r.seed == s) for s in (0, 1)]
    assert sweep.to_json()["best"]["pre"] == sweep.best_lr("pre")


def test_arm_sweep_routes_options_and_records_failures():
    """An arm is GPTConfig options: ``norm`` and ``placement`` reach run_placement, the rest the
    config; the same seed gives the same batches whatever the arm, and with ``failures`` an arm whose
    runs raise is recorded once and skipped, as diverged, while the others train."""
    d = pl.lm_data(TEXT, seq_len=16, val_windows=4, test_windows=4, probe_windows=2)
    arms = {"pre-ln": {"norm": "layernorm"}, "peri-rms": {"placement": "peri"},
            "broken": {"attention": "no-such-kernel"}}
    failures = {}
    sweep, runs = pl.arm_sweep(arms, [1e-2], [0], d, progress=False, failures=failures,
                               keep_model=True, **SMALL)
    assert set(runs) == {("pre-ln", 1e-2, 0), ("peri-rms", 1e-2, 0)}
    assert type(runs[("pre-ln", 1e-2, 0)].model.blocks[0].norm1).__name__ == "LayerNorm"
    assert runs[("peri-rms", 1e-2, 0)].model.cfg.placement == "peri"
    assert runs[("peri-rms", 1e-2, 0)].model.cfg.norm == "rmsnorm"
    assert list(failures) == ["broken"] and "no-such-kernel" in failures["broken"]
    assert sweep.runs["broken"][1e-2][0]["diverged"] and sweep.best_lr("broken") is None
    with pytest.raises(Exception, match="no-such-kernel"):  # no failures dict: the error is raised
        pl.arm_sweep({"broken": arms["broken"]}, [1e-2], [0], d, progress=False, **SMALL)


def _m(**kw):
    return {k: Stat.of(v) for k, v in kw.items()}


def c1_metrics(peri, pre=(3.0, 3.1, 3.05, 3.2, 3.0), post=(4.0, 4.1, 4.0, 4.2, 4.0), top=(0.0,) * 5):
    return _m(pre=pre, peri=peri, post=post, **{f"{p} top-lr divergent": top for p in ("pre", "peri", "post")})


def test_c1_rule_known_answers():
    rule = pl.peri_quality_rule(HEALTH)
    better = tuple(v - 0.2 for v in (3.0, 3.1, 3.05, 3.2, 3.0))
    assert rule(c1_metrics(better)) is Verdict.REPLICATED
    assert rule(c1_metrics(tuple(v + 0.4 for v in better))) is Verdict.NOT_REPLICATED  # reversal
    assert rule(c1_metrics((3.1, 3.0, 3.1, 3.1, 3.05))) is Verdict.INCONCLUSIVE  # noise
    stalled_post = c1_metrics(better, post=(4.49,) * 5)  # Post at the unigram level: excluded, partial tier
    v, why = rule.apply(stalled_post)
    assert v is Verdict.PARTIAL and "excluded" in why
    assert rule(c1_metrics(better, pre=(4.48,) * 5)) is Verdict.INCONCLUSIVE  # a stalled baseline decides nothing
    assert rule(c1_metrics(better, post=(3.0,) * 5)) is Verdict.PARTIAL  # Post not the worst


def test_c2_rule_known_answers():
    rule = pl.stability_rule(HEALTH)
    base = dict(pre=(3.0,) * 3, peri=(3.0,) * 3)
    def m(peri, pre, wp=2, wq=1):
        return _m(**base, **{"peri events": peri, "pre events": pre, "peri best-LR range width": wp,
                             "pre best-LR range width": wq})
    assert rule(m((1, 2, 1), (10, 12, 11))) is Verdict.REPLICATED
    assert rule(m((5, 5, 5), (5, 5, 5))) is Verdict.PARTIAL  # the spec's "equal" tier
    assert rule(m((10, 12, 11), (1, 2, 1))) is Verdict.NOT_REPLICATED
    assert rule(m((1, 2, 1), (10, 12, 11), wp=1, wq=2)) is Verdict.NOT_REPLICATED  # narrower range
    assert rule(m((1, 9, 4), (5, 3, 6))) is Verdict.INCONCLUSIVE


def test_c3_rule_known_answers():
    rule = pl.growth_rule(HEALTH)
    def m(pre, peri, lin=(0.99, 0.98, 0.99), exp=(0.8, 0.82, 0.79)):
        return _m(**{"pre growth ratio": pre, "peri growth ratio": peri, "peri R2 linear": lin,
                     "peri R2 exp": exp, "pre": (3.0,) * 3, "peri": (3.0,) * 3})
    assert rule(m((10, 11, 12), (2, 2.1, 2.05))) is Verdict.REPLICATED
    assert rule(m((10, 11, 12), (2, 2.1, 2.05), lin=(0.8, 0.82, 0.79), exp=(0.99, 0.98, 0.99))) is Verdict.PARTIAL
    assert rule(m((2.3, 2.4, 2.35), (8, 7.5, 7.7))) is Verdict.NOT_REPLICATED  # Peri grows more: reversed
    assert rule(m((6.0, 7.0, 6.5), (2.0, 2.2, 2.1))) is Verdict.INCONCLUSIVE  # ratio ~3.1 ± noise vs 3


def test_c4_rule_known_answers():
    rule = pl.gradient_rule(HEALTH)
    def m(peri_cv, post=(3.0,) * 3, fl=(1e-3, 2e-3, 5e-4)):
        return _m(**{"pre CV": (1.3, 1.4, 1.35), "peri CV": peri_cv, "post CV": (2.9, 3.0, 2.95),
                     "post first/last": fl, "pre": (3.0,) * 3, "peri": (3.0,) * 3, "post": post})
    assert rule(m((0.5, 0.6, 0.55))) is Verdict.REPLICATED
    assert rule(m((0.5, 0.6, 0.55), fl=(1.0, 2.0, 1.5))) is Verdict.NOT_REPLICATED  # no vanishing: reversed
    v, why = rule.apply(m((0.5, 0.6, 0.55), post=(4.49,) * 3))  # Post stalled: its parts undecided
    assert v is Verdict.INCONCLUSIVE and "undecided" in why
    assert rule(m((2.0, 2.1, 2.05), post=(4.49,) * 3)) is Verdict.NOT_REPLICATED  # Peri CV worse than Pre's
