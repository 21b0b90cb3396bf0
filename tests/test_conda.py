"""Conda (chapter 30) against the official code's update, transcribed: jie040109/Conda @ 449af71,
conda_torch/conda.py (Conda.step) and conda_torch/projector.py (CondaProjector, proj_type 'std')."""
import copy
import io
import math

import pytest
import torch

from replib.errors import ReplibError
from replib.optim import Conda
from replib.optim.common import LlamaConfig, TinyLlama, matrix_params, param_bytes, state_bytes
from replib.optim.conda import conda_basis, conda_groups, project, project_back


class OfficialProjector:
    """CondaProjector, proj_type 'std', as in projector.py (cached basis, float32 SVD)."""

    def __init__(self, gap, scale):
        self.gap, self.scale, self.ortho, self.last = gap, scale, None, -1

    def project_with_cached_ortho(self, x, basis_src, step):
        if (self.ortho is None or step % self.gap == 0) and step != self.last:
            u, s, vh = torch.linalg.svd(basis_src.float(), full_matrices=False)
            self.ortho = (vh if x.shape[0] >= x.shape[1] else u).to(basis_src.dtype)
            self.last = step
        return x @ self.ortho.t() if x.shape[0] >= x.shape[1] else self.ortho.t() @ x

    def project_back(self, x):
        out = x @ self.ortho if x.shape[0] >= x.shape[1] else self.ortho @ x
        return out * self.scale


def official_steps(w0, grads, lr, betas, eps, wd, gap, scale):
    """Conda.step of conda.py for one Conda-group parameter over a list of gradients."""
    p = w0.clone()
    exp_avg, exp_avg_sq, step = torch.zeros_like(p), torch.zeros_like(p), 0
    proj = OfficialProjector(gap, scale)
    b1, b2 = betas
    for grad in grads:
        exp_avg.mul_(b1).add_(grad, alpha=1 - b1)
        g = proj.project_with_cached_ortho(grad, exp_avg, step)
        m = proj.project_with_cached_ortho(exp_avg, exp_avg, step)
        exp_avg_sq.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = exp_avg_sq.sqrt().add_(eps)
        step += 1
        step_size = lr * math.sqrt(1 - b2 ** step) / (1 - b1 ** step)
        p.add_(proj.project_back(m / denom), alpha=-step_size)
        if wd > 0:
            p.add_(p, alpha=-lr * wd)
    return p


@pytest.mark.parametrize("shape", [(9, 5), (4, 11), (6, 6)])
def test_matches_the_official_update_on_random_inputs(shape):
    gen = torch.Generator().manual_seed(sum(shape))
    w0 = torch.randn(*shape, generator=gen, dtype=torch.float64)
    grads = [torch.randn(*shape, generator=gen, dtype=torch.float64) for _ in range(8)]
    hp = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05)
    ref = official_steps(w0, grads, hp["lr"], hp["betas"], hp["eps"], hp["weight_decay"], gap=3, scale=0.25)
    p = torch.nn.Parameter(w0.clone())
    opt = Conda([p], update_proj_gap=3, scale=0.25, **hp)
    for g in grads:
        p.grad = g.clone(); opt.step()
    torch.testing.assert_close(p.detach(), ref, rtol=0, atol=1e-12)
    assert opt.n_svd == 3  # at steps 0, 3, 6 (counted before the increment)


def test_svd_only_every_gap_steps():
    p = torch.nn.Parameter(torch.randn(6, 4))
    opt = Conda([p], update_proj_gap=4)
    counts = []
    for _ in range(10):
        p.grad = torch.randn(6, 4); opt.step(); counts.append(opt.n_svd)
    assert counts == [1, 1, 1, 1, 2, 2, 2, 2, 3, 3]
    q, twin = copy.deepcopy((p, opt))  # Optimizer.__getstate__ keeps only the state: the copy must still step
    for _ in range(3):
        q.grad = torch.randn(6, 4); twin.step()
    assert twin.state[q]["step"] == 13 and twin.n_svd == 1  # the copy's own count: one SVD, at step 12


def test_identity_basis_is_adam():
    """A diagonal first gradient makes the momentum's singular basis a signed identity; with a
    gap longer than the run the basis stays, and Conda (scale 1) is Adam step for step."""
    torch.manual_seed(0)
    w0 = torch.randn(7, 4, dtype=torch.float64)
    first = torch.zeros(7, 4, dtype=torch.float64)
    first[range(4), range(4)] = torch.tensor([4.0, -3.0, 2.0, 1.0], dtype=torch.float64)
    grads = [first] + [torch.randn(7, 4, dtype=torch.float64) for _ in range(5)]
    p = torch.nn.Parameter(w0.clone()); q = torch.nn.Parameter(w0.clone())
    opt = Conda([p], lr=1e-2, eps=1e-12, update_proj_gap=1000)
    ref = torch.optim.Adam([q], lr=1e-2, eps=1e-12)
    for g in grads:
        p.grad, q.grad = g.clone(), g.clone()
        opt.step(); ref.step()
    torch.testing.assert_close(opt.state[p]["ortho"].abs(), torch.eye(4, dtype=torch.float64))
    torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-6)


