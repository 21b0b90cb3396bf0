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
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


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
