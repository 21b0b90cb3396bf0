"""A tiny Pre-norm vision Transformer for the chapters' image analogs (8x8 digits)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ReplibError
from .norms import create_norm


def patchify(images: torch.Tensor, image: int = 8, patch: int = 2) -> torch.Tensor:
    """(B, image*image) or (B, image, image) pixels -> (B, (image/patch)^2, patch*patch), row-major."""
    B, n = images.shape[0], image // patch
    x = images.reshape(B, n, patch, n, patch).permute(0, 1, 3, 2, 4)
    return x.reshape(B, n * n, patch * patch)


class _Attention(nn.Module):
    """Bidirectional multi-head self-attention (the names match TinyGPT's, for folding)."""

    def __init__(self, d: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        q, k, v = (t.view(B, T, self.n_head, -1).transpose(1, 2)
                   for t in self.qkv(x).split(d, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, T, d))


class _Mlp(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.fc = nn.Linear(d, hidden)
        self.proj = nn.Linear(hidden, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class _ViTBlock(nn.Module):
    r"""Pre-norm: :math:`x \leftarrow x + \mathrm{Attn}(N_1(x))`, :math:`x \leftarrow x + \mathrm{MLP}(N_2(x))`."""

    def __init__(self, d: int, n_head: int, mlp_ratio: int, norm: str, norm_kwargs: dict):
        super().__init__()
        self.norm1 = create_norm(norm, d, **norm_kwargs)
        self.attn = _Attention(d, n_head)
        self.norm2 = create_norm(norm, d, **norm_kwargs)
        self.mlp = _Mlp(d, mlp_ratio * d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """A small Pre-norm vision Transformer for square one-channel images (8x8 digits).

    Non-overlapping ``patch x patch`` patches are embedded linearly, a class token and learned
    position embeddings are added, ``depth`` Pre-norm blocks follow, then a final norm and a
    linear head on the class token. Every norm is ``create_norm(norm, d_model, **norm_kwargs)``.
    The attribute names match TinyGPT's (``norm1 -> attn.qkv``, ``norm2 -> mlp.fc``,
    ``norm_f -> head``), so norm folding works on both. ``init``: ``"torch"`` (PyTorch's default
    for linear layers) or ``"trunc_normal"`` (std 0.02, zero biases).
    """

    def __init__(self, image: int = 8, patch: int = 2, n_classes: int = 10, d_model: int = 64,
                 depth: int = 4, n_head: int = 4, mlp_ratio: int = 2, norm: str = "layernorm",
                 norm_kwargs: dict | None = None, init: str = "torch"):
        super().__init__()
        if image % patch or d_model % n_head:
            raise ReplibError(f"image {image} must be divisible by patch {patch} and d_model "
                              f"{d_model} by n_head {n_head}")
        self.image, self.patch = image, patch
        n_tokens = (image // patch) ** 2
        kw = dict(norm_kwargs or {})
        self.embed = nn.Linear(patch * patch, d_model)
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos = nn.Parameter(torch.randn(1, n_tokens + 1, d_model) * 0.02)
        self.blocks = nn.ModuleList(_ViTBlock(d_model, n_head, mlp_ratio, norm, kw)
                                    for _ in range(depth))
        self.norm_f = create_norm(norm, d_model, **kw)
        self.head = nn.Linear(d_model, n_classes)
        if init == "trunc_normal":  # ViT/DeiT practice: every linear ~ N(0, 0.02) truncated, zero bias
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    nn.init.zeros_(m.bias)
        elif init != "torch":
            raise ReplibError(f"unknown init {init!r}; valid: torch, trunc_normal")

    def patches(self, images: torch.Tensor) -> torch.Tensor:
        return patchify(images, self.image, self.patch)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.embed(self.patches(images))
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm_f(x)[:, 0])