def test_basis_shapes_orthogonal_and_exact_round_trip():
    gen = torch.Generator().manual_seed(5)
    tall, wide = torch.randn(10, 4, generator=gen), torch.randn(3, 8, generator=gen)
    for m in (tall, wide):
        o = conda_basis(m)
        k = min(m.shape)
        assert o.shape == (k, k)
        torch.testing.assert_close(o @ o.T, torch.eye(k), atol=1e-5, rtol=0)
    x = torch.randn(10, 4, generator=gen, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=gen, dtype=torch.float64))
    torch.testing.assert_close(project_back(project(x, q), q), x, atol=1e-10, rtol=0)
    xw = torch.randn(3, 8, generator=gen, dtype=torch.float64)
    u, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    torch.testing.assert_close(project_back(project(xw, u), u), xw, atol=1e-10, rtol=0)


@pytest.mark.parametrize("shape", [(8, 5), (3, 7)])
def test_first_step_is_a_rotated_sign(shape):
    gen = torch.Generator().manual_seed(7)
    w0 = torch.randn(*shape, generator=gen, dtype=torch.float64)
    g = torch.randn(*shape, generator=gen, dtype=torch.float64)
    p = torch.nn.Parameter(w0.clone()); p.grad = g.clone()
    lr, s = 3e-3, 0.25
    opt = Conda([p], lr=lr, eps=1e-12, scale=s, betas=(0.9, 0.99))
    opt.step()
    o = conda_basis((1 - 0.9) * g)
    expected = -lr * project_back(torch.sign(project(g, o)), o, s)
    torch.testing.assert_close(p.detach() - w0, expected, rtol=0, atol=1e-5 * lr)


def _model(seed=0):
    torch.manual_seed(seed)
    return TinyLlama(LlamaConfig(seq_len=16, n_layer=2, n_head=2, d_model=16))


def _loss(model, seed=0):
    x = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(seed))
    return model(x, x.roll(-1, 1))[1]


def test_grouping_state_and_memory():
    model = _model()
    opt = Conda(conda_groups(model, update_proj_gap=5, scale=0.25), lr=1e-2)
    _loss(model).backward(); opt.step()
    mats, rest = matrix_params(model)
    assert all("ortho" in opt.state[p] for p in mats)
    assert not any("ortho" in opt.state[p] for p in rest)
    basis = sum(4 * min(p.shape) ** 2 for p in mats)
    assert state_bytes(opt) == 2 * param_bytes(model.parameters()) + basis
    assert [g["conda"] for g in opt.param_groups] == [False, True]
    assert opt.param_groups[1]["scale"] == 0.25 and opt.param_groups[0]["lr"] == opt.param_groups[1]["lr"]


def test_state_dict_round_trip_and_closure():
    a, b = _model(2), _model(2)
    oa = Conda(conda_groups(a, update_proj_gap=3), lr=1e-2)
    ob = Conda(conda_groups(b, update_proj_gap=3), lr=1e-2)
    for s in range(2):
        oa.zero_grad(); _loss(a, s).backward(); oa.step()
    b.load_state_dict(a.state_dict())
    buf = io.BytesIO(); torch.save(oa.state_dict(), buf); buf.seek(0)  # as from a checkpoint file
    ob.load_state_dict(torch.load(buf))
    for s in range(2, 5):  # crosses a basis update at step 3
        for m, o in ((a, oa), (b, ob)):
            loss = o.step(lambda m=m, o=o, s=s: (o.zero_grad(), _loss(m, s).backward(), _loss(m, s))[2])
            assert torch.isfinite(loss)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_clear_errors():
    with pytest.raises(ReplibError, match="2-D"):
        Conda([torch.nn.Parameter(torch.randn(4))])
    with pytest.raises(ReplibError, match="proj_type"):
        Conda([torch.nn.Parameter(torch.randn(4, 3))], proj_type="full")
    with pytest.raises(ReplibError):
        Conda([torch.nn.Parameter(torch.randn(4, 3))], update_proj_gap=0)
    emb = torch.nn.Embedding(10, 4, sparse=True)
    opt = Conda(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(ReplibError, match="sparse"):
        opt.step()


def test_a_few_steps_reduce_the_loss():
    model = _model(3)
    opt = Conda(conda_groups(model, update_proj_gap=5, scale=0.25), lr=1e-2, betas=(0.9, 0.99))
    first = float(_loss(model).detach())
    for _ in range(15):
        opt.zero_grad(); _loss(model).backward(); opt.step()
    assert float(_loss(model).detach()) < first - 0.5
