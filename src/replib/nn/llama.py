r"""A small LLaMA-style decoder with explicit positions, an explicit mask and a KV cache.

LLaMA (Touvron et al. 2023, arXiv 2302.13971) in a few lines: pre-norm blocks with RMSNorm (from
:mod:`replib.nn.norms`), rotary position embeddings (RoPE, Su et al. 2021, arXiv 2104.09864) on
queries and keys, and a SwiGLU MLP (TinyGPT's gated MLP, :class:`replib.nn.transformer.MLP`).
:class:`~replib.nn.transformer.TinyGPT` has learned absolute positions ``0..T-1`` and no cache, so
it cannot run what prepacking (chapter 37, :mod:`replib.nn.prepack`) needs: several prompts in one
row, each with positions that restart at 0, a block-diagonal mask, and a per-prompt KV cache that
generation continues from. This model takes all three from the caller:

- ``position_ids`` ``(B, T)``: the position of every token (integers, need not be ``0..T-1``);
- ``mask`` ``(B, T, S)`` boolean, ``True`` = query ``t`` may attend to key ``s``, where the keys are
  the cached ones followed by the ``T`` new ones (``S = S_past + T``); ``None``: plain causal;
- ``past``: a list, one ``(k, v)`` pair per layer, each ``(B, H, S_past, d_head)``; the forward
  returns the extended list.

RoPE rotates feature pair :math:`i` of a query or key at position :math:`p` by the angle
:math:`p\,\theta_i` with :math:`\theta_i = b^{-2i/d_h}` (:math:`b = 10^4`, LLaMA's), so a score
depends on positions only through their difference:

.. math:: \langle R_m q, R_n k\rangle = \langle q, R_{n-m} k\rangle .

That is why a prompt packed at any offset, with its positions restarted at 0, sees the same scores
as the prompt alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ReplibError
from .attention.nala import theta_shift
from .norms import create_norm
from .transformer import GPTConfig, MLP

Cache = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class LlamaConfig:
    vocab_size: int = 256
    d_model: int = 256
    n_layer: int = 4
    n_head: int = 8
    rope_base: float = 10_000.0
    norm: str = "rmsnorm"

    def __post_init__(self):
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ReplibError(f"d_model={self.d_model} must split into {self.n_head} heads of even width")


def rope_tables(position_ids: torch.Tensor, d_head: int, base: float = 10_000.0,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``sin, cos`` of shape ``(B, 1, T, d_head)`` for integer ``position_ids`` ``(B, T)``: angle
    :math:`p\,\theta_i`, :math:`\theta_i = b^{-2i/d_h}`, repeated for both features of pair ``i``
    (the layout :func:`~replib.nn.attention.nala.theta_shift` rotates). Angles in float32 or wider."""
    work = torch.float64 if dtype == torch.float64 else torch.float32
    theta = base ** (-torch.arange(0, d_head, 2, dtype=work, device=position_ids.device) / d_head)
    angle = (position_ids.to(work)[..., None] * theta).repeat_interleave(2, dim=-1)[:, None]
    return angle.sin().to(dtype), angle.cos().to(dtype)


def causal_mask(T: int, S_past: int = 0, device=None) -> torch.Tensor:
    """``(T, S_past + T)``: new token ``t`` sees every cached key and the new keys ``<= t``."""
    return torch.ones(T, S_past + T, dtype=torch.bool, device=device).tril(S_past)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_head, self.d_head = cfg.n_head, cfg.d_model // cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x, sin, cos, mask, past):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.d_head).permute(2, 0, 3, 1, 4)
        q, k = theta_shift(q, sin, cos), theta_shift(k, sin, cos)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
        return self.proj(o.transpose(1, 2).reshape(B, T, -1)), (k, v)


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.norm1 = create_norm(cfg.norm, cfg.d_model)
        self.attn = Attention(cfg)
        self.norm2 = create_norm(cfg.norm, cfg.d_model)
        self.mlp = MLP(GPTConfig(d_model=cfg.d_model, n_head=cfg.n_head, mlp="swiglu", bias=False))

    def forward(self, x, sin, cos, mask, past):
        a, kv = self.attn(self.norm1(x), sin, cos, mask, past)
        x = x + a
        return x + self.mlp(self.norm2(x)), kv


class Llama(nn.Module):
    """Random-init LLaMA-style decoder: token embedding, ``n_layer`` pre-RMSNorm blocks (RoPE
    attention, SwiGLU MLP), a final RMSNorm and an untied head. PyTorch's default ``Linear`` init and
    unit-variance embeddings give logits of order one, so greedy decoding has clear winners."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = create_norm(cfg.norm, cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def forward(self, idx: torch.Tensor, position_ids: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, past: Cache | None = None
                ) -> tuple[torch.Tensor, Cache]:
        """Logits ``(B, T, vocab)`` and the KV cache (``past`` extended by these ``T`` tokens).

        A query row that may attend to nothing (a padding token) is let attend to every key, so
        it yields finite garbage instead of NaN; callers discard padding outputs."""
        B, T = idx.shape
        S_past = 0 if past is None else past[0][0].shape[2]
        if position_ids is None:
            position_ids = torch.arange(S_past, S_past + T, device=idx.device).expand(B, T)
        if mask is None:
            mask = causal_mask(T, S_past, idx.device).expand(B, T, S_past + T)
        if mask.shape != (B, T, S_past + T):
            raise ReplibError(f"mask shape {tuple(mask.shape)} != {(B, T, S_past + T)}")
        mask = mask | ~mask.any(-1, keepdim=True)
        x = self.tok_emb(idx)
        sin, cos = rope_tables(position_ids, self.cfg.d_model // self.cfg.n_head, self.cfg.rope_base, x.dtype)
        cache: Cache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, sin, cos, mask, None if past is None else past[i])
            cache.append(kv)
        return self.head(self.norm_f(x)), cache

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
