"""A small, exact, readable byte-level BPE (Sennrich et al. 2016; GPT-2's byte-level variant).

Written for chapter 36 (Phan et al., ICLR 2025, "Exact byte-level probabilities from tokenized
language models"), whose method needs three things a tokenizer library does not expose directly:
the bytes of every token, the *canonical* encoding of any byte string, and the test whether a
token sequence is canonical (a *valid* encoding).

- **Alphabet.** The base tokens are the bytes seen in the training sample (ids ``0..|A|-1``), so a
  three-letter alphabet gives a three-token base vocabulary; merged tokens follow in merge order.
- **Pre-tokenisation.** The text is cut into *chunks* right after every ``boundary`` byte (space,
  newline): ``"ab ba c"`` -> ``"ab ", "ba ", "c"``. No token crosses a chunk end, so a chunk's
  encoding is fixed once the chunk is complete (the official code of chapter 36 relies on the same
  property of whitespace pre-tokenisation).
- **Training.** Repeatedly merge the most frequent adjacent pair inside chunks (ties: the pair
  whose bytes sort first), ``n_merges`` times.
- **Encoding.** Inside each chunk, start from bytes and repeatedly apply the merge of lowest rank
  (earliest learned) present among adjacent pairs, at all its occurrences left to right: the
  standard merge-priority BPE encoder.
- **Validity.** A token sequence ``t`` is valid iff ``encode(decode(t)) == t``. Every other
  sequence of tokens spelling the same bytes is non-canonical: a tokenized data process never
  produces it, so it has zero probability under the exact token model.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable, Sequence

DEFAULT_BOUNDARY = b" \n"


def split_chunks(data: bytes, boundary: bytes = DEFAULT_BOUNDARY) -> list[bytes]:
    """Cut ``data`` right after each boundary byte; the last chunk may be incomplete (no boundary)."""
    chunks, start = [], 0
    for i, b in enumerate(data):
        if b in boundary:
            chunks.append(data[start:i + 1])
            start = i + 1
    if start < len(data):
        chunks.append(data[start:])
    return chunks


def _merge_pair(symbols: tuple[bytes, ...], pair: tuple[bytes, bytes]) -> tuple[bytes, ...]:
    """Replace every non-overlapping occurrence of ``pair`` (left to right) by its concatenation."""
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


@dataclass
class BPE:
    """A trained byte-level BPE: ``alphabet`` (base bytes) and ``merges`` (pairs, in rank order)."""

    alphabet: bytes
    merges: list[tuple[bytes, bytes]]
    boundary: bytes = DEFAULT_BOUNDARY
    tokens: list[bytes] = field(init=False)  # token id -> its bytes

    def __post_init__(self):
        self.tokens = [bytes([b]) for b in self.alphabet] + [a + b for a, b in self.merges]
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("two merges produce the same token")
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        self.ranks = {pair: r for r, pair in enumerate(self.merges)}
        self._encode_chunk = lru_cache(maxsize=None)(self._encode_chunk_uncached)

    @classmethod
    def train(cls, sample: bytes, n_merges: int, boundary: bytes = DEFAULT_BOUNDARY,
              alphabet: bytes | None = None) -> "BPE":
        """Learn ``n_merges`` merges on ``sample`` (fewer if no pair occurs twice any more)."""
        alphabet = bytes(sorted(set(sample) | set(alphabet or b"")))
        words = Counter(tuple(bytes([b]) for b in chunk) for chunk in split_chunks(sample, boundary))
        merges = []
        for _ in range(n_merges):
            pairs: Counter = Counter()
            for word, n in words.items():
                for pair in zip(word, word[1:]):
                    pairs[pair] += n
            if not pairs:
                break
            best = min(pairs, key=lambda p: (-pairs[p], p))  # most frequent; ties: smallest bytes
            if pairs[best] < 2:
                break
            merges.append(best)
            merged: Counter = Counter()
            for word, n in words.items():
                merged[_merge_pair(word, best)] += n
            words = merged
        return cls(alphabet, merges, boundary)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def _encode_chunk_uncached(self, chunk: bytes) -> tuple[int, ...]:
        symbols = tuple(bytes([b]) for b in chunk)
        while len(symbols) > 1:
            ranked = [(self.ranks[p], p) for p in zip(symbols, symbols[1:]) if p in self.ranks]
            if not ranked:
                break
            symbols = _merge_pair(symbols, min(ranked)[1])
        return tuple(self.ids[s] for s in symbols)

    def encode(self, data: bytes) -> list[int]:
        """The canonical encoding: chunks encoded independently by merge priority, concatenated."""
        unknown = set(data) - set(self.alphabet)
        if unknown:
            raise ValueError(f"bytes {sorted(unknown)} are not in the tokenizer's alphabet")
        return [t for chunk in split_chunks(data, self.boundary) for t in self._encode_chunk(chunk)]

    def decode(self, ids: Iterable[int]) -> bytes:
        return b"".join(self.tokens[i] for i in ids)

    def is_valid(self, ids: Sequence[int]) -> bool:
        """``ids`` is the canonical encoding of the bytes it spells."""
        return self.encode(self.decode(ids)) == list(ids)

    def starting_with(self, prefix: bytes) -> list[int]:
        """Ids of the tokens whose bytes start with ``prefix`` (the official code's ``supertoken``)."""
        return [i for i, t in enumerate(self.tokens) if t.startswith(prefix)]

    def chunk_start(self, data: bytes) -> int:
        """Where the last (possibly incomplete) chunk of ``data`` begins: after its last boundary byte."""
        return max((i + 1 for i, b in enumerate(data) if b in self.boundary), default=0)
