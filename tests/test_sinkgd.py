"""SinkGD (chapter 06): SR-Sinkhorn's fixed point and invariances, the optimiser's update, state, errors.

No official code exists; the update is the spec's SR-Sinkhorn (the paper's Algorithm 3 as restated
by third parties), transcribed below as an independent loop and checked on random inputs."""
import io
import math

import pytest
import torch

from replib.errors import ReplibError
from replib.optim import SinkGD
from replib.optim.common import LlamaConfig, TinyLlama, matrix_params, param_bytes, state_bytes
from replib.optim.sinkgd import sinkgd_groups, sr_sinkhorn


def reference_sr_sinkhorn(g, iters):
    """The spec's loop, one row and one column at a time (float64)."""
    x = g.clone().double()
    m, n = x.shape
    for _ in range(iters):
        for i in range(m):
            x[i] = math.sqrt(n) * x[i] / x[i].norm()
        for j in range(n):
            x[:, j] = math.sqrt(m) * x[:, j] / x[:, j].norm()
    return x


def test_matches_the_spec_loop_on_random_inputs():
    torch.manual_seed(0)
    for shape in [(7, 5), (5, 9), (16, 16)]:
        g = torch.randn(*shape, dtype=torch.float64)
        for L in (1, 2, 5):
            torch.testing.assert_close(sr_sinkhorn(g, L, eps=0.0), reference_sr_sinkhorn(g, L), rtol=1e-12, atol=1e-12)


def test_fixed_point_after_50_iterations():
    g = torch.randn(64, 32, generator=torch.Generator().manual_seed(1))
    x = sr_sinkhorn(g, 50)
    rows, cols = x.norm(dim=1), x.norm(dim=0)
    assert ((rows / math.sqrt(32) - 1).abs() < 1e-4).all()
    assert ((cols / math.sqrt(64) - 1).abs() < 1e-3).all()
    assert abs(x.norm() / math.sqrt(64 * 32) - 1) < 1e-4


def test_last_step_is_columns_so_columns_are_exact():
    g = torch.randn(12, 20, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for L in (1, 2, 5):
        torch.testing.assert_close(sr_sinkhorn(g, L).norm(dim=0), torch.full((20,), math.sqrt(12), dtype=torch.float64))
    half = sr_sinkhorn(g, 0.5)  # the row-only ablation
    torch.testing.assert_close(half.norm(dim=1), torch.full((12,), math.sqrt(20), dtype=torch.float64))
    torch.testing.assert_close(sr_sinkhorn(g, 0), g)
    with pytest.raises(ReplibError):
        sr_sinkhorn(g, 0.3)


def test_scale_and_diagonal_invariance_and_signs():
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(10, 6, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(sr_sinkhorn(17.0 * g, 5), sr_sinkhorn(g, 5))
    dr = torch.rand(10, 1, generator=gen, dtype=torch.float64) + 0.2
    dc = torch.rand(1, 6, generator=gen, dtype=torch.float64) + 0.2
    torch.testing.assert_close(sr_sinkhorn(dr * g * dc, 200), sr_sinkhorn(g, 200), rtol=1e-6, atol=1e-6)
    x = sr_sinkhorn(g, 5)
    assert torch.equal(torch.sign(x), torch.sign(g))
    # X = D_r G D_c: the ratio X / G is a rank-one positive outer product
    ratio = x / g
    assert (ratio > 0).all()
    assert torch.linalg.matrix_rank(ratio, rtol=1e-10) == 1


def test_rank_one_positive_gives_ones_after_one_iteration():
    gen = torch.Generator().manual_seed(4)
    u, v = torch.rand(8, generator=gen) + 0.1, torch.rand(5, generator=gen) + 0.1
    torch.testing.assert_close(sr_sinkhorn(torch.outer(u, v), 1), torch.ones(8, 5))
    s = torch.sign(torch.randn(8, 1, generator=gen)) * torch.sign(torch.randn(1, 5, generator=gen))
    torch.testing.assert_close(sr_sinkhorn(torch.outer(u, v) * s, 1), s.expand(8, 5))


def _model(seed=0):
    torch.manual_seed(seed)
    return TinyLlama(LlamaConfig(seq_len=16, n_layer=2, n_head=2, d_model=16))


def _loss(model, seed=0):
    x = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(seed))
    return model(x, x.roll(-1, 1))[1]


def test_step_is_minus_lr_times_sinkhorn_and_matrices_keep_no_state():
    model = _model()
    opt = SinkGD(sinkgd_groups(model, lr=0.02, alpha=0.05), sinkhorn_iters=5)
    mats, rest = matrix_params(model)
    before = [p.detach().clone() for p in mats]
    _loss(model).backward()
    expected = [w - 0.001 * sr_sinkhorn(p.grad, 5) for w, p in zip(before, mats)]
    opt.step()
    for p, e in zip(mats, expected):
        torch.testing.assert_close(p.detach(), e, rtol=0, atol=1e-7)
    assert all(len(opt.state[p]) == 0 for p in mats)
    assert state_bytes(opt, mats) == 0
    # the rest (embeddings, head, gains) keep Adam's two moments: the only state there is
    assert state_bytes(opt) == 2 * param_bytes(rest)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.001), 0.02]


def test_adam_branch_is_adam():
    model = _model(1)
    ref = _model(1)
    _, rest = matrix_params(model)
    _, ref_rest = matrix_params(ref)
    opt = SinkGD([{"params": rest, "sinkgd": False}], lr=3e-3, adam_eps=1e-12)
    ropt = torch.optim.Adam(ref_rest, lr=3e-3, eps=1e-12)
    for s in range(3):
        opt.zero_grad(); ropt.zero_grad()
        _loss(model, s).backward(); _loss(ref, s).backward()
        opt.step(); ropt.step()
    for p, q in zip(rest, ref_rest):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_state_dict_round_trip_and_closure():
    a, b = _model(2), _model(2)
    oa = SinkGD(sinkgd_groups(a, lr=0.01))
    ob = SinkGD(sinkgd_groups(b, lr=0.01))
    for s in range(2):
        oa.zero_grad(); _loss(a, s).backward(); oa.step()
    b.load_state_dict(a.state_dict())
    buf = io.BytesIO(); torch.save(oa.state_dict(), buf); buf.seek(0)  # as from a checkpoint file
    ob.load_state_dict(torch.load(buf))
    for s in range(2, 4):
        for m, o in ((a, oa), (b, ob)):
            o.zero_grad()
            loss = o.step(lambda m=m, o=o, s=s: (o.zero_grad(), _loss(m, s).backward(), _loss(m, s))[2])
            assert torch.isfinite(loss)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_clear_errors():
    w = torch.nn.Parameter(torch.randn(4))
    with pytest.raises(ReplibError, match="2-D"):
        SinkGD([w])
    emb = torch.nn.Embedding(10, 4, sparse=True)
    opt = SinkGD(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(ReplibError, match="sparse"):
        opt.step()
    with pytest.raises(ReplibError):
        SinkGD([torch.nn.Parameter(torch.randn(3, 3))], lr=-1.0)
    with pytest.raises(ReplibError, match="attn"):
        sinkgd_groups(torch.nn.Linear(3, 3), lr=0.01)


def test_a_few_steps_reduce_the_loss():
    model = _model(3)
    opt = SinkGD(sinkgd_groups(model, lr=0.02))
    first = float(_loss(model).detach())
    for _ in range(15):
        opt.zero_grad(); _loss(model).backward(); opt.step()
    assert float(_loss(model).detach()) < first - 0.5
