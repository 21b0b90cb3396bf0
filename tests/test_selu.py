"""Self-normalizing networks (chapter 16): SELU, alpha dropout, the moment map, the CV runner."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from replib.experiments.tabular import average_ranks, cv_splits
from replib.nn import MLP
from replib.nn.selu import (
    ALPHA_01,
    ALPHA_PRIME,
    LAMBDA_01,
    AlphaDropout,
    alpha_dropout,
    alpha_dropout_params,
    fixed_point,
    iterate_moment_map,
    moment_map,
    moment_map_jacobian,
    moment_map_quadrature,
    propagate_moments,
    selu,
    spectral_radius,
)

D64 = torch.float64


def test_selu_reference_values():
    x = torch.tensor([0.0, 1.0, -1.0, -1000.0], dtype=D64)
    y = selu(x)
    assert y[0] == 0.0
    assert y[1].item() == pytest.approx(1.0507009873554805, abs=1e-15)
    assert y[2].item() == pytest.approx(-1.1113307378125625, abs=1e-15)
    assert y[3].item() == pytest.approx(-1.7580993408473766, abs=1e-15)
    assert ALPHA_PRIME == pytest.approx(-1.7580993408473766, abs=1e-15)
    assert (ALPHA_01, LAMBDA_01) == (1.6732632423543772, 1.0507009873554805)


def test_selu_matches_torch_float64():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10_000, generator=g, dtype=D64) * 4
    assert torch.allclose(selu(x), F.selu(x), atol=1e-7, rtol=0)
    assert torch.allclose(selu(x), torch.nn.SELU()(x), atol=1e-7, rtol=0)


def test_selu_gradcheck():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, generator=g, dtype=D64)
    x = torch.where(x.abs() < 1e-3, x + 0.01, x).requires_grad_()  # keep away from the kink
    assert torch.autograd.gradcheck(selu, (x,))


def test_fixed_point_by_quadrature():
    # E[selu(z)] = 0 and E[selu(z)^2] = 1 for z ~ N(0, 1): this is what defines alpha, lambda
    mean, var = moment_map_quadrature(0.0, 1.0)
    assert abs(mean) < 1e-6 and abs(var - 1.0) < 1e-6
    m, v = moment_map(0.0, 1.0)
    assert abs(float(m)) < 1e-12 and abs(float(v) - 1.0) < 1e-12


def test_wrong_constants_break_the_fixed_point():
    mean, var = moment_map_quadrature(0.0, 1.0, alpha=1.0, scale=1.0)  # plain ELU
    assert abs(mean) > 0.05 and abs(var - 1.0) > 0.1


@pytest.mark.parametrize("mu,nu,omega,tau", [(0.5, 2.0, 0.0, 1.0), (0.1, 1.5, 0.1, 0.8),
                                             (-0.1, 0.8, -0.1, 1.25), (1.0, 5.0, 0.3, 1.1)])
def test_closed_form_equals_quadrature(mu, nu, omega, tau):
    m, v = moment_map(mu, nu, omega, tau)
    mq, vq = moment_map_quadrature(mu, nu, omega, tau)
    assert float(m) == pytest.approx(mq, abs=1e-10)
    assert float(v) == pytest.approx(vq, abs=1e-10)


def test_fixed_point_is_attracting():
    J = moment_map_jacobian(0.0, 1.0)
    assert spectral_radius(J) < 1.0
    # Jacobian from autograd matches central finite differences of the quadrature map
    h = 1e-5
    fd = np.array([[(moment_map_quadrature(0 + h * (j == 0), 1 + h * (j == 1))[i]
                     - moment_map_quadrature(0 - h * (j == 0), 1 - h * (j == 1))[i]) / (2 * h)
                    for j in range(2)] for i in range(2)])
    assert np.allclose(J.numpy(), fd, atol=1e-6)
    # Theorem 1 (omega in [-0.1, 0.1], tau in [0.95, 1.1]): at the corners the fixed point lies in
    # mu in [-0.1, 0.1], nu in [0.8, 1.5] and attracts (spectral radius < 1)
    for omega in (-0.1, 0.1):
        for tau in (0.95, 1.1):
            mu, nu = fixed_point(omega, tau)
            assert abs(mu) < 0.1 and 0.8 < nu < 1.5
            assert spectral_radius(moment_map_jacobian(mu, nu, omega, tau)) < 1.0
        for tau in (0.8, 1.25):  # wider tau: still an attracting fixed point, but nu leaves [0.8, 1.5]
            mu, nu = fixed_point(omega, tau)
            assert spectral_radius(moment_map_jacobian(mu, nu, omega, tau)) < 1.0
    assert fixed_point() == pytest.approx((0.0, 1.0), abs=1e-10)


@pytest.mark.parametrize("mu0,nu0", [(0.5, 2.0), (0.5, 0.3), (-0.1, 3.0)])
def test_iterated_map_converges(mu0, nu0):
    path = iterate_moment_map(mu0, nu0, 60)
    assert abs(path.mu[-1]) < 1e-6 and abs(path.nu[-1] - 1) < 1e-6


def test_alpha_dropout_constants():
    a, b = alpha_dropout_params(0.95)
    assert (a, b) == pytest.approx((0.954844476, 0.083935572), abs=1e-8)
    a, b = alpha_dropout_params(0.90)
    assert (a, b) == pytest.approx((0.921284516, 0.161970970), abs=1e-8)
    assert alpha_dropout_params(1.0) == pytest.approx((1.0, 0.0))


@pytest.mark.parametrize("rate", [0.05, 0.10])
def test_alpha_dropout_keeps_zero_mean_unit_variance(rate):
    g = torch.Generator().manual_seed(2)
    x = selu(torch.randn(1_000_000, generator=g, dtype=D64))
    out = alpha_dropout(x, rate, generator=g)
    assert abs(out.mean().item()) < 5e-3 and abs(out.var().item() - 1) < 5e-3
    torch.manual_seed(3)
    ref = torch.nn.AlphaDropout(rate).train()(x)
    assert abs(out.mean().item() - ref.mean().item()) < 5e-3
    assert abs(out.var().item() - ref.var().item()) < 5e-3
    for y in (out, ref):  # the fraction of units set to the dropped value a alpha' + b
        dropped = torch.isclose(y, torch.full_like(y, a_drop(rate)), atol=1e-12, rtol=0)
        assert abs(dropped.double().mean().item() - rate) < 2e-3


def a_drop(rate):
    a, b = alpha_dropout_params(1 - rate)
    return a * ALPHA_PRIME + b  # the value every dropped unit takes


def test_alpha_dropout_equals_torch_given_its_mask():
    torch.manual_seed(4)
    x = torch.randn(64, 300, dtype=D64)
    ref = torch.nn.AlphaDropout(0.1).train()(x)
    mask = ~torch.isclose(ref, torch.full_like(ref, a_drop(0.1)), atol=1e-12, rtol=0)
    assert 0.05 < 1 - mask.double().mean() < 0.15
    mine = AlphaDropout(0.1).train()(x, mask=mask)
    assert torch.allclose(mine, ref, atol=1e-12, rtol=0)


def test_alpha_dropout_eval_identity_and_gradcheck():
    x = torch.randn(8, 5, dtype=D64, requires_grad=True)
    layer = AlphaDropout(0.1)
    assert torch.equal(layer.eval()(x), x)
    layer.train()
    mask = torch.bernoulli(torch.full((8, 5), 0.9, dtype=D64), generator=torch.Generator().manual_seed(0))
    assert torch.autograd.gradcheck(lambda t: layer(t, mask=mask), (x,))
    # the gradient is a * mask: dropped units pass nothing back
    layer(x, mask=mask).sum().backward()
    assert torch.allclose(x.grad, alpha_dropout_params(0.9)[0] * mask)


def test_lecun_init_variance():
    torch.manual_seed(5)
    m = MLP(400, 400, 2, 3, activation="selu", init="lecun")
    w = m.layers[1]["linear"].weight.detach().double()
    assert w.var().item() * 400 == pytest.approx(1.0, rel=0.02)
    tau = (w ** 2).sum(1)  # per unit: tau ~ 1
    omega = w.sum(1)  # per unit: omega ~ N(0, 1), so its average over units is ~ 0
    assert tau.mean().item() == pytest.approx(1.0, abs=0.02)
    assert abs(omega.mean().item()) < 0.15
    assert torch.count_nonzero(m.layers[0]["linear"].bias) == 0


def test_propagation_selu_vs_relu_and_determinism():
    def run(act, init):
        torch.manual_seed(6)
        x = torch.cat([torch.randn(256, 128), 0.5 + math.sqrt(2.0) * torch.randn(256, 128)])
        return propagate_moments(x, 24, 128, act, init, groups=2)

    m, v = run("selu", "lecun")
    assert m.shape == (2, 25)
    assert np.all(np.abs(m[:, 8:]) < 0.15) and np.all((v[:, 8:] > 0.7) & (v[:, 8:] < 1.3))
    m2, v2 = run("selu", "lecun")
    assert np.array_equal(m, m2) and np.array_equal(v, v2)
    mr, _ = run("relu", "he")
    assert np.all(mr[:, -1] > 0.3)  # ReLU outputs are never centred


def test_alpha_dropout_determinism():
    x = torch.randn(100, 10)
    y1 = alpha_dropout(x, 0.1, generator=torch.Generator().manual_seed(7))
    y2 = alpha_dropout(x, 0.1, generator=torch.Generator().manual_seed(7))
    assert torch.equal(y1, y2)


def test_cv_splits_and_ranks():
    folds = cv_splits("iris", 5, seed=0)
    assert sum(len(f.y_test) for f in folds) == 150
    assert torch.allclose(folds[0].x_train.mean(0), torch.zeros(4), atol=1e-5)
    r = average_ranks({"a": {"d1": 0.9, "d2": 0.5}, "b": {"d1": 0.9, "d2": 0.7},
                       "c": {"d1": 0.8, "d2": float("nan")}})
    assert r == {"a": 1.5 * 0.5 + 2 * 0.5, "b": 1.5 * 0.5 + 0.5, "c": 3.0}


def test_holdout_splits_validation_off_the_training_part():
    from replib.experiments.tabular import holdout, majority_rate

    fit, final = holdout("iris", seed=3)
    n_tr, n_va, n_te = len(fit.y_train), len(fit.y_test), len(final.y_test)
    assert n_tr + n_va + n_te == 150 and n_te == 30 and n_va == 24
    assert fit.x_train is final.x_train  # one training part, two held-out parts
    assert torch.allclose(fit.x_train.mean(0), torch.zeros(4), atol=1e-5)
    assert torch.bincount(final.y_test).tolist() == [10, 10, 10]  # stratified
    assert not torch.equal(holdout("iris", seed=4)[1].x_test, final.x_test)
    assert majority_rate("iris") == pytest.approx(1 / 3)


def test_best_config_selects_on_validation_and_prefers_the_shallower():
    from replib.experiments.tabular import best_config, holdout

    fit, final = holdout("iris", seed=0)
    make = lambda c: (lambda n_in, n_out: MLP(n_in, 16, c[0], n_out, activation="selu", init="lecun"))  # noqa: E731
    r = best_config(make, [(2, 0.0), (3, 0.0)], fit, final, 0, steps=20, batch_size=32, lr=0.1)
    assert r["depth"] in (2.0, 3.0) and len(r["val_by_config"]) == 2
    i = [2.0, 3.0].index(r["depth"])
    assert r["val"] == max(r["val_by_config"]) == r["val_by_config"][i]
    if r["val_by_config"][0] == r["val_by_config"][1]:
        assert r["depth"] == 2.0
    gone = best_config(make, [(2, 0.0)], fit, final, 0, steps=5, batch_size=32, lr=1e30)
    assert math.isnan(gone["val"]) and math.isnan(gone["depth"])  # diverged: nan, no exception


def test_the_c2_rule_on_known_answers():
    from replib.claims import Stat, Verdict as V
    from replib.experiments import selu_map as sm

    R_, N_, I_ = V.REPLICATED, V.NOT_REPLICATED, V.INCONCLUSIVE  # (the combinators: tests/test_claims.py)

    def metrics(loss_gap, rough_gap, noise=0.0):
        m = {}
        for d in (8, 16):
            base = np.array([1.0, 1.1, 0.9, 1.05, 0.95])
            jit = noise * np.array([1, -1, 1, -1, 0.5])
            m[f"train loss, ReLU+BN, d={d}"] = Stat.of(base)
            m[f"train loss, SELU, d={d}"] = Stat.of(base + loss_gap + jit)
            m[f"roughness, ReLU+BN, d={d}"] = Stat.of(base / 10)
            m[f"roughness, SELU, d={d}"] = Stat.of(base / 10 + rough_gap + jit / 10)
        return m

    assert sm.c2_decide(metrics(-0.5, -0.05), [8, 16])[0] is R_  # SELU lower loss and smoother
    assert sm.c2_decide(metrics(+0.5, +0.05), [8, 16])[0] is N_  # a reversal
    assert sm.c2_decide(metrics(-0.5, +0.05), [8, 16])[0] is V.PARTIAL  # only the loss part
    assert sm.c2_decide(metrics(0.0, 0.0, noise=0.3), [8, 16])[0] is I_  # noise


def test_versus_all_needs_every_rival_beaten():
    from replib.claims import Stat, Verdict as V
    from replib.experiments.selu_map import versus_all

    m = {"rank, A": Stat.of([1.0, 1.2, 1.1]), "rank, B": Stat.of([2.0, 2.5, 2.2]),
         "rank, C": Stat.of([3.0, 2.9, 3.1]), "rank, D": Stat.of([0.5, 0.6, 0.4])}
    assert versus_all(m, "rank", "A", ["B", "C"], claimed="below")[0] is V.REPLICATED
    assert versus_all(m, "rank", "A", ["B", "D"], claimed="below")[0] is V.NOT_REPLICATED
    m["rank, E"] = Stat.of([0.2, 2.0, 1.0])
    assert versus_all(m, "rank", "A", ["B", "E"], claimed="below")[0] is V.INCONCLUSIVE
