import re

import pytest
import torch

from replib import ReplibError
from replib.data.text import book_corpus
from replib.data.words import (BYTE_VOCAB, LONG_WORD, PAD, cap_words, decode_word, encode_words,
                               split_words, word_lengths, word_splits)


def etok_split(data: str) -> list[str]:
    """eTok's dataset.py (eDataset_nat), verbatim apart from `regex` -> `re`."""
    text = data
    for remove in ['\n', '<unk>', '=', '@-@']:
        text = text.replace(remove, ' ')
    text = re.sub(r"(:|,|;|\.|\n|!|'|--|\?)", r' \1 ', text)
    text = re.sub(r' +', r' ', text).strip()
    return text.split(' ')


def test_split_agrees_with_etok_on_space_separated_text():
    text = "Hello, world! It's x=1 -- or isn't it?\nNew line: done.  <unk> a @-@ b"
    assert split_words(text) == etok_split(text)
    assert split_words(text)[:4] == ["Hello", ",", "world", "!"]


def test_split_agrees_with_etok_on_the_corpus_without_tabs():
    text = book_corpus().text[:20000].replace("\t", " ").replace("\r", " ")
    assert split_words(text) == etok_split(text)


def test_encode_round_trips_and_pads_with_zero():
    words = ["def", "é", "a" * 12]
    canvases = encode_words(words, max_bytes=12)
    assert canvases.shape == (3, 12) and canvases.dtype == torch.long
    assert canvases.min() >= PAD and canvases.max() < BYTE_VOCAB
    assert [decode_word(c) for c in canvases] == words
    assert canvases[0].tolist() == [ord("d") + 1, ord("e") + 1, ord("f") + 1] + [PAD] * 9
    assert word_lengths(canvases).tolist() == [3, 2, 12]  # "é" is two UTF-8 bytes


def test_long_words_become_the_marker_and_are_never_truncated():
    assert cap_words(["abcd", "abcde", "éé"], 4) == ["abcd", LONG_WORD, "éé"]
    assert cap_words(["ééé"], 4) == [LONG_WORD]  # bytes count, not characters
    assert decode_word(encode_words(["abcdefgh"], 4)[0]) == LONG_WORD
    with pytest.raises(ReplibError):
        cap_words(["a"], 0)


def test_splits_are_contiguous_and_cover_the_stream():
    text = book_corpus().text[:50000]
    s = word_splits(text, held_out=0.2)
    assert s.train + s.val + s.test == split_words(text)
    assert len(s.train) == int(0.8 * len(split_words(text)))
    assert abs(len(s.val) - len(s.test)) <= 1
    with pytest.raises(ReplibError):
        word_splits("one two", held_out=0.1)
