"""Words as units: the word segmentation and byte canvases of word-pooling language models.

Shared by chapter 18 (Thawani et al. 2023, *Learn Your Tokens: Word-Pooled Tokenization for Language
Modeling*, official code github.com/avi-jit/eTok) and chapter 20 (Byte2Word). The segmentation is
eTok's (``dataset.py``, ``eDataset_nat``): the strings ``"\\n"``, ``"<unk>"``, ``"="`` and ``"@-@"``
become spaces, the punctuation ``: , ; . ! ' -- ?`` is cut off as words of its own (regex
``(:|,|;|\\.|\\n|!|'|--|\\?)`` -> ``" \\1 "``), and the rest is split on whitespace (eTok splits on
single spaces after collapsing runs of them; we split on any whitespace, so tabs separate words too).

A word becomes a fixed-width canvas of ``max_bytes`` ids: its UTF-8 bytes + 1, then 0 as padding
(id 0 is free because no byte is shifted onto it). eTok replaces every word longer than 9
characters by the single word ``"@"`` ("removes 4.6 % tokens"); we do the same for words longer
than ``max_bytes`` bytes, so every canvas holds its whole word and a generated word can be
compared with the true one byte for byte.
"""
from __future__ import annotations

import re
from typing import NamedTuple, Sequence

import torch

from ..errors import ReplibError

REMOVED = ("\n", "<unk>", "=", "@-@")  # replaced by a space before splitting (eTok)
PUNCTUATION = re.compile(r"(:|,|;|\.|\n|!|'|--|\?)")  # eTok's regex: each match becomes a word
LONG_WORD = "@"  # what a word longer than the canvas becomes (eTok's "@")
PAD = 0  # canvas padding id; byte b has id b + 1
BYTE_VOCAB = 257  # ids 0..256: padding and the 256 byte values


def split_words(text: str) -> list[str]:
    """eTok's word segmentation of ``text`` (see the module docstring); no empty words."""
    for s in REMOVED:
        text = text.replace(s, " ")
    return PUNCTUATION.sub(r" \1 ", text).split()


def cap_words(words: Sequence[str], max_bytes: int) -> list[str]:
    """``words`` with every word of more than ``max_bytes`` UTF-8 bytes replaced by ``"@"``."""
    if max_bytes < len(LONG_WORD):
        raise ReplibError(f"max_bytes={max_bytes} cannot hold the long-word marker {LONG_WORD!r}")
    return [w if len(w.encode("utf-8")) <= max_bytes else LONG_WORD for w in words]


def encode_words(words: Sequence[str], max_bytes: int) -> torch.Tensor:
    """Byte canvases, a LongTensor of shape ``[len(words), max_bytes]``: row i holds the UTF-8 bytes
    of ``words[i]`` plus 1, padded with 0. A word longer than ``max_bytes`` bytes is encoded as the
    single word ``"@"`` (:func:`cap_words`), never truncated."""
    words = cap_words(words, max_bytes)
    rows: dict[str, int] = {}
    index = torch.tensor([rows.setdefault(w, len(rows)) for w in words], dtype=torch.long)
    table = torch.zeros(len(rows), max_bytes, dtype=torch.long)
    for w, r in rows.items():
        b = w.encode("utf-8")
        table[r, :len(b)] = torch.tensor(list(b), dtype=torch.long) + 1
    return table[index]


def decode_word(canvas: torch.Tensor) -> str:
    """The word a canvas row holds: its ids up to the first padding, minus 1, as UTF-8."""
    ids = canvas.tolist()
    n = ids.index(PAD) if PAD in ids else len(ids)
    return bytes(i - 1 for i in ids[:n]).decode("utf-8", errors="replace")


def word_lengths(canvases: torch.Tensor) -> torch.Tensor:
    """Number of real (non-padding) bytes in each canvas row, shape ``canvases.shape[:-1]``."""
    return (canvases != PAD).sum(-1)


class WordSplits(NamedTuple):
    """A word stream cut for training, choosing and judging (:func:`word_splits`)."""

    train: list[str]
    val: list[str]
    test: list[str]


def word_splits(text: str, held_out: float = 0.1) -> WordSplits:
    """The book's contiguous split (as :func:`replib.data.text.lm_splits`), in words: the last
    ``held_out`` fraction of :func:`split_words` ``(text)`` is held out and cut at its midpoint into
    validation (first half) and test (second half)."""
    words = split_words(text)
    cut = int(len(words) * (1 - held_out))
    half = cut + (len(words) - cut) // 2
    if cut < 1 or half == cut or half == len(words):
        raise ReplibError(f"{len(words)} words are too few to hold out {held_out:.0%} in two parts")
    return WordSplits(words[:cut], words[cut:half], words[half:])
