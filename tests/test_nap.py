"""Normalize-and-Project (replib.optim.nap.NaP) and the plasticity instruments: the spec's reference
checks (no official code exists: the equations are the paper's, as restated in the spec)."""
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from replib import ReplibError
from replib.experiments.continual import PlasticMLP
from replib.nn.instrument import (capture_activations, dormant_fraction, dormant_units, effective_lr,
                                  weight_norms)
from replib.optim.nap import NaP, nap_targets


def block(dtype=torch.float64):
    """Linear (no bias) -> LayerNorm (no affine): a scale-invariant layer."""
    torch.manual_seed(0)
    return nn.Linear(6, 5, bias=False).to(dtype)


def f(w, x, eps=0.0):
    return F.layer_norm(x @ w.t(), (w.shape[0],), eps=eps)


def test_scale_invariance_gradient_orthogonality_and_scaling():
    torch.manual_seed(1)
    w = torch.randn(5, 6, dtype=torch.float64)
    x = torch.randn(16, 6, dtype=torch.float64)
    t = torch.randn(16, 5, dtype=torch.float64)
    for c in (0.1, 3.0, 50.0):
        torch.testing.assert_close(f(c * w, x), f(w, x), rtol=0, atol=1e-12)  # exact without eps
    for c in (3.0, 50.0):  # with eps = 1e-5, to 1e-5 where the pre-activations are not tiny
        torch.testing.assert_close(f(c * w, 3 * x, 1e-5), f(w, 3 * x, 1e-5), rtol=0, atol=1e-5)

    def grad(w):
        w = w.clone().requires_grad_()
        ((f(w, x) - t) ** 2).sum().backward()
        return w.grad
    g = grad(w)
    assert abs(float((g * w).sum())) <= 1e-8 * float(g.norm() * w.norm())
    torch.testing.assert_close(grad(4.0 * w), g / 4.0, rtol=1e-6, atol=1e-10)
    # plain SGD only grows the norm: ||W'||^2 = ||W||^2 + eta^2 ||g||^2
    eta = 0.3
    w2 = w - eta * g
    torch.testing.assert_close(w2.pow(2).sum(), w.pow(2).sum() + eta ** 2 * g.pow(2).sum())


def test_layernorm_without_affine_standardises_rows():
    x = torch.randn(8, 32, dtype=torch.float64) * 3 + 2
    y = F.layer_norm(x, (32,), eps=1e-5)
    torch.testing.assert_close(y.mean(-1), torch.zeros(8, dtype=torch.float64), rtol=0, atol=1e-5)
    torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(8, dtype=torch.float64), rtol=0, atol=1e-5)


@pytest.mark.parametrize("base", ["sgd", "adam"])
def test_projection_keeps_norms_and_the_function(base):
    torch.manual_seed(2)
    model = PlasticMLP(8, 16, 3, 4, "layernorm").double()
    params = list(model.parameters())
    opt0 = torch.optim.SGD(params, lr=0.5) if base == "sgd" else torch.optim.Adam(params, lr=0.05)
    projected, pairs = nap_targets(model)
    assert len(projected) == 3 and len(pairs) == 3
    opt = NaP(opt0, projected, pairs)
    rho = weight_norms(projected)
    rho_gb = weight_norms(pairs)
    assert rho_gb == pytest.approx([4.0] * 3)  # sqrt(d) for gamma = 1, beta = 0 (d = 16)
    x = torch.randn(32, 8, dtype=torch.float64)
    y = torch.randint(0, 4, (32,))
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        assert weight_norms(projected) == pytest.approx(rho, rel=1e-6)
        assert weight_norms(pairs) == pytest.approx(rho_gb, rel=1e-6)
    # projecting the weights alone does not change the function (they feed scale-invariant norms)
    before = model(x)
    with torch.no_grad():
        for (w,) in projected:
            w.mul_(7.0)
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-2)  # the same up to LayerNorm's eps
    opt.project()
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-9)
    assert weight_norms(projected) == pytest.approx(rho, rel=1e-12)  # float64 model: float64 norms


def test_sgd_angular_step_is_eta_grad_over_rho():
    """With NaP and SGD the step on the sphere is eta ||g|| / rho (a constant nominal ELR)."""
    torch.manual_seed(3)
    w = nn.Parameter(torch.randn(5, 6, dtype=torch.float64) * 2)
    x = torch.randn(16, 6, dtype=torch.float64)
    t = torch.randn(16, 5, dtype=torch.float64)
    eta = 1e-3
    opt = NaP(torch.optim.SGD([w], lr=eta), [w])
    rho = float(w.detach().norm())
    for _ in range(5):
        w0 = w.detach().clone()
        opt.zero_grad()
        ((f(w, x) - t) ** 2).sum().backward()
        g = w.grad.norm().item()
        opt.step()
        angle = math.acos(float((w0 * w.detach()).sum() / (w0.norm() * w.detach().norm())))
        assert angle == pytest.approx(math.atan(eta * g / rho), rel=1e-9)
        assert angle == pytest.approx(eta * g / rho, rel=1e-3)


