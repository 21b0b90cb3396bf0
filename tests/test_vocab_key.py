"""Chapter 34's reference checks: key-space geometry, the set language, the decoding procedures."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from replib.data.setlang import IGNORE, SetLanguage
from replib.experiments import vocab_key as vk
from replib.nn import key_space as ks

F64 = torch.float64


def small_lang(**kw):
    return SetLanguage(**{"n_items": 300, "n_sets": 60, "n_attrs": 8, "min_size": 12, "max_size": 20,
                          "max_list": 10, "seed": 3, **kw})


# ---------------------------------------------------------------------------------- geometry
def test_logits_see_only_the_component_along_each_key():
    g = torch.Generator().manual_seed(0)
    explored = torch.randn(5, 16, generator=g, dtype=F64)
    q = torch.randn(16, generator=g, dtype=F64)
    v = ks.project_out(torch.randn(16, generator=g, dtype=F64), explored)  # orthogonal to every explored key
    assert torch.allclose(explored @ (q + v), explored @ q, atol=1e-12)
    assert (explored @ v).abs().max() < 1e-12


def test_project_out_zeroes_explored_logits_and_matches_the_spec_sum_for_orthogonal_keys():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(3, 24, generator=g, dtype=F64)
    explored = torch.randn(3, 6, 24, generator=g, dtype=F64)
    qp = ks.project_out(q, explored)
    assert (explored @ qp.unsqueeze(-1)).abs().max() < 1e-12
    assert torch.allclose(ks.project_out(qp, explored), qp, atol=1e-12)  # a projection
    orth, _ = torch.linalg.qr(torch.randn(24, 6, generator=g, dtype=F64))
    keys = orth.T * torch.rand(6, 1, generator=g, dtype=F64).add(0.5)  # orthogonal, unequal norms
    unit = F.normalize(keys, dim=-1)
    spec = q[0] - ((unit @ q[0]).unsqueeze(-1) * unit).sum(0)  # q - sum_e (q.ê) ê
    assert torch.allclose(ks.project_out(q[0], keys), spec, atol=1e-12)


@pytest.mark.parametrize("rho", [0.3, 0.6, 0.9])
def test_keys_close_to_an_explored_key_lose_at_least_rho_squared(rho):
    g = torch.Generator().manual_seed(2)
    explored = torch.randn(4, 32, generator=g, dtype=F64)
    for _ in range(20):
        e = F.normalize(explored[torch.randint(4, (1,), generator=g)].squeeze(0), dim=0)
        noise = F.normalize(ks.project_out(torch.randn(32, generator=g, dtype=F64), e[None]), dim=0)
        c = rho + (1 - rho) * float(torch.rand(1, generator=g))  # cosine with e in [rho, 1)
        key = 3.0 * (c * e + (1 - c * c) ** 0.5 * noise)
        assert float(F.cosine_similarity(key, e, dim=0)) >= rho - 1e-12
        assert float(ks.max_logit_sq_after(key, explored)) <= 1 - rho**2 + 1e-12


# ------------------------------------------------------------------------------- the language
def test_sets_have_distinct_members_and_sizes_in_range():
    lang = small_lang()
    for mem in lang.members:
        assert len(set(mem.tolist())) == len(mem)
        assert lang.min_size <= len(mem) <= lang.max_size


def test_attribute_is_independent_of_membership():
    lang = SetLanguage(n_items=2000, n_sets=200, n_attrs=26, seed=0)
    member_counts = np.bincount(lang.attr_of[np.concatenate(lang.members)], minlength=26)
    item_counts = np.bincount(lang.attr_of, minlength=26) * lang.n_sets
    table = np.stack([member_counts, item_counts - member_counts])
    assert stats.chi2_contingency(table)[1] > 0.01


def test_lines_are_well_formed_and_seeded():
    lang = small_lang()
    member = lang.membership()
    x, y = lang.batch(256, np.random.default_rng(0))
    x2, y2 = lang.batch(256, np.random.default_rng(0))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.shape == y.shape == (256, lang.seq_len)
    assert (y[x == lang.PAD] == IGNORE).all() and (y[:, 0] == IGNORE).all()
    kinds = set()
    for row in x.tolist():
        row = [t for t in row if t != lang.PAD]
        if row[0] == lang.ATTR:
            kinds.add("attr")
            assert lang.attr_of[row[3]] == row[1] - lang.attr_base
            continue
        s = row[1] - lang.set_base
        if row[2] == lang.EXCLUDE:
            kinds.add("exclude")
            excluded, answer = row[3:-2], row[-1]
            assert row[-2] == lang.COLON and answer not in excluded
            assert member[s, excluded + [answer]].all()
        else:
            kinds.add("listing")
            listed = row[3:]
            assert len(set(listed)) == len(listed) and member[s, listed].all()
    assert kinds == {"attr", "exclude", "listing"}


def test_language_is_a_function_of_its_seed():
    a, b, c = small_lang(), small_lang(), small_lang(seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a.members, b.members))
    assert np.array_equal(a.attr_of, b.attr_of) and not np.array_equal(a.attr_of, c.attr_of)


# ------------------------------------------------------------------------------- the model
def test_model_logits_are_query_dot_tied_keys():
    lang = small_lang()
    torch.manual_seed(0)
    model = vk.make_model(lang, d_model=32, n_layer=1, n_head=2).double()
    x, y = lang.batch(8, np.random.default_rng(1))
    logits, _ = model(x)
    keys = model.gpt.tok_emb.weight + model.attr_emb.weight[lang.attribute_of_tokens()]
    assert torch.allclose(logits, model.query(x) @ keys.T, atol=1e-12)
    same = lang.attribute_of_tokens() == lang.n_attrs  # specials: no attribute vector
    assert torch.equal(model.keys()[same], model.gpt.tok_emb.weight[same])
    _, loss = model(x, y)
    full = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE)
    assert torch.allclose(loss, full, atol=1e-12)


def test_training_is_deterministic_under_a_seed():
    lang = small_lang()
    kw = dict(steps=4, batch_size=8, d_model=16, n_layer=1, n_head=2, val_lines=16, progress=False)
    a, _ = vk.train_lm(lang, 3e-3, 5, **kw)
    b, _ = vk.train_lm(lang, 3e-3, 5, **kw)
    assert a["loss"] == b["loss"] and a["val_loss"] == b["val_loss"]
    assert 0 < vk.unigram_reference(lang, 64) < np.log(lang.vocab_size)


# -------------------------------------------------------------------------- decoding, analysis
def test_navigation_with_a_prompt_that_changes_nothing_is_rank_based():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 50, generator=g)
    icn = ks.navigate(lambda explored: logits, 5, 10)
    assert torch.equal(icn, ks.rank_based(logits, 10))
    assert all(len(set(r.tolist())) == 10 for r in ks.navigate(lambda e: logits, 5, 10, per_round=3))


def test_key_projection_on_orthonormal_keys_is_rank_based():
    g = torch.Generator().manual_seed(4)
    keys, _ = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=F64))
    q = torch.randn(6, 40, generator=g, dtype=F64)
    assert torch.equal(ks.key_projection(q, keys, 8), ks.rank_based(q @ keys.T, 8))


def test_key_projection_leaves_correlated_neighbours_behind():
    # keys 0 and 1 nearly parallel: the plain ranking takes both, navigation takes key 2 second
    keys = torch.tensor([[1.0, 0.0, 0.0], [0.99, 0.141, 0.0], [0.6, 0.0, 0.8]], dtype=F64)
    q = torch.tensor([[1.0, 0.05, 0.2]], dtype=F64)
    assert ks.rank_based(q @ keys.T, 2).tolist() == [[0, 1]]
    assert ks.key_projection(q, keys, 2).tolist() == [[0, 2]]


def test_sampling_is_seeded():
    logits = torch.randn(4, 30, generator=torch.Generator().manual_seed(5))
    a = ks.sampled(logits, 10, 1.0, torch.Generator().manual_seed(0))
    b = ks.sampled(logits, 10, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (4, 10)


def test_precision_cluster_fraction_and_unique_correct_on_a_hand_example():
    correct = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 1]], dtype=torch.bool)
    assert ks.precision_by_rank(correct, [(1, 2), (3, 4)]) == {"1-2": 0.75, "3-4": 0.25}
    labels = np.array([0, 0, 0, 1, 1, 2])  # sizes 3, 2, 1
    ranked = torch.tensor([[0, 3, 1, 2], [3, 5, 4, 0]])
    same, base = ks.same_cluster_fraction(ranked, labels, 3, 4)
    assert same == pytest.approx(0.75)  # [1, 2] both in 0's cluster; [4, 0]: one in 3's
    assert base == pytest.approx((2 / 5 + 1 / 5) / 2)
    members = torch.tensor([[True, True, False, False], [False, False, True, True]])
    answers = torch.tensor([[0, 0, 2], [3, 2, 1]])
    assert ks.unique_correct(answers, members).tolist() == pytest.approx([1 / 3, 2 / 3])


def test_kmeans_recovers_planted_key_clusters():
    g = torch.Generator().manual_seed(6)
    centres = torch.randn(4, 16, generator=g) * 3
    keys = centres.repeat_interleave(25, 0) + 0.1 * torch.randn(100, 16, generator=g)
    labels = ks.cluster_keys(keys, 4, seed=0)
    truth = np.repeat(np.arange(4), 25)
    from sklearn.metrics import adjusted_rand_score
    assert adjusted_rand_score(truth, labels) == pytest.approx(1.0)
