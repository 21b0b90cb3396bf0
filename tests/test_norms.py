"""Checks every registry norm must pass (iterating the registry, so no entry can skip them),
then each norm's own reference properties."""
import io

import pytest
import torch
import torch.nn.functional as F

from replib import ReplibError
from replib.nn import create_norm, list_norms
from replib.nn.norms import exact_grad_kwargs

D = 6


def _x(*shape, dtype=torch.float64):
    return torch.randn(*shape, D, dtype=dtype) * 2 + 0.5


@pytest.mark.parametrize("name", list_norms())
def test_shape_and_finite(name):
    norm = create_norm(name, D)
    y = norm(_x(3, 5, dtype=torch.float32))
    assert y.shape == (3, 5, D) and torch.isfinite(y).all()


@pytest.mark.parametrize("name", list_norms())
def test_gradcheck_float64(name):
    norm = create_norm(name, D, **exact_grad_kwargs(name)).double()
    with torch.no_grad():
        for p in norm.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = _x(4, 3).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: norm(t), (x,))
    params = [p for p in norm.parameters()]
    if params:
        assert torch.autograd.gradcheck(lambda *ps: torch.func.functional_call(
            norm, dict(zip([n for n, _ in norm.named_parameters()], ps)), (x.detach(),)), tuple(
            p.detach().requires_grad_() for p in params))


@pytest.mark.parametrize("name", list_norms())
def test_state_dict_round_trip(name):
    a = create_norm(name, D)
    with torch.no_grad():
        for p in a.parameters():
            p.normal_()
    a.train()(_x(8, dtype=torch.float32))  # moves running statistics where there are any
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    b = create_norm(name, D)
    b.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    x = _x(5, dtype=torch.float32)
    assert torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("name", list_norms())
def test_deterministic_on_cpu(name):
    x = _x(4, 7, dtype=torch.float32)
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        outs.append(create_norm(name, D)(x))
    assert torch.equal(*outs)


def test_unknown_norm_lists_valid():
    with pytest.raises(ReplibError, match="valid: .*layernorm"):
        create_norm("groupnorm9", D)


def test_layernorm_matches_torch_values_and_gradients():
    ours = create_norm("layernorm", D).double()
    ref = torch.nn.LayerNorm(D, eps=1e-5).double()
    with torch.no_grad():
        ours.weight.normal_(); ours.bias.normal_()
        ref.weight.copy_(ours.weight); ref.bias.copy_(ours.bias)
    x1 = _x(5).requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    (ours(x1) ** 3).sum().backward()
    (ref(x2) ** 3).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-10, rtol=0)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, atol=1e-10, rtol=0)


def test_layernorm_train_equals_eval_and_batch_independence():
    ln = create_norm("layernorm", D).double()
    x = _x(4)
    torch.testing.assert_close(ln.train()(x), ln.eval()(x))
    x2 = x.clone(); x2[1:] = 100 * torch.randn(3, D, dtype=torch.float64)
    torch.testing.assert_close(ln(x)[0], ln(x2)[0])
    torch.testing.assert_close(ln(x[:1]), ln(x)[:1])


def test_rmsnorm_formula_and_equals_layernorm_on_zero_mean_input():
    x = _x(4)
    rms = create_norm("rmsnorm", D).double()
    torch.testing.assert_close(rms(x), x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))
    z = x - x.mean(-1, keepdim=True)
    torch.testing.assert_close(rms(z), create_norm("layernorm", D).double()(z), atol=1e-12, rtol=0)


def test_crmsnorm_equals_rmsnorm_of_the_full_zero_mean_vector():
    z = _x(4)
    z = z - z.mean(-1, keepdim=True)
    full = create_norm("rmsnorm", D, affine=False)(z)
    compressed = create_norm("crmsnorm", D - 1, affine=False)(z[..., :-1])
    torch.testing.assert_close(compressed, full[..., :-1], atol=1e-12, rtol=0)


def test_batchnorm_matches_torch_batchnorm1d_in_train_and_eval():
    ours = create_norm("batchnorm", D).double()
    ref = torch.nn.BatchNorm1d(D).double()
    for _ in range(3):
        x = _x(16)
        torch.testing.assert_close(ours.train()(x), ref.train()(x))
    torch.testing.assert_close(ours.running_var, ref.running_var)
    x = _x(5)
    torch.testing.assert_close(ours.eval()(x), ref.eval()(x))


def test_batchnorm_padding_never_shapes_statistics():
    bn = create_norm("batchnorm", D).double()
    x = _x(2, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    y1 = bn.train()(x, mask)
    x2 = x.clone(); x2[~mask] = 1e6
    y2 = bn.train()(x2, mask)
    torch.testing.assert_close(y1[mask], y2[mask])
    real = x[mask]
    torch.testing.assert_close(y1[mask], F.batch_norm(real, None, None, training=True, eps=1e-5))


def test_batchnorm_mask_shape_is_checked():
    with pytest.raises(ReplibError, match="mask shape"):
        create_norm("batchnorm", D)(_x(2, 5), torch.ones(2, 4, dtype=torch.bool))
