"""SeeDNorm (chapter 04): the spec's reference checks as properties, and the chapter's runners."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from replib import ReplibError
from replib.data import load_tabular
from replib.experiments import placement as pl
from replib.experiments import seednorm as sn
from replib.nn import create_norm
from replib.nn.seednorm import SeeDNorm, seednorm_jacobian
from replib.nn.vit import TinyViT, patchify

D = 8


def _x(*shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, D, generator=g, dtype=dtype) * 1.5 + 0.3


def _randomise(norm, seed=1, scale=0.7):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in norm.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return norm


def _reference(x, gamma, alpha, beta, eps, heads=1):
    """The spec's formula, written out head by head."""
    r = torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    k = x.shape[-1] // heads
    outs = []
    for h in range(heads):
        sl = slice(h * k, (h + 1) * k)
        s = torch.tanh((x[..., sl] * beta[sl]).sum(-1, keepdim=True))
        outs.append((s * alpha[sl] + gamma[sl]) * x[..., sl] / r)
    return torch.cat(outs, -1)


def test_registered_with_defaults_and_unverified_init_equals_rmsnorm():
    norm = create_norm("seednorm", D).double()
    assert isinstance(norm, SeeDNorm) and norm.eps == 1e-6 and norm.heads == 1
    assert torch.equal(norm.alpha.detach(), torch.ones(D, dtype=torch.float64))
    assert torch.equal(norm.beta.detach(), torch.zeros(D, dtype=torch.float64))
    x = _x(3, 5)
    torch.testing.assert_close(norm(x), F.rms_norm(x, (D,), eps=1e-6), rtol=0, atol=1e-14)


@pytest.mark.parametrize("zero", ["alpha", "beta"])
def test_reduces_to_rmsnorm_times_gamma(zero):
    norm = _randomise(create_norm("seednorm", D, eps=1e-5).double())
    with torch.no_grad():
        getattr(norm, zero).zero_()
    x = _x(4, 3)
    ref = create_norm("rmsnorm", D, eps=1e-5).double()
    with torch.no_grad():
        ref.weight.copy_(norm.weight)
    torch.testing.assert_close(norm(x), ref(x), rtol=0, atol=1e-13)


def test_forward_matches_formula_single_and_multi_head():
    for heads in (1, 2, 4):
        norm = _randomise(create_norm("seednorm", D, heads=heads).double(), seed=heads)
        x = _x(6, seed=heads)
        ref = _reference(x, norm.weight, norm.alpha, norm.beta, norm.eps, heads)
        torch.testing.assert_close(norm(x), ref, rtol=1e-12, atol=1e-13)
        assert not torch.allclose(norm(x), F.rms_norm(x, (D,), norm.weight, norm.eps))


def test_multi_head_with_one_head_equals_single_head():
    a = _randomise(SeeDNorm(D, heads=1).double(), seed=5)
    b = SeeDNorm(D, heads=1).double()
    b.load_state_dict(a.state_dict())
    x = _x(2, 3)
    assert torch.equal(a(x), b(x))
    torch.testing.assert_close(a(x), _reference(x, a.weight, a.alpha, a.beta, a.eps, 1))
    with pytest.raises(ReplibError, match="heads"):
        SeeDNorm(D, heads=3)


def test_scale_behaviour_closed_form():
    norm = _randomise(SeeDNorm(D, eps=0.0).double(), seed=2)
    x = _x(5)
    r = x.pow(2).mean(-1, keepdim=True).sqrt()
    for c in (0.1, 1.0, 3.0, 50.0):
        s = torch.tanh(c * (x @ norm.beta)).unsqueeze(-1)
        torch.testing.assert_close(norm(c * x), (s * norm.alpha + norm.weight) * x / r,
                                   rtol=1e-12, atol=1e-13)
    # the dynamic gain is not scale-invariant, RMSNorm is
    assert not torch.allclose(norm(10 * x), norm(x))


def test_output_bounded_by_gamma_plus_alpha():
    norm = _randomise(SeeDNorm(D).double(), seed=3, scale=2.0)
    x = _x(50) * torch.logspace(-2, 2, 50, dtype=torch.float64)[:, None]
    bound = (norm.weight.abs() + norm.alpha.abs()) * x.abs() / torch.sqrt(
        x.pow(2).mean(-1, keepdim=True) + norm.eps)
    assert (norm(x).abs() <= bound + 1e-12).all()


