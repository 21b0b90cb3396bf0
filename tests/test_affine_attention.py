"""Affine-scaled attention (chapter 19): the spec's reference checks on random float64 inputs."""
import pytest
import torch

from replib.nn import GPTConfig, TinyGPT
from replib.nn.attention import create_attention
from replib.nn.attention.affine import (affine_scaled_attention, affine_weights, causal_mean,
                                        softmax_weights)
from replib.nn.attention.softmax import softmax_attention

B, H, T, D, DM = 2, 3, 7, 4, 12


def _qkv(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, D, generator=g, dtype=torch.float64) for _ in range(3)]


def _alpha(seed=1):
    return torch.rand(B, H, T, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_identity_setting_is_softmax():
    q, k, v = _qkv()
    ones = torch.ones(B, H, T, dtype=torch.float64)
    out = affine_scaled_attention(q, k, v, ones, torch.ones(H, dtype=torch.float64))
    torch.testing.assert_close(out, softmax_attention(q, k, v), atol=1e-12, rtol=0)


def test_alpha_equal_to_ema_is_a_pure_rescale():
    q, k, _ = _qkv()
    bar = torch.tensor([0.3, 0.7, 1.4], dtype=torch.float64)
    p = softmax_weights(q, k)
    a = affine_weights(p, bar.view(1, H, 1).expand(B, H, T), bar)
    torch.testing.assert_close(a, bar.view(1, H, 1, 1) * p, atol=1e-14, rtol=0)


def test_rows_sum_to_the_ema_and_masked_entries_stay_zero():
    q, k, _ = _qkv()
    bar = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    a = affine_weights(softmax_weights(q, k), 2 * _alpha(), bar)
    torch.testing.assert_close(a.sum(-1), bar.view(1, H, 1).expand(B, H, T), atol=1e-13, rtol=0)
    assert (a.triu(1) == 0).all()


def test_spec_worked_example_has_a_negative_weight():
    p = torch.tensor([[[[1.0, 0.0], [0.1, 0.9]]]], dtype=torch.float64)
    a = affine_weights(p, torch.tensor([[[0.8, 0.8]]], dtype=torch.float64),
                       torch.tensor([0.4], dtype=torch.float64))
    torch.testing.assert_close(a[0, 0, 1], torch.tensor([-0.12, 0.52], dtype=torch.float64))


def test_closed_form_entry_equals_explicit_matrix():
    torch.manual_seed(0)
    m = create_attention("affine", DM, H, d_attn=H * D, seq_len=T).double().eval()
    with torch.no_grad():
        m.alpha_weight.normal_()
        m.alpha_bias.normal_()
        m.alpha_bar.copy_(torch.tensor([0.1, 0.6, 1.3]))
    x = torch.randn(B, T, DM, dtype=torch.float64)
    q, k, v = m.heads(x)
    ref = affine_scaled_attention(q, k, v, m.alpha(x), m.alpha_bar)
    torch.testing.assert_close(m.mix(q, k, v, x=x), ref, atol=1e-12, rtol=0)


def test_causal_mean():
    v = torch.randn(1, 1, 5, 2, dtype=torch.float64)
    for i in range(5):
        torch.testing.assert_close(causal_mean(v)[0, 0, i], v[0, 0, : i + 1].mean(0))


def test_ema_update_in_train_and_frozen_in_eval():
    torch.manual_seed(0)
    m = create_attention("affine", DM, H, d_attn=H * D, seq_len=T).double()
    with torch.no_grad():
        m.alpha_weight.normal_()
    x = torch.randn(B, T, DM, dtype=torch.float64)
    old = m.alpha_bar.clone()
    q, k, v = m.heads(x)
    expected_out = affine_scaled_attention(q, k, v, m.alpha(x), old)  # forward sees the old EMA
    out = m.train().mix(q, k, v, x=x)
    torch.testing.assert_close(out, expected_out, atol=1e-12, rtol=0)
    a = m.alpha(x).mean((0, 2))
    torch.testing.assert_close(m.alpha_bar, 0.9 * old + 0.1 * a, atol=1e-14, rtol=0)
    before = m.alpha_bar.clone()
    m.eval()(x)
    assert torch.equal(m.alpha_bar, before)


def test_alpha_is_one_half_at_init_also_inside_tinygpt():
    model = TinyGPT(GPTConfig(vocab_size=11, seq_len=8, n_layer=2, n_head=2, d_model=16,
                              attention="affine"))
    x = torch.randn(3, 8, 16)
    for block in model.blocks:
        assert torch.equal(block.attn.alpha(x), torch.full((3, 2, 8), 0.5))
        assert torch.equal(block.attn.alpha_bar, torch.full((2,), 0.5))


def test_gradcheck_explicit_form():
    q, k, v = (t[:1, :2, :4].clone().requires_grad_() for t in _qkv())
    alpha = _alpha()[:1, :2, :4].clone().requires_grad_()
    bar = torch.tensor([0.4, 0.8], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *a: affine_scaled_attention(*a, bar), (q, k, v, alpha))


@pytest.mark.parametrize("t", [1, 3, 6])
def test_entry_is_causal_in_training_mode(t):
    """In training the EMA moves after the forward, so within one pass outputs stay causal."""
    torch.manual_seed(0)
    m = create_attention("affine", DM, H, d_attn=H * D, seq_len=T).double().train()
    with torch.no_grad():
        m.alpha_weight.normal_()
    x = torch.randn(B, T, DM, dtype=torch.float64)
    bar = m.alpha_bar.clone()
    y = m(x)
    m.alpha_bar.copy_(bar)
    x2 = x.clone()
    x2[:, t] += 1.0
    torch.testing.assert_close(m(x2)[:, :t], y[:, :t], atol=1e-12, rtol=0)


# ---- chapter 19's verdict rules (replib.experiments.affine_attention) on known answers

from replib import Health, Verdict  # noqa: E402
from replib.claims import Stat  # noqa: E402
from replib.experiments import affine_attention as aa  # noqa: E402

HEALTH = Health(reference=5.0, margin=0.1)


def _m(**kw):
    return {k: Stat.of(v) for k, v in kw.items()}


def test_quality_rule_tiers():
    rule = aa.quality_rule(HEALTH)
    soft = [3.0, 3.1, 3.2]
    assert rule(_m(softmax=soft, sink=soft, affine=[2.9, 3.0, 3.1])) is Verdict.REPLICATED
    assert rule(_m(softmax=soft, sink=[2.8, 2.9, 3.0], affine=[2.9, 3.0, 3.1])) is Verdict.PARTIAL
    assert rule(_m(softmax=soft, sink=soft, affine=[3.1, 3.2, 3.3])) is Verdict.NOT_REPLICATED
    assert rule(_m(softmax=soft, sink=soft, affine=[6.0, 6.0, 6.0])) is Verdict.INCONCLUSIVE  # health gate


def test_stability_and_sink_mass_rules():
    st = aa.stability_rule()
    ok = _m(**{"affine events": [0, 0, 0], "softmax events": [2, 2, 3],
               "affine grad std": [0.1, 0.2, 0.1], "softmax grad std": [0.3, 0.5, 0.4]})
    assert st(ok) is Verdict.REPLICATED
    ok["affine events"] = Stat.of([5, 5, 6])
    assert st(ok) is Verdict.NOT_REPLICATED
    sm = aa.sink_mass_rule(HEALTH)
    m = _m(softmax=[3.0, 3.1, 3.2], affine=[3.0, 3.1, 3.2], **{
        "affine first-token": [0.05, 0.06, 0.04], "softmax first-token": [0.2, 0.25, 0.3]})
    assert sm(m) is Verdict.REPLICATED
