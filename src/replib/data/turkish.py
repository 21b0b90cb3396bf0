r"""Offline Turkish stand-ins for chapter 31 (Bayram et al. 2025, arXiv 2502.07057): a lexicon, a
suffix inventory, a root set and a pseudo-corpus.

The paper validates tokens against a root/suffix list plus ITU's web services (IsTurkish,
MorphAnalyzer) and tokenizes the TR-MMLU questions. None of that is available offline, so:

- :func:`lexicon`: the "valid Turkish words" are the ``n`` most frequent words of ``wordfreq``'s
  Turkish list (lower-case, letters only).
- :data:`SUFFIXES`: frequent inflectional and derivational suffixes written with archiphonemes
  (``A`` ∈ {a, e}, ``I`` ∈ {ı, i, u, ü}, ``D`` ∈ {d, t}, ``C`` ∈ {c, ç}) and expanded by
  :func:`harmony_variants` into the surface forms vowel harmony allows: the two-way vowel ``A``
  follows backness, the four-way ``I`` backness and rounding of the vowel before it, so ``lArI``
  gives *ları, leri* and never *lerı* or *laru*.
- :func:`roots`: lexicon words (two letters or more) that are not a shorter lexicon word followed
  by one or more listed suffixes: the analog of "the analyzer returns the token itself as the root".
- :func:`pseudo_corpus`: words drawn independently from a language's unigram distribution
  (``wordfreq.word_frequency``, renormalised over the list), seeded. It has the word frequencies and
  the morphology of real text and no syntax at all.
"""
from __future__ import annotations

from functools import lru_cache
from itertools import product

import numpy as np
import wordfreq

TURKISH_LETTERS = "abcçdefgğhıijklmnoöpqrsştuüvwxyzâîû"
ENGLISH_LETTERS = "abcdefghijklmnopqrstuvwxyz"
LETTERS = {"tr": TURKISH_LETTERS, "en": ENGLISH_LETTERS}

# The last root vowel's class (back?, rounded?); the four-way vowel I is ı, u, i, ü by class
HARMONY = ((True, False), (True, True), (False, False), (False, True))
FOUR_WAY = {(True, False): "ı", (True, True): "u", (False, False): "i", (False, True): "ü"}
CONSONANTS = {"D": "dt", "C": "cç"}

# Inflection first (number, case, possession, person, tense/aspect/mood), then frequent derivation.
SUFFIX_TEMPLATES = (
    "lAr",                                              # plural
    "I", "yI", "nI",                                    # accusative
    "A", "yA", "nA",                                    # dative
    "DA", "nDA",                                        # locative
    "DAn", "nDAn",                                      # ablative
    "In", "nIn",                                        # genitive
    "lA", "ylA",                                        # instrumental / comitative
    "Im", "sI", "ImIz", "InIz", "lArI",                 # possessive
    "DIr", "sIn", "Iz", "sInIz",                        # copula / person
    "DI", "DIm", "DIn", "DIk", "DIlAr",                 # past
    "mIş", "Iyor", "yor", "AcAk", "yAcAk", "Ar", "Ir", "r",  # tense / aspect
    "mAlI", "sA", "ysA", "mA", "mAz", "Abil", "yAbil",  # mood, negation, ability
    "mAk", "Iş", "DIğI", "AcAğI", "yAn", "An",    # non-finite forms
    "lI", "sIz", "lIk", "CI", "ki", "CA", "lAş", "lAn", "Il",  # derivation
)


def harmony_variants(template: str) -> list[str]:
    """Every surface form of an archiphonemic suffix ``template`` (e.g. ``DAn`` → dan, den, tan,
    ten). Vowels harmonise in sequence: the first with the root's last vowel (each of the four
    classes), each later one with the suffix vowel before it (``A`` is unrounded, so ``lArI`` gives
    ları, leri and never laru); ``D``/``C`` are free (voicing assimilation)."""
    forms = []
    for back, rounded in HARMONY:
        out = []
        for ch in template:
            if ch == "A":
                out.append("a" if back else "e")
                rounded = False
            elif ch == "I":
                out.append(FOUR_WAY[(back, rounded)])
            else:
                out.append(ch)
        forms += ["".join(p) for p in product(*(CONSONANTS.get(ch, ch) for ch in out))]
    return sorted(set(forms))


SUFFIXES: frozenset[str] = frozenset(f for t in SUFFIX_TEMPLATES for f in harmony_variants(t))