def test_jacobian_matches_closed_form():
    norm = _randomise(SeeDNorm(D, eps=1e-5).double(), seed=4)
    for seed in range(3):
        x = _x(seed=seed)
        auto = torch.autograd.functional.jacobian(lambda v: norm(v), x)
        closed = seednorm_jacobian(x, norm.weight.detach(), norm.alpha.detach(),
                                   norm.beta.detach(), norm.eps)
        torch.testing.assert_close(auto, closed, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kw", [{}, {"heads": 2}, {"alpha_init": 0.0, "beta_std": 0.5}])
def test_gradcheck_float64(kw):
    torch.manual_seed(0)
    norm = _randomise(SeeDNorm(D, **kw).double(), scale=0.3)
    x = _x(3, 2).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: norm(t), (x,))
    names = [n for n, _ in norm.named_parameters()]
    assert torch.autograd.gradcheck(
        lambda *ps: torch.func.functional_call(norm, dict(zip(names, ps)), (x.detach(),)),
        tuple(p.detach().clone().requires_grad_() for p in norm.parameters()))


def test_default_init_trains_alpha_beta_and_zero_zero_is_a_dead_start():
    x = _x(4, 3)
    live = SeeDNorm(D).double()
    (live(x) * torch.randn_like(x)).sum().backward()
    assert live.beta.grad.abs().sum() > 0  # beta learns because alpha = 1
    dead = SeeDNorm(D, alpha_init=0.0).double()
    (dead(x) * torch.randn_like(x)).sum().backward()
    assert dead.alpha.grad.abs().sum() == 0 and dead.beta.grad.abs().sum() == 0


def test_random_beta_init_is_seeded():
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        outs.append(SeeDNorm(D, alpha_init=0.0, beta_std=0.1).beta.detach())
    assert torch.equal(*outs) and outs[0].abs().sum() > 0


def test_extra_parameters_are_two_d_per_norm():
    assert sum(p.numel() for p in SeeDNorm(D).parameters()) == 3 * D
    size = dict(n_layer=3, d_model=16, n_head=2, seq_len=8)
    delta, n_norms = sn.norm_param_delta("SeeDNorm", **size)
    assert n_norms == 2 * 3 + 1 and delta == 2 * 16 * n_norms
    assert sn.norm_param_delta("SeeDNorm-MH", **size)[0] == delta
    # DyT: weight, bias (D each) and alpha per norm, over RMSNorm's D, plus its one embedding scale
    assert sn.norm_param_delta("DyT", **size)[0] == (16 + 1) * n_norms + 1


def test_only_dyt_gets_its_recipes_learnable_sqrt_d_embedding_scale():
    size = dict(n_layer=1, d_model=16, n_head=2, seq_len=8)
    for label in sn.VARIANTS:
        m = sn.gpt(label, **size)
        if label.startswith("DyT"):
            assert m.emb_scale is not None and m.emb_scale.requires_grad
            assert m.emb_scale.item() == pytest.approx(4.0)  # sqrt(16)
            idx = torch.randint(0, 256, (2, 8))
            torch.testing.assert_close(m.embed(idx), 4.0 * m.tok_emb(idx) + m.pos_emb(torch.arange(8)))
        else:
            assert m.emb_scale is None
    assert sn.lm_model_kwargs("DyT") == {"norm_kwargs": {}, "embed_scale": True}
    assert sn.lm_model_kwargs("SeeDNorm-MH") == {"norm_kwargs": {"heads": sn.MH_HEADS}}


def test_dyt_formula():
    norm = _randomise(create_norm("dyt", D).double())
    x = _x(3)
    torch.testing.assert_close(norm(x), norm.weight * torch.tanh(norm.alpha * x) + norm.bias)
    assert sum(p.numel() for p in create_norm("dyt", D).parameters()) == 2 * D + 1


