"""Reference checks for chapter 03, Layer Normalization (Ba, Kiros & Hinton 2016)."""
import pytest
import torch
import torch.nn.functional as F

from replib.nn import CharLSTM, LSTMClassifier, NormLSTM, NormLSTMCell, TinyCNN, create_norm
from replib.nn.cnn import ChannelLast, ChannelLayerNorm

D = torch.float64


def ln(h, eps=1e-5):
    return create_norm("layernorm", h, eps=eps).to(D)


def test_equals_torch_layernorm_output_and_gradients():
    torch.manual_seed(0)
    ours, ref = ln(12), torch.nn.LayerNorm(12, eps=1e-5).to(D)
    with torch.no_grad():
        for m in (ours, ref):
            m.weight.copy_(torch.linspace(0.5, 2.0, 12, dtype=D))
            m.bias.copy_(torch.linspace(-1, 1, 12, dtype=D))
    x1 = torch.randn(5, 12, dtype=D, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    w = torch.randn(5, 12, dtype=D)
    y1, y2 = ours(x1), ref(x2)
    assert torch.allclose(y1, y2, atol=1e-10, rtol=0)
    (y1 * w).sum().backward()
    (y2 * w).sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-10, rtol=0)
    assert torch.allclose(ours.weight.grad, ref.weight.grad, atol=1e-10, rtol=0)
    assert torch.allclose(ours.bias.grad, ref.bias.grad, atol=1e-10, rtol=0)


def test_moments_mean_zero_variance_var_over_var_plus_eps():
    torch.manual_seed(1)
    eps = 1e-5
    x = torch.randn(6, 32, dtype=D) * torch.tensor([1e-3, 3e-3, 0.01, 0.1, 1, 10], dtype=D)[:, None]
    y = ln(32, eps)(x)
    var = x.var(-1, unbiased=False)
    assert torch.allclose(y.mean(-1), torch.zeros(6, dtype=D), atol=1e-10)
    assert torch.allclose(y.var(-1, unbiased=False), var / (var + eps), atol=1e-5, rtol=0)
    assert y.var(-1, unbiased=False)[0] < 0.5  # the eps effect is real for tiny variance


def test_invariances_from_table_1():
    torch.manual_seed(2)
    norm = ln(16, eps=0.0)  # exact invariance needs eps = 0 (or activations with var >> eps)
    W, x = torch.randn(16, 10, dtype=D), torch.randn(4, 10, dtype=D)
    base = norm(x @ W.T)
    assert torch.allclose(norm(x @ (3.7 * W).T), base, atol=1e-12)  # whole-matrix scaling
    v = torch.randn(10, dtype=D)
    assert torch.allclose(norm(x @ (W + v[None, :]).T), base, atol=1e-12)  # re-centering W
    assert torch.allclose(norm(x @ W.T + 2.5), base, atol=1e-12)  # constant shift
    scale = torch.tensor([0.1, 1.0, 5.0, 40.0], dtype=D)[:, None]
    assert torch.allclose(norm((scale * x) @ W.T), base, atol=1e-12)  # per-example input scaling
    W1 = W.clone()
    W1[3] *= 4.0  # a single unit's weight vector: NOT invariant
    assert (norm(x @ W1.T) - base).abs().max() > 1e-2


def test_batch_independence_batch_size_one_and_train_equals_eval():
    torch.manual_seed(3)
    norm = ln(8)
    x = torch.randn(5, 8, dtype=D)
    y = norm(x)
    x2 = x.clone()
    x2[1:] = torch.randn(4, 8, dtype=D) * 100
    assert torch.equal(norm(x2)[0], y[0])
    assert torch.allclose(norm(x[:1]), y[:1], atol=1e-14)
    norm.eval()
    assert torch.equal(norm(x), y)


def test_jacobian_projection_identities():
    torch.manual_seed(4)
    norm = ln(20, eps=0.0)
    a = torch.randn(3, 20, dtype=D, requires_grad=True)
    y = norm(a)
    (y * torch.randn(3, 20, dtype=D)).sum().backward()
    a_hat = y.detach()  # g = 1, b = 0: the output is the normalised input
    assert torch.allclose(a.grad.sum(-1), torch.zeros(3, dtype=D), atol=1e-12)
    assert torch.allclose((a.grad * a_hat).sum(-1), torch.zeros(3, dtype=D), atol=1e-12)


