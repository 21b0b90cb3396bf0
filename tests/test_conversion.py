"""Chapter 10 (Jiang et al. 2023): the exact Pre-LN -> Pre-RMSNorm -> Pre-CRMSNorm conversion."""
import copy

import pytest
import torch
import torch.nn.functional as F

from replib.errors import ReplibError
from replib.nn import GPTConfig, TinyGPT, create_norm
from replib.nn.conversion import (
    EmbeddingZeroMean,
    LinearZeroMeanOutput,
    fold_norm_affine,
    randomize_affine_,
    recenter_writers,
    residual_stream,
    to_pre_crmsnorm,
    to_pre_rmsnorm,
    zero_mean_writers,
)

D = torch.float64


def zero_mean(*shape, seed=0):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)
    return x - x.mean(-1, keepdim=True)


def random_gpt(seed=0, n_layer=4, d=64, n_head=4, seq_len=32, offset=1.0, **kw):
    torch.manual_seed(seed)
    m = TinyGPT(GPTConfig(vocab_size=100, seq_len=seq_len, n_layer=n_layer, n_head=n_head,
                          d_model=d, **kw)).double()
    return randomize_affine_(m, torch.Generator().manual_seed(seed), writer_offset=offset).eval()


def tokens(seed=1, b=3, t=32):
    return torch.randint(0, 100, (b, t), generator=torch.Generator().manual_seed(seed))


def logits(m, idx):
    with torch.no_grad():
        return m(idx)[0]


def test_layernorm_equals_rmsnorm_on_zero_mean_input():
    x = zero_mean(5, 7, 64)
    ln, rms = create_norm("layernorm", 64, affine=False), create_norm("rmsnorm", 64, affine=False)
    torch.testing.assert_close(ln(x), rms(x), rtol=1e-12, atol=1e-12)
    y = x + 0.3  # not zero-mean: they differ
    assert (ln(y) - rms(y)).abs().max() > 1e-2


