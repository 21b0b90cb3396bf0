"""Chapter 23: residual towers with scaled branches and the explicit residual expansion."""
import math

import pytest
import torch

from replib.errors import ReplibError
from replib.experiments import residual as R
from replib.nn.residual import (
    ResidualBlock,
    ResidualNet,
    ResidualTower,
    branch_scale,
    first_order,
    linear_product,
    order_terms,
    path_counts,
    path_mass,
    subset_expansion,
    subset_path_lengths,
)

D64 = torch.float64


def _mats(n, d, seed, s=1.0):
    g = torch.Generator().manual_seed(seed)
    return [s * torch.randn(d, d, generator=g, dtype=D64) / math.sqrt(d) for _ in range(n)]


@pytest.mark.parametrize("n", [1, 2, 5, 10])
@pytest.mark.parametrize("lam", [0.3, 1.0, -0.7])
def test_subset_expansion_equals_forward(n, lam):
    As = _mats(n, 8, seed=n)
    x = torch.randn(4, 8, dtype=D64, generator=torch.Generator().manual_seed(99))
    direct = linear_product(As, x, lam)
    brute = subset_expansion(As, x, lam)
    assert torch.allclose(brute, direct, atol=1e-10 * direct.abs().max().item(), rtol=0)


def test_order_is_not_commutative_so_the_check_can_fail():
    """Reversing the order inside each path product breaks the identity (non-commuting A_k)."""
    As = _mats(4, 6, seed=3)
    x = torch.randn(2, 6, dtype=D64)
    assert not torch.allclose(subset_expansion(As[::-1], x, 0.5), linear_product(As, x, 0.5))


@pytest.mark.parametrize("n", [3, 10, 40])
def test_order_terms_sum_to_forward_and_match_brute_force(n):
    As = _mats(n, 8, seed=n + 1)
    x = torch.randn(3, 8, dtype=D64, generator=torch.Generator().manual_seed(0))
    lam = 1.0 / n
    T = order_terms(As, x, lam)
    assert len(T) == n + 1 and torch.equal(T[0], x)
    direct = linear_product(As, x, lam)
    assert torch.allclose(sum(T), direct, atol=1e-12, rtol=1e-10)
    if n <= 10:  # order j of the brute force: only subsets of size j
        import itertools
        for j in (1, 2, n):
            tj = torch.zeros_like(x)
            for S in itertools.combinations(range(n), j):
                t = x
                for k in S:
                    t = t @ As[k].T
                tj = tj + lam ** j * t
            assert torch.allclose(T[j], tj, atol=1e-13, rtol=1e-10)


@pytest.mark.parametrize("n", [1, 4, 10, 13])
def test_path_counts_binomial(n):
    counts = path_counts(n)
    assert sum(counts) == 2 ** n
    lengths = subset_path_lengths(n)
    assert [lengths.count(j) for j in range(n + 1)] == counts
    assert counts == [math.comb(n, j) for j in range(n + 1)]


def test_path_mass():
    assert path_mass(10, 0.3) == pytest.approx(1.3 ** 10, rel=1e-12)
    assert path_mass(10, 1 / 10) == pytest.approx(2.5937424601, rel=1e-9)
    assert path_mass(100, 1 / 100) == pytest.approx(2.7048138294, rel=1e-9)


def test_first_order_error_is_second_order():
    torch.manual_seed(0)
    blocks = [ResidualBlock(16, 1.0, branch="mlp").double() for _ in range(6)]
    x = torch.randn(5, 16, dtype=D64)

    def err(lam):
        y = x
        for b in blocks:
            y = y + lam * b.f(y)
        return (y - first_order([b.f for b in blocks], x, lam)).norm().item()

    ratio = err(0.01) / err(0.005)
    assert 3.5 <= ratio <= 4.5


def test_lambda_zero_is_identity():
    tower = ResidualTower(12, 7, scaling=0.0, branch="mlp").double()
    x = torch.randn(3, 12, dtype=D64)
    assert torch.equal(tower(x), x)
    As = _mats(5, 12, 0)
    assert torch.equal(linear_product(As, x, 0.0), x)


def test_linear_tower_matches_expansion():
    """The nn.Module with linear branches is the product formula with its own weights."""
    torch.manual_seed(1)
    tower = ResidualTower(8, 6, scaling="1/sqrt(n)", branch="linear").double()
    As = [b.fc1.weight.detach() for b in tower.blocks]
    x = torch.randn(4, 8, dtype=D64)
    with torch.no_grad():
        y = tower(x)
    assert torch.allclose(y, subset_expansion(As, x, tower.lam), atol=1e-12, rtol=0)


