"""LayerNorm Scaling runners and depth profiles (chapter 11, Sun et al. 2025)."""
import math

import pytest
import torch

from replib.data import lm_splits
from replib.experiments import depth as dp
from replib.nn import TinyGPT
from replib.nn.instrument import residual_stats

SMALL = dict(n_layer=6, d_model=32, n_head=2, seq_len=16)


def _pair(seed=0, n_layer=6):
    """A Pre-LN model and an LNS model holding the very same weights."""
    torch.manual_seed(seed)
    pre = TinyGPT(dp.depth_config(False, **{**SMALL, "n_layer": n_layer})).eval()
    lns = TinyGPT(dp.depth_config(True, **{**SMALL, "n_layer": n_layer})).eval()
    lns.load_state_dict(pre.state_dict())
    return pre, lns


def _tokens(n=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n,), generator=g)


def test_factors_match_the_spec_for_twelve_layers():
    expected = [1, 0.7071, 0.5774, 0.5, 0.4472, 0.4082, 0.3780, 0.3536, 0.3333, 0.3162, 0.3015, 0.2887]
    assert dp.lns_factors(12) == pytest.approx(expected, abs=5e-5)
    model = TinyGPT(dp.depth_config(True, n_layer=12, d_model=16, n_head=2, seq_len=8))
    assert [b.scale for b in model.blocks] == pytest.approx(expected, abs=5e-5)


def test_config_is_the_llama_flavoured_plain_init_one():
    cfg = dp.depth_config(True, **SMALL)
    assert cfg.norm == "rmsnorm" and cfg.placement == "pre" and cfg.layer_scaling
    assert not cfg.scaled_init and not cfg.bias
    pre, lns = _pair()
    assert pre.num_params() == lns.num_params()
    # plain init: output projections are drawn with std 0.02, not 0.02/sqrt(2L)
    torch.manual_seed(1)
    big = TinyGPT(dp.depth_config(True, n_layer=12, d_model=128, n_head=4, seq_len=8))
    assert big.blocks[5].mlp.proj.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_lns_equals_pre_ln_with_scaled_input_projections():
    """No bias: scaling a sub-layer's input by 1/sqrt(l) == scaling its first weight matrix."""
    pre, lns = _pair()
    with torch.no_grad():
        for ell, block in enumerate(pre.blocks, start=1):
            block.attn.qkv.weight.mul_(1 / math.sqrt(ell))
            block.mlp.fc.weight.mul_(1 / math.sqrt(ell))
    idx = _tokens(64).view(4, 16)
    torch.testing.assert_close(lns(idx)[0], pre(idx)[0], rtol=1e-5, atol=1e-6)


def test_lns_changes_the_function_but_not_block_one():
    pre, lns = _pair()
    idx = _tokens(64).view(4, 16)
    assert not torch.allclose(lns(idx)[0], pre(idx)[0], atol=1e-6)
    h = torch.randn(2, 16, SMALL["d_model"])
    torch.testing.assert_close(lns.blocks[0](h), pre.blocks[0](h))


def test_at_init_lns_grows_residual_variance_less_than_pre_ln_for_the_same_weights():
    for seed in (0, 1):
        pre, lns = _pair(seed, n_layer=12)
        idx = _tokens(256, seed).view(8, 32)[:, :16]
        v_pre, v_lns = (residual_stats(m, idx)["variance"] for m in (pre, lns))
        assert v_pre[0] == pytest.approx(v_lns[0])  # same embeddings
        assert dp.variance_growth(v_lns) < dp.variance_growth(v_pre)
        # and the gap opens with depth: every deeper stream has less variance under LNS
        assert all(a < b for a, b in zip(v_lns[2:], v_pre[2:]))