def test_jacobian_scaling_slopes():
    torch.manual_seed(0)
    x = torch.randn(16, 32, dtype=torch.float64)
    cs = [10.0, 100.0]
    rms = sn.jacobian_scaling(create_norm("rmsnorm", 32, eps=1e-12).double(), x, cs)
    assert abs(sn.loglog_slope(cs, rms["fro"]) + 1) < 1e-6
    # SeeDNorm: G = s alpha + gamma moves with c until s saturates; from then on exactly 1/c
    seed = SeeDNorm(32, eps=1e-12, beta_std=32 ** -0.5).double()
    far = [1e4, 1e5]
    assert abs(sn.loglog_slope(far, sn.jacobian_scaling(seed, x, far)["fro"]) + 1) < 1e-3
    dyt = sn.jacobian_scaling(create_norm("dyt", 32).double(), x, [0.01, 0.02])
    assert abs(sn.loglog_slope([0.01, 0.02], dyt["fro"])) < 1e-3  # linear regime: flat
    assert sn.loglog_slope([1, 10, 100], [3.0, 0.3, 0.03]) == pytest.approx(-1.0)


def test_patchify_and_vit_shapes():
    img = torch.arange(64.0).view(1, 64)
    p = patchify(img)
    assert p.shape == (1, 16, 4)
    assert p[0, 0].tolist() == [0, 1, 8, 9] and p[0, 1].tolist() == [2, 3, 10, 11]
    for label in sn.VARIANTS:
        m = TinyViT(n_classes=10, d_model=16, depth=1, n_head=2, norm=sn.variant(label)[0],
                       norm_kwargs=sn.variant(label)[1] if label != "SeeDNorm-MH" else {"heads": 2})
        assert m(torch.randn(3, 64)).shape == (3, 10)


def test_lm_run_is_deterministic_and_every_variant_trains():
    from replib.data import book_corpus
    data = pl.lm_data(book_corpus().text[:200_000], seq_len=16, val_windows=4)
    kw = dict(n_layer=1, d_model=16, n_head=2, batch_size=4, steps=4, log_every=2)
    a, b = (sn.lm_run("SeeDNorm", 3, data, **kw) for _ in range(2))
    assert a.loss == b.loss and a.val_loss == b.val_loss
    for label in sn.VARIANTS:
        r = sn.lm_run(label, 0, data, **kw, keep_model=True)
        assert math.isfinite(r.final_val_bpb) and math.isfinite(sn.val_auc(r))
        assert (r.model.emb_scale is not None) == label.startswith("DyT")  # the trained model has it too


def test_val_auc_trapezoid():
    r = pl.PlacementRun("pre", 0, 1e-3, steps=4, log_steps=[2, 4], val_loss=[3.0, 1.0])
    assert sn.val_auc(r) == pytest.approx(2.0)
    r.diverged_at = 3
    assert math.isnan(sn.val_auc(r))


def test_vit_run_is_deterministic():
    split = load_tabular("digits", seed=0)
    kw = dict(d_model=16, n_layer=1, n_head=2, batch_size=64, epochs=1, eval_every=5)
    a, b = (sn.vit_run("SeeDNorm", 1, split, **kw) for _ in range(2))
    assert a.loss == b.loss and a.test_loss == b.test_loss and a.steps == 22
    assert 0.0 <= a.final_test_acc <= 1.0 and a.eval_steps[-1] == a.steps


def test_step_times_returns_interleaved_timings():
    t = sn.step_times(["RMSNorm", "SeeDNorm"], 0, n_layer=1, d_model=16, n_head=2, seq_len=8,
                      batch_size=2, warmup=1, reps=3)
    assert set(t) == {"RMSNorm", "SeeDNorm"} and all(v.n == 3 and v.median > 0 for v in t.values())
    assert np.isfinite(list(__import__("replib").timing.ratios(t, "RMSNorm").values())).all()


def test_lm_splits_val_and_test_are_disjoint_halves_of_the_held_out_bytes():
    from replib.data import ByteTokenizer, book_corpus
    text = book_corpus().text[:100_000]
    sp = sn.lm_splits(text, seq_len=16, val_windows=8, test_windows=8)
    tokens = ByteTokenizer().encode(text)
    cut = int(len(tokens) * 0.9)
    half = (len(tokens) - cut) // 2
    assert torch.equal(sp.data.train, tokens[:cut])
    assert torch.equal(sp.data.val_x[0], tokens[cut:cut + 16])
    assert torch.equal(sp.test_x[0], tokens[cut + half:cut + half + 16])
    assert sp.data.val_x.shape == sp.test_x.shape == (8, 16)


