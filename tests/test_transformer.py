import pytest
import torch

from replib import ReplibError, seed_everything, train
from replib.nn import GPTConfig, TinyGPT, list_norms

SMALL = dict(vocab_size=32, seq_len=12, n_layer=2, n_head=2, d_model=16)


@pytest.mark.parametrize("placement", ["pre", "post"])
@pytest.mark.parametrize("norm", list_norms())
def test_every_norm_and_placement_trains_a_step(norm, placement):
    model = TinyGPT(GPTConfig(**SMALL, norm=norm, placement=placement))
    x = torch.randint(0, 32, (3, 12))
    logits, loss = model(x, x)
    assert logits.shape == (3, 12, 32) and torch.isfinite(loss)
    loss.backward()
    # a norm may name parameters that a single-task batch never reaches (AdaB2N's task weights)
    idle = {f"{m_name}.{p_name}" for m_name, m in model.named_modules()
            for p_name in getattr(m, "idle_without_tasks", ())}
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and n not in idle)


def test_placement_changes_the_wiring():
    pre = TinyGPT(GPTConfig(**SMALL, placement="pre"))
    post = TinyGPT(GPTConfig(**SMALL, placement="post"))
    assert type(pre.norm_f).__name__ == "LayerNorm" and type(post.norm_f).__name__ == "Identity"
    post.load_state_dict(pre.state_dict(), strict=False)  # same weights, post has no final norm
    x = torch.randint(0, 32, (2, 12))
    assert not torch.allclose(pre(x)[0], post(x)[0])


def test_post_ln_output_of_each_block_is_normalised():
    model = TinyGPT(GPTConfig(**SMALL, placement="post")).eval()
    h = model.tok_emb(torch.randint(0, 32, (2, 12))) + model.pos_emb(torch.arange(12))
    out = model.blocks[0](h)
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, 12), atol=1e-5, rtol=0)


def test_causal():
    model = TinyGPT(GPTConfig(**SMALL)).eval()
    x = torch.randint(0, 32, (1, 12))
    y = x.clone(); y[0, 8:] = (y[0, 8:] + 1) % 32
    torch.testing.assert_close(model(x)[0][:, :8], model(y)[0][:, :8])


def test_invalid_options():
    with pytest.raises(ReplibError, match="valid: pre, post"):
        GPTConfig(placement="middle")
    with pytest.raises(ReplibError, match="valid:"):
        TinyGPT(GPTConfig(**SMALL, norm="nonorm"))
    with pytest.raises(ReplibError, match="exceeds seq_len"):
        TinyGPT(GPTConfig(**SMALL))(torch.zeros(1, 13, dtype=torch.long))


