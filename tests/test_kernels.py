"""The fused Triton norm kernels (replib.nn.kernels) against the eager modules, their oracle.

On a machine without a GPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``, set
while triton and the kernels are imported and while these tests run, not for the rest of the
session) on tiny shapes; with a GPU they run compiled on it. Outputs and the gradients of x and of
every parameter (weights, biases, learnable scalars) must equal the eager module's in float32 to
``rtol=1e-4, atol=1e-5`` (the kernels reduce in another order and build tanh from exp: observed
differences are ~1e-6).
"""
import importlib
import os
from contextlib import contextmanager

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRET = {"TRITON_INTERPRET": "1"} if DEVICE == "cpu" else {}


@contextmanager
def _environment(values: dict):
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


with _environment(INTERPRET):  # triton reads it on import, @triton.jit when it decorates
    pytest.importorskip("triton", reason="triton is not installed (the `kernels` extra; Linux only)")
    from replib.nn import create_norm, kernels
    from replib.nn.bhyt import BHyTGPT
    from replib.nn.kernels import layernorm, rms, seednorm_kernel, tanh
    from replib.nn.transformer import GPTConfig

    for module in (layernorm, rms, seednorm_kernel, tanh):  # decorated anew, in this mode
        importlib.reload(module)


@pytest.fixture(autouse=True, scope="module")
def _interpreter():
    """The interpreter also when the kernels launch; only while this module's tests run."""
    with _environment(INTERPRET):
        yield


TOL = dict(rtol=1e-4, atol=1e-5)
CASES = [  # registry name, constructor kwargs
    ("rmsnorm", {}), ("rmsnorm", {"affine": False}),
    ("layernorm", {}), ("layernorm", {"bias": False}), ("layernorm", {"affine": False}),
    ("crmsnorm", {}), ("crmsnorm", {"affine": False}),
    ("dyt", {}), ("dyt", {"bias": False}),
    ("bhyt", {}), ("bhyt", {"learnable_lam": False}),
    ("seednorm", {}), ("seednorm", {"heads": 2}), ("seednorm", {"heads": 3, "beta_std": 0.5}),
]


@pytest.fixture
def kernels_on(monkeypatch):
    """Route the registry modules through the kernels on this device (CPU: the interpreter)."""
    monkeypatch.setattr(kernels, "KERNEL_DEVICES", {DEVICE})
    monkeypatch.delenv("REPLIB_TRITON", raising=False)


def _perturbed(norm: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Parameters away from their init (weight 1, bias 0, beta 0 would hide gradient errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in norm.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    return norm.to(DEVICE)


def _run(norm, x, dy):
    """Output and the gradients of x and every parameter after one backward of ``dy``."""
    x = x.clone().requires_grad_(True)
    norm.zero_grad(set_to_none=True)
    y = norm(x)
    y.backward(dy)
    return y.detach(), x.grad, {n: p.grad for n, p in norm.named_parameters()}


@pytest.mark.parametrize("dim", [6, 12])  # 6: a row narrower than its power-of-two block
@pytest.mark.parametrize("name,kwargs", CASES, ids=[f"{n}-{'-'.join(map(str, k.values())) or 'default'}"
                                                    for n, k in CASES])
def test_kernel_equals_eager(kernels_on, monkeypatch, name, kwargs, dim):
    g = torch.Generator().manual_seed(dim)
    x = (torch.randn(3, 5, dim, generator=g) * 2 + 0.3).to(DEVICE)  # 15 rows: 2 uneven programs
    dy = torch.randn(3, 5, dim, generator=g).to(DEVICE)
    norm = _perturbed(create_norm(name, dim, **kwargs), seed=dim)
    assert kernels.use_kernels(x)
    y, dx, dp = _run(norm, x, dy)
    monkeypatch.setenv("REPLIB_TRITON", "0")  # the switch back to eager
    assert not kernels.use_kernels(x)
    y0, dx0, dp0 = _run(norm, x, dy)
    torch.testing.assert_close(y, y0, **TOL)
    torch.testing.assert_close(dx, dx0, **TOL)
    assert dp.keys() == dp0.keys()
    for n in dp0:
        torch.testing.assert_close(dp[n], dp0[n], **TOL, msg=lambda m: f"grad of {n}: {m}")


def test_kernels_run_only_where_asked(kernels_on, monkeypatch):
    """The dispatch really reaches the kernel (a spy), and never for CPU tensors by default."""
    calls = []
    real = kernels.rms_norm
    monkeypatch.setattr(kernels, "rms_norm", lambda *a: calls.append(1) or real(*a))
    norm = create_norm("rmsnorm", 8).to(DEVICE)
    norm(torch.randn(2, 8, device=DEVICE))
    assert calls == [1]
    monkeypatch.setattr(kernels, "KERNEL_DEVICES", {"cuda"})
    assert not kernels.use_kernels(torch.randn(2, 8))  # a CPU tensor takes the eager path
    assert not kernels.use_kernels(torch.randn(0, 8, device=DEVICE))  # nothing to launch


def test_bhyt_block_shared_statistic_gradients(kernels_on, monkeypatch):
    """BHyT blocks pass a differentiable rstd (the exact r1 and approximate r2): a whole BHyTGPT's
    loss and every parameter's gradient agree with the eager model."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=11, n_layer=2, d_model=8, n_head=2, seq_len=6, norm="rmsnorm")
    model = BHyTGPT(cfg).to(DEVICE)
    idx = torch.randint(0, 11, (2, 6), device=DEVICE)

    def grads():
        model.zero_grad(set_to_none=True)
        loss = model(idx, idx)[1]
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                               if p.grad is not None}

    loss, g = grads()
    monkeypatch.setenv("REPLIB_TRITON", "0")
    loss0, g0 = grads()
    torch.testing.assert_close(loss, loss0, **TOL)
    assert g.keys() == g0.keys() and any(".lam" in n for n in g0)
    for n in g0:
        torch.testing.assert_close(g[n], g0[n], **TOL, msg=lambda m: f"grad of {n}: {m}")
