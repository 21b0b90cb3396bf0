"""Unified Normalization (chapter 09): the spec's reference checks, the custom backward against an
independent step-by-step re-implementation of the official UN2dFunction, outlier filtration,
folding into the next linear layer, train/eval and determinism."""
import io
import math

import pytest
import torch

from replib import ReplibError
from replib.nn import GPTConfig, TinyGPT, create_norm
from replib.nn.unified import UnifiedNorm, fold_into_linear, fold_unified, skip_count, un_layers
from replib.nn.vit import TinyViT

C = 5
EPS, M = 1e-5, 0.9


def _x(*shape, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, C, generator=g, dtype=torch.float64) * 1.5 + 0.3) * scale


def _un(**kw):
    un = UnifiedNorm(C, **kw).double()
    with torch.no_grad():
        un.weight.copy_(torch.linspace(0.5, 1.5, C, dtype=torch.float64))
        un.bias.copy_(torch.linspace(-0.2, 0.3, C, dtype=torch.float64))
    return un


class Reference:
    """The official UN2dFunction + UN1d, re-written procedurally for (B, N, C) inputs in float64,
    with no autograd: forward returns y and what backward needs; backward maps dL/dy to grads."""

    def __init__(self, weight, bias, W=4, warmup=4000, filt=False, comp=1000):
        self.w, self.b = weight.clone(), bias.clone()
        self.W, self.warmup, self.filt, self.comp = W, warmup, filt, comp
        self.rv = torch.ones(C, dtype=torch.float64)
        self.ema = torch.zeros(C, dtype=torch.float64)
        self.bx = torch.zeros(W, C, dtype=torch.float64)
        self.bg = torch.zeros(W, C, dtype=torch.float64)
        self.t, self.skips = 0, 0

    def forward(self, x):
        self.t += 1
        t, W = self.t, self.W
        skip = W == 1
        x2 = (x.reshape(-1, C) ** 2).mean(0)
        rec = torch.var(torch.sqrt(self.bx))
        self.bx[t % W] = x2
        if t >= self.warmup and self.filt:
            am = self.bx.mean(0)
            gm = torch.exp(torch.log(self.bx).mean(0))
            if ((am - gm) > rec * W).sum() > 0:
                self.bx[t % W] = self.rv
                skip = True
                self.skips += 1
        if t <= W or t < self.warmup or skip:
            var = x2
        else:
            var = torch.exp(torch.log(self.bx).mean(0))
        r = (var + EPS).sqrt() / (self.rv + EPS).sqrt()
        r = r.clamp(1, 1) if (t <= max(self.comp, self.warmup) or skip) else r.clamp(0.2, 5)
        z = x / (var + EPS).sqrt()
        self.rv = M * self.rv + (1 - M) * var
        self.saved = (z, var, r, skip, t)
        return self.w * z + self.b

    def backward(self, gy):
        z, var, r, skip, t = self.saved
        g = gy * self.w * r
        gz = (g * z).reshape(-1, C).mean(0)
        self.bg[t % self.W] = self.ema if skip else gz
        mean_gz = gz if (t <= self.W or t < self.warmup or skip) else self.bg.mean(0)
        self.ema = self.ema * M + (1 - M) * mean_gz
        approx = g - mean_gz * z if skip else g - self.ema * z
        gx = approx / torch.sqrt(var + EPS)
        return gx, (gy * r * z).reshape(-1, C).sum(0), gy.reshape(-1, C).sum(0)


