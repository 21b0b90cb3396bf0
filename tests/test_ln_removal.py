"""LayerNorm removal (Baroni et al. 2025): FakeLayerNorm, the schedule, folding, the runners."""
import copy

import pytest
import torch

from replib.errors import ReplibError
from replib.nn import GPTConfig, TinyGPT
from replib.nn.ln_removal import (
    FakeLayerNorm,
    Passthrough,
    apply_events,
    calibrate_std,
    convert_to_fake,
    fake_norms,
    fold_ln_free,
    is_ln_free,
    removal_schedule,
    remove_all_now,
)
from replib.nn.norms import LayerNorm


def _ln(dim=8, **kw):
    g = torch.Generator().manual_seed(0)
    ln = FakeLayerNorm(dim, **kw)
    with torch.no_grad():
        ln.weight.copy_(torch.randn(dim, generator=g))
        ln.bias.copy_(torch.randn(dim, generator=g))
    return ln


def _model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    m = TinyGPT(GPTConfig(vocab_size=257, seq_len=16, n_layer=2, n_head=2, d_model=16))
    with torch.no_grad():  # non-trivial LN affine parameters
        for mod in m.modules():
            if isinstance(mod, LayerNorm):
                mod.weight.add_(0.3 * torch.randn_like(mod.weight))
                mod.bias.add_(0.1 * torch.randn_like(mod.bias))
    return m.to(dtype)


def _batches(seed=0, B=4, T=16):
    g = torch.Generator().manual_seed(seed)
    while True:
        x = torch.randint(0, 257, (B, T), generator=g)
        yield x, x


def test_real_mode_equals_torch_layernorm():
    ln = _ln(8)
    ref = torch.nn.LayerNorm(8, eps=1e-5)
    ref.load_state_dict({"weight": ln.weight.data, "bias": ln.bias.data})
    x = torch.randn(3, 5, 8)
    assert torch.equal(ln(x), ref(x))


def test_fake_mode_formula_affine_and_shift_invariant():
    ln = _ln(8).double()
    ln.real_std.fill_(1.7)
    ln.make_fake()
    ln.bos_special = False
    ln.eval()
    x, y = torch.randn(2, 3, 4, 8, dtype=torch.float64)
    expect = (x - x.mean(-1, keepdim=True)) / 1.7 * ln.weight + ln.bias
    torch.testing.assert_close(ln(x), expect, atol=1e-12, rtol=0)
    g = lambda v: ln(v) - ln(torch.zeros_like(v))  # noqa: E731
    a, c = 2.5, -0.7
    torch.testing.assert_close(g(a * x + c * y), a * g(x) + c * g(y), atol=1e-12, rtol=0)
    torch.testing.assert_close(ln(x + 3.0), ln(x), atol=1e-12, rtol=0)  # centering kept
    # a real LN is not affine: scaling the input leaves its output unchanged
    real = _ln(8).double()
    assert not torch.allclose(real(2 * x) - real(torch.zeros_like(x)), 2 * (real(x) - real(torch.zeros_like(x))))


def test_ema_update_and_frozen_scalar_equals_estimate():
    ln = _ln(8, momentum=0.9, bos_position=False)
    ln.real_std.fill_(3.0)
    ln.train()
    sigma0 = 0.5
    x = torch.randn(64, 8)
    x = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True))
    x = x * (sigma0**2 - 1e-5) ** 0.5  # per-token sigma = sqrt(var + eps) = sigma0 exactly
    k = 7
    for _ in range(k):
        ln(x)
    expect = 0.9**k * 3.0 + (1 - 0.9**k) * sigma0
    assert abs(float(ln.real_std) - expect) < 1e-6
    ln.make_fake()
    assert float(ln.fake_std_main) == float(ln.real_std)
    ln.eval()  # eval forwards do not move the estimate
    ln(torch.randn(5, 8) * 10)
    assert abs(float(ln.real_std) - expect) < 1e-6


def test_calibration_sets_plain_average_std_and_bos_separately():
    m = convert_to_fake(_model())
    calibrate_std(m, _batches(), 3)
    lnf = m.norm_f
    xs = []
    h = m.norm_f.register_forward_pre_hook(lambda mod, a: xs.append(a[0]))
    b = _batches()
    m.eval()
    with torch.no_grad():
        for _ in range(3):
            m(next(b)[0])
    h.remove()
    sig = [torch.sqrt(x.var(-1, unbiased=False) + 1e-5) for x in xs]
    main = sum(float(s[:, 1:].mean()) for s in sig) / 3
    bos = sum(float(s[:, 0].mean()) for s in sig) / 3
    assert abs(float(lnf.real_std) - main) < 1e-5 and abs(float(lnf.real_bos_std) - bos) < 1e-5
    remove_all_now(m)
    assert float(lnf.fake_std_main) == float(lnf.real_std)


