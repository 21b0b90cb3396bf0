r"""The vocabulary key space of a language model, and navigating it (Peng, An & Shang, ICLR 2025).

"Correlation and Navigation in the Vocabulary Key Representation Space of Language Models"
(arXiv 2410.02284; official code github.com/KomeijiForce/KeyNavi). Next-token prediction scores
every vocabulary token :math:`w` by a dot product between a context *query* :math:`q(c)` (the last
hidden state) and a fixed *key* :math:`e_w` (the output-embedding row):

.. math:: z_w = q(c)\cdot e_w, \qquad p(w\mid c) = \operatorname{softmax}(z)_w .

Tokens whose keys are similar to the top-ranked tokens' keys get similar logits whatever their
correctness, so the middle of the ranking is pulled toward the top tokens' key clusters (the
paper's "P" dragging up "A".."Z"). **In-Context Navigation** (ICN) lists the answers explored so
far in the prompt and asks for another, pushing the query away from the explored keys.

This module holds:

- :class:`TiedAttributeLM`: our analog model, a :class:`~replib.nn.transformer.TinyGPT` body with
  tied input/output embeddings and a shared attribute embedding added to every token's key,
  :math:`e_w = t_w + a_{c(w)}`, so that keys cluster by a surface attribute :math:`c(w)`.
- the analysis: precision by rank bin, k-means clusters of normalised keys, the fraction of
  middle-ranked tokens that fall in the top-1 token's cluster;
- the decoding procedures compared for a budget of :math:`T` answers: sampling, rank-based
  (top-:math:`T` first tokens), ICN, and the pure geometry of navigation (:func:`project_out`).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .transformer import GPTConfig, TinyGPT


class TiedAttributeLM(nn.Module):
    r"""TinyGPT with tied embeddings and a shared attribute embedding in every key.

    Keys (also the input embeddings): :math:`e_w = t_w + a_{c(w)}` for token embedding
    :math:`t_w` and attribute embedding :math:`a_c`; tokens without an attribute (``attr_of[w] ==
    n_attrs``) get :math:`a = 0`. Logits :math:`z = q\,E^\top` with :math:`q` the final-norm hidden
    state (no head bias, so a logit is exactly :math:`q\cdot e_w`).
    """

    def __init__(self, cfg: GPTConfig, attr_of: torch.Tensor, n_attrs: int):
        super().__init__()
        self.gpt = TinyGPT(cfg)
        del self.gpt.head  # the head is the key matrix itself (tied)
        self.attr_emb = nn.Embedding(n_attrs + 1, cfg.d_model, padding_idx=n_attrs)
        nn.init.normal_(self.attr_emb.weight, std=cfg.embed_std)
        with torch.no_grad():
            self.attr_emb.weight[n_attrs].zero_()
        self.register_buffer("attr_of", attr_of.long().clone())

    def keys(self) -> torch.Tensor:
        """The (vocab, d) key matrix :math:`E`, rows :math:`e_w = t_w + a_{c(w)}`."""
        return self.gpt.tok_emb.weight + self.attr_emb(self.attr_of)

    def query(self, idx: torch.Tensor) -> torch.Tensor:
        """The queries :math:`q(c_{\\le t})` at every position, (B, T, d)."""
        gpt = self.gpt
        x = self.keys()[idx] + gpt.pos_emb(torch.arange(idx.shape[1], device=idx.device))
        for block in gpt.blocks:
            x = block(x)
        return gpt.norm_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Logits (B, T, vocab); with ``targets`` the mean cross-entropy over the scored positions
        (targets not ``-100``) and the logits of those positions only, (n_scored, vocab): the
        vocabulary-wide product is the step's largest cost, so padding skips it."""
        q = self.query(idx)
        if targets is None:
            return q @ self.keys().T, None
        scored = targets != -100
        logits = q[scored] @ self.keys().T
        return logits, F.cross_entropy(logits, targets[scored])


# ------------------------------------------------------------------------------------ geometry
def project_out(q: torch.Tensor, explored: torch.Tensor) -> torch.Tensor:
    r"""The query with the span of the explored keys removed, :math:`q' = (I - P_E)\,q`.

    :math:`P_E` is the orthogonal projector onto :math:`\operatorname{span}\{e : e\in E\}` (from a
    QR decomposition of the explored keys, rows of ``explored``), so every explored logit becomes
    :math:`q'\cdot e = 0`. For mutually orthogonal keys this is the spec's
    :math:`q' = q - \sum_{e\in E} (q\cdot\hat e)\,\hat e`. ``q`` is (d,) or (B, d); ``explored``
    (k, d), or (B, k, d) for a batch.
    """
    if explored.shape[-2] == 0:
        return q
    basis, _ = torch.linalg.qr(explored.transpose(-1, -2))  # (..., d, k), orthonormal columns
    coef = (q.unsqueeze(-2) @ basis).squeeze(-2)  # (..., k)
    return q - (basis @ coef.unsqueeze(-1)).squeeze(-1)


