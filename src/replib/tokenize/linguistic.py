r"""Linguistic tokenizer metrics: %TR and %Pure (Bayram et al. 2025, "Tokenization Standards for
Linguistic Integrity: Turkish as a Benchmark", arXiv 2502.07057; code github.com/malibayram/tokenizer_benchmark).

The official scorer (``score_tokenizer`` in the repository's ``test_tokenizer.ipynb`` with
``is_turkish.py`` and ``is_pure.py``) encodes the whole corpus, decodes **each token id on its own**,
and keeps the **set** of distinct token strings. Both validators look a token up in a root/suffix
list first and otherwise send the tokens, joined by spaces, to a web service that answers per
whitespace-separated word, so a token's surrounding space and word marker do not count: ``" evler"``,
``"▁evler"`` and ``"evler"`` are one unit. The unique units are

.. math:: U = \{\,\mathrm{unit}(t) : t \text{ a token of the corpus}\,\} \setminus \{\text{""}\},

and with a validity test (a valid word of the language) and a purity test (a root or a valid
morpheme on its own, not root + suffix)

.. math:: \%\mathrm{TR} = 100\,\frac{|\{u\in U : \mathrm{valid}(u)\}|}{|U|}, \qquad
          \%\mathrm{Pure} = 100\,\frac{|\{u\in U : \mathrm{pure}(u)\}|}{|U|}.

Both denominators are the number of *unique* units (the paper's table: gemma-2's 3,104 Turkish of
6,383 unique tokens is its 48.63 %), not the running token count. The official code is
case-sensitive and does no other normalisation; neither does this module.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

WORD_MARKERS = ("▁", "Ġ")  # SentencePiece and byte-level BPE word-start markers
CONTINUATION = "##"  # WordPiece: this piece continues the previous one


def strip_marker(token: str) -> str:
    """A token's text without word markers: every ``▁``/``Ġ`` removed (the official
    ``token.replace(special_bow, '')``) and a leading ``##`` dropped; surrounding space stripped."""
    for marker in WORD_MARKERS:
        token = token.replace(marker, "")
    if token.startswith(CONTINUATION) and len(token) > len(CONTINUATION):
        token = token[len(CONTINUATION):]
    return token.strip()


def unique_units(tokens: Iterable[str]) -> set[str]:
    """The set ``U`` of distinct units in decoded tokens: markers stripped, split on whitespace as
    the validating service does, empty strings dropped."""
    return {part for t in tokens for part in strip_marker(t).split()}


def share(units: set[str], test: Callable[[str], bool]) -> float:
    """``100 * |{u in units : test(u)}| / |units|`` (a percentage; NaN for no units)."""
    return 100.0 * sum(map(test, units)) / len(units) if units else float("nan")


def percent_tr(units: set[str], valid: Callable[[str], bool]) -> float:
    """%TR: the share of unique units that are valid words (``valid``: the lexicon test)."""
    return share(units, valid)


def percent_pure(units: set[str], pure: Callable[[str], bool]) -> float:
    """%Pure: the share of unique units that are whole linguistic units (a root or a morpheme)."""
    return share(units, pure)


def lexicon_tests(lexicon: Iterable[str], roots: Iterable[str], suffixes: Iterable[str]
                  ) -> tuple[Callable[[str], bool], Callable[[str], bool]]:
    """The validity and purity tests from word lists, as the official code combines them: a unit
    in the root/suffix list is both valid and pure; otherwise it is valid if it is a word of the
    ``lexicon`` (the IsTurkish service's role) and pure if it is a root (the MorphAnalyzer
    returning the unit itself as its root)."""
    listed = frozenset(roots) | frozenset(suffixes)
    words = frozenset(lexicon) | listed
    return words.__contains__, listed.__contains__


@dataclass(frozen=True)
class Scores:
    """The paper's five metrics for one tokenizer on one corpus (time in seconds)."""

    vocab_size: int
    token_count: int
    unique: int
    percent_tr: float
    percent_pure: float
    seconds: float


def median_time(fn: Callable[[], object], repeats: int = 3) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs (``time.perf_counter``)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def score(encode: Callable[[list[str]], list[list[int]]], decode_one: Callable[[int], str],
          vocab_size: int, texts: list[str], valid: Callable[[str], bool],
          pure: Callable[[str], bool], repeats: int = 3) -> Scores:
    """Score a tokenizer as the official ``score_tokenizer`` does: encode ``texts``, count the
    running tokens, decode each distinct id on its own, take the unique units and their %TR and
    %Pure; the time is the median of ``repeats`` encodings of the corpus."""
    ids = encode(texts)
    distinct = {i for seq in ids for i in seq}
    units = unique_units(decode_one(i) for i in distinct)
    return Scores(vocab_size=vocab_size, token_count=sum(map(len, ids)), unique=len(units),
                  percent_tr=percent_tr(units, valid), percent_pure=percent_pure(units, pure),
                  seconds=median_time(lambda: encode(texts), repeats))
