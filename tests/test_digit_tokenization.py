"""Digit chunking (chapter 15, Singh & Strouse 2024): the spec's reference checks and the data."""
import math
import random

import numpy as np
import pytest
import torch

from replib.data.addition import (IGNORE, length_mismatch, max_tokens, n_digits, problems, tokenize,
                                  triplets)
from replib.experiments import arithmetic as ar
from replib.tokenize.digits import VOCAB, chunk, cl100k_digit_split, comma_token_count


def random_digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def test_the_papers_examples():
    assert chunk("1234567", "l2r") == ["123", "456", "7"]
    assert chunk("1234567", "r2l") == ["1", "234", "567"]
    assert chunk("1234567", "single") == list("1234567")
    assert chunk("123456", "l2r") == chunk("123456", "r2l") == ["123", "456"]
    assert chunk("12345", "r2l", size=2) == ["1", "23", "45"]
    with pytest.raises(ValueError):
        chunk("12a", "l2r")
    with pytest.raises(ValueError):
        chunk("123", "middle-out")


@pytest.mark.parametrize("chunking", ["l2r", "r2l", "single"])
@pytest.mark.parametrize("size", [2, 3])
def test_chunks_round_trip_and_count(chunking, size):
    rng = random.Random(0)
    for _ in range(500):
        s = random_digits(rng, rng.randint(1, 20))
        parts = chunk(s, chunking, size)
        assert "".join(parts) == s
        assert len(parts) == (len(s) if chunking == "single" else math.ceil(len(s) / size))
        assert all(1 <= len(p) <= size for p in parts)
        if chunking == "r2l":  # every group but the leftmost is full: right-aligned place value
            assert all(len(p) == size for p in parts[1:])
        if chunking == "l2r":
            assert all(len(p) == size for p in parts[:-1])


def test_cl100k_regex_is_left_to_right_chunking():
    rng = random.Random(1)
    for _ in range(1000):
        s = random_digits(rng, rng.randint(1, 30))
        assert cl100k_digit_split(s) == chunk(s, "l2r")


def test_comma_formatting_gives_right_to_left_chunks():
    rng = random.Random(2)
    for _ in range(1000):
        n = rng.randrange(0, 10 ** rng.randint(1, 15))
        assert cl100k_digit_split(f"{n:,}") == chunk(str(n), "r2l")
        groups = len(chunk(str(n), "r2l"))
        assert comma_token_count(n) == 2 * groups - 1


def test_vocabulary_and_encoding_round_trip():
    assert len(VOCAB) == 1113 and len(set(VOCAB.strings)) == 1113
    assert sum(s.isdigit() for s in VOCAB.strings) == 1110
    assert VOCAB.strings[VOCAB.index["07"]] == "07" and VOCAB.index["07"] != VOCAB.index["7"]
    rng = random.Random(3)
    for chunking in ("l2r", "r2l", "single"):
        for _ in range(200):
            a, b = rng.randrange(10 ** 9), rng.randrange(10 ** 9)
            ids, start = VOCAB.encode(a, b, a + b, chunking)
            assert VOCAB.decode(ids) == f"{a}+{b}={a + b}"
            assert ids[start - 1] == VOCAB.equals and ids[-1] == VOCAB.eos
            assert VOCAB.decode(ids[start:]) == str(a + b)
    single = VOCAB.encode(12, 345, 357, "single")[0]
    assert max(i for i in single if i < 1110) < 10  # the control uses the ten one-digit tokens


def test_problems_answer_lengths_and_balance():
    trip = triplets(2, 4)
    p = problems(4 * len(trip), 2, 4, seed=0)
    assert np.array_equal(p.total, p.a + p.b)
    expected = n_digits(p.a + p.b) > np.maximum(n_digits(p.a), n_digits(p.b))
    assert np.array_equal(p.mismatch, expected)
    assert p.mismatch.mean() == 0.5  # triplets drawn equally often: half the answers are longer
    seen = sorted(zip(n_digits(p.a), n_digits(p.b), n_digits(p.total)))
    assert sorted(set(seen)) == sorted(trip) and all(seen.count(t) == 4 for t in trip)
    assert np.array_equal(problems(50, 2, 4, seed=0).a, problems(50, 2, 4, seed=0).a)
    assert not np.array_equal(problems(50, 2, 4, seed=0).a, problems(50, 2, 4, seed=1).a)
    assert list(length_mismatch([999, 5, 10], [1, 4, 99])) == [True, False, True]


@pytest.mark.parametrize("chunking", ["l2r", "r2l", "single"])
def test_tokenized_targets_are_the_answer(chunking):
    p = problems(64, 1, 7, seed=4)
    t = tokenize(p, chunking, max_tokens(7, chunking))
    assert t.seq_len == max_tokens(7, chunking)
    for i in range(len(p)):
        y = t.y[i][t.y[i] != IGNORE].tolist()
        assert y[-1] == VOCAB.eos and VOCAB.decode(y) == str(int(p.a[i] + p.b[i]))
        assert VOCAB.decode(t.x[i].tolist()).startswith(f"{p.a[i]}+{p.b[i]}=")


class Oracle(torch.nn.Module):
    """Logits that put all mass on the given targets (the test of :func:`ar.score`)."""

    def __init__(self, y):
        super().__init__()
        self.y = y

    def forward(self, x):
        return 10.0 * torch.nn.functional.one_hot(self.y.clamp(min=0), len(VOCAB)).float(), None


def test_score_exact_match_and_first_wrong_token():
    p = problems(20, 1, 6, seed=5)
    t = tokenize(p, "l2r")
    out = ar.score(Oracle(t.y), t)
    assert out["solved"].all() and (out["first_wrong"] == -1).all()
    bad = t.y.clone()
    row = 3
    answer = (bad[row] != IGNORE).nonzero().flatten()
    bad[row, answer[1]] = (bad[row, answer[1]] + 1) % 1110  # the second answer token is wrong
    out = ar.score(Oracle(bad), t)
    assert out["solved"].sum() == 19 and not out["solved"][row] and out["first_wrong"][row] == 1
    # first wrong answer digit (1 = most significant): after the first token's digits
    digits = ar.first_wrong_digit(out["first_wrong"], p, "l2r", 3)
    assert digits[row] == len(chunk(str(int(p.total[row])), "l2r")[0]) + 1 and (np.delete(digits, row) == 0).all()


def test_error_rates_split_by_mismatch():
    mismatch = np.array([True, True, False, False])
    assert ar.error_rates([True, False, True, True], mismatch) == (0.0, 0.5)
    assert all(math.isnan(v) for v in ar.error_rates(None, mismatch))


def test_a_run_is_deterministic_and_arms_share_problems():
    data = ar.make_data(["l2r", "r2l"], min_digits=1, max_digits=4, n_train=64, n_val=16, n_test=16)
    assert data.mean_tokens("l2r") == data.mean_tokens("r2l")  # ceil(n/3) tokens either way
    assert 0 < data.unigram_loss("l2r") < math.log(len(VOCAB))
    kw = dict(n_layer=1, d_model=16, n_head=2, batch_size=8, steps=4)
    one, two = (ar.run_addition("r2l", 3e-3, 0, data, **kw) for _ in range(2))
    assert one["loss"] == two["loss"] and one["solved"] == two["solved"]
    assert ar.run_addition("l2r", 3e-3, 0, data, **kw)["loss"] != one["loss"]
