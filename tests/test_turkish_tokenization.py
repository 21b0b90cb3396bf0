"""Chapter 31: %TR / %Pure as the official code defines them, the Turkish analog's word lists, the
pseudo-corpus, bits per character and the bootstrap of Spearman's ρ."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from replib.data import turkish as trdata
from replib.experiments import turkish as tx
from replib.tokenize import linguistic, subword


def test_markers_are_stripped_like_the_official_decode():
    assert [linguistic.strip_marker(t) for t in ("▁evler", "Ġevler", "##ler")] == ["evler", "evler", "ler"]
    assert linguistic.strip_marker(" evler ") == "evler"
    assert linguistic.unique_units(["▁ev", " ev", "ev", "Ġ", "##", "a b"]) == {"ev", "##", "a", "b"}


def test_toy_percentages_use_unique_units():
    units = linguistic.unique_units(["ev", "evler", "xq", "ler", "▁ev", "Ġxq"])  # 4 unique units
    assert linguistic.percent_tr(units, {"ev", "evler"}.__contains__) == 50.0
    assert linguistic.percent_pure({"ev", "ler", "vle"}, {"ev", "ler"}.__contains__) == pytest.approx(200 / 3)
    assert math.isnan(linguistic.percent_tr(set(), bool))


def test_list_entries_are_valid_and_pure_lexicon_words_only_valid():
    valid, pure = linguistic.lexicon_tests(lexicon={"evler", "ev"}, roots={"ev"}, suffixes={"ler"})
    assert valid("evler") and not pure("evler")
    assert valid("ler") and pure("ler") and pure("ev")
    assert not valid("xq") and not pure("xq")


def test_score_of_a_whitespace_tokenizer_counts_words():
    lines = ["ev evler xq", "ev ler"]
    types = sorted({w for s in lines for w in s.split()})
    ids = {w: i for i, w in enumerate(types)}
    valid, pure = linguistic.lexicon_tests({"ev", "evler"}, {"ev"}, {"ler"})
    s = linguistic.score(lambda ls: [[ids[w] for w in x.split()] for x in ls], types.__getitem__, len(types),
                         lines, valid, pure, repeats=3)
    assert (s.token_count, s.unique) == (5, 4)
    assert s.percent_tr == 75.0 and s.percent_pure == 50.0 and s.seconds >= 0


def test_harmony_variants_follow_vowel_harmony():
    assert trdata.harmony_variants("lArI") == ["ları", "leri"]
    assert trdata.harmony_variants("DAn") == ["dan", "den", "tan", "ten"]
    assert trdata.harmony_variants("I") == ["i", "u", "ü", "ı"]
    assert "lerı" not in trdata.SUFFIXES and "lerde" not in trdata.SUFFIXES


def test_roots_exclude_root_plus_suffix_words():
    lex = frozenset({"ev", "evler", "evlerde", "evde", "kitap", "el"})
    roots = trdata.roots(lex)
    assert roots == {"ev", "kitap", "el"}
    assert trdata.splits_into_suffixes("lerde") and not trdata.splits_into_suffixes("xq")
    assert trdata.decompositions("evlerde", lex) == ["ev", "evler"]
    assert trdata.case_words(lex | {"kitaptan", "evi"}, roots) == {"evde": "locative", "kitaptan": "ablative"}


def test_pseudo_corpus_is_seeded_and_has_the_requested_words():
    a, b = trdata.pseudo_corpus("tr", 500, 3), trdata.pseudo_corpus("tr", 500, 3)
    assert a == b and a != trdata.pseudo_corpus("tr", 500, 4)
    assert sum(len(s.split()) for s in a) == 500
    letters = set(trdata.TURKISH_LETTERS + " ")
    assert all(set(s) <= letters for s in a)


def test_english_training_text_covers_turkish_letters():
    tok = subword.train("wordpiece", tx.training_texts("en", 2_000, 1), 300)
    ids = tok.encode(" ".join(trdata.pseudo_corpus("tr", 300, 5)))
    assert tok.vocab()[subword.UNK] not in ids


def test_bits_per_char_and_byte_level_count():
    assert tx.bits_per_char(math.log(2), 0.5) == pytest.approx(0.5)
    text = trdata.pseudo_corpus("tr", 800, 6)
    tok = subword.train("byte-bpe", text, 300)
    assert sum(map(len, tok.encode_batch(text))) <= sum(len(s.encode()) for s in text)


def test_spearman_bootstrap_point_matches_scipy_and_covers():
    rng = np.random.default_rng(0)
    x = rng.normal(size=15)
    y = x + 0.3 * rng.normal(size=15)
    z = rng.normal(size=15)
    out = tx.spearman_bootstrap(x, z, y, n_resamples=500, seed=1)
    assert out["tr"][0] == pytest.approx(sps.spearmanr(x, y).statistic)
    assert out["pure"][0] == pytest.approx(sps.spearmanr(z, y).statistic)
    assert out["tr"][1] <= out["tr"][0] <= out["tr"][2] and out["diff"][1] > 0
    assert out == tx.spearman_bootstrap(x, z, y, n_resamples=500, seed=1)


def test_language_pairs_drop_capped_repeats():
    import pandas as pd
    table = pd.DataFrame({"vocab": [1000, 1000, 900, 700, 900, 700]},
                         index=["bpe-1k-tr", "bpe-1k-en", "bpe-4k-tr", "bpe-4k-en", "bpe-8k-tr", "bpe-8k-en"])
    assert tx.language_pairs(table, ["bpe"], [1000, 4000, 8000]) == [("bpe-1k-tr", "bpe-1k-en"),
                                                                     ("bpe-4k-tr", "bpe-4k-en")]
