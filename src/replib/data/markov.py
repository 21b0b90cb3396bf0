"""Seeded Markov-chain byte sources whose next-byte distributions are known exactly.

Ground truth for chapter 36 (Phan et al., ICLR 2025): a tokenized model's next-byte predictions
are compared with the source's true conditional :math:`P(x_{n+1} \\mid x_{1:n})`.

:class:`MarkovWords` is a first-order Markov chain over a small alphabet plus a separator byte
(a space). Each row of its transition matrix is drawn from a Dirichlet distribution with a seeded
generator. A *word* runs from one separator to the next and includes the separator that ends it.
Two rules make the pushforward through a tokenizer exactly computable:

- the chain restarts in the separator state after every separator, so words are i.i.d.;
- a word reaches at most ``max_len`` bytes: after ``max_len - 1`` letters the separator is forced.

Then the source is a finite distribution over words, :math:`P(w) = \\prod_i P(w_i \\mid w_{i-1})`
(with :math:`w_0` the separator and the forced last step counted as probability one), and the next
byte depends only on the last byte and the length of the current word.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


@dataclass
class MarkovWords:
    letters: bytes = b"abc"
    sep: int = ord(" ")
    max_len: int = 6  # bytes per word, the separator included
    concentration: float = 0.5  # Dirichlet parameter of each transition row (small: peaked rows)
    seed: int = 0

    def __post_init__(self):
        if self.sep in self.letters:
            raise ValueError("the separator must not be a letter")
        self.alphabet = bytes(sorted(self.letters + bytes([self.sep])))  # sorted: the order of every array
        self.index = {b: i for i, b in enumerate(self.alphabet)}
        k = len(self.alphabet)
        rng = np.random.default_rng(self.seed)
        self.transition = rng.dirichlet(np.full(k, self.concentration), size=k)  # row: previous byte

    def next_byte_probs(self, prefix: bytes) -> np.ndarray:
        """:math:`P(x_{n+1} = b \\mid x_{1:n})` over ``alphabet``: the chain's row for the last byte
        (the separator's at a word start), or the forced separator at a full word."""
        start = max((i + 1 for i, b in enumerate(prefix) if b == self.sep), default=0)
        if len(prefix) - start == self.max_len - 1:
            p = np.zeros(len(self.alphabet))
            p[self.index[self.sep]] = 1.0
            return p
        last = prefix[-1] if len(prefix) > start else self.sep
        return self.transition[self.index[last]].copy()

    def continuation_prob(self, prefix: bytes, continuation: bytes) -> float:
        """:math:`P(x_{n+1:n+k} = c \\mid x_{1:n})`, chained from :meth:`next_byte_probs`."""
        p = 1.0
        for i, b in enumerate(continuation):
            p *= self.next_byte_probs(prefix + continuation[:i])[self.index[b]]
        return float(p)

    def words(self) -> dict[bytes, float]:
        """Every word (letters then the separator) with its probability; they sum to one."""
        out = {}
        for m in range(self.max_len):
            for letters in itertools.product(self.letters, repeat=m):
                word = bytes(letters) + bytes([self.sep])
                p = self.continuation_prob(b"", word)
                if p > 0:
                    out[word] = p
        return out

    def sample(self, n_bytes: int, rng: np.random.Generator) -> bytes:
        """About ``n_bytes`` bytes of the stream (whole words, so it ends with a separator)."""
        words = list(self.words().items())
        probs = np.array([p for _, p in words])
        mean_len = float(sum(len(w) * p for w, p in words))
        draw = rng.choice(len(words), size=int(n_bytes / mean_len) + 1, p=probs / probs.sum())
        return b"".join(words[i][0] for i in draw)

    def entropy_rate(self) -> float:
        """Nats per byte of the stream: word entropy over mean word length (words are i.i.d.)."""
        words = self.words()
        ps = np.array(list(words.values()))
        lens = np.array([len(w) for w in words])
        return float(-(ps * np.log(ps)).sum() / (ps * lens).sum())