def test_runner_is_deterministic_and_profile_has_per_layer_shapes():
    toks = _tokens()
    train, val_toks = toks[:3500], toks[3500:]
    from replib.data import lm_eval_windows
    val = lm_eval_windows(val_toks, SMALL["seq_len"], 8)
    kw = dict(**SMALL, batch_size=4, steps=6, lr=1e-3, warmup_frac=0.2, eval_every=3,
              grad_clip=None, device="cpu", progress=False)
    a = dp.train_depth_lm("Pre-LN + LNS", 3, train, val, **kw)
    b = dp.train_depth_lm("Pre-LN + LNS", 3, train, val, **kw)
    assert a.history.loss == b.history.loss and a.final_loss == b.final_loss
    assert math.isfinite(a.final_loss)
    prof = dp.depth_profile(a.model, val, probe_windows=4)
    L = SMALL["n_layer"]
    assert len(prof["variance"]) == L + 1
    assert len(prof["angular"]) == len(prof["drop"]) == len(prof["gain"]) == L
    assert all(0 <= d <= 1 for d in prof["angular"])
    assert prof == dp.depth_profile(b.model, val, probe_windows=4)
    # the same seed gives both variants the same initial weights (LNS adds no parameters)
    c = dp.train_depth_lm("Pre-LN", 3, train, val, **{**kw, "steps": 0})
    d0 = dp.train_depth_lm("Pre-LN + LNS", 3, train, val, **{**kw, "steps": 0})
    for (n1, p1), (n2, p2) in zip(c.model.state_dict().items(), d0.model.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_helpers():
    assert dp.thirds([1, 1, 1, 2, 2, 2, 3, 3, 3]) == (1.0, 3.0)
    assert dp.variance_growth([1.0, 2.0, 3.0, 4.0]) == 3.0  # Var(h_3)/Var(h_1): inputs of blocks 3, 1


def test_sweep_runner_keeps_models_and_returns_val_test_curve():
    toks = _tokens()
    train, val, test = lm_splits(toks, SMALL["seq_len"], 4, 4, held_out=0.125)  # the last 500 tokens
    keep = {}
    run = dp.sweep_runner(train, val, test, keep=keep, **SMALL, batch_size=4, steps=4,
                          warmup_frac=0.25, eval_every=2, grad_clip=None, device="cpu", progress=False)
    out = run("Pre-LN + LNS", 1e-3, 0)
    assert set(out) == {"val", "test", "curve", "curve_steps"}
    assert out["curve_steps"] == [2, 4] and out["val"] == out["curve"][-1]
    assert math.isfinite(out["test"]) and out["test"] != out["val"]
    assert keep[("Pre-LN + LNS", 1e-3, 0)].blocks[1].scale == pytest.approx(1 / math.sqrt(2))


def test_addition_task_masks_everything_but_the_answers():
    x, y = dp.addition_task(3, 24, seed=0)
    assert x.shape == y.shape == (3, 24)
    for xi, yi in zip(x, y):
        text = bytes(xi.tolist()).decode()
        for t in range(23):  # y[t] is the byte after x[t]; it is kept only inside an answer
            nxt = xi[t + 1].item()
            if yi[t].item() != -100:
                assert yi[t].item() == nxt
        # every "=" is followed by a trained answer byte, every "+" by an ignored prompt byte
        for t, ch in enumerate(text[:-1]):
            if ch == "=":
                assert yi[t].item() != -100
            if ch == "+":
                assert yi[t].item() == -100
    a, b = dp.addition_task(2, 24, seed=1), dp.addition_task(2, 24, seed=1)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], x[:2])


def test_finetune_sft_is_deterministic_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = TinyGPT(dp.depth_config(True, **SMALL))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = dp.addition_task(32, 16, seed=0)
    val, test = dp.addition_task(4, 16, seed=1), dp.addition_task(4, 16, seed=2)
    kw = dict(lr=1e-3, steps=4, batch_size=4, warmup_frac=0.25, seed=3, device="cpu")
    a, b = dp.finetune_sft(model, data, val, test, **kw), dp.finetune_sft(model, data, val, test, **kw)
    assert a == b and math.isfinite(a["test"]) and len(a["curve"]) == 4
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    ref = dp.answer_unigram(data[1], test[1])
    assert 0 < ref < math.log(256)
    # answer_loss counts answer bytes only
    x, y = test
    logits = model.eval()(x)[0]
    keep = y != -100
    expect = torch.nn.functional.cross_entropy(logits[keep], y[keep]).item()
    assert dp.answer_loss(model, x, y) == pytest.approx(expect, rel=1e-5)


def test_findings_say_a_reversal_in_words():
    from replib.claims import Claim, Verdict
    claims = {c: Claim(c, "", "", "", Verdict.NOT_REPLICATED, "") for c in ("C1", "C2", "C3", "C4")}
    text = dp.findings_markdown(
        claims, test_loss={"Pre-LN": [2.0, 2.1], "LNS": [2.05, 2.2]}, best={"Pre-LN": 1e-3, "LNS": 1e-3},
        growth={"Pre-LN": [100.0, 120.0], "LNS": [10.0, 12.0]},
        ang_last={"Pre-LN": [0.02, 0.03], "LNS": [0.01, 0.01]},
        first_third={"Pre-LN": [0.1, 0.1], "LNS": [0.1, 0.1]},
        last_third={"Pre-LN": [0.01, 0.02], "LNS": [0.001, 0.0]},
        gain_last={"Pre-LN": [1.0, 1.0], "LNS": [1.01, 1.0]},
        sft_loss={"Pre-LN": [1.0, 1.0], "LNS": [1.1, 1.2]}, unigram=3.0, scale="cpu")
    assert "less useful than Pre-LN's" in text and "*less*" in text and "0 of 2" in text