# Case suffixes for the morphology probe: one class per case, forms that belong to one case only.
CASE_TEMPLATES = {"accusative": ("yI", "nI"), "dative": ("yA", "nA"), "locative": ("DA", "nDA"),
                  "ablative": ("DAn", "nDAn"), "genitive": ("nIn",)}


def words(lang: str, n: int) -> list[str]:
    """The ``n`` most frequent ``wordfreq`` words of ``lang`` made only of that language's letters
    (no digits, no foreign scripts), in frequency order."""
    return list(frequencies(lang, n))


@lru_cache(maxsize=4)
def frequencies(lang: str, n: int) -> dict[str, float]:
    """The ``n`` most frequent letters-only words of ``lang`` and their ``wordfreq`` frequencies."""
    letters = set(LETTERS[lang])
    ranked = sorted(wordfreq.get_frequency_dict(lang).items(), key=lambda kv: (-kv[1], kv[0]))
    kept = [(w, f) for w, f in ranked if set(w) <= letters]
    return dict(kept[:n])


def lexicon(n: int = 50_000) -> frozenset[str]:
    """The "valid Turkish words": the top-``n`` ``wordfreq`` Turkish list, letters only."""
    return frozenset(words("tr", n))


def splits_into_suffixes(rest: str, suffixes: frozenset[str] = SUFFIXES) -> bool:
    """Whether ``rest`` is one or more listed suffixes in a row (e.g. ``lerde`` = ler + de)."""
    return _chain(rest, suffixes)


@lru_cache(maxsize=1 << 20)
def _chain(rest: str, suffixes: frozenset[str]) -> bool:
    longest = _longest(suffixes)
    reach = [True] + [False] * len(rest)  # reach[i]: rest[:i] is a chain of suffixes
    for i in range(len(rest)):
        if reach[i]:
            for j in range(i + 1, min(len(rest), i + longest) + 1):
                reach[j] = reach[j] or rest[i:j] in suffixes
    return bool(rest) and reach[-1]


@lru_cache(maxsize=8)
def _longest(suffixes: frozenset[str]) -> int:
    return max(map(len, suffixes))


def decompositions(word: str, lexicon: frozenset[str], suffixes: frozenset[str] = SUFFIXES) -> list[str]:
    """The roots ``r`` (lexicon words of two letters or more, shorter than ``word``) such that
    ``word`` = r + one or more listed suffixes."""
    return [word[:k] for k in range(2, len(word))
            if word[:k] in lexicon and splits_into_suffixes(word[k:], suffixes)]


def roots(lexicon: frozenset[str], suffixes: frozenset[str] = SUFFIXES) -> frozenset[str]:
    """Lexicon words of two letters or more with no decomposition into a lexicon root + suffixes
    (so ``ev`` is a root and ``evler``, ``evlerde`` are not)."""
    return frozenset(w for w in lexicon if len(w) >= 2 and not decompositions(w, lexicon, suffixes))


def case_words(lexicon: frozenset[str], root_set: frozenset[str]) -> dict[str, str]:
    """Lexicon words that are a root + exactly one case suffix, with the case as label; words whose
    ending fits two cases (or a root that is not in ``root_set``) are left out."""
    case_of: dict[str, set[str]] = {}
    for case, templates in CASE_TEMPLATES.items():
        for form in (f for t in templates for f in harmony_variants(t)):
            case_of.setdefault(form, set()).add(case)
    longest = max(map(len, case_of))
    out = {}
    for w in lexicon:
        hits = {case for k in range(1, min(longest, len(w) - 2) + 1)
                if w[-k:] in case_of and w[:-k] in root_set for case in case_of[w[-k:]]}
        if len(hits) == 1:
            out[w] = hits.pop()
    return dict(sorted(out.items()))


def unigram(lang: str, n_types: int) -> tuple[list[str], np.ndarray]:
    """The ``n_types`` most frequent words of ``lang`` and their renormalised frequencies."""
    table = frequencies(lang, n_types)
    freq = np.fromiter(table.values(), dtype=float, count=len(table))
    return list(table), freq / freq.sum()


def pseudo_corpus(lang: str, n_words: int, seed: int, *, n_types: int = 100_000,
                  words_per_line: int = 12) -> list[str]:
    """``n_words`` words drawn i.i.d. from ``lang``'s unigram distribution (``numpy`` generator
    seeded with ``seed``), as lines of ``words_per_line`` words joined by single spaces."""
    vocab, p = unigram(lang, n_types)
    idx = np.random.default_rng(seed).choice(len(vocab), size=n_words, p=p)
    drawn = [vocab[i] for i in idx]
    return [" ".join(drawn[i:i + words_per_line]) for i in range(0, n_words, words_per_line)]
