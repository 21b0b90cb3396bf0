"""replib.tokenize.subword: the four trainers round-trip, are deterministic and honour the vocabulary size."""
import pytest

from replib.errors import ReplibError
from replib.tokenize import subword

TEXTS = ["the cat sat on the mat", "  the dog sat on the log", "cats and dogs, sitting",
         "def f(x): return x + 1", "a mat, a log and a cat"] * 20


@pytest.fixture(scope="module")
def trained():
    return {kind: subword.train(kind, TEXTS, 120) for kind in subword.KINDS}


@pytest.mark.parametrize("kind", ["bpe", "unigram", "byte-bpe"])
def test_lossless_kinds_round_trip_seen_text(trained, kind):
    tok = trained[kind]
    for text in set(TEXTS) | {"the  cat", " sat"}:
        assert tok.decode(tok.encode(text)) == text


def test_byte_bpe_round_trips_unseen_characters(trained):
    tok = trained["byte-bpe"]
    text = "Zürich ⟂ 日本"
    assert tok.decode(tok.encode(text)) == text
    assert subword.UNK not in tok.vocab()


def test_wordpiece_marks_continuations_and_keeps_the_words(trained):
    tok = trained["wordpiece"]
    pieces = tok.pieces("sitting cats")
    assert "".join(tok.surface(p) for p in pieces) == "sittingcats"
    assert all(not p.startswith("##") for p in (pieces[0],))
    assert tok.decode(tok.encode("cats and dogs")) == "cats and dogs"


def test_unseen_character_is_unk_where_the_alphabet_is_learned(trained):
    for kind in ("bpe", "unigram", "wordpiece"):
        tok = trained[kind]
        assert tok.vocab()[subword.UNK] in tok.encode("cat Ω")
        assert tok.vocab()[subword.UNK] not in tok.encode("cat")


@pytest.mark.parametrize("kind", subword.KINDS)
def test_vocab_size_bound_and_pieces_match_ids(trained, kind):
    tok = trained[kind]
    floor = 256 if kind == "byte-bpe" else 0  # the byte alphabet is always in the vocabulary
    assert tok.vocab_size <= max(120, floor) and len(tok.vocab()) == tok.vocab_size
    text = "the cat sat on the log"
    vocab = tok.vocab()
    assert [vocab[p] for p in tok.pieces(text)] == tok.encode(text)
    assert tok.encode_batch([text, "a mat"]) == [tok.encode(text), tok.encode("a mat")]


@pytest.mark.parametrize("kind", ["bpe", "byte-bpe"])
def test_bpe_training_is_deterministic(trained, kind):
    assert subword.train(kind, TEXTS, 120).vocab() == trained[kind].vocab()


@pytest.mark.parametrize("kind", ["wordpiece", "unigram"])
def test_tie_broken_trainers_share_most_pieces_and_order_ids_canonically(trained, kind):
    for _ in range(3):
        again = subword.train(kind, TEXTS, 120).vocab()
        first = trained[kind].vocab()
        assert len(again.keys() & first.keys()) >= 0.9 * len(first)
        assert again[subword.UNK] == first[subword.UNK] == 0
    if kind == "wordpiece":
        by_id = sorted(first, key=first.get)
        assert by_id[1:] == sorted(p for p in first if p != subword.UNK)


def test_surface_strips_markers(trained):
    assert trained["bpe"].surface("▁cat") == "cat"
    assert trained["wordpiece"].surface("##at") == "at"
    assert trained["byte-bpe"].surface("Ġcat") == "cat"


def test_bad_input_is_one_clear_error():
    with pytest.raises(ReplibError, match="unknown tokenizer kind 'sentencepiece'"):
        subword.train("sentencepiece", TEXTS, 100)
    with pytest.raises(ReplibError, match="vocab_size"):
        subword.train("bpe", TEXTS, 1)