@pytest.mark.parametrize("mode", ["real", "fake", "fake-no-bos"])
def test_gradcheck_float64(mode):
    ln = _ln(5).double()
    ln.eval()
    ln.real_std.fill_(0.8)
    ln.real_bos_std.fill_(2.1)
    if mode != "real":
        ln.make_fake()
        ln.bos_special = mode == "fake"  # position 0 keeps its own scalar while the schedule runs
    x = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    w = ln.weight.detach().clone().requires_grad_()
    b = ln.bias.detach().clone().requires_grad_()
    f = lambda x, w, b: torch.func.functional_call(ln, {"weight": w, "bias": b}, (x,))  # noqa
    assert torch.autograd.gradcheck(f, (x, w, b))


def test_schedule_reproduces_gpt2_small():
    s = removal_schedule(12)
    assert (s.start_ln2, s.start_ln1qk, s.start_ln1v, s.start_lnf, s.start_eot, s.start_bos) == \
        (20, 44, 68, 104, 106, 116)
    kinds = [k for ev in s.events.values() for k, _ in ev]
    assert kinds.count("ln2") == kinds.count("ln1qk") == kinds.count("ln1v") == 12


def test_conversion_is_exact_and_v_only_keeps_attention_pattern():
    m = _model()
    x = next(_batches())[0]
    ref = m(x)[0]
    c = convert_to_fake(copy.deepcopy(m))
    c.eval()
    assert torch.equal(c(x)[0], ref)
    assert isinstance(c.blocks[0].norm1, Passthrough)
    # only the V path fake: q and k (hence the attention pattern) match the real-LN model
    calibrate_std(c, _batches(), 2)
    blk, rblk = c.blocks[0], m.blocks[0]
    blk.attn.ln.make_fake("v")
    h = torch.randn(2, 16, 16)
    n = rblk.attn.qkv.out_features // 3
    qk_real = rblk.attn.qkv(rblk.norm1(h))[..., : 2 * n]
    qk_fake = torch.nn.functional.linear(blk.attn.ln.normalise(h, "qk"),
                                         blk.attn.attn.qkv.weight[: 2 * n], blk.attn.attn.qkv.bias[: 2 * n])
    torch.testing.assert_close(qk_fake, qk_real, atol=1e-6, rtol=0)
    assert not torch.allclose(blk.attn.ln.normalise(h, "v"), rblk.norm1(h), atol=1e-3)


def _run_full_schedule(m):
    convert_to_fake(m)
    calibrate_std(m, _batches(), 2)
    s = removal_schedule(2, start=1, gap_ln2=1, gap_ln1qk=1, gap_ln1v=1, gap_lnf=1, gap_eot=1)
    m.train()
    b = _batches(1)
    for step in range(s.last_step + 1):
        apply_events(m, s, step)
        assert is_ln_free(m) == (step >= s.start_bos)
        m(next(b)[0])  # EMA moves while the schedule runs
    m.eval()
    return m


def test_after_removal_no_data_dependent_normalisation():
    m = _run_full_schedule(_model(dtype=torch.float64))
    assert is_ln_free(m)
    assert not any(isinstance(mod, (LayerNorm, torch.nn.LayerNorm)) for mod in m.modules())
    for name, ln in fake_norms(m).items():
        before = ln.real_std.clone()
        g = lambda v: ln(v) - ln(torch.zeros_like(v))  # noqa: E731
        x, y = torch.randn(2, 3, 16, 16, dtype=torch.float64)
        for path in ln.paths:
            gp = lambda v: ln.normalise(v, path) - ln.normalise(torch.zeros_like(v), path)  # noqa
            torch.testing.assert_close(gp(3 * x - 2 * y), 3 * gp(x) - 2 * gp(y), atol=1e-10, rtol=0)
        torch.testing.assert_close(g(x * 5), 5 * g(x), atol=1e-10, rtol=0)
        assert torch.equal(ln.real_std, before), name  # eval: no statistics are taken


def test_folding_matches_fake_model_float64():
    m = _run_full_schedule(_model(dtype=torch.float64))
    folded = fold_ln_free(m)
    assert not any(isinstance(mod, FakeLayerNorm) for mod in folded.modules())
    x = next(_batches(3))[0]
    torch.testing.assert_close(folded(x)[0], m(x)[0], atol=1e-10, rtol=0)
    with pytest.raises(ReplibError):
        fold_ln_free(convert_to_fake(_model()))


def test_convert_rejects_wrong_models():
    with pytest.raises(ReplibError):
        convert_to_fake(TinyGPT(GPTConfig(n_layer=1, d_model=8, n_head=2, norm="rmsnorm")))
    m = convert_to_fake(_model())
    with pytest.raises(ReplibError):
        convert_to_fake(m)


