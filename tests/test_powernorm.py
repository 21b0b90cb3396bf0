"""PowerNorm (chapter 02): the spec's reference checks, the approximate backward against its
formula in float64, warm-up boundaries, padding masks, folding, and the LM runner's batches."""
import pytest
import torch

from replib import ReplibError
from replib.nn import GPTConfig, TinyGPT, create_norm
from replib.nn.powernorm import (
    PowerNorm,
    PowerNormV,
    fold_gpt,
    fold_into_linear,
    group_scale,
    masked_quadratic_mean,
)

C = 8
EPS = 1e-5


def _x(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, C, generator=g, dtype=torch.float64) * 1.7 + 0.4


def _pn(**kw):
    kw.setdefault("group_num", 0)
    return PowerNorm(C, **kw).double()


def _perturb(norm, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norm.weight.add_(0.3 * torch.randn(C, generator=g, dtype=norm.weight.dtype))
        norm.bias.add_(0.3 * torch.randn(C, generator=g, dtype=norm.bias.dtype))


def _mask():
    return torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)


# ---- forward -------------------------------------------------------------------------------

def test_eval_mode_is_the_fixed_affine_map():
    for gn in (0, 2):
        pn = PowerNorm(C, group_num=gn).double()
        _perturb(pn)
        pn.train()(_x(4, 5))
        pn.train()(_x(4, 5, seed=3))
        x = _x(3, 7, seed=5)
        xs = group_scale(x, gn) if gn else x
        expect = pn.weight * xs / torch.sqrt(pn.running_phi + EPS) + pn.bias
        torch.testing.assert_close(pn.eval()(x), expect, atol=1e-12, rtol=1e-12)
        # batch independence in eval mode: one row alone gives the same answer
        torch.testing.assert_close(pn(x[:1]), pn(x)[:1], atol=1e-12, rtol=0)


def test_first_step_divides_by_the_masked_batch_quadratic_mean_without_centering():
    pn = _pn(warmup_iters=10**9)
    x, mask = _x(3, 6), _mask()
    y = pn.train()(x, mask)
    q = x[mask].pow(2).mean(0)
    torch.testing.assert_close(y, x / torch.sqrt(q + EPS), atol=1e-12, rtol=0)
    assert y[mask].mean(0).abs().max() > 0.05  # no mean subtraction


def test_group_scaling_gives_unit_mean_square_per_token_and_group():
    x = _x(5, 3) * 10
    for gn in (1, 2, 4):
        y = group_scale(x, gn, eps=0.0).reshape(5, 3, gn, C // gn)
        torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(5, 3, gn, dtype=torch.float64))
    # group_num = 1 is RMSNorm without a gain
    torch.testing.assert_close(group_scale(x, 1), create_norm("rmsnorm", C, affine=False)(x))
    with pytest.raises(ReplibError, match="does not divide"):
        group_scale(x, 3)


def test_code_default_applies_group_scaling_then_batch_statistic():
    pn = PowerNorm(C, group_num=2).double()
    x, mask = _x(3, 6), _mask()
    xs = group_scale(x, 2)
    torch.testing.assert_close(pn.train()(x, mask), xs / torch.sqrt(xs[mask].pow(2).mean(0) + EPS))


@pytest.mark.parametrize("name,kw", [("powernorm", {}), ("powernorm", {"version": "paper"}),
                                     ("powernorm", {"backward": "exact"}), ("pn-v", {})])
def test_padding_never_shapes_statistics_outputs_or_first_gradients(name, kw):
    kw = dict(kw, group_num=2)
    mask = _mask()
    outs, grads, phis = [], [], []
    for fill in (0.0, 1e6):
        norm = create_norm(name, C, **kw).double()
        _perturb(norm)
        x = _x(3, 6).clone()
        x[~mask] = fill
        x.requires_grad_()
        y = norm.train()(x, mask)
        (y * _x(3, 6, seed=9))[mask].sum().backward()
        outs.append(y[mask].detach()); grads.append(x.grad[mask]); phis.append(norm.running_phi.clone())
    torch.testing.assert_close(outs[0], outs[1], atol=1e-10, rtol=0)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-10, rtol=0)
    torch.testing.assert_close(phis[0], phis[1], atol=1e-12, rtol=0)


