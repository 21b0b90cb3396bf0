"""MIP hypernetworks (chapter 01): the spec's reference checks, the library's equations on random
inputs (JJGO/hyperlight @ a3e2108, transcribed), and the optional ``hyperlight`` package as an oracle."""
import math

import pytest
import torch

from replib import ReplibError
from replib.experiments import hypernet as hx
from replib.nn.hypernet import (LEAKY_GAIN, HyperNet, PrimaryMLP, default_hypernet, encode_input,
                                mip_hypernet)

SHAPES = PrimaryMLP((6, 5, 3)).external_shapes()


def _rand(n=7, k=1, seed=0, dtype=torch.float64):
    return torch.rand(n, k, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _library_encode(z):
    """hyperlight/hypernet/encoding.py, encode_input(mode="cos|sin"), transcribed."""
    s = torch.pi * z / 2
    return torch.cat([torch.cos(s), torch.sin(s)], dim=-1)


def test_encoding_known_values_and_constant_norm():
    torch.testing.assert_close(encode_input(torch.tensor([0.0])), torch.tensor([1.0, 0.0]))
    e1 = encode_input(torch.tensor([1.0]))
    torch.testing.assert_close(e1, torch.tensor([math.cos(math.pi / 2), 1.0]))
    torch.testing.assert_close(encode_input(torch.tensor([0.5], dtype=torch.float64)),
                               torch.tensor([0.70710678, 0.70710678], dtype=torch.float64), atol=1e-8, rtol=0)
    for k in (1, 3, 5):
        g = _rand(50, k, seed=k)
        e = encode_input(g)
        assert e.shape == (50, 2 * k)
        torch.testing.assert_close(e.norm(dim=-1), torch.full((50,), math.sqrt(k), dtype=torch.float64),
                                   atol=1e-6, rtol=0)
        torch.testing.assert_close(e, _library_encode(g))  # all cosines, then all sines
    torch.testing.assert_close(encode_input(torch.tensor([0.3]), "z|1-z"), torch.tensor([0.3, 0.7]))
    with pytest.raises(ReplibError):
        encode_input(torch.tensor([1.5]))
    with pytest.raises(ReplibError):
        encode_input(torch.tensor([0.5]), "fourier")


def test_zero_output_weight_gives_theta0_for_every_gamma():
    hn = mip_hypernet(2, SHAPES, [8, 8]).double()
    with torch.no_grad():
        hn.out.weight.zero_()
    g = _rand(5, 2)
    flat = hn.flat(g)
    torch.testing.assert_close(flat, hn.theta0.expand(5, -1), rtol=0, atol=0)
    assert (hn.theta0 != 0).any()


def test_default_is_positively_homogeneous_and_mip_is_not():
    for hidden in ([16, 64, 128], [4]):
        d = default_hypernet(1, SHAPES, hidden).double()
        g = _rand(6, 1, seed=2) * 0.9 + 0.05
        for c in (0.1, 0.5, 3.0):
            torch.testing.assert_close(d.flat(c * g), c * d.flat(g), rtol=1e-5, atol=1e-12)
    m = mip_hypernet(1, SHAPES, [16, 64, 128]).double()
    g = torch.tensor([[0.4]], dtype=torch.float64)
    assert not torch.allclose(m.flat(0.5 * g), 0.5 * m.flat(g), rtol=1e-3)


def test_output_split_init_fan_out_and_independent_weights_fan_in():
    shapes = PrimaryMLP((64, 128, 128, 10)).external_shapes()
    hn = mip_hypernet(1, shapes, [16, 64, 128], generator=torch.Generator().manual_seed(0))
    w = hn.out.weight.detach()
    for name, shape in shapes.items():
        off, n = hn.offsets[name]
        block = w[off:off + n]
        if n >= 1000:
            assert abs(block.std().item() / (LEAKY_GAIN / math.sqrt(n)) - 1) < 0.05, name
        th0 = hn.theta0.detach()[off:off + n]
        if name.endswith(".bias"):
            assert torch.equal(th0, torch.zeros(n))
        else:
            tol = 0.05 if n >= 5000 else 0.1  # the sample std of n draws is off by ~1/sqrt(2n)
            assert abs(th0.std().item() / (LEAKY_GAIN / math.sqrt(shape[1])) - 1) < tol, name
    assert LEAKY_GAIN == pytest.approx(math.sqrt(2 / (1 + 0.01 ** 2)))
    for lin in hn.hidden:  # hidden layers: fan-out, biases 0
        assert torch.equal(lin.bias.detach(), torch.zeros_like(lin.bias))
    big = hn.hidden[-1]
    assert abs(big.weight.std().item() / (LEAKY_GAIN / math.sqrt(big.out_features)) - 1) < 0.1
    d = default_hypernet(1, shapes, [16, 64, 128], generator=torch.Generator().manual_seed(0))
    assert torch.equal(d.theta0.detach(), torch.zeros_like(d.theta0))
    assert abs(d.out.weight.std().item() / (LEAKY_GAIN / math.sqrt(128)) - 1) < 0.02


def test_unflatten_round_trip_and_batched_shapes():
    hn = mip_hypernet(1, SHAPES, [8]).double()
    out = hn(torch.tensor([0.3], dtype=torch.float64))
    assert list(out) == list(SHAPES) and all(out[k].shape == SHAPES[k] for k in SHAPES)
    flat = hn.flat(torch.tensor([0.3], dtype=torch.float64))
    torch.testing.assert_close(torch.cat([v.flatten() for v in out.values()]), flat, rtol=0, atol=0)
    batched = hn(_rand(4, 1))
    assert all(batched[k].shape == (4, *SHAPES[k]) for k in SHAPES)
    with pytest.raises(ReplibError):
        hn.flat(torch.zeros(3))


def test_library_forward_transcribed_on_random_weights():
    """model.py HyperNet.forward: encode, FullyConnectedNet (Linear -> LeakyReLU ..., output Linear + bias)."""
    torch.manual_seed(3)
    for enc in (None, "cos|sin"):
        hn = HyperNet(2, SHAPES, [8, 4], encoding=enc, additive=True).double()
        with torch.no_grad():
            for p in hn.parameters():
                p.add_(0.3 * torch.randn_like(p))
        g = _rand(5, 2, seed=4)
        a = g if enc is None else _library_encode(g)
        for lin in hn.hidden:
            a = torch.nn.functional.leaky_relu(a @ lin.weight.T + lin.bias, 0.01)
        ref = a @ hn.out.weight.T + hn.theta0
        torch.testing.assert_close(hn.flat(g), ref, rtol=1e-12, atol=1e-12)


def test_gradcheck_float64():
    hn = mip_hypernet(1, SHAPES, [4]).double()
    net = PrimaryMLP((6, 5, 3))
    x = torch.randn(3, 6, dtype=torch.float64)

    def f(g, *params):
        return net(x, hn.unflatten(hn.flat(g))).sum()
    g = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda g: f(g), (g,))