def test_c1_point_returns_val_test_curve_and_nan_when_diverged():
    from replib.data import book_corpus
    sp = sn.lm_splits(book_corpus().text[:200_000], seq_len=16, val_windows=4, test_windows=4)
    kw = dict(n_layer=1, d_model=16, n_head=2, batch_size=4, steps=4, log_every=2)
    out = sn.c1_point("SeeDNorm", 1e-3, 0, sp, **kw)
    assert math.isfinite(out["val"]) and math.isfinite(out["test"]) and out["val"] != out["test"]
    assert out["curve"][-1] == out["val"] and out["steps"] == [2, 4]
    bad = sn.c1_point("RMSNorm", 1e9, 0, sp, **{**kw, "steps": 30, "log_every": 10})
    if not math.isfinite(bad["val"]):  # a diverged run is NaN everywhere, never raised
        assert math.isnan(bad["test"]) and math.isnan(bad["auc"])


def test_vit_splits_hold_out_validation_from_training_images():
    split = load_tabular("digits", seed=0)
    sel, jud = sn.vit_splits(split, val_fraction=0.2, seed=0)
    n = split.x_train.shape[0]
    assert sel.x_train.shape[0] + sel.x_test.shape[0] == n
    assert torch.equal(sel.x_train, jud.x_train) and torch.equal(jud.x_test, split.x_test)
    rows = {tuple(r.tolist()) for r in sel.x_train}
    assert not any(tuple(r.tolist()) in rows for r in sel.x_test[:50])
    out = sn.c2_point("SeeDNorm", 1e-3, 0, sel, jud, d_model=16, n_layer=1, n_head=2, batch_size=64,
                      epochs=1, eval_every=5)
    assert {"val", "test", "test_acc", "curve"} <= set(out) and 0 <= out["test_acc"] <= 100


@pytest.mark.parametrize("dyt, expect, why", [
    ([2.0, 2.1, 2.05, 2.2, 2.1], "replicated", "SeeDNorm − DyT"),  # DyT trained and is worse
    ([3.0, 3.0, 3.0, 3.0, 3.0], "replicated", "DyT excluded"),  # DyT stalled at the reference: excluded
    ([1.0, 1.1, 1.0, 1.05, 1.0], "not replicated", "SeeDNorm − DyT"),  # DyT beats SeeDNorm
    ([None] * 5, "replicated", "diverged in every seed"),
])
def test_beats_rule_known_answers(dyt, expect, why):
    from replib import Health, judge
    rule = sn.beats_rule("SeeDNorm", "RMSNorm", "DyT", metric="loss", health=Health(reference=3.0, margin=0.05))
    s = [1.5, 1.6, 1.55, 1.7, 1.6]
    r = [x + 0.1 + 0.01 * i for i, x in enumerate(s)]
    c = judge("C", "x", paper="-", rule=rule, metrics={"SeeDNorm": s, "RMSNorm": r, "DyT": dyt})
    assert c.verdict.value == expect and why in c.qualifiers[0]


def test_beats_rule_reversal_noise_and_gate():
    from replib import Health, judge
    rule = sn.beats_rule("SeeDNorm", "RMSNorm", "DyT", metric="loss", health=Health(reference=3.0, margin=0.05))
    dyt = [2.5] * 3
    rev = judge("C", "x", paper="-", rule=rule, metrics={"SeeDNorm": [1.6, 1.7, 1.65], "RMSNorm": [1.5, 1.6, 1.56],
                                                         "DyT": dyt})
    assert rev.verdict.value == "not replicated"
    noise = judge("C", "x", paper="-", rule=rule, metrics={"SeeDNorm": [1.5, 1.7, 1.6], "RMSNorm": [1.6, 1.6, 1.6],
                                                           "DyT": dyt})
    assert noise.verdict.value == "inconclusive"
    stalled = judge("C", "x", paper="-", rule=rule, metrics={"SeeDNorm": [1.5, 1.5, 1.5], "RMSNorm": [3.0, 1.9, 1.9],
                                                             "DyT": dyt})
    assert stalled.verdict.value == "inconclusive" and "health gate" in stalled.qualifiers[0]
