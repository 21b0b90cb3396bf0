r"""Seeded addition problems balanced over digit lengths, for chunking experiments.

Singh & Strouse (2024), arXiv 2402.14903, sample their few-shot problems per *triplet* (digits of
the first addend, digits of the second, digits of the answer) so that *length-matched* problems
(the answer as long as the longer addend) and *length-mismatched* ones (one digit longer: a carry
into a new digit) are equally frequent; under uniform sampling the share of mismatches would depend
on the lengths. A problem is

.. math:: a + b = c,\qquad \mathrm{mismatch} = [\,\mathrm{len}(c) > \max(\mathrm{len}(a), \mathrm{len}(b))\,].

:func:`problems` draws every triplet :math:`(n_a, n_b, n_c)` with :math:`n_a, n_b` in
``[min_digits, max_digits]`` and :math:`n_c \in \{\max(n_a, n_b), \max(n_a, n_b) + 1\}` equally
often (its exact split when the count is a multiple of the number of triplets), then :math:`a`
uniformly among the :math:`n_a`-digit numbers and :math:`b` uniformly among the :math:`n_b`-digit
numbers that make :math:`a + b` an :math:`n_c`-digit number (:math:`a` is redrawn when none does).
The within-triplet distribution is our choice: the paper's is not stated in what we could read.

:func:`tokenize` writes ``a + b = c <eos>`` in a chunking of :mod:`replib.tokenize.digits` as a
next-token task whose loss sees only the answer tokens and ``<eos>``.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np
import torch

from ..tokenize.digits import VOCAB, DigitVocab

IGNORE = -100  # cross-entropy's ignore_index: the prompt's and the padding's targets


def n_digits(x: np.ndarray) -> np.ndarray:
    """Decimal digits of each non-negative integer (0 has one)."""
    return np.array([len(str(int(v))) for v in np.asarray(x).ravel()]).reshape(np.shape(x))


def length_mismatch(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """True where the sum has more digits than the longer addend."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    return n_digits(a + b) > np.maximum(n_digits(a), n_digits(b))


def triplets(min_digits: int, max_digits: int) -> list[tuple[int, int, int]]:
    """Every (addend-1 digits, addend-2 digits, answer digits) the range allows."""
    return [(na, nb, max(na, nb) + extra) for na, nb in product(range(min_digits, max_digits + 1), repeat=2)
            for extra in (0, 1)]


def _low(n: np.ndarray) -> np.ndarray:
    return np.where(n == 1, 0, 10 ** (n - 1))  # the smallest n-digit number (0 counts as one digit)


@dataclass
class Problems:
    a: np.ndarray  # int64 addends
    b: np.ndarray

    @property
    def total(self) -> np.ndarray:
        return self.a + self.b

    @property
    def mismatch(self) -> np.ndarray:
        return length_mismatch(self.a, self.b)

    def __len__(self) -> int:
        return len(self.a)


def problems(n: int, min_digits: int, max_digits: int, seed: int) -> Problems:
    """``n`` problems, triplets balanced (see the module docstring), drawn from ``seed`` alone."""
    if not 1 <= min_digits <= max_digits <= 17:
        raise ValueError(f"need 1 <= min_digits <= max_digits <= 17 (int64 sums), got {min_digits}, {max_digits}")
    rng = np.random.default_rng(seed)
    trip = np.array(triplets(min_digits, max_digits), dtype=np.int64)[rng.permutation(np.arange(n) % len(
        triplets(min_digits, max_digits)))]
    na, nb, nc = trip.T
    a, b = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    todo = np.arange(n)
    while len(todo):
        lo_a, hi_a = _low(na[todo]), 10 ** na[todo] - 1
        a[todo] = lo_a + (rng.random(len(todo)) * (hi_a - lo_a + 1)).astype(np.int64)
        lo_b = np.maximum(_low(nb[todo]), _low(nc[todo]) - a[todo])
        hi_b = np.minimum(10 ** nb[todo] - 1, 10 ** nc[todo] - 1 - a[todo])
        ok = lo_b <= hi_b
        b[todo[ok]] = lo_b[ok] + (rng.random(int(ok.sum())) * (hi_b[ok] - lo_b[ok] + 1)).astype(np.int64)
        todo = todo[~ok]
    return Problems(a, b)


@dataclass
class Tokenized:
    """A next-token task: ``x`` (N, T) inputs, ``y`` (N, T) targets, ``IGNORE`` except at the
    answer's tokens and ``<eos>``; rows padded at the end with ``<eos>``."""

    x: torch.Tensor
    y: torch.Tensor

    @property
    def seq_len(self) -> int:
        return self.x.shape[1]

    def to(self, device) -> "Tokenized":
        return Tokenized(self.x.to(device), self.y.to(device))


def tokenize(probs: Problems, chunking: str, seq_len: int | None = None, size: int = 3,
             vocab: DigitVocab = VOCAB) -> Tokenized:
    """``a + b = c <eos>`` per problem under ``chunking`` (groups of ``size`` digits); ``seq_len``
    pads every row to that length (default: the longest row)."""
    rows = [vocab.encode(int(a), int(b), int(a + b), chunking, size) for a, b in zip(probs.a, probs.b)]
    longest = max(len(ids) for ids, _ in rows) - 1
    T = seq_len or longest
    if T < longest:
        raise ValueError(f"seq_len={T} is shorter than the longest problem ({longest} tokens)")
    xs, ys = [], []
    for ids, start in rows:
        pad = T + 1 - len(ids)
        xs.append(ids[:-1] + [vocab.eos] * pad)
        ys.append([IGNORE] * (start - 1) + ids[start:] + [IGNORE] * pad)  # answer and <eos>, from "=" on
    x, y = torch.tensor(xs), torch.tensor(ys)
    return Tokenized(x, y)


def max_tokens(max_digits: int, chunking: str, size: int = 3) -> int:
    """Input length (tokens, the last one excluded) of the longest problem with ``max_digits``-digit
    addends: every problem of the range fits in it."""
    per = (lambda n: n) if chunking == "single" else (lambda n: -(-n // size))  # noqa: E731
    return 2 * per(max_digits) + per(max_digits + 1) + 2
