"""A tiny decoder-only transformer, readable in one sitting (after nanoGPT).

The norm and where it sits are constructor options, so a chapter about either changes one
argument and nothing else::

    TinyGPT(GPTConfig(norm="rmsnorm", placement="post"))

Placements (``x`` is the residual stream, ``F`` a sub-layer, ``N`` a norm):

- ``pre``:  :math:`x \\leftarrow x + F(N(x))`, and a final norm before the head (GPT-2).
- ``post``: :math:`x \\leftarrow N(x + F(x))`, no final norm (the original Transformer).

``d_attn`` and ``d_ff`` may differ from the residual width ``d_model``: a compressed (``d-1``)
residual stream still attends in ``d`` dimensions (Pre-CRMSNorm, chapter 10).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ReplibError
from .norms import create_norm

PLACEMENTS = ("pre", "post")


@dataclass
class GPTConfig:
    vocab_size: int = 256
    seq_len: int = 128
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    d_attn: int | None = None  # query/key/value width; None: d_model
    d_ff: int | None = None  # MLP hidden width; None: 4 * d_model
    norm: str = "layernorm"
    norm_kwargs: dict = field(default_factory=dict)
    placement: str = "pre"
    dropout: float = 0.0
    bias: bool = True

    def __post_init__(self):
        self.d_attn = self.d_attn or self.d_model
        self.d_ff = self.d_ff or 4 * self.d_model
        if self.placement not in PLACEMENTS:
            raise ReplibError(f"unknown placement {self.placement!r}; valid: {', '.join(PLACEMENTS)}")
        if self.d_attn % self.n_head:
            raise ReplibError(f"d_attn={self.d_attn} is not divisible by n_head={self.n_head}")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_attn, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_attn, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split(self.qkv.out_features // 3, dim=-1)
        q, k, v = (t.view(B, T, self.n_head, -1).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.placement = cfg.placement
        self.norm1 = create_norm(cfg.norm, cfg.d_model, **cfg.norm_kwargs)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = create_norm(cfg.norm, cfg.d_model, **cfg.norm_kwargs)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.placement == "pre":
            x = x + self.drop(self.attn(self.norm1(x, mask)))
            return x + self.drop(self.mlp(self.norm2(x, mask)))
        x = self.norm1(x + self.drop(self.attn(x)), mask)
        return self.norm2(x + self.drop(self.mlp(x)), mask)


class TinyGPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        final = cfg.norm if cfg.placement == "pre" else "identity"
        self.norm_f = create_norm(final, cfg.d_model, **(cfg.norm_kwargs if final != "identity" else {}))
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: residual writers scaled by depth
            if name.endswith("proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                mask: torch.Tensor | None = None):
        """Logits for token ids ``idx`` (B, T); with ``targets`` also the mean cross-entropy.

        ``mask`` (B, T, True = real token) keeps padding out of batch statistics; targets of
        padding positions should be ``-100`` so the loss ignores them.
        """
        T = idx.shape[1]
        if T > self.cfg.seq_len:
            raise ReplibError(f"sequence length {T} exceeds seq_len={self.cfg.seq_len}")
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x, mask)
        logits = self.head(self.norm_f(x, mask))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        return logits, loss

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
