r"""Byte2Word: one vector per word, built from the word's UTF-8 bytes by cross-attention.

Lee, Guo and Qiu 2022, *Word-Level Representation From Bytes For Language Modeling*
(arXiv 2211.12677). BERT's sub-word embedding table is replaced by a small network that reads a
whitespace word's bytes; the transformer then runs over words, and a masked word is predicted at
sub-word level from its word state. The abstract gives that much; the sizes and the exact module
below are this book's Perceiver-style reading of "a cross-attention network" (the paper body and
code were not reached), so this is *Byte2Word-style*.

For a word with byte canvas :math:`b_1..b_M` (byte value + 1; 0 = padding,
:mod:`replib.data.words`), byte embeddings :math:`B \in \mathbb{R}^{256+1 \times d_b}` and byte
positions :math:`P \in \mathbb{R}^{M \times d_b}`,

.. math::
   x_i &= B[b_i] + P_i \qquad (i = 1..M), \\
   z &= L + \mathrm{MHA}\big(\mathrm{LN}(L),\ \mathrm{LN}(x),\ \mathrm{LN}(x)\big)
        \quad\text{(keys: real bytes only)}, \\
   z &\leftarrow z + W_2\,\mathrm{GELU}(W_1\,\mathrm{LN}(z)), \\
   e_w &= W_o\,[z_1; \dots; z_K] + c,

where :math:`L \in \mathbb{R}^{K \times d_b}` are :math:`K` learned latent queries shared by every
word. There is no vocabulary: any byte string gets a vector, identical words get identical vectors
whatever their context, and byte order matters through :math:`P` ("dog" and "god" differ).

The word model (:class:`Byte2WordBert`) predicts a masked word's first ``n_slots`` sub-word ids
(WordPiece ids of the word alone): slot :math:`j` reads the word's hidden state through its own
projection :math:`U_j` and scores the sub-word vocabulary with one shared output table
:math:`O`, :math:`\mathrm{logits}_j = (U_j h) O^\top`. That head is this book's design choice
(UNVERIFIED as the paper's head); the shared table keeps its output side the size of BERT's tied
head, so the two models differ in their input embedding only.
"""
from __future__ import annotations

import torch
from torch import nn

from ..data.words import BYTE_VOCAB, PAD
from .bert import BertEncoder


class Byte2Word(nn.Module):
    """Byte canvases ``(..., M)`` -> word vectors ``(..., d_model)`` (equations: module docstring)."""

    def __init__(self, d_model: int, *, d_byte: int = 64, n_latent: int = 4, n_head: int = 4,
                 max_bytes: int = 24, d_ff: int | None = None):
        super().__init__()
        self.max_bytes = max_bytes
        self.byte_emb = nn.Embedding(BYTE_VOCAB, d_byte, padding_idx=PAD)
        self.pos_emb = nn.Parameter(torch.randn(max_bytes, d_byte) * 0.02)
        self.latents = nn.Parameter(torch.randn(n_latent, d_byte) * 0.02)
        self.norm_q, self.norm_kv, self.norm_ff = (nn.LayerNorm(d_byte) for _ in range(3))
        self.attn = nn.MultiheadAttention(d_byte, n_head, batch_first=True)
        d_ff = d_ff or 4 * d_byte
        self.ff = nn.Sequential(nn.Linear(d_byte, d_ff), nn.GELU(), nn.Linear(d_ff, d_byte))
        self.out = nn.Linear(n_latent * d_byte, d_model)
        nn.init.normal_(self.byte_emb.weight, std=0.02)

    def encode_unique(self, canvases: torch.Tensor) -> torch.Tensor:
        """Word vectors ``(n, d_model)`` for canvases ``(n, M)``, one word at a time (no mixing)."""
        n, M = canvases.shape
        pad = canvases == PAD
        # an empty canvas (a padding word) attends to its first slot, so its vector stays finite;
        # the sequence model never attends to such a word
        pad[:, 0] &= ~pad.all(-1)
        x = self.norm_kv(self.byte_emb(canvases) + self.pos_emb[:M])
        q = self.norm_q(self.latents).expand(n, -1, -1)
        z = self.latents + self.attn(q, x, x, key_padding_mask=pad, need_weights=False)[0]
        z = z + self.ff(self.norm_ff(z))
        return self.out(z.flatten(1))

    def forward(self, canvases: torch.Tensor) -> torch.Tensor:
        """Word vectors for canvases of any leading shape; each distinct word is encoded once
        (a text repeats its words, so a batch holds far fewer distinct canvases than words)."""
        flat = canvases.reshape(-1, canvases.shape[-1])
        uniq, inverse = torch.unique(flat, dim=0, return_inverse=True)
        return self.encode_unique(uniq)[inverse].view(*canvases.shape[:-1], -1)

    def embedding_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


class Byte2WordBert(nn.Module):
    """Byte2Word front end, the bidirectional encoder over words, and the sub-word slot head."""

    def __init__(self, vocab_size: int, d_model: int, n_layer: int, n_head: int, max_len: int, *,
                 n_slots: int = 3, byte2word: dict | None = None):
        super().__init__()
        self.words = Byte2Word(d_model, **(byte2word or {}))  # its own sizes (d_byte, K, heads, M)
        self.encoder = BertEncoder(d_model, n_layer, n_head, max_len)
        self.slots = nn.Linear(d_model, n_slots * d_model, bias=False)  # [U_1; ...; U_S]
        self.out_emb = nn.Parameter(torch.randn(vocab_size, d_model) * 0.02)  # O
        self.n_slots = n_slots

    def embedding_params(self) -> int:
        return self.words.embedding_params()

    def forward(self, canvases: torch.Tensor, pad: torch.Tensor | None = None,
                masked: torch.Tensor | None = None) -> torch.Tensor:
        return self.encoder(self.words(canvases), pad, masked)

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, n_slots, vocab)`` for the first ``n_slots`` sub-words of masked words."""
        u = self.slots(hidden).view(hidden.shape[0], self.n_slots, -1)
        return u @ self.out_emb.T