def test_gradcheck_layernorm():
    norm = ln(6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 6, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(norm, (x,))


def test_ln_lstm_wiring():
    H = 5
    cell = NormLSTMCell(3, H, "layernorm")
    assert (cell.norm_x.dim, cell.norm_h.dim, cell.norm_c.dim) == (4 * H, 4 * H, H)
    names = {n for n, _ in cell.named_parameters()}
    assert {"norm_x.weight", "norm_x.bias", "norm_h.weight", "norm_h.bias",
            "norm_c.weight", "norm_c.bias", "bias"} <= names
    torch.manual_seed(5)
    cell = cell.to(D)
    x = torch.randn(4, 3, dtype=D)
    h0, c0 = torch.randn(4, H, dtype=D), torch.randn(4, H, dtype=D) * 3
    h, c = cell(x, (h0, c0))
    # recompute by hand: bias after the two LNs, cell state un-normalised, LN(c) only inside tanh
    a = F.layer_norm(x @ cell.W.weight.T, (4 * H,)) + F.layer_norm(h0 @ cell.U.weight.T, (4 * H,))
    i, f, o, g = (a + cell.bias).chunk(4, -1)
    c_ref = torch.sigmoid(f) * c0 + torch.sigmoid(i) * torch.tanh(g)
    h_ref = torch.sigmoid(o) * torch.tanh(F.layer_norm(c_ref, (H,)))
    assert torch.allclose(c, c_ref, atol=1e-12) and torch.allclose(h, h_ref, atol=1e-12)
    assert c.var(-1, unbiased=False).mean() > 0.05 and c.mean(-1).abs().max() > 1e-3
    # bias after the LNs: changing it shifts the pre-activations (it would cancel inside an LN)
    with torch.no_grad():
        cell.bias[:H] += 1.0
    assert not torch.allclose(cell(x, (h0, c0))[1], c)


@pytest.mark.parametrize("norm", ["none", "layernorm"])
def test_lstm_batch_of_one_equals_batch_of_many(norm):
    torch.manual_seed(6)
    rnn = NormLSTM(3, 6, norm).to(D)
    x = torch.randn(4, 7, 3, dtype=D)
    out, (h, c) = rnn(x)
    out1, (h1, c1) = rnn(x[2:3])
    assert torch.allclose(out1, out[2:3], atol=1e-12)
    assert torch.allclose(c1, c[2:3], atol=1e-12)
    x2 = x.clone()
    x2[0] *= 50
    assert torch.allclose(rnn(x2)[0][2], out[2], atol=1e-12)


def test_sequence_model_matches_stepwise_cell():
    torch.manual_seed(7)
    for norm in ("none", "layernorm", "batchnorm"):
        rnn = NormLSTM(3, 4, norm).to(D)
        x = torch.randn(5, 6, 3, dtype=D)
        out, _ = rnn(x)
        state = None
        for t in range(6):
            state = rnn.cell(x[:, t], state)
            assert torch.allclose(state[0], out[:, t], atol=1e-12), norm


def test_bn_lstm_uses_batch_statistics_per_step():
    torch.manual_seed(8)
    rnn = NormLSTM(3, 4, "batchnorm").to(D)
    x = torch.randn(6, 5, 3, dtype=D)
    out = rnn(x)[0]
    x2 = x.clone()
    x2[1:] = torch.randn(5, 5, 3, dtype=D)
    assert not torch.allclose(rnn(x2)[0][0], out[0])  # example 0 depends on the rest of the batch
    rnn.eval()  # running estimates: now batch-independent
    ev = rnn(x)[0]
    assert torch.allclose(rnn(x[:1])[0], ev[:1], atol=1e-12)


@pytest.mark.parametrize("norm", ["none", "layernorm", "batchnorm"])
def test_gradcheck_lstm_cell(norm):
    torch.manual_seed(9)
    cell = NormLSTMCell(3, 2, norm).to(D)
    x = torch.randn(4, 3, dtype=D, requires_grad=True)
    h = torch.randn(4, 2, dtype=D, requires_grad=True)
    c = torch.randn(4, 2, dtype=D, requires_grad=True)

    def f(x, h, c):
        for m in cell.modules():  # keep BN's running estimates out of the repeated evaluations
            if hasattr(m, "momentum"):
                m.momentum = 0.0
        return cell(x, (h, c))

    assert torch.autograd.gradcheck(f, (x, h, c))


def test_gradcheck_sequence_models():
    torch.manual_seed(10)
    rnn = NormLSTM(2, 2, "layernorm").to(D)
    x = torch.randn(2, 3, 2, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: rnn(x)[0], (x,))


def test_models_shapes_and_determinism():
    torch.manual_seed(11)
    a = LSTMClassifier(8, 16, 10, "layernorm")(torch.randn(3, 8, 8))
    assert a.shape == (3, 10)
    torch.manual_seed(12)
    m1 = CharLSTM(20, 4, 8, "layernorm")
    torch.manual_seed(12)
    m2 = CharLSTM(20, 4, 8, "layernorm")
    idx = torch.randint(0, 20, (2, 5))
    assert torch.equal(m1(idx), m2(idx)) and m1(idx).shape == (2, 5, 20)
    with pytest.raises(Exception):
        NormLSTMCell(3, 4, "groupnorm")


def test_cnn_layernorm_is_per_example_over_chw():
    torch.manual_seed(13)
    norm = ChannelLayerNorm(4).to(D)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 4, 5, 5, dtype=D, requires_grad=True)
    y = norm(x)
    ref = F.group_norm(x, 1, norm.weight, norm.bias, eps=1e-5)
    assert torch.allclose(y, ref, atol=1e-12)
    z = F.layer_norm(x, (4, 5, 5), eps=1e-5)
    assert torch.allclose(z.flatten(1).mean(1), torch.zeros(3, dtype=D), atol=1e-12)
    x2 = x.detach().clone()
    x2[1:] *= 100
    assert torch.allclose(norm(x2)[0], y[0])
    assert torch.autograd.gradcheck(norm, (x,))


