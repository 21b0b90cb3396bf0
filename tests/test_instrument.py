import math

import pytest
import torch

from replib import ReplibError
from replib.nn import (
    GPTConfig,
    TinyGPT,
    angular_distances,
    block_grad_norms,
    hidden_states,
    layer_drop_deltas,
    residual_stats,
    skip_block,
)

CFG = dict(vocab_size=32, seq_len=12, n_layer=3, n_head=2, d_model=16)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return TinyGPT(GPTConfig(**CFG)).eval()


def test_hidden_states_are_the_stream_the_forward_computes(model):
    x = torch.randint(0, 32, (2, 12))
    hs = hidden_states(model, x)
    assert len(hs) == 4
    h = model.tok_emb(x) + model.pos_emb(torch.arange(12))
    torch.testing.assert_close(hs[0], h)
    for block, after in zip(model.blocks, hs[1:]):
        h = block(h)
        torch.testing.assert_close(after, h)
    assert not model.blocks[0]._forward_pre_hooks and not model.blocks[0]._forward_hooks


def test_residual_stats_match_their_definition(model):
    x = torch.randint(0, 32, (2, 12))
    stats = residual_stats(model, x)
    hs = hidden_states(model, x)
    assert stats["variance"][-1] == pytest.approx(float(hs[-1].var(-1, unbiased=False).mean()))
    assert stats["rms"][0] == pytest.approx(float(hs[0].pow(2).mean().sqrt()))


def test_skip_block_is_identity_and_restores(model):
    x = torch.randint(0, 32, (2, 12))
    full = model(x)[0]
    with skip_block(model, 1):
        hs = hidden_states(model, x)
        torch.testing.assert_close(hs[2], hs[1])
    torch.testing.assert_close(model(x)[0], full)
    with pytest.raises(ReplibError, match="out of range"):
        with skip_block(model, 3):
            pass


def test_layer_drop_and_angular_distance(model):
    x = torch.randint(0, 32, (4, 12))
    deltas = layer_drop_deltas(model, lambda m: m(x, x)[1])
    assert len(deltas) == 3 and all(math.isfinite(d) for d in deltas)
    d = angular_distances(model, x)
    assert len(d) == 3 and all(0 <= v <= 1 for v in d)
    hs = hidden_states(model, x)
    cos = torch.nn.functional.cosine_similarity(hs[0][:, -1].double(), hs[1][:, -1].double(), dim=-1)
    assert d[0] == pytest.approx(float((torch.arccos(cos) / math.pi).mean()))
    with skip_block(model, 2):
        assert angular_distances(model, x)[2] == pytest.approx(0.0, abs=1e-6)


def test_block_grad_norms(model):
    x = torch.randint(0, 32, (2, 12))
    model.train()
    model(x, x)[1].backward()
    norms = block_grad_norms(model)
    ref = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.blocks[1].parameters()))
    assert len(norms) == 3 and norms[1] == pytest.approx(ref, rel=1e-5)


def test_a_model_without_blocks_is_refused():
    with pytest.raises(ReplibError, match="no `blocks`"):
        hidden_states(torch.nn.Linear(2, 2), torch.zeros(1, 2))
