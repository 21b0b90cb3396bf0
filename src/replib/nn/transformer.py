"""A tiny decoder-only transformer, readable in one sitting (after nanoGPT).

The norm, where it sits, and the attention kernel are constructor options, so a chapter about
any of them changes one argument and nothing else::

    TinyGPT(GPTConfig(norm="rmsnorm", placement="post", attention="softmax"))

Placements (``x`` is the residual stream, ``F`` a sub-layer, ``N`` a norm):

- ``pre``:  :math:`x \\leftarrow x + F(N(x))`, and a final norm before the head (GPT-2).
- ``post``: :math:`x \\leftarrow N(x + F(x))`, no final norm (the original Transformer).
- ``peri``: :math:`x \\leftarrow x + N_{out}(F(N_{in}(x)))`: the output is normalised *before*
  the residual add (Peri-LN, Kim et al. 2025, arXiv 2502.02732).
- ``mix``:  Post-LN in the first :math:`\\lfloor \\alpha L \\rfloor` blocks, Pre-LN after
  (Mix-LN, Li et al. 2024, arXiv 2412.13795; :math:`\\alpha = 0.25`).

``layer_scaling`` (LayerNorm Scaling, Sun et al. 2025, arXiv 2502.05795) multiplies every
sub-layer's normalised input in block :math:`\\ell = 1..L` by :math:`1/\\sqrt{\\ell}`; it composes
with any norm type and with the ``pre`` and ``peri`` placements.

``d_attn`` and ``d_ff`` may differ from the residual width ``d_model``: a compressed (``d-1``)
residual stream still attends in ``d`` dimensions (Pre-CRMSNorm, chapter 10).

The MLP (``mlp``) is GPT-2's :math:`W_2\\,\\mathrm{GELU}(W_1 x)` or a gated linear unit
:math:`W_2\\,(\\sigma(W_g x) \\odot W_u x)` (Shazeer 2020, arXiv 2002.05202): ``swiglu``
(:math:`\\sigma` = SiLU, LLaMA's), ``sigmoid-glu`` (:math:`\\sigma` = the logistic sigmoid) or
``bilinear`` (no :math:`\\sigma`; TransNormerLLM's SGLU). A gated MLP's hidden width defaults to
LLaMA's :math:`8d/3` rounded up to a multiple of 8, which keeps its parameters near GPT-2's
:math:`4d`-wide MLP. :math:`W_g` and :math:`W_u` are the two halves of one matrix, ``mlp.fc``, so
the MLP keeps one reader of its input (a norm folds into it as into GPT-2's).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ReplibError
from .attention import create_attention
from .norms import create_norm

PLACEMENTS = ("pre", "post", "peri", "mix")
GATES = {"swiglu": F.silu, "sigmoid-glu": torch.sigmoid, "bilinear": None}  # the gated MLPs
MLPS = ("gelu", *GATES)
MIX_ALPHA = 0.25  # Mix-LN's fraction of leading Post-LN blocks


@dataclass
class GPTConfig:
    vocab_size: int = 256
    seq_len: int = 128
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    d_attn: int | None = None  # query/key/value width; None: d_model
    d_ff: int | None = None  # MLP hidden width; None: 4 * d_model, or 8/3 d (to 8) if gated
    mlp: str = "gelu"  # one of MLPS
    norm: str = "layernorm"
    norm_kwargs: dict = field(default_factory=dict)
    placement: str = "pre"
    attention: str = "softmax"  # an entry of replib.nn.attention's registry
    attention_kwargs: dict = field(default_factory=dict)
    mix_alpha: float | None = None  # placement "mix" only; None: MIX_ALPHA
    layer_scaling: bool = False  # LayerNorm Scaling: normalised sub-layer inputs x 1/sqrt(l)
    final_norm: bool | None = None  # a norm before the head; None: every placement but "post"
    dropout: float = 0.0
    bias: bool = True
    scaled_init: bool = True  # GPT-2: residual writers drawn with std 0.02/sqrt(2L)
    embed_std: float = 0.02
    # DyT's LLaMA code (jiachenzhu/DyT, other_tasks/LLaMA): token embeddings x a learnable scalar
    # initialised to sqrt(d_model), so a statistics-free first norm sees a signal of useful size
    embed_scale: bool = False

    def __post_init__(self):
        self.d_attn = self.d_attn or self.d_model
        if self.mlp not in MLPS:
            raise ReplibError(f"unknown mlp {self.mlp!r}; valid: {', '.join(MLPS)}")
        gated = 8 * ((8 * self.d_model // 3 + 7) // 8)
        self.d_ff = self.d_ff or (gated if self.mlp in GATES else 4 * self.d_model)
        if self.placement not in PLACEMENTS:
            raise ReplibError(f"unknown placement {self.placement!r}; valid: {', '.join(PLACEMENTS)}")
        if self.d_attn % self.n_head:
            raise ReplibError(f"d_attn={self.d_attn} is not divisible by n_head={self.n_head}")
        if self.placement == "mix":
            self.mix_alpha = MIX_ALPHA if self.mix_alpha is None else self.mix_alpha
            if not 0.0 <= self.mix_alpha <= 1.0:
                raise ReplibError(f"mix_alpha must lie in [0, 1], got {self.mix_alpha}")
        elif self.mix_alpha is not None:
            raise ReplibError(f"mix_alpha applies to placement 'mix' only, not {self.placement!r}")
        if self.layer_scaling and self.placement not in ("pre", "peri"):
            raise ReplibError("layer_scaling scales a sub-layer's normalised input: it needs "
                              f"placement 'pre' or 'peri', not {self.placement!r}")
        if self.final_norm is None:
            self.final_norm = self.placement != "post"

    def block_placement(self, index: int) -> str:
        """The placement of block ``index`` (0-based): ``mix`` resolves to post, then pre."""
        if self.placement != "mix":
            return self.placement
        return "post" if index < int(self.mix_alpha * self.n_layer) else "pre"


def attention_for(cfg: GPTConfig) -> nn.Module:
    """The block's token mixer, built from the attention registry by ``cfg.attention``."""
    return create_attention(cfg.attention, cfg.d_model, cfg.n_head, d_attn=cfg.d_attn,
                            seq_len=cfg.seq_len, bias=cfg.bias, dropout=cfg.dropout,
                            **cfg.attention_kwargs)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.kind = cfg.mlp
        width = 2 * cfg.d_ff if cfg.mlp in GATES else cfg.d_ff  # gated: [W_g; W_u]
        self.fc = nn.Linear(cfg.d_model, width, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "gelu":
            return self.proj(F.gelu(self.fc(x)))
        gate, up = self.fc(x).chunk(2, dim=-1)
        act = GATES[self.kind]
        return self.proj((act(gate) if act is not None else gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, index: int = 0):
        super().__init__()
        self.placement = cfg.block_placement(index)
        self.scale = 1.0 / math.sqrt(index + 1) if cfg.layer_scaling else 1.0
        norm = lambda: create_norm(cfg.norm, cfg.d_model, **cfg.norm_kwargs)  # noqa: E731
        self.norm1 = norm()
        self.attn = attention_for(cfg)
        self.norm2 = norm()
        self.mlp = MLP(cfg)
        if self.placement == "peri":
            self.norm1_out, self.norm2_out = norm(), norm()
        self.drop = nn.Dropout(cfg.dropout)

    def _sublayer(self, f: nn.Module, norm_in: nn.Module, norm_out: nn.Module | None,
                  x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h = norm_in(x, mask)
        y = f(h * self.scale if self.scale != 1.0 else h)
        return self.drop(norm_out(y, mask) if norm_out is not None else y)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.placement == "post":
            x = self.norm1(x + self.drop(self.attn(x)), mask)
            return self.norm2(x + self.drop(self.mlp(x)), mask)
        peri = self.placement == "peri"
        x = x + self._sublayer(self.attn, self.norm1, self.norm1_out if peri else None, x, mask)
        return x + self._sublayer(self.mlp, self.norm2, self.norm2_out if peri else None, x, mask)


class TinyGPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.emb_scale = nn.Parameter(torch.tensor(math.sqrt(cfg.d_model))) if cfg.embed_scale else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm_f = (create_norm(cfg.norm, cfg.d_model, **cfg.norm_kwargs) if cfg.final_norm
                       else create_norm("identity", cfg.d_model))
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init)
        for name, p in self.named_parameters():
            if cfg.scaled_init and name.endswith("proj.weight"):  # GPT-2: writers scaled by depth
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))
            elif name.endswith("emb.weight") and cfg.embed_std != 0.02:
                nn.init.normal_(p, std=cfg.embed_std)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """The residual stream entering block 1: token (x the learned scale, if any) plus position."""
        tok = self.tok_emb(idx)
        if self.emb_scale is not None:
            tok = tok * self.emb_scale
        return tok + self.pos_emb(torch.arange(idx.shape[1], device=idx.device))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                mask: torch.Tensor | None = None):
        """Logits for token ids ``idx`` (B, T); with ``targets`` also the mean cross-entropy.

        ``mask`` (B, T, True = real token) keeps padding out of batch statistics; targets of
        padding positions should be ``-100`` so the loss ignores them.
        """
        T = idx.shape[1]
        if T > self.cfg.seq_len:
            raise ReplibError(f"sequence length {T} exceeds seq_len={self.cfg.seq_len}")
        x = self.drop(self.embed(idx))
        for block in self.blocks:
            x = block(x, mask)
        logits = self.head(self.norm_f(x, mask))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        return logits, loss

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
