"""Mix-LN chapter runners (replib.experiments.mixln) and the spec's reference checks."""
import math

import numpy as np
import pytest
import torch

from replib.data import lm_eval_windows
from replib.experiments import mixln
from replib.nn import GPTConfig, TinyGPT, hidden_states
from replib.nn.transformer import Block


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: a second intra-op thread only adds overhead (and stalls on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


IDX = torch.randint(0, 256, (3, 12), generator=torch.Generator().manual_seed(0))


def small(variant, alpha=None, n_layer=8, **kw):
    torch.manual_seed(0)
    cfg = mixln.mix_config(variant, n_layer=n_layer, d_model=16, n_head=2, seq_len=12,
                           mix_alpha=alpha, **kw)
    return TinyGPT(cfg).double().eval()


@pytest.mark.parametrize("alpha,ref", [(0.0, "Pre-LN"), (1.0, "Post-LN")])
def test_mix_endpoints_are_pre_and_post_exactly(alpha, ref):
    base, mix = small(ref), small("Mix-LN", alpha)
    mix.load_state_dict(base.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(mix(IDX)[0], base(IDX)[0], rtol=0, atol=0)


def test_mix_differs_from_both_endpoints():
    pre, post, mix = small("Pre-LN"), small("Post-LN"), small("Mix-LN")
    for other in (pre, post):
        other.load_state_dict(mix.state_dict())
        with torch.no_grad():
            assert (mix(IDX)[0] - other(IDX)[0]).abs().max() > 1e-6  # float64: far above rounding


def test_norm_count_and_parameters_match_pre_ln():
    models = [small(v) for v in mixln.VARIANTS]
    for m in models:
        norms = [n for n, _ in m.named_modules() if n.endswith(("norm1", "norm2", "norm_f"))]
        assert len(norms) == 2 * 8 + 1
        assert m.num_params() == models[0].num_params()
        assert m.cfg.final_norm and m.cfg.norm == "rmsnorm"


@pytest.mark.parametrize("n_layer,posts", [(12, [0, 1, 2]), (24, list(range(6))), (4, [0]), (3, [])])
def test_only_leading_floor_alpha_l_blocks_are_post(n_layer, posts):
    m = TinyGPT(mixln.mix_config("Mix-LN", n_layer=n_layer, d_model=8, n_head=2, seq_len=4))
    assert [i for i, b in enumerate(m.blocks) if b.placement == "post"] == posts
    assert all(b.placement == "pre" for b in m.blocks[len(posts):])


def test_post_block_output_has_unit_rms():
    mix = small("Mix-LN")
    hs = hidden_states(mix, IDX)
    for h in hs[1:3]:  # blocks 0 and 1 are Post-LN for L = 8
        torch.testing.assert_close(h.pow(2).mean(-1).sqrt(), torch.ones_like(h[..., 0]),
                                   rtol=1e-4, atol=1e-4)


def test_repo_init():
    m = TinyGPT(mixln.mix_config("Mix-LN", n_layer=2, d_model=256, n_head=4, seq_len=16))
    assert mixln.REPO_EMBED_STD == pytest.approx(0.63246, abs=1e-5)
    assert float(m.tok_emb.weight.detach().std()) == pytest.approx(0.63246, abs=0.01)
    assert float(m.blocks[1].mlp.proj.weight.detach().std()) == pytest.approx(0.02, abs=0.002)  # no depth scaling


def test_gradient_norms_are_logged_before_clipping():
    data = torch.randint(0, 256, (4000,))
    val = (IDX, IDX)
    run = mixln.run_variant("Mix-LN", 0, data, val, n_layer=4, d_model=16, n_head=2, seq_len=12,
                            batch_size=4, steps=2, grad_clip=1e-6, log_every=1, progress=False)
    assert [s for s, _ in run.grad_log] == [1, 2]
    assert min(min(g) for _, g in run.grad_log) > 1e-4  # raw norms, far above the clip


def test_block_gradcheck_float64():
    for idx in (0, 3):  # a Post-LN and a Pre-LN block of a 4-layer Mix-LN model (k = 1)
        cfg = GPTConfig(n_layer=4, d_model=8, n_head=2, seq_len=5, norm="rmsnorm", placement="mix")
        block = Block(cfg, idx).double()
        assert block.placement == ("post" if idx == 0 else "pre")
        x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(block, (x,))


def test_balance_and_deep_mean():
    b = mixln.grad_balance([1.0, 2.0, 3.0, 4.0])
    assert b["cv"] == pytest.approx(np.std([1, 2, 3, 4]) / 2.5)
    assert b["last_over_first"] == 4.0 and b["first_over_last"] == 0.25
    assert mixln.deep_mean(list(range(12))) == pytest.approx(np.mean([8, 9, 10, 11]))
    assert mixln.deep_mean([1.0, 2.0]) == 2.0


def _run(variant, seed, **kw):
    tokens = torch.randint(0, 50, (4000,), generator=torch.Generator().manual_seed(1))
    val = lm_eval_windows(tokens[-600:], 16, 8)
    args = dict(n_layer=4, d_model=16, n_head=2, seq_len=16, batch_size=4, steps=12, log_every=3,
                eval_every=6, progress=False)
    args.update(kw)
    return mixln.run_variant(variant, seed, tokens[:-600], val, **args)


def test_run_variant_is_deterministic_and_measures():
    a, b = _run("Mix-LN", 3), _run("Mix-LN", 3)
    assert a.history.loss == b.history.loss and a.final_loss == b.final_loss
    assert not a.diverged and a.final_loss < a.init_loss
    assert len(a.angular_last) == len(a.angular_all) == len(a.drop_deltas) == 4
    assert all(0 <= d <= 1 for d in a.angular_last)
    assert [s for s, _ in a.grad_log] == [3, 6, 9, 12] and len(a.late_grad_norms()) == 4
    assert a.ppl == pytest.approx(math.exp(a.final_loss))
    assert _run("Mix-LN", 4).history.loss != a.history.loss


def test_divergence_is_recorded_not_dropped():
    r = _run("Post-LN", 0, lr=1e4, grad_clip=None)
    assert r.diverged and math.isnan(r.final_loss) and math.isnan(r.ppl)
