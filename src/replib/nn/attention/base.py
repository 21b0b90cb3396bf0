"""The shared shape of every attention entry: ``x -> q, k, v -> mix -> proj``."""
from __future__ import annotations

import torch
from torch import nn

from ...errors import ReplibError


class Attention(nn.Module):
    r"""Multi-head causal attention with a replaceable token mixer.

    .. math:: q, k, v = x W_{qkv}, \qquad y = \mathrm{mix}(q, k, v)\, W_O

    ``d_attn`` (default ``d_model``) is the width of ``q, k, v`` across all heads; ``seq_len`` the
    longest sequence the module will see (kernels with position-dependent parameters, such as
    decays, size them by it). Subclasses override :meth:`mix` and add their own keyword arguments.
    """

    registry_name = "?"

    def __init__(self, d_model: int, n_head: int, *, d_attn: int | None = None, seq_len: int = 128,
                 bias: bool = True, dropout: float = 0.0):
        super().__init__()
        d_attn = d_attn or d_model
        if d_attn % n_head:
            raise ReplibError(f"d_attn={d_attn} is not divisible by n_head={n_head}")
        self.n_head, self.head_dim, self.seq_len = n_head, d_attn // n_head, seq_len
        self.qkv = nn.Linear(d_model, 3 * d_attn, bias=bias)
        self.proj = nn.Linear(d_attn, d_model, bias=bias)
        self.dropout = dropout

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``q, k, v`` of shape ``(B, H, T, D)`` for input ``x`` of shape ``(B, T, d_model)``."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split(self.qkv.out_features // 3, dim=-1)
        return tuple(t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))

    def mix(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            x: torch.Tensor | None = None) -> torch.Tensor:
        """The causal token mixer: ``(B, H, T, D)`` in, ``(B, H, T, D)`` out."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.seq_len:
            raise ReplibError(f"sequence length {x.shape[1]} exceeds seq_len={self.seq_len}")
        y = self.mix(*self.heads(x), x=x)
        return self.proj(y.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))
