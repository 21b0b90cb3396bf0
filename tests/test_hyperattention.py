"""HyperAttention (chapter 17): the spec's reference checks, sortLSH, the estimator, causality."""
import math

import pytest
import torch

from replib.errors import ReplibError
from replib.experiments import hyperattention as ha
from replib.nn.attention import create_attention
from replib.nn.attention.hyper import (_sampled_part, exact_attention, gray_code, hyper_attention,
                                       lsh_sort_keys, merge_attentions)
from replib.nn.attention.softmax import softmax_attention

F64 = torch.float64


def _qkv(B=1, H=2, n=64, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, n, D, generator=g, dtype=F64) for _ in range(3)]


def test_gray_code_values_and_unit_hamming_steps():
    assert gray_code(2).tolist() == [0, 1, 3, 2]
    assert gray_code(3).tolist() == [0, 1, 3, 2, 6, 7, 5, 4]
    for r in range(1, 8):
        g = gray_code(r)
        assert sorted(g.tolist()) == list(range(2 ** r))
        assert all(bin(int(a) ^ int(b)).count("1") == 1 for a, b in zip(g[:-1], g[1:]))


def test_sort_keys_paper_order_is_hamming_sorted_and_code_order_is_not_for_r3():
    """'paper': neighbouring sort keys differ in one hyperplane; the code's g(id) breaks it at r=3."""
    r, D = 3, 3
    proj = torch.eye(D, dtype=F64)  # bit j = [x_j > 0]: every id reachable
    x = torch.tensor([[(i >> j & 1) * 2 - 1 for j in range(r)] for i in range(2 ** r)], dtype=F64)
    for gray, unit in (("paper", True), ("code", False)):
        keys = lsh_sort_keys(x, proj, gray)
        ids = torch.arange(2 ** r)[torch.argsort(keys)]  # bucket ids in sorted order
        steps = [bin(int(a) ^ int(b)).count("1") for a, b in zip(ids[:-1], ids[1:])]
        assert (max(steps) == 1) == unit, (gray, ids.tolist())


def test_same_hash_for_positive_rescaling_and_shared_by_queries_and_keys():
    x = torch.randn(50, 8, dtype=F64)
    proj = torch.randn(8, 7, dtype=F64)
    assert torch.equal(lsh_sort_keys(x, proj), lsh_sort_keys(3.7 * x, proj))  # angular
    assert not torch.equal(lsh_sort_keys(x, proj), lsh_sort_keys(-x, proj))


def test_min_seq_len_above_n_is_exact_with_lse():
    q, k, v = _qkv()
    proj = torch.randn(8, 7, dtype=F64)
    for causal in (False, True):
        o, lse = hyper_attention(q, k, v, proj, causal=causal, min_seq_len=100)
        assert torch.allclose(o, softmax_attention(q, k, v, causal=causal), atol=1e-12)
    s = q @ k.transpose(-2, -1) / math.sqrt(8)
    assert torch.allclose(hyper_attention(q, k, v, proj, causal=False, min_seq_len=100)[1], s.logsumexp(-1))


@pytest.mark.parametrize("query_blocks", ["bucket", "rank"])
def test_one_block_without_samples_is_exact(query_blocks):
    q, k, v = _qkv(n=50)  # 50 keys, one padded block of 64
    o, _ = hyper_attention(q, k, v, torch.randn(8, 7, dtype=F64), causal=False, block_size=64,
                           sample_size=0, min_seq_len=1, query_blocks=query_blocks)
    assert torch.allclose(o, softmax_attention(q, k, v, causal=False), atol=1e-12)


def test_merge_equals_exact_over_union_of_key_sets():
    q, k, v = _qkv(n=40)
    o1, l1 = exact_attention(q, k[..., :13, :], v[..., :13, :], 8 ** -0.5)
    o2, l2 = exact_attention(q, k[..., 13:, :], v[..., 13:, :], 8 ** -0.5)
    o, lse = merge_attentions(o1, l1, o2, l2)
    o_ex, l_ex = exact_attention(q, k, v, 8 ** -0.5)
    assert torch.allclose(o, o_ex, atol=1e-12) and torch.allclose(lse, l_ex, atol=1e-12)


def test_causal_recursion_with_exact_leaves_and_whole_blocks_is_exact():
    """n=64, leaves of 16 exact; off-diagonal blocks of 32 keys with b=32 (one block, no samples)."""
    q, k, v = _qkv(n=64)
    o, _ = hyper_attention(q, k, v, torch.randn(8, 7, dtype=F64), causal=True, block_size=32,
                           sample_size=0, min_seq_len=16)
    assert torch.allclose(o, softmax_attention(q, k, v), atol=1e-12)


def test_causal_recursion_handles_odd_lengths_exactly():
    q, k, v = _qkv(n=37)
    o, _ = hyper_attention(q, k, v, torch.randn(8, 7, dtype=F64), causal=True, block_size=64,
                           sample_size=0, min_seq_len=5)
    assert o.shape == q.shape and torch.allclose(o, softmax_attention(q, k, v), atol=1e-12)