def test_mask_shape_is_checked_and_empty_batch_refused():
    with pytest.raises(ReplibError, match="mask shape"):
        _pn()(_x(3, 6), torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(ReplibError, match="at least one real position"):
        masked_quadratic_mean(_x(2, 3), torch.zeros(2, 3, dtype=torch.bool))


def test_bad_options_are_refused():
    with pytest.raises(ReplibError, match="version"):
        PowerNorm(C, version="v2")
    with pytest.raises(ReplibError, match="backward"):
        PowerNorm(C, backward="straight-through")
    with pytest.raises(ReplibError, match="does not divide"):
        PowerNorm(C, group_num=3)


# ---- running statistic and warm-up ---------------------------------------------------------

def test_running_phi_reaches_a_constant_batch_statistic_during_warm_up():
    pn = _pn(warmup_iters=100)
    x = _x(4, 6)
    q = x.pow(2).mean((0, 1))
    pn.train()(x)
    torch.testing.assert_close(pn.running_phi, q)  # cumulative average of one batch, then EMA of it
    for _ in range(9):
        pn(x)
    torch.testing.assert_close(pn.running_phi, q)
    assert int(pn.iters) == 10


def test_running_phi_update_rules_at_the_warm_up_boundaries():
    w = 3
    pn = _pn(warmup_iters=w)
    xs = [_x(4, 6, seed=s) for s in range(6)]
    phi = torch.ones(C, dtype=torch.float64)
    for k, x in enumerate(xs, start=1):
        q = x.pow(2).mean((0, 1))
        y = pn.train()(x)
        denom = q if k <= w else phi  # forward: batch statistic up to and including k = w
        torch.testing.assert_close(y, x / torch.sqrt(denom + EPS))
        if k < w:  # cumulative average only while k < w (strict)
            phi = phi * (k - 1) / k + q / k
        phi = 0.9 * phi + 0.1 * q
        torch.testing.assert_close(pn.running_phi, phi)


def test_paper_version_divides_by_the_previous_running_statistic_from_the_start():
    pn = _pn(version="paper")
    assert pn.warmup_iters == 0 and pn.group_num == 0
    phi = torch.ones(C, dtype=torch.float64)
    for s in range(3):
        x = _x(4, 6, seed=s)
        torch.testing.assert_close(pn.train()(x), x / torch.sqrt(phi + EPS))
        phi = 0.9 * phi + 0.1 * x.pow(2).mean((0, 1))
        torch.testing.assert_close(pn.running_phi, phi)


# ---- the approximate backward --------------------------------------------------------------

def _surrogate_grad(x, dy, weight, denom_fwd, var_bkw, G, c):
    """Autograd of a surrogate whose exact gradient is the code version's formula
    (g - c G z) / sqrt(var + eps): L_s(x) = sum((dy w - c G sg(z)) x) / sqrt(var + eps)."""
    s_f = torch.rsqrt(denom_fwd + EPS)
    s_b = torch.rsqrt(var_bkw + EPS)
    z = (x * s_f).detach()
    xr = x.detach().clone().requires_grad_()
    surrogate = (dy * weight * xr * s_b).sum() - c * (G * z * xr * s_b).sum()
    (gx,) = torch.autograd.grad(surrogate, xr)
    return gx


def test_code_backward_first_step_is_stop_gradient_bn_without_centering():
    pn = _pn(warmup_iters=100)
    _perturb(pn)
    x = _x(3, 6).requires_grad_()
    dy = _x(3, 6, seed=4)
    y = pn.train()(x)
    y.backward(dy)
    var = x.detach().pow(2).mean((0, 1))
    g = pn.weight.detach() * dy
    torch.testing.assert_close(x.grad, g / torch.sqrt(var + EPS), atol=1e-12, rtol=0)
    z = x.detach() / torch.sqrt(var + EPS)
    torch.testing.assert_close(pn.ema_gz, (g * z).mean((0, 1)), atol=1e-12, rtol=0)
    # parameters get their exact gradients
    torch.testing.assert_close(pn.weight.grad, (dy * z).sum((0, 1)))
    torch.testing.assert_close(pn.bias.grad, dy.sum((0, 1)))


def test_code_backward_over_several_steps_matches_its_formula_and_a_surrogate_autograd():
    w = 2
    pn = _pn(warmup_iters=w)
    _perturb(pn)
    mask = _mask()
    G = torch.zeros(C, dtype=torch.float64)
    phi = torch.ones(C, dtype=torch.float64)
    for k in range(1, 6):
        x = _x(3, 6, seed=10 + k).requires_grad_()
        dy = _x(3, 6, seed=20 + k)
        pn.train()(x, mask).backward(dy)
        xd = x.detach()
        var = xd[mask].pow(2).mean(0)
        denom = var if k <= w else phi
        z = xd / torch.sqrt(denom + EPS)
        g = pn.weight.detach() * dy
        g_tilde = g - 0.1 * G * z
        expect = g_tilde / torch.sqrt(var + EPS)  # backward divides by the batch statistic
        torch.testing.assert_close(x.grad, expect, atol=1e-12, rtol=0)
        torch.testing.assert_close(
            x.grad, _surrogate_grad(x, dy, pn.weight.detach(), denom, var, G, 0.1), atol=1e-12, rtol=0)
        G = G + (g_tilde * z).mean((0, 1))  # over all positions, padding included
        torch.testing.assert_close(pn.ema_gz, G, atol=1e-12, rtol=0)
        if k < w:
            phi = phi * (k - 1) / k + var / k
        phi = 0.9 * phi + 0.1 * var
        pn.weight.grad = None
    assert G.abs().max() > 0  # the correction was exercised


def test_approximate_backward_gradcheck_against_the_surrogate_in_float64():
    """gradcheck the custom Function against the surrogate whose Jacobian is the formula."""
    pn = _pn(warmup_iters=1)
    _perturb(pn)
    with torch.no_grad():
        pn.ema_gz.copy_(torch.linspace(-0.5, 0.5, C, dtype=torch.float64))
        pn.running_phi.copy_(torch.linspace(0.5, 2.0, C, dtype=torch.float64))
    pn.iters.fill_(5)  # past warm-up: forward by psi, backward by the batch statistic
    x = _x(2, 5)
    var = x.pow(2).mean((0, 1))
    phi, G = pn.running_phi.clone(), pn.ema_gz.clone()
    dy = _x(2, 5, seed=7)
    xa = x.clone().requires_grad_()
    pn.train()(xa).backward(dy)
    torch.testing.assert_close(
        xa.grad, _surrogate_grad(x, dy, pn.weight.detach(), phi, var, G, 0.1), atol=1e-12, rtol=0)

    # gradients of gamma and beta are exact: torch's gradcheck passes through the custom Function
    def f(w, b):  # each call restores the state (the forward moves running_phi)
        pn.iters.fill_(5)
        pn.running_phi.copy_(phi)
        return torch.func.functional_call(pn.train(), {"weight": w, "bias": b}, (x,))

    assert torch.autograd.gradcheck(f, (pn.weight.detach().clone().requires_grad_(),
                                        pn.bias.detach().clone().requires_grad_()))


def test_group_scaling_is_differentiated_exactly_under_the_approximate_backward():
    pn = PowerNorm(C, group_num=2).double()
    _perturb(pn)
    x = _x(3, 4).requires_grad_()
    dy = _x(3, 4, seed=2)
    pn.train()(x).backward(dy)
    xr = x.detach().clone().requires_grad_()
    xs = group_scale(xr, 2)
    var = xs.detach().pow(2).mean((0, 1))
    (dy * pn.weight.detach() * xs / torch.sqrt(var + EPS)).sum().backward()  # stop-grad stat
    torch.testing.assert_close(x.grad, xr.grad, atol=1e-12, rtol=0)


def test_paper_backward_first_step_divides_by_previous_psi():
    pn = _pn(version="paper")
    _perturb(pn)
    with torch.no_grad():
        pn.running_phi.copy_(torch.linspace(0.5, 2.0, C, dtype=torch.float64))
    phi = pn.running_phi.clone()
    x = _x(3, 6).requires_grad_()
    dy = _x(3, 6, seed=4)
    pn.train()(x).backward(dy)
    # nu = 0 at the first step; the nu update itself is UNVERIFIED and not asserted
    torch.testing.assert_close(x.grad, pn.weight.detach() * dy / torch.sqrt(phi + EPS))
    assert torch.isfinite(pn.ema_gz).all() and pn.ema_gz.abs().max() > 0


def test_exact_backward_equals_autograd_and_differs_from_the_approximation():
    kw = dict(warmup_iters=100)
    x = _x(3, 6)
    dy = _x(3, 6, seed=4)
    grads = {}
    for backward in ("exact", "approx"):
        pn = _pn(backward=backward, **kw)
        xa = x.clone().requires_grad_()
        pn.train()(xa).backward(dy)
        grads[backward] = xa.grad
    xr = x.clone().requires_grad_()
    (dy * xr / torch.sqrt(xr.pow(2).mean((0, 1)) + EPS)).sum().backward()
    torch.testing.assert_close(grads["exact"], xr.grad, atol=1e-12, rtol=0)
    assert (grads["exact"] - grads["approx"]).abs().max() > 1e-3


def test_pn_v_is_uncentred_batch_norm_with_exact_gradients():
    pv = PowerNormV(C).double()
    _perturb(pv)
    x, mask = _x(3, 6), _mask()
    xa = x.clone().requires_grad_()
    y = pv.train()(xa, mask)
    q = x[mask].pow(2).mean(0)
    torch.testing.assert_close(y, pv.weight * x / torch.sqrt(q + EPS) + pv.bias)
    torch.testing.assert_close(pv.running_phi, 0.9 + 0.1 * q)
    assert torch.autograd.gradcheck(lambda t: pv.train()(t, mask), (xa.detach().requires_grad_(),))
    torch.testing.assert_close(pv.eval()(x), pv.weight * x / torch.sqrt(pv.running_phi + EPS) + pv.bias)


# ---- folding -------------------------------------------------------------------------------

@pytest.mark.parametrize("gn", [0, 2])
def test_eval_pn_folds_into_the_next_linear_layer(gn):
    pn = PowerNorm(C, group_num=gn).double()
    _perturb(pn)
    pn.train()(_x(4, 6))
    lin = torch.nn.Linear(C, 5).double()
    x = _x(3, 2, seed=3)
    folded = fold_into_linear(pn.eval(), lin)
    xs = group_scale(x, gn) if gn else x
    torch.testing.assert_close(lin(pn(x)), folded(xs), atol=1e-12, rtol=0)


@pytest.mark.parametrize("kw", [dict(group_num=2, warmup_iters=2), dict(version="paper")])
def test_fold_gpt_matches_the_eval_model(kw):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=17, seq_len=12, n_layer=2, n_head=2, d_model=C, norm="powernorm",
                    norm_kwargs=kw)
    model = TinyGPT(cfg).double()
    idx = torch.randint(0, 17, (4, 12))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):  # move gains, biases and running statistics away from their inits
        loss = model(idx, idx)[1]
        opt.zero_grad(); loss.backward(); opt.step()
    model.eval()
    folded = fold_gpt(model)
    with torch.no_grad():
        torch.testing.assert_close(folded(idx)[0], model(idx)[0], atol=1e-10, rtol=0)
    assert not any(isinstance(m, PowerNorm) for m in folded.modules())


