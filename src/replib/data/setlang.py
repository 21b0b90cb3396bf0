r"""A synthetic set-enumeration language with spurious surface attributes (chapter 34's analog).

Peng, An & Shang (ICLR 2025, arXiv 2410.02284) probe an LLM with questions that have many valid
answers ("name a sports league") and rank the first token of every answer. Here the questions are
*sets*: set :math:`s` has :math:`m_s` member tokens drawn without replacement from ``n_items`` item
tokens, and every item carries a surface *attribute* (a stand-in for "starts with the letter P")
drawn uniformly and independently of membership. Three line formats, mixed at random:

- listing: ``SET s : a1 a2 ... ak END`` (a random permutation's first :math:`k` members);
- exclusion: ``SET s EXCLUDE e1 ... ej : a END`` (:math:`a` a member not among the :math:`e_i`):
  "give another member", the format In-Context Navigation needs (the paper's numbered list);
- attribute: ``ATTR c : w END`` (:math:`w` any item of attribute :math:`c`): the attribute is a
  real output feature, as spelling is for an LLM, so keys have a reason to cluster by it.

Token ids: items ``[0, n_items)``, then ``PAD SET EXCLUDE COLON END ATTR``, then one id per set,
then one per attribute. Everything is drawn from NumPy generators seeded explicitly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

IGNORE = -100  # target of positions the loss skips (padding, the line's unpredictable head)
SPECIALS = ("PAD", "SET", "EXCLUDE", "COLON", "END", "ATTR")


@dataclass
class SetLanguage:
    """``n_sets`` sets over ``n_items`` items with ``n_attrs`` attributes, fixed by ``seed``.

    ``max_list`` caps a listing's length and an exclusion list's length (lines stay short);
    ``mix`` gives the probabilities of the listing, exclusion and attribute formats.
    """

    n_items: int = 2000
    n_sets: int = 2000
    n_attrs: int = 26
    min_size: int = 30
    max_size: int = 40
    max_list: int = 16
    mix: tuple[float, float, float] = (0.45, 0.45, 0.10)
    seed: int = 0
    members: list[np.ndarray] = field(init=False, repr=False)
    attr_of: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        if not 1 <= self.min_size <= self.max_size <= self.n_items:
            raise ValueError(f"need 1 <= min_size <= max_size <= n_items, got {self.min_size}, "
                             f"{self.max_size}, {self.n_items}")
        rng = np.random.default_rng([self.seed, 34])
        sizes = rng.integers(self.min_size, self.max_size + 1, self.n_sets)
        self.members = [rng.choice(self.n_items, m, replace=False) for m in sizes]
        self.attr_of = rng.integers(0, self.n_attrs, self.n_items)  # independent of membership
        self._by_attr = [np.flatnonzero(self.attr_of == c) for c in range(self.n_attrs)]
        self.PAD, self.SET, self.EXCLUDE, self.COLON, self.END, self.ATTR = range(
            self.n_items, self.n_items + len(SPECIALS))

    # ---- token layout
    @property
    def set_base(self) -> int:
        return self.n_items + len(SPECIALS)

    @property
    def attr_base(self) -> int:
        return self.set_base + self.n_sets

    @property
    def vocab_size(self) -> int:
        return self.attr_base + self.n_attrs

    @property
    def seq_len(self) -> int:
        """Model input length: the longest line (an exclusion line) minus its last token."""
        return self.max_list + 5

    def set_token(self, s: int) -> int:
        return self.set_base + s

    def attribute_of_tokens(self) -> torch.Tensor:
        """Every token's attribute (items), or ``n_attrs`` ("none") for the other tokens."""
        out = np.full(self.vocab_size, self.n_attrs)
        out[: self.n_items] = self.attr_of
        return torch.as_tensor(out)

    def membership(self) -> torch.Tensor:
        """(n_sets, n_items) bool: item ``w`` belongs to set ``s``."""
        m = torch.zeros(self.n_sets, self.n_items, dtype=torch.bool)
        for s, mem in enumerate(self.members):
            m[s, torch.as_tensor(mem)] = True
        return m

    # ---- lines
    def listing(self, s: int, k: int, rng: np.random.Generator) -> list[int]:
        return [self.SET, self.set_token(s), self.COLON,
                *rng.permutation(self.members[s])[:k].tolist(), self.END]

    def exclusion(self, s: int, j: int, rng: np.random.Generator) -> list[int]:
        order = rng.permutation(self.members[s])
        return [self.SET, self.set_token(s), self.EXCLUDE, *order[:j].tolist(), self.COLON,
                int(order[j]), self.END]

    def attribute_line(self, c: int, rng: np.random.Generator) -> list[int]:
        return [self.ATTR, self.attr_base + c, self.COLON, int(rng.choice(self._by_attr[c])), self.END]

    def line(self, rng: np.random.Generator) -> list[int]:
        kind = rng.choice(3, p=self.mix)
        if kind == 2:
            return self.attribute_line(int(rng.integers(self.n_attrs)), rng)
        s = int(rng.integers(self.n_sets))
        cap = min(self.max_list, len(self.members[s]) - 1)
        if kind == 0:
            return self.listing(s, int(rng.integers(1, cap + 1)), rng)
        return self.exclusion(s, int(rng.integers(0, cap + 1)), rng)

    def batch(self, n: int, rng: np.random.Generator, device: torch.device | str = "cpu"):
        """``n`` random lines as inputs and next-token targets, (n, seq_len) each. The first
        target (the set or attribute id after ``SET``/``ATTR``) and padding are ``IGNORE``."""
        x = np.full((n, self.seq_len), self.PAD)
        y = np.full((n, self.seq_len), IGNORE)
        for i in range(n):
            toks = self.line(rng)
            x[i, : len(toks) - 1] = toks[:-1]
            y[i, 1: len(toks) - 1] = toks[2:]
        return torch.as_tensor(x, device=device), torch.as_tensor(y, device=device)

    # ---- prompts
    def listing_prompt(self, s: int) -> list[int]:
        """``SET s :``: the plain question; its next-token distribution ranks the answers."""
        return [self.SET, self.set_token(s), self.COLON]

    def navigation_prompt(self, s: int, explored: list[int]) -> list[int]:
        """``SET s EXCLUDE e1 ... ej :``: the In-Context Navigation prompt (explored answers listed)."""
        return [self.SET, self.set_token(s), self.EXCLUDE, *explored, self.COLON]
