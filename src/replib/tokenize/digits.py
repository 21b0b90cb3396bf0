r"""Digit chunking for arithmetic: left-to-right (L2R), right-to-left (R2L) and single digits.

Singh & Strouse (2024), *Tokenization counts: the impact of tokenization on arithmetic in frontier
LLMs*, arXiv 2402.14903. GPT-3.5/GPT-4's ``cl100k_base`` tokenizer splits a run of digits with the
pre-tokenization pattern ``\p{N}{1,3}``, scanning from the left, so ``1234567`` becomes
``[123][456][7]`` (L2R). Writing the number with thousands separators, ``1,234,567``, gives
``[1][,][234][,][567]``: groups of three aligned to the *right* (R2L), the grouping of place value.
The paper finds R2L far better for few-shot addition.

For a digit string :math:`s` of length :math:`n` and chunk size 3:

.. math::
    \mathrm{L2R}(s) = [s_{1:3}, s_{4:6}, \dots, s_{3k+1:n}],\qquad
    \mathrm{R2L}(s) = [s_{1:r}, s_{r+1:r+3}, \dots, s_{n-2:n}],\quad r = n - 3\lfloor (n-1)/3 \rfloor,

both with :math:`\lceil n/3 \rceil` chunks, so the two chunkings cost the same number of tokens
(R2L by commas costs one extra token per comma; :func:`comma_token_count`). The only difference is
where the chunk boundaries fall: under R2L chunk :math:`j` from the right always holds the digits
of :math:`10^{3j}\dots10^{3j+2}` of every number, under L2R it depends on the number's length.

The vocabulary (:class:`DigitVocab`) holds every string of 1 to 3 digits, leading zeros included
(10 + 100 + 1000 = 1110 tokens: ``"07"`` and ``"7"`` are different tokens, as in cl100k), then
``+``, ``=`` and an end-of-sequence token. The single-digit control uses its first 10 tokens.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

CHUNKINGS = ("l2r", "r2l", "single")
CL100K_DIGITS = re.compile(r"\d{1,3}")  # cl100k_base's \p{N}{1,3}, restricted to ASCII digits
OPERATORS = ("+", "=", "<eos>")


def chunk(digits: str, chunking: str, size: int = 3) -> list[str]:
    """``digits`` cut into tokens: ``"l2r"`` groups of ``size`` from the left, ``"r2l"`` from the
    right, ``"single"`` one digit each. The chunks always concatenate back to ``digits``."""
    if not digits.isdigit() or not digits.isascii():
        raise ValueError(f"not a digit string: {digits!r}")
    if not 1 <= size <= 3:
        raise ValueError(f"chunk size must be 1, 2 or 3 (the vocabulary's longest string), not {size}")
    if chunking == "l2r":
        return [digits[i:i + size] for i in range(0, len(digits), size)]
    if chunking == "r2l":
        head = len(digits) % size or size  # the leftmost group takes the remainder
        return [digits[:head]] + [digits[i:i + size] for i in range(head, len(digits), size)]
    if chunking == "single":
        return list(digits)
    raise ValueError(f"unknown chunking {chunking!r}; valid: {', '.join(CHUNKINGS)}")


def cl100k_digit_split(text: str) -> list[str]:
    """The digit runs of ``text`` as cl100k pre-tokenizes them: ``\\d{1,3}`` scanned left to right
    (separators such as commas are separate tokens and are dropped here)."""
    return CL100K_DIGITS.findall(text)


def comma_token_count(n: int) -> int:
    """Tokens cl100k spends on ``f"{n:,}"``: its R2L digit groups plus one token per comma."""
    groups = cl100k_digit_split(f"{n:,}")
    return 2 * len(groups) - 1


@dataclass(frozen=True)
class DigitVocab:
    """Token ids: the 1110 digit strings of length 1-3 (by length, then value), then the operators."""

    def __post_init__(self):
        strings = [f"{i:0{k}d}" for k in (1, 2, 3) for i in range(10 ** k)] + list(OPERATORS)
        object.__setattr__(self, "strings", tuple(strings))
        object.__setattr__(self, "index", {s: i for i, s in enumerate(strings)})

    def __len__(self) -> int:
        return len(self.strings)

    @property
    def plus(self) -> int:
        return self.index["+"]

    @property
    def equals(self) -> int:
        return self.index["="]

    @property
    def eos(self) -> int:
        return self.index["<eos>"]

    def number(self, n: int, chunking: str, size: int = 3) -> list[int]:
        """The token ids of the non-negative integer ``n`` under ``chunking`` (groups of ``size``)."""
        return [self.index[c] for c in chunk(str(n), chunking, size)]

    def encode(self, a: int, b: int, total: int, chunking: str, size: int = 3) -> tuple[list[int], int]:
        """``a + b = total <eos>`` as token ids, and the index of the first answer token."""
        prompt = self.number(a, chunking, size) + [self.plus] + self.number(b, chunking, size) + [self.equals]
        return prompt + self.number(total, chunking, size) + [self.eos], len(prompt)

    def decode(self, ids: list[int]) -> str:
        """Token ids back to text (``<eos>`` and anything after it dropped)."""
        out = []
        for i in ids:
            if i == self.eos:
                break
            out.append(self.strings[i])
        return "".join(out)


VOCAB = DigitVocab()