def _run_both(un, ref, batches):
    """Feed the same batches (and the same upstream gradients) to the module and the reference."""
    for i, x in enumerate(batches):
        xg = x.clone().requires_grad_()
        y = un.train()(xg)
        y_ref = ref.forward(x)
        torch.testing.assert_close(y.detach(), y_ref, rtol=1e-12, atol=1e-12, msg=f"y at step {i}")
        gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(100 + i),
                         dtype=torch.float64)
        un.weight.grad = un.bias.grad = None
        y.backward(gy)
        gx, gw, gb = ref.backward(gy)
        torch.testing.assert_close(xg.grad, gx, rtol=1e-10, atol=1e-12, msg=f"dx at step {i}")
        torch.testing.assert_close(un.weight.grad, gw, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(un.bias.grad, gb, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(un.running_var, ref.rv, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(un.ema_gz, ref.ema, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(un.buffer_x2, ref.bx, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(un.buffer_gz, ref.bg, rtol=1e-10, atol=1e-12)
        assert int(un.skip_counter) == ref.skips and un.step == ref.t


@pytest.mark.parametrize("window,filt", [(4, False), (4, True), (3, True), (1, False), (1, True)])
def test_custom_backward_matches_the_official_algorithm_step_by_step(window, filt):
    """Every phase: t <= W, warm-up, geometric mean + window-mean gradient, compensation r != 1
    (gate passed at t = 7), and for filtration an outlier batch (x100) at step 10."""
    un = _un(window=window, warmup_iters=5, compensation_after=7, outlier_filtration=filt)
    ref = Reference(un.weight.detach(), un.bias.detach(), W=window, warmup=5, filt=filt, comp=7)
    batches = [_x(3, 4, seed=s, scale=1 + 0.3 * math.sin(s)) for s in range(14)]
    batches[10] = batches[10] * 100
    _run_both(un, ref, batches)
    if filt and window > 1:
        assert ref.skips >= 1  # the outlier was filtered (else this test checks less than it says)
    if window == 1:  # one slot: the arithmetic and geometric means are equal, nothing is flagged
        assert ref.skips == 0 == int(un.skip_counter)


def test_t1_statistic_and_output_mean_square():
    un = _un()
    with torch.no_grad():
        un.weight.fill_(1.0); un.bias.zero_()
    x = _x(4, 6)
    y = un(x)
    s2 = x.reshape(-1, C).pow(2).mean(0)
    torch.testing.assert_close(un.buffer_x2[1], s2)
    torch.testing.assert_close(y.reshape(-1, C).pow(2).mean(0), s2 / (s2 + EPS))
    torch.testing.assert_close(y, x / torch.sqrt(s2 + EPS))


def test_running_var_after_k_constant_steps():
    un = _un()
    x = _x(8, 3)
    s2 = x.reshape(-1, C).pow(2).mean(0)
    for k in range(1, 8):
        un(x)
        torch.testing.assert_close(un.running_var, s2 + (1 - s2) * M ** k)


def test_backward_at_t1_formula():
    un = _un()
    x = _x(3, 7).requires_grad_()
    gy = _x(3, 7, seed=5)
    un(x).backward(gy)
    s2 = x.detach().reshape(-1, C).pow(2).mean(0)
    z = x.detach() / torch.sqrt(s2 + EPS)
    g = gy * un.weight.detach()
    gz1 = (g * z).reshape(-1, C).mean(0)
    torch.testing.assert_close(un.ema_gz, (1 - M) * gz1)
    torch.testing.assert_close(x.grad, (g - (1 - M) * gz1 * z) / torch.sqrt(s2 + EPS))
    torch.testing.assert_close(un.weight.grad, (gy * z).reshape(-1, C).sum(0))


def test_geometric_mean_branch():
    """At t = 5 > W = 4 after the warm-up, v = (abcd)^(1/4) of the window's four entries."""
    un = _un(window=4, warmup_iters=0)
    xs = [_x(2, 3, seed=s, scale=s + 1.0) for s in range(5)]
    for x in xs[:4]:
        un(x)
    rv_before = un.running_var.clone()
    y = un(xs[4])
    a, b, c, d = (x.reshape(-1, C).pow(2).mean(0) for x in xs[1:])
    gm = (a * b * c * d) ** 0.25
    torch.testing.assert_close(y, un.weight * xs[4] / torch.sqrt(gm + EPS) + un.bias)
    torch.testing.assert_close(un.running_var, M * rv_before + (1 - M) * gm)


def test_ratio_gate_default_and_clamp():
    un = _un(warmup_iters=10)  # gate max(1000, 10) = 1000
    var = torch.full((C,), 100.0, dtype=torch.float64)  # running_var is 1: raw r = 10
    assert torch.equal(un._ratio(1000, var, False), torch.ones(C, dtype=torch.float64))
    assert torch.equal(un._ratio(1001, var, True), torch.ones(C, dtype=torch.float64))
    torch.testing.assert_close(un._ratio(1001, var, False), torch.full_like(var, 5.0))
    torch.testing.assert_close(un._ratio(1001, var / 1e6, False), torch.full_like(var, 0.2))
    mid = torch.full((C,), 3.0, dtype=torch.float64)
    torch.testing.assert_close(un._ratio(1001, mid, False), torch.sqrt((mid + EPS) / (1 + EPS)))
    un2 = _un(warmup_iters=2000)  # the warm-up wins when it is longer
    assert torch.equal(un2._ratio(2000, var, False), torch.ones(C, dtype=torch.float64))
    assert not torch.equal(un2._ratio(2001, var, False), torch.ones(C, dtype=torch.float64))


def test_default_gate_at_t_1000_in_real_steps():
    """Default compensation gate (1000) and warm-up 0: r = 1 up to t = 1000, clamped r after;
    steps t = 996..1003 checked against the reference (whose r is asserted to leave 1)."""
    un = _un(window=4, warmup_iters=0)
    with torch.no_grad():
        un.iters.fill_(995); un._t = None  # the next training forward is t = 996
    un.running_var.fill_(0.05)  # far from the batches' second moments: r != 1 once allowed
    ref = Reference(un.weight.detach(), un.bias.detach(), W=4, warmup=0, comp=1000)
    ref.t, ref.rv = 995, un.running_var.clone()
    rs = []
    for s in range(8):
        _run_both(un, ref, [_x(3, 3, seed=s)])
        rs.append(ref.saved[2])
    assert all(torch.equal(r, torch.ones(C, dtype=torch.float64)) for r in rs[:5])  # t <= 1000
    assert not torch.equal(rs[5], torch.ones(C, dtype=torch.float64))  # t = 1001
    assert all(((r >= 0.2) & (r <= 5)).all() for r in rs[5:])


def test_outlier_filtration_skips_the_outlier_batch():
    un = _un(window=4, warmup_iters=6, outlier_filtration=True)
    for s in range(8):
        un(_x(4, 4, seed=s))
    assert int(un.skip_counter) == 0  # stable batches are not outliers
    rv = un.running_var.clone()
    x = _x(4, 4, seed=99, scale=50.0)
    y = un(x)
    assert int(un.skip_counter) == 1
    torch.testing.assert_close(un.buffer_x2[9 % 4], rv)  # the slot holds the running statistic
    s2 = x.reshape(-1, C).pow(2).mean(0)  # and the skipped batch uses its own statistic
    torch.testing.assert_close(y, un.weight * x / torch.sqrt(s2 + EPS) + un.bias)


def test_filtration_off_never_skips_even_with_outliers():
    un = _un(window=4, warmup_iters=2, outlier_filtration=False)
    for s in range(10):
        un(_x(4, 4, seed=s, scale=100.0 if s % 3 == 0 else 1.0))
    assert int(un.skip_counter) == 0


def test_before_warmup_the_filter_is_idle():
    un = _un(window=4, warmup_iters=100, outlier_filtration=True)
    for s in range(10):
        un(_x(4, 4, seed=s, scale=100.0 if s % 3 == 0 else 1.0))
    assert int(un.skip_counter) == 0


def test_window_one_backward_is_the_exact_current_batch_gradient():
    """W = 1: every step is 'skipped', r = 1 and the projection uses this batch's gz: the exact
    gradient of x / sqrt(mean x^2 + eps) (checked against the autograd version)."""
    a, b = _un(window=1, warmup_iters=0), _un(window=1, warmup_iters=0, exact_grad=True)
    for s in range(3):
        x1 = _x(3, 4, seed=s).requires_grad_()
        x2 = x1.detach().clone().requires_grad_()
        gy = _x(3, 4, seed=10 + s)
        a.weight.grad = b.weight.grad = None
        a(x1).backward(gy)
        b(x2).backward(gy)
        torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(a.weight.grad, b.weight.grad, rtol=1e-10, atol=1e-12)


def test_default_backward_is_an_approximation():
    """Early on UN subtracts only (1-m) of the projection: not the exact gradient."""
    a, b = _un(), _un(exact_grad=True)
    x1 = _x(3, 4).requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    gy = _x(3, 4, seed=3)
    a(x1).backward(gy)
    b(x2).backward(gy)
    assert (x1.grad - x2.grad).abs().max() > 1e-3


def test_exact_grad_gradcheck_in_the_geometric_mean_branch():
    un = _un(window=3, warmup_iters=0)
    un.exact_grad = True
    for s in range(4):
        un(_x(2, 3, seed=s))
    un.eval()
    # freeze the state: gradcheck calls the forward many times, so rebuild it each call
    state = {k: v.clone() for k, v in un.named_buffers()}

    def f(x):
        with torch.no_grad():
            for k, v in un.named_buffers():
                v.copy_(state[k])
        un._t = None
        return un.train()(x)

    assert torch.autograd.gradcheck(f, (_x(2, 3, seed=9).requires_grad_(),))


def test_eval_is_the_affine_map_and_changes_no_state():
    un = _un(window=4, warmup_iters=2)
    for s in range(6):
        un(_x(3, 3, seed=s))
    before = {k: v.clone() for k, v in un.state_dict().items()}
    x = _x(4, 2, seed=7)
    y = un.eval()(x)
    torch.testing.assert_close(y, un.weight * (x / torch.sqrt(un.running_var + EPS)) + un.bias,
                               rtol=0, atol=0)
    for k, v in un.state_dict().items():
        assert torch.equal(v, before[k]), k
    torch.testing.assert_close(un(x[:1]), y[:1], rtol=0, atol=0)  # per example in eval


def test_train_mode_uses_batch_statistics():
    un = _un()
    x = _x(4, 2)
    y_eval = un.eval()(x)  # running_var = 1
    y_train = un.train()(x)
    assert not torch.allclose(y_eval, y_train)
    assert un.step == 1


def test_mask_keeps_padding_out_of_the_statistics():
    un1, un2 = _un(), _un()
    x = _x(2, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    x2 = x.clone(); x2[~mask] = 1e6
    y1, y2 = un1(x, mask), un2(x2, mask)
    torch.testing.assert_close(y1[mask], y2[mask])
    torch.testing.assert_close(un1.buffer_x2, un2.buffer_x2)
    with pytest.raises(ReplibError, match="mask shape"):
        un1(x, mask[:, :4])


def test_state_dict_restores_the_step_counter():
    a = _un(window=4, warmup_iters=2)
    for s in range(5):
        a(_x(2, 2, seed=s))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    b = _un(window=4, warmup_iters=2)
    b(_x(2, 2))  # its own counter moves first
    b.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    assert b.step == 5
    x = _x(2, 2, seed=50)
    torch.testing.assert_close(a(x), b(x))
    assert a.step == b.step == 6
    b.reset_iters()
    assert b.step == 0 and int(b.iters) == 0


def test_fold_into_linear_float64():
    un = _un(window=4, warmup_iters=1)
    for s in range(6):
        un(_x(3, 3, seed=s))
    un.eval()
    for bias in (True, False):
        lin = torch.nn.Linear(C, 7, bias=bias).double()
        folded = fold_into_linear(un, lin)
        x = _x(4, 3, seed=11)
        torch.testing.assert_close(folded(x), lin(un(x)), rtol=1e-13, atol=1e-13)
    with pytest.raises(ReplibError, match="only UnifiedNorm"):
        fold_into_linear(create_norm("layernorm", C), lin)


def _trained(model, batch_fn, steps=6):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for i in range(steps):
        loss = batch_fn(model, i)
        opt.zero_grad(); loss.backward(); opt.step()
    return model.eval()


def test_fold_unified_tinygpt_equals_unfolded_in_eval_float64():
    torch.manual_seed(0)
    kw = dict(window=4, warmup_iters=2, compensation_after=3)
    model = TinyGPT(GPTConfig(n_layer=2, d_model=16, n_head=2, seq_len=8, norm="unified",
                              norm_kwargs=kw)).double()
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 256, (6, 4, 8), generator=g)
    _trained(model, lambda m, i: m(idx[i], idx[i])[1])
    assert all(u.step == 6 for u in un_layers(model))
    folded = fold_unified(model)
    assert not un_layers(folded) and len(un_layers(model)) == 5
    test = torch.randint(0, 256, (3, 8), generator=g)
    torch.testing.assert_close(folded(test)[0], model(test)[0], rtol=1e-12, atol=1e-12)


def test_fold_unified_tinyvit_and_refuses_other_placements():
    torch.manual_seed(0)
    vit = TinyViT(d_model=16, depth=2, n_head=2, norm="unified",
                  norm_kwargs=dict(warmup_iters=1)).double()
    x = torch.randn(8, 64, dtype=torch.float64)
    y = torch.arange(8) % 10
    _trained(vit, lambda m, i: torch.nn.functional.cross_entropy(m(x), y))
    torch.testing.assert_close(fold_unified(vit)(x), vit(x), rtol=1e-12, atol=1e-12)
    post = TinyGPT(GPTConfig(n_layer=1, d_model=8, n_head=2, seq_len=4, norm="unified",
                             placement="post"))
    with pytest.raises(ReplibError, match="Pre-norm"):
        fold_unified(post)
    with pytest.raises(ReplibError, match="not a UnifiedNorm"):
        fold_unified(TinyViT(d_model=16, depth=1, n_head=2))


def test_window_one_with_the_filter_on_counts_no_skips():
    """The official code sets ``skip = True`` for a one-slot window (current-batch statistic, r = 1)
    but increments ``skip_counter`` only when the outlier test fires, and with one slot the
    arithmetic and geometric means are equal: even a x100 batch after the warm-up is not counted,
    and the layer still normalises by the current batch's statistic."""
    un = _un(window=1, warmup_iters=2, compensation_after=2, outlier_filtration=True)
    for s in range(12):
        x = _x(4, 4, seed=s, scale=100.0 if s in (5, 9) else 1.0)
        y = un(x)
        s2 = x.reshape(-1, C).pow(2).mean(0)
        torch.testing.assert_close(y, un.weight * x / torch.sqrt(s2 + EPS) + un.bias)
    assert int(un.skip_counter) == 0
    vit = TinyViT(d_model=8, depth=1, n_head=2, norm="unified",
                  norm_kwargs=dict(outlier_filtration=True, warmup_iters=2, window=1))
    for s in range(4):
        vit.train()(torch.randn(4, 64, generator=torch.Generator().manual_seed(s)))
    assert skip_count(vit) == 0


def test_skip_count_sums_layers():
    vit = TinyViT(d_model=8, depth=1, n_head=2, norm="unified",
                  norm_kwargs=dict(outlier_filtration=True, warmup_iters=0, window=2))
    vit.train()(torch.randn(4, 64))  # t = 1 after no warm-up: the zero-filled slot is an outlier
    per_layer = [int(m.skip_counter) for m in un_layers(vit)]
    assert len(per_layer) == 3 and skip_count(vit) == sum(per_layer) == 3


def test_same_seed_same_training_trajectory():
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = TinyGPT(GPTConfig(n_layer=1, d_model=16, n_head=2, seq_len=8, norm="unified",
                                  norm_kwargs=dict(warmup_iters=2, compensation_after=2)))
        idx = torch.randint(0, 256, (5, 2, 8))
        _trained(model, lambda m, i: m(idx[i], idx[i])[1], steps=5)
        outs.append(model(idx[0])[0])
    assert torch.equal(*outs)


def test_windows_must_be_positive():
    with pytest.raises(ReplibError, match="windows"):
        UnifiedNorm(C, window=0)
    un = UnifiedNorm(C, window=(3, 2))
    assert un.buffer_x2.shape == (3, C) and un.buffer_gz.shape == (2, C)


# -- the chapter's experiment helpers (replib.experiments.unified) ----------------------------------

def _decide(rule, **metrics):
    from replib.claims import Stat
    out = rule({k: Stat.of(v) for k, v in metrics.items()})
    return out[0] if isinstance(out, tuple) else out


def test_on_par_rule_known_answers():
    from replib.claims import Verdict
    from replib.experiments.unified import on_par_rule
    rule = on_par_rule("UN", "LN", "BN", tol=0.02, lower_is_better=True, unit="bpb")
    ln = [3.40, 3.45, 3.42, 3.47, 3.41]
    bn = [x + 0.1 for x in ln]
    near = [x + d for x, d in zip(ln, [0.001, -0.002, 0.0, 0.002, -0.001])]
    assert _decide(rule, UN=near, LN=ln, BN=bn) is Verdict.REPLICATED
    # on par with LN but not better than BN: only the second tier
    assert _decide(rule, UN=near, LN=ln, BN=[x - 0.1 for x in ln]) is Verdict.PARTIAL
    # 0.03 worse than LN in every seed: within twice the tolerance only
    assert _decide(rule, UN=[x + 0.03 + e for x, e in zip(ln, [0, 1e-3, -1e-3, 0, 5e-4])], LN=ln,
                   BN=bn) is Verdict.PARTIAL
    # far worse than LN in every seed: not replicated
    assert _decide(rule, UN=[x + 0.5 for x in ln], LN=ln, BN=bn) is Verdict.NOT_REPLICATED
    # noise around +0.03 with a wide spread: inconclusive
    assert _decide(rule, UN=[x + d for x, d in zip(ln, [0.2, -0.15, 0.1, -0.05, 0.0])], LN=ln,
                   BN=bn) is Verdict.INCONCLUSIVE
    # higher is better (accuracy): signs flip
    acc = on_par_rule("UN", "LN", "BN", tol=0.01, lower_is_better=False, unit="acc")
    la = [0.90, 0.91, 0.92]
    assert _decide(acc, UN=[0.901, 0.909, 0.92], LN=la, BN=[0.8, 0.8, 0.8]) is Verdict.REPLICATED
    assert _decide(acc, UN=[0.5, 0.5, 0.51], LN=la, BN=[0.8, 0.8, 0.8]) is Verdict.NOT_REPLICATED


def test_collapse_rule_known_answers():
    from replib.claims import Verdict
    from replib.experiments.unified import collapse_rule
    rule = collapse_rule("on", "off", "BN")
    assert _decide(rule, on=[0, 0, 0], off=[1, 0, 0], BN=[0, 0, 0]) is Verdict.REPLICATED
    assert _decide(rule, on=[0, 0, 0], off=[0, 0, 0], BN=[0, 0, 0]) is Verdict.INCONCLUSIVE
    assert _decide(rule, on=[1, 0, 0], off=[1, 1, 0], BN=[0, 0, 0]) is Verdict.NOT_REPLICATED


def test_lm_splits_validation_and_test_are_disjoint_halves():
    from replib.experiments.unified import lm_splits
    text = "".join(chr(97 + (i * 7) % 26) for i in range(20000))
    s = lm_splits(text, seq_len=16, windows=4)
    held = torch.tensor(list(text[18000:].encode()))
    assert torch.equal(s.data.val_x[0], held[:16]) and torch.equal(s.test_x[0], held[1000:1016])
    assert len(s.data.train) == 18000 and s.unigram_bpb > 0


def test_digits_splits_are_stratified_and_disjoint():
    from replib.experiments.unified import digits_split, digits_splits
    d = digits_splits(seed=0)
    old = digits_split(seed=0)
    assert len(d.y_val) + len(d.split.y_train) == len(old.y_train) == 1437
    assert len(d.split.y_test) == 360 and len(d.y_val) == 288
    assert torch.bincount(d.y_val).min() >= 25  # every class in the validation set
    torch.testing.assert_close(d.split.x_train.mean(0), torch.zeros(64), atol=1e-5, rtol=0)


def test_trials_return_what_lr_sweep_needs():
    from replib.experiments.unified import digits_splits, lm_splits, lm_trial, un_kwargs, vit_trial
    text = "".join(chr(97 + (i * 7) % 26) for i in range(20000))
    s = lm_splits(text, seq_len=16, windows=4)
    r = lm_trial("unified", 3e-3, 0, s, norm_kwargs=un_kwargs(6, window=1), n_layer=1, d_model=16,
                 n_head=2, batch_size=4, steps=6, log_every=3)
    assert {"val", "test", "curve", "skips"} <= set(r) and math.isfinite(r["test"]) and r["skips"] == 0
    assert len(r["curve"]) == 2
    v = vit_trial("layernorm", 1e-3, 0, digits_splits(seed=0), d_model=16, n_head=2, depth=1,
                  batch_size=32, steps=4, eval_every=2)
    assert {"val", "val_acc", "test", "curve"} <= set(v) and len(v["curve"]) == 2
    assert 0.0 <= v["test"] <= 1.0 and math.isfinite(v["val"])
