r"""End-to-end word-pooled language model, eByte (Thawani et al. 2023, *Learn Your Tokens:
Word-Pooled Tokenization for Language Modeling*, Findings of EMNLP 2023, arXiv 2310.11628;
official code github.com/avi-jit/eTok, ``newmodel.py``).

Each word is a canvas of :math:`c_0` unit ids (bytes + 1, then 0 as padding:
:mod:`replib.data.words`). With :math:`p` learned prefix ids and :math:`c = p + c_0`:

1. Canvas embedding: :math:`e_{t,j} = E[u_{t,j}] + P^{in}_j`, where the first :math:`p` slots hold
   the prefix ids :math:`V..V+p-1` (eTok: ids :math:`c_0..c_0+p-1`, which collide with unit ids;
   we use fresh ids, as the paper describes).
2. Word encoder (bidirectional inside a word, padding keys masked):
   :math:`h_t = \mathrm{Enc}(e_{t,1..c})`; the word's vector is its :math:`p` prefix outputs
   :math:`h_{t,1..p}`. eTok masks only pad-to-pad attention (real units still read the padding);
   we mask every padding key, so padding cannot change a word's vector.
3. Main causal LM over the :math:`T p` prefix tokens: :math:`z = \mathrm{LN}(\mathrm{GPT}(h + P^{word}))`.
4. Decoder for word :math:`t+1`: its canvas :math:`e_{t+1}` with the prefix slots overwritten by
   :math:`z_{t,1..p} + P^{in}_{1..p}`, run through causal blocks; position :math:`p-1+j`
   (0-based) predicts unit :math:`j` of word :math:`t+1`, so the last prefix slot acts as BOS and
   unit :math:`j` sees only units :math:`< j`. (eTok adds :math:`P^{in}` a second time to the
   unit slots; we add it once.)
5. Loss: cross-entropy over all :math:`c_0` slots of words :math:`2..T`, padding included (as
   eTok), so the model must predict where the word ends.

The encoder is PyTorch's ``nn.TransformerEncoder`` (post-LN, ReLU), as in eTok; the main LM and the
decoder are :class:`~replib.nn.transformer.Block` s (pre-LN GELU GPT blocks), as eTok's minGPT
blocks; the decoder has no final norm before its head (as eTok).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.words import BYTE_VOCAB, PAD
from .norms import create_norm
from .transformer import Block, GPTConfig


@dataclass
class WordPoolConfig:
    vocab_size: int = BYTE_VOCAB  # unit ids, padding (0) included
    canvas: int = 13  # c0: unit slots per word (longest word + 1, so every word ends in padding)
    n_prefix: int = 4  # p
    n_words: int = 32  # T: words per sequence
    d_model: int = 64
    n_head: int = 4
    n_layer: int = 2  # main LM blocks
    n_enc_layer: int = 2
    n_dec_layer: int = 2
    dropout: float = 0.0

    def block_config(self, n_layer: int, seq_len: int) -> GPTConfig:
        return GPTConfig(vocab_size=self.vocab_size, seq_len=seq_len, n_layer=n_layer,
                         n_head=self.n_head, d_model=self.d_model, dropout=self.dropout)


class WordPoolLM(nn.Module):
    """eByte: ``forward(units)`` with ``units`` of shape (B, T, c0) gives logits (B, T-1, c0, V)
    for words 2..T (and the loss with ``targets=True``)."""

    def __init__(self, cfg: WordPoolConfig):
        super().__init__()
        self.cfg = cfg
        D, p, c = cfg.d_model, cfg.n_prefix, cfg.n_prefix + cfg.canvas
        self.unit_emb = nn.Embedding(cfg.vocab_size + p, D)
        self.unit_pos = nn.Parameter(torch.zeros(c, D))
        layer = nn.TransformerEncoderLayer(D, cfg.n_head, 4 * D, cfg.dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.n_enc_layer, enable_nested_tensor=False)
        self.word_pos = nn.Parameter(torch.zeros(cfg.n_words * p, D))
        main = cfg.block_config(cfg.n_layer, cfg.n_words * p)
        self.main = nn.ModuleList(Block(main, i) for i in range(cfg.n_layer))
        self.norm_f = create_norm(main.norm, D)
        dec = cfg.block_config(cfg.n_dec_layer, c)
        self.decoder = nn.ModuleList(Block(dec, i) for i in range(cfg.n_dec_layer))
        self.head = nn.Linear(D, cfg.vocab_size, bias=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.apply(self._init)
        self.register_buffer("prefix_ids", torch.arange(cfg.vocab_size, cfg.vocab_size + p),
                             persistent=False)

    @staticmethod
    def _init(m: nn.Module) -> None:  # eTok / minGPT: N(0, 0.02), zero biases, LN weight 1
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def canvas(self, units: torch.Tensor) -> torch.Tensor:
        """(B, T, c0) unit ids -> (B, T, c, D): prefix ids then units, embedded plus slot position."""
        prefix = self.prefix_ids.expand(*units.shape[:-1], -1)
        return self.unit_emb(torch.cat([prefix, units], -1)) + self.unit_pos

    def encode(self, units: torch.Tensor) -> torch.Tensor:
        """(B, T, c0) -> (B, T, p, D): each word's prefix outputs; padding keys masked."""
        B, T, c0 = units.shape
        p = self.cfg.n_prefix
        x = self.drop(self.canvas(units)).flatten(0, 1)
        pad = torch.cat([torch.zeros(B * T, p, dtype=torch.bool, device=units.device),
                         units.flatten(0, 1) == PAD], -1)
        return self.encoder(x, src_key_padding_mask=pad)[:, :p].unflatten(0, (B, T))

    def main_lm(self, words: torch.Tensor) -> torch.Tensor:
        """(B, T, p, D) word vectors -> (B, T, p, D): the causal LM over the T p prefix tokens."""
        B, T, p, D = words.shape
        x = self.drop(words.reshape(B, T * p, D) + self.word_pos[:T * p])
        for block in self.main:
            x = block(x)
        return self.norm_f(x).view(B, T, p, D)

    def decode(self, context: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        """Logits (..., c0, V) for ``units`` (..., c0) given the main-LM outputs of the word before
        (..., p, D): the prefix slots are overwritten, unit j is read at position p-1+j."""
        p = self.cfg.n_prefix
        emb = self.canvas(units)
        x = torch.cat([context + self.unit_pos[:p], emb[..., p:, :]], -2)
        lead = x.shape[:-2]
        x = self.drop(x.flatten(0, -3))
        for block in self.decoder:
            x = block(x)
        return self.head(x[:, p - 1:-1]).unflatten(0, lead)

    def forward(self, units: torch.Tensor, targets: bool = False):
        z = self.main_lm(self.encode(units))
        logits = self.decode(z[:, :-1], units[:, 1:])
        if not targets:
            return logits, None
        return logits, F.cross_entropy(logits.flatten(0, -2), units[:, 1:].flatten())

    @torch.no_grad()
    def generate_word(self, units: torch.Tensor) -> torch.Tensor:
        """Greedy next word after the context words ``units`` (B, T, c0): (B, c0) unit ids, unit
        by unit; every slot after the first padding is padding."""
        z = self.main_lm(self.encode(units))[:, -1]
        out = torch.zeros(units.shape[0], self.cfg.canvas, dtype=torch.long, device=units.device)
        for j in range(self.cfg.canvas):
            out[:, j] = self.decode(z, out)[:, j].argmax(-1)
        ended = (out == PAD).cumsum(-1) > 0
        return out.masked_fill(ended, PAD)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def attention_cost(n_words: int, units_per_word: float, n_prefix: int, canvas: int) -> dict[str, float]:
    r"""Attention score entries per sequence (per layer and head), the paper's efficiency argument:
    a unit-level LM attends over :math:`(T\bar L)^2`; eByte's main LM over :math:`(Tp)^2`, plus
    :math:`T c^2` inside words for the encoder and as much for the decoder (:math:`c = p + c_0`)."""
    c = n_prefix + canvas
    return {"unit_lm": (n_words * units_per_word) ** 2, "main": (n_words * n_prefix) ** 2,
            "within_words": 2 * n_words * c ** 2}