def _loss_history(seed):
    g = seed_everything(seed)
    model = TinyGPT(GPTConfig(**SMALL))
    data = torch.randint(0, 32, (64, 13), generator=g)
    batches = iter([(data[i:i + 8, :-1], data[i:i + 8, 1:]) for i in range(0, 64, 8)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return train(model, opt, batches, lambda m, b: m(*b)[1], steps=8, progress=False).loss


def test_same_seed_same_loss_history():
    assert _loss_history(1) == _loss_history(1)
    assert _loss_history(1) != _loss_history(2)


@pytest.mark.parametrize("norm", list_norms())
@pytest.mark.parametrize("placement, scaling", [("peri", False), ("mix", False), ("pre", True),
                                                ("peri", True)])
def test_new_placements_and_layer_scaling_train_a_step(norm, placement, scaling):
    model = TinyGPT(GPTConfig(**{**SMALL, "n_layer": 4}, norm=norm, placement=placement,
                              layer_scaling=scaling))
    x = torch.randint(0, 32, (3, 12))
    _, loss = model(x, x)
    loss.backward()
    assert torch.isfinite(loss)


def test_peri_normalises_each_sublayer_output_before_the_residual_add():
    model = TinyGPT(GPTConfig(**SMALL, placement="peri", norm="rmsnorm")).eval()
    b = model.blocks[0]
    h = torch.randn(2, 12, 16)
    expected = h + b.norm1_out(b.attn(b.norm1(h)))
    expected = expected + b.norm2_out(b.mlp(b.norm2(expected)))
    torch.testing.assert_close(b(h), expected)
    assert type(model.norm_f).__name__ == "RMSNorm"


def test_mix_is_post_then_pre_and_keeps_a_final_norm():
    cfg = GPTConfig(**{**SMALL, "n_layer": 8}, placement="mix")
    assert [cfg.block_placement(i) for i in range(8)] == ["post"] * 2 + ["pre"] * 6
    assert cfg.mix_alpha == 0.25 and cfg.final_norm
    cfg = GPTConfig(**{**SMALL, "n_layer": 8}, placement="mix", mix_alpha=0.5)
    assert [TinyGPT(cfg).blocks[i].placement for i in (3, 4)] == ["post", "pre"]


def test_layer_scaling_multiplies_the_normalised_input_by_one_over_sqrt_l():
    base = TinyGPT(GPTConfig(**{**SMALL, "n_layer": 3})).eval()
    lns = TinyGPT(GPTConfig(**{**SMALL, "n_layer": 3}, layer_scaling=True)).eval()
    lns.load_state_dict(base.state_dict())
    assert [b.scale for b in lns.blocks] == [1.0, 1 / 2 ** 0.5, 1 / 3 ** 0.5]
    h = torch.randn(2, 12, 16)
    blk, ref = lns.blocks[2], base.blocks[2]
    expected = h + ref.attn(ref.norm1(h) / 3 ** 0.5)
    expected = expected + ref.mlp(ref.norm2(expected) / 3 ** 0.5)
    torch.testing.assert_close(blk(h), expected)
    torch.testing.assert_close(lns.blocks[0](h), base.blocks[0](h))  # l = 1: unchanged


def test_invalid_combinations_are_clear_errors():
    with pytest.raises(ReplibError, match="needs placement 'pre' or 'peri'"):
        GPTConfig(placement="post", layer_scaling=True)
    with pytest.raises(ReplibError, match="mix_alpha applies to placement 'mix' only"):
        GPTConfig(placement="pre", mix_alpha=0.5)
    with pytest.raises(ReplibError, match=r"\[0, 1\]"):
        GPTConfig(placement="mix", mix_alpha=1.5)


def test_init_options():
    plain = TinyGPT(GPTConfig(**{**SMALL, "n_layer": 8}, scaled_init=False, embed_std=0.632))
    assert abs(float(plain.blocks[0].attn.proj.weight.detach().std()) - 0.02) < 0.004
    assert abs(float(plain.tok_emb.weight.detach().std()) - 0.632) < 0.1
    scaled = TinyGPT(GPTConfig(**{**SMALL, "n_layer": 8}))
    assert float(scaled.blocks[0].attn.proj.weight.detach().std()) < 0.01


def test_embed_scale_is_a_learnable_sqrt_d_on_token_embeddings_only():
    seed_everything(0)
    base = TinyGPT(GPTConfig(**SMALL))
    seed_everything(0)
    scaled = TinyGPT(GPTConfig(**SMALL, embed_scale=True))
    assert base.emb_scale is None
    assert scaled.emb_scale.requires_grad and float(scaled.emb_scale.detach()) == pytest.approx(16 ** 0.5)
    # the scalar draws no random numbers: every other weight is the same for the same seed
    base_sd = base.state_dict()
    assert all(torch.equal(v, base_sd[k]) for k, v in scaled.state_dict().items() if k != "emb_scale")
    idx = torch.randint(0, 32, (3, 12))
    pos = base.pos_emb(torch.arange(12))
    assert torch.allclose(scaled.embed(idx), 16 ** 0.5 * base.tok_emb(idx) + pos)
    assert torch.equal(base.embed(idx), base.tok_emb(idx) + pos)
    _, loss = scaled(idx, idx)
    loss.backward()
    assert scaled.emb_scale.grad is not None and torch.isfinite(scaled.emb_scale.grad)


# ------------------------------------------------------------------ the MLP options
import torch.nn.functional as F  # noqa: E402

from replib.nn.transformer import MLP, MLPS  # noqa: E402

GATE_FNS = {"swiglu": F.silu, "sigmoid-glu": torch.sigmoid, "bilinear": lambda a: a}


@pytest.mark.parametrize("kind", list(GATE_FNS))
def test_gated_mlps_follow_their_equations(kind):
    """W_2 (sigma(W_g x) * W_u x), W_g and W_u the halves of mlp.fc, in float64."""
    torch.manual_seed(0)
    mlp = MLP(GPTConfig(d_model=16, mlp=kind)).double()
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    h = mlp.fc.weight.shape[0] // 2
    g = x @ mlp.fc.weight[:h].T + mlp.fc.bias[:h]
    u = x @ mlp.fc.weight[h:].T + mlp.fc.bias[h:]
    expected = (GATE_FNS[kind](g) * u) @ mlp.proj.weight.T + mlp.proj.bias
    torch.testing.assert_close(mlp(x), expected, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(mlp, (x[:1, :2].clone().requires_grad_(),))


def test_gated_width_is_llama_rule_and_keeps_the_parameters_near_gelu():
    for d in (32, 64, 96, 128):
        gelu, gated = GPTConfig(d_model=d), GPTConfig(d_model=d, mlp="swiglu")
        assert gelu.d_ff == 4 * d and gated.d_ff % 8 == 0 and 8 * d / 3 <= gated.d_ff < 8 * d / 3 + 8
        n = lambda cfg: sum(p.numel() for p in MLP(cfg).parameters())  # noqa: E731
        assert abs(n(gated) / n(gelu) - 1) < 0.1
    assert GPTConfig(d_model=64, mlp="bilinear", d_ff=100).d_ff == 100  # an explicit width wins
    with pytest.raises(ReplibError, match="unknown mlp 'relu'; valid: gelu, swiglu"):
        GPTConfig(mlp="relu")


@pytest.mark.parametrize("kind", MLPS)
def test_every_mlp_learns_a_batch(kind):
    seed_everything(0)
    model = TinyGPT(GPTConfig(vocab_size=32, seq_len=16, n_layer=2, n_head=2, d_model=32, mlp=kind))
    x = torch.randint(0, 32, (4, 17))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss = model(x[:, :-1], x[:, 1:])[1]
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first