def test_crmsnorm_on_compressed_vector_equals_rmsnorm_head():
    x = zero_mean(4, 64)
    rms, crms = create_norm("rmsnorm", 64, affine=False), create_norm("crmsnorm", 63, affine=False)
    torch.testing.assert_close(crms(x[:, :63]), rms(x)[:, :63], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x[:, 63], -x[:, :63].sum(-1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("c", [-3.0, 0.5, 100.0])
def test_layernorm_is_shift_invariant(c):
    x = zero_mean(6, 64) + torch.randn(6, 1, dtype=D)
    ln = create_norm("layernorm", 64, affine=False)
    torch.testing.assert_close(ln(x + c), ln(x), rtol=1e-9, atol=1e-9)


def test_folding_affine_into_linear():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 64, generator=g, dtype=D)
    gamma, beta = 1 + torch.rand(64, generator=g, dtype=D), torch.randn(64, generator=g, dtype=D)
    W, b = torch.randn(32, 64, generator=g, dtype=D), torch.randn(32, generator=g, dtype=D)
    n = F.layer_norm(x, (64,))
    torch.testing.assert_close(F.linear(gamma * n + beta, W, b), F.linear(n, W * gamma, b + W @ beta))


def test_fold_keeps_the_model_function_and_removes_affine():
    m = random_gpt()
    f = fold_norm_affine(m).eval()
    assert f.blocks[0].norm1.weight is None and f.head.bias is not None
    torch.testing.assert_close(logits(f, tokens()), logits(m, tokens()), rtol=1e-10, atol=1e-10)


def test_recentred_writers_output_zero_mean_for_every_input():
    m = recenter_writers(fold_norm_affine(random_gpt()))
    g = torch.Generator().manual_seed(5)
    for blk in m.blocks:
        for lin in (blk.attn.proj, blk.mlp.proj):
            y = lin(torch.randn(10, lin.in_features, generator=g, dtype=D) * 10)
            assert y.mean(-1).abs().max() < 1e-12
    for x in residual_stream(m, tokens()):
        assert x.mean(-1).abs().max() < 1e-12
    before = residual_stream(random_gpt(), tokens())  # the unconverted stream is far from zero-mean
    assert max(x.mean(-1).abs().max() for x in before) > 0.1


def test_compressed_reader_identity():
    x = zero_mean(9, 64)
    W = torch.randn(16, 64, generator=torch.Generator().manual_seed(2), dtype=D)
    torch.testing.assert_close((W[:, :63] - W[:, 63:]) @ x[:, :63].T, W @ x.T)


@pytest.mark.parametrize("seed,kw", [(0, {}), (1, dict(n_layer=2, d=32, n_head=2)),
                                     (2, dict(norm_kwargs={"eps": 1e-6}))])
def test_end_to_end_three_models_agree_float64(seed, kw):
    ln = random_gpt(seed, **kw)
    assert (ln.blocks[1].norm2.weight - 1).abs().min() > 0 and ln.norm_f.bias.abs().min() > 0
    rms, crms = to_pre_rmsnorm(ln).eval(), to_pre_crmsnorm(ln).eval()
    assert rms.cfg.norm == "rmsnorm" and crms.cfg.norm == "crmsnorm"
    d = ln.cfg.d_model
    assert (crms.cfg.d_model, crms.cfg.d_attn, crms.cfg.d_ff) == (d - 1, d, 4 * d)
    idx = tokens(seed)
    a, b, c = logits(ln, idx), logits(rms, idx), logits(crms, idx)
    assert a.abs().max() > 0.1  # not a trivially small output
    for x, y in ((a, b), (a, c), (b, c)):
        torch.testing.assert_close(x, y, rtol=1e-7, atol=1e-10)
    # A naive swap (RMSNorm without re-centring) is NOT equivalent: the conversion is needed.
    naive = to_pre_rmsnorm(ln, recenter=False).eval()
    assert (logits(naive, idx) - a).abs().max() > 1e-3


def test_conversion_needs_pre_ln():
    with pytest.raises(ReplibError):
        to_pre_rmsnorm(TinyGPT(GPTConfig(n_layer=1, d_model=16, n_head=2, norm="rmsnorm")))


@pytest.mark.parametrize("name,dim", [("rmsnorm", 7), ("crmsnorm", 6)])
def test_gradcheck_rms_norms(name, dim):
    for affine in (False, True):
        norm = create_norm(name, dim, affine=affine).double()
        x = torch.randn(3, dim, dtype=D, requires_grad=True)
        assert torch.autograd.gradcheck(norm, (x,))


def test_rmsnorm_matches_torch_and_crmsnorm_matches_formula():
    x = torch.randn(4, 10, dtype=D, requires_grad=True)
    rms = create_norm("rmsnorm", 10, affine=False)
    torch.testing.assert_close(rms(x), F.rms_norm(x, (10,), eps=1e-5))
    crms = create_norm("crmsnorm", 10, affine=False)
    full = torch.cat([x, -x.sum(-1, keepdim=True)], -1)  # the zero-mean vector it stands for
    ref = F.rms_norm(full, (11,), eps=1e-5)[:, :10]
    torch.testing.assert_close(crms(x), ref)
    gx, = torch.autograd.grad(crms(x).square().sum(), x)
    gref, = torch.autograd.grad(ref.square().sum(), x)
    torch.testing.assert_close(gx, gref)


def test_gradcheck_zero_mean_writers():
    torch.manual_seed(0)
    lin = LinearZeroMeanOutput(5, 4).double()
    emb = EmbeddingZeroMean(6, 4).double()
    x = torch.randn(3, 5, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: F.linear(x, w - w.mean(0), b - b.mean()),
                                    (x, lin.weight, lin.bias))
    assert lin(x).mean(-1).abs().max() < 1e-12
    assert emb(torch.tensor([[0, 5, 2]])).mean(-1).abs().max() < 1e-12


def _train(model, steps=8, seed=0):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, 100, (4, 17), generator=g)
        _, loss = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_zero_mean_reparam_training_equivalence_and_stream_stays_zero_mean():
    ln = recenter_writers(fold_norm_affine(random_gpt(n_layer=2, d=32, n_head=2, seq_len=16)))
    rms = zero_mean_writers(to_pre_rmsnorm(ln))
    plain = to_pre_rmsnorm(ln)  # re-centred once, but not reparameterised
    assert [n for n, _ in ln.named_parameters()] == [n for n, _ in rms.named_parameters()]
    l_ln, l_rms, _ = _train(ln.train()), _train(rms.train()), _train(plain.train())
    assert max(abs(a - b) for a, b in zip(l_ln, l_rms)) < 1e-10
    idx = tokens(t=16)
    for x in residual_stream(rms, idx):
        assert x.mean(-1).abs().max() < 1e-12
    # Adam's per-coordinate steps move plain re-centred writers off the zero-mean subspace
    assert plain.blocks[0].mlp.proj.weight.mean(0).abs().max() > 1e-4
    torch.testing.assert_close(logits(ln.eval(), idx), logits(rms.eval(), idx), rtol=1e-8, atol=1e-10)


def test_conversion_is_deterministic_and_consumes_no_rng():
    m = random_gpt(4)
    state = torch.random.get_rng_state()
    a = to_pre_crmsnorm(m)
    assert torch.equal(state, torch.random.get_rng_state())
    b = to_pre_crmsnorm(copy.deepcopy(m))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    torch.testing.assert_close(logits(random_gpt(7), tokens()), logits(random_gpt(7), tokens()),
                               rtol=0, atol=0)
