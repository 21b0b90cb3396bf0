r"""Exact next-byte probabilities from a token-level language model (Phan et al., ICLR 2025,
arXiv 2410.09303, "Exact Byte-Level Probabilities from Tokenized Language Models for FIM-Tasks and
Model Ensembles"; official code facebookresearch/Exact-Byte-Level-Probabilities-from-Tokenized-LMs).

A token LM :math:`P(t_{k+1}\mid t_{1:k})` over *canonical* encodings (``BPE.is_valid``) implicitly
defines a byte process. The probability that the byte stream starts with :math:`x_{1:n}` is a sum
over its **cover encodings** (the Byte-Token Representation Lemma):

.. math::

    P(x_{1:n}) = \sum_{t_{1:k}\in\mathrm{cover}(x_{1:n})} \prod_{i\le k} P(t_i\mid t_{<i}),

    \mathrm{cover}(x_{1:n}) = \{t_{1:k} \text{ valid}:\ \mathrm{dec}(t_{<k}) \text{ is a strict prefix
    of } x_{1:n},\ x_{1:n} \text{ is a prefix of } \mathrm{dec}(t_{1:k})\}.

The last token may *overshoot* the prefix. Because a prefix of a canonical BPE encoding is
canonical, :math:`t_{<k} = \mathrm{enc}(x_{1:i})` with :math:`i = |\mathrm{dec}(t_{<k})|`, so the
covers are enumerated by split point :math:`i`: the canonical encoding of :math:`x_{1:i}` followed by
any token whose bytes start with :math:`x_{i+1:n}`, kept if the whole sequence is valid.

**Anchor.** With whitespace pre-tokenisation no token crosses a chunk end, so covers need only be
enumerated inside the last, incomplete chunk :math:`q` (after the last boundary byte); the
encoding ``div`` of everything before it is shared by every cover and conditions every
probability (the official code's ``whitespace_split``; it cancels in the next-byte ratio).

**Next byte.** With :math:`T=\mathrm{enc}(x_{1:n})` (the one cover with empty overshoot),

.. math::

    P(x_{1:n}b) = \sum_{c\in\mathrm{cover}(x_{1:n}),\ c\ne T,\ \mathrm{overshoot}(c)_1=b} P(c)
                 + P(T)\sum_{t \text{ valid after } T,\ \mathrm{dec}(t)_1=b} P(t\mid T),

and :math:`P(b\mid x_{1:n}) = P(x_{1:n}b)/\sum_{b'} P(x_{1:n}b')`. For the exact token model the
denominator equals :math:`P(x_{1:n})` (invalid continuations have zero mass); for a trained model
invalid next tokens are masked to zero first and the sum renormalises, as the official code does.

**Baselines.** *Naive*: condition on :math:`T` and read the next token's first byte,
:math:`P(b)\propto\sum_{\mathrm{dec}(t)_1=b}P(t\mid T)`. When the prompt ends inside a token this is
*tokenization bias*: :math:`T` says the token ended here, so bytes that would have merged get
(near) zero mass. *Token healing*: back off the last token :math:`r` of :math:`T` and constrain the
next token to start with :math:`\mathrm{dec}(r)`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from .bpe import BPE

Context = tuple[int, ...]


class TokenLM(Protocol):
    """A token-level LM: next-token log-probabilities for a batch of token contexts."""

    vocab_size: int

    def next_logprobs(self, contexts: Sequence[Context]) -> np.ndarray:
        """``(len(contexts), vocab_size)`` array of :math:`\\log P(\\cdot \\mid \\text{context})`."""


class ChunkPushforwardLM:
    """The exact token model of a byte source made of i.i.d. chunks (``chunk_probs``: every
    complete chunk, e.g. a word with its separator, and its probability), pushed through ``tok``.

    The tokens of the current chunk ``u`` (after the last token that ends a chunk) decide the next
    token: :math:`P(t\\mid u) = M(u\\,t)/M(u)` with :math:`M(u)=\\sum_{w:\\ \\mathrm{enc}(w) \\text{
    starts with } u} P(w)`. An impossible history (:math:`M(u)=0`) gets a uniform conditional: any
    choice is exact there, since every sequence through it has probability zero.
    """

    def __init__(self, tok: BPE, chunk_probs: dict[bytes, float]):
        self.tok, self.vocab_size = tok, tok.vocab_size
        self.mass: dict[Context, np.ndarray] = {}
        for chunk, p in chunk_probs.items():
            enc = tuple(tok.encode(chunk))
            if tok.chunk_start(chunk) != len(chunk):
                raise ValueError(f"{chunk!r} is not one complete chunk")
            for j, t in enumerate(enc):
                self.mass.setdefault(enc[:j], np.zeros(self.vocab_size))[t] += p
        self.ends_chunk = np.array([t[-1] in tok.boundary for t in tok.tokens])

    def current_chunk(self, context: Context) -> Context:
        ends = [i for i, t in enumerate(context) if self.ends_chunk[t]]
        return tuple(context[ends[-1] + 1:]) if ends else tuple(context)

    def next_logprobs(self, contexts: Sequence[Context]) -> np.ndarray:
        out = np.full((len(contexts), self.vocab_size), -np.log(self.vocab_size))
        for row, ctx in enumerate(contexts):
            m = self.mass.get(self.current_chunk(tuple(ctx)))
            if m is not None and m.sum() > 0:
                with np.errstate(divide="ignore"):
                    out[row] = np.log(m / m.sum())
        return out


@dataclass(frozen=True)
class Cover:
    """One cover encoding of a prefix, relative to the anchor ``div``: ``left`` (the canonical
    encoding of the chunk's first bytes), the last token ``last``, and the bytes it adds beyond the
    prefix (``overshoot``)."""

    left: Context
    last: int
    overshoot: bytes


def split_anchor(tok: BPE, x: bytes) -> tuple[Context, bytes]:
    """``div`` (canonical encoding of ``x`` up to its last chunk) and ``q``, the incomplete chunk."""
    a = tok.chunk_start(x)
    return tuple(tok.encode(x[:a])), x[a:]


def cover_encodings(tok: BPE, q: bytes) -> list[Cover]:
    """Every valid cover of the chunk prefix ``q``, by split point (``extract_cover_prob_bytes``)."""
    covers = []
    for i in range(len(q)):
        left = tuple(tok.encode(q[:i]))
        for t in tok.starting_with(q[i:]):
            if tok.is_valid(left + (t,)):
                covers.append(Cover(left, t, tok.tokens[t][len(q) - i:]))
    return covers


def _first_byte_matrix(tok: BPE) -> np.ndarray:
    """``(vocab, alphabet)`` one-hot of each token's first byte."""
    f = np.zeros((tok.vocab_size, len(tok.alphabet)))
    for i, t in enumerate(tok.tokens):
        f[i, tok.alphabet.index(t[0])] = 1.0
    return f


def _valid_next(tok: BPE, chunk_tokens: Context) -> np.ndarray:
    """Mask of tokens ``t`` with ``chunk_tokens + [t]`` valid (``isvalid``; chunk-local suffices)."""
    return np.array([tok.is_valid(chunk_tokens + (t,)) for t in range(tok.vocab_size)], dtype=float)


def _batched(lm: TokenLM, contexts: set[Context]) -> dict[Context, np.ndarray]:
    order = sorted(contexts, key=lambda c: (len(c), c))
    return dict(zip(order, lm.next_logprobs(order))) if order else {}


def _chain(logp: dict[Context, np.ndarray], div: Context, tokens: Context) -> float:
    """:math:`\\log P(\\text{tokens}\\mid \\text{div})`, token by token."""
    return float(sum(logp[div + tokens[:j]][t] for j, t in enumerate(tokens)))


def next_byte_btr(lm: TokenLM, tok: BPE, prefixes: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Exact next-byte distributions (over ``tok.alphabet``) for each prefix, and
    :math:`\\sum_b P(xb\\mid \\mathrm{div})` (which is :math:`P(x\\mid\\mathrm{div})` for an exact model).
    All the LM calls of all prefixes go in one batch."""
    plans = []
    needed: set[Context] = set()
    for x in prefixes:
        div, q = split_anchor(tok, x)
        covers, T = cover_encodings(tok, q), tuple(tok.encode(q))
        for seq in [c.left for c in covers] + [T]:
            needed.update(div + seq[:j] for j in range(len(seq) + 1))
        plans.append((div, covers, T))
    logp = _batched(lm, needed)
    first = _first_byte_matrix(tok)
    probs, totals = np.zeros((len(prefixes), len(tok.alphabet))), np.zeros(len(prefixes))
    for row, (div, covers, T) in enumerate(plans):
        mass = np.exp(_chain(logp, div, T)) * (np.exp(logp[div + T]) * _valid_next(tok, T)) @ first
        for c in covers:
            if c.overshoot:
                p = np.exp(_chain(logp, div, c.left) + logp[div + c.left][c.last])
                mass[tok.alphabet.index(c.overshoot[0])] += p
        totals[row] = mass.sum()  # 0 only if the model rules the prompt out: then no byte is preferred
        probs[row] = mass / totals[row] if totals[row] > 0 else 1.0 / len(tok.alphabet)
    return probs, totals


def next_byte_naive(lm: TokenLM, tok: BPE, prefixes: Sequence[bytes]) -> np.ndarray:
    """Plain prompting: the first-byte marginal of the next token after ``enc(x)``."""
    contexts = [tuple(tok.encode(x)) for x in prefixes]
    p = np.exp(lm.next_logprobs(contexts)) @ _first_byte_matrix(tok)
    return p / p.sum(axis=1, keepdims=True)


def next_byte_healing(lm: TokenLM, tok: BPE, prefixes: Sequence[bytes]) -> np.ndarray:
    """Token healing: drop the prompt's last token ``r`` (inside the last chunk) and constrain the
    next token to start with its bytes; the byte after them is the answer (if the constrained token
    is ``r`` itself, the byte comes from the token after it). Where an exact model gives the healed
    continuations zero mass (the prompt needs more than one token backed off), healing has no
    answer and the naive distribution stands."""
    first = _first_byte_matrix(tok)
    out = next_byte_naive(lm, tok, prefixes)  # at a chunk boundary there is nothing to heal
    rows = [(row, tuple(tok.encode(x))) for row, x in enumerate(prefixes) if tok.chunk_start(x) < len(x)]
    if not rows:
        return out
    lps = lm.next_logprobs([T[:-1] for _, T in rows] + [T for _, T in rows])
    for (row, T), lp_back, lp_T in zip(rows, lps[:len(rows)], lps[len(rows):]):
        r = tok.tokens[T[-1]]
        mass = np.exp(lp_T) @ first * np.exp(lp_back[T[-1]])
        for t in tok.starting_with(r):
            if len(tok.tokens[t]) > len(r):
                mass[tok.alphabet.index(tok.tokens[t][len(r)])] += np.exp(lp_back[t])
        if mass.sum() > 0:
            out[row] = mass / mass.sum()
    return out


def greedy_btr(lm: TokenLM, tok: BPE, prefixes: Sequence[bytes], k: int) -> list[bytes]:
    """The next ``k`` bytes by greedy byte decoding with :func:`next_byte_btr`."""
    outs = [b""] * len(prefixes)
    for _ in range(k):
        probs, _ = next_byte_btr(lm, tok, [x + o for x, o in zip(prefixes, outs)])
        outs = [o + bytes([tok.alphabet[i]]) for o, i in zip(outs, probs.argmax(axis=1))]
    return outs


def greedy_tokens(lm: TokenLM, tok: BPE, prefixes: Sequence[bytes], k: int, heal: bool = False) -> list[bytes]:
    """The next ``k`` bytes by greedy token decoding after ``enc(x)`` (naive), or after backing off
    the last token of the incomplete chunk and constraining the first new token to extend it (healing)."""
    contexts, skip, allowed = [], [], []
    for x in prefixes:
        div, q = split_anchor(tok, x)
        T = div + tuple(tok.encode(q))
        healing = heal and bool(q)
        contexts.append(T[:-1] if healing else T)
        skip.append(len(tok.tokens[T[-1]]) if healing else 0)
        allowed.append(tok.starting_with(tok.tokens[T[-1]]) if healing else None)
    new = [b""] * len(prefixes)
    while any(len(n) < k + s for n, s in zip(new, skip)):
        lp = lm.next_logprobs(contexts)
        for row in range(len(prefixes)):
            if allowed[row] is not None:  # the constrained first step of token healing
                t = max(allowed[row], key=lambda i: lp[row, i])
                allowed[row] = None
            else:
                t = int(lp[row].argmax())
            contexts[row] += (t,)
            new[row] += tok.tokens[t]
    return [n[s:s + k] for n, s in zip(new, skip)]