def test_sampled_normaliser_is_unbiased_outside_the_diagonal_blocks():
    """E[exp(lse_res)] = sum of exp-scores whose key lies outside the query's block (2000 draws,
    within 4 Monte-Carlo standard errors per row)."""
    n, D, b, m, draws = 48, 4, 16, 8, 2000
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, n, D, generator=g, dtype=F64) for _ in range(3))
    q_block = torch.arange(n).view(1, 1, n) // b  # queries in key order: block i // b
    rep = lambda t: t.expand(draws, *t.shape[1:])  # noqa: E731  (one batch row per draw)
    _, lse = _sampled_part(rep(q), rep(k), rep(v), rep(q_block), b, m, D ** -0.5, g)
    scores = (q @ k.transpose(-2, -1) * D ** -0.5).exp()[0, 0]
    outside = (q_block[0, 0][:, None] != (torch.arange(n) // b)[None, :])
    target = (scores * outside).sum(-1)
    est = lse.exp()[:, 0]
    se = est.std(0) / math.sqrt(draws)  # Monte-Carlo standard error per row
    assert ((est.mean(0) - target).abs() < 4 * se).all()
    assert ((est.mean(0) - target).abs() / target).median() < 0.05  # the spec's 5 %, typical row


def test_module_is_causal_deterministic_in_eval_and_gradients_match_finite_differences():
    torch.manual_seed(0)
    m = create_attention("hyper", 16, 2, seq_len=40, block_size=4, sample_size=4, min_seq_len=4).double().eval()
    x = torch.randn(2, 40, 16, dtype=F64)
    y = m(x)
    assert torch.equal(y, m(x))  # eval: the same samples every call
    for t in (5, 21, 39):
        x2 = x.clone()
        x2[:, t] += torch.randn(2, 16, dtype=F64)
        y2 = m(x2)
        assert torch.allclose(y[:, :t], y2[:, :t], atol=1e-10)
        assert not torch.allclose(y[:, t:], y2[:, t:])
    q, k, v = (t.requires_grad_() for t in _qkv(H=1, n=12, D=3))
    proj = torch.randn(3, 7, dtype=F64)
    fn = lambda q, k, v: hyper_attention(q, k, v, proj, block_size=2, sample_size=2, min_seq_len=3,  # noqa
                                         generator=torch.Generator().manual_seed(0))[0]
    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-5)
    m.train()
    assert not torch.equal(m(x), m(x))  # training: a new draw per call


def test_the_codes_rank_query_blocks_leak_the_future_and_bucket_blocks_do_not():
    kw = dict(n=256, D=16, block=16, sample=16, r=7, min_seq_len=16)
    assert ha.causal_leak(query_blocks="bucket", **kw) < 1e-12
    assert ha.causal_leak(query_blocks="rank", **kw) > 1e-6


def test_structured_error_bounded_and_sorting_beats_random_blocks():
    """On clustered inputs (d=64, n=512, b=m=32): every variant's Theorem-1 error is finite and < 2;
    LSH-sorted block-only beats random blocks (the sort finds the large entries)."""
    make = lambda n, g: ha.clustered_qkv(1, 1, n, 64, strength=8, noise=0.2, generator=g, dtype=F64)  # noqa
    err = ha.approximation_errors(make, [512], [0, 1], hash_seeds=2, block=32, sample=32, r=7)
    mean = {v: sum(err[v][512]["spectral"]) / 2 for v in err}
    assert all(0 < e < 2 for e in mean.values()), mean
    assert mean["block only"] < mean["random blocks"], mean


def test_errors_are_zero_for_the_exact_output_and_patching_zero_layers_changes_nothing():
    q, k, v = _qkv(n=32, D=8)
    spec, frob = ha.errors_one(q, k, v, softmax_attention(q, k, v, causal=False))
    assert max(spec) < 1e-12 and max(frob) < 1e-12
    from replib.nn import GPTConfig, TinyGPT
    model = TinyGPT(GPTConfig(vocab_size=11, seq_len=16, n_layer=2, n_head=2, d_model=16)).eval()
    idx = torch.randint(0, 11, (2, 16))
    same = ha.patch_hyper(model, 2, block_size=4, sample_size=0, min_seq_len=100)  # exact below min
    assert torch.allclose(model(idx)[0], same(idx)[0], atol=1e-6)
    approx = ha.patch_hyper(model, 1, block_size=4, sample_size=4, min_seq_len=4)
    assert not torch.allclose(model(idx)[0], approx(idx)[0], atol=1e-6)


def test_rejects_bad_options():
    with pytest.raises(ReplibError, match="query_blocks"):
        create_attention("hyper", 16, 2, query_blocks="nope")
    with pytest.raises(ReplibError, match="block_size > 0 or sample_size > 0"):
        q, k, v = _qkv()
        hyper_attention(q, k, v, torch.randn(8, 7, dtype=F64), causal=False, block_size=0, sample_size=0,
                        min_seq_len=1)
