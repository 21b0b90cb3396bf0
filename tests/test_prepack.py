"""Prepacking (chapter 37): packing, the block-diagonal mask, restarted positions, unpacking, and the
equivalence of prepacked and per-prompt prefill and greedy generation."""
import math

import numpy as np
import pytest
import torch

from replib.claims import Stat, Verdict
from replib.errors import ReplibError
from replib.experiments import prepacking as px
from replib.nn import llama
from replib.nn import prepack as pp
from replib.nn.attention.nala import theta_shift
from replib.runtime import torch_threads


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls: two threads on a busy 2-core machine are ~10x slower than one."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return llama.Llama(llama.LlamaConfig(d_model=64, n_layer=2, n_head=4)).eval()


def random_prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (n,), generator=g) for n in lengths]


@pytest.mark.parametrize("seed", range(20))
def test_pack_places_every_prompt_once_within_capacity(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 100, size=int(rng.integers(1, 50))).tolist()
    for capacity in (None, 2 * max(lengths)):
        bins = pp.pack(lengths, capacity)
        cap = capacity or max(lengths)
        assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in b) <= cap for b in bins)
        assert len(bins) >= math.ceil(sum(lengths) / cap)


def test_pack_is_best_fit_decreasing():
    """Longest first, each into the *fullest* bin it fits (binpacking.to_constant_volume's rule):
    with capacity 10, the last 1 joins the 4+4 bin (load 8), where first-fit would put it beside 7."""
    assert pp.pack([4, 7, 1, 4], 10) == [[1], [0, 3, 2]]
    assert pp.pack([5, 5, 5]) == [[0], [1], [2]]  # equal lengths never share a bin at C = max
    with pytest.raises(ReplibError):
        pp.pack([3, 9], capacity=5)


def test_mask_is_block_diagonal_causal_and_positions_restart():
    prompts = random_prompts([1, 7, 3, 12, 5, 12, 2])
    packed = pp.prepack(prompts)
    for r in range(len(packed.tokens)):
        seg = packed.segment[r]
        for t in range(len(seg)):
            for s in range(len(seg)):
                assert bool(packed.mask[r, t, s]) == (seg[t] >= 0 and seg[t] == seg[s] and s <= t)
    for i, p in enumerate(prompts):
        r, s, n = int(packed.row[i]), int(packed.start[i]), int(packed.length[i])
        assert n == p.numel() - 1  # the final token is held out for the first decode step
        assert torch.equal(packed.positions[r, s:s + n], torch.arange(n))
        assert torch.equal(packed.tokens[r, s:s + n], p[:-1])
        assert (packed.segment[r, s:s + n] == i).all()
        assert packed.final[i] == p[-1]


def test_rope_scores_depend_only_on_relative_position():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 1, 1, 9, 16, generator=g, dtype=torch.float64)
    pos = torch.randint(0, 300, (1, 9), generator=g)

    def scores(p):
        sin, cos = llama.rope_tables(p, 16, dtype=torch.float64)
        return theta_shift(q, sin, cos) @ theta_shift(k, sin, cos).transpose(-1, -2)

    assert torch.allclose(scores(pos), scores(pos + 777), atol=1e-10)
    assert not torch.allclose(scores(pos), scores(pos * 2), atol=1e-3)  # not position-blind


def test_prepacked_equals_per_prompt_logits_caches_and_greedy_tokens(model):
    """The spec's C4: last-token logits and KV caches within 1e-5 (float32), 16 greedy tokens equal,
    a 1-token prompt included (the official restart_dict loses one)."""
    prompts = random_prompts([1, 9, 30, 4, 30, 17, 2, 11], seed=3)
    err = px.reference_errors(model, prompts, steps=16)
    assert err["last-token logits"] < 1e-5
    assert err["KV cache"] < 1e-5
    assert err["padded last-token logits"] < 1e-5
    assert err["greedy tokens matching"] == 1.0


def test_a_wrong_mask_is_detected(model):
    """The equivalence test can fail: a plain causal mask over a packed row leaks across prompts."""
    prompts = random_prompts([12, 9, 5], seed=4)
    packed = pp.prepack(prompts, capacity=40)
    assert len(packed.tokens) == 1
    S = packed.tokens.shape[1]
    with torch.no_grad():
        _, good = model(packed.tokens, packed.positions, packed.mask)
        _, leaky = model(packed.tokens, packed.positions, llama.causal_mask(S)[None])
    cache_good, _ = pp.unpack(packed, good)
    cache_leaky, _ = pp.unpack(packed, leaky)
    assert (cache_good[-1][0] - cache_leaky[-1][0]).abs().max() > 1e-3


def test_unpack_left_pads_segments_with_key_mask(model):
    prompts = random_prompts([6, 2, 4], seed=5)
    packed = pp.prepack(prompts, capacity=20)
    with torch.no_grad():
        _, cache = model(packed.tokens, packed.positions, packed.mask)
    per_prompt, key_mask = pp.unpack(packed, cache)
    assert key_mask.tolist() == [[True] * 5, [False] * 4 + [True], [False] * 2 + [True] * 3]
    k = per_prompt[0][0]
    assert k.shape == (3, 4, 5, 16)
    assert (k[1, :, :4] == 0).all() and (k[2, :, :2] == 0).all()


def test_time_settings_pairs_rounds_and_checks_outputs(model):
    pool = random_prompts([3, 20, 7, 15, 2, 9, 30, 5], seed=6)
    settings = [px.Setting(4), px.Setting(4, 1.0)]
    out = px.time_settings(model, settings, rounds=2, n_batches=2, pool=pool, median=8, max_len=24,
                           device=torch.device("cpu"))
    for s in settings:
        assert set(out["seconds"][s.name]) == set(px.ARMS)
        assert all(len(v) == 2 for v in out["seconds"][s.name].values())
        assert all(math.isnan(x) for x in out["peak_bytes"][s.name]["prepacking"])
        prox = out["proxies"][s.name]
        assert all(0 <= f < 1 for f in prox["pad fraction full"])


def test_proxies_match_the_padding_formula():
    prompts = random_prompts([10, 2, 5, 3])
    prox = px.proxies(prompts, batch=4)
    assert prox["pad fraction full"] == pytest.approx(1 - np.mean([10, 2, 5, 3]) / 10)
    rows = pp.pack([10, 2, 5, 3])  # [[0], [2, 3, 1]]: rows of 9 and 4+2+1 = 7 tokens, S = 9
    assert len(rows) == 2
    assert prox["pad fraction prepacked"] == pytest.approx(1 - 16 / 18)


def test_speedup_rule_tiers():
    fast = {"full-batching": [2.0, 2.1, 1.9, 2.0], "prepacking": [1.0, 1.0, 1.0, 1.01]}
    slow = {"full-batching": [1.0, 1.0, 1.01, 1.0], "prepacking": [1.0, 1.02, 1.0, 0.99]}
    stat = lambda m: {k: Stat.of(v) for k, v in m.items()}  # noqa: E731
    assert px.speedup_rule("x", on_gpu=False)(stat(fast)) is Verdict.PARTIAL
    assert px.speedup_rule("x", on_gpu=True)(stat(fast)) is Verdict.INCONCLUSIVE  # ~2x straddles 2x
    assert px.speedup_rule("x", on_gpu=False)(stat(slow)) is Verdict.NOT_REPLICATED