def test_primary_mlp_matches_nn_linear_stack():
    net = PrimaryMLP((6, 5, 3))
    params = {k: torch.randn(*s, dtype=torch.float64) for k, s in net.external_shapes().items()}
    ref = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LeakyReLU(0.01), torch.nn.Linear(5, 3)).double()
    with torch.no_grad():
        ref[0].weight.copy_(params["0.weight"]); ref[0].bias.copy_(params["0.bias"])
        ref[2].weight.copy_(params["1.weight"]); ref[2].bias.copy_(params["1.bias"])
    x = torch.randn(4, 6, dtype=torch.float64)
    torch.testing.assert_close(net(x, params), ref(x))


def test_hyperlight_oracle_default_and_mip():
    """The optional first-author library as an oracle: same weights, same outputs."""
    hl = pytest.importorskip("hyperlight")
    shapes = {k: tuple(v) for k, v in SHAPES.items()}
    for enc, additive in ((None, False), ("cos|sin", True)):
        ref = hl.HyperNet(input_shapes={"gamma": (1,)}, output_shapes=shapes, hidden_sizes=[8, 4],
                          encoding=enc, init_independent_weights=additive).double()
        ours = HyperNet(1, shapes, [8, 4], encoding=enc, additive=additive).double()
        lins = [m for m in ref.backbone if isinstance(m, torch.nn.Linear)]
        with torch.no_grad():
            for mine, theirs in zip(ours.hidden, lins[:-1]):
                mine.weight.copy_(theirs.weight); mine.bias.copy_(theirs.bias)
            ours.out.weight.copy_(lins[-1].weight); ours.theta0.copy_(lins[-1].bias)
        for g in (0.0, 0.37, 1.0):
            gt = torch.tensor([[g]], dtype=torch.float64)
            theirs = ref(gamma=gt)
            mine = ours(gt[0])
            for k in shapes:
                torch.testing.assert_close(mine[k], theirs[k].reshape(shapes[k]), rtol=1e-12, atol=1e-12)
        if additive:  # the library's independent weights: fan-in Kaiming for weights, 0 for biases
            ind = ref.get_independent_weights()
            assert torch.equal(ind["0.bias"], torch.zeros(5, dtype=torch.float64))


