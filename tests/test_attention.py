"""Common tests for every entry of the attention registry, and the exact-softmax oracle.

A kernel module adds its own tests (equal parallel / chunked / recurrent forms, the paper's
equations); these hold for all of them: causality, shapes, float64 gradients, TinyGPT trains.
"""
import pytest
import torch

from replib.errors import ReplibError
from replib.nn import GPTConfig, TinyGPT
from replib.nn.attention import Attention, create_attention, list_attentions, register_attention
from replib.nn.attention.softmax import softmax_attention

D_MODEL, N_HEAD, T = 16, 2, 12


def _build(name, seed=0, seq_len=T):
    torch.manual_seed(seed)
    return create_attention(name, D_MODEL, N_HEAD, seq_len=seq_len)


@pytest.mark.parametrize("name", list_attentions())
def test_shapes_and_finite(name):
    m = _build(name)
    y = m(torch.randn(3, T, D_MODEL))
    assert y.shape == (3, T, D_MODEL) and torch.isfinite(y).all()


@pytest.mark.parametrize("name", list_attentions())
def test_causal_no_future_leak(name):
    """Perturbing token t leaves every output before t unchanged (eval mode: no dropout)."""
    m = _build(name).double().eval()
    x = torch.randn(2, T, D_MODEL, dtype=torch.float64)
    y = m(x)
    for t in (0, T // 2, T - 1):
        x2 = x.clone()
        x2[:, t] += torch.randn(2, D_MODEL, dtype=torch.float64)
        y2 = m(x2)
        assert torch.allclose(y[:, :t], y2[:, :t], atol=1e-10), f"{name} leaks token {t} backwards"
        assert not torch.allclose(y[:, t:], y2[:, t:]), f"{name} ignores token {t}"


@pytest.mark.parametrize("name", list_attentions())
def test_gradcheck_float64(name):
    m = _build(name, seq_len=5).double().eval()
    x = torch.randn(1, 5, D_MODEL, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: m(x), (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", list_attentions())
def test_tinygpt_takes_the_entry_and_learns(name):
    torch.manual_seed(0)
    model = TinyGPT(GPTConfig(vocab_size=11, seq_len=8, n_layer=2, n_head=2, d_model=16,
                              attention=name))
    idx = torch.randint(0, 11, (8, 8))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):  # memorise one batch: the loss must fall
        _, loss = model(idx[:, :-1], idx[:, 1:])
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.8 * first


@pytest.mark.parametrize("name", list_attentions())
def test_rejects_too_long_sequences(name):
    with pytest.raises(ReplibError, match="exceeds seq_len"):
        _build(name)(torch.randn(1, T + 1, D_MODEL))


def test_softmax_entry_equals_written_out_reference():
    m = _build("softmax").double().eval()
    x = torch.randn(2, T, D_MODEL, dtype=torch.float64)
    q, k, v = m.heads(x)
    assert torch.allclose(m.mix(q, k, v), softmax_attention(q, k, v), atol=1e-12)


def test_softmax_reference_row_sums_and_first_token():
    q, k = torch.randn(2, 1, 7, 4, dtype=torch.float64), torch.randn(2, 1, 7, 4, dtype=torch.float64)
    ones = torch.ones(2, 1, 7, 1, dtype=torch.float64)
    assert torch.allclose(softmax_attention(q, k, ones), ones)  # weights sum to one
    v = torch.randn(2, 1, 7, 3, dtype=torch.float64)
    assert torch.allclose(softmax_attention(q, k, v)[..., 0, :], v[..., 0, :])  # token 0 sees itself


def test_default_tinygpt_attention_is_softmax():
    assert isinstance(TinyGPT(GPTConfig(n_layer=1)).blocks[0].attn,
                      type(create_attention("softmax", 8, 2)))


def test_registry_errors_are_one_line():
    with pytest.raises(ReplibError, match="unknown attention 'nope'; valid: .*softmax"):
        create_attention("nope", 8, 2)
    with pytest.raises(ReplibError, match="already registered"):
        register_attention("softmax")(Attention)
    with pytest.raises(ReplibError, match="not divisible"):
        create_attention("softmax", 10, 3)
