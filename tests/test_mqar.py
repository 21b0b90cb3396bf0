"""MQAR generator (Arora et al. 2023, Zoology): layout, answers, determinism, ignored targets."""
import pytest
import torch

from replib.data.mqar import IGNORE, chance_accuracy, mqar


def test_shapes_and_vocab():
    x, y = mqar(16, 8, 47, 64, seed=0)
    assert x.shape == y.shape == (16, 47) and x.dtype == y.dtype == torch.long
    assert int(x.max()) < 64 and int(x.min()) >= 0
    assert ((y == IGNORE) | (y >= 32)).all()  # every scored target is a value token
    assert (y != IGNORE).sum(1).eq(8).all()  # every key asked exactly once
    assert chance_accuracy(64) == 1 / 32


@pytest.mark.parametrize("n_pairs,seq_len", [(4, 15), (8, 40), (16, 64)])
def test_every_query_answer_is_its_earlier_value(n_pairs, seq_len):
    x, y = mqar(32, n_pairs, seq_len, 128, seed=3)
    for xs, ys in zip(x.tolist(), y.tolist()):
        stored = dict(zip(xs[0:2 * n_pairs:2], xs[1:2 * n_pairs:2] + [ys[2 * n_pairs - 1]]))
        assert len(stored) == n_pairs and all(1 <= k < 64 for k in stored)  # distinct keys
        asked = [t for t in range(len(xs)) if ys[t] != IGNORE]
        assert all(t >= 2 * n_pairs for t in asked)  # queries come after every pair
        assert sorted(xs[t] for t in asked) == sorted(stored)
        assert all(ys[t] == stored[xs[t]] for t in asked)
        # pad elsewhere in the query region: only query keys and their answers are non-zero
        region = [t for t in range(2 * n_pairs, len(xs)) if xs[t] != 0]
        assert set(region) <= set(asked) | {t + 1 for t in asked}


def test_seed_fixes_every_draw():
    a, b, c = (mqar(8, 6, 30, 64, seed=s) for s in (5, 5, 6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_targets_ignored_off_queries():
    x, y = mqar(8, 6, 30, 64, seed=1)
    scored = y != IGNORE
    assert (x[scored] < 32).all() and (x[scored] >= 1).all()  # scored positions read a key
    assert not scored[:, :12].any()  # nothing scored in the pair region


def test_too_short_rejected():
    with pytest.raises(ValueError):
        mqar(2, 8, 30, 64, seed=0)