def test_branch_scale_choices():
    assert branch_scale("none", 16) == 1.0
    assert branch_scale("1/n", 16) == 1 / 16
    assert branch_scale("1/sqrt(n)", 16) == 0.25
    assert branch_scale(0.3, 16) == 0.3
    tower = ResidualTower(4, 9, scaling="1/sqrt(n)")
    assert all(b.lam == pytest.approx(1 / 3) for b in tower.blocks)
    with pytest.raises(ReplibError):
        branch_scale("1/log(n)", 4)
    with pytest.raises(ReplibError):
        branch_scale("none", 0)
    with pytest.raises(ReplibError):
        ResidualBlock(4, branch="conv")


def test_expected_square_norm_monte_carlo():
    """E||y||^2 / ||x||^2 = (1 + lam^2 s^2)^n for branches with N(0, s^2/d) entries."""
    n, d, lam, s, draws = 10, 8, 0.3, 1.0, 2000
    g = torch.Generator().manual_seed(0)
    x = torch.randn(d, dtype=D64, generator=g)
    A = s * torch.randn(draws, n, d, d, dtype=D64, generator=g) / math.sqrt(d)
    y = x.expand(draws, d)
    for k in range(n):
        y = y + lam * torch.einsum("bij,bj->bi", A[:, k], y)
    ratio = (y.pow(2).sum(-1).mean() / x.pow(2).sum()).item()
    assert ratio == pytest.approx((1 + lam ** 2 * s ** 2) ** n, rel=0.05)


@pytest.mark.parametrize("kw", [dict(branch="linear"), dict(branch="mlp"),
                                dict(branch="mlp", norm="layernorm", norm_at="pre"),
                                dict(branch="mlp", skipinit=True)])