def test_cnn_batchnorm_equals_torch_batchnorm2d():
    torch.manual_seed(14)
    ours, ref = ChannelLast(create_norm("batchnorm", 4)).to(D), torch.nn.BatchNorm2d(4).to(D)
    x = torch.randn(6, 4, 3, 3, dtype=D)
    assert torch.allclose(ours(x), ref(x), atol=1e-10)
    assert torch.allclose(ours.norm.running_var, ref.running_var, atol=1e-10)


@pytest.mark.parametrize("norm", ["none", "batchnorm", "layernorm"])
def test_tiny_cnn(norm):
    torch.manual_seed(15)
    net = TinyCNN(10, norm).to(D)
    x = torch.randn(4, 64, dtype=D)
    assert net(x).shape == (4, 10)
    assert net.conv1.out_channels == 16 and net.conv2.out_channels == 32
    if norm == "layernorm":
        net.eval()
        assert torch.allclose(net(x[:1]), net(x)[:1], atol=1e-12)


def test_speedup_ratio_and_censoring():
    from replib.experiments.layernorm import speedup_ratio
    from replib.train import History

    def hist(losses, every=10):
        h = History(loss=[0.0] * every * len(losses))
        h.evals = [(every * (k + 1), {"loss": v}) for k, v in enumerate(losses)]
        return h

    base = hist([3.0, 2.0, 1.5, 1.2])  # target 1.2, reached at step 40
    assert speedup_ratio(hist([2.0, 1.1, 1.0, 0.9]), base) == (0.5, True)
    assert speedup_ratio(base, base) == (1.0, True)
    assert speedup_ratio(hist([2.5, 2.0, 1.9, 1.8]), base) == (1.0, False)  # censored at budget
    diverged = hist([2.0])
    diverged.diverged_at = 15
    assert speedup_ratio(diverged, base)[1] is False


def test_runners_report_validation_and_test_and_the_sweep_adapters():
    import math

    from replib import lr_sweep
    from replib.data import load_tabular
    from replib.experiments.layernorm import (at_epoch, carve_validation, cnn_sweep_runner, run_char_lm,
                                              run_mlp, run_seq_digits, sweep_runner)
    dv = carve_validation(load_tabular("digits", test_size=0.2, seed=0), 0.2, seed=0)
    assert len(dv.y_train) + len(dv.y_val) == 1437 and len(dv.y_test) == 360
    store = {}
    sw = lr_sweep(["none", "layernorm"], [1e-3, 3e-3], [0], sweep_runner(
        run_seq_digits, store, data=dv, hidden=8, steps=6, batch_size=16, eval_every=3, grad_clip=5.0,
        device="cpu", progress=False), select_on="val", progress=False)
    h = store["layernorm", 3e-3, 0]
    assert {"val_loss", "val_error", "test_loss", "test_error"} <= set(h.evals[-1][1])
    r = sw.runs["layernorm"][3e-3][0]
    assert r["val"] == h.final("val_loss") and r["test"] == h.final("test_loss") and len(r["curve"]) == 2
    tokens = torch.arange(2000) % 23
    val, test = (tokens[:40].view(4, 10), tokens[1:41].view(4, 10)), (tokens[50:90].view(4, 10), tokens[51:91].view(4, 10))
    hc = run_char_lm("layernorm", 0, tokens, val, test, 23, hidden=8, d_embed=4, steps=4, batch_size=4,
                     seq_len=10, lr=1e-3, eval_every=2, grad_clip=5.0, device="cpu", progress=False)
    assert set(hc.evals[-1][1]) == {"val_loss", "test_loss"} and hc.final("val_loss") != hc.final("test_loss")
    out = run_mlp("layernorm", 128, 1e-3, 0, dv, width=16, depth=1, epochs=2, device="cpu")
    assert 0 <= out["val"] <= 100 and 0 <= out["test"] <= 100 and len(out["curve"]) == 2
    cnn_store = {}
    run = cnn_sweep_runner(dv, cnn_store, early_epoch=1, epochs=2, batch_size=256, device="cpu")
    r = run("batchnorm", 1e-3, 0)
    hist = cnn_store["batchnorm", 1e-3, 0]
    assert r["val"] == at_epoch(hist, "val_loss", 1) and r["test"] == at_epoch(hist, "test_loss", 1)
    assert len(r["curve"]) == 2 and math.isnan(at_epoch(hist, "val_loss", 3))