def test_c1_init_scales_follow_the_input_for_default_only():
    x = torch.randn(64, 64)
    d = hx.init_scales("default", 0, x, gammas=(0.1, 1.0))
    m = hx.init_scales("MIP", 0, x, gammas=(0.1, 1.0))
    assert d["theta_std"][1] / d["theta_std"][0] == pytest.approx(10.0, rel=1e-5)
    assert 0.8 <= m["theta_std"][1] / m["theta_std"][0] <= 1.25


def test_speed_ratio_censoring_and_rules():
    assert hx.speed_ratio(50, 100, 300) == 0.5
    assert hx.speed_ratio(50, math.inf, 300) == pytest.approx(50 / 300)
    assert math.isnan(hx.speed_ratio(math.inf, math.inf, 300))
    assert math.isnan(hx.speed_ratio(math.nan, 100, 300))
    health = hx.rc.Health(reference=0.1, margin=0.2, lower_is_better=False, name="chance accuracy")
    rule = hx.c2_rule(["adam"], health=health)
    good = {"ratio adam": [0.3, 0.4, 0.45], "MIP test adam": [0.1, 0.11, 0.12],
            "default test adam": [0.12, 0.13, 0.12], "MIP acc adam": [0.9] * 3, "default acc adam": [0.9] * 3}
    stats = {k: hx.rc.Stat.of(v) for k, v in good.items()}
    assert rule(stats) is hx.rc.Verdict.REPLICATED
    slow = dict(stats, **{"ratio adam": hx.rc.Stat.of([1.0, 1.1, 0.95])})
    assert rule(slow) is hx.rc.Verdict.NOT_REPLICATED
    mid = dict(stats, **{"ratio adam": hx.rc.Stat.of([0.7, 0.8, 0.6])})
    assert rule(mid) is hx.rc.Verdict.PARTIAL
    dead = dict(stats, **{"default acc adam": hx.rc.Stat.of([0.9, 0.1, 0.9])})
    assert rule(dead) is hx.rc.Verdict.INCONCLUSIVE
    c4 = hx.c4_rule()
    assert c4({"default": hx.rc.Stat.of([0.9, 0.3, math.nan]), "MIP": hx.rc.Stat.of([0.9, 0.9, 0.4])}) \
        is hx.rc.Verdict.REPLICATED
    assert c4({"default": hx.rc.Stat.of([0.9, 0.9]), "MIP": hx.rc.Stat.of([0.9, 0.9])}) is hx.rc.Verdict.NOT_REPLICATED


def test_run_is_deterministic_and_learns():
    d = hx.digits_splits()
    a = hx.run("MIP", "adam", 1e-3, 0, d, steps=30, eval_every=10, hidden=(8, 16))
    b = hx.run("MIP", "adam", 1e-3, 0, d, steps=30, eval_every=10, hidden=(8, 16))
    assert a["val_curve"] == b["val_curve"] and a["test_acc"] > 0.5
    assert len(d.y_val) + len(d.y_train) + len(d.y_test) == 1797
