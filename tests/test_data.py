import hashlib
import lzma
import math
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

import replib.data
import replib.data.text as text_module
from replib import ReplibError
from replib.data import (
    REMOTES,
    ByteTokenizer,
    CharTokenizer,
    fetch,
    lm_batches,
    lm_eval_windows,
    lm_splits,
    load_remote_text,
    load_tabular,
    minibatches,
    book_corpus,
    split_tokens,
)
from replib.data.text import BOOK_CORPUS_SHA256, corpus_path
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


def test_book_corpus_is_the_shipped_text_and_recorded():
    a = book_corpus()
    assert a.sha256 == hashlib.sha256(a.text.encode()).hexdigest() == BOOK_CORPUS_SHA256
    assert len(a.text) == 1_497_642 and a.text.startswith("# Author: Steven J. Bethard")
    prov = a.provenance()
    assert prov["sha256"] == BOOK_CORPUS_SHA256 and "python" not in prov and prov["licence"]


def test_book_corpus_never_reads_the_running_pythons_stdlib(monkeypatch, tmp_path):
    monkeypatch.setattr(sysconfig, "get_paths", lambda *a, **k: {"stdlib": str(tmp_path)})
    assert book_corpus().sha256 == BOOK_CORPUS_SHA256
    assert Path(str(corpus_path())).is_relative_to(Path(replib.data.__file__).parent)


@pytest.mark.parametrize("damage", ["modified", "truncated"])
def test_a_damaged_corpus_is_refused(monkeypatch, tmp_path, damage):
    raw = lzma.decompress(Path(str(corpus_path())).read_bytes())
    bad = raw.replace(b"def ", b"def  ", 1) if damage == "modified" else raw[:1000]
    fake = tmp_path / "c.txt.xz"
    fake.write_bytes(lzma.compress(bad) if damage == "modified" else lzma.compress(raw)[:5000])
    monkeypatch.setattr(text_module, "corpus_path", lambda: fake)
    with pytest.raises(ReplibError, match="modified corpus|damaged"):
        book_corpus()


def _other_pythons() -> list[str]:
    """Interpreters of other minor versions: pyenv's installs, else pythonX.Y on PATH."""
    found = {}
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for exe in sorted(pyenv.glob("3.1[0-9]*/bin/python3")):
        found.setdefault(exe.parts[-3].rsplit(".", 1)[0], str(exe))
    for v in ("3.10", "3.12", "3.13"):
        if v not in found and (exe := shutil.which(f"python{v}")):
            found[v] = exe
    mine = f"{sys.version_info[0]}.{sys.version_info[1]}"
    return [exe for v, exe in sorted(found.items()) if v != mine]


OTHER_PYTHONS = _other_pythons()


@pytest.mark.skipif(not OTHER_PYTHONS, reason="no second Python interpreter on this machine")
@pytest.mark.parametrize("python", OTHER_PYTHONS)
def test_other_pythons_read_the_same_bytes(python):
    """The loader is lzma + sha256 over a shipped file: another interpreter reads the same text."""
    code = ("import hashlib, lzma, sys; "
            "print(hashlib.sha256(lzma.decompress(open(sys.argv[1], 'rb').read())).hexdigest())")
    out = subprocess.run([python, "-c", code, str(corpus_path())], capture_output=True, text=True)
    if out.returncode:  # a pyenv shim without that version installed
        pytest.skip(out.stderr.strip().splitlines()[-1] if out.stderr else "interpreter failed")
    assert out.stdout.strip() == BOOK_CORPUS_SHA256


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


def test_lm_splits_val_then_test_from_the_held_out_part_only():
    tokens = torch.arange(20_000)  # token id = position: where every window came from is visible
    train, (vx, vy), (tx, ty) = lm_splits(tokens, 16, 8, 5, held_out=0.1)
    assert torch.equal(train, tokens[:18_000])  # the training stream is the first 90 %
    assert vx.shape == vy.shape == (8, 16) and tx.shape == ty.shape == (5, 16)  # the stated shapes
    assert torch.equal(vy, vx + 1) and torch.equal(ty, tx + 1)  # next-token targets
    held = set(range(18_000, 20_000))
    val_ids, test_ids = set(torch.cat([vx, vy]).flatten().tolist()), set(torch.cat([tx, ty]).flatten().tolist())
    assert val_ids <= held and test_ids <= held  # only the held-out part
    assert not val_ids & test_ids  # disjoint
    assert max(val_ids) < 19_000 <= min(test_ids)  # ordered: validation half first, test half second
    assert vx[0, 0] == 18_000 and tx[0, 0] == 19_000  # each from the start of its half
    again = lm_splits(tokens, 16, 8, 5, held_out=0.1)  # identical across calls
    assert all(torch.equal(a, b) for a, b in zip((train, vx, vy, tx, ty), (again.train, *again.val, *again.test)))


def test_lm_splits_of_text_options_and_limits():
    text = "".join(chr(97 + i % 26) for i in range(5000))
    s = lm_splits(text, 32, 4, 4)
    assert torch.equal(s.train, ByteTokenizer().encode(text)[:4500]) and s.val[0].shape == (4, 32)
    capped = lm_splits(text, 32, 100, 100)  # as many windows as a half holds, no more
    assert capped.val[0].shape[0] == capped.test[0].shape[0] == (250 - 1) // 32
    whole = lm_splits(text, 32, 100, 0)  # no test part: the whole held-out tail gives validation
    assert whole.test is None and whole.val[0].shape[0] == (500 - 1) // 32
    assert torch.equal(whole.val[0][:4], s.val[0])

    def two_windows(tokens, seq_len, n, device):  # another kind of window (chapter 26: BOS-prefixed)
        return lm_eval_windows(tokens, seq_len, min(n, 2), device)
    assert lm_splits(text, 32, 4, 4, windows=two_windows).test[0].shape == (2, 32)
    with pytest.raises(ReplibError, match="too few"):
        lm_splits(text[:1000], 64, 4, 4)


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