# ---- in the model --------------------------------------------------------------------------

@pytest.mark.parametrize("name,kw", [("powernorm", dict(group_num=2, warmup_iters=2)),
                                     ("powernorm", dict(version="paper")), ("pn-v", {})])
def test_tinygpt_trains_and_evaluates_and_padding_does_not_leak(name, kw):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=17, seq_len=10, n_layer=2, n_head=2, d_model=C, norm=name,
                    norm_kwargs=kw)
    idx = torch.randint(0, 17, (3, 10))
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[0, 6:] = False; mask[2, 3:] = False
    outs = []
    for fill in (0, 16):
        torch.manual_seed(1)
        model = TinyGPT(cfg).train()
        inp = idx.clone(); inp[~mask] = fill
        outs.append(model(inp, mask=mask)[0][mask])  # real tokens only (padding at the end)
    torch.testing.assert_close(outs[0], outs[1])
    model.eval()
    with torch.no_grad():
        a = model(idx)[0]
        b = model(idx[:1])[0]
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a[:1], b, atol=1e-5, rtol=0)  # eval: no batch dependence


def test_registry_defaults_follow_the_authors_layer():
    pn = create_norm("powernorm", 12)
    assert (pn.version, pn.backward, pn.warmup_iters, pn.group_num) == ("code", "approx", 10000, 1)
    assert (pn.alpha_fwd, pn.alpha_bkw, pn.eps) == (0.9, 0.9, 1e-5)
    assert torch.equal(pn.running_phi, torch.ones(12)) and torch.equal(pn.ema_gz, torch.zeros(12))


