"""Sinks, gated attention, GatedNorm and PreAffine (chapter 13): the spec's reference checks."""
import math

import pytest
import torch
import torch.nn.functional as F

from replib.nn import GPTConfig, TinyGPT, create_norm, hidden_states
from replib.nn.attention import create_attention
from replib.nn.attention.gated import default_rank, sink_weights
from replib.nn.attention.softmax import softmax_attention

B, H, T, D, DM = 2, 3, 6, 4, 12


def _qkv(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, D, generator=g, dtype=torch.float64) for _ in range(3)]


def test_sink_weights_sum_to_one_with_the_sink():
    q, k, _ = _qkv()
    p, p_sink = sink_weights(q, k, torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(p.sum(-1) + p_sink, torch.ones(B, H, T, dtype=torch.float64))
    assert (p.triu(1) == 0).all() and (p_sink > 0).all()


def test_sink_scales_every_weight_by_one_over_one_plus_e_s_over_z():
    q, k, v = _qkv()
    s = torch.tensor([0.5, 1.5, 3.0], dtype=torch.float64)
    p, _ = sink_weights(q, k, s)
    scores = (q @ k.transpose(-2, -1) / math.sqrt(D)).masked_fill(
        ~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    z = scores.exp().sum(-1, keepdim=True)
    scale = 1 / (1 + s.exp().view(1, H, 1, 1) / z)
    torch.testing.assert_close(p, scale * scores.softmax(-1), atol=1e-13, rtol=0)


def test_sink_at_minus_infinity_is_softmax_and_entry_matches():
    q, k, v = _qkv()
    p, _ = sink_weights(q, k, torch.full((H,), -1e4, dtype=torch.float64))
    torch.testing.assert_close(p @ v, softmax_attention(q, k, v), atol=1e-12, rtol=0)
    torch.manual_seed(0)
    m = create_attention("sink", DM, H, d_attn=H * D, seq_len=T).double().eval()
    with torch.no_grad():
        m.sink.normal_()
    x = torch.randn(B, T, DM, dtype=torch.float64)
    q, k, v = m.heads(x)
    torch.testing.assert_close(m.mix(q, k, v), sink_weights(q, k, m.sink)[0] @ v)


def test_gates_in_open_unit_interval_and_half_gate_halves_softmax():
    torch.manual_seed(0)
    m = create_attention("gated", DM, H, d_attn=H * D, seq_len=T).double().eval()
    x = torch.randn(B, T, DM, dtype=torch.float64) * 50
    g = m.gates(x)
    assert g.shape == (B, H, T, D) and (g > 0).all() and (g < 1).all()
    q, k, v = m.heads(x)
    manual = softmax_attention(q, k, v) * torch.sigmoid(x @ m.gate.weight.T).view(B, T, H, D).transpose(1, 2)
    torch.testing.assert_close(m.mix(q, k, v, x=x), manual, atol=1e-12, rtol=0)
    with torch.no_grad():
        m.gate.weight.zero_()
    torch.testing.assert_close(m.mix(q, k, v, x=x), 0.5 * softmax_attention(q, k, v), atol=1e-12, rtol=0)


def test_gatednorm_equation_and_zero_up_gives_half_rmsnorm():
    torch.manual_seed(0)
    n = create_norm("gatednorm", 32, eps=1e-6).double()
    with torch.no_grad():
        n.weight.normal_()
    x = torch.randn(4, 5, 32, dtype=torch.float64) * 3
    y = x / (x.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt() * n.weight
    gate = torch.sigmoid(F.silu(y @ n.down.weight.T) @ n.up.weight.T)
    torch.testing.assert_close(n(x), gate * y, atol=1e-12, rtol=0)
    with torch.no_grad():
        n.up.weight.zero_()
    assert torch.equal(n(x), 0.5 * F.rms_norm(x, (32,), n.weight, 1e-6))


def test_gatednorm_parameter_count_and_rank():
    assert default_rank(2048) == 16 and default_rank(128) == 8 and default_rank(64) == 4
    n = create_norm("gatednorm", 2048)
    assert sum(p.numel() for p in n.parameters()) - 2048 == 2 * 2048 * 16 == 65_536


def test_preaffine_ones_is_rmsnorm_and_scale_invariant():
    torch.manual_seed(0)
    x = torch.randn(3, 7, 16, dtype=torch.float64)
    n = create_norm("preaffine", 16, eps=0.0).double()
    torch.testing.assert_close(n(x), F.rms_norm(x, (16,), None, 0.0), atol=1e-14, rtol=0)
    with torch.no_grad():
        n.pre_weight.uniform_(0.1, 5.0)
        n.weight.normal_()
    for c in (0.01, 3.0, 1e3):
        torch.testing.assert_close(n(c * x), n(x), atol=1e-12, rtol=0)


def test_outlier_rescales_the_other_coordinates_through_rmsnorm():
    """x with one coordinate M: the others come out as x_i sqrt(d)/sqrt(M^2 + s^2), falling in M."""
    d, x = 16, torch.randn(16, dtype=torch.float64)
    rest, s2 = x[1:], x[1:].pow(2).sum()
    outs = []
    for M in (1.0, 10.0, 100.0, 1000.0):
        z = torch.cat([torch.tensor([M], dtype=torch.float64), rest])
        y = F.rms_norm(z, (d,), None, 0.0)[1:]
        torch.testing.assert_close(y, rest * math.sqrt(d) / math.sqrt(M ** 2 + s2))
        outs.append(y.abs().max().item())
    assert all(a > b for a, b in zip(outs, outs[1:]))


@pytest.mark.parametrize("norm,attention", [("gatednorm", "gated"), ("preaffine", "gated")])
def test_tinygpt_with_gatednorm_or_preaffine_runs(norm, attention):
    torch.manual_seed(0)
    model = TinyGPT(GPTConfig(vocab_size=11, seq_len=8, n_layer=2, n_head=2, d_model=32,
                              norm=norm, attention=attention))
    idx = torch.randint(0, 11, (2, 8))
    _, loss = model(idx, idx)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())


# ---- chapter 13's instruments and verdict rules (replib.experiments.sinks) on known answers

from replib import Health, Verdict  # noqa: E402
from replib.claims import Stat  # noqa: E402
from replib.experiments import sinks as sk  # noqa: E402


def test_quantize_symmetric_levels_and_fake_quant_restores_weights():
    w = torch.tensor([[0.7, -0.35, 0.05, 0.0]])
    q = sk.quantize_symmetric(w, bits=4)  # scale 0.1: 7, -3.5 -> -4 (half to even), 0.5 -> 0
    torch.testing.assert_close(q, torch.tensor([[0.7, -0.4, 0.0, 0.0]]))
    torch.manual_seed(0)
    model = TinyGPT(GPTConfig(vocab_size=11, seq_len=8, n_layer=2, n_head=2, d_model=16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    idx = torch.randint(0, 11, (2, 8))
    with torch.no_grad():
        full = model(idx)[0]
        with sk.fake_quant(model, 4):
            quant = model(idx)[0]
        assert not torch.allclose(full, quant)
        assert torch.equal(model(idx)[0], full)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_clip_hook_only_inside_its_context():
    torch.manual_seed(0)
    model = TinyGPT(GPTConfig(vocab_size=11, seq_len=8, n_layer=2, n_head=2, d_model=16))
    idx = torch.randint(0, 11, (2, 8))
    with sk.clipped_residuals(1e-3):
        assert max(float(h.abs().max()) for h in hidden_states(model, idx)[1:]) == pytest.approx(1e-3)
    assert max(float(h.abs().max()) for h in hidden_states(model, idx)[1:]) > 1e-3


def test_sink_score_first_token_and_spikes_on_known_inputs():
    h = torch.ones(2, 5, 8)
    h[..., 3] = 40.0
    assert sk.residual_sink_score([h]) == pytest.approx(40.0)
    maps = [torch.full((1, 1, 4, 4), 0.25).tril()]
    maps[0][0, 0, 2:, 0] = 0.7
    assert sk.first_token_mass(maps, min_pos=2) == pytest.approx(0.7)
    loss = [1.0 + 0.01 * (i % 3) for i in range(80)]
    loss[60] = 3.0
    assert sk.mad_spikes(loss) == 1 and sk.mad_spikes(loss[:60]) == 0


def test_attention_maps_rows_sum_to_one_or_leave_the_sink_its_share():
    torch.manual_seed(0)
    for name in ("softmax", "gated", "sink"):
        model = TinyGPT(GPTConfig(vocab_size=11, seq_len=8, n_layer=2, n_head=2, d_model=16, attention=name))
        maps = sk.attention_maps(model, torch.randint(0, 11, (2, 8)))
        rows = torch.stack(maps).sum(-1)
        assert (rows <= 1 + 1e-6).all() and ((rows - 1).abs() < 1e-5).all() == (name != "sink")


def _m(**kw):
    return {k: Stat.of(v) for k, v in kw.items()}


HEALTH = Health(reference=5.0, margin=0.1)


def test_gatednorm_rule_tiers_and_sink_condition():
    rule = sk.gatednorm_rule(HEALTH)
    base = dict(GA=[3.0, 3.1, 3.2], **{"GA max act": [100.0, 120.0, 90.0], "baseline sink score": [9, 9, 9]})
    full = _m(**base, **{"GA+GatedNorm": [2.9, 3.0, 3.1], "GA+GatedNorm max act": [10.0, 11.0, 12.0]})
    assert rule(full) is Verdict.REPLICATED
    part = _m(**base, **{"GA+GatedNorm": [2.9, 3.0, 3.1], "GA+GatedNorm max act": [100.0, 130.0, 95.0]})
    assert rule(part) is Verdict.PARTIAL
    worse = _m(**base, **{"GA+GatedNorm": [3.1, 3.2, 3.3], "GA+GatedNorm max act": [100.0, 130.0, 95.0]})
    assert rule(worse) is Verdict.NOT_REPLICATED
    no_sink = {**worse, "baseline sink score": Stat.of([2.0, 3.0, 2.5])}
    assert rule(no_sink) is Verdict.NOT_TESTABLE


def test_dyt_and_clip_rules():
    m = _m(baseline=[3.0, 3.1, 3.2], DyT=[3.3, 3.45, 3.5], **{
        "DyT max act": [5.0, 6.0, 5.5], "baseline max act": [50.0, 60.0, 40.0],
        "DyT diverged at baseline lr": [0, 0, 0], "baseline sink score": [9, 9, 9]})
    assert sk.dyt_rule(HEALTH, margin_bpb=0.072)(m) is Verdict.REPLICATED
    m["DyT"] = Stat.of([3.0, 3.1, 3.2])
    assert sk.dyt_rule(HEALTH, margin_bpb=0.072)(m) is Verdict.NOT_REPLICATED
    c = _m(baseline=[3.0, 3.1, 3.2], clip10=[3.1, 3.25, 3.3], **{"baseline sink score": [9, 9, 9]})
    assert sk.clip_rule(HEALTH)(c) is Verdict.REPLICATED
    c["clip10"] = Stat.of([3.0, 3.1, 3.2])
    assert sk.clip_rule(HEALTH)(c) is Verdict.NOT_REPLICATED
    c["clip10"] = Stat.of([3.0, None, 3.2])
    assert sk.clip_rule(HEALTH)(c) is Verdict.REPLICATED  # a diverged clipped seed is the claimed harm