def test_per_row_projection_and_every():
    torch.manual_seed(4)
    w = nn.Parameter(torch.randn(4, 3))
    b = nn.Parameter(torch.randn(4))
    rows = (w.detach().pow(2).sum(1) + b.detach() ** 2).sqrt()
    opt = NaP(torch.optim.SGD([w, b], lr=0.1), [(w, b)], per_row=True, every=2)
    for k in range(1, 5):
        opt.zero_grad()
        (w.sum() * 3 + b.sum()).backward()
        opt.step()
        now = (w.detach().pow(2).sum(1) + b.detach() ** 2).sqrt()
        assert torch.allclose(now, rows, rtol=1e-6) == (k % 2 == 0)


def test_wrapper_is_an_optimizer_with_closure_schedulers_and_state_round_trip():
    torch.manual_seed(5)
    model = PlasticMLP(8, 16, 2, 4, "layernorm")
    x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
    opt = NaP(torch.optim.Adam(model.parameters(), lr=1e-2), *nap_targets(model))
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss
    loss = opt.step(closure)
    assert torch.is_tensor(loss)
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-3)
    buf = io.BytesIO(); torch.save(opt.state_dict(), buf)
    twin = PlasticMLP(8, 16, 2, 4, "layernorm")
    twin.load_state_dict(model.state_dict())
    with torch.no_grad():  # a twin whose initial norms differ: the loaded rho must win
        twin.hidden[0][0].weight.mul_(3.0)
    opt2 = NaP(torch.optim.Adam(twin.parameters(), lr=1e-2), *nap_targets(twin))
    opt2.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    twin.load_state_dict(model.state_dict())
    for o, m in ((opt, model), (opt2, twin)):
        o.zero_grad()
        F.cross_entropy(m(x), y).backward()
        o.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q)
    assert opt2.steps == 2 and "NaP(Adam" in repr(opt2)


def test_errors():
    w = nn.Parameter(torch.randn(3, 3))
    other = nn.Parameter(torch.randn(3, 3))
    with pytest.raises(ReplibError, match="does not update"):
        NaP(torch.optim.SGD([w], lr=0.1), [other])
    with pytest.raises(ReplibError, match="initial norm is zero"):
        z = nn.Parameter(torch.zeros(2, 2))
        NaP(torch.optim.SGD([z], lr=0.1), [z])
    with pytest.raises(ReplibError, match="listed twice"):
        NaP(torch.optim.SGD([w], lr=0.1), [w, w])
    with pytest.raises(ReplibError, match="torch.optim.Optimizer"):
        NaP(object(), [w])
    with pytest.raises(ReplibError, match="no linear/conv layer followed by a normalisation"):
        nap_targets(PlasticMLP(4, 8, 2, 2, "identity"))
    opt = NaP(torch.optim.SGD([w], lr=0.1), [w])
    with pytest.raises(ReplibError, match="not a NaP state dict"):
        opt.load_state_dict(torch.optim.SGD([w], lr=0.1).state_dict())


def test_effective_lr_and_dormant_units():
    assert effective_lr(0.1, [2.0, 4.0], "sgd") == pytest.approx([0.025, 0.1 / 16])
    assert effective_lr(0.1, [2.0], "adam") == pytest.approx([0.05])
    with pytest.raises(ReplibError, match="unknown optimizer kind"):
        effective_lr(0.1, [1.0], "lion")
    acts = [torch.tensor([[0.0, 1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 4.0]]), torch.tensor([[0.0, 3.0], [0.0, 1.0]])]
    flags = dormant_units(acts)
    assert flags[0].tolist() == [True, False, True, False] and flags[1].tolist() == [True, False]
    assert dormant_fraction(acts) == pytest.approx(3 / 6)
    # ReDo's tau-dormancy: unit 1 of layer 0 scores 0.5 / 0.875 = 0.57 of its layer's mean
    assert dormant_fraction(acts, tau=0.6) == pytest.approx(4 / 6)
    assert dormant_fraction(acts, tau=0.5) == pytest.approx(3 / 6)
    model = PlasticMLP(4, 8, 2, 2, "identity")
    with torch.no_grad():
        model.hidden[0][0].bias[:3] = -100.0  # three dead units in layer 1
    with capture_activations(model) as captured:
        model(torch.rand(64, 4))
    assert len(captured) == 2 and int(dormant_units(captured)[0].sum()) >= 3
