"""Subword tokenizers trained offline with Hugging Face ``tokenizers``, behind one small interface.

Four kinds, each the usual pairing of a model with a pre-tokenizer:

| kind | model | pre-tokenizer | word marker | decode(encode(x)) == x |
|---|---|---|---|---|
| ``bpe`` | BPE (Sennrich et al. 2016) | Metaspace: each space becomes ``▁`` | ``▁`` (a space before) | for characters seen in training |
| ``unigram`` | Unigram LM (Kudo 2018) | Metaspace | ``▁`` | for characters seen in training |
| ``wordpiece`` | WordPiece (BERT) | BERT's: whitespace and punctuation split | ``##`` on continuations | no: spacing is not kept |
| ``byte-bpe`` | byte-level BPE (GPT-2) | ByteLevel (bytes as printable characters) | ``Ġ`` (a space before) | always |

Metaspace adds no space before the text's first word (SentencePiece's ``add_dummy_prefix`` off),
so that decoding gives back leading spaces exactly.

Text is case-sensitive and not normalised (the chapters measure what tokenization does to the
text they are given). Characters never seen in training become ``[UNK]``, except in ``byte-bpe``,
whose 256-symbol base alphabet covers every input.

Reproducibility: ``bpe`` and ``byte-bpe`` training is deterministic (the same texts and vocabulary
size give the same vocabulary and ids). HF's WordPiece and Unigram trainers are not: they break ties
in hash-map order, so a few pieces near the cut can differ between runs (tested: >= 90 % of the
vocabulary is always shared). Their ids are made canonical (sorted), so a shared piece keeps its id.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ..errors import ReplibError

KINDS = ("bpe", "unigram", "wordpiece", "byte-bpe")
UNK = "[UNK]"
_MARKERS = {"bpe": "▁", "unigram": "▁", "wordpiece": "##", "byte-bpe": "Ġ"}


@dataclass
class Subword:
    """A trained tokenizer: ``encode``/``decode`` ids, ``pieces`` as strings, the underlying ``hf``."""
    kind: str
    hf: Tokenizer

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def vocab(self) -> dict[str, int]:
        return self.hf.get_vocab()

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text).ids

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(list(texts))]

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode(list(ids))

    def pieces(self, text: str) -> list[str]:
        """The token strings of ``text``, markers included (``▁``, ``##``, ``Ġ``)."""
        return self.hf.encode(text).tokens

    def surface(self, piece: str) -> str:
        """A piece without its word marker (byte-level pieces decoded to text)."""
        if self.kind == "byte-bpe":
            return self.hf.decoder.decode([piece]).strip()
        marker = _MARKERS[self.kind]
        return piece[len(marker):] if piece.startswith(marker) else piece


def train(kind: str, texts: Iterable[str], vocab_size: int) -> Subword:
    """Train a ``kind`` tokenizer of at most ``vocab_size`` tokens (specials included) on ``texts``."""
    if kind not in KINDS:
        raise ReplibError(f"unknown tokenizer kind {kind!r}; valid: {', '.join(KINDS)}")
    if vocab_size < 2:
        raise ReplibError(f"vocab_size must be at least 2, got {vocab_size}")
    common = dict(vocab_size=vocab_size, show_progress=False)
    if kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token=UNK))
        trainer = trainers.BpeTrainer(special_tokens=[UNK], **common)
    elif kind == "unigram":
        tok = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(special_tokens=[UNK], unk_token=UNK, **common)
    elif kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=UNK))
        trainer = trainers.WordPieceTrainer(special_tokens=[UNK], **common)
    else:
        tok = Tokenizer(models.BPE())
        trainer = trainers.BpeTrainer(initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), **common)
    if kind in ("bpe", "unigram"):
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
        tok.decoder = decoders.Metaspace(prepend_scheme="never")
    elif kind == "wordpiece":
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(list(texts), trainer)
    _canonical_ids(kind, tok)
    return Subword(kind, tok)


def _canonical_ids(kind: str, tok: Tokenizer) -> None:
    """Give tokens ids that depend only on the vocabulary, not on the trainer's hash-map order.

    WordPiece's ids and Unigram's order among equal scores (and the scores' last bits) vary from
    run to run; an id is an embedding row. BPE's ids are already fixed.
    """
    if kind == "wordpiece":
        order = [UNK] + sorted(t for t in tok.get_vocab() if t != UNK)
        tok.model = models.WordPiece({t: i for i, t in enumerate(order)}, unk_token=UNK)
    elif kind == "unigram":
        scored = [(p, round(s, 9)) for p, s in json.loads(tok.to_str())["model"]["vocab"]]
        scored.sort(key=lambda ps: (ps[0] != UNK, -ps[1], ps[0]))
        tok.model = models.Unigram(scored, unk_id=0, byte_fallback=False)
