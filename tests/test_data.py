import hashlib
import math

import pytest
import torch

from replib import ReplibError
from replib.data import (
    REMOTES,
    ByteTokenizer,
    CharTokenizer,
    fetch,
    lm_batches,
    lm_eval_windows,
    load_remote_text,
    load_tabular,
    minibatches,
    split_tokens,
    stdlib_corpus,
)
from replib.data.download import Remote


def test_tabular_split_is_standardised_on_train_and_stratified():
    s = load_tabular("digits", seed=0)
    assert s.n_features == 64 and s.n_classes == 10
    assert len(s.x_train) + len(s.x_test) == 1797
    mu = s.x_train.mean(0)
    assert mu.abs().max() < 1e-5
    assert set(s.y_test.tolist()) == set(range(10))
    assert torch.equal(load_tabular("digits", seed=0).x_test, s.x_test)
    assert not torch.equal(load_tabular("digits", seed=1).x_test, s.x_test)


def test_all_tabular_sets_load_and_unknown_is_clear():
    for name in ("breast_cancer", "wine", "iris", "diabetes_binary"):
        s = load_tabular(name)
        assert torch.isfinite(s.x_train).all() and s.n_classes >= 2
    with pytest.raises(ReplibError, match="valid: digits"):
        load_tabular("mnist")


def test_minibatches_cover_an_epoch_without_repeats():
    x = torch.arange(10.0)[:, None]; y = torch.arange(10)
    it = minibatches(x, y, 5, torch.Generator().manual_seed(0))
    seen = torch.cat([next(it)[1], next(it)[1]])
    assert sorted(seen.tolist()) == list(range(10))


def test_stdlib_corpus_is_stable_and_recorded():
    a, b = stdlib_corpus(), stdlib_corpus()
    assert a.sha256 == b.sha256 == hashlib.sha256(a.text.encode()).hexdigest()
    assert len(a.text) > 500_000 and a.provenance()["python"]


def test_tokenizers_round_trip():
    text = "def f(x):\n    return x  # é"
    byte = ByteTokenizer()
    assert byte.decode(byte.encode(text)) == text and byte.encode(text).max() < 256
    char = CharTokenizer(text)
    assert char.decode(char.encode(text)) == text and char.vocab_size == len(set(text))
    with pytest.raises(ReplibError, match="not in the vocabulary"):
        char.encode("Z")


def test_lm_batches_are_shifted_windows_and_seeded():
    tokens = torch.arange(1000)
    x, y = next(lm_batches(tokens, 4, 16, torch.Generator().manual_seed(0)))
    assert x.shape == (4, 16) and torch.equal(y, x + 1)
    x2, _ = next(lm_batches(tokens, 4, 16, torch.Generator().manual_seed(0)))
    assert torch.equal(x, x2)
    train, val = split_tokens(tokens, 0.1)
    assert len(val) == 100 and train[-1] + 1 == val[0]
    ex, ey = lm_eval_windows(val, 16, 100)
    assert ex.shape == (6, 16) and torch.equal(ey, ex + 1)


@pytest.fixture
def fixture_remote(tmp_path):
    src = tmp_path / "served" / "tiny.txt"
    src.parent.mkdir()
    src.write_bytes(b"First Citizen:\nBefore we proceed any further, hear me speak.\n")
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    return Remote("tiny", src.as_uri(), sha, "tiny.txt"), src


def test_fetch_downloads_verifies_and_caches(tmp_path, fixture_remote):
    remote, src = fixture_remote
    cache = tmp_path / "cache"
    path = fetch(remote, cache)
    assert path.read_bytes() == src.read_bytes()
    src.unlink()  # the second call must not touch the network
    assert fetch(remote, cache) == path
    corpus = load_remote_text(remote, cache)
    assert corpus.text.startswith("First Citizen") and corpus.sha256 == remote.sha256


def test_fetch_rejects_a_checksum_mismatch_and_keeps_nothing(tmp_path, fixture_remote):
    remote, _ = fixture_remote
    bad = Remote(remote.name, remote.url, "0" * 64, remote.filename)
    cache = tmp_path / "cache"
    with pytest.raises(ReplibError, match="checksum mismatch"):
        fetch(bad, cache)
    assert not list(cache.iterdir())


def test_fetch_offline_and_unknown(tmp_path, fixture_remote, monkeypatch):
    monkeypatch.setenv("REPLIB_OFFLINE", "1")
    with pytest.raises(ReplibError, match="REPLIB_OFFLINE"):
        fetch(fixture_remote[0], tmp_path / "c")
    with pytest.raises(ReplibError, match="valid: tiny_shakespeare"):
        fetch("wikitext-9")


def test_real_remotes_pin_a_sha256():
    for r in REMOTES.values():
        assert len(r.sha256) == 64 and r.url.startswith("https://")


def test_unigram_loss_matches_entropy_and_beats_uniform():
    from replib.data import unigram_loss
    toks = torch.tensor([0, 0, 0, 1] * 250)  # p(0) = 3/4, p(1) = 1/4
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert abs(unigram_loss(toks, toks, vocab_size=2, smoothing=0.0) - entropy) < 1e-12
    # smoothing keeps unseen tokens finite, and token frequencies beat the uniform distribution
    assert math.isfinite(unigram_loss(toks, torch.tensor([2]), vocab_size=4))
    assert unigram_loss(toks, toks, vocab_size=256) < math.log(256)
    with pytest.raises(ReplibError):
        unigram_loss(torch.tensor([300]), torch.tensor([1]), vocab_size=256)


def test_unigram_stalled_counts_runs_that_did_not_beat_byte_frequencies():
    from replib.data import unigram_stalled
    assert unigram_stalled(3.10, 3.12)  # at the unigram level
    assert unigram_stalled(3.60, 3.12)  # worse than it
    assert not unigram_stalled(2.50, 3.12)  # learned context
    assert not unigram_stalled(math.nan, 3.12)  # diverged runs are counted as divergences, not here