# ---- the chapter's runner ------------------------------------------------------------------

def test_padded_lm_batches_pad_at_the_end_and_vary_in_length():
    from replib.experiments.powernorm import padded_lm_batches
    tokens = torch.arange(1000) % 250 + 1
    batches = padded_lm_batches(tokens, 16, 20, 5, torch.Generator().manual_seed(0))
    lengths = set()
    for _ in range(5):
        x, y, mask = next(batches)
        assert x.shape == y.shape == mask.shape == (16, 20)
        n = mask.sum(1)
        lengths.update(n.tolist())
        assert n.min() >= 5 and n.max() <= 20
        assert torch.equal(mask, torch.arange(20)[None] < n[:, None])  # padding only at the end
        assert (x[~mask] == 0).all() and (y[~mask] == -100).all() and (y[mask] > 0).all()
        both = mask[:, 1:]
        assert torch.equal(x[:, 1:][both], y[:, :-1][both])  # y is x shifted by one
    assert len(lengths) > 3
    again = next(padded_lm_batches(tokens, 16, 20, 5, torch.Generator().manual_seed(0)))
    first = next(padded_lm_batches(tokens, 16, 20, 5, torch.Generator().manual_seed(0)))
    assert all(torch.equal(a, b) for a, b in zip(again, first))


