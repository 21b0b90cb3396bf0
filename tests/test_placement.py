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
