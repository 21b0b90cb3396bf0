r"""A small bidirectional (BERT-style) encoder over a sequence of token or word vectors.

TinyGPT's attention is causal; a masked language model needs every position to see every other,
and a batch of texts of different lengths needs padding that no real position attends to. The
blocks are PyTorch's own ``nn.TransformerEncoderLayer`` (Pre-LN, GELU, no dropout), so nothing
here re-implements attention:

.. math:: h^{(0)}_t = e_t + p_t,\qquad
          h \leftarrow h + \mathrm{MHA}(\mathrm{LN}(h))\ \text{(keys: real positions only)},\qquad
          h \leftarrow h + \mathrm{MLP}(\mathrm{LN}(h)),

and a final LayerNorm. ``e_t`` comes from a front end: a sub-word embedding table
(:class:`SubwordBert`, BERT's) or a word encoder (:class:`replib.nn.byte2word.Byte2WordBert`).
A masked position's ``e_t`` is replaced by one learned ``[MASK]`` vector (BERT replaces the token
id; with a table the two are the same thing).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ReplibError


class BertEncoder(nn.Module):
    """Learned positions + ``n_layer`` Pre-LN bidirectional blocks + a final LayerNorm."""

    def __init__(self, d_model: int, n_layer: int, n_head: int, max_len: int):
        super().__init__()
        self.max_len = max_len
        self.pos_emb = nn.Embedding(max_len, d_model)
        layer = nn.TransformerEncoderLayer(d_model, n_head, 4 * d_model, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, n_layer, enable_nested_tensor=False)
        self.norm_f = nn.LayerNorm(d_model)
        self.mask_emb = nn.Parameter(torch.zeros(d_model))
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        nn.init.normal_(self.mask_emb, std=0.02)

    def forward(self, emb: torch.Tensor, pad: torch.Tensor | None = None,
                masked: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states ``(B, T, d)`` of input vectors ``emb`` ``(B, T, d)``.

        ``pad`` ``(B, T)``: True at padding (no position attends to it); ``masked`` ``(B, T)``:
        True where the input is hidden behind the ``[MASK]`` vector.
        """
        T = emb.shape[1]
        if T > self.max_len:
            raise ReplibError(f"sequence length {T} exceeds max_len={self.max_len}")
        if masked is not None:
            emb = torch.where(masked.unsqueeze(-1), self.mask_emb.to(emb.dtype), emb)
        h = emb + self.pos_emb(torch.arange(T, device=emb.device))
        return self.norm_f(self.blocks(h, src_key_padding_mask=pad))


class SubwordBert(nn.Module):
    """BERT's front end and head: a ``vocab_size x d`` embedding table, the encoder, and an MLM
    head tied to the table (logits :math:`= h E^\\top`)."""

    def __init__(self, vocab_size: int, d_model: int, n_layer: int, n_head: int, max_len: int):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        self.encoder = BertEncoder(d_model, n_layer, n_head, max_len)

    def embedding_params(self) -> int:
        """Parameters of the input embedding (the table): what Byte2Word replaces."""
        return self.tok_emb.weight.numel()

    def forward(self, ids: torch.Tensor, pad: torch.Tensor | None = None,
                masked: torch.Tensor | None = None) -> torch.Tensor:
        return self.encoder(self.tok_emb(ids), pad, masked)

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Sub-word logits ``(N, vocab)`` from masked positions' hidden states ``(N, d)``."""
        return hidden @ self.tok_emb.weight.T