def max_logit_sq_after(key: torch.Tensor, explored: torch.Tensor) -> torch.Tensor:
    r"""The largest squared logit any unit query can give ``key`` after navigation away from
    ``explored``, as a fraction of before: :math:`\max_{\lVert q\rVert=1}(q'\cdot e)^2 / \lVert
    e\rVert^2 = \lVert (I-P_E)e\rVert^2/\lVert e\rVert^2 \le 1-\rho^2` when
    :math:`\cos(e, E) \ge \rho` for some explored key: such a token loses at least :math:`\rho^2`
    of its (squared) logit range."""
    kept = project_out(key, explored)
    return kept.pow(2).sum(-1) / key.pow(2).sum(-1)


# ------------------------------------------------------------------------------------ analysis
def precision_by_rank(correct: torch.Tensor, bins: Sequence[tuple[int, int]]) -> dict[str, float]:
    """Fraction of correct tokens in each 1-based inclusive rank bin ``(lo, hi)``; ``correct`` is
    (prompts, ranks) bool in rank order."""
    return {f"{lo}-{hi}": float(correct[:, lo - 1: hi].float().mean()) for lo, hi in bins}


def cluster_keys(keys: torch.Tensor, k: int, seed: int) -> np.ndarray:
    r"""k-means labels of the L2-normalised keys :math:`\hat e_w = e_w/\lVert e_w\rVert` (scikit-learn,
    seeded): clusters by direction, as the cosine similarity of keys."""
    from sklearn.cluster import KMeans
    x = F.normalize(keys.detach().double().cpu(), dim=-1).numpy()
    return KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(x)


def same_cluster_fraction(ranked: torch.Tensor, labels: np.ndarray, lo: int, hi: int) -> tuple[float, float]:
    r"""How much the ranks ``lo..hi`` (1-based) crowd into the top-1 token's cluster.

    Returns (observed, base rate): the fraction of tokens at those ranks that share the top-1
    token's cluster, and the fraction a random other token would (its cluster's size minus one over
    :math:`n-1`), both averaged over prompts. ``ranked`` is (prompts, ranks) token ids.
    """
    lab = torch.as_tensor(labels)
    top = lab[ranked[:, 0]]
    same = (lab[ranked[:, lo - 1: hi]] == top[:, None]).float().mean()
    sizes = torch.bincount(lab, minlength=int(lab.max()) + 1).double()
    base = ((sizes[top] - 1) / (len(lab) - 1)).mean()
    return float(same), float(base)


def unique_correct(answers: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """Per prompt: distinct correct answers / budget. ``answers`` (prompts, T) ids, ``members``
    (prompts, n) bool membership over the candidate ids."""
    T = answers.shape[1]
    out = torch.empty(len(answers))
    for i, row in enumerate(answers):
        distinct = torch.unique(row)
        out[i] = members[i, distinct].sum() / T
    return out


# ------------------------------------------------------------------------ decoding procedures
def rank_based(logits: torch.Tensor, T: int) -> torch.Tensor:
    """The baseline "rank-based" answers: the top-``T`` first tokens of the plain prompt."""
    return logits.topk(T, dim=-1).indices


def sampled(logits: torch.Tensor, T: int, tau: float, generator: torch.Generator) -> torch.Tensor:
    """``T`` independent draws from :math:`\\operatorname{softmax}(z/\\tau)` of the plain prompt."""
    probs = torch.softmax(logits.double() / tau, -1).cpu()
    return torch.multinomial(probs, T, replacement=True, generator=generator).to(logits.device)


def navigate(next_logits: Callable[[torch.Tensor], torch.Tensor], n_prompts: int, T: int,
             per_round: int = 1) -> torch.Tensor:
    """In-Context Navigation: ``T`` answers per prompt, ``per_round`` new ones per round.

    ``next_logits(explored)`` scores the candidates for prompts that list the explored answers
    ``explored`` ((n_prompts, j) ids, ``j`` = answers so far); each round keeps the highest-ranked
    candidates not yet explored (the official zerogen.py: 10 rounds of 10 with an LLM). Answers are
    single tokens here, so the paper's greedy completion of each first token is the token itself.
    """
    explored = torch.empty(n_prompts, 0, dtype=torch.long)
    while explored.shape[1] < T:
        logits = next_logits(explored).clone()
        if explored.shape[1]:
            logits.scatter_(1, explored.to(logits.device), float("-inf"))
        take = min(per_round, T - explored.shape[1])
        explored = torch.cat([explored, logits.topk(take, dim=-1).indices.cpu()], 1)
    return explored


def key_projection(q: torch.Tensor, keys: torch.Tensor, T: int) -> torch.Tensor:
    r"""The geometry of navigation without a prompt: after each answer the query loses the span
    of the explored keys, :math:`q \leftarrow (I-P_E)\,q_0`, and the best unexplored key is taken.
    ``q`` (B, d) plain-prompt queries, ``keys`` (n, d) candidate keys."""
    explored = torch.empty(len(q), 0, dtype=torch.long, device=q.device)
    for _ in range(T):
        qp = project_out(q, keys[explored])
        logits = qp @ keys.T
        if explored.shape[1]:
            logits.scatter_(1, explored, float("-inf"))
        explored = torch.cat([explored, logits.argmax(-1, keepdim=True)], 1)
    return explored