def test_runner_direct_effect_and_determinism():
    from replib.experiments.ln_removal import (
        FT_ARMS,
        bos_eval_windows,
        direct_effect_error,
        ft_runner,
        instant_removal_ce,
        pretrain,
    )
    from replib.data import lm_splits
    tokens = torch.randint(0, 256, (3000,), generator=torch.Generator().manual_seed(0))
    train, val, test = lm_splits(tokens, 16, 2, 2, held_out=1 / 6, windows=bos_eval_windows)
    assert torch.equal(train, tokens[:2500])
    assert val[0][:, 0].eq(256).all() and test[0][:, 0].eq(256).all()
    assert not torch.equal(val[0], test[0])  # two halves of the held-out text
    assert torch.equal(val[0], bos_eval_windows(tokens[2500:2750], 16, 2)[0])
    base, _ = pretrain(0, tokens[:2500], n_layer=2, d_model=16, n_head=2, seq_len=16, steps=3,
                       batch_size=2, lr=1e-3, device="cpu")
    sched = removal_schedule(2, 1, 1, 1, 1, 1, 1)
    keep = {}
    run = ft_runner({0: base}, tokens[:2500], val, test, schedule=sched, steps=12, batch_size=2,
                    seq_len=16, eval_every=6, calib_batches=1, device="cpu", keep=keep)
    a, b = run(FT_ARMS[1], 6e-4, 0), run(FT_ARMS[1], 6e-4, 0)
    assert a == b and set(a) >= {"val", "test", "curve"} and len(a["curve"]) == 3
    removed = keep[(FT_ARMS[1], 6e-4, 0)]
    assert is_ln_free(removed)
    vanilla_out = run(FT_ARMS[0], 6e-4, 0)
    vanilla = keep[(FT_ARMS[0], 6e-4, 0)]
    assert not any(isinstance(m, FakeLayerNorm) for m in vanilla.modules())
    assert vanilla_out["test"] != a["test"]
    official = run(FT_ARMS[2], 6e-4, 0)
    off = keep[(FT_ARMS[2], 6e-4, 0)]
    assert is_ln_free(off) and official["test"] != a["test"]
    for ln in fake_norms(off).values():  # frozen at the calibration, whatever the running estimate did
        for path in ln.paths:
            assert float(getattr(ln, f"fake_std_{path}")) == float(ln.init_std)
    kw = dict(seed=0, batch_size=2, seq_len=16, calib_batches=1, device="cpu")
    assert instant_removal_ce(base, tokens[:2500], test, **kw) == instant_removal_ce(base, tokens[:2500], test, **kw)
    assert direct_effect_error(removed, val[0][:1]) < 1e-10
    assert direct_effect_error(vanilla, val[0][:1]) > 1e-3


def test_freeze_initial_uses_the_pre_finetuning_estimate_and_no_bos_scalar():
    m = convert_to_fake(_model(), freeze="initial", bos_special=False)
    calibrate_std(m, _batches(), 2)
    ln = m.blocks[0].norm2
    init = float(ln.init_std)
    assert init == float(ln.real_std)
    m.train()
    m(next(_batches(5))[0])  # training forwards move the running estimate ...
    assert float(ln.real_std) != init
    ln.make_fake()
    assert float(ln.fake_std_main) == init  # ... but the frozen value is the initial one
    assert not ln.bos_special
    # our default freezes at the running estimate
    r = convert_to_fake(_model())
    calibrate_std(r, _batches(), 2)
    r.train()
    r(next(_batches(5))[0])
    r.blocks[0].norm2.make_fake()
    assert float(r.blocks[0].norm2.fake_std_main) == float(r.blocks[0].norm2.real_std)
    assert r.blocks[0].norm2.bos_special
    with pytest.raises(ReplibError):
        FakeLayerNorm(4, freeze="sometimes")


def test_max_slope_says_whether_the_budget_rule_can_fail():
    from replib.experiments.ln_removal import max_slope
    assert max_slope([1e5, 1e6], [50, 500]) == pytest.approx(1.0)
    assert max_slope([149376, 1777152], [50, 100, 200, 400]) < 1 < max_slope([149376, 1777152], [25, 400])


def test_findings_are_written_from_the_numbers():
    from replib.claims import Claim, Verdict
    from replib.experiments.ln_removal import FT_ARMS, findings_markdown
    claims = {c: Claim(c, "", "", "", Verdict.REPLICATED, "") for c in ("C1", "C4")}
    ce = {"vanilla FT": [2.0, 2.1, 2.2], "removal FT": [2.02, 2.13, 2.21], "instant": [2.3, 2.4, 2.5],
          FT_ARMS[2]: [2.2, 2.3, 2.4]}
    text = findings_markdown(claims, ce=ce, pretrained=[2.1, 2.2, 2.3], best={"vanilla FT": 6e-4, "removal FT": 6e-4},
                             err_free=[1e-14], err_ln=[0.5], official=FT_ARMS[2], scale="cpu")
    assert "+0.020" in text and "worse in 3 of 3" in text
    assert "the official default is worse on our models" in text