def test_batch_stat_tracker_measures_masked_deviation_before_the_update():
    from replib.experiments.powernorm import BatchStatTracker
    bn = create_norm("batchnorm", C).double()
    with torch.no_grad():
        bn.running_mean.fill_(0.5); bn.running_var.fill_(2.0)
    tracker = BatchStatTracker(torch.nn.Sequential(bn))
    x, mask = _x(3, 6), _mask()
    x[~mask] = 1e6
    bn.train()(x, mask)
    real = x[mask]
    mu, var = real.mean(0), real.var(0, unbiased=False)
    full = lambda v: torch.full((C,), v, dtype=torch.float64)  # noqa: E731
    assert tracker.mu[0][0] == pytest.approx(float((mu - full(0.5)).norm() / full(0.5).norm()))
    assert tracker.var[0][0] == pytest.approx(float((var - full(2.0)).norm() / full(2.0).norm()))
    bn.eval()(x)  # evaluation forwards are not tracked
    assert len(tracker.var[0]) == 1
    tracker.remove()
    bn.train()(x, mask)
    assert len(tracker.var[0]) == 1


def test_norm_spec_and_a_tiny_run_are_deterministic():
    from replib.experiments.powernorm import norm_spec, run_lm
    assert norm_spec("PN", n_head=4, warmup=7) == (
        "powernorm", {"version": "code", "group_num": 4, "warmup_iters": 7})
    assert norm_spec("PN (paper)", n_head=4, warmup=7) == ("powernorm", {"version": "paper"})
    assert norm_spec("PN (no GS)", n_head=4, warmup=7)[1]["group_num"] == 0
    with pytest.raises(ReplibError, match="valid"):
        norm_spec("XN", n_head=4, warmup=7)
    tokens = torch.arange(3000) % 97
    val = (tokens[:64].view(4, 16), tokens[1:65].view(4, 16))
    kw = dict(n_layer=1, d_model=8, n_head=2, seq_len=16, min_len=4, batch_size=4, steps=4,
              lr=1e-3, warmup=2, eval_every=2, progress=False)
    a = run_lm("PN", 0, tokens, val, **kw)
    b = run_lm("PN", 0, tokens, val, **kw)
    assert a.val_bpb == b.val_bpb and 0 < a.val_bpb < 10
    assert len(a.history.evals) == 2


def test_sweep_runner_keeps_runs_and_scores_validation_and_test():
    import math

    from replib import lr_sweep
    from replib.experiments.powernorm import sweep_runner
    tokens = torch.arange(3000) % 97
    val = (tokens[:64].view(4, 16), tokens[1:65].view(4, 16))
    test = (tokens[100:164].view(4, 16), tokens[101:165].view(4, 16))
    kw = dict(n_layer=1, d_model=8, n_head=2, seq_len=16, min_len=4, batch_size=4, steps=4,
              warmup=2, eval_every=2, progress=False)
    store = {}
    sweep = lr_sweep(["LN", "BN"], [1e-3, 3e-3], [0], sweep_runner(tokens, val, test, store, **kw),
                     select_on="val", progress=False)
    assert set(store) == {(a, lr, 0) for a in ("LN", "BN") for lr in (1e-3, 3e-3)}
    assert store["BN", 1e-3, 0].stats is not None and store["LN", 1e-3, 0].stats is None  # C1 tracker
    r = sweep.runs["LN"][1e-3][0]
    assert r["val"] == store["LN", 1e-3, 0].val_bpb and math.isfinite(r["test"]) and r["test"] != r["val"]
    assert r["curve"] == store["LN", 1e-3, 0].history.eval_series("bpb")[1] and len(r["curve"]) == 2
    assert sweep.best_lr("LN") in (1e-3, 3e-3)
    assert store["LN", 1e-3, 0].model is None  # the model is not kept