def test_gradcheck(kw):
    torch.manual_seed(0)
    tower = ResidualTower(5, 3, scaling="1/n", **kw).double()
    if tower.blocks[0].alpha is not None:
        for b in tower.blocks:
            b.alpha.data.fill_(0.5)
    x = torch.randn(3, 5, dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(tower, (x,))


def test_log_growth_renormalised_matches_direct():
    torch.manual_seed(0)
    tower = ResidualTower(32, 12, scaling="none", branch="mlp", bias=False).double()
    assert tower.homogeneous
    x = torch.randn(6, 32, dtype=D64)
    logs = tower.log_growth(x)
    direct = torch.stack([(s.norm(dim=-1) / x.norm(dim=-1)).log() for s in tower.states(x)])
    assert torch.allclose(logs, direct, atol=1e-10)
    ln = ResidualTower(32, 4, branch="mlp", norm="layernorm")
    assert not ln.homogeneous


def test_unscaled_grows_scaled_stays_bounded():
    torch.manual_seed(0)
    g = R.init_growth(64, [4, 32], seed=0, n_samples=64)
    assert g["lambda=1"][1] > g["lambda=1"][0] + 5  # log-ratio grows by ~0.55 per block
    assert max(g["lambda=1/sqrt(n)"]) < math.log(10) and max(g["lambda=1/n"]) < math.log(10)


def test_determinism():
    def run():
        torch.manual_seed(7)
        net = ResidualNet(10, 16, 4, 3, scaling="1/sqrt(n)", norm="batchnorm", norm_at="branch")
        return net(torch.ones(5, 10))
    assert torch.equal(run(), run())
    assert R.init_growth(16, [3], 1, n_samples=8) == R.init_growth(16, [3], 1, n_samples=8)


def test_jacobian_fro_of_linear_map():
    lin = torch.nn.Linear(6, 3).double()
    x = torch.randn(4, 6, dtype=D64)
    assert R.jacobian_fro(lin, x) == pytest.approx(lin.weight.norm().item(), rel=1e-12)


def test_growth_profile_and_the_explorer_widget(monkeypatch):
    import matplotlib

    monkeypatch.delenv("REPLIB_STATIC", raising=False)  # a live kernel (book runs set it)
    matplotlib.use("Agg")
    from replib.experiments import residual as R

    plain = R.growth_profile(32, 16, "none", n_samples=64)
    scaled = R.growth_profile(32, 16, "1/n", n_samples=64)
    assert plain.shape == (17,) and plain[0] == 0.0
    assert plain[-1] > 2.0 > scaled[-1] > 0.0  # lambda=1 explodes, 1/n stays near (1+1/n)^n
    assert (R.growth_profile(32, 16, "1/n", n_samples=64) == scaled).all()  # seeded
    ui = R.growth_explorer(width=16, max_depth=32, n_samples=16)
    assert [c.description for c in ui.children[:3]] == ["depth n", "scaling", "Pre-LN"]
    ui.children[1].value = "1/n"  # changing a control re-runs the plot without error
    assert ui.kwargs["scaling"] == "1/n"


def _stat(v):
    from replib.claims import Stat
    return Stat.of(v)


def _c3b(one, sqrt, inv, bn):
    return {f"test acc, lambda=1, n=32": _stat(one), f"test acc, lambda=1/sqrt(n), n=32": _stat(sqrt),
            f"test acc, lambda=1/n, n=32": _stat(inv), f"test acc, BN in branch, n=32": _stat(bn)}


def test_c3b_rule_on_known_answers():
    from replib.claims import Verdict as V

    nan = float("nan")
    bn = [0.97, 0.96, 0.975, 0.965, 0.97]
    close = [0.965, 0.962, 0.97, 0.96, 0.968]
    lagging = [0.90, 0.91, 0.905, 0.895, 0.90]
    dec = lambda m: R.c3b_decide(m, [32], chance=0.1)[0]  # noqa: E731
    assert dec(_c3b([nan] * 5, close, lagging, bn)) is V.REPLICATED  # lambda=1 diverges, 1/sqrt(n) close to BN
    assert dec(_c3b([0.5, 0.55, 0.52, 0.5, 0.51], close, close, bn)) is V.REPLICATED  # or is far behind
    assert dec(_c3b([nan] * 5, lagging, lagging, bn)) is V.PARTIAL  # the spec's tier: scaled nets lag BN
    assert dec(_c3b([nan] * 5, close, [nan] + lagging[1:], bn)) is V.NOT_REPLICATED  # 1/n diverged
    assert dec(_c3b([nan] * 5, close, [0.1] * 5, bn)) is V.NOT_REPLICATED  # 1/n at chance: did not train
    assert dec(_c3b(close, close, close, bn)) is V.NOT_REPLICATED  # lambda=1 trains as well as BN
    noisy = [0.99, 0.93, 0.99, 0.92, 0.97]
    assert dec(_c3b([nan] * 5, noisy, close, bn)) is V.INCONCLUSIVE


def test_c4_rule_on_known_answers():
    from replib.claims import Verdict as V

    nan = float("nan")

    def m(one, sqrt, inv):
        return {"jacobian, lambda=1, n=8": _stat(one), "jacobian, lambda=1/sqrt(n), n=8": _stat(sqrt),
                "jacobian, lambda=1/n, n=8": _stat(inv)}

    big, mid, small = [40.0, 42, 39, 41], [25.0, 27, 24, 26], [12.0, 12.5, 11.8, 12.1]
    assert R.c4_decide(m(big, mid, small), [8])[0] is V.REPLICATED
    assert R.c4_decide(m(small, mid, big), [8])[0] is V.NOT_REPLICATED
    assert R.c4_decide(m([nan] * 4, mid, small), [8])[0] is V.INCONCLUSIVE  # lambda=1 never trained
    assert R.c4_decide(m([nan] * 4, small, mid), [8])[0] is V.NOT_REPLICATED  # the scaled step reversed


def test_train_residual_reports_validation_and_test_apart():
    from replib.experiments.tabular import holdout

    fit, final = holdout("iris", seed=0)
    r = R.train_residual(fit, R.TRAIN_ARMS["lambda=1/n"], 2, 0, final=final, width=8, epochs=2,
                         batch_size=32, lr=0.05, warmup_epochs=1)
    assert set(r) >= {"val", "val_loss", "test", "train_acc", "jac", "diverged", "curve"}
    assert r["diverged"] == 0.0 and 0 <= r["val"] <= 1 and 0 <= r["test"] <= 1 and len(r["curve"]) == 2
    gone = R.train_residual(fit, R.TRAIN_ARMS["lambda=1"], 2, 0, final=final, width=8, epochs=2,
                            batch_size=32, lr=1e30, warmup_epochs=1)
    assert gone["diverged"] == 1.0 and math.isnan(gone["val"]) and math.isnan(gone["test"])
